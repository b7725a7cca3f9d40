//! Runs a scenario's traffic alone (no twins) as fast as it goes and prints what the world
//! counted, with the factor by which it ran faster than real time.
//!
//! ```sh
//! cargo run --release -p twinlink-sim --example traffic_only -- sim/scenarios/fleet_1000.yaml
//! ```

use std::time::Instant;

use twinlink_sim::{Scenario, World};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: traffic_only <scenario.yaml>");
        std::process::exit(2);
    };
    let scenario = match Scenario::load(path.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mut world = World::new(&scenario);
    let started = Instant::now();
    world.run_until(scenario.duration_s);
    let wall = started.elapsed().as_secs_f64();
    let st = world.stats();
    println!(
        "{}: {:.0} s simulated in {wall:.2} s ({:.0}x real time), {} vehicles at the end",
        scenario.name,
        st.time,
        st.time / wall,
        world.vehicles().len()
    );
    println!(
        "entered {} exited {} ({:.0}/h), mean speed {:.1} m/s, lane changes {}, collisions {}, hard brakes {}, min TTC {:.1} s",
        st.entered,
        st.exited,
        st.throughput_per_h(),
        st.mean_speed(),
        st.lane_changes,
        st.collisions,
        st.hard_brakes,
        st.min_ttc
    );
}
