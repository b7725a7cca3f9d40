//! Every scenario shipped in `sim/scenarios/` loads, validates and runs without a collision
//! for its first simulated minutes.

use std::path::PathBuf;

use twinlink_sim::{Scenario, World};

fn scenarios_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

#[test]
fn the_named_scenarios_are_shipped_and_valid() {
    for name in [
        "hidden_hazard",
        "tunnel_outage",
        "congestion_wave",
        "fleet_1000",
    ] {
        let path = scenarios_dir().join(format!("{name}.yaml"));
        let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.name, name);
    }
    let tunnel = Scenario::load(&scenarios_dir().join("tunnel_outage.yaml")).unwrap();
    // 60 s without coverage at the limit.
    let dark = (0..8000)
        .filter(|&s| !tunnel.coverage.at(s as f64).is_covered())
        .count() as f64;
    assert!(
        (dark / tunnel.road.speed_limit_mps - 60.0).abs() < 1.0,
        "{dark} m dark"
    );
    let fleet = Scenario::load(&scenarios_dir().join("fleet_1000.yaml")).unwrap();
    assert_eq!(fleet.traffic.vehicles, 1000);
}

#[test]
fn every_shipped_scenario_runs_its_first_minutes_without_a_collision() {
    for entry in std::fs::read_dir(scenarios_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let s = Scenario::load(&path).unwrap();
        let mut w = World::new(&s);
        let horizon = if s.traffic.vehicles > 500 {
            60.0
        } else {
            180.0
        };
        w.run_until(horizon);
        let st = w.stats();
        assert_eq!(st.collisions, 0, "{}: {st:?}", s.name);
        assert!(st.mean_speed() > 5.0, "{}: traffic moves: {st:?}", s.name);
    }
}
