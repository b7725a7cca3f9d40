//! Scenarios that run a real PE and DR link (two Zenoh sessions over loopback TCP in one
//! process) under a throttled path, for the tests and the benchmarks.
//!
//! [`freshness`]: the PE sends its state and a perception summary ten times a second over
//! a path throttled to a few tens of kbit/s; the DR samples the age of the newest state it
//! applied. An adaptive PE (rate control plus object inclusion that tightens with the
//! bandwidth) keeps that age low; a PE that sends everything fills the bottleneck's queue
//! and the age grows without bound.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::crypto::KeyMaterial;
use crate::fault::FaultPlan;
use crate::inclusion::{tighten_factor, ObjectInclusion, OBJECT_BYTES};
use crate::keys::VehicleId;
use crate::link::{now_us, Link, LinkConfig, LinkEvent, LinkStats, ZenohSettings};
use crate::minimal::{self, to_link};
use crate::rate::RateControl;
use crate::sync::Priority;

/// Settings of a freshness run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FreshnessConfig {
    /// Bottleneck rate both ways [kbit/s].
    pub rate_kbps: u64,
    /// Length of the run [s].
    pub seconds: f64,
    /// Rate controller of both ends.
    pub rate_control: RateControl,
    /// Whether the PE selects objects by the inclusion rules within the path's budget
    /// (otherwise it sends every object every time).
    pub adaptive_objects: bool,
    /// Objects the PE perceives.
    pub objects: usize,
    /// Messages per second (state and summary each).
    pub hz: f64,
}

impl FreshnessConfig {
    /// The adaptive PE on a 64 kbit/s path, 50 objects at 10 Hz.
    pub fn adaptive_64k(seconds: f64) -> Self {
        Self {
            rate_kbps: 64,
            seconds,
            rate_control: RateControl::Window,
            adaptive_objects: true,
            objects: 50,
            hz: 10.0,
        }
    }

    /// The same PE without any adaptation.
    pub fn fixed_64k(seconds: f64) -> Self {
        Self {
            rate_control: RateControl::None,
            adaptive_objects: false,
            ..Self::adaptive_64k(seconds)
        }
    }
}

/// What a freshness run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FreshnessReport {
    /// The settings.
    pub config: FreshnessConfig,
    /// (time since start [s], age of the DR's newest applied state [ms]), every 100 ms.
    pub ages_ms: Vec<(f64, f64)>,
    /// Median age over the second half of the run [ms].
    pub median_ms_second_half: f64,
    /// 95th percentile age over the second half [ms].
    pub p95_ms_second_half: f64,
    /// Largest age over the second half [ms].
    pub max_ms_second_half: f64,
    /// Age at the end of the run [ms].
    pub end_ms: f64,
    /// States the DR applied.
    pub states_applied: u64,
    /// Objects the DR received, over all summaries.
    pub objects_applied: u64,
    /// The PE end's counters at the end.
    pub pe: LinkStats,
}

/// A free TCP endpoint on loopback, e.g. `tcp/127.0.0.1:40123`.
pub fn loopback_endpoint() -> anyhow::Result<String> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    Ok(format!("tcp/127.0.0.1:{port}"))
}

/// A fresh vehicle's PE and DR configurations on a free loopback endpoint (the DR listens,
/// the PE connects).
pub fn pair_configs(prefix: &str) -> anyhow::Result<(LinkConfig, LinkConfig)> {
    let vehicle = VehicleId::new(&format!("{prefix}-{}", rand::random::<u32>()))?;
    let (pe_keys, dr_keys) = KeyMaterial::generate_pair(&vehicle)?;
    let endpoint = loopback_endpoint()?;
    Ok((
        LinkConfig::new(pe_keys, ZenohSettings::peer_connecting(&endpoint)),
        LinkConfig::new(dr_keys, ZenohSettings::peer_listening(&endpoint)),
    ))
}

/// Opens both ends and waits until each sees the other: `(pe, dr)`.
pub async fn open_pair(pe: LinkConfig, dr: LinkConfig) -> anyhow::Result<(Link, Link)> {
    let mut dr = Link::open(dr).await?;
    let mut pe = Link::open(pe).await?;
    pe.wait_peer_up(Duration::from_secs(10)).await?;
    dr.wait_peer_up(Duration::from_secs(10)).await?;
    Ok((pe, dr))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Runs the freshness scenario.
pub async fn freshness(config: FreshnessConfig) -> anyhow::Result<FreshnessReport> {
    let plan: FaultPlan = format!("rate_kbps={},queue_kb=65536", config.rate_kbps).parse()?;
    let (mut pe_cfg, mut dr_cfg) = pair_configs("fresh")?;
    let vehicle = pe_cfg.material.vehicle.clone();
    pe_cfg.rate_control = config.rate_control;
    dr_cfg.rate_control = config.rate_control;
    // A slow path makes silence longer: allow for a few frames' serialization.
    pe_cfg.peer_timeout = Duration::from_secs(3);
    dr_cfg.peer_timeout = Duration::from_secs(3);
    let (mut pe, mut dr) = open_pair(pe_cfg, dr_cfg).await?;
    pe.faults().set_plan(plan.clone());
    dr.faults().set_plan(plan);

    // The DR: apply, and sample the age of the newest state every 100 ms.
    let seconds = config.seconds;
    let dr_task = tokio::spawn(async move {
        let start = Instant::now();
        let mut newest_state_us = 0u64;
        let (mut states, mut objects) = (0u64, 0u64);
        let mut ages = Vec::new();
        let mut sample = tokio::time::interval(Duration::from_millis(100));
        let end = start + Duration::from_secs_f64(seconds);
        while Instant::now() < end {
            tokio::select! {
                _ = sample.tick() => {
                    if newest_state_us > 0 {
                        let age = now_us().saturating_sub(newest_state_us) as f64 / 1000.0;
                        ages.push((start.elapsed().as_secs_f64(), age));
                    }
                }
                event = dr.recv() => match event {
                    Some(LinkEvent::Message(d)) => match d.message.stream.as_str() {
                        minimal::STREAM_STATE => {
                            states += 1;
                            newest_state_us = newest_state_us.max(d.message.created_us);
                        }
                        _ => {
                            if let Ok(s) = minimal::from_link::<twinlink_msgs::twin_msgs::msg::PerceptionSummary>(&d.message) {
                                objects += s.objects.len() as u64;
                            }
                        }
                    },
                    Some(_) => {}
                    None => break,
                },
            }
        }
        dr.close().await;
        (ages, states, objects)
    });

    // The PE.
    let start = Instant::now();
    let mut inclusion = ObjectInclusion::default();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / config.hz));
    let demand_bps = (config.objects * OBJECT_BYTES) as f64 * 8.0 * config.hz;
    while start.elapsed().as_secs_f64() < config.seconds {
        tick.tick().await;
        let t = start.elapsed().as_secs_f64();
        let now = now_us();
        let state = minimal::vehicle_state(vehicle.as_str(), t, now);
        let state = to_link(minimal::STREAM_STATE, Priority::OwnState, &state, now);
        // What one state costs on the path, framing and sealing included.
        let state_bytes = state.wire_len();
        pe.send(state)?;
        let mut summary = minimal::perception_summary(config.objects, t, now);
        if config.adaptive_objects {
            let path = pe.stats().await?.path;
            // Until the first measurement, assume a modest 256 kbit/s.
            let available = if path.bottleneck_bps > 0 {
                path.bottleneck_bps as f64
            } else {
                256e3
            };
            // What the path carries per tick beyond the own state, with 20 % headroom.
            let per_tick = available / 8.0 / config.hz * 0.8;
            let budget = (per_tick - state_bytes as f64).max(0.0) as usize;
            let tighten = tighten_factor(demand_bps, budget as f64 * 8.0 * config.hz);
            summary.objects = inclusion.select(&summary.objects, t, tighten, budget);
        }
        pe.send(to_link(
            minimal::STREAM_OBJECTS,
            Priority::Objects,
            &summary,
            now,
        ))?;
        while pe.try_recv().is_some() {}
    }
    let pe_stats = pe.stats().await?;
    let (ages, states_applied, objects_applied) = dr_task.await?;
    pe.close().await;
    let mut second_half: Vec<f64> = ages
        .iter()
        .filter(|(t, _)| *t >= config.seconds / 2.0)
        .map(|(_, a)| *a)
        .collect();
    second_half.sort_by(f64::total_cmp);
    Ok(FreshnessReport {
        median_ms_second_half: percentile(&second_half, 0.5),
        p95_ms_second_half: percentile(&second_half, 0.95),
        max_ms_second_half: second_half.last().copied().unwrap_or(f64::NAN),
        end_ms: ages.last().map_or(f64::NAN, |(_, a)| *a),
        ages_ms: ages,
        states_applied,
        objects_applied,
        pe: pe_stats,
        config,
    })
}

/// Settings of a drive through varying coverage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoverageDriveConfig {
    /// Road length [m].
    pub road_m: f64,
    /// Speed along the road [m/s].
    pub speed_mps: f64,
    /// Laps: the first teaches the coverage map, the others are predicted.
    pub laps: usize,
    /// How far ahead predictions look [s].
    pub ahead_s: f64,
}

impl Default for CoverageDriveConfig {
    fn default() -> Self {
        Self {
            road_m: 1200.0,
            speed_mps: 120.0,
            laps: 2,
            ahead_s: 2.0,
        }
    }
}

/// What a coverage drive measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoverageDriveReport {
    /// The settings.
    pub config: CoverageDriveConfig,
    /// (time [s], position [m], path rate set [bit/s], measured [bit/s]) every 250 ms.
    pub samples: Vec<(f64, f64, f64, f64)>,
    /// Median relative error of the predictor against the later measurement.
    pub prediction_median_rel_error: f64,
    /// Median relative error of persistence (last measurement) against the same.
    pub persistence_median_rel_error: f64,
    /// Predictions scored.
    pub scored: usize,
}

/// The coverage of the drive's road at `x` [bit/s]: good, fading, weak, good again.
pub fn drive_coverage_bps(x: f64) -> f64 {
    match x {
        x if x < 400.0 => 2e6,
        x if x < 600.0 => 2e6 - (x - 400.0) / 200.0 * 1.8e6,
        x if x < 800.0 => 2e5,
        _ => 1.5e6,
    }
}

/// Drives a PE along a road whose coverage (the fault layer's rate, both ways) changes
/// with its position; the PE always has more to send than the path carries, so its
/// bottleneck estimate measures the path. The DR learns a coverage map from the first lap
/// and predicts the PE's bandwidth `ahead_s` ahead on the next laps, scored against what
/// is then measured.
pub async fn coverage_drive(config: CoverageDriveConfig) -> anyhow::Result<CoverageDriveReport> {
    use crate::bandwidth::{BandwidthPredictor, BandwidthSample, CoverageMap, PredictionScore};

    let (mut pe_cfg, dr_cfg) = pair_configs("drive")?;
    pe_cfg.peer_timeout = Duration::from_secs(3);
    let (mut pe, mut dr) = open_pair(pe_cfg, dr_cfg).await?;
    let lap_s = config.road_m / config.speed_mps;
    let total_s = lap_s * config.laps as f64;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut next_sample = 0.25;
    let mut samples = Vec::new();
    let mut predictor: Option<BandwidthPredictor> = None;
    let mut map = CoverageMap::new(25.0);
    let (mut ours, mut persistence) = (PredictionScore::default(), PredictionScore::default());
    let blob = vec![0x33u8; 20_000];
    while start.elapsed().as_secs_f64() < total_s {
        tick.tick().await;
        let t = start.elapsed().as_secs_f64();
        let x = (t * config.speed_mps) % config.road_m;
        let rate = drive_coverage_bps(x);
        let plan: FaultPlan =
            format!("rate_kbps={},queue_kb=64", (rate / 1000.0) as u64).parse()?;
        pe.faults().set_plan(plan.clone());
        dr.faults().set_plan(plan);
        let now = now_us();
        pe.send(crate::sync::Message {
            stream: "probe".into(),
            priority: Priority::Objects,
            type_name: "twinlink/Probe".into(),
            created_us: now,
            payload: blob.clone(),
        })?;
        while pe.try_recv().is_some() {}
        while dr.try_recv().is_some() {}
        if t < next_sample {
            continue;
        }
        next_sample += 0.25;
        // The DR's view: the PE's own estimate of its uplink, from its reports.
        let measured = dr.stats().await?.peer_received.sender_bottleneck_bps as f64;
        if measured <= 0.0 {
            continue;
        }
        samples.push((t, x, rate, measured));
        let sample = BandwidthSample {
            t_s: t,
            x,
            y: 0.0,
            bps: measured,
        };
        let lap = (t / lap_s) as usize;
        if lap == 0 {
            map.learn(&sample);
            continue;
        }
        let p = predictor.get_or_insert_with(|| BandwidthPredictor::new(map.clone()));
        ours.measured(&sample, 0.13);
        persistence.measured(&sample, 0.13);
        p.observe(sample);
        if let Some(predicted) = p.predict(config.speed_mps, 0.0, config.ahead_s) {
            ours.predicted(t + config.ahead_s, predicted);
            persistence.predicted(t + config.ahead_s, measured);
        }
    }
    pe.close().await;
    dr.close().await;
    Ok(CoverageDriveReport {
        prediction_median_rel_error: ours.median(),
        persistence_median_rel_error: persistence.median(),
        scored: ours.relative_errors.len(),
        samples,
        config,
    })
}
