//! Prints the parameter table of each vehicle node, as its package README shows it:
//! `cargo run -p twinlink-vehicle --example param_tables -- lidar`.

use twinlink_vehicle::params::markdown_table;
use twinlink_vehicle::{camera, lidar, radar, uplink};

fn main() {
    let which = std::env::args().nth(1).unwrap_or_default();
    let specs = match which.as_str() {
        "lidar" => lidar::parameters(),
        "radar" => radar::parameters(),
        "camera" => camera::parameters(),
        "link" => uplink::parameters(),
        other => {
            eprintln!("usage: param_tables lidar|radar|camera|link (got {other:?})");
            std::process::exit(2);
        }
    };
    print!("{}", markdown_table(&specs));
}
