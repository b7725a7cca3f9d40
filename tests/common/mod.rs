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
