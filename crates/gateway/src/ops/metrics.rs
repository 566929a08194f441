//! `GET /metrics`'s text: the registry of `crate::metrics` (what calls
//! record as they go), then what is read from the gateway's state at scrape
//! time: executors connected by kind, process sessions by status, the
//! audit queue and its counts. Scrapes are rare; calls are not, so what
//! can be read when asked is not counted on the way.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::link::connect::executor_kind;
use crate::ops::state::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

/// The Prometheus text (0.0.4) of the gateway's metrics; `None` while
/// metrics are off.
pub async fn render(state: &AppState) -> Option<String> {
    let metrics = crate::metrics::get()?;
    let mut out = String::with_capacity(32 * 1024);
    metrics.encode(&mut out);

    let mut now = Registry::with_prefix("execgate");
    let connected = Family::<KindLabel, Gauge>::default();
    for kind in ["execgate", "codex"] {
        connected.get_or_create(&KindLabel { kind }).set(0);
    }
    for link in state.registry().links() {
        if let Some(hs) = link.handshake().filter(|_| !link.is_closed()) {
            connected
                .get_or_create(&KindLabel {
                    kind: executor_kind(hs),
                })
                .inc();
        }
    }
    now.register(
        "executors_connected",
        "Executors with a live link, by kind: execgate, codex (a stock codex exec-server)",
        connected,
    );
    let sessions = Family::<StatusLabel, Gauge>::default();
    for status in ["live", "ended"] {
        sessions.get_or_create(&StatusLabel { status }).set(0);
    }
    match state.store().count_sessions_by_status().await {
        Ok(rows) => {
            for (status, n) in rows {
                let status = if status == "live" { "live" } else { "ended" };
                sessions.get_or_create(&StatusLabel { status }).set(n);
            }
        }
        Err(e) => tracing::warn!("metrics: cannot count process sessions: {e}"),
    }
    now.register(
        "process_sessions",
        "exec_command sessions in the gateway's index, by status: live (not known to have ended), ended",
        sessions,
    );
    let audit = state.audit().stats();
    now.register(
        "audit_queue_depth",
        "Audit records waiting for the writer",
        ConstGauge::new(audit.queued as i64),
    );
    now.register(
        "audit_records_dropped",
        "Audit records lost: the queue was full or the store refused them",
        ConstCounter::new(audit.lost),
    );
    now.register(
        "audit_records_written",
        "Audit records written",
        ConstCounter::new(audit.written),
    );
    now.register(
        "audit_refused_calls",
        "Calls refused because their audit record could not be written (--audit fail-closed)",
        ConstCounter::new(audit.refused),
    );
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &now);
    Some(out)
}
