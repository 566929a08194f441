//! `execgate cp SRC DST`: copy files between this machine and environments,
//! or between two environments.
//!
//! A side written `ENV:PATH` is remote; anything else is local (write
//! `./a:b` for a local name with a colon). Local → remote streams through
//! `PUT /files`, remote → local through `GET /files` into a temporary file
//! renamed into place when complete, remote → remote through `copy_path`.
//! A progress bar shows on stderr when it is a terminal.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use execgate_client::Client;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Args, Debug)]
pub struct CpArgs {
    /// Source: a local path or ENV:PATH.
    pub source: String,
    /// Destination: a local path or ENV:PATH.
    pub destination: String,
    /// Copy directories (between environments only).
    #[arg(short, long)]
    pub recursive: bool,
}

#[derive(Debug, PartialEq)]
enum Side {
    Local(PathBuf),
    Remote { env: String, path: String },
}

fn side(spec: &str) -> Side {
    if let Some((env, path)) = spec.split_once(':') {
        let env_like = env
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && env
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if env_like && !path.is_empty() {
            return Side::Remote {
                env: env.into(),
                path: path.into(),
            };
        }
    }
    Side::Local(PathBuf::from(spec))
}

fn progress(len: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bytes:>10}/{total_bytes:10} {bar:30} {bytes_per_sec:>12} eta {eta}",
        )
        .expect("valid template"),
    );
    bar
}

pub async fn run(a: CpArgs) -> anyhow::Result<()> {
    let client = Client::from_env()?;
    match (side(&a.source), side(&a.destination)) {
        (Side::Local(_), Side::Local(_)) => {
            bail!("both sides are local; write ENV:PATH for the remote side")
        }
        (Side::Local(src), Side::Remote { env, path }) => upload(&client, &src, &env, &path).await,
        (Side::Remote { env, path }, Side::Local(dst)) => {
            download(&client, &env, &path, &dst).await
        }
        (Side::Remote { env: se, path: sp }, Side::Remote { env: de, path: dp }) => {
            let r = client
                .call_tool(
                    &se,
                    "copy_path",
                    json!({
                        "source_environment_id": se,
                        "source_path": sp,
                        "destination_environment_id": de,
                        "destination_path": dp,
                        "recursive": a.recursive,
                    }),
                )
                .await?;
            if r.is_error {
                bail!("copy_path failed: {}", r.first_text());
            }
            eprintln!("{}", r.first_text());
            Ok(())
        }
    }
}

async fn upload(client: &Client, src: &Path, env: &str, path: &str) -> anyhow::Result<()> {
    let file = tokio::fs::File::open(src)
        .await
        .with_context(|| format!("opening {}", src.display()))?;
    let meta = file.metadata().await?;
    if meta.is_dir() {
        bail!(
            "{} is a directory; cp copies files between this machine and an environment",
            src.display()
        );
    }
    let bar = progress(Some(meta.len()));
    let reader_bar = bar.clone();
    let stream = futures_util::stream::unfold(file, move |mut file| {
        let bar = reader_bar.clone();
        async move {
            let mut buf = vec![0u8; 256 * 1024];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    bar.inc(n as u64);
                    Some((Ok::<_, std::io::Error>(buf), file))
                }
                Err(e) => Some((Err(e), file)),
            }
        }
    });
    let r = client
        .upload(env, path, reqwest::Body::wrap_stream(stream))
        .await?;
    bar.finish_and_clear();
    eprintln!(
        "{} -> {env}:{path}: {} bytes, sha256 {}",
        src.display(),
        r["bytes"],
        r["sha256"].as_str().unwrap_or("")
    );
    Ok(())
}

async fn download(client: &Client, env: &str, path: &str, dst: &Path) -> anyhow::Result<()> {
    let dst = if dst.is_dir() {
        let name = Path::new(path)
            .file_name()
            .context("the remote path has no file name")?;
        dst.join(name)
    } else {
        dst.to_owned()
    };
    let resp = client.download(env, path).await?;
    let len = resp.content_length();
    let bar = progress(len);
    // Write beside the destination, rename when complete: no partial file
    // ever stands at the destination.
    let tmp = dst.with_file_name(format!(
        ".{}.execgate-part",
        dst.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut out = tokio::fs::File::create(&tmp)
        .await
        .with_context(|| format!("creating {}", tmp.display()))?;
    let mut body = resp.bytes_stream();
    let mut got = 0u64;
    let result: anyhow::Result<()> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.context("the download was interrupted")?;
            out.write_all(&chunk).await?;
            got += chunk.len() as u64;
            bar.inc(chunk.len() as u64);
        }
        if let Some(n) = len {
            if got != n {
                bail!("the download ended after {got} of {n} bytes");
            }
        }
        out.flush().await?;
        Ok(())
    }
    .await;
    bar.finish_and_clear();
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    tokio::fs::rename(&tmp, &dst).await?;
    eprintln!("{env}:{path} -> {}: {got} bytes", dst.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides() {
        assert_eq!(
            side("laptop:/tmp/x"),
            Side::Remote {
                env: "laptop".into(),
                path: "/tmp/x".into()
            }
        );
        assert_eq!(
            side("gpu-1:rel/p"),
            Side::Remote {
                env: "gpu-1".into(),
                path: "rel/p".into()
            }
        );
        assert_eq!(side("./a:b"), Side::Local("./a:b".into()));
        assert_eq!(side("/abs/path"), Side::Local("/abs/path".into()));
        assert_eq!(side("env:"), Side::Local("env:".into()));
    }
}
