//! Traces on the executor: off by default (no span made, `_meta` only
//! stripped). `execgate executor --otlp-endpoint` turns them on: each
//! request from the gateway is handled in an `executor.request` span whose
//! parent is the request's `params._meta.traceparent` (the [ext]
//! `traceContext` the executor announces), and a process start has its
//! `process.spawn` span inside it.

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

static ON: AtomicBool = AtomicBool::new(false);

/// Turns spans on (the binary installed an OpenTelemetry layer and the
/// W3C trace-context propagator).
pub fn enable() {
    ON.store(true, Ordering::Relaxed);
}

#[inline]
pub(crate) fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Takes a request's `params._meta` out (it is not the method's) and
/// returns its `traceparent`, if any.
pub(crate) fn take_meta(params: &mut Value) -> Option<String> {
    let meta = params.as_object_mut()?.remove("_meta")?;
    meta.get("traceparent")?.as_str().map(str::to_owned)
}

/// The `executor.request` span of `method`, child of `traceparent`.
pub(crate) fn request_span(method: &str, traceparent: Option<&str>) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let span = tracing::info_span!(
        "executor.request",
        otel.name = %format_args!("executor {method}"),
        otel.kind = "server",
        rpc.method = method,
        trace_id = tracing::field::Empty,
    );
    if let Some(tp) = traceparent {
        // For the JSON logs: the trace id on each line of this request.
        if let Some(id) = tp.split('-').nth(1).filter(|id| id.len() == 32) {
            span.record("trace_id", id);
        }
        struct One<'a>(&'a str);
        impl opentelemetry::propagation::Extractor for One<'_> {
            fn get(&self, key: &str) -> Option<&str> {
                (key == "traceparent").then_some(self.0)
            }
            fn keys(&self) -> Vec<&str> {
                vec!["traceparent"]
            }
        }
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&One(tp)));
        let _ = span.set_parent(parent);
    }
    span
}
