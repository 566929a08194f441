//! Deadlines of exec_command processes (`max_runtime_ms`).
//!
//! The gateway owns deadlines (the protocol has none, and a stock codex
//! executor must be held to them too). A deadline is a column of the
//! session's row, so it survives a gateway restart; one background task
//! terminates due processes, and marks each deadline done once the process
//! is terminated or known gone. While the executor is disconnected the
//! deadline stays due and is enforced as soon as it reconnects.
//!
//! The same mechanism cleans up after an exec_command whose `process/start`
//! had an unknown outcome (the link dropped or timed out): its row gets a
//! deadline of "now", so a process that did start is not left orphaned.
//!
//! With replicas every replica runs this task, and a due deadline is done
//! by the replica that holds the executor's link (under an unexpired
//! lease), after claiming it in the store (`Store::claim_deadline`: one
//! `UPDATE … RETURNING` with a 15 s expiry): done once, and done by the
//! next holder if its claimer or holder dies.

use std::time::Duration;

use execgate_protocol::exec::{method, ProcessIdParams, ProcessTerminateResult};
use execgate_protocol::jsonrpc::code as rpc_code;

use crate::link::LinkError;
use crate::ops::processes::is_restarted;
use crate::ops::state::AppState;
use crate::ops::tools::RPC_TIMEOUT;
use crate::store::{now_ms, SessionRow};

/// The longest the task sleeps between looks at the store: a new deadline
/// is noticed within this, and due ones are enforced within it.
const TICK: Duration = Duration::from_millis(200);

/// Runs forever, enforcing deadlines as they fall due.
pub async fn run(state: AppState) {
    loop {
        let now = now_ms();
        match state.store().due_deadlines(now).await {
            Ok(rows) => {
                for row in rows {
                    enforce(&state, row).await;
                }
            }
            Err(e) => tracing::warn!("cannot read due deadlines: {e}"),
        }
        let next = state.store().next_deadline().await.ok().flatten();
        let sleep = match next {
            Some(at) if at > now => Duration::from_millis((at - now) as u64).min(TICK),
            _ => TICK,
        };
        tokio::time::sleep(sleep.max(Duration::from_millis(10))).await;
    }
}

/// With replicas, how long a claim on a deadline lasts; the termination's
/// own timeout is shorter, so a claim outlives any attempt of its claimer.
const CLAIM: Duration = Duration::from_secs(15);
const CLAIMED_RPC_TIMEOUT: Duration = Duration::from_secs(10);

async fn enforce(state: &AppState, row: SessionRow) {
    // Not connected here: try again once the executor is back (with
    // replicas, the replica that holds its link does it).
    let Some(link) = state.registry().get(&row.exe_id) else {
        return;
    };
    let mut timeout = RPC_TIMEOUT;
    if state.cluster().is_some() {
        let now = now_ms();
        // A lapsed lease is fenced: the new holder does it.
        if !link.lease_ok(now) {
            return;
        }
        // Exactly once across replicas: claim it in the store first.
        match state
            .store()
            .claim_deadline(&row.sid, now, now + CLAIM.as_millis() as i64)
            .await
        {
            Ok(true) => timeout = CLAIMED_RPC_TIMEOUT,
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(sid = %row.sid, "cannot claim the deadline: {e}");
                return;
            }
        }
    }
    tracing::info!(sid = %row.sid, "enforcing a due deadline");
    let done = if is_restarted(&row, &link) {
        true
    } else {
        let r = link
            .request::<_, ProcessTerminateResult>(
                method::PROCESS_TERMINATE,
                &ProcessIdParams {
                    process_id: row.process_id.clone(),
                },
                timeout,
            )
            .await;
        match r {
            Ok(r) => {
                if r.running {
                    tracing::info!(sid = %row.sid, "max_runtime_ms exceeded: terminated the process");
                }
                true
            }
            // Unknown process: it is gone already.
            Err(LinkError::Rpc { error, .. }) if error.code == rpc_code::INVALID_REQUEST => true,
            Err(e) => {
                tracing::warn!(sid = %row.sid, "cannot enforce the deadline yet: {e}");
                false
            }
        }
    };
    if done {
        if let Err(e) = state.store().mark_deadline_done(&row.sid).await {
            tracing::warn!(sid = %row.sid, "cannot record the enforced deadline: {e}");
        }
    } else if state.cluster().is_some() {
        // Not enforced yet: free for the next look, here or elsewhere.
        let _ = state.store().release_deadline(&row.sid).await;
    }
}
