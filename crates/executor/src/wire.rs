//! A method's params and result as they travel: JSON, with raw bytes moved
//! to a binary frame's payload when the gateway reads binary frames (see
//! `execgate_protocol::blob`). The method table and the modules that
//! implement methods (`fs`, `process`) share these, and so need not import
//! each other.

use bytes::Bytes;
use execgate_protocol::blob;
use execgate_protocol::jsonrpc::RpcError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// A result as it goes on the wire: JSON, and the payload its raw blobs
/// moved to (empty unless the gateway reads binary frames).
pub(crate) type WireResult = (Value, Bytes);

/// One request as a method receives it.
pub(crate) struct Call<'a> {
    /// The params, blob references unresolved.
    pub params: Value,
    /// What the request's binary frame carried beside the JSON (empty for a
    /// text frame).
    pub payload: &'a Bytes,
    /// The result may carry raw bytes in a binary frame.
    pub binary: bool,
}

impl Call<'_> {
    /// Decodes the params, runs `method`, encodes its result: a synchronous
    /// method on the wire's terms.
    pub fn run<P: DeserializeOwned, R: Serialize>(
        self,
        method: impl FnOnce(P) -> Result<R, RpcError>,
    ) -> Result<WireResult, RpcError> {
        let params = parse_params(self.params, self.payload)?;
        encode(&method(params)?, self.binary)
    }
}

/// Decodes a method's params, resolving blob references against the
/// frame's `payload`; a serde error becomes -32602 with its message.
/// Absent params read as `{}`, so that methods whose params are all optional
/// accept them being left out.
pub(crate) fn parse_params<T: DeserializeOwned>(
    params: Value,
    payload: &Bytes,
) -> Result<T, RpcError> {
    let params = if params.is_null() {
        Value::Object(serde_json::Map::new())
    } else {
        params
    };
    blob::from_value(params, payload)
        .map_err(|e| RpcError::invalid_params(format!("invalid params: {e}")))
}

/// Encodes a result; with `binary`, its raw bytes go in the payload.
pub(crate) fn encode(result: &impl Serialize, binary: bool) -> Result<WireResult, RpcError> {
    blob::to_value(result, binary)
        .map_err(|e| RpcError::internal(format!("encoding the result: {e}")))
}
