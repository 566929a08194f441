//! What `execgate admin` and the admin API both do, over the store, in the
//! admin API's wire types (`execgate_protocol::admin`): the CLI prints
//! them as tables (or JSON), the API sends them as they are.

use execgate_protocol::admin::{
    AddExecutor, AddedExecutor, AuditRecord, CreateToken, CreatedToken, Executor, ExecutorList,
    ProxyToken, SigV4Credentials, TokenList, Workspace, WorkspaceList,
};

use crate::link::registry::Registry;
use crate::ops::environment::rfc3339;
use crate::store::{AuditQuery, Result, Store, StoreError};

pub async fn create_workspace(store: &Store, name: &str) -> Result<Workspace> {
    store.create_workspace(name).await?;
    store
        .list_workspaces()
        .await?
        .into_iter()
        .find(|w| w.name == name)
        .map(|w| Workspace {
            name: w.name,
            created_at: rfc3339(w.created_at),
        })
        .ok_or_else(|| StoreError::NotFound(format!("workspace {name:?} vanished")))
}

pub async fn workspaces(store: &Store) -> Result<WorkspaceList> {
    let workspaces = store
        .list_workspaces()
        .await?
        .into_iter()
        .map(|w| Workspace {
            name: w.name,
            created_at: rfc3339(w.created_at),
        })
        .collect();
    Ok(WorkspaceList { workspaces })
}

pub async fn create_token(store: &Store, req: &CreateToken) -> Result<CreatedToken> {
    let (id, token) = store
        .create_proxy_token(&req.workspace, req.user_id.as_deref())
        .await?;
    Ok(CreatedToken {
        id,
        workspace: req.workspace.clone(),
        user_id: req.user_id.clone(),
        token,
    })
}

pub async fn tokens(store: &Store, workspace: Option<&str>) -> Result<TokenList> {
    let tokens = store
        .list_proxy_tokens(workspace)
        .await?
        .into_iter()
        .map(|t| ProxyToken {
            id: t.id,
            workspace: t.workspace,
            user_id: t.user_id,
            created_at: rfc3339(t.created_at),
            revoked_at: t.revoked_at.map(rfc3339),
        })
        .collect();
    Ok(TokenList { tokens })
}

/// Adds an executor, creating its workspace if needed: in remote auth mode
/// workspaces are named by the token authority, and adding an executor is
/// what brings one into being here.
pub async fn add_executor(store: &Store, req: &AddExecutor) -> Result<AddedExecutor> {
    store.ensure_workspace(&req.workspace).await?;
    let mut added = AddedExecutor {
        exe_id: String::new(),
        workspace: req.workspace.clone(),
        name: req.name.clone(),
        token: None,
        sigv4: None,
    };
    if req.sigv4 {
        let key = store
            .add_sigv4_executor(&req.workspace, &req.name, req.default)
            .await?;
        added.exe_id = key.exe_id;
        added.sigv4 = Some(SigV4Credentials {
            access_key_id: key.key_id,
            secret_access_key: key.secret,
        });
    } else {
        let (exe_id, token) = store
            .add_executor(&req.workspace, &req.name, req.default)
            .await?;
        added.exe_id = exe_id;
        added.token = Some(token);
    }
    Ok(added)
}

/// The executors; with `registry`, whether each is connected to it now.
pub async fn executors(
    store: &Store,
    workspace: Option<&str>,
    registry: Option<&Registry>,
) -> Result<ExecutorList> {
    let executors = store
        .list_executors(workspace)
        .await?
        .into_iter()
        .map(|e| Executor {
            online: registry.map(|r| r.get(&e.exe_id).is_some()),
            exe_id: e.exe_id,
            workspace: e.workspace,
            name: e.name,
            is_default: e.is_default,
            kind: e.kind,
            version: e.version,
            os: e.os,
            connected_at: e.connected_at.map(rfc3339),
            disconnected_at: e.disconnected_at.map(rfc3339),
            last_seen: e.last_seen_at.map(rfc3339),
        })
        .collect();
    Ok(ExecutorList { executors })
}

/// One page of audit records, and the cursor of the next one (when this
/// page is full).
pub async fn audit(store: &Store, q: &AuditQuery) -> Result<(Vec<AuditRecord>, Option<i64>)> {
    let rows = store.list_audit(q).await?;
    let next = (rows.len() as u64 >= u64::from(q.limit))
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok((rows.iter().map(|r| r.to_wire()).collect(), next))
}
