//! Runs a scenario in fast mode three times on the same seed: without twins, with twins,
//! and with twins that relay hazards to each other; prints the reports as JSON lines.
//!
//! ```sh
//! cargo run --release -p twinlink-sim --example fast_run -- sim/scenarios/hidden_hazard.yaml
//! ```

use twinlink_sim::fast::{FastConfig, FastRun};
use twinlink_sim::Scenario;

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: fast_run <scenario.yaml>");
        std::process::exit(2);
    };
    let scenario = Scenario::load(path.as_ref()).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2);
    });
    for (twins, relay) in [(false, false), (true, false), (true, true)] {
        let config = FastConfig {
            twins,
            relay,
            ..FastConfig::default()
        };
        match FastRun::new(&scenario, config).and_then(FastRun::run) {
            Ok(report) => println!(
                "{}",
                serde_json::to_string(&report).expect("reports serialize")
            ),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
    }
}
