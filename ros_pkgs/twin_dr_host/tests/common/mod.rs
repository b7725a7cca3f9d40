//! What the DR host's end-to-end tests share: a host process on loopback with its own
//! directories, ports and admin endpoint, and helpers for the vehicles' side.

#![allow(dead_code, clippy::field_reassign_with_default)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use twin_dr_host::admin;
use twinlink_launch::Supervised;
use twinlink_link::minimal::ros_time;
use twinlink_link::scenario::loopback_endpoint;
use twinlink_link::{KeyMaterial, Link, LinkConfig, LinkEvent, VehicleId, ZenohSettings};
use twinlink_msgs::twin_msgs::msg::VehicleState;

/// A DR host process and its files.
pub struct HostRun {
    pub dir: PathBuf,
    pub endpoint: String,
    pub admin: String,
    pub process: Option<Supervised>,
}

pub fn free_admin() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

impl HostRun {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "twin_dr_host_{name}_{}_{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        HostRun {
            dir,
            endpoint: loopback_endpoint().unwrap(),
            admin: free_admin(),
            process: None,
        }
    }

    /// Provisions `vehicle`: the DR key goes to the host's keys directory, the PE key is
    /// returned.
    pub fn provision(&self, vehicle: &str) -> KeyMaterial {
        let id = VehicleId::new(vehicle).unwrap();
        let (pe, dr) = KeyMaterial::generate_pair(&id).unwrap();
        dr.save(
            &self.dir.join("keys").join(format!("{vehicle}.dr.key")),
            false,
        )
        .unwrap();
        pe
    }

    pub fn start(&mut self, extra: &[&str]) {
        let mut c = Command::new(env!("CARGO_BIN_EXE_twin-dr-host"));
        c.arg("--keys")
            .arg(self.dir.join("keys"))
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args([
                "--listen",
                &self.endpoint,
                "--admin",
                &self.admin,
                "--rescan-ms",
                "200",
            ])
            .args(extra)
            .env("RUST_LOG", "info,zenoh=warn")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("host.log"))
                    .unwrap(),
            );
        self.process = Some(Supervised::spawn("twin-dr-host", c).unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        while admin::get(&self.admin, "/metrics", Duration::from_secs(1)).is_err() {
            assert!(
                Instant::now() < deadline,
                "host did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("host.log")).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        admin::get(&self.admin, path, Duration::from_secs(5)).unwrap()
    }

    pub fn json(&self, path: &str) -> Value {
        let (code, body) = self.get(path);
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.terminate();
            assert!(
                p.wait_timeout(Duration::from_secs(15)).unwrap().is_some(),
                "host did not stop"
            );
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }
}

impl Drop for HostRun {
    fn drop(&mut self) {
        self.process.take();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("host log ({}):\n{}", self.dir.display(), self.log());
        }
    }
}

pub fn pe_config(run: &HostRun, keys: KeyMaterial) -> LinkConfig {
    LinkConfig::new(keys, ZenohSettings::peer_connecting(&run.endpoint))
}

pub fn state(vehicle: &str, t_us: u64, x: f64, speed: f64) -> VehicleState {
    let mut s = VehicleState::default();
    s.header.stamp = ros_time(t_us);
    s.header.frame_id = "map".into();
    s.vehicle_id = vehicle.into();
    s.pose.position.x = x;
    s.pose.position.y = 3.5;
    s.pose.orientation.w = 1.0;
    s.twist.linear.x = speed;
    s.lane_index = 1;
    s.length = 4.5;
    s.width = 1.9;
    s
}

pub fn recv_until<F: FnMut(&LinkEvent) -> bool>(
    rt: &tokio::runtime::Runtime,
    link: &mut Link,
    within: Duration,
    mut f: F,
) -> bool {
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, link.recv()).await {
                Ok(Some(e)) => {
                    if f(&e) {
                        return true;
                    }
                }
                _ => return false,
            }
        }
    })
}

pub fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
