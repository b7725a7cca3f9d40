//! The interop exchange: twinlink's r2r node and an rclpy node trade every message type of a
//! fixture both ways over real DDS, and each side checks what it received.

use crate::{workspace_binary, workspace_root, Isolation, Supervised};
use anyhow::{bail, Context as _, Result};
use rand::SeedableRng;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use twinlink_msgs::testing::RandomValue;

macro_rules! fixture_entries {
    ($( [ $($segment:ident)::+ ] ),* $(,)?) => {
        |rng: &mut rand::rngs::StdRng, per_type: usize, types: &mut Map<String, Value>| {
            $(
                {
                    type M = twinlink_msgs::$($segment)::+;
                    let values: Vec<Value> = (0..per_type)
                        .map(|_| serde_json::to_value(M::random(rng)).expect("messages serialize to JSON"))
                        .collect();
                    types.insert(<M as twinlink_msgs::Message>::TYPE_NAME.to_string(), Value::Array(values));
                }
            )*
        }
    };
}

/// A fixture with `per_type` random values of every message type that travels on topics
/// (services' request and response parts are left out), reproducible from `seed`.
///
/// `filter` keeps the types whose name contains it (all when empty).
pub fn random_fixture(seed: u64, per_type: usize, filter: &str) -> Value {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut types = Map::new();
    let fill = twinlink_msgs::all_message_types!(fixture_entries);
    fill(&mut rng, per_type, &mut types);
    types.retain(|name, _| name.contains("/msg/") && name.contains(filter));
    serde_json::json!({ "seed": seed, "types": types })
}

/// What one side of the exchange reported.
#[derive(Debug, Clone)]
pub struct SideReport {
    /// Exit status was success.
    pub exited_ok: bool,
    /// The report file's contents.
    pub report: Value,
    /// What the process printed on stdout (its table).
    pub stdout: String,
    /// What the process printed on stderr (errors, ROS logs).
    pub stderr: String,
}

/// Both sides' reports.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// twin_interop_node (r2r).
    pub r2r: SideReport,
    /// interop_peer.py (rclpy).
    pub rclpy: SideReport,
}

impl Outcome {
    /// True if both sides received every value and found every field and byte as expected.
    pub fn all_matched(&self) -> bool {
        self.r2r.exited_ok
            && self.rclpy.exited_ok
            && self.r2r.report["ok"] == Value::Bool(true)
            && self.rclpy.report["ok"] == Value::Bool(true)
    }
}

/// Runs the exchange of `fixture` in `work_dir`; both processes are ended on return.
pub fn run_exchange(fixture: &Value, work_dir: &Path, timeout: Duration) -> Result<Outcome> {
    run_exchange_with_peer_fixture(fixture, fixture, work_dir, timeout)
}

/// Runs the exchange with the r2r node holding `fixture` and the rclpy peer holding
/// `peer_fixture`. With different values, each side must detect the other's as wrong: this
/// is how tests prove that the checks can fail.
pub fn run_exchange_with_peer_fixture(
    fixture: &Value,
    peer_fixture: &Value,
    work_dir: &Path,
    timeout: Duration,
) -> Result<Outcome> {
    crate::require_ros_environment()?;
    std::fs::create_dir_all(work_dir)?;
    let fixture_path = work_dir.join("fixture.json");
    std::fs::write(&fixture_path, serde_json::to_string_pretty(fixture)?)?;
    let peer_fixture_path = work_dir.join("peer_fixture.json");
    std::fs::write(
        &peer_fixture_path,
        serde_json::to_string_pretty(peer_fixture)?,
    )?;
    let isolation = Isolation::new("interop");
    let timeout_s = timeout.as_secs_f64().to_string();
    let r2r_report = work_dir.join("r2r_report.json");
    let py_report = work_dir.join("rclpy_report.json");

    let mut node = Command::new(workspace_binary("twin_interop_node")?);
    node.args([
        "--fixture",
        path_str(&fixture_path)?,
        "--namespace",
        &isolation.namespace,
    ])
    .args([
        "--report",
        path_str(&r2r_report)?,
        "--timeout-s",
        &timeout_s,
    ]);
    isolation.apply(&mut node);
    let python = std::env::var("TWINLINK_PYTHON").context("TWINLINK_PYTHON is not set")?;
    let mut peer = Command::new(python);
    peer.arg(peer_script())
        .args([
            "--fixture",
            path_str(&peer_fixture_path)?,
            "--namespace",
            &isolation.namespace,
        ])
        .args(["--report", path_str(&py_report)?, "--timeout-s", &timeout_s]);
    isolation.apply(&mut peer);

    for (command, log) in [(&mut node, "r2r"), (&mut peer, "rclpy")] {
        command
            .stdout(std::fs::File::create(work_dir.join(format!("{log}.out")))?)
            .stderr(std::fs::File::create(work_dir.join(format!("{log}.err")))?);
    }
    let mut node = Supervised::spawn("twin_interop_node", node)?;
    let mut peer = Supervised::spawn("interop_peer.py", peer)?;
    let grace = timeout + Duration::from_secs(10);
    let node_status = node.wait_timeout(grace)?;
    let peer_status = peer.wait_timeout(Duration::from_secs(10))?;
    Ok(Outcome {
        r2r: side(node_status, &r2r_report, work_dir, "r2r")?,
        rclpy: side(peer_status, &py_report, work_dir, "rclpy")?,
    })
}

fn side(
    status: Option<std::process::ExitStatus>,
    report: &Path,
    work_dir: &Path,
    log: &str,
) -> Result<SideReport> {
    let report = match std::fs::read_to_string(report) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", report.display()))?,
        Err(_) => Value::Null,
    };
    let read = |ext: &str| {
        std::fs::read_to_string(work_dir.join(format!("{log}.{ext}"))).unwrap_or_default()
    };
    Ok(SideReport {
        exited_ok: status.is_some_and(|s| s.success()),
        report,
        stdout: read("out"),
        stderr: read("err"),
    })
}

fn path_str(path: &Path) -> Result<&str> {
    match path.to_str() {
        Some(s) => Ok(s),
        None => bail!("path {} is not UTF-8", path.display()),
    }
}

/// The rclpy peer script.
pub fn peer_script() -> PathBuf {
    workspace_root().join("ros_pkgs/twin_ros_interop/scripts/interop_peer.py")
}
