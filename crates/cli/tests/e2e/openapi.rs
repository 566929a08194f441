//! `GET /openapi.json` and `execgate openapi`: the same document, served
//! without a token, describing the routes the gateway really answers.
//! (schemathesis fuzzes the gateway against it: tests/openapi.)

use std::process::Command;

use serde_json::{json, Value};

use crate::harness::*;

#[tokio::test]
async fn served_document_matches_the_cli_and_the_routes() {
    let w = World::start(&[]).await;
    let url = w.gateway.url();
    // No token: the document is public, like /healthz.
    let resp = fresh_client()
        .get(format!("{url}/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let served: Value = resp.json().await.unwrap();

    let out = Command::new(bin()).arg("openapi").output().unwrap();
    assert!(out.status.success());
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(served, printed);

    assert!(served["openapi"].as_str().unwrap().starts_with("3.1"));
    // Every documented operation is served: a request without a token gets
    // the 401 envelope (auth runs first), never the router's 404/405.
    let mut operations = 0;
    for (path, item) in served["paths"].as_object().unwrap() {
        let concrete = path.replace("{name}", "laptop").replace("{sid}", "ps_x");
        for method in item.as_object().unwrap().keys() {
            operations += 1;
            let req = fresh_client().request(
                method.to_uppercase().parse().unwrap(),
                format!("{url}{concrete}"),
            );
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            if path == "/healthz" || path == "/readyz" {
                assert_eq!(status, 200, "{path} needs no token");
                continue;
            }
            let body: Value = resp.json().await.unwrap();
            assert_eq!(status, 401, "{method} {path}: {body}");
            assert_eq!(body["error"]["code"], "missing_bearer", "{method} {path}");
        }
    }
    assert_eq!(operations, 13, "operations in the document");

    // A real answer conforms to its documented schema's required fields.
    let (status, envs) = w.api.post("/api/connectors/envs/list", json!({})).await;
    assert_eq!(status, 200);
    let env_schema = &served["components"]["schemas"]["ConnectorEnv"];
    for field in env_schema["required"].as_array().unwrap() {
        assert!(
            envs["envs"][0].get(field.as_str().unwrap()).is_some(),
            "envs/list lacks required {field}: {envs}"
        );
    }
}
