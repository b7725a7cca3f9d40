//! DR ingest on one thread: for each 50-object summary, open the sealed frame (ChaCha20-
//! Poly1305), decode the envelope and the CDR summary, fuse it in the tracker, plan (IDM +
//! MOBIL, and the ONNX model when `--model` is given), encode the recommendation and seal
//! it for the vehicle. Prints summaries per second, with the link-only ingest of the same
//! frames (open + decode, the baseline) measured in the same run. Pin it to one core
//! (`taskset -c 0`) to read it as "per core".

// Messages are built field by field from defaults, as ROS users write them.
#![allow(clippy::field_reassign_with_default)]

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use serde_json::json;
use twin_dr_host::model::SpeedModel;
use twin_dr_host::planner::Planner;
use twin_dr_host::road::Road;
use twin_dr_host::tracker::TrackerConfig;
use twin_dr_host::twin::{Twin, TwinSettings};
use twinlink_link::link::{FrameSealer, IngestPipeline};
use twinlink_link::minimal::{from_link, ros_time, to_link};
use twinlink_link::{KeyMaterial, Priority, VehicleId};
use twinlink_msgs::twin_msgs::msg::{
    DetectedObject, LaneTraffic, PerceptionSummary, RegionalTraffic, VehicleState,
};

#[derive(Debug, Parser)]
#[command(about = "DR ingest (link + fusion + planning) throughput on one thread")]
struct Args {
    /// Objects per summary.
    #[arg(long, default_value_t = 50)]
    objects: usize,
    /// Summaries per run (one every 50 ms of scene time, with the vehicle's state).
    #[arg(long, default_value_t = 20_000)]
    frames: usize,
    /// Measured repetitions; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// ONNX speed advisor to plan with (models/speed_advisor/speed_advisor.onnx).
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    /// Frames as sent without compression (vehicles' link nodes compress by default).
    #[arg(long)]
    plain_frames: bool,
}

const LIMIT: f64 = 33.3;
const T0_US: u64 = 1_800_000_000_000_000;

/// The ego at 25 m/s in lane 1 of a 3-lane road, and `n` vehicles around it in all lanes
/// at their own speeds, wrapping within [-60, 120] m of the ego (one leaving at the front
/// comes back at the rear, as a new object).
fn frame(n: usize, k: usize) -> (VehicleState, PerceptionSummary) {
    let t = k as f64 * 0.05;
    let t_us = T0_US + (t * 1e6) as u64;
    let ego_x = 100.0 + 25.0 * t;
    let mut state = VehicleState::default();
    state.header.stamp = ros_time(t_us);
    state.header.frame_id = "map".into();
    state.vehicle_id = "bench".into();
    state.pose.position.x = ego_x;
    state.pose.position.y = 3.5;
    state.pose.orientation.w = 1.0;
    state.twist.linear.x = 25.0;
    state.length = 4.5;
    state.width = 1.9;
    let mut summary = PerceptionSummary::default();
    summary.header.stamp = ros_time(t_us);
    summary.header.frame_id = "base_link".into();
    summary.sensor_id = "lidar_top".into();
    summary.sensor_kind = PerceptionSummary::SENSOR_LIDAR;
    summary.max_range = 120.0;
    summary.objects = (0..n)
        .map(|i| {
            let lane = (i % 3) as f64;
            let speed = 18.0 + (i * 7 % 13) as f64;
            let x0 = -60.0 + (i as f64 * 180.0 / n as f64);
            let rel = (x0 + (speed - 25.0) * t + 60.0).rem_euclid(180.0) - 60.0;
            // A little deterministic noise, as a sensor has.
            let jitter = (((i * 31 + k * 17) % 11) as f64 - 5.0) * 0.01;
            let mut o = DetectedObject::default();
            o.classification = DetectedObject::CLASS_CAR;
            o.class_confidence = 0.9;
            o.existence_probability = 0.95;
            o.position.x = rel + jitter;
            o.position.y = lane * 3.5 - 3.5 + jitter;
            o.dimensions.x = 4.5;
            o.dimensions.y = 1.9;
            o.dimensions.z = 1.5;
            o.position_covariance = [0.04, 0.0, 0.0, 0.0, 0.04, 0.0, 0.0, 0.0, 0.1];
            o
        })
        .collect();
    (state, summary)
}

fn settings(model: &Option<std::path::PathBuf>) -> anyhow::Result<TwinSettings> {
    let mut planner = Planner::default();
    if let Some(path) = model {
        let model = SpeedModel::load(path).map_err(|e| anyhow::anyhow!("--model: {e}"))?;
        planner = planner
            .with_speed_model(Arc::new(model))
            .map_err(|e| anyhow::anyhow!("--model: {e}"))?;
    }
    Ok(TwinSettings {
        road: Arc::new(Road::straight(200_000.0, 3, LIMIT)?),
        tracker: TrackerConfig::default(),
        planner,
    })
}

/// A regional tile as the regional service publishes one every 30 s: slow traffic (6 m/s)
/// in every lane over 600 m starting `ahead` metres before the vehicle at `ego_x`, so that
/// the planner (and the speed advisor) always has a jam to plan for.
fn tile(ego_x: f64, ahead: f64, stamp_us: u64) -> RegionalTraffic {
    let start = ego_x + ahead;
    let mut t = RegionalTraffic::default();
    t.header.stamp = ros_time(stamp_us);
    t.tile_id = "bench".into();
    t.window.sec = 30;
    t.contributors = 20;
    t.k_threshold = 10;
    let segment = (start / 1000.0).floor();
    t.lanes = (0..3)
        .map(|lane| LaneTraffic {
            segment_id: format!("seg-{segment}"),
            lane_index: lane,
            start_s: start - segment * 1000.0,
            end_s: start - segment * 1000.0 + 600.0,
            mean_speed: 6.0,
            density: 60.0,
            flow: 1300.0,
        })
        .collect();
    t
}

/// The scene's frames, sealed as the vehicle sends them: its state and the summary, per
/// 50 ms step.
fn sealed_frames(sealer: &mut FrameSealer, args: &Args) -> Vec<Vec<u8>> {
    (0..args.frames)
        .flat_map(|k| {
            let (state, summary) = frame(args.objects, k);
            let t = T0_US + k as u64 * 50_000;
            [
                sealer.seal(to_link("state", Priority::OwnState, &state, t)),
                sealer.seal(to_link("objects/lidar_top", Priority::Objects, &summary, t)),
            ]
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let vehicle = VehicleId::new("bench")?;
    let settings = settings(&args.model)?;
    let mut full = Vec::new();
    let mut link_only = Vec::new();
    let mut tracks = 0usize;
    let mut model_share = 0.0;
    for _ in 0..args.runs {
        let (pe, dr) = KeyMaterial::generate_pair(&vehicle)?;
        let (mut pipeline, mut sealer) = IngestPipeline::new(pe.clone(), dr.clone())?;
        // The DR's answers are sealed like the vehicle's frames (the same AEAD work).
        let (_, mut answer_sealer) = IngestPipeline::new(pe, dr)?;
        sealer.set_compress(!args.plain_frames);
        let frames = sealed_frames(&mut sealer, &args);
        // Baseline: the link alone (open, decode), a fresh pipeline over the same frames.
        let (pe2, dr2) = KeyMaterial::generate_pair(&vehicle)?;
        let (mut base_pipeline, mut base_sealer) = IngestPipeline::new(pe2, dr2)?;
        base_sealer.set_compress(!args.plain_frames);
        let base_frames = sealed_frames(&mut base_sealer, &args);
        let begin = Instant::now();
        let mut decoded = 0usize;
        for f in &base_frames {
            for d in base_pipeline.ingest(f) {
                if d.message.type_name.ends_with("PerceptionSummary") {
                    let s: PerceptionSummary = from_link(&d.message)?;
                    decoded += s.objects.len();
                } else {
                    let _: VehicleState = from_link(&d.message)?;
                }
            }
        }
        link_only.push(args.frames as f64 / begin.elapsed().as_secs_f64());
        anyhow::ensure!(decoded == args.frames * args.objects);

        let mut twin = Twin::new("bench", &settings);
        let mut by_model = 0usize;
        let mut answers = 0usize;
        let begin = Instant::now();
        for f in &frames {
            for d in pipeline.ingest(f) {
                if d.message.type_name.ends_with("PerceptionSummary") {
                    let s: PerceptionSummary = from_link(&d.message)?;
                    let now = twinlink_link::minimal::time_us(&s.header.stamp);
                    let k = ((now - T0_US) / 50_000) as usize;
                    if k % 600 == 0 {
                        // Every 30 s a new tile: the jam 1.6 km ahead, moving upstream
                        // (it was 1.8 km ahead of this place 30 s ago).
                        let ego_x = 100.0 + 25.0 * k as f64 * 0.05;
                        let at = now as f64 * 1e-6;
                        twin.on_regional(&tile(ego_x - 750.0, 1800.0, now - 30_000_000), at - 30.0)
                            .map_err(|e| anyhow::anyhow!("{e}"))?;
                        twin.on_regional(&tile(ego_x, 1600.0, now), at)
                            .map_err(|e| anyhow::anyhow!("{e}"))?;
                    }
                    twin.on_summary(&s).map_err(|e| anyhow::anyhow!("{e}"))?;
                    let r = twin
                        .recommend(now as f64 * 1e-6, 5.0)
                        .ok_or_else(|| anyhow::anyhow!("no recommendation"))?;
                    by_model += usize::from(r.reason.ends_with("(model)"));
                    let sealed =
                        answer_sealer.seal(to_link("recommendation", Priority::OwnState, &r, now));
                    answers += usize::from(!sealed.is_empty());
                } else {
                    let s: VehicleState = from_link(&d.message)?;
                    twin.on_state(&s).map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            }
        }
        full.push(args.frames as f64 / begin.elapsed().as_secs_f64());
        anyhow::ensure!(
            answers == args.frames,
            "answered {answers} of {}",
            args.frames
        );
        tracks = twin.tracker().confirmed().count();
        model_share = by_model as f64 / args.frames as f64;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2].round()
    };
    println!(
        "{}",
        json!({
            "objects": args.objects,
            "frames": args.frames,
            "model": args.model.as_ref().map(|p| p.display().to_string()),
            "confirmed_tracks_at_end": tracks,
            "recommendations_by_model": model_share,
            "dr_ingest_per_core": median(&mut full),
            "link_only_ingest_per_core": median(&mut link_only),
            "runs": full,
        })
    );
    Ok(())
}

/// The allocator the DR host runs with (`twin-dr-host`), so that the figure is the host's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
