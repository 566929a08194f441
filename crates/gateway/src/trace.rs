//! Traces: whether the gateway makes spans, and the W3C trace context it
//! reads from requests and hands on to executors.
//!
//! A leaf at the crate root (like `metrics`). Off by default: no span is
//! made, no header read, nothing sent. `execgate serve --otlp-endpoint`
//! turns on spans with OpenTelemetry contexts (exported by the layer the
//! binary installs); `--log-format json` alone turns on spans for the logs
//! (their fields, the trace id of an incoming `traceparent`).
//!
//! Spans: `http.request` (http/observe.rs; its parent is the request's
//! `traceparent`), `tool.call` (ops::tools::call: tool, environment,
//! workspace; never arguments or output), `link.request` (link: the
//! protocol method; its context goes to the executor as
//! `params._meta.traceparent` when the executor announced `traceContext`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector};

static SPANS: AtomicBool = AtomicBool::new(false);
static OTEL: AtomicBool = AtomicBool::new(false);

/// Turns spans on; `otel`: with OpenTelemetry contexts (an exporter is
/// installed, and the global propagator is W3C trace context).
pub fn enable(otel: bool) {
    SPANS.store(true, Ordering::Relaxed);
    if otel {
        OTEL.store(true, Ordering::Relaxed);
    }
}

/// Whether to make spans at all.
#[inline]
pub fn spans() -> bool {
    SPANS.load(Ordering::Relaxed)
}

/// Whether spans carry OpenTelemetry contexts (to export, to propagate).
#[inline]
pub fn otel() -> bool {
    OTEL.load(Ordering::Relaxed)
}

/// The context a `traceparent` (and `tracestate`) describe, through the
/// global propagator.
pub fn extract(traceparent: Option<&str>, tracestate: Option<&str>) -> opentelemetry::Context {
    struct Headers<'a>(Option<&'a str>, Option<&'a str>);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                "traceparent" => self.0,
                "tracestate" => self.1,
                _ => None,
            }
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent", "tracestate"]
        }
    }
    let headers = Headers(traceparent, tracestate);
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&headers))
}

/// The W3C headers (`traceparent`, `tracestate`) of `cx`.
pub fn inject(cx: &opentelemetry::Context) -> HashMap<String, String> {
    struct Put(HashMap<String, String>);
    impl Injector for Put {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key.to_string(), value);
        }
    }
    let mut put = Put(HashMap::new());
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(cx, &mut put));
    put.0
}

/// The trace id (32 hex digits) of a `traceparent` header, if well formed.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id != "0".repeat(32))
        .then_some(id)
}

#[cfg(test)]
mod tests {
    #[test]
    fn trace_ids_of_traceparents() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            super::trace_id_of(&format!("00-{id}-00f067aa0ba902b7-01")),
            Some(id)
        );
        assert_eq!(super::trace_id_of("00-xyz-00f067aa0ba902b7-01"), None);
        assert_eq!(super::trace_id_of("garbage"), None);
    }
}
