//! What the end-to-end tests share: free loopback ports and per-run work directories.

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
