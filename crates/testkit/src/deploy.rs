//! A gateway with a workspace, its proxy token and executors: what the
//! tests and the bench set up before they measure or check anything.

use std::path::PathBuf;

use crate::api::{wait_for_env, Api};
use crate::execgate::{Execgate, GatewayProc, ANY_PORT};
use crate::process::Proc;

/// A fresh temporary directory whose `data/` holds workspace `workspace`
/// and a proxy token of it; the gateway is not started yet (add executors,
/// or write to the store, first).
pub struct Prepared {
    pub eg: Execgate,
    /// Removed when dropped; `data/` is the gateway's data dir, the rest
    /// is free for executors' workdirs and logs.
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub workspace: String,
    /// A proxy token of `workspace`.
    pub token: String,
    /// The PostgreSQL store's URL, when the store is not the data dir's.
    pub database_url: Option<String>,
}

impl Prepared {
    pub fn new(eg: &Execgate, workspace: &str) -> Prepared {
        Prepared::new_on(eg, workspace, None)
    }

    /// As [`Prepared::new`], with the store in PostgreSQL at
    /// `database_url` (an empty database) when given.
    pub fn new_on(eg: &Execgate, workspace: &str, database_url: Option<&str>) -> Prepared {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        let database_url = database_url.map(str::to_string);
        admin(
            eg,
            &data_dir,
            database_url.as_deref(),
            &["workspace", "create", workspace],
        );
        let token = admin(
            eg,
            &data_dir,
            database_url.as_deref(),
            &["token", "create", "--workspace", workspace],
        );
        Prepared {
            eg: eg.clone(),
            dir,
            data_dir,
            workspace: workspace.to_string(),
            token,
            database_url,
        }
    }

    /// `execgate admin executor add` of `name` in the workspace (the
    /// default environment if `default`): its executor token.
    pub fn add_executor(&self, name: &str, default: bool) -> String {
        add_executor(
            &self.eg,
            &self.data_dir,
            self.database_url.as_deref(),
            &self.workspace,
            name,
            default,
        )
    }

    /// Starts `execgate serve` on a free port of 127.0.0.1 with extra `args`.
    pub fn serve(self, args: &[&str]) -> Gateway {
        let mut all: Vec<&str> = args.to_vec();
        if let Some(url) = &self.database_url {
            all.extend(["--database-url", url]);
        }
        let process = self.eg.serve(&self.data_dir, ANY_PORT, &all);
        Gateway {
            url: process.url(),
            eg: self.eg,
            dir: self.dir,
            data_dir: self.data_dir,
            workspace: self.workspace,
            token: self.token,
            database_url: self.database_url,
            process,
        }
    }
}

/// `execgate admin` on the data dir's store, or on PostgreSQL's.
fn admin(eg: &Execgate, data: &std::path::Path, url: Option<&str>, args: &[&str]) -> String {
    match url {
        Some(url) => eg.admin_url(url, args),
        None => eg.admin(data, args),
    }
}

fn add_executor(
    eg: &Execgate,
    data: &std::path::Path,
    url: Option<&str>,
    ws: &str,
    name: &str,
    default: bool,
) -> String {
    let mut args = vec!["executor", "add", "--workspace", ws, "--name", name];
    if default {
        args.push("--default");
    }
    admin(eg, data, url, &args)
}

/// A running gateway over a [`Prepared`] data dir.
pub struct Gateway {
    pub eg: Execgate,
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub workspace: String,
    /// A proxy token of `workspace`.
    pub token: String,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The PostgreSQL store's URL, when the store is not the data dir's.
    pub database_url: Option<String>,
    pub process: GatewayProc,
}

impl Gateway {
    /// A fresh data dir with `workspace` and a token, served with `args`.
    pub fn start(eg: &Execgate, workspace: &str, args: &[&str]) -> Gateway {
        Prepared::new(eg, workspace).serve(args)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// A client of the connectors API with the workspace's token.
    pub fn api(&self) -> Api {
        Api::new(&self.url, &self.token)
    }

    /// See [`Prepared::add_executor`] (the gateway sees it at once).
    pub fn add_executor(&self, name: &str, default: bool) -> String {
        add_executor(
            &self.eg,
            &self.data_dir,
            self.database_url.as_deref(),
            &self.workspace,
            name,
            default,
        )
    }

    /// Adds executor `name`, starts it with extra `args` in a fresh
    /// `<dir>/work-<name>`, and waits until it is connected. Returns the
    /// process and its workdir.
    pub async fn executor(&self, name: &str, args: &[&str]) -> (Proc, PathBuf) {
        let token = self.add_executor(name, false);
        let work = self.dir.path().join(format!("work-{name}"));
        std::fs::create_dir_all(&work).unwrap();
        let proc = self.eg.executor(&self.url, &token, &work, args);
        wait_for_env(&self.api(), name).await;
        (proc, work)
    }
}
