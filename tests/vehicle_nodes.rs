//! The vehicle's ROS 2 nodes as real processes, driven by an independent rclpy peer
//! (`tests/peers/vehicle_peer.py`) that generates sensor data with its own sensor models and
//! checks what comes back against the truth. Each test has its own ROS domain, namespace
//! and Zenoh port; every process is ended when the test ends, passing or not.
#![cfg(feature = "ros")]

use std::time::Duration;

use serde_json::Value;
use twinlink_launch::vehicle::{save_key, VehicleRun};
use twinlink_link::minimal::{from_link, ros_time, to_link, STREAM_RECOMMENDATION};
use twinlink_link::scenario::pair_configs;
use twinlink_link::{Link, LinkEvent, Priority, VehicleId};
use twinlink_msgs::twin_msgs::msg::{
    HorizonPoint, PerceptionSummary, Recommendation, SharingPolicy, VehicleState,
};

const PEER_TIMEOUT: Duration = Duration::from_secs(90);

fn frames(report: &Value) -> &Vec<Value> {
    report["frames"].as_array().expect("frames")
}

#[test]
fn lidar_summaries_place_every_object_within_30_cm_and_invent_none() {
    let run = VehicleRun::new("lidar").unwrap();
    let _node = run
        .spawn_node("lidar_summarizer", &[("mount_z", "1.8".into())])
        .unwrap();
    let report = run
        .run_peer("lidar", &["--frames", "8"], PEER_TIMEOUT)
        .unwrap();
    let log = run.log("lidar_summarizer");
    assert!(report["received"].as_u64().unwrap() >= 6, "{report}\n{log}");
    for frame in frames(&report) {
        assert_eq!(
            frame["phantoms"].as_array().unwrap().len(),
            0,
            "phantom objects: {frame}"
        );
        assert_eq!(
            frame["missed"].as_array().unwrap().len(),
            0,
            "missed objects: {frame}"
        );
        assert!(frame["max_error_m"].as_f64().unwrap() <= 0.3, "{frame}");
        assert_eq!(frame["class_errors"], 0, "{frame}");
        assert_eq!(frame["frame_id"], "base_link");
        assert!(frame["raw_bytes"].as_u64().unwrap() > 100_000, "{frame}");
    }
}

#[test]
fn radar_targets_carry_velocity_over_ground_in_both_layouts() {
    let run = VehicleRun::new("radar").unwrap();
    let _node = run.spawn_node("radar_summarizer", &[]).unwrap();
    let report = run
        .run_peer("radar", &["--frames", "8"], PEER_TIMEOUT)
        .unwrap();
    let log = run.log("radar_summarizer");
    let frames = frames(&report);
    assert!(frames.len() >= 6, "{report}\n{log}");
    for layout in ["carla", "plain"] {
        assert!(
            frames.iter().any(|f| f["layout"] == layout),
            "no {layout} frame: {report}"
        );
    }
    for frame in frames {
        assert_eq!(frame["phantoms"], 0, "{frame}");
        assert_eq!(frame["missed"], 0, "{frame}");
        assert_eq!(frame["has_velocity"], true, "{frame}");
        for e in frame["velocity_errors_mps"].as_array().unwrap() {
            assert!(
                e.as_f64().unwrap() < 0.5,
                "velocity over ground off: {frame}"
            );
        }
        for e in frame["position_errors_m"].as_array().unwrap() {
            // Radar reflections lie on the target's face towards the sensor.
            assert!(e.as_f64().unwrap() < 1.5, "{frame}");
        }
    }
}

#[test]
fn malformed_clouds_are_counted_and_the_node_keeps_summarizing() {
    let run = VehicleRun::new("bad_cloud").unwrap();
    let mut node = run
        .spawn_node(
            "lidar_summarizer",
            &[("mount_z", "1.8".into()), ("max_points", "10000".into())],
        )
        .unwrap();
    let report = run
        .run_peer("bad_input", &["--oversized", "12000"], PEER_TIMEOUT)
        .unwrap();
    let log = run.log("lidar_summarizer");
    assert!(
        node.wait_timeout(Duration::ZERO).unwrap().is_none(),
        "the node died:\n{log}"
    );
    // After five refused clouds, the NaN-only and empty clouds give empty summaries and the
    // good cloud its two cars.
    assert_eq!(report["objects_after_bad_input"], 2, "{report}\n{log}");
    assert!(report["empty_summaries"].as_u64().unwrap() >= 2, "{report}");
    let diagnostics = &report["diagnostics"];
    for reason in report["sent_bad"].as_array().unwrap() {
        let key = format!("refused_{}", reason.as_str().unwrap());
        assert_eq!(
            diagnostics[&key], "1",
            "{key} not counted: {diagnostics}\n{log}"
        );
        assert!(
            log.contains(reason.as_str().unwrap()),
            "no warning names {reason}:\n{log}"
        );
    }
    assert_eq!(diagnostics["refused_total"], "5", "{diagnostics}");
}

#[test]
fn a_node_with_an_invalid_parameter_says_which_and_exits() {
    let run = VehicleRun::new("bad_param").unwrap();
    let mut node = run
        .spawn_node(
            "radar_summarizer",
            &[
                ("cluster_distance", "-1.0".into()),
                ("velocity_convention", "sideways".into()),
            ],
        )
        .unwrap();
    let status = node.wait_timeout(Duration::from_secs(20)).unwrap();
    let log = run.log("radar_summarizer");
    assert!(status.is_some_and(|s| !s.success()), "{log}");
    assert!(
        log.contains("parameter 'cluster_distance': -1 is outside the range [0.1, 10]"),
        "{log}"
    );
    assert!(
        log.contains(
            "parameter 'velocity_convention': \"sideways\" is not one of range_rate, approach"
        ),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odometry_and_summaries_reach_the_twin_and_its_advice_reaches_ros() {
    let run = VehicleRun::new("link").unwrap();
    let (pe, dr) = pair_configs("linknode").unwrap();
    let vehicle = pe.material.vehicle.clone();
    let key = save_key(&run.dir, "pe.key", &pe.material).unwrap();
    let mut dr_end = Link::open(dr).await.unwrap();
    let _node = run
        .spawn_node(
            "twin_link_node",
            &[
                ("vehicle_id", vehicle.to_string()),
                ("key_file", key.display().to_string()),
                ("zenoh_connect", pe.zenoh.connect[0].clone()),
                ("status_period", "0.2".into()),
                // Every state and object passes through as it came (dead reckoning off), so
                // what arrives can be compared with what the peer published; the
                // simulation's end-to-end test runs the node with it on.
                ("state_inclusion", "false".into()),
                ("object_inclusion", "false".into()),
            ],
        )
        .unwrap();
    let peer_run = std::sync::Arc::new(run);
    let peer = {
        let run = peer_run.clone();
        tokio::task::spawn_blocking(move || run.run_peer("link", &["--seconds", "4"], PEER_TIMEOUT))
    };

    // The DR end: check what arrives, answer the first summary with a known recommendation.
    let mut states = Vec::new();
    let mut summaries = Vec::new();
    let mut answered = false;
    let mut policies = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // Until the peer is done, and one more second for what it caused last.
    let mut drain_until: Option<tokio::time::Instant> = None;
    while drain_until.is_none_or(|t| tokio::time::Instant::now() < t)
        && tokio::time::Instant::now() < deadline
    {
        if peer.is_finished() && drain_until.is_none() {
            drain_until = Some(tokio::time::Instant::now() + Duration::from_secs(1));
        }
        let event = tokio::time::timeout(Duration::from_millis(200), dr_end.recv()).await;
        let Ok(Some(LinkEvent::Message(delivered))) = event else {
            continue;
        };
        let m = &delivered.message;
        match m.type_name.as_str() {
            "twin_msgs/msg/VehicleState" => states.push(from_link::<VehicleState>(m).unwrap()),
            "twin_msgs/msg/PerceptionSummary" => {
                assert_eq!(m.stream, "objects/lidar_top");
                summaries.push(from_link::<PerceptionSummary>(m).unwrap());
                if !answered {
                    answered = true;
                    dr_end
                        .send(to_link(
                            STREAM_RECOMMENDATION,
                            Priority::OwnState,
                            &advice(&vehicle),
                            1,
                        ))
                        .unwrap();
                }
            }
            "twin_msgs/msg/SharingPolicy" => {
                assert_eq!(m.stream, "policy");
                policies.push(from_link::<SharingPolicy>(m).unwrap());
            }
            other => panic!("unexpected {other} on {}", m.stream),
        }
    }
    let report = peer.await.unwrap().unwrap();
    let log = peer_run.log("twin_link_node");
    assert!(states.len() >= 20, "{} states\n{log}", states.len());
    let last = states.last().unwrap();
    assert_eq!(last.vehicle_id, vehicle.to_string());
    assert_eq!(last.twist.linear.x, 21.5);
    assert_eq!(last.pose.position.y, -2.0);
    assert!(last.pose.position.x >= 100.0);
    assert!(
        summaries.len() >= 20,
        "{} summaries\n{log}",
        summaries.len()
    );
    let s = summaries.last().unwrap();
    assert_eq!(s.objects.len(), 3);
    assert_eq!(s.objects[2].position.x, 40.0);
    assert_eq!(s.sensor_id, "lidar_top");

    let expected = advice(&vehicle);
    let got = &report["last"];
    assert_eq!(got["vehicle_id"], vehicle.to_string(), "{report}\n{log}");
    assert_eq!(got["sequence"], expected.sequence);
    assert_eq!(got["target_speed"].as_f64(), Some(expected.target_speed));
    assert_eq!(got["target_lane"], expected.target_lane);
    assert_eq!(got["lane_change"], expected.lane_change);
    assert_eq!(got["reason_code"], expected.reason_code);
    assert_eq!(got["reason"], expected.reason);
    let horizon: Vec<Vec<f64>> = serde_json::from_value(got["horizon"].clone()).unwrap();
    assert_eq!(
        horizon,
        vec![
            vec![1.0, 20.0, 2.0],
            vec![2.0, 18.5, 2.0],
            vec![4.0, 17.25, 1.0]
        ]
    );
    assert_eq!(report["status"]["link_state"], 2, "CONNECTED: {report}");
    assert!(
        report["status"]["uplink_bytes"].as_u64().unwrap() > 10_000,
        "{report}"
    );
    dr_end.close().await;
}

fn advice(vehicle: &VehicleId) -> Recommendation {
    Recommendation {
        header: twinlink_msgs::std_msgs::msg::Header {
            stamp: ros_time(1_800_000_000_000_000),
            frame_id: "map".into(),
        },
        vehicle_id: vehicle.to_string(),
        sequence: 4242,
        target_speed: 17.25,
        target_lane: 1,
        lane_change: Recommendation::LANE_CHANGE_RIGHT,
        confidence: 0.75,
        valid_until: ros_time(1_800_000_010_000_000),
        reason_code: Recommendation::REASON_HAZARD_AHEAD,
        reason: "stalled vehicle 850 m ahead in lane 2".into(),
        horizon: vec![
            HorizonPoint {
                time_offset: 1.0,
                speed: 20.0,
                lane_index: 2,
            },
            HorizonPoint {
                time_offset: 2.0,
                speed: 18.5,
                lane_index: 2,
            },
            HorizonPoint {
                time_offset: 4.0,
                speed: 17.25,
                lane_index: 1,
            },
        ],
    }
}

fn detector_model() -> String {
    twinlink_launch::workspace_root()
        .join("models/camera_detector/detector.onnx")
        .display()
        .to_string()
}

#[test]
fn camera_objects_land_on_the_road_where_the_scene_put_them() {
    let run = VehicleRun::new("camera").unwrap();
    let _node = run
        .spawn_node("camera_summarizer", &[("model_path", detector_model())])
        .unwrap();
    let report = run
        .run_peer("camera", &["--frames", "6"], PEER_TIMEOUT)
        .unwrap();
    let log = run.log("camera_summarizer");
    let frames = frames(&report);
    assert!(frames.len() >= 5, "{report}\n{log}");
    let (mut found, mut truth, mut phantoms, mut class_ok, mut within) = (0, 0, 0, 0, 0);
    for frame in frames {
        truth += frame["truth"].as_u64().unwrap();
        phantoms += frame["phantoms"].as_u64().unwrap();
        for e in frame["errors"].as_array().unwrap() {
            found += 1;
            class_ok += e["class_ok"].as_bool().unwrap() as u64;
            // A 320 x 180 camera 1.4 m above the road: one pixel at the bottom edge is
            // range^2 / (200 px * 1.4 m) of range, 1.4 m at 20 m. Bound: that pixel, plus 10 %
            // of range and 1 m for the difference between true and typical object length.
            let range = e["range_m"].as_f64().unwrap();
            let bound = 1.0 + 0.1 * range + range * range / 280.0;
            within += (e["error_m"].as_f64().unwrap() <= bound) as u64;
        }
    }
    // A learned detector has outliers: nine in ten placed within the bound, none farther
    // than the 6 m matching gate (farther ones count as a phantom and a miss).
    assert!(
        within as f64 >= 0.9 * found as f64,
        "{within} of {found} within the bound: {report}"
    );
    assert!(
        found as f64 >= 0.85 * truth as f64,
        "found {found} of {truth}: {report}"
    );
    assert!(phantoms <= 1, "{phantoms} phantom objects: {report}");
    assert!(
        class_ok as f64 >= 0.85 * found as f64,
        "{class_ok} of {found} classes right: {report}"
    );
}

#[test]
fn camera_without_model_or_calibration_counts_and_keeps_running() {
    let run = VehicleRun::new("bad_camera").unwrap();
    let mut node = run
        .spawn_node(
            "camera_summarizer",
            &[("model_path", "/nonexistent/detector.onnx".into())],
        )
        .unwrap();
    let report = run.run_peer("bad_camera", &[], PEER_TIMEOUT).unwrap();
    let log = run.log("camera_summarizer");
    assert!(
        node.wait_timeout(Duration::ZERO).unwrap().is_none(),
        "the node died:\n{log}"
    );
    let d = &report["diagnostics"];
    assert_eq!(d["refused_no_camera_info"], "1", "{d}\n{log}");
    assert_eq!(d["refused_unsupported_encoding"], "1", "{d}\n{log}");
    assert_eq!(d["refused_model_missing"], "1", "{d}\n{log}");
    assert!(log.contains("/nonexistent/detector.onnx"), "{log}");
    assert!(log.contains("yuv422"), "{log}");
}
