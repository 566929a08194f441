//! Audit records as the operations open them: for a caller, on a link.
//! (The records and their writer are `crate::store::audit_log`, which
//! names no caller and no link.)

use crate::auth::Caller;
use crate::link::Link;
use crate::store::audit_log::{AuditRecord, Kind, Via};

/// What the operations add to [`AuditRecord`].
pub trait RecordExt {
    /// A record of an operation of a connectors API (or MCP) caller.
    fn for_caller(caller: &Caller, via: Via, kind: Kind, method: &str) -> Self;
    /// The environment the operation runs in.
    fn set_link(&mut self, link: &Link);
}

impl RecordExt for AuditRecord {
    fn for_caller(caller: &Caller, via: Via, kind: Kind, method: &str) -> Self {
        AuditRecord::new(
            &caller.workspace,
            caller.user_id.as_deref(),
            via,
            kind,
            method,
        )
    }

    fn set_link(&mut self, link: &Link) {
        self.set_environment(&link.name, &link.exe_id);
    }
}
