//! `execgate serve`: the gateway alone.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use execgate_gateway::{Gateway, GatewayConfig};

#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Address to listen on.
    #[arg(long, env = "EXECGATE_LISTEN", default_value = "127.0.0.1:6060")]
    pub listen: SocketAddr,
    /// Where the embedded store lives [default: ~/.local/share/execgate].
    #[arg(long, env = "EXECGATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Request bodies larger than this many bytes get 413.
    #[arg(long, env = "EXECGATE_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Base URL executors should dial back, when the gateway sits behind a
    /// proxy (default: from the Host header of their register request).
    #[arg(long, env = "EXECGATE_PUBLIC_URL")]
    pub public_url: Option<String>,
}

impl GatewayArgs {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(crate::default_data_dir)
    }

    pub fn config(&self) -> GatewayConfig {
        let mut c = GatewayConfig::new(self.listen, self.data_dir());
        c.max_body_bytes = self.max_body_bytes;
        c.public_url = self.public_url.clone();
        c
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

pub async fn run(a: ServeArgs) -> anyhow::Result<()> {
    let gateway = Gateway::bind(a.gateway.config()).await?;
    // Scripts and tests read this line to learn the port (with --listen :0).
    println!(
        "execgate gateway listening on http://{}",
        gateway.local_addr()
    );
    tracing::info!(data_dir = %a.gateway.data_dir().display(), "serving");
    gateway.serve().await?;
    Ok(())
}
