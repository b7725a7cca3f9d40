//! `twinlink-demo`: twinlink end to end.
//!
//! Without a subcommand (`make demo`): a simulated highway in real time with every component
//! a process. The simulator (`twin_sim`) publishes LiDAR and radar point clouds, odometry
//! and camera detections for three connected vehicles on their ROS 2 topics; each
//! vehicle's nodes (`launch/vehicle.launch.xml`: summarizers and twin link node) send
//! their summaries over Zenoh to the DR host, whose twins fuse, plan and advise; the advice
//! comes back on ROS and the simulator's drivers follow it. The same world without twins,
//! on the same seed, is the baseline. Then the inter-twin relay off and on in the
//! `hidden_hazard` scenario (fast mode, four seeds). Prints the comparison and writes
//! `out/demo/`:
//! `report.json`, `table.txt`, plots (PNG), `run.mcap` (Foxglove) and the trace.
//!
//! `twinlink-demo components`: the parts one by one: the r2r <-> rclpy exchange of every
//! message type, a PE and its DR through a Zenoh router, and the vehicle nodes fed by an
//! rclpy publisher.

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use std::time::{Duration, Instant};
use twinlink_launch::interop;

/// Run the twinlink demo.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    part: Option<Part>,
    /// Scenario of the simulation (YAML).
    #[arg(long, default_value = "sim/scenarios/demo.yaml")]
    scenario: std::path::PathBuf,
    /// Vehicles driven by real ROS 2 nodes, each with its twin.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=8))]
    vehicles: u64,
    /// Simulated seconds instead of the scenario's duration.
    #[arg(long)]
    duration_s: Option<f64>,
    /// Seed instead of the scenario's.
    #[arg(long)]
    seed: Option<u64>,
    /// Where to write the report, plots, recording and logs.
    #[arg(long, default_value = "out/demo")]
    out: std::path::PathBuf,
    /// Seeds of the relay comparison (hidden_hazard, fast mode, relay off and on);
    /// comma-separated, or "none".
    #[arg(long, default_value = "1,2,3,4")]
    relay_seeds: String,
}

#[derive(Subcommand, Debug)]
enum Part {
    /// The components one by one (message exchange, link, vehicle nodes).
    Components {
        /// Seed of the random message values.
        #[arg(long, default_value_t = 2026)]
        seed: u64,
        /// Values per message type.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
        per_type: u64,
        /// Where to write the fixture, logs and reports.
        #[arg(long, default_value = "out/components")]
        out: std::path::PathBuf,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.part {
        Some(Part::Components {
            seed,
            per_type,
            out,
            timeout_s,
        }) => components(seed, per_type, &out, timeout_s),
        None => simulation(&args),
    }
}

fn simulation(args: &Args) -> Result<()> {
    if let Some(d) = args.duration_s {
        if !(d > 0.0 && d.is_finite()) {
            bail!("--duration-s must be a positive number of seconds, got {d}");
        }
    }
    let mut options = twinlink_launch::sim_demo::SimDemoOptions::new(&args.out);
    options.scenario = if args.scenario.is_absolute() {
        args.scenario.clone()
    } else {
        std::env::current_dir()?.join(&args.scenario)
    };
    options.vehicles = args.vehicles as usize;
    options.duration_s = args.duration_s;
    options.seed = args.seed;
    options.progress_bar = true;
    options.relay_seeds = match args.relay_seeds.as_str() {
        "none" => Vec::new(),
        list => list
            .split(',')
            .map(|s| {
                s.trim().parse::<u64>().map_err(|e| {
                    anyhow::anyhow!("--relay-seeds {list:?}: {s:?} is not a seed ({e}); give e.g. 1,2,3,4 or none")
                })
            })
            .collect::<Result<Vec<_>>>()?,
    };
    println!(
        "twinlink demo: {} in real time, {} vehicles with twins (ROS 2 nodes, Zenoh, DR host, simulator: each a process)",
        options.scenario.display(),
        options.vehicles
    );
    let started = Instant::now();
    let demo = twinlink_launch::sim_demo::run_sim_demo(&options)?;
    println!(
        "
{} (seed {}), {:.0} s simulated in {:.0} s; the same world without twins is the baseline
",
        demo.report.scenario, demo.report.seed, demo.report.twin.simulated_s, demo.report.wall_s
    );
    print!("{}", demo.table);
    println!();
    for (vehicle, audit) in &demo.audits {
        println!(
            "audit log of {vehicle}: {} records, {}",
            audit["records"],
            if audit["intact"] == true {
                "intact"
            } else {
                "NOT intact"
            }
        );
    }
    if demo.report.late_steps > 0 {
        println!(
            "note: {} world steps ran late (the machine was busy)",
            demo.report.late_steps
        );
    }
    println!(
        "
written in {:.0} s:",
        started.elapsed().as_secs_f64()
    );
    for f in &demo.files {
        println!("  {}", f.display());
    }
    Ok(())
}

fn components(seed: u64, per_type: u64, out: &std::path::Path, timeout_s: u64) -> Result<()> {
    let fixture = interop::random_fixture(seed, per_type as usize, "");
    let types = fixture["types"].as_object().map_or(0, |t| t.len());
    println!(
        "twinlink demo, part 1: r2r node <-> rclpy node, {types} message types x {per_type} values each, seed {seed}"
    );
    println!("(every value travels both ways over DDS; each side checks what it receives)\n");
    let started = Instant::now();
    let outcome = interop::run_exchange(&fixture, out, Duration::from_secs(timeout_s))?;
    println!(
        "rclpy -> r2r: received buffers decoded by twinlink's codec and by rcl, bytes compared"
    );
    print!("{}", outcome.r2r.stdout);
    println!("\nr2r -> rclpy: received messages compared field by field");
    print!("{}", outcome.rclpy.stdout);
    println!(
        "\nexchange took {:.1} s; fixture, logs and reports in {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    if !outcome.all_matched() {
        eprint!("{}{}", outcome.r2r.stderr, outcome.rclpy.stderr);
        bail!("the exchange found differences (see above)");
    }
    println!("all values matched in both directions");

    println!("\ntwinlink demo, part 2: a vehicle (PE) and its twin (DR), separate processes, through a Zenoh router");
    println!("(keys from `twinctl provision`; every frame sealed end to end; 50-object summaries up, recommendations down)\n");
    let demo = twinlink_launch::link_demo::run(&out.join("link"))?;
    print_link(&demo);

    println!("\ntwinlink demo, part 3: the vehicle's ROS 2 nodes, started from launch/vehicle.launch.xml");
    println!("(rclpy publishes LiDAR, radar, camera and odometry of a vehicle in traffic; the summaries go up the link to");
    println!(" the DR host, whose twin fuses them with a regional tile and plans; its advice comes back on ROS)\n");
    let vehicle = twinlink_launch::vehicle::run_vehicle_demo(&out.join("vehicle"), 8.0)?;
    print_vehicle(&vehicle.drive, &vehicle.dr);
    print_twin(&vehicle);
    Ok(())
}

fn print_twin(v: &twinlink_launch::vehicle::VehicleDemo) {
    let (doc, twins, audit) = (&v.dr, &v.twins, &v.audit);
    let row = |name: &str, value: String| println!("  {name:<38} {value}");
    println!("\nthe twin in the DR host (GET /twins/<vehicle> on its admin endpoint):");
    row(
        "twins hosted / active",
        format!(
            "{} / {}",
            twins.as_array().map_or(0, |t| t.len()),
            twins
                .as_array()
                .map_or(0, |t| t.iter().filter(|x| x["active"] == true).count())
        ),
    );
    let c = &doc["counters"];
    row(
        "states, summaries fused, tiles",
        format!(
            "{}, {}, {}",
            c["states"], c["summaries"], c["regional_tiles"]
        ),
    );
    row(
        "confirmed tracks (fused LiDAR, radar, camera)",
        doc["tracks"].to_string(),
    );
    if let Some(h) = doc["hazards"].as_array() {
        for hz in h {
            row(
                "hazard known from the region",
                format!(
                    "{} at s = {:.0} m, lane {}",
                    hz["id"].as_str().unwrap_or("?"),
                    hz["s"].as_f64().unwrap_or(0.0),
                    hz["lane"]
                ),
            );
        }
    }
    let e = &doc["estimate"];
    row(
        "estimate of the vehicle",
        format!(
            "x {:.1} m, {:.1} m/s, +/- {:.2} m",
            e["x"].as_f64().unwrap_or(f64::NAN),
            e["speed"].as_f64().unwrap_or(f64::NAN),
            e["position_sigma"].as_f64().unwrap_or(f64::NAN)
        ),
    );
    let d = &doc["desired"];
    let lane_change = match d["lane_change"].as_u64() {
        Some(1) => "change left",
        Some(2) => "change right",
        _ => "keep",
    };
    row(
        "advice now",
        format!(
            "{:.1} m/s, lane {} ({lane_change}): {}",
            d["target_speed"].as_f64().unwrap_or(f64::NAN),
            d["target_lane"],
            d["reason"].as_str().unwrap_or("")
        ),
    );
    if let Some(h) = d["horizon"].as_array() {
        let speeds: Vec<String> = h
            .iter()
            .map(|p| {
                format!(
                    "{:.0}s {:.1}",
                    p[0].as_f64().unwrap_or(0.0),
                    p[1].as_f64().unwrap_or(0.0)
                )
            })
            .collect();
        row("horizon [s m/s]", speeds.join(", "));
    }
    row(
        "audit log (verified after stop)",
        format!(
            "{} records, {} checkpoints, {}",
            audit["records"],
            audit["checkpoints"],
            if audit["intact"] == true {
                "intact"
            } else {
                "NOT intact"
            }
        ),
    );
}

fn print_vehicle(d: &serde_json::Value, dr: &serde_json::Value) {
    let row = |name: &str, value: String| println!("  {name:<38} {value}");
    println!(
        "  {:<10} {:>12} {:>10} {:>8} {:>14} {:>10} {:>14}",
        "sensor",
        "raw bytes",
        "summaries",
        "objects",
        "summary bytes",
        "reduction",
        "processing ms"
    );
    let mut raw_total = 0u64;
    for sensor in ["lidar", "radar", "camera"] {
        let raw = d["raw_bytes"][sensor].as_u64().unwrap_or(0);
        let bytes = d["summary_bytes"][sensor].as_u64().unwrap_or(0);
        raw_total += raw;
        let reduction = if bytes > 0 {
            format!("{:.0}x", raw as f64 / bytes as f64)
        } else {
            "-".into()
        };
        println!(
            "  {sensor:<10} {raw:>12} {:>10} {:>8} {bytes:>14} {reduction:>10} {:>14}",
            d["summaries"][sensor], d["objects_mean"][sensor], d["processing_ms_median"][sensor]
        );
    }
    println!("  (processing times of this build; `make bench` measures the release build)");
    let status = &d["status"];
    let up = status["uplink_bytes"].as_u64().unwrap_or(0);
    row("uplink bytes, encrypted (all streams)", up.to_string());
    row(
        "raw sensor bytes / uplink bytes",
        format!("{:.0}x", raw_total as f64 / up.max(1) as f64),
    );
    row(
        "summaries and states applied by the DR",
        format!(
            "{} / {}",
            dr["counters"]["summaries"], dr["counters"]["states"]
        ),
    );
    row(
        "recommendations published on ROS",
        d["recommendations"].to_string(),
    );
    row(
        "link state, RTT [ms]",
        format!(
            "{} (2 = connected), {:.2}",
            status["link_state"],
            status["rtt_ms"].as_f64().unwrap_or(0.0)
        ),
    );
    row(
        "inputs refused by the link node",
        status["rejected"].to_string(),
    );
    if let Some(last) = d["last"].as_object() {
        row(
            "last recommendation",
            format!(
                "{:.1} m/s: {}",
                last["target_speed"].as_f64().unwrap_or(0.0),
                last["reason"].as_str().unwrap_or("")
            ),
        );
    }
}

fn print_link(demo: &twinlink_launch::link_demo::LinkDemo) {
    let (s, r, dr) = (&demo.stream, &demo.rtt, &demo.dr);
    let link = &s["link"];
    let row = |name: &str, value: String| println!("  {name:<38} {value}");
    println!("streaming, 10 Hz for 5 s:");
    row("summaries sent by the PE", s["summaries_sent"].to_string());
    row(
        "summaries applied by the DR (all runs)",
        dr["summaries"].to_string(),
    );
    row(
        "recommendations received by the PE",
        s["recommendations"].to_string(),
    );
    row(
        "out of order / applied twice",
        format!("{} / {}", dr["out_of_order"], s["sequence_repeats"]),
    );
    row(
        "bytes up / down (PE view)",
        format!("{} / {}", link["bytes_sent"], link["bytes_received"]),
    );
    row(
        "frames refused (PE / DR)",
        format!("{} / {}", link["rejected"], dr["link"]["rejected"]),
    );
    row(
        "PE uplink estimate [bit/s]",
        link["path"]["bottleneck_bps"].to_string(),
    );
    if let Some(last) = s["last_recommendation"].as_object() {
        row(
            "last recommendation",
            format!(
                "{:.1} m/s over {} s: {}",
                last["target_speed"].as_f64().unwrap_or(0.0),
                last["horizon_s"],
                last["reason"].as_str().unwrap_or("")
            ),
        );
    }
    println!(
        "\nround trips (summary up, its recommendation down), {} timed:",
        r["rtt_samples"]
    );
    row(
        "median / p99 / max [us]",
        format!(
            "{} / {} / {}",
            r["rtt_median_us"], r["rtt_p99_us"], r["rtt_max_us"]
        ),
    );
    row(
        "link state at the end (DR)",
        format!(
            "peer alive: {}, sessions: {}",
            dr["link"]["peer_alive"], dr["link"]["sessions_established"]
        ),
    );
}
