//! Times the LiDAR summarizer on a highway scene (24 vehicles and a pedestrian) scanned by a
//! 64-beam LiDAR into a cloud of at least `--points` returns, on the calling thread.
//! Prints one JSON line: median and p90 over `--runs` frames, and the objects found.

use std::time::Instant;

use clap::Parser;
use twinlink_vehicle::lidar::{LidarConfig, LidarSummarizer};
use twinlink_vehicle::synth::{benchmark_scene, lidar_with_points};

#[derive(Parser)]
#[command(about = "Times the LiDAR summarizer on a synthetic highway cloud")]
struct Args {
    /// Returns in the cloud (at least).
    #[arg(long, default_value_t = 120_000)]
    points: usize,
    /// Frames to time.
    #[arg(long, default_value_t = 60)]
    runs: usize,
}

fn main() {
    let args = Args::parse();
    let scene = benchmark_scene();
    let model = lidar_with_points(&scene, args.points);
    let clouds: Vec<_> = (0..4).map(|seed| model.scan(&scene, seed)).collect();
    let mut summarizer = LidarSummarizer::new(LidarConfig {
        mounting: model.mounting(),
        ..Default::default()
    });
    // Warm-up: allocations and page faults of the first frames.
    for cloud in &clouds {
        summarizer
            .summarize(cloud)
            .expect("synthetic clouds are valid");
    }
    let mut times_ms = Vec::with_capacity(args.runs);
    let mut objects = 0;
    for run in 0..args.runs.max(1) {
        let cloud = &clouds[run % clouds.len()];
        let started = Instant::now();
        let (summary, _) = summarizer
            .summarize(cloud)
            .expect("synthetic clouds are valid");
        times_ms.push(started.elapsed().as_secs_f64() * 1e3);
        objects = summary.objects.len();
    }
    times_ms.sort_by(f64::total_cmp);
    let at = |q: f64| times_ms[((times_ms.len() - 1) as f64 * q).round() as usize];
    println!(
        "{}",
        serde_json::json!({
            "points": clouds[0].width,
            "raw_bytes": clouds[0].data.len(),
            "objects_in_scene": scene.objects.len(),
            "objects_found": objects,
            "runs": times_ms.len(),
            "lidar_summarize_ms": at(0.5),
            "lidar_summarize_p90_ms": at(0.9),
        })
    );
}
