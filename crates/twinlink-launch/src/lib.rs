//! Starting and supervising twinlink's processes, for `make demo` and end-to-end tests.
//!
//! - [`Supervised`] runs a child in its own process group and ends the whole group when it
//!   is dropped, so a failing test or an interrupted demo leaves nothing running.
//! - [`Isolation`] gives each run its own ROS domain and namespace, so runs in parallel (and
//!   CI) never hear each other.
//! - [`interop`] runs the r2r <-> rclpy message exchange and reads both sides' reports.
//! - [`sim_demo`] runs `make demo`: a scenario in real time, every component a process,
//!   against the same world without twins.

pub mod interop;
pub mod launch_file;
pub mod link_demo;
pub mod sim_demo;
pub mod vehicle;

use anyhow::{Context as _, Result};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A child process that is terminated, with everything it started, when dropped.
pub struct Supervised {
    name: String,
    child: Child,
}

impl Supervised {
    /// Spawns `command` in a new process group.
    pub fn spawn(name: &str, mut command: Command) -> Result<Self> {
        command.process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        Ok(Self {
            name: name.to_string(),
            child,
        })
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asks the process group to stop (SIGTERM), as an operator would; see `wait_timeout`.
    pub fn terminate(&self) {
        self.signal_group(libc::SIGTERM);
    }

    /// Kills the process group at once (SIGKILL, as `kill -9`), for crash tests; waits
    /// until the leader is gone.
    pub fn kill(&mut self) {
        self.signal_group(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// The process's stdout, if it was piped (once).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// The process id of the group leader.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn signal_group(&self, signal: i32) {
        // SAFETY: kill(2) with a negative pid signals the process group we created at spawn.
        unsafe {
            libc::kill(-(self.child.id() as i32), signal);
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            // The leader exited; still end anything it left behind in its group.
            self.signal_group(libc::SIGKILL);
            return;
        }
        self.signal_group(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal_group(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A ROS domain and namespace private to one run.
///
/// The domain is reserved across processes: each run holds an exclusive lock on
/// `$TMPDIR/twinlink-ros-domains/<id>.lock` for as long as any clone of its `Isolation`
/// lives (or its process does), so parallel test binaries never share a ROS graph.
#[derive(Debug, Clone)]
pub struct Isolation {
    /// `ROS_DOMAIN_ID` for every process of the run (1..=100).
    pub domain_id: u32,
    /// Namespace prefix for the run's topics, e.g. `/run_12345_678`.
    pub namespace: String,
    /// The lock that reserves `domain_id` (None when every domain was taken).
    _reservation: Option<std::sync::Arc<std::fs::File>>,
}

/// Takes an exclusive `flock` on `file` without waiting; false if another holds it.
fn try_lock(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor this File owns; no memory is involved.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Domains handed out to runs: 1..=100 (0 is the default that stray processes use).
const RUN_DOMAINS: u32 = 100;

impl Isolation {
    /// A fresh domain and namespace. The domain is the first free one from a random start;
    /// if all 100 are reserved (more parallel runs than domains), a random one is shared.
    pub fn new(label: &str) -> Self {
        let nonce: u32 = rand::random::<u32>() % 100_000;
        let pid = std::process::id();
        let start = pid.wrapping_mul(7919).wrapping_add(nonce) % RUN_DOMAINS;
        let dir = std::env::temp_dir().join("twinlink-ros-domains");
        let _ = std::fs::create_dir_all(&dir);
        let mut reserved = None;
        for step in 0..RUN_DOMAINS {
            let domain_id = 1 + (start + step) % RUN_DOMAINS;
            let Ok(file) = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("{domain_id}.lock")))
            else {
                continue;
            };
            if try_lock(&file) {
                reserved = Some((domain_id, std::sync::Arc::new(file)));
                break;
            }
        }
        let (domain_id, reservation) = match reserved {
            Some((id, file)) => (id, Some(file)),
            None => (1 + start, None),
        };
        Self {
            domain_id,
            namespace: format!("/{label}_{pid}_{nonce}"),
            _reservation: reservation,
        }
    }

    /// Applies the isolation (and localhost-only discovery) to a command.
    pub fn apply(&self, command: &mut Command) {
        command
            .env("ROS_DOMAIN_ID", self.domain_id.to_string())
            .env("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST");
    }
}

/// The repository root (where `Cargo.toml` of the workspace is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("crates/twinlink-launch sits two levels below the workspace root")
}

/// Directory of the running executable's profile (`target/debug` or `target/release`), where
/// sibling binaries of the workspace are built.
pub fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("executable has no directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Path of a workspace binary built next to the running executable, with a hint if missing.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let path = profile_dir()?.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is not built; run `make build` (or `source scripts/env.sh && cargo build -p <its package>`)",
        path.display()
    );
    Ok(path)
}

/// Checks that the ROS environment from scripts/env.sh is present, naming what is missing.
pub fn require_ros_environment() -> Result<()> {
    for var in ["AMENT_PREFIX_PATH", "TWINLINK_PYTHON", "LD_LIBRARY_PATH"] {
        anyhow::ensure!(
            std::env::var_os(var).is_some(),
            "{var} is not set: run through `make` or `source scripts/env.sh` first"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Isolation;

    #[test]
    fn runs_alive_at_once_never_share_a_domain() {
        let runs: Vec<Isolation> = (0..5).map(|_| Isolation::new("t")).collect();
        let mut domains: Vec<u32> = runs.iter().map(|r| r.domain_id).collect();
        assert!(domains.iter().all(|d| (1..=100).contains(d)), "{domains:?}");
        domains.sort_unstable();
        domains.dedup();
        assert_eq!(domains.len(), runs.len(), "a domain was handed out twice");
        // Another process (here: another open of the file) cannot take a held domain.
        let lock = std::env::temp_dir()
            .join("twinlink-ros-domains")
            .join(format!("{}.lock", runs[0].domain_id));
        let other = std::fs::File::open(lock).unwrap();
        assert!(!super::try_lock(&other), "a held domain could be taken");
    }
}
