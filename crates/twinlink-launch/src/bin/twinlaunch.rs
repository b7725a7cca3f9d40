//! `twinlaunch`: runs a ROS 2 XML launch file (the subset `twinlink_launch::launch_file`
//! reads) where `ros2 launch` is not installed. Each node runs in its own process group;
//! SIGINT or SIGTERM ends them all.
//!
//! ```text
//! twinlaunch launch/vehicle.launch.xml vehicle:=car_1 key_file:=keys/car_1.pe.key
//! twinlaunch --print launch/vehicle_carla.launch.xml key_file:=k   # show the commands only
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Parser;
use twinlink_launch::launch_file::{load, parse_launch_args, NodeLaunch, PackageIndex};
use twinlink_launch::{profile_dir, workspace_root, Supervised};

#[derive(Parser)]
#[command(about = "Runs a ROS 2 XML launch file (where `ros2 launch` is not installed)")]
struct Args {
    /// The launch file.
    file: PathBuf,
    /// Launch arguments, name:=value.
    arguments: Vec<String>,
    /// Print the commands and exit.
    #[arg(long)]
    print: bool,
}

/// Finds a node's executable: next to this binary (the workspace build), then
/// `<prefix>/lib/<package>/<exec>` for each AMENT_PREFIX_PATH entry, then PATH.
fn executable(node: &NodeLaunch) -> Result<PathBuf> {
    let local = profile_dir()?.join(&node.executable);
    if local.exists() {
        return Ok(local);
    }
    if let Some(ament) = std::env::var_os("AMENT_PREFIX_PATH") {
        for prefix in std::env::split_paths(&ament) {
            let candidate = prefix
                .join("lib")
                .join(&node.package)
                .join(&node.executable);
            if candidate.exists() {
                return Ok(candidate);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join(&node.executable).exists() {
                return Ok(dir.join(&node.executable));
            }
        }
    }
    anyhow::bail!(
        "executable {} of package {} not found (build it with `make build`)",
        node.executable,
        node.package
    )
}

fn start(node: &NodeLaunch) -> Result<Supervised> {
    let mut command = Command::new(executable(node)?);
    command.args(node.ros_args());
    for (k, v) in &node.env {
        command.env(k, v);
    }
    let label = format!(
        "{}/{}",
        node.namespace.trim_end_matches('/'),
        node.name.as_deref().unwrap_or(&node.executable)
    );
    eprintln!("[twinlaunch] starting {label}");
    Supervised::spawn(&label, command)
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("twinlaunch: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let launch_args = parse_launch_args(args.arguments.iter().map(String::as_str))?;
    let index = PackageIndex::new(vec![workspace_root().join("ros_pkgs")]);
    let nodes = load(&args.file, &launch_args, &index)?;
    if args.print {
        for node in &nodes {
            println!(
                "{} {}",
                executable(node)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|e| format!("<{e}>")),
                node.ros_args().join(" ")
            );
        }
        return Ok(());
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let mut running: Vec<(NodeLaunch, Option<Supervised>, Option<Instant>)> = Vec::new();
    for node in nodes {
        let child = start(&node)?;
        running.push((node, Some(child), None));
    }
    eprintln!(
        "[twinlaunch] {} nodes running; Ctrl-C stops them",
        running.len()
    );
    while !stop.load(Ordering::Relaxed) {
        let mut alive = 0;
        for (node, child, restart_at) in &mut running {
            if let Some(c) = child {
                match c.wait_timeout(Duration::ZERO)? {
                    None => alive += 1,
                    Some(status) => {
                        eprintln!("[twinlaunch] {} exited ({status})", c.name());
                        *child = None;
                        if node.respawn {
                            *restart_at = Some(Instant::now() + Duration::from_secs(1));
                        }
                    }
                }
            }
            if let Some(at) = *restart_at {
                alive += 1;
                if Instant::now() >= at {
                    *restart_at = None;
                    *child = Some(start(node)?);
                }
            }
        }
        if alive == 0 {
            eprintln!("[twinlaunch] every node has exited");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("[twinlaunch] stopping");
    // Dropping each Supervised sends SIGTERM to its group, then SIGKILL after 2 s.
    drop(running);
    Ok(())
}
