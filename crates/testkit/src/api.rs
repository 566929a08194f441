//! A small JSON client of the connectors REST API, for tests.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::eventually::eventually;

/// A small HTTP client for the connectors API that returns status and JSON.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub url: String,
    pub token: String,
}

impl Api {
    pub fn new(url: &str, token: &str) -> Api {
        Api {
            http: fresh_client(),
            url: url.to_string(),
            token: token.to_string(),
        }
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request reaches the gateway");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let v = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "status {status}: body is not JSON: {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, v)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.url)).json(&body))
            .await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.url)))
            .await
    }

    pub async fn envs(&self) -> Value {
        let (s, v) = self.post("/api/connectors/envs/list", json!({})).await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// tool/call; asserts HTTP 200 and returns the CallToolResult.
    pub async fn call(&self, env: &str, tool: &str, args: Value) -> Value {
        let (s, v) = self.call_raw(env, tool, args).await;
        assert_eq!(s, 200, "{tool} on {env}: {v}");
        v
    }

    pub async fn call_raw(&self, env: &str, tool: &str, args: Value) -> (u16, Value) {
        self.post(
            &format!("/api/connectors/envs/{env}/tool/call"),
            json!({"tool": tool, "arguments": args}),
        )
        .await
    }

    /// Starts `command` with exec_command and returns the session id.
    pub async fn exec(&self, env: &str, args: Value) -> String {
        let r = self.call(env, "exec_command", args).await;
        assert_eq!(r["isError"], false, "{r}");
        let sid = r["structuredContent"]["session_id"]
            .as_str()
            .unwrap()
            .to_string();
        let text: Value = serde_json::from_str(r["content"][0]["text"].as_str().unwrap()).unwrap();
        assert_eq!(text["session_id"], sid.as_str());
        sid
    }

    pub async fn output(&self, sid: &str, since: u64) -> Value {
        let (s, v) = self
            .get(&format!(
                "/api/connectors/processes/{sid}/output?since={since}"
            ))
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Reads output from `since` until `done(collected stdout)` or the
    /// process ends; returns (all bytes read, last answer).
    pub async fn read_until(
        &self,
        sid: &str,
        mut since: u64,
        done: impl Fn(&[u8]) -> bool,
    ) -> (Vec<u8>, Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut data = Vec::new();
        loop {
            let (s, v) = self
                .get(&format!(
                    "/api/connectors/processes/{sid}/output?since={since}&wait_ms=2000"
                ))
                .await;
            assert_eq!(s, 200, "{v}");
            for c in v["chunks"].as_array().unwrap() {
                data.extend(b64d(c["data_b64"].as_str().unwrap()));
                since = c["seq"].as_u64().unwrap();
            }
            since = since.max(v["next_since"].as_u64().unwrap_or(0));
            if done(&data) || v["session_alive"] == false {
                return (data, v);
            }
            assert!(
                Instant::now() < deadline,
                "timed out; got {:?}",
                String::from_utf8_lossy(&data)
            );
        }
    }

    pub async fn stdin(&self, sid: &str, data: &[u8], eof: bool) -> (u16, Value) {
        self.post(
            &format!("/api/connectors/processes/{sid}/stdin"),
            json!({"data_b64": b64e(data), "eof": eof}),
        )
        .await
    }
}

/// A client that keeps no idle connections: tests kill gateways and provoke
/// 413s, after which a pooled connection would be dead.
pub fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

pub fn b64e(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub fn b64d(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// Waits (at most 40 s) until envs/list shows environment `name` connected.
pub async fn wait_for_env(api: &Api, name: &str) {
    eventually(40, &format!("environment {name} to connect"), || async {
        let v = api.envs().await;
        v["envs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == name)
    })
    .await;
}
