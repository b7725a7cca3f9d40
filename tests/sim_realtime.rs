//! The real-time simulation end to end, as `make demo` runs it but shorter: the simulator,
//! two vehicles' ROS 2 nodes (summarizers and twin link node, from the launch file), the DR
//! host and Zenoh, each a process. Checks that the vehicles' twins got their sensors'
//! summaries, that their recommendations reached the simulated drivers and changed what
//! they did (the world is deterministic for its seed but for the advice, so any difference
//! from the baseline is the advice's), and that the report, plots and recording are there.
#![cfg(feature = "ros")]

use twinlink_launch::sim_demo::{run_sim_demo, SimDemoOptions};
use twinlink_launch::workspace_root;
use twinlink_sim::realtime::{baseline, TraceRecord};
use twinlink_sim::report::{read_trace, split_trace};
use twinlink_sim::Scenario;

#[test]
fn twins_advise_the_simulated_vehicles_and_change_what_they_do() {
    let out = workspace_root()
        .join("target/e2e")
        .join(format!("sim_realtime_{}", std::process::id()));
    let mut options = SimDemoOptions::new(&out);
    options.vehicles = 2;
    options.duration_s = Some(20.0);
    // One seed of the relay comparison (the demo runs four; tests/relay_comparison.rs in
    // the sim package checks the gain).
    options.relay_seeds = vec![1];
    let demo = run_sim_demo(&options).unwrap();
    let r = &demo.report;
    let relay = r
        .relay
        .as_ref()
        .expect("the report has the relay comparison");
    assert_eq!(relay.seeds, [1]);
    assert!(
        relay.on.relay.verified > 0 && relay.off.relay.verified == 0,
        "{relay:?}"
    );
    assert!(
        demo.table.contains("inter-twin relay: hidden_hazard"),
        "{}",
        demo.table
    );

    // The vehicles' nodes summarized the simulator's point clouds and the twins advised.
    assert_eq!(r.twinned_vehicles, ["car_1", "car_2"]);
    for d in &r.driven {
        assert!(d.lidar_frames >= 190 && d.lidar_bytes > 10_000_000, "{d:?}");
        assert!(
            d.advice_applied > 20,
            "{}'s advice did not arrive: {d:?}",
            d.name
        );
        assert!(d.advice_refused.is_empty(), "{d:?}");
    }
    assert!(r.comms.uplink_bytes > 10_000, "{:?}", r.comms);
    assert!(r.comms.downlink_bytes > 1_000, "{:?}", r.comms);
    assert!(
        r.comms.rtt_ms.n > 10 && r.comms.rtt_ms.p50 > 0.0,
        "{:?}",
        r.comms
    );
    assert!(r.comms.advice_latency_ms.p50 < 100.0, "{:?}", r.comms);
    // The twins know where their vehicles are (from odometry through the link).
    assert!(r.estimate_error_m.n > 20, "{:?}", r.estimate_error_m);
    assert!(r.estimate_error_m.p95 < 2.0, "{:?}", r.estimate_error_m);

    // The advice changed what the vehicles did: against the same world without it, the
    // twinned vehicles are elsewhere.
    let scenario = Scenario::load(&workspace_root().join("sim/scenarios/demo.yaml")).unwrap();
    let mut short = scenario.clone();
    short.duration_s = 20.0;
    let (_, base) = baseline(&short, 0.5);
    let trace = read_trace(&out.join("trace.jsonl")).unwrap();
    let (snapshots, _, advice) = split_trace(&trace);
    assert!(!advice.is_empty());
    let last = snapshots.last().unwrap();
    let base_last = base
        .iter()
        .min_by(|a, b| (a.t - last.t).abs().total_cmp(&(b.t - last.t).abs()))
        .unwrap();
    let mut moved = Vec::new();
    for v in last.vehicles.iter().filter(|v| v.driven.is_some()) {
        let b = base_last.vehicles.iter().find(|b| b.id == v.id).unwrap();
        moved.push((v.driven.clone().unwrap(), v.s - b.s));
    }
    assert!(
        moved.iter().any(|(_, ds)| ds.abs() > 1.0),
        "the twinned vehicles drove exactly as without advice: {moved:?}"
    );

    // Report, table, plots, recording; every twin's audit log intact.
    for f in [
        "report.json",
        "table.txt",
        "time_space.png",
        "speeds.png",
        "link_quality.png",
        "latency_cdf.png",
        "run.mcap",
    ] {
        let bytes = std::fs::read(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(bytes.len() > 100, "{f}");
    }
    assert_eq!(
        &std::fs::read(out.join("run.mcap")).unwrap()[..5],
        b"\x89MCAP"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert!(report["comms"]["uplink_reduction_factor"].as_f64().unwrap() > 10.0);
    for (vehicle, audit) in &demo.audits {
        assert_eq!(audit["intact"], true, "{vehicle}: {audit}");
    }

    // Each link node applied the scenario's coverage to its link: the quality changed as
    // its vehicle drove away from the first cell, every frame it sent went through the
    // shaped path, and it sent its state and objects by dead reckoning.
    for name in ["car_1", "car_2"] {
        let path = out.join(format!("logs/link_{name}.json"));
        let node: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let c = &node["counters"];
        assert!(c["radio_changes"].as_u64().unwrap() >= 5, "{name}: {c}");
        let faults = &node["link"]["faults"];
        assert!(
            faults["offered"].as_u64().unwrap() > 100,
            "{name}: {faults}"
        );
        let states = &c["state_inclusion"];
        assert!(
            states["sent"].as_u64().unwrap() * 2 < states["seen"].as_u64().unwrap(),
            "{name}: {states}"
        );
    }
    assert!(matches!(trace[0], TraceRecord::Snapshot(_)));
    let _ = std::fs::remove_dir_all(&out);
}
