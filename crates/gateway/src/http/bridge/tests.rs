//! The bridge in-process: the real router and admin routes on a loopback
//! port, a WebSocket client, and a link whose executor side is this test.
//! (The end-to-end tests with real processes are in crates/cli/tests/e2e/bridge.rs,
//! including the admin routes behind the admin token; this one also drops
//! the executor's side of the link on purpose.)

use std::time::Duration;

use execgate_protocol::jsonrpc::Encoded;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::auth::captoken::CapTokenSecret;
use crate::ops::captoken::{mint, MintRequest};
use crate::secret::SecretString;

const ADMIN_TOKEN: &str = "test-admin-token";
use crate::link::Link;
use crate::ops::state::{AppState, GatewayConfig};
use crate::store::Store;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Fixture {
    _dir: tempfile::TempDir,
    state: AppState,
    url: String,
    link: std::sync::Arc<Link>,
    exe_id: String,
    /// What the gateway sent the "executor".
    executor: mpsc::UnboundedReceiver<Encoded>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    store.create_workspace("w1").await.unwrap();
    let (exe_id, _) = store.add_executor("w1", "laptop", true).await.unwrap();
    let mut config = GatewayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().into());
    // Only the broadcast can end a session quickly here.
    config.link.bridge_recheck = Duration::from_secs(3600);
    let state = AppState::with_secrets(
        config,
        store,
        Some(SecretString::new(ADMIN_TOKEN)),
        CapTokenSecret::random(),
    );
    let (tx, executor) = mpsc::unbounded_channel();
    let link = Link::new(exe_id.clone(), "w1".into(), "laptop".into(), tx);
    state.registry().insert(link.clone());
    // The real router: the captoken routes are in it, behind the admin token.
    let app = crate::http::router(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Fixture {
        _dir: dir,
        state,
        url,
        link,
        exe_id,
        executor,
    }
}

async fn token(f: &Fixture, turn: &str) -> String {
    let req = MintRequest {
        workspace: "w1".into(),
        turn_id: Some(turn.into()),
        ..Default::default()
    };
    mint(
        f.state.store(),
        f.state.cap_token_secret(),
        &req,
        crate::auth::captoken::now_s(),
    )
    .await
    .unwrap()
    .token
}

async fn open(f: &Fixture, token: &str) -> Ws {
    let mut req = format!("ws://{}/bridge/{}", f.url, f.exe_id)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

async fn next(ws: &mut Ws) -> Message {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .unwrap();
        if !matches!(m, Message::Ping(_) | Message::Pong(_)) {
            return m;
        }
    }
}

fn close_code(m: &Message) -> u16 {
    match m {
        Message::Close(Some(f)) => u16::from(f.code),
        other => panic!("not a close frame: {other:?}"),
    }
}

#[tokio::test]
async fn a_revocation_through_the_admin_route_closes_the_turns_sessions_at_once() {
    let f = fixture().await;
    let mut doomed = open(&f, &token(&f, "t-doomed").await).await;
    let mut other = open(&f, &token(&f, "t-other").await).await;

    let resp = reqwest::Client::new()
        .post(format!("http://{}/api/admin/revoke-turn", f.url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"turn_id": "t-doomed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // The store check would take an hour here: this is the broadcast.
    assert_eq!(close_code(&next(&mut doomed).await), 4403);

    // The other turn's session is untouched and still relays.
    other
        .send(Message::Text(
            json!({"id":"q","method":"fs/getMetadata","params":{"path":"file:///"}})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let mut executor = f.executor;
    let Some(Encoded::Text(sent)) = executor.recv().await else {
        panic!("the bridge sends text frames")
    };
    let sent: Value = serde_json::from_str(&sent).unwrap();
    assert_eq!(sent["method"], "fs/getMetadata");
    // The executor sees the link's numeric id, not the client's.
    assert!(sent["id"].is_i64(), "{sent}");
    f.link.dispatch(
        json!({"id": sent["id"], "result": {"isDirectory": true}})
            .to_string()
            .as_bytes(),
    );
    let Message::Text(t) = next(&mut other).await else {
        panic!()
    };
    let answer: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(answer["id"], "q");
    assert_eq!(answer["result"]["isDirectory"], true);

    // The link drops: the session closes with 1013 and the reason.
    f.link.close("test ended the link");
    let m = next(&mut other).await;
    assert_eq!(close_code(&m), 1013);
    let Message::Close(Some(frame)) = m else {
        unreachable!()
    };
    assert!(frame.reason.contains("test ended the link"), "{frame:?}");
}
