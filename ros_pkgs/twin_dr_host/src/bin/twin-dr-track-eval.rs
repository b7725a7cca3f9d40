//! `twin-dr-track-eval`: runs the DR's tracker over a generated multi-sensor sequence and
//! writes ground truth and tracker output for an independent scorer
//! (`ros_pkgs/twin_dr_host/scripts/mot_score.py`).
//!
//! ```text
//! twin-dr-track-eval --scenario crossing|occlusion|highway_dense|mixed_urban|all [--seed N] --out DIR
//! ```
//!
//! For each scenario it writes `DIR/<scenario>/gt.csv`, `DIR/<scenario>/hyp.csv` (columns
//! `frame,id,x,y,class`, positions in the map frame [m], class names as
//! [`class_name`]) and `DIR/<scenario>/meta.json`.
//!
//! # Evaluation rate
//!
//! One evaluation frame per LiDAR summary (10 Hz): `frame` counts LiDAR summaries from 0.
//! The hypotheses are the tracker's confirmed tracks right after it processed that
//! summary (so every track is predicted to the LiDAR stamp) and the truth is taken at the
//! same stamp. Radar and camera summaries in between are fed to the tracker but not scored.
//!
//! # Which truth is expected
//!
//! A road user is in `gt.csv` at an evaluation frame when it is *visible* (in range and field
//! of view of at least one sensor and not hidden behind a truck) or was visible less than
//! `--gt-coast` seconds before (default: the default tracker's `max_coast`, 1.5 s), and
//! never before it was first visible. Reasons:
//!
//! - What no sensor could ever have seen cannot be demanded from the tracker.
//! - The tracker cannot tell an occlusion from an object leaving its sensors' range: in both
//!   cases it predicts the track for up to `max_coast` and then drops it. Within that window
//!   the truth is kept, so a coasting track that stays on its object counts as a match and
//!   one that drifts away counts as a miss and a false positive; an occlusion the tracker
//!   bridges keeps its identity, one it does not bridge costs an id switch. After the
//!   window the truth is dropped, so the by-design deletion is neither a miss nor (because
//!   the track is gone too) a false positive.
//! - The rule depends only on the truth and on `--gt-coast`, never on the tracker under
//!   test: the experiment flags below change the tracker, not what is expected of it.
//!
//! Objects entering view are expected at once, so the confirmation delay
//! (`confirm_hits` updates) costs a few misses per object, as it does a DR.
//!
//! # Experiments
//!
//! `--confirm-hits`, `--max-coast` and `--min-position-sigma` change the tracker's
//! configuration (the last one raises the position-noise floor of every sensor, which
//! widens the gates until gating no longer separates neighbours). The integration test
//! `tests/tracking_accuracy.rs` uses them to show that a degraded tracker fails its
//! thresholds. `--sensors` (a subset of `lidar,radar,camera`, LiDAR required) and
//! `--clutter-scale` change what the vehicle reports, to attribute errors to a sensor or
//! to clutter; visibility (and so the truth rule) then follows the sensors that remain.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use twin_dr_host::sequences::{
    class_name, generate, run_tracker, Scenario, Sequence, TrackOutput, SCENARIOS,
};
use twin_dr_host::tracker::TrackerConfig;
use twinlink_msgs::twin_msgs::msg::PerceptionSummary;

#[derive(Debug, Parser)]
#[command(
    name = "twin-dr-track-eval",
    about = "Run the DR's tracker over a generated sequence and write gt.csv and hyp.csv for scoring",
    version
)]
struct Cli {
    /// Scenario: crossing, occlusion, highway_dense, mixed_urban, or all.
    #[arg(long)]
    scenario: String,
    /// Seed of the scene and of every sensor error.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    seed: u64,
    /// Output directory; each scenario goes into DIR/<scenario>/.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// How long truth stays expected after it was last visible [s] (default: the default
    /// tracker's max_coast).
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    gt_coast: Option<f64>,
    /// Experiment: updates that confirm a track (tracker default 3).
    #[arg(long, value_name = "N")]
    confirm_hits: Option<u32>,
    /// Experiment: seconds a confirmed track coasts without an update (tracker default 1.5).
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    max_coast: Option<f64>,
    /// Experiment: smallest position standard deviation of every sensor [m] (tracker
    /// defaults 0.15 to 0.5); large values open the gates wide.
    #[arg(long, value_name = "METRES", allow_negative_numbers = true)]
    min_position_sigma: Option<f64>,
    /// Experiment: the sensors that report, comma-separated (default lidar,radar,camera).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    sensors: Option<Vec<String>>,
    /// Experiment: factor on every sensor's clutter rate (default 1; 0 removes clutter).
    #[arg(long, value_name = "FACTOR", allow_negative_numbers = true)]
    clutter_scale: Option<f64>,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twin-dr-track-eval: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn positive_finite(name: &str, v: f64, allow_zero: bool) -> anyhow::Result<f64> {
    if !v.is_finite() || v < 0.0 || (!allow_zero && v == 0.0) {
        let want = if allow_zero {
            "zero or more"
        } else {
            "more than zero"
        };
        bail!("--{name} must be a finite number of {want}, got {v}");
    }
    Ok(v)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let names: Vec<&str> = if cli.scenario == "all" {
        SCENARIOS.to_vec()
    } else if SCENARIOS.contains(&cli.scenario.as_str()) {
        vec![cli.scenario.as_str()]
    } else {
        bail!(
            "unknown scenario '{}': choose one of {} or all",
            cli.scenario,
            SCENARIOS.join(", ")
        );
    };
    let default = TrackerConfig::default();
    let gt_coast = positive_finite("gt-coast", cli.gt_coast.unwrap_or(default.max_coast), true)?;
    let mut config = default.clone();
    if let Some(n) = cli.confirm_hits {
        if n == 0 {
            bail!("--confirm-hits must be 1 or more");
        }
        config.confirm_hits = n;
    }
    if let Some(c) = cli.max_coast {
        config.max_coast = positive_finite("max-coast", c, true)?;
    }
    if let Some(s) = cli.min_position_sigma {
        let s = positive_finite("min-position-sigma", s, false)?;
        for noise in [
            &mut config.lidar,
            &mut config.radar,
            &mut config.camera,
            &mut config.other,
        ] {
            noise.min_position_sigma = s;
        }
    }
    let clutter_scale = positive_finite("clutter-scale", cli.clutter_scale.unwrap_or(1.0), true)?;
    let sensors: Vec<String> = cli
        .sensors
        .unwrap_or_else(|| vec!["lidar".into(), "radar".into(), "camera".into()]);
    for s in &sensors {
        if !["lidar", "radar", "camera"].contains(&s.as_str()) {
            bail!("unknown sensor '{s}' in --sensors: choose from lidar, radar, camera");
        }
    }
    if !sensors.iter().any(|s| s == "lidar") {
        bail!("--sensors must include lidar: evaluation frames are the LiDAR's");
    }
    if cli.out.exists() && !cli.out.is_dir() {
        bail!("--out {} exists and is not a directory", cli.out.display());
    }
    for name in names {
        let mut scenario = Scenario::named(name, cli.seed).context("scenario table")?;
        scenario.sensors.retain(|s| {
            let kind = match s.kind {
                PerceptionSummary::SENSOR_LIDAR => "lidar",
                PerceptionSummary::SENSOR_RADAR => "radar",
                _ => "camera",
            };
            sensors.iter().any(|k| k == kind)
        });
        for s in &mut scenario.sensors {
            s.clutter_rate *= clutter_scale;
        }
        let seq = generate(&scenario);
        let tracks = run_tracker(&seq, config.clone());
        let dir = cli.out.join(name);
        let stats = write_scenario(&dir, &scenario, &seq, &tracks, gt_coast, &config)?;
        println!(
            "{name}: seed {}, {} evaluation frames, {} road users, {} truth rows, {} track rows, {} track ids -> {}",
            cli.seed,
            stats.frames,
            stats.road_users,
            stats.gt_rows,
            stats.hyp_rows,
            stats.track_ids,
            dir.display()
        );
    }
    Ok(())
}

struct Stats {
    frames: usize,
    road_users: usize,
    gt_rows: usize,
    hyp_rows: usize,
    track_ids: usize,
}

fn write_scenario(
    dir: &Path,
    scenario: &Scenario,
    seq: &Sequence,
    tracks: &[TrackOutput],
    gt_coast: f64,
    config: &TrackerConfig,
) -> anyhow::Result<Stats> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut gt = String::from("frame,id,x,y,class\n");
    let mut hyp = String::from("frame,id,x,y,class\n");
    let mut last_visible: std::collections::HashMap<u32, f64> = Default::default();
    let (mut frames, mut gt_rows, mut hyp_rows) = (0usize, 0usize, 0usize);
    let mut track_ids = std::collections::BTreeSet::new();
    let mut road_users = std::collections::BTreeSet::new();
    let mut next_track = 0;
    for (k, f) in seq.frames.iter().enumerate() {
        for o in &f.truth {
            road_users.insert(o.id);
            if o.visible {
                last_visible.insert(o.id, f.t);
            }
        }
        while next_track < tracks.len() && tracks[next_track].frame < k {
            next_track += 1;
        }
        if f.summary.sensor_kind != PerceptionSummary::SENSOR_LIDAR {
            continue;
        }
        let frame = frames;
        frames += 1;
        for o in &f.truth {
            let expected = last_visible
                .get(&o.id)
                .is_some_and(|&seen| o.visible || f.t - seen < gt_coast);
            if expected {
                writeln!(
                    gt,
                    "{frame},{},{:.3},{:.3},{}",
                    o.id,
                    o.x,
                    o.y,
                    class_name(o.class)
                )?;
                gt_rows += 1;
            }
        }
        for tr in tracks[next_track..].iter().take_while(|tr| tr.frame == k) {
            writeln!(
                hyp,
                "{frame},{},{:.3},{:.3},{}",
                tr.id,
                tr.x,
                tr.y,
                class_name(tr.class)
            )?;
            hyp_rows += 1;
            track_ids.insert(tr.id);
        }
    }
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write("gt.csv", &gt)?;
    write("hyp.csv", &hyp)?;
    let meta = serde_json::json!({
        "scenario": scenario.name,
        "seed": scenario.seed,
        "duration_s": scenario.duration,
        "sensors": scenario.sensors.iter().map(|s| serde_json::json!({
            "id": s.id,
            "rate_hz": s.rate_hz,
            "max_range_m": s.max_range,
            "clutter_per_frame": s.clutter_rate,
        })).collect::<Vec<_>>(),
        "evaluation": {
            "rate_hz": 10.0,
            "frames": "one per LiDAR summary (lidar_top), counted from 0",
            "truth_rule": "visible (in some sensor's range and field of view, not occluded) or visible less than gt_coast_s before",
            "gt_coast_s": gt_coast,
            "frames_evaluated": frames,
        },
        "tracker": {
            "confirm_hits": config.confirm_hits,
            "max_coast_s": config.max_coast,
            "tentative_coast_s": config.tentative_coast,
            "min_position_sigma_m": {
                "lidar": config.lidar.min_position_sigma,
                "radar": config.radar.min_position_sigma,
                "camera": config.camera.min_position_sigma,
            },
        },
        "counts": {
            "summaries": seq.frames.len(),
            "road_users": road_users.len(),
            "truth_rows": gt_rows,
            "track_rows": hyp_rows,
            "track_ids": track_ids.len(),
        },
    });
    write("meta.json", &(serde_json::to_string_pretty(&meta)? + "\n"))?;
    Ok(Stats {
        frames,
        road_users: road_users.len(),
        gt_rows,
        hyp_rows,
        track_ids: track_ids.len(),
    })
}
