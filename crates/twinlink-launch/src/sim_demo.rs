//! The simulation demo (`make demo`): a scenario in real time with every component a
//! process, compared with the same world without twins.
//!
//! Processes: the DR host (`twin-dr-host`, one twin per driven vehicle, the scenario's road),
//! per driven vehicle its ROS 2 nodes from `launch/vehicle.launch.xml` through `twinlaunch`
//! (LiDAR and radar summarizers, twin link node; the camera comes as detections from the
//! simulator), and the simulator (`twin_sim`), which publishes the vehicles' sensors and
//! applies their twins' advice. While it runs, the twins' estimates are read from the host's
//! admin endpoint. Afterwards: the baseline (the same world and seed without advice), the
//! report (`report.json`, a table), plots (PNG), the recording (MCAP) and every twin's audit
//! log verified. Then the inter-twin relay off and on in `hidden_hazard` (fast mode, a few
//! seeds), added to the report.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use twinlink_sim::realtime::{baseline, RealtimeReport};
use twinlink_sim::report::{self, DemoReport, EstimateSample};
use twinlink_sim::Scenario;

use crate::vehicle::save_key;
use crate::{workspace_binary, workspace_root, Isolation, Supervised};

/// What to run.
#[derive(Debug, Clone)]
pub struct SimDemoOptions {
    /// The scenario file.
    pub scenario: PathBuf,
    /// Vehicles driven by real ROS 2 nodes (each with a twin).
    pub vehicles: usize,
    /// Simulated time instead of the scenario's [s].
    pub duration_s: Option<f64>,
    /// Seed instead of the scenario's.
    pub seed: Option<u64>,
    /// Where everything is written (emptied first).
    pub out: PathBuf,
    /// Show a progress bar on the terminal.
    pub progress_bar: bool,
    /// The relay comparison's scenario (fast mode, relay off and on).
    pub relay_scenario: PathBuf,
    /// Its seeds; none: no relay comparison.
    pub relay_seeds: Vec<u64>,
}

impl SimDemoOptions {
    /// The default scenario (`sim/scenarios/demo.yaml`), three vehicles, into `out`.
    pub fn new(out: &Path) -> SimDemoOptions {
        SimDemoOptions {
            scenario: workspace_root().join("sim/scenarios/demo.yaml"),
            vehicles: 3,
            duration_s: None,
            seed: None,
            out: out.to_path_buf(),
            progress_bar: false,
            relay_scenario: workspace_root().join("sim/scenarios/hidden_hazard.yaml"),
            relay_seeds: vec![1, 2, 3, 4],
        }
    }
}

/// What the demo produced.
pub struct SimDemo {
    /// The comparison.
    pub report: DemoReport,
    /// The comparison as a table.
    pub table: String,
    /// Files written (report, plots, recording, trace).
    pub files: Vec<PathBuf>,
    /// Every twin's audit log, verified after the host stopped (vehicle, report).
    pub audits: Vec<(String, Value)>,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn admin_json(admin: &str, path: &str) -> Option<Value> {
    twin_dr_host::admin::get(admin, path, Duration::from_secs(2))
        .ok()
        .and_then(|(_, body)| serde_json::from_str(&body).ok())
}

/// Runs the demo; see the module documentation.
pub fn run_sim_demo(options: &SimDemoOptions) -> Result<SimDemo> {
    crate::require_ros_environment()?;
    if options.vehicles == 0 || options.vehicles > 8 {
        bail!(
            "vehicles: 1 to 8 (each runs three ROS nodes on this machine), got {}",
            options.vehicles
        );
    }
    let dir = &options.out;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("keys"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut scenario = Scenario::load(&options.scenario)
        .with_context(|| format!("scenario {}", options.scenario.display()))?;
    if let Some(seed) = options.seed {
        scenario.seed = seed;
    }
    if let Some(d) = options.duration_s {
        scenario.duration_s = d;
    }
    let isolation = Isolation::new("demo");
    let names: Vec<String> = (1..=options.vehicles).map(|k| format!("car_{k}")).collect();

    // Keys (as `twinctl provision` writes them) and the road.
    let mut pe_keys = Vec::new();
    for name in &names {
        let id = twinlink_link::VehicleId::new(name)?;
        let (pe, dr) = twinlink_link::KeyMaterial::generate_pair(&id)?;
        pe_keys.push(save_key(dir, &format!("{name}.pe.key"), &pe)?);
        save_key(&dir.join("keys"), &format!("{name}.dr.key"), &dr)?;
    }
    let road = dir.join("road.json");
    std::fs::write(
        &road,
        serde_json::to_string_pretty(&twinlink_sim::fast::twin_road_spec(&scenario))?,
    )?;

    // The DR host.
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
        .arg(&road)
        .args(["--listen", &endpoint, "--admin", &admin])
        .stdout(std::fs::File::create(logs.join("dr-host.out"))?)
        .stderr(std::fs::File::create(logs.join("dr-host.log"))?);
    let mut host = Supervised::spawn("twin-dr-host", host_cmd)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin_json(&admin, "/twins").is_none() {
        if Instant::now() > deadline {
            bail!(
                "the DR host did not start; see {}",
                logs.join("dr-host.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Each vehicle's nodes.
    let mut nodes = Vec::new();
    let link_defaults = std::fs::read_to_string(
        workspace_root().join("ros_pkgs/twin_link_node/config/twin_link_node.param.yaml"),
    )?;
    // The scenario's coverage, which each vehicle's link node applies to its link by the
    // vehicle's position (every 10 m).
    let radio_map = dir.join("radio_map.json");
    std::fs::write(
        &radio_map,
        serde_json::to_string(&scenario.coverage.radio_map(scenario.road.length_m, 10.0))?,
    )?;
    for (name, key) in names.iter().zip(&pe_keys) {
        // The link node's defaults, with its counters written at exit and the radio map.
        let params = dir.join(format!("{name}.link.param.yaml"));
        let report = logs.join(format!("link_{name}.json"));
        let mut with_files = link_defaults.clone();
        for (name, value) in [("report_file", &report), ("radio_map_file", &radio_map)] {
            let set = with_files.replace(
                &format!("{name}: \"\""),
                &format!("{name}: \"{}\"", value.display()),
            );
            anyhow::ensure!(
                set != with_files,
                "the link node's parameter file has no empty {name} line"
            );
            with_files = set;
        }
        std::fs::write(&params, with_files)?;
        let mut launch = Command::new(workspace_binary("twinlaunch")?);
        launch
            .arg(workspace_root().join("launch/vehicle.launch.xml"))
            .arg(format!("vehicle:={name}"))
            .arg(format!("key_file:={}", key.display()))
            .arg(format!("twin_endpoint:={endpoint}"))
            .arg("use_camera:=false")
            .arg(format!("link_params:={}", params.display()));
        isolation.apply(&mut launch);
        let log = std::fs::File::create(logs.join(format!("nodes_{name}.log")))?;
        launch.stdout(log.try_clone()?).stderr(log);
        nodes.push(Supervised::spawn(&format!("twinlaunch {name}"), launch)?);
    }
    // Every link up before the world starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    for name in &names {
        loop {
            let up = admin_json(&admin, &format!("/twins/{name}"))
                .and_then(|d| d["link"]["sessions_established"].as_u64())
                .unwrap_or(0)
                >= 1;
            if up {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{name}'s link never came up; see {}",
                    logs.join(format!("nodes_{name}.log")).display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // The simulator.
    let trace = dir.join("trace.jsonl");
    let sim_report = dir.join("sim.json");
    let mut sim_cmd = Command::new(workspace_binary("twin_sim")?);
    sim_cmd
        .arg("--scenario")
        .arg(&options.scenario)
        .arg("--vehicle")
        .arg(names.join(","))
        .arg("--trace")
        .arg(&trace)
        .arg("--report")
        .arg(&sim_report)
        .args(["--progress", "--seed", &scenario.seed.to_string()])
        .args(["--duration-s", &scenario.duration_s.to_string()]);
    isolation.apply(&mut sim_cmd);
    sim_cmd
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(logs.join("sim.log"))?);
    let mut sim = Supervised::spawn("twin_sim", sim_cmd)?;
    let stdout = sim.take_stdout().context("the simulator's stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let bar = options.progress_bar.then(|| {
        let bar = indicatif::ProgressBar::new(scenario.duration_s.ceil() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:40}] {pos:>3}/{len} s simulated  {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{} (real time)", scenario.name));
        bar
    });
    let mut epoch_us: Option<u64> = None;
    let mut estimates: Vec<EstimateSample> = Vec::new();
    let mut next_poll = Instant::now();
    let limit = Duration::from_secs_f64(scenario.duration_s + 60.0);
    let started = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let mut words = line.split_whitespace();
                match words.next() {
                    Some("epoch") => epoch_us = words.next().and_then(|w| w.parse().ok()),
                    Some("progress") => {
                        if let (Some(bar), Some(t)) =
                            (&bar, words.next().and_then(|w| w.parse::<f64>().ok()))
                        {
                            bar.set_position(t as u64);
                            bar.set_message(format!("{} estimates read", estimates.len()));
                        }
                    }
                    _ => {}
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(epoch) = epoch_us {
            if Instant::now() >= next_poll {
                next_poll += Duration::from_millis(500);
                for name in &names {
                    let asked = now_us();
                    let Some(doc) = admin_json(&admin, &format!("/twins/{name}")) else {
                        continue;
                    };
                    let answered = now_us();
                    let e = &doc["estimate"];
                    if let (Some(x), Some(y)) = (e["x"].as_f64(), e["y"].as_f64()) {
                        let mid = (asked + answered) / 2;
                        estimates.push(EstimateSample {
                            t: (mid as f64 - epoch as f64) * 1e-6,
                            vehicle: name.clone(),
                            x,
                            y,
                        });
                    }
                }
            }
        }
        if started.elapsed() > limit {
            bail!(
                "the simulator did not finish in {limit:?}; see {}",
                logs.join("sim.log").display()
            );
        }
    }
    let status = sim.wait_timeout(Duration::from_secs(20))?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    match status {
        Some(s) if s.success() => {}
        other => bail!(
            "the simulator failed ({other:?}); see {}",
            logs.join("sim.log").display()
        ),
    }
    for n in &mut nodes {
        n.terminate();
    }
    for n in &mut nodes {
        let _ = n.wait_timeout(Duration::from_secs(10));
    }
    host.terminate();
    host.wait_timeout(Duration::from_secs(15))?;
    let mut audits = Vec::new();
    for name in &names {
        let id = twinlink_link::VehicleId::new(name)?;
        let audit = match twin_dr_host::audit::verify(&data.join(name), &id, None) {
            Ok(r) => r.to_json(),
            Err(e) => serde_json::json!({"error": e.to_string()}),
        };
        audits.push((name.clone(), audit));
    }

    // The comparison.
    let sim_report: RealtimeReport = serde_json::from_str(
        &std::fs::read_to_string(&sim_report)
            .with_context(|| format!("reading {}", sim_report.display()))?,
    )
    .with_context(|| format!("parsing {}", sim_report.display()))?;
    let records = report::read_trace(&trace).map_err(anyhow::Error::msg)?;
    let (base, base_snapshots) = baseline(&scenario, 0.5);
    let lane_width = scenario.road.lane_width_m;
    let mut demo = report::build(&sim_report, &records, &estimates, &base, lane_width);
    if !options.relay_seeds.is_empty() {
        let relay_scenario = Scenario::load(&options.relay_scenario)
            .with_context(|| format!("scenario {}", options.relay_scenario.display()))?;
        demo.relay = Some(
            twinlink_sim::fast::relay_comparison(&relay_scenario, &options.relay_seeds)
                .context("the relay comparison")?,
        );
    }
    let table = report::table(&demo);
    let mut files = vec![trace.clone()];
    let report_path = dir.join("report.json");
    let mut doc = serde_json::to_value(&demo)?;
    doc["audits"] = serde_json::json!(audits
        .iter()
        .map(|(v, a)| serde_json::json!({"vehicle": v, "audit": a}))
        .collect::<Vec<_>>());
    std::fs::write(&report_path, serde_json::to_string_pretty(&doc)?)?;
    files.push(report_path);
    std::fs::write(dir.join("table.txt"), &table)?;
    files.push(dir.join("table.txt"));
    let (snapshots, links, advice) = report::split_trace(&records);
    let input = twinlink_sim::plots::PlotInput {
        road_m: scenario.road.length_m,
        limit_mps: scenario.road.speed_limit_mps,
        duration_s: scenario.duration_s,
        baseline: &base_snapshots,
        twin: &snapshots,
        links: &links,
        advice: &advice,
    };
    files.extend(twinlink_sim::plots::plot_all(dir, &input).map_err(anyhow::Error::msg)?);
    let mcap = dir.join("run.mcap");
    twinlink_sim::recording::write_mcap(
        &mcap,
        &records,
        sim_report.epoch_us,
        lane_width,
        scenario.road.speed_limit_mps,
    )
    .map_err(anyhow::Error::msg)?;
    files.push(mcap);
    Ok(SimDemo {
        report: demo,
        table,
        files,
        audits,
    })
}
