//! The demo's report: a real-time run with twins against the same world without them
//! (same scenario, same seed), as a table, `report.json`, PNG plots and an MCAP recording.
//!
//! Inputs are what the processes wrote: the simulator's trace and report
//! ([`crate::realtime`]), the twins' own-vehicle estimates read from the DR host while the
//! run went on, and the baseline ([`crate::realtime::baseline`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::realtime::{
    AdviceSample, DrivenStats, LinkSample, RealtimeReport, Snapshot, TraceRecord, TrafficMeasures,
};

/// A twin's estimate of its vehicle's position, read from the DR host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimateSample {
    /// Simulated time of the reading [s].
    pub t: f64,
    /// The vehicle.
    pub vehicle: String,
    /// Estimated position in map [m].
    pub x: f64,
    /// Estimated position in map [m].
    pub y: f64,
}

/// Percentiles of a distribution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Number of values.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
}

impl Spread {
    /// Nearest-rank percentiles of `values` (all zero when empty).
    pub fn of(values: &[f64]) -> Spread {
        if values.is_empty() {
            return Spread::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Spread {
            n: v.len(),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            mean: v.iter().sum::<f64>() / v.len() as f64,
        }
    }
}

/// Bytes the driven vehicles produced and sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Comms {
    /// LiDAR and radar point clouds published on the vehicles' ROS graphs [bytes].
    pub raw_sensor_bytes: u64,
    /// Bytes the link nodes sent up to the twins (sealed frames, all included).
    pub uplink_bytes: u64,
    /// Bytes the twins sent down.
    pub downlink_bytes: u64,
    /// `raw_sensor_bytes / uplink_bytes`.
    pub uplink_reduction_factor: Option<f64>,
    /// The links' smoothed round-trip times, as the link nodes reported them [ms].
    pub rtt_ms: Spread,
    /// From a twin's recommendation to its arrival at the vehicle's driver [ms].
    pub advice_latency_ms: Spread,
}

/// The twins' advice and its effect.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AdviceMeasures {
    /// Recommendations that reached the vehicles.
    pub received: u64,
    /// Applied to the drivers.
    pub applied: u64,
    /// Of those, below what the driver would have driven (the advice changed something).
    pub binding: u64,
    /// Not applied, by reason.
    pub refused: BTreeMap<String, u64>,
    /// Recommendations by reason code name.
    pub by_reason: BTreeMap<String, u64>,
}

/// The demo's report (`out/demo/report.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoReport {
    /// Scenario name.
    pub scenario: String,
    /// Seed of both runs.
    pub seed: u64,
    /// How the run was made.
    pub mode: String,
    /// What the sensors were.
    pub sensors: String,
    /// Vehicles real nodes drove, with twins.
    pub twinned_vehicles: Vec<String>,
    /// The same world without twins.
    pub baseline: TrafficMeasures,
    /// The real-time run with twins.
    pub twin: TrafficMeasures,
    /// The driven vehicles alone: mean speed, hard brakes, smallest TTC are not separated
    /// by vehicle in the world's counters, so this lists their own counters.
    pub driven: Vec<DrivenStats>,
    /// Bytes and latency.
    pub comms: Comms,
    /// Advice.
    pub advice: AdviceMeasures,
    /// The twins' estimate of their vehicles' position against the truth [m].
    pub estimate_error_m: Spread,
    /// Wall-clock time of the real-time run [s].
    pub wall_s: f64,
    /// Steps of the world that ran late (the machine could not keep up).
    pub late_steps: u64,
    /// The inter-twin relay off and on in a hidden-hazard scenario (fast mode, several
    /// seeds); absent when the demo was run without it.
    #[serde(default)]
    pub relay: Option<crate::fast::RelayComparison>,
}

/// Reads a trace (JSON Lines); a line that is not a record is an error naming it.
pub fn read_trace(path: &Path) -> Result<Vec<TraceRecord>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{} line {}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// The snapshots, link samples and advice of a trace.
pub fn split_trace(
    trace: &[TraceRecord],
) -> (Vec<&Snapshot>, Vec<&LinkSample>, Vec<&AdviceSample>) {
    let (mut s, mut l, mut a) = (Vec::new(), Vec::new(), Vec::new());
    for r in trace {
        match r {
            TraceRecord::Snapshot(x) => s.push(x),
            TraceRecord::Link(x) => l.push(x),
            TraceRecord::Advice(x) => a.push(x),
        }
    }
    (s, l, a)
}

/// Where driven vehicle `name` was at time `t` (map x of its body centre, y of its lane),
/// interpolated between the snapshots around `t`.
pub fn truth_at(
    snapshots: &[&Snapshot],
    name: &str,
    t: f64,
    lane_width: f64,
) -> Option<(f64, f64)> {
    let i = snapshots.partition_point(|s| s.t <= t);
    let find = |s: &Snapshot| {
        s.vehicles
            .iter()
            .find(|v| v.driven.as_deref() == Some(name))
            .cloned()
    };
    let before = find(snapshots.get(i.checked_sub(1)?)?)?;
    let t0 = snapshots[i - 1].t;
    let length = if before.truck { 12.0 } else { 4.5 };
    let (s, lane) = match snapshots.get(i).and_then(|s| find(s).map(|v| (s.t, v))) {
        Some((t1, after)) if t1 > t0 => {
            let w = ((t - t0) / (t1 - t0)).clamp(0.0, 1.0);
            let lane = if w < 0.5 { before.lane } else { after.lane };
            (before.s + w * (after.s - before.s), lane)
        }
        _ if t - t0 <= 0.5 => (before.s + before.v * (t - t0), before.lane),
        _ => return None,
    };
    Some((s - length / 2.0, lane as f64 * lane_width))
}

/// The reason code's name.
pub fn reason_name(code: u8) -> &'static str {
    match code {
        0 => "free_road",
        1 => "following",
        2 => "congestion_ahead",
        3 => "hazard_ahead",
        4 => "lane_closure",
        5 => "speed_limit",
        6 => "link_degraded",
        _ => "unknown",
    }
}

/// Builds the report from what the run wrote.
pub fn build(
    sim: &RealtimeReport,
    trace: &[TraceRecord],
    estimates: &[EstimateSample],
    baseline: &TrafficMeasures,
    lane_width: f64,
) -> DemoReport {
    let (snapshots, links, advice) = split_trace(trace);
    // The last status of each vehicle has its link's totals.
    let mut last: BTreeMap<&str, &LinkSample> = BTreeMap::new();
    for l in &links {
        last.insert(l.vehicle.as_str(), l);
    }
    let uplink: u64 = last.values().map(|l| l.uplink_bytes).sum();
    let downlink: u64 = last.values().map(|l| l.downlink_bytes).sum();
    let raw: u64 = sim
        .driven
        .iter()
        .map(|d| d.lidar_bytes + d.radar_bytes)
        .sum();
    let rtts: Vec<f64> = links
        .iter()
        .filter(|l| l.rtt_s > 0.0 && l.link_state >= 2)
        .map(|l| l.rtt_s * 1e3)
        .collect();
    let latencies: Vec<f64> = advice.iter().map(|a| a.latency_ms).collect();
    let errors: Vec<f64> = estimates
        .iter()
        .filter_map(|e| {
            let (x, y) = truth_at(&snapshots, &e.vehicle, e.t, lane_width)?;
            Some(((e.x - x).powi(2) + (e.y - y).powi(2)).sqrt())
        })
        .collect();
    let mut measures = AdviceMeasures {
        received: advice.len() as u64,
        ..AdviceMeasures::default()
    };
    for a in &advice {
        *measures
            .by_reason
            .entry(reason_name(a.reason_code).into())
            .or_default() += 1;
    }
    for d in &sim.driven {
        measures.applied += d.advice_applied;
        measures.binding += d.advice_binding;
        for (k, v) in &d.advice_refused {
            *measures.refused.entry(k.clone()).or_default() += v;
        }
    }
    DemoReport {
        scenario: sim.scenario.clone(),
        seed: sim.seed,
        mode: "real time: simulator, per-vehicle ROS 2 nodes (LiDAR and radar summarizers, twin link node), Zenoh, DR host, each a process".into(),
        sensors: "LiDAR and radar as PointCloud2 (ray-cast, carla-ros-bridge radar layout), odometry; the camera as object detections (camera with on-board detector, object-level model with occlusion)".into(),
        twinned_vehicles: sim.driven.iter().map(|d| d.name.clone()).collect(),
        baseline: baseline.clone(),
        twin: sim.measures.clone(),
        driven: sim.driven.clone(),
        comms: Comms {
            raw_sensor_bytes: raw,
            uplink_bytes: uplink,
            downlink_bytes: downlink,
            uplink_reduction_factor: (uplink > 0).then(|| raw as f64 / uplink as f64),
            rtt_ms: Spread::of(&rtts),
            advice_latency_ms: Spread::of(&latencies),
        },
        advice: measures,
        estimate_error_m: Spread::of(&errors),
        wall_s: sim.wall_s,
        late_steps: sim.late_steps,
        relay: None,
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 10_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        n if n >= 10_000 => format!("{:.1} kB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}

/// The comparison as a text table: baseline against twin, then the twin's comms and
/// fidelity.
pub fn table(r: &DemoReport) -> String {
    let (b, t) = (&r.baseline, &r.twin);
    let rows: Vec<(&str, &str, String, String)> = vec![
        (
            "safety",
            "collisions",
            b.collisions.to_string(),
            t.collisions.to_string(),
        ),
        (
            "",
            "min time-to-collision [s]",
            opt(b.min_ttc_s, 2),
            opt(t.min_ttc_s, 2),
        ),
        (
            "",
            "hard brakes (< -4 m/s²)",
            b.hard_brakes.to_string(),
            t.hard_brakes.to_string(),
        ),
        (
            "efficiency",
            "mean speed [km/h]",
            format!("{:.1}", b.mean_speed_mps * 3.6),
            format!("{:.1}", t.mean_speed_mps * 3.6),
        ),
        (
            "",
            "throughput [veh/h]",
            format!("{:.0}", b.throughput_per_h),
            format!("{:.0}", t.throughput_per_h),
        ),
        (
            "comms",
            "raw sensor data",
            "-".into(),
            bytes(r.comms.raw_sensor_bytes),
        ),
        (
            "",
            "uplink (PE -> DR)",
            "-".into(),
            bytes(r.comms.uplink_bytes),
        ),
        (
            "",
            "downlink (DR -> PE)",
            "-".into(),
            bytes(r.comms.downlink_bytes),
        ),
        (
            "",
            "reduction (raw / uplink)",
            "-".into(),
            opt(r.comms.uplink_reduction_factor, 0),
        ),
        (
            "",
            "link RTT p50 / p95 [ms]",
            "-".into(),
            format!("{:.1} / {:.1}", r.comms.rtt_ms.p50, r.comms.rtt_ms.p95),
        ),
        (
            "",
            "advice latency p50 / p99 [ms]",
            "-".into(),
            format!(
                "{:.1} / {:.1}",
                r.comms.advice_latency_ms.p50, r.comms.advice_latency_ms.p99
            ),
        ),
        (
            "twin",
            "estimate error mean / p95 [m]",
            "-".into(),
            format!(
                "{:.2} / {:.2}",
                r.estimate_error_m.mean, r.estimate_error_m.p95
            ),
        ),
        (
            "",
            "advice applied (binding)",
            "-".into(),
            format!("{} ({})", r.advice.applied, r.advice.binding),
        ),
    ];
    let mut out = format!(
        "{:<11} {:<31} {:>12} {:>14}\n",
        "", "measure", "no twin", "twin"
    );
    out.push_str(&format!("{}\n", "-".repeat(71)));
    for (group, name, base, twin) in rows {
        out.push_str(&format!("{group:<11} {name:<31} {base:>12} {twin:>14}\n"));
    }
    if let Some(c) = &r.relay {
        out.push_str(&relay_table(c));
    }
    out
}

/// The relay comparison as a table (relay off and on).
pub fn relay_table(c: &crate::fast::RelayComparison) -> String {
    let (off, on) = (&c.off, &c.on);
    let rows: Vec<(&str, String, String)> = vec![
        (
            "hard brakes, twinned vehicles",
            off.hard_brakes_connected.to_string(),
            on.hard_brakes_connected.to_string(),
        ),
        (
            "min TTC, twinned vehicles [s]",
            opt(off.min_ttc_connected_s, 2),
            opt(on.min_ttc_connected_s, 2),
        ),
        (
            "  median over seeds [s]",
            opt(off.median_min_ttc_connected_s, 2),
            opt(on.median_min_ttc_connected_s, 2),
        ),
        (
            "hard brakes, all vehicles",
            off.hard_brakes.to_string(),
            on.hard_brakes.to_string(),
        ),
        (
            "min TTC, all vehicles [s]",
            opt(off.min_ttc_s, 2),
            opt(on.min_ttc_s, 2),
        ),
        (
            "collisions",
            off.collisions.to_string(),
            on.collisions.to_string(),
        ),
        (
            "mean speed [km/h]",
            format!("{:.1}", off.mean_speed_mps * 3.6),
            format!("{:.1}", on.mean_speed_mps * 3.6),
        ),
        (
            "disclosures verified / taken",
            "-".into(),
            format!("{} / {}", on.relay.verified, on.relay.taken),
        ),
    ];
    let seeds: Vec<String> = c.seeds.iter().map(|s| s.to_string()).collect();
    let mut out = format!(
        "\ninter-twin relay: {} (fast mode, seeds {}, twins on every connected vehicle)\n",
        c.scenario,
        seeds.join(", ")
    );
    out.push_str(&format!(
        "{:<11} {:<31} {:>12} {:>14}\n",
        "", "measure", "relay off", "relay on"
    ));
    out.push_str(&format!("{}\n", "-".repeat(71)));
    for (name, off, on) in rows {
        out.push_str(&format!("{:<11} {name:<31} {off:>12} {on:>14}\n", "relay"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::VehicleSample;

    fn snap(t: f64, s: f64, lane: usize) -> Snapshot {
        Snapshot {
            t,
            vehicles: vec![VehicleSample {
                id: 3,
                s,
                lane,
                v: 20.0,
                truck: false,
                driven: Some("car_1".into()),
                advised: None,
            }],
            hazards: vec![],
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Spread::of(&v);
        assert_eq!((s.n, s.p50, s.p95, s.p99), (100, 50.0, 95.0, 99.0));
        assert_eq!(s.mean, 50.5);
        assert_eq!(Spread::of(&[]), Spread::default());
    }

    #[test]
    fn truth_is_interpolated_between_snapshots() {
        let a = snap(1.0, 100.0, 0);
        let b = snap(1.5, 110.0, 1);
        let snaps = vec![&a, &b];
        let (x, y) = truth_at(&snaps, "car_1", 1.25, 3.5).unwrap();
        assert!((x - (105.0 - 2.25)).abs() < 1e-9);
        assert_eq!(y, 3.5);
        assert!(truth_at(&snaps, "car_2", 1.25, 3.5).is_none());
        assert!(truth_at(&snaps, "car_1", 0.5, 3.5).is_none());
    }

    #[test]
    fn the_report_sums_the_links_and_compares_estimates_with_the_truth() {
        let a = snap(0.0, 100.0, 0);
        let b = snap(0.5, 110.0, 0);
        let trace = vec![
            TraceRecord::Snapshot(a),
            TraceRecord::Link(LinkSample {
                t: 0.2,
                vehicle: "car_1".into(),
                link_state: 2,
                rtt_s: 0.004,
                measured_bandwidth_bps: 1e5,
                uplink_bytes: 500,
                downlink_bytes: 50,
                buffered: 0,
            }),
            TraceRecord::Link(LinkSample {
                t: 0.4,
                vehicle: "car_1".into(),
                link_state: 2,
                rtt_s: 0.006,
                measured_bandwidth_bps: 1e5,
                uplink_bytes: 1000,
                downlink_bytes: 100,
                buffered: 0,
            }),
            TraceRecord::Advice(AdviceSample {
                t: 0.3,
                vehicle: "car_1".into(),
                target_speed: 20.0,
                target_lane: 0,
                reason_code: 1,
                reason: "following".into(),
                latency_ms: 3.0,
                refused: None,
            }),
            TraceRecord::Snapshot(b),
        ];
        let sim = RealtimeReport {
            scenario: "x".into(),
            seed: 1,
            epoch_us: 0,
            wall_s: 0.5,
            late_steps: 0,
            max_lag_s: 0.0,
            measures: TrafficMeasures::default(),
            driven: vec![DrivenStats {
                name: "car_1".into(),
                lidar_bytes: 900_000,
                radar_bytes: 100_000,
                advice_applied: 1,
                ..DrivenStats::default()
            }],
        };
        let est = vec![EstimateSample {
            t: 0.25,
            vehicle: "car_1".into(),
            x: 105.0 - 2.25 + 0.3,
            y: 0.4,
        }];
        let r = build(&sim, &trace, &est, &TrafficMeasures::default(), 3.5);
        assert_eq!(r.comms.uplink_bytes, 1000);
        assert_eq!(r.comms.downlink_bytes, 100);
        assert_eq!(r.comms.uplink_reduction_factor, Some(1000.0));
        assert_eq!(r.comms.rtt_ms.n, 2);
        assert_eq!(r.advice.received, 1);
        assert_eq!(r.advice.by_reason["following"], 1);
        assert!((r.estimate_error_m.mean - 0.5).abs() < 1e-9);
        let text = table(&r);
        assert!(text.contains("reduction (raw / uplink)"), "{text}");
        assert!(text.contains("1000"), "{text}");
    }

    #[test]
    fn a_bad_trace_line_is_named() {
        let dir = std::env::temp_dir().join(format!("twinlink-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.jsonl");
        std::fs::write(
            &p,
            "{\"kind\":\"snapshot\",\"t\":0,\"vehicles\":[],\"hazards\":[]}\nnot json\n",
        )
        .unwrap();
        let e = read_trace(&p).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
