//! Command-line pieces shared by the link's binaries.

use std::path::PathBuf;

use clap::Args;

use crate::crypto::KeyMaterial;
use crate::fault::FaultPlan;
use crate::keys::{Role, VehicleId};
use crate::link::{LinkConfig, ZenohSettings};

/// How a binary joins Zenoh.
#[derive(Debug, Clone, Args)]
pub struct ZenohArgs {
    /// Zenoh mode: peer, or client (through a router).
    #[arg(long, default_value = "peer", value_parser = ["peer", "client"])]
    pub mode: String,
    /// Endpoint to listen on, e.g. tcp/127.0.0.1:7447 (repeatable).
    #[arg(long)]
    pub listen: Vec<String>,
    /// Endpoint to connect to, e.g. tcp/127.0.0.1:7447 (repeatable).
    #[arg(long)]
    pub connect: Vec<String>,
}

impl ZenohArgs {
    /// The settings these arguments describe.
    pub fn settings(&self) -> anyhow::Result<ZenohSettings> {
        if self.listen.is_empty() && self.connect.is_empty() {
            anyhow::bail!(
                "give at least one --listen or --connect endpoint (no multicast scouting is used)"
            );
        }
        Ok(ZenohSettings {
            mode: self.mode.clone(),
            listen: self.listen.clone(),
            connect: self.connect.clone(),
        })
    }
}

/// Which twin and keys a link end uses.
#[derive(Debug, Clone, Args)]
pub struct EndArgs {
    /// The vehicle's id.
    #[arg(long)]
    pub vehicle: VehicleId,
    /// This end's key file from `twinctl provision`.
    #[arg(long)]
    pub keys: PathBuf,
    /// Faults to inject on outgoing frames, e.g. drop=0.1,delay_ms=20 (see twinlink_link::fault).
    #[arg(long, default_value = "")]
    pub faults: FaultPlan,
    /// Rotate keys after this many seconds (PE only).
    #[arg(long)]
    pub rekey_after_s: Option<f64>,
    #[command(flatten)]
    /// Zenoh settings.
    pub zenoh: ZenohArgs,
}

impl EndArgs {
    /// The link configuration for `role`.
    pub fn config(&self, role: Role) -> anyhow::Result<LinkConfig> {
        let material = KeyMaterial::load(&self.keys, &self.vehicle, role)?;
        let mut config = LinkConfig::new(material, self.zenoh.settings()?);
        config.faults.set_plan(self.faults.clone());
        if let Some(s) = self.rekey_after_s {
            if !(s.is_finite() && s > 0.0) {
                anyhow::bail!("--rekey-after-s must be a positive number of seconds, got {s}");
            }
            config.rekey_after = std::time::Duration::from_secs_f64(s);
        }
        Ok(config)
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,zenoh=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves when the process gets SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Median, 99th percentile and maximum of `samples` (sorted in place).
pub fn percentiles(samples: &mut [u64]) -> (u64, u64, u64) {
    if samples.is_empty() {
        return (0, 0, 0);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), *samples.last().expect("not empty"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(super::percentiles(&mut v), (51, 99, 100));
        assert_eq!(super::percentiles(&mut []), (0, 0, 0));
    }
}
