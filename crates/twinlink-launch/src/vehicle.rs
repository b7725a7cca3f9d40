//! Running the vehicle's ROS 2 nodes and the rclpy vehicle peer (`tests/peers/vehicle_peer.py`)
//! for end-to-end tests, the demo and benchmarks.

// Messages are built field by field from defaults, as ROS users write them.
#![allow(clippy::field_reassign_with_default)]

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
    /// The twin's document from the DR host's admin endpoint (`/twins/<vehicle>`).
    pub dr: Value,
    /// The DR host's `/twins` list.
    pub twins: Value,
    /// The twin's audit log, verified after the host stopped.
    pub audit: Value,
}

/// A free TCP port on loopback.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Publishes a regional traffic tile for the demo road, as the regional service would:
/// a stalled vehicle in the middle lane 600 m from the start and slow traffic on all lanes
/// from 2 km on, with 14 contributing vehicles (above k = 10).
fn publish_demo_tile(endpoint: &str) -> Result<()> {
    use twinlink_msgs::twin_msgs::msg::{Incident, LaneTraffic, RegionalTraffic};
    // Zenoh needs a multi-threaded runtime.
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let config = twinlink_link::link::zenoh_config("peer", &[], &[endpoint.to_string()])?;
        let session = zenoh::open(config)
            .await
            .map_err(|e| anyhow::anyhow!("zenoh: {e}"))?;
        let mut tile = RegionalTraffic::default();
        tile.header.frame_id = "map".into();
        tile.tile_id = "demo".into();
        tile.window.sec = 60;
        tile.contributors = 14;
        tile.k_threshold = 10;
        for lane in 0..3 {
            tile.lanes.push(LaneTraffic {
                segment_id: "demo-2".into(),
                lane_index: lane,
                start_s: 0.0,
                end_s: 600.0,
                mean_speed: 9.0,
                density: 55.0,
                flow: 1800.0,
            });
        }
        let mut stalled = Incident::default();
        stalled.incident_id = "demo-stalled-1".into();
        stalled.incident_kind = Incident::INCIDENT_STALLED_VEHICLE;
        stalled.segment_id = "demo-0".into();
        stalled.s = 600.0;
        stalled.lane_index = 1;
        stalled.extent = 6.0;
        stalled.confidence = 0.9;
        tile.incidents.push(stalled);
        let tile_id = twinlink_link::keys::RegionTile::new("demo")?;
        let key = twinlink_link::keys::region(&tile_id, twin_dr_host::host::REGION_TRAFFIC)?;
        // Let the session's declarations meet the host's subscriber first.
        tokio::time::sleep(Duration::from_millis(500)).await;
        session
            .put(key, twinlink_msgs::codec::encode(&tile)?)
            .await
            .map_err(|e| anyhow::anyhow!("zenoh put: {e}"))?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = session.close().await;
        anyhow::Ok(())
    })
}

/// Starts the DR host (`twin-dr-host`, the demo road of `ros_pkgs/twin_dr_host/config`)
/// with the vehicle's twin provisioned, publishes a regional tile, starts the vehicle's
/// nodes from `launch/vehicle.launch.xml` (through `twinlaunch`), drives them with
/// rclpy-published LiDAR, radar, camera and odometry for `seconds`, reads the twin from the
/// host's admin endpoint, stops everything and verifies the twin's audit log.
pub fn run_vehicle_demo(dir: &Path, seconds: f64) -> Result<VehicleDemo> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("keys"))?;
    crate::require_ros_environment()?;
    let isolation = Isolation::new("demo");
    let vehicle = isolation.namespace.trim_start_matches('/').to_string();
    let id = twinlink_link::VehicleId::new(&vehicle)?;
    let (pe, dr) = twinlink_link::KeyMaterial::generate_pair(&id)?;
    let pe_key = save_key(dir, "pe.key", &pe)?;
    save_key(&dir.join("keys"), &format!("{vehicle}.dr.key"), &dr)?;
    let endpoint = twinlink_link::scenario::loopback_endpoint()?;
    let admin = format!("127.0.0.1:{}", free_port()?);
    let data = dir.join("dr-data");
    let mut host_cmd = Command::new(workspace_binary("twin-dr-host")?);
    host_cmd
        .arg("--keys")
        .arg(dir.join("keys"))
        .arg("--data-dir")
        .arg(&data)
        .arg("--road")
        .arg(workspace_root().join("ros_pkgs/twin_dr_host/config/demo_road.json"))
        .args(["--listen", &endpoint, "--admin", &admin])
        .stdout(std::fs::File::create(dir.join("dr.out"))?)
        .stderr(std::fs::File::create(dir.join("dr.log"))?);
    let mut host = Supervised::spawn("twin-dr-host", host_cmd)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while twin_dr_host::admin::get(&admin, "/twins", Duration::from_secs(1)).is_err() {
        if std::time::Instant::now() > deadline {
            bail!(
                "the DR host did not start; see {}",
                dir.join("dr.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    publish_demo_tile(&endpoint)?;
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
    let read = |path: &str| -> Value {
        twin_dr_host::admin::get(&admin, path, Duration::from_secs(5))
            .ok()
            .and_then(|(_, body)| serde_json::from_str(&body).ok())
            .unwrap_or(Value::Null)
    };
    let dr_doc = read(&format!("/twins/{vehicle}"));
    let twins = read("/twins");
    nodes.terminate();
    nodes.wait_timeout(Duration::from_secs(10))?;
    host.terminate();
    host.wait_timeout(Duration::from_secs(10))?;
    let drive = drive?;
    let audit = match twin_dr_host::audit::verify(&data.join(&vehicle), &id, None) {
        Ok(report) => report.to_json(),
        Err(e) => serde_json::json!({"error": e.to_string()}),
    };
    Ok(VehicleDemo {
        drive,
        dr: dr_doc,
        twins,
        audit,
    })
}
