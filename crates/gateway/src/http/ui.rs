//! The web console at `/ui/`: static files embedded in the binary (under
//! `crates/gateway/ui/`), plain ES modules with no build step. The page
//! signs in with a token kept in the tab's `sessionStorage` and calls the
//! same connectors and admin APIs as any client; this module only serves
//! files, it authenticates nothing.
//!
//! Every answer carries a strict `Content-Security-Policy` (scripts and
//! styles from this origin only, no inline script, no framing, no forms
//! posted anywhere), `X-Content-Type-Options: nosniff`, `Referrer-Policy:
//! no-referrer`, and `Cache-Control: no-cache` with a strong `ETag` (the
//! file's SHA-256), so a browser revalidates and a new binary's files are
//! never mixed with an old one's. `/ui` redirects to `/ui/`; an unknown
//! `/ui/…` is the usual 404 envelope.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::http::error::ApiError;

/// The policy of every console answer. `connect-src 'self'`: the page talks
/// to this gateway only. `img-src data:` for the inline favicon.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// One embedded file: its name under `/ui/`, its type, its bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $ty:expr) => {
        Asset {
            name: $name,
            content_type: $ty,
            bytes: include_bytes!(concat!("../../ui/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the console. A new file under `ui/` must be listed here
/// (a unit test checks that each one is).
static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("sse.js", JS),
    asset!("envs.js", JS),
    asset!("run.js", JS),
    asset!("processes.js", JS),
    asset!("files.js", JS),
    asset!("admin.js", JS),
    asset!("audit.js", JS),
    asset!("terminal.js", JS),
    // From npm, copied by `crates/gateway/ui-vendor/vendor.sh` from its
    // lockfile (CI checks they are up to date).
    asset!("vendor/xterm.mjs", JS),
    asset!("vendor/xterm.css", "text/css; charset=utf-8"),
    asset!("vendor/addon-fit.mjs", JS),
    asset!("vendor/xterm.LICENSE", "text/plain; charset=utf-8"),
    asset!("vendor/addon-fit.LICENSE", "text/plain; charset=utf-8"),
];

/// The ETag of each asset, in `ASSETS` order, computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.bytes);
                format!("\"{}\"", hex::encode(&digest[..16]))
            })
            .collect()
    })
}

/// `/ui` and `/ui/…`, to merge into the API router (before its fallback).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            "/ui/{*path}",
            get(|Path(path): Path<String>, headers: HeaderMap| async move { serve(&path, &headers) }),
        )
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return ApiError::not_found(format!("the console has no file {name:?}; open /ui/"))
            .into_response();
    };
    let asset = &ASSETS[i];
    let etag = &etags()[i];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.bytes).into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get_ui(path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = Request::get(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        router::<()>()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn header<'a>(resp: &'a Response, name: &str) -> &'a str {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header"))
    }

    async fn body(resp: Response) -> Vec<u8> {
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec()
    }

    #[tokio::test]
    async fn index_is_html_with_a_strict_policy() {
        let resp = get_ui("/ui/", &[]).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "content-type"), "text/html; charset=utf-8");
        assert_eq!(header(&resp, "x-content-type-options"), "nosniff");
        assert_eq!(header(&resp, "cache-control"), "no-cache");
        let csp = header(&resp, "content-security-policy");
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        let html = String::from_utf8(body(resp).await).unwrap();
        assert!(html.contains("<script type=\"module\" src=\"app.js\">"));
    }

    #[tokio::test]
    async fn each_file_has_its_type() {
        for (path, ty) in [
            ("/ui/app.js", "text/javascript; charset=utf-8"),
            ("/ui/processes.js", "text/javascript; charset=utf-8"),
            ("/ui/console.css", "text/css; charset=utf-8"),
            ("/ui/index.html", "text/html; charset=utf-8"),
            ("/ui/vendor/xterm.mjs", "text/javascript; charset=utf-8"),
            ("/ui/vendor/xterm.css", "text/css; charset=utf-8"),
        ] {
            let resp = get_ui(path, &[]).await;
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            assert_eq!(header(&resp, "content-type"), ty, "{path}");
            assert!(resp.headers().contains_key("content-security-policy"));
            assert!(!body(resp).await.is_empty(), "{path}");
        }
    }

    #[tokio::test]
    async fn bare_ui_redirects_to_the_slash() {
        let resp = get_ui("/ui", &[]).await;
        assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(header(&resp, "location"), "/ui/");
    }

    #[tokio::test]
    async fn an_unknown_file_is_the_404_envelope() {
        for path in ["/ui/x", "/ui/../Cargo.toml", "/ui/nested/app.js"] {
            let resp = get_ui(path, &[]).await;
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
            assert_eq!(header(&resp, "content-type"), "application/json");
            let v: serde_json::Value = serde_json::from_slice(&body(resp).await).unwrap();
            assert_eq!(v["error"]["code"], "not_found", "{path}");
        }
    }

    #[tokio::test]
    async fn a_matching_etag_is_304() {
        let first = get_ui("/ui/app.js", &[]).await;
        let etag = header(&first, "etag").to_string();
        let again = get_ui("/ui/app.js", &[("if-none-match", &etag)]).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(body(again).await.is_empty());
        let other = get_ui("/ui/app.js", &[("if-none-match", "\"nope\"")]).await;
        assert_eq!(other.status(), StatusCode::OK);
    }

    /// Every file under ui/ is served, and every module the page imports
    /// exists: a file added without its `asset!` line fails here.
    #[test]
    fn every_file_under_ui_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
        let mut dirs = vec![dir.clone()];
        while let Some(d) = dirs.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let name = path
                    .strip_prefix(&dir)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                assert!(
                    ASSETS.iter().any(|a| a.name == name),
                    "ui/{name} is not listed in ui.rs ASSETS"
                );
            }
        }
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let text = std::str::from_utf8(a.bytes).unwrap();
            for line in text.lines() {
                let rest = line
                    .split(" from \"./")
                    .nth(1)
                    .or_else(|| line.split("import(\"./").nth(1));
                if let Some(rest) = rest {
                    let module = rest.split('"').next().unwrap();
                    assert!(
                        ASSETS.iter().any(|b| b.name == module),
                        "{} imports ./{module}, which is not embedded",
                        a.name
                    );
                }
            }
        }
    }

    /// Merged into the API router: its envelope and 405 apply, and the
    /// API's own fallback is untouched.
    #[tokio::test]
    async fn the_api_router_serves_the_console() {
        let (_dir, state) = crate::ops::state::test_state(|_| {}).await;
        let app = crate::http::router(state);
        let send = |method: &str, path: &str| {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .unwrap();
            app.clone().oneshot(req)
        };
        let resp = send("GET", "/ui/").await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "content-security-policy"), CSP);
        let resp = send("HEAD", "/ui/app.js").await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "content-type"), JS);
        for (method, path, status, code) in [
            ("GET", "/ui/x", StatusCode::NOT_FOUND, "not_found"),
            (
                "POST",
                "/ui/",
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
            ("GET", "/uix", StatusCode::NOT_FOUND, "not_found"),
        ] {
            let resp = send(method, path).await.unwrap();
            assert_eq!(resp.status(), status, "{method} {path}");
            let v: serde_json::Value = serde_json::from_slice(&body(resp).await).unwrap();
            assert_eq!(v["error"]["code"], code, "{method} {path}");
        }
    }

    #[test]
    fn no_inline_script_or_style_in_the_page() {
        let html = std::str::from_utf8(ASSETS[0].bytes).unwrap();
        assert_eq!(ASSETS[0].name, "index.html");
        assert!(!html.contains("<script>"), "inline script");
        assert!(!html.contains("<style"), "inline style");
        assert!(!html.contains(" style=\""), "inline style attribute");
        assert!(!html.contains(" onclick="), "inline handler");
    }
}
