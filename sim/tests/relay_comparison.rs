//! The inter-twin relay in the `hidden_hazard` scenario (fast mode): with twins on every
//! connected vehicle, the same seeds with the relay off and on. A vehicle stalls in the
//! right lane beyond a crest; twins whose vehicles pass it learn it, disclose it under
//! their vehicles' consent, and the twins behind take it and advise an early lane change
//! and slow-down. Measured on the twinned vehicles: fewer hard brakes and a larger smallest
//! time-to-collision.

use std::path::Path;

use twinlink_sim::fast::relay_comparison;
use twinlink_sim::Scenario;

#[test]
fn relayed_hazards_mean_fewer_hard_brakes_and_more_time_to_collision() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/hidden_hazard.yaml");
    let scenario = Scenario::load(&path).unwrap();
    let c = relay_comparison(&scenario, &[1, 2, 3, 4]).unwrap();
    eprintln!("{}", twinlink_sim::report::relay_table(&c));
    let (off, on) = (&c.off, &c.on);
    assert_eq!(off.relay.disclosed, 0, "the relay was off");
    assert!(on.relay.verified > 100, "{:?}", on.relay);
    assert_eq!(on.relay.rejected, 0, "{:?}", on.relay);
    assert!(on.relay.taken > on.relay.verified, "{:?}", on.relay);
    assert_eq!((off.collisions, on.collisions), (0, 0));
    assert!(
        on.hard_brakes_connected < off.hard_brakes_connected,
        "hard brakes of twinned vehicles: {} with the relay, {} without",
        on.hard_brakes_connected,
        off.hard_brakes_connected
    );
    let (ttc_off, ttc_on) = (
        off.median_min_ttc_connected_s.unwrap(),
        on.median_min_ttc_connected_s.unwrap(),
    );
    assert!(
        ttc_on > ttc_off,
        "smallest TTC of twinned vehicles (median of seeds): {ttc_on:.2} s with the relay, {ttc_off:.2} s without"
    );
    assert!(
        on.min_ttc_connected_s.unwrap() >= off.min_ttc_connected_s.unwrap(),
        "{:?} against {:?}",
        on.min_ttc_connected_s,
        off.min_ttc_connected_s
    );
}
