//! Scores the DR's tracker with an independent evaluator.
//!
//! `twin-dr-track-eval --scenario all --seed 1` generates the four sequences of
//! `twin_dr_host::sequences` (LiDAR 10 Hz, radar 20 Hz, camera 15 Hz with noise, misses and
//! clutter), runs the tracker over them and writes `gt.csv`/`hyp.csv` at 10 Hz; then
//! `scripts/mot_score.py`, with py-motmetrics 1.4.0 (pinned in scripts/requirements-ros.txt),
//! matches truth and tracks by ground-plane distance under 2 m and reports MOTA, IDF1, id
//! switches and the RMSE of matched pairs. The Python is `$TWINLINK_PYTHON`
//! (scripts/env.sh) or the project's venv `.deps/ros/bin/python` (scripts/setup.sh).
//!
//! # Thresholds
//!
//! Measured with the tracker as it is (seed 1; seeds 2-5 in brackets, to show the spread
//! the thresholds have to absorb):
//!
//! | scenario | MOTA | IDF1 | id switches | RMSE [m] |
//! | --- | --- | --- | --- | --- |
//! | crossing | 0.900 [0.855-0.915] | 0.952 [0.910-0.959] | 0 [0-1] | 0.11 [0.09-0.12] |
//! | occlusion | 0.947 [0.832-0.942] | 0.952 [0.898-0.948] | 1 [1-2] | 0.27 [0.26-0.29] |
//! | highway_dense | 0.949 [0.906-0.945] | 0.975 [0.954-0.973] | 0 [0-2] | 0.16 [0.15-0.19] |
//! | mixed_urban | 0.948 [0.895-0.951] | 0.974 [0.950-0.976] | 0 [0-1] | 0.19 [0.18-0.20] |
//!
//! This evaluation found the tracker's main weakness, since fixed: duplicate tracks. About
//! one detection in 100 falls outside the 99 % gate of its own track; it started a
//! tentative track whose large initial velocity variance let it win later detections of the
//! same object (the camera's, with metre-scale range errors, most easily), and both tracks
//! lived on. MOTA was then 0.52 / 0.64 / 0.76 / 0.80 (seed 1, in the table's order), with
//! 4 id switches on the highway. The tracker now births no track within the 99.99 % gate of
//! a confirmed one and merges confirmed tracks that follow one object (within each other's
//! 99 % gate, speeds within 2 m/s), keeping the older id. Each threshold below sits under
//! the lowest seed with a margin and far above what the degraded trackers of the negative
//! tests reach.
//!
//! Each threshold is deterministic for seed 1 (the generator and tracker are), so the test
//! cannot flake; the margins cover changes of the tracker's numerics, not randomness.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

struct Thresholds {
    scenario: &'static str,
    /// Lowest acceptable MOTA.
    min_mota: f64,
    /// Lowest acceptable IDF1.
    min_idf1: f64,
    /// Most id switches accepted.
    max_id_switches: u64,
    /// Largest RMSE of matched pairs accepted [m].
    max_rmse: f64,
}

const THRESHOLDS: [Thresholds; 4] = [
    // Pedestrians crossing each other 0.6-1 m apart, the ego standing. MOTA 0.90 measured
    // (seeds 0.855-0.915), floor 0.80; wide-open gates give 0.13. IDF1 0.95 (0.91-0.96),
    // floor 0.88. Id switches: a correct tracker has none here (nothing is occluded); 0
    // measured, 2 allowed, while dropping tracks after 0.2 s gives 15. RMSE 0.11 m from
    // LiDAR's 0.1-0.2 m: 0.25 m means the filter no longer follows walkers (wide gates:
    // 0.52 m).
    Thresholds {
        scenario: "crossing",
        min_mota: 0.80,
        min_idf1: 0.88,
        max_id_switches: 2,
        max_rmse: 0.25,
    },
    // One car hidden by an oncoming truck for ~1 s (a coasting track must bridge it) and one
    // hidden for ~2.3 s (longer than max_coast: one id switch is expected and counted).
    // MOTA 0.95 measured (0.83-0.94), floor 0.78 (wide gates: -0.49). IDF1 0.95 (0.90-0.95),
    // floor 0.85 (short coast: 0.69, which loses the bridged car's identity). Id switches 1
    // (the expected one; 1-2), 3 allowed (short coast: 16). RMSE 0.27 m (radar-only targets
    // far ahead are the least precise), 0.40 m allowed.
    Thresholds {
        scenario: "occlusion",
        min_mota: 0.78,
        min_idf1: 0.85,
        max_id_switches: 3,
        max_rmse: 0.40,
    },
    // Four lanes, 20 vehicles in view, overtakes and lane changes, the ego changing lanes on
    // a curve. MOTA 0.95 measured (0.91-0.95), floor 0.85 (wide gates 0.44). IDF1 0.975
    // (0.95-0.97), floor 0.92 (short coast 0.70). Id switches 0 (0-2), 4 allowed (short
    // coast: 55). RMSE 0.16 m (0.15-0.19), 0.30 m allowed.
    Thresholds {
        scenario: "highway_dense",
        min_mota: 0.85,
        min_idf1: 0.92,
        max_id_switches: 4,
        max_rmse: 0.30,
    },
    // Urban mix: parked truck hiding a pedestrian, cyclist, motorcycle, crossing and passing
    // pedestrians, traffic both ways. MOTA 0.95 measured (0.90-0.95), floor 0.85 (wide gates
    // 0.18). IDF1 0.97 (0.95-0.98), floor 0.92 (short coast 0.65). Id switches 0 (0-1), 3
    // allowed (short coast 50). RMSE 0.19 m (0.18-0.20), 0.30 m allowed.
    Thresholds {
        scenario: "mixed_urban",
        min_mota: 0.85,
        min_idf1: 0.92,
        max_id_switches: 3,
        max_rmse: 0.30,
    },
];

fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// `$TWINLINK_PYTHON` (set by scripts/env.sh), else the venv scripts/setup.sh makes.
fn python() -> PathBuf {
    match std::env::var_os("TWINLINK_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join(".deps/ros/bin/python"),
    }
}

/// Runs the eval binary (with `extra` arguments) and the scorer; returns the scorer's JSON.
fn evaluate(extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_twin-dr-track-eval"))
        .args(["--scenario", "all", "--seed", "1", "--out"])
        .arg(dir.path())
        .args(extra)
        .output()
        .expect("running twin-dr-track-eval");
    assert!(
        out.status.success(),
        "twin-dr-track-eval {extra:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let python = python();
    let scorer = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mot_score.py");
    let scored = Command::new(&python)
        .arg(&scorer)
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); run scripts/setup.sh (it installs the evaluator pinned in \
                 scripts/requirements-ros.txt into .deps/ros) or set TWINLINK_PYTHON",
                python.display()
            )
        });
    assert!(
        scored.status.success(),
        "{} {} failed (is motmetrics installed? scripts/setup.sh installs it): {}",
        python.display(),
        scorer.display(),
        String::from_utf8_lossy(&scored.stderr)
    );
    serde_json::from_slice(&scored.stdout).unwrap_or_else(|e| {
        panic!(
            "scorer output is not JSON ({e}): {}",
            String::from_utf8_lossy(&scored.stdout)
        )
    })
}

/// Scores of one scenario: (MOTA, IDF1, id switches, RMSE); an undefined score (null,
/// e.g. RMSE without any match) counts as the worst.
fn scores(json: &Value, scenario: &str) -> (f64, f64, u64, f64) {
    let s = &json["scenarios"][scenario];
    assert!(s.is_object(), "no scores for {scenario} in {json}");
    (
        s["mota"].as_f64().unwrap_or(f64::NEG_INFINITY),
        s["idf1"].as_f64().unwrap_or(f64::NEG_INFINITY),
        s["id_switches"].as_u64().expect("id_switches"),
        s["rmse_m"].as_f64().unwrap_or(f64::INFINITY),
    )
}

/// The thresholds a scenario's scores miss.
fn misses(json: &Value, t: &Thresholds) -> Vec<String> {
    let (mota, idf1, idsw, rmse) = scores(json, t.scenario);
    let mut out = Vec::new();
    if mota < t.min_mota {
        out.push(format!("MOTA {mota:.3} < {}", t.min_mota));
    }
    if idf1 < t.min_idf1 {
        out.push(format!("IDF1 {idf1:.3} < {}", t.min_idf1));
    }
    if idsw > t.max_id_switches {
        out.push(format!("id switches {idsw} > {}", t.max_id_switches));
    }
    if rmse > t.max_rmse {
        out.push(format!("RMSE {rmse:.3} m > {} m", t.max_rmse));
    }
    out
}

fn table(json: &Value) -> String {
    THRESHOLDS
        .iter()
        .map(|t| {
            let (mota, idf1, idsw, rmse) = scores(json, t.scenario);
            format!(
                "{:>14}: MOTA {mota:.3} IDF1 {idf1:.3} IDSW {idsw} RMSE {rmse:.3} m\n",
                t.scenario
            )
        })
        .collect()
}

#[test]
fn the_tracker_meets_its_accuracy_thresholds() {
    let json = evaluate(&[]);
    assert_eq!(
        json["evaluator"]["package"], "motmetrics",
        "the evaluator: {}",
        json["evaluator"]
    );
    eprintln!("tracker scores (seed 1):\n{}", table(&json));
    let failed: Vec<String> = THRESHOLDS
        .iter()
        .flat_map(|t| {
            misses(&json, t)
                .into_iter()
                .map(move |m| format!("{}: {m}", t.scenario))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "the tracker misses its thresholds:\n{}\nscores:\n{}",
        failed.join("\n"),
        table(&json)
    );
}

/// A degraded tracker must miss at least one threshold in every scenario: the test can fail.
fn assert_degraded_fails(extra: &[&str]) {
    let json = evaluate(extra);
    eprintln!("degraded tracker {extra:?}:\n{}", table(&json));
    for t in &THRESHOLDS {
        assert!(
            !misses(&json, t).is_empty(),
            "{}: a tracker degraded by {extra:?} passes every threshold:\n{}",
            t.scenario,
            table(&json)
        );
    }
}

#[test]
fn a_tracker_that_drops_tracks_after_a_fifth_of_a_second_fails() {
    // Tracks no longer coast over misses and occlusions: identities break (id switches,
    // IDF1) even though MOTA alone would look better (duplicates die sooner too).
    assert_degraded_fails(&["--max-coast", "0.2"]);
}

#[test]
fn a_tracker_with_gates_opened_wide_fails() {
    // A 5 m position-noise floor on every sensor opens the gates: detections of neighbours
    // and clutter update the wrong tracks and far-off tentative tracks get confirmed.
    assert_degraded_fails(&["--min-position-sigma", "5"]);
}

#[test]
fn a_tracker_that_never_confirms_fails() {
    // Nothing is ever reported.
    assert_degraded_fails(&["--confirm-hits", "1000"]);
}
