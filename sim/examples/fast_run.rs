//! Runs a scenario in fast mode twice on the same seed, without twins and with them, and
//! prints both reports as JSON lines.
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
    for twins in [false, true] {
        let config = FastConfig {
            twins,
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
