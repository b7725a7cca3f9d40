//! A Zenoh router for twinlink deployments and tests: the zenoh crate in router mode, the
//! same routing code `zenohd` runs, at exactly the zenoh version the link is built with.

use clap::Parser;
use tracing::info;
use twinlink_link::cli;

#[derive(Debug, Parser)]
#[command(about = "Zenoh router (the zenoh crate in router mode)")]
struct Args {
    /// Endpoint to listen on, e.g. tcp/127.0.0.1:7447 (repeatable).
    #[arg(long, required = true)]
    listen: Vec<String>,
    /// Other routers to connect to (repeatable).
    #[arg(long)]
    connect: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cli::init_tracing();
    let args = Args::parse();
    let config = twinlink_link::link::zenoh_config("router", &args.listen, &args.connect)?;
    let session = zenoh::open(config)
        .await
        .map_err(|e| anyhow::anyhow!("starting the router on {:?}: {e}", args.listen))?;
    info!(listen = ?args.listen, zid = %session.zid(), "router running");
    println!("ready");
    cli::shutdown_signal().await;
    session
        .close()
        .await
        .map_err(|e| anyhow::anyhow!("closing: {e}"))?;
    Ok(())
}
