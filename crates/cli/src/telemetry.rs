//! Logs and traces of the long-running commands (`serve`, `executor`,
//! `up`): `--log-format text|json` and `--otlp-endpoint URL`.
//!
//! - JSON logs: tracing-subscriber's JSON lines, each with the fields of
//!   the spans it happened in; a request's span carries `trace_id` when
//!   there is one (from the OpenTelemetry context, or the request's
//!   `traceparent`).
//! - Traces: an OpenTelemetry layer whose spans a batch processor exports
//!   over OTLP/HTTP (protobuf) to `URL/v1/traces`, on its own thread with
//!   a blocking client; the W3C trace-context propagator, so that incoming
//!   `traceparent`s are honoured and the context crosses the executor link.
//!   `OTEL_SERVICE_NAME` names the service (default `execgate-gateway`,
//!   `execgate-executor`, `execgate`), and the SDK's `OTEL_BSP_*` and
//!   `OTEL_EXPORTER_OTLP_*` settings apply.
//!
//! Neither is on by default; with both off this is the plain text
//! subscriber it always was, and the libraries make no span.

use std::time::Duration;

use clap::{Args, ValueEnum};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

#[derive(Args, Debug, Clone, Default)]
pub struct TelemetryArgs {
    /// Export traces with OTLP over HTTP (protobuf) to this collector, e.g.
    /// `http://127.0.0.1:4318` (`/v1/traces` is appended unless present).
    /// Off by default.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Log lines as text, or as JSON objects (one a line, with the
    /// request's trace id when there is one).
    #[arg(long, env = "EXECGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Keeps the tracer provider; exports what is left when dropped.
pub struct Guard(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown();
        }
    }
}

/// The filter: `$EXECGATE_LOG`, else `default`.
fn filter(default: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("EXECGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
}

/// Installs the global subscriber for a long-running command: logs on
/// stderr (text or JSON) filtered by `$EXECGATE_LOG` (else `default`),
/// and with `--otlp-endpoint` the span exporter. Returns whether spans
/// are exported (`otel`) and whether the libraries should make spans at
/// all (`spans`: either that, or JSON logs).
pub fn init(
    default: &str,
    t: &TelemetryArgs,
    service: &str,
) -> anyhow::Result<(Guard, bool, bool)> {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = match t.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            // The request's span (outermost) holds `trace_id`.
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let logs = fmt.with_filter(filter(default));
    let Some(endpoint) = t.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) else {
        tracing_subscriber::registry().with(logs).init();
        return Ok((Guard(None), false, t.log_format == LogFormat::Json));
    };
    let endpoint = endpoint.trim_end_matches('/');
    let endpoint = if endpoint.ends_with("/v1/traces") {
        endpoint.to_string()
    } else {
        format!("{endpoint}/v1/traces")
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(10))
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_string());
    }
    // Spans leave within a second unless OTEL_BSP_SCHEDULE_DELAY says
    // otherwise (the SDK's default is 5 s).
    let delay = std::env::var("OTEL_BSP_SCHEDULE_DELAY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            opentelemetry_sdk::trace::BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_millis(delay))
                .build(),
        )
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    // Spans of execgate's own crates only (at info), whatever the log filter.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("execgate"))
        .with_filter(tracing_subscriber::EnvFilter::new(
            "execgate_gateway=info,execgate_executor=info",
        ));
    tracing_subscriber::registry().with(logs).with(spans).init();
    Ok((Guard(Some(provider)), true, true))
}
