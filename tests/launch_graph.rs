//! The launch files bring the vehicle graph up: `twinlaunch` (the project's runner of the
//! ROS 2 XML launch format) starts every node the file describes with its parameter files
//! and remappings, the rclpy peer sees the nodes and topics on the graph, the link node
//! reaches a real DR, and stopping the runner ends every node.
#![cfg(feature = "ros")]

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use twinlink_launch::vehicle::{save_key, VehicleRun};
use twinlink_launch::{workspace_binary, workspace_root, Supervised};
use twinlink_link::scenario::pair_configs;

/// Processes whose command line mentions `needle` (the run's unique namespace).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) && !text.contains("vehicle_peer") {
            found.push(text);
        }
    }
    found
}

struct Launched {
    run: VehicleRun,
    vehicle: String,
    runner: Supervised,
    dr: Supervised,
    dr_report: std::path::PathBuf,
}

/// Starts a DR for a fresh vehicle and `twinlaunch <file>` with the vehicle's id given as
/// the launch argument `vehicle_arg` (vehicle, role_name or model).
fn launch(label: &str, file: &str, vehicle_arg: &str) -> Launched {
    let run = VehicleRun::new(label).unwrap();
    let vehicle = run.isolation.namespace.trim_start_matches('/').to_string();
    let (pe, dr) = pair_configs("unused").unwrap();
    // Keys for this run's vehicle id.
    let id = twinlink_link::VehicleId::new(&vehicle).unwrap();
    let (pe_keys, dr_keys) = twinlink_link::KeyMaterial::generate_pair(&id).unwrap();
    let pe_key = save_key(&run.dir, "pe.key", &pe_keys).unwrap();
    let dr_key = save_key(&run.dir, "dr.key", &dr_keys).unwrap();
    let endpoint = dr.zenoh.listen[0].clone();
    drop(pe);
    let dr_report = run.dir.join("dr.json");
    let mut dr_cmd = Command::new(workspace_binary("twinlink-dr").unwrap());
    dr_cmd
        .args(["--vehicle", &vehicle, "--keys"])
        .arg(&dr_key)
        .args(["--listen", &endpoint, "--report"])
        .arg(&dr_report)
        .stdout(std::fs::File::create(run.dir.join("dr.log")).unwrap())
        .stderr(std::fs::File::create(run.dir.join("dr.err")).unwrap());
    let dr = Supervised::spawn("twinlink-dr", dr_cmd).unwrap();

    let mut runner = Command::new(workspace_binary("twinlaunch").unwrap());
    runner
        .arg(workspace_root().join("launch").join(file))
        .arg(format!("key_file:={}", pe_key.display()))
        .arg(format!("twin_endpoint:={endpoint}"))
        .arg(format!("{vehicle_arg}:={vehicle}"));
    run.isolation.apply(&mut runner);
    let log = std::fs::File::create(run.dir.join("twinlaunch.log")).unwrap();
    runner.stdout(log.try_clone().unwrap()).stderr(log);
    let runner = Supervised::spawn("twinlaunch", runner).unwrap();
    Launched {
        run,
        vehicle,
        runner,
        dr,
        dr_report,
    }
}

/// The graph as the rclpy peer sees it once `nodes` (names under the vehicle's namespace)
/// and `topics` (full names) are all on it, or after 40 s.
fn graph(l: &Launched, nodes: &[&str], topics: &[String]) -> Value {
    let wanted: Vec<String> = nodes
        .iter()
        .map(|n| format!("/{}/{n}", l.vehicle))
        .collect();
    l.run
        .run_peer(
            "graph",
            &[
                "--nodes",
                &wanted.join(","),
                "--topics",
                &topics.join(","),
                "--seconds",
                "40",
            ],
            Duration::from_secs(90),
        )
        .unwrap()
}

fn stop_and_check(mut l: Launched) -> Value {
    l.runner.terminate();
    let status = l.runner.wait_timeout(Duration::from_secs(15)).unwrap();
    let log = std::fs::read_to_string(l.run.dir.join("twinlaunch.log")).unwrap_or_default();
    assert!(status.is_some(), "twinlaunch did not stop:\n{log}");
    std::thread::sleep(Duration::from_millis(300));
    let left: Vec<String> = processes_mentioning(&l.vehicle)
        .into_iter()
        .filter(|c| !c.contains("twinlink-dr"))
        .collect();
    assert!(
        left.is_empty(),
        "nodes left running after the runner stopped: {left:#?}\n{log}"
    );
    l.dr.terminate();
    l.dr.wait_timeout(Duration::from_secs(10)).unwrap();
    serde_json::from_str(&std::fs::read_to_string(&l.dr_report).unwrap_or_default())
        .unwrap_or(Value::Null)
}

#[test]
fn vehicle_launch_brings_up_all_nodes_and_the_link_to_the_twin() {
    let l = launch("launch", "vehicle.launch.xml", "vehicle");
    let vehicle = l.vehicle.clone();
    let expected: Vec<String> = [
        "lidar/points",
        "radar/points",
        "odom",
        "camera/image_raw",
        "camera/camera_info",
        "perception/objects/camera",
        "perception/objects/lidar",
        "perception/objects/radar",
        "twin/recommendation",
        "twin/status",
        "twin/markers",
        "lidar_summarizer/debug/markers",
    ]
    .iter()
    .map(|t| format!("/{vehicle}/{t}"))
    .collect();
    let g = graph(
        &l,
        &["lidar_summarizer", "radar_summarizer", "twin_link_node"],
        &expected,
    );
    let log = std::fs::read_to_string(l.run.dir.join("twinlaunch.log")).unwrap_or_default();
    assert_eq!(g["all_present"], true, "{g}\n{log}");
    let topics: Vec<String> = serde_json::from_value(g["topics"].clone()).unwrap();
    for full in &expected {
        assert!(topics.contains(full), "{full} missing from {topics:?}");
    }
    // Let the link node's handshake complete before stopping.
    std::thread::sleep(Duration::from_secs(2));
    let dr = stop_and_check(l);
    assert!(
        dr["link"]["sessions_established"].as_u64().unwrap_or(0) >= 1,
        "the link node never reached the DR: {dr}"
    );
}

#[test]
fn carla_and_gazebo_variants_remap_onto_the_simulators_topics() {
    // role_name decides both the namespace and the CARLA topics.
    let l = launch("carla", "vehicle_carla.launch.xml", "role_name");
    let expected: Vec<String> = [
        "lidar",
        "radar_front",
        "odometry",
        "rgb_front/image",
        "rgb_front/camera_info",
    ]
    .iter()
    .map(|t| format!("/carla/{}/{t}", l.vehicle))
    .collect();
    let g = graph(
        &l,
        &["lidar_summarizer", "radar_summarizer", "twin_link_node"],
        &expected,
    );
    let topics: Vec<String> = serde_json::from_value(g["topics"].clone()).unwrap();
    for full in &expected {
        assert!(topics.contains(full), "{full} missing from {topics:?}");
    }
    assert!(
        !topics.contains(&format!("/{}/lidar/points", l.vehicle)),
        "{topics:?}"
    );
    stop_and_check(l);

    let l = launch("gazebo", "vehicle_gazebo.launch.xml", "model");
    let expected = vec![
        "/lidar/points".to_string(),
        format!("/model/{}/odometry", l.vehicle),
    ];
    let g = graph(&l, &["lidar_summarizer", "twin_link_node"], &expected);
    let topics: Vec<String> = serde_json::from_value(g["topics"].clone()).unwrap();
    assert!(topics.contains(&"/lidar/points".to_string()), "{topics:?}");
    assert!(
        topics.contains(&format!("/model/{}/odometry", l.vehicle)),
        "{topics:?}"
    );
    let nodes: Vec<String> = serde_json::from_value(g["nodes"].clone()).unwrap();
    assert!(
        !nodes
            .iter()
            .any(|n| n.starts_with(&format!("/{}/", l.vehicle)) && n.ends_with("radar_summarizer")),
        "no radar in Gazebo: {nodes:?}"
    );
    stop_and_check(l);
}
