//! Running the vehicle's ROS 2 nodes and the rclpy vehicle peer (`tests/peers/vehicle_peer.py`)
//! for end-to-end tests, the demo and benchmarks.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{workspace_binary, workspace_root, Isolation, Supervised};

/// One run: its isolation (domain, namespace) and a directory for logs and reports.
pub struct VehicleRun {
    /// ROS domain and the vehicle's namespace.
    pub isolation: Isolation,
    /// Logs and reports.
    pub dir: PathBuf,
}

impl VehicleRun {
    /// A fresh run under `target/e2e/<label>_<pid>`.
    pub fn new(label: &str) -> Result<Self> {
        let dir = workspace_root()
            .join("target/e2e")
            .join(format!("{label}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        crate::require_ros_environment()?;
        Ok(VehicleRun {
            isolation: Isolation::new(label),
            dir,
        })
    }

    /// Starts the workspace binary `binary` as a ROS node in the run's namespace, with
    /// `params` as `-p name:=value`; stdout and stderr go to `<dir>/<binary>.log`.
    pub fn spawn_node(&self, binary: &str, params: &[(&str, String)]) -> Result<Supervised> {
        let mut command = Command::new(workspace_binary(binary)?);
        command
            .args(["--ros-args", "-r"])
            .arg(format!("__ns:={}", self.isolation.namespace));
        for (name, value) in params {
            command.arg("-p").arg(format!("{name}:={value}"));
        }
        self.isolation.apply(&mut command);
        let log = std::fs::File::create(self.dir.join(format!("{binary}.log")))?;
        command.stdout(log.try_clone()?).stderr(log);
        Supervised::spawn(binary, command)
    }

    /// The log of a node started with [`VehicleRun::spawn_node`].
    pub fn log(&self, binary: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{binary}.log"))).unwrap_or_default()
    }

    /// Runs the rclpy peer in `mode` with `args` and returns its JSON report.
    pub fn run_peer(&self, mode: &str, args: &[&str], timeout: Duration) -> Result<Value> {
        let python = std::env::var("TWINLINK_PYTHON").context("TWINLINK_PYTHON is not set")?;
        let mut command = Command::new(python);
        command
            .arg(peer_script())
            .arg(mode)
            .args(["--namespace", &self.isolation.namespace])
            .args(args);
        self.isolation.apply(&mut command);
        let out = self.dir.join(format!("peer_{mode}.out"));
        let err = self.dir.join(format!("peer_{mode}.err"));
        command
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?);
        let mut peer = Supervised::spawn(&format!("vehicle_peer {mode}"), command)?;
        let status = peer.wait_timeout(timeout)?;
        let stdout = std::fs::read_to_string(&out).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        match status {
            Some(s) if s.success() => serde_json::from_str(stdout.trim()).with_context(|| {
                format!("peer {mode} printed no JSON report:\n{stdout}\n{stderr}")
            }),
            Some(s) => bail!("peer {mode} failed ({s}):\n{stderr}"),
            None => bail!("peer {mode} did not finish within {timeout:?}:\n{stderr}"),
        }
    }
}

/// The rclpy vehicle peer script.
pub fn peer_script() -> PathBuf {
    workspace_root().join("tests/peers/vehicle_peer.py")
}

/// Saves `material` to `<dir>/<name>` (mode 0600) and returns the path.
pub fn save_key(dir: &Path, name: &str, material: &twinlink_link::KeyMaterial) -> Result<PathBuf> {
    let path = dir.join(name);
    material
        .save(&path, true)
        .with_context(|| format!("saving {}", path.display()))?;
    Ok(path)
}

/// What the vehicle demo measured.
pub struct VehicleDemo {
    /// The rclpy peer's report (`drive` mode).
    pub drive: Value,
    /// The DR's report.
    pub dr: Value,
}

/// Starts a minimal DR and the vehicle's nodes from `launch/vehicle.launch.xml` (through
/// `twinlaunch`), drives them with rclpy-published LiDAR, radar, camera and odometry for
/// `seconds`, then stops everything.
pub fn run_vehicle_demo(dir: &Path, seconds: f64) -> Result<VehicleDemo> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    crate::require_ros_environment()?;
    let isolation = Isolation::new("demo");
    let vehicle = isolation.namespace.trim_start_matches('/').to_string();
    let id = twinlink_link::VehicleId::new(&vehicle)?;
    let (pe, dr) = twinlink_link::KeyMaterial::generate_pair(&id)?;
    let pe_key = save_key(dir, "pe.key", &pe)?;
    let dr_key = save_key(dir, "dr.key", &dr)?;
    let endpoint = twinlink_link::scenario::loopback_endpoint()?;
    let dr_report = dir.join("dr.json");
    let mut dr_cmd = Command::new(workspace_binary("twinlink-dr")?);
    dr_cmd
        .args(["--vehicle", &vehicle, "--keys"])
        .arg(&dr_key)
        .args(["--listen", &endpoint, "--report"])
        .arg(&dr_report)
        .stdout(std::fs::File::create(dir.join("dr.out"))?)
        .stderr(std::fs::File::create(dir.join("dr.log"))?);
    let mut dr_proc = Supervised::spawn("twinlink-dr", dr_cmd)?;
    let mut launch = Command::new(workspace_binary("twinlaunch")?);
    launch
        .arg(workspace_root().join("launch/vehicle.launch.xml"))
        .arg(format!("vehicle:={vehicle}"))
        .arg(format!("key_file:={}", pe_key.display()))
        .arg(format!("twin_endpoint:={endpoint}"));
    isolation.apply(&mut launch);
    let log = std::fs::File::create(dir.join("nodes.log"))?;
    launch.stdout(log.try_clone()?).stderr(log);
    let mut nodes = Supervised::spawn("twinlaunch", launch)?;
    let run = VehicleRun {
        isolation,
        dir: dir.to_path_buf(),
    };
    let drive = run.run_peer(
        "drive",
        &["--seconds", &seconds.to_string()],
        Duration::from_secs_f64(seconds + 90.0),
    );
    nodes.terminate();
    nodes.wait_timeout(Duration::from_secs(10))?;
    dr_proc.terminate();
    dr_proc.wait_timeout(Duration::from_secs(10))?;
    let drive = drive?;
    let dr = std::fs::read_to_string(&dr_report)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    Ok(VehicleDemo { drive, dr })
}
