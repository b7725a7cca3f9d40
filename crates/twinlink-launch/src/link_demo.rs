//! The link part of the demo: a PE and its DR as separate processes through a Zenoh
//! router, provisioned with their own keys, streaming then timing round trips.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{workspace_binary, Supervised};

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// What the link demo measured.
#[derive(Debug)]
pub struct LinkDemo {
    /// The PE's report of the streaming run.
    pub stream: Value,
    /// The PE's report of the round-trip run.
    pub rtt: Value,
    /// The DR's report at the end.
    pub dr: Value,
}

fn end(
    dir: &Path,
    binary: &str,
    role: &str,
    router: &str,
    report: &str,
    extra: &[&str],
) -> Result<Command> {
    let mut c = Command::new(workspace_binary(binary)?);
    c.args([
        "--vehicle",
        "demo-car",
        "--mode",
        "client",
        "--connect",
        router,
        "--keys",
    ])
    .arg(dir.join(format!("keys/demo-car.{role}.key")))
    .arg("--report")
    .arg(dir.join(report))
    .args(extra)
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(dir.join(format!("{report}.log")))?);
    Ok(c)
}

fn read(dir: &Path, name: &str) -> Result<Value> {
    let text =
        std::fs::read_to_string(dir.join(name)).with_context(|| format!("reading {name}"))?;
    Ok(serde_json::from_str(&text)?)
}

fn run_pe(dir: &Path, router: &str, report: &str, extra: &[&str]) -> Result<Value> {
    let mut pe = Supervised::spawn("pe", end(dir, "twinlink-pe", "pe", router, report, extra)?)?;
    match pe.wait_timeout(Duration::from_secs(60))? {
        Some(s) if s.success() => read(dir, report),
        _ => bail!(
            "the PE failed; see {}",
            dir.join(format!("{report}.log")).display()
        ),
    }
}

/// Runs the link demo in `dir`.
pub fn run(dir: &Path) -> Result<LinkDemo> {
    let _ = std::fs::remove_dir_all(dir.join("keys"));
    std::fs::create_dir_all(dir)?;
    let status = Command::new(workspace_binary("twinctl")?)
        .args(["provision", "demo-car", "--out"])
        .arg(dir.join("keys"))
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("twinctl provision failed");
    }
    let router = format!("tcp/127.0.0.1:{}", free_port()?);
    let mut r = Command::new(workspace_binary("twinlink-router")?);
    r.args(["--listen", &router])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("router.log"))?);
    let _router = Supervised::spawn("router", r)?;
    let addr = router.trim_start_matches("tcp/");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("the router did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut dr = Supervised::spawn(
        "dr",
        end(dir, "twinlink-dr", "dr", &router, "dr.json", &[])?,
    )?;
    let stream = run_pe(
        dir,
        &router,
        "pe_stream.json",
        &["--count", "50", "--rate-hz", "10", "--objects", "50"],
    )?;
    let rtt = run_pe(
        dir,
        &router,
        "pe_rtt.json",
        &[
            "--rtt",
            "--count",
            "500",
            "--warmup",
            "100",
            "--objects",
            "50",
        ],
    )?;
    dr.terminate();
    dr.wait_timeout(Duration::from_secs(5))?;
    let dr = read(dir, "dr.json")?;
    Ok(LinkDemo { stream, rtt, dr })
}
