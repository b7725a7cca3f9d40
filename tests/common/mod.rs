//! What the end-to-end tests share: free loopback ports, per-run work directories, keys,
//! PostgreSQL and Zenoh routers of their own, fleet hosts, metrics and waiting.

#![allow(dead_code)]

use std::path::PathBuf;

use twinlink_launch::workspace_root;

/// A TCP port on 127.0.0.1 that nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An empty directory `target/e2e/<name>_<pid>` for one test run.
pub fn work_dir(name: &str) -> PathBuf {
    let dir = workspace_root()
        .join("target/e2e")
        .join(format!("{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A PostgreSQL server of the test's own on loopback (`scripts/postgres-local.sh`), stopped
/// at once and removed when dropped.
pub struct Postgres {
    /// Its data directory.
    pub dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its connection URL.
    pub url: String,
}

impl Postgres {
    /// Creates and starts a server named after `name`.
    pub fn start(name: &str) -> Postgres {
        // Under the system's temporary directory: the server runs as the `postgres` user,
        // which must reach its directory.
        let dir = std::env::temp_dir().join(format!("twinlink-pg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let port = free_port();
        let script = workspace_root().join("scripts/postgres-local.sh");
        let out = std::process::Command::new(&script)
            .arg("start")
            .arg(&dir)
            .arg(port.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "starting PostgreSQL failed (scripts/setup.sh installs it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Postgres { dir, port, url }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let script = workspace_root().join("scripts/postgres-local.sh");
        let _ = std::process::Command::new(script)
            .arg("kill")
            .arg(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("initdb.log"));
    }
}

/// Starts `twinlink-router` listening on `listen` (and connected to the router at
/// `connect`), its log in `<dir>/<name>.log`; returns once its port answers.
pub fn start_router(
    dir: &std::path::Path,
    name: &str,
    listen: &str,
    connect: Option<&str>,
) -> twinlink_launch::Supervised {
    let mut c =
        std::process::Command::new(twinlink_launch::workspace_binary("twinlink-router").unwrap());
    c.args(["--listen", listen]);
    if let Some(other) = connect {
        c.args(["--connect", other]);
    }
    c.stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap());
    let router = twinlink_launch::Supervised::spawn(name, c).unwrap();
    let addr = listen.trim_start_matches("tcp/");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "{name} did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    router
}

/// Waits until `f` holds, checking every 50 ms; fails the test after `within`.
pub fn wait_for(what: &str, within: std::time::Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Provisions `vehicle` with `twinctl provision` into `keys` (its DR and PE key files).
pub fn provision(keys: &std::path::Path, vehicle: &str) {
    let status = std::process::Command::new(twinlink_launch::workspace_binary("twinctl").unwrap())
        .args(["provision", vehicle, "--out"])
        .arg(keys)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "provisioning {vehicle}");
}

/// The sum of the series of metric `name` (exactly that name) whose labels contain
/// `labels`, from the host's admin endpoint at `admin` (0 when it does not answer).
pub fn metric(admin: &str, token: &str, name: &str, labels: &str) -> f64 {
    let Ok((_, text)) = twin_dr_host::admin::request(
        "GET",
        admin,
        "/metrics",
        Some(token),
        None,
        std::time::Duration::from_secs(2),
    ) else {
        return 0.0;
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            (series_name == name && series_labels.contains(labels))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Starts a DR host of a fleet: keys in `<dir>/keys`, its data in `<dir>/data-<name>`, the
/// fleet's audit logs in `<dir>/audit`, operators' tokens in `<dir>/tokens`, the database
/// `db`, `shards` shards, a client of the routers `connect`, and `extra` arguments; its log
/// appended to `<dir>/<name>.log`. Returns its admin address once `/metrics` answers
/// (asked with `token`).
pub fn start_fleet_host(
    dir: &std::path::Path,
    name: &str,
    db: &str,
    shards: &str,
    connect: &[String],
    token: &str,
    extra: &[&str],
) -> (String, twinlink_launch::Supervised) {
    let admin = format!("127.0.0.1:{}", free_port());
    let mut c =
        std::process::Command::new(twinlink_launch::workspace_binary("twin-dr-host").unwrap());
    c.arg("--keys")
        .arg(dir.join("keys"))
        .arg("--data-dir")
        .arg(dir.join(format!("data-{name}")))
        .arg("--audit-dir")
        .arg(dir.join("audit"))
        .arg("--admin-tokens")
        .arg(dir.join("tokens"))
        .args([
            "--fleet-db",
            db,
            "--host-name",
            name,
            "--shards",
            shards,
            "--admin",
            &admin,
            "--census-window-s",
            "0",
            "--mode",
            "client",
        ])
        .args(extra);
    for router in connect {
        c.args(["--connect", router]);
    }
    c.env("RUST_LOG", "info,zenoh=warn")
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("{name}.log")))
                .unwrap(),
        );
    let process = twinlink_launch::Supervised::spawn(name, c).unwrap();
    wait_for(
        &format!("{name} to answer"),
        std::time::Duration::from_secs(30),
        || {
            twin_dr_host::admin::request(
                "GET",
                &admin,
                "/metrics",
                Some(token),
                None,
                std::time::Duration::from_secs(1),
            )
            .is_ok()
        },
    );
    (admin, process)
}
