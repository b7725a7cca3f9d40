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
//! | crossing | 0.52 [0.34-0.71] | 0.80 [0.72-0.85] | 1 [0-4] | 0.18 [0.12-0.25] |
//! | occlusion | 0.64 [0.72-0.88] | 0.83 [0.80-0.92] | 1 [2-3] | 0.29 [0.26-0.33] |
//! | highway_dense | 0.76 [0.74-0.84] | 0.85 [0.88-0.91] | 4 [2-3] | 0.24 [0.17-0.28] |
//! | mixed_urban | 0.80 [0.63-0.74] | 0.91 [0.80-0.86] | 1 [1-4] | 0.21 [0.19-0.26] |
//!
//! MOTA is low because the tracker keeps duplicate tracks. About one detection in 100 falls
//! outside the 99 % gate of its own track (that is what a 99 % gate means); it starts a
//! tentative track whose large initial velocity variance lets it win later detections of
//! the same object (the camera's, with metre-scale range errors, most easily), so it is
//! confirmed, and both tracks live on, taking turns at the detections: nothing suppresses a
//! birth next to a confirmed track or merges two tracks on one object. At seed 1,
//! 664 of 921 false positives (crossing), 316 of 432 (occlusion), 518 of 1002 (highway) and
//! 171 of 566 (urban) lie within 2 m of an object another track already matches, and the id
//! switches happen when the original of such a pair dies and the duplicate takes over.
//! Without the camera (`--sensors lidar,radar`) MOTA is 0.91/0.95/0.94/0.92 in the order
//! of the table, with the LiDAR alone 0.97/0.72/0.90/0.94; with `--max-coast 0.2`
//! duplicates die sooner and MOTA rises to 0.81-0.90 while identities break. The thresholds
//! below accept today's tracker (a fix of the duplicates should raise them) and stay far
//! from what the degraded trackers of the negative tests reach.
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
    // Pedestrians crossing each other 0.6-1 m apart, the ego standing. MOTA 0.52 measured:
    // 0.35 keeps a margin of 0.17 (seed 4 reaches 0.34: duplicates are that variable) and
    // fails wide-open gates (0.13). IDF1 0.80 measured, 0.70 floor (seed spread 0.72-0.85).
    // Id switches: a correct tracker has none here (nothing is occluded); 1 measured, 5
    // allowed (spread 0-4), while dropping tracks after 0.2 s gives 15. RMSE 0.18 m measured
    // from LiDAR's 0.1-0.2 m: 0.40 m means the filter no longer follows walkers (wide gates
    // give 0.52 m).
    Thresholds {
        scenario: "crossing",
        min_mota: 0.35,
        min_idf1: 0.70,
        max_id_switches: 5,
        max_rmse: 0.40,
    },
    // One car hidden by an oncoming truck for ~1 s (a coasting track must bridge it) and one
    // hidden for ~2.3 s (longer than max_coast: one id switch is expected and counted).
    // MOTA 0.64 measured, floor 0.45 (wide gates: -0.49). IDF1 0.83, floor 0.72 (short coast:
    // 0.69, which loses the bridged car's identity). Id switches 1 measured (the expected
    // one), 5 allowed (spread 2-3; short coast: 16). RMSE 0.29 m (radar-only targets far
    // ahead are the least precise), 0.45 m allowed.
    Thresholds {
        scenario: "occlusion",
        min_mota: 0.45,
        min_idf1: 0.72,
        max_id_switches: 5,
        max_rmse: 0.45,
    },
    // Four lanes, 20 vehicles in view, overtakes and lane changes, the ego changing lanes on
    // a curve. MOTA 0.76 measured, floor 0.60 (spread 0.74-0.84; wide gates 0.44). IDF1 0.85,
    // floor 0.78 (short coast 0.70, wide gates 0.776). Id switches 4 measured (all from
    // duplicates taking over), 10 allowed (short coast: 55). RMSE 0.24 m, 0.45 m allowed.
    Thresholds {
        scenario: "highway_dense",
        min_mota: 0.60,
        min_idf1: 0.78,
        max_id_switches: 10,
        max_rmse: 0.45,
    },
    // Urban mix: parked truck hiding a pedestrian, cyclist, motorcycle, crossing and passing
    // pedestrians, traffic both ways. MOTA 0.80 measured, floor 0.55 (spread 0.63-0.80; wide
    // gates 0.18). IDF1 0.91, floor 0.75 (short coast 0.65, wide gates 0.69). Id switches 1,
    // 8 allowed (spread 1-4; short coast 50). RMSE 0.21 m, 0.40 m allowed.
    Thresholds {
        scenario: "mixed_urban",
        min_mota: 0.55,
        min_idf1: 0.75,
        max_id_switches: 8,
        max_rmse: 0.40,
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
