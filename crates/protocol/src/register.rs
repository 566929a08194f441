//! The executor's first step: `POST /cloud/environment/{environment_id}/direct/register`,
//! answered with a short-lived WebSocket URL to dial.

use serde::{Deserialize, Serialize};

pub const TRANSPORT_DIRECT: &str = "direct_jsonrpc_v1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub transport: String,
    /// [ext] The environment name the executor expects to be; the gateway
    /// refuses a mismatch rather than silently serving under another name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// [ext] Mark this executor its workspace's default environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_default: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub environment_id: String,
    /// `ws://` or `wss://`, single-use and short-lived.
    pub url: String,
    pub transport: String,
    pub registration_id: String,
}

/// An executor token is `{exe_id}.{secret}`: the executor knows only its token,
/// and the register URL needs the environment id, so the token carries it.
/// The gateway still checks that the secret belongs to that id.
pub fn environment_id_from_token(token: &str) -> Option<&str> {
    let (id, secret) = token.split_once('.')?;
    (!id.is_empty() && !secret.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_carries_environment_id() {
        assert_eq!(
            super::environment_id_from_token("exe_ab12.s3cr3t"),
            Some("exe_ab12")
        );
        assert_eq!(super::environment_id_from_token("nodot"), None);
        assert_eq!(super::environment_id_from_token(".x"), None);
        assert_eq!(super::environment_id_from_token("x."), None);
    }
}
