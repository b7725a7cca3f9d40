//! Each vehicle package README lists every parameter with the default and range the node
//! declares (the table `params::markdown_table` prints), so the docs cannot drift.

use twinlink_vehicle::params::{markdown_table, ParamSpec};
use twinlink_vehicle::{camera, lidar, radar, uplink};

fn check(package: &str, specs: Vec<ParamSpec>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../ros_pkgs")
        .join(package)
        .join("README.md");
    let readme =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let table = markdown_table(&specs);
    assert!(
        readme.contains(&table),
        "{} does not contain the declared parameter table; regenerate it with\n  cargo run -p twinlink-vehicle --example param_tables -- <node>\nexpected:\n{table}",
        path.display()
    );
}

#[test]
fn lidar_readme() {
    check("twin_lidar_summarizer", lidar::parameters());
}

#[test]
fn radar_readme() {
    check("twin_radar_summarizer", radar::parameters());
}

#[test]
fn camera_readme() {
    check("twin_camera_summarizer", camera::parameters());
}

#[test]
fn link_node_readme() {
    check("twin_link_node", uplink::parameters());
}
