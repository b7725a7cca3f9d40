//! twinlink's r2r node and an independent rclpy node exchange every twinlink message type
//! both ways over real DDS. The r2r side decodes what rclpy sent with twinlink's codec and
//! with rcl and compares the bytes with twinlink's encoding; the rclpy side compares every
//! field of what r2r sent. Each run has its own ROS domain and namespace.
#![cfg(feature = "ros")]

use std::time::Duration;
use twinlink_launch::interop::{random_fixture, run_exchange};

fn work_dir(name: &str) -> std::path::PathBuf {
    let dir = twinlink_launch::workspace_root()
        .join("target/e2e")
        .join(format!("{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn every_message_type_crosses_both_ways_with_fields_intact() {
    let fixture = random_fixture(41, 3, "");
    let outcome = run_exchange(&fixture, &work_dir("all_types"), Duration::from_secs(60)).unwrap();
    assert!(
        outcome.all_matched(),
        "r2r side:\n{}{}\nrclpy side:\n{}{}",
        outcome.r2r.stdout,
        outcome.r2r.stderr,
        outcome.rclpy.stdout,
        outcome.rclpy.stderr
    );
    let received =
        outcome.r2r.report["types"]["twin_msgs/msg/PerceptionSummary"]["matched"].as_u64();
    assert_eq!(received, Some(3));
}

#[test]
fn a_changed_field_on_one_side_is_detected() {
    // Hand the rclpy side a fixture in which one field differs from what r2r publishes:
    // the rclpy side must report the mismatch, naming the field.
    let fixture = random_fixture(42, 1, "twin_msgs/msg/Recommendation");
    let dir = work_dir("changed_field");
    std::fs::create_dir_all(&dir).unwrap();
    let mut altered = fixture.clone();
    let value = &mut altered["types"]["twin_msgs/msg/Recommendation"][0]["target_speed"];
    *value = serde_json::json!(value.as_f64().unwrap() + 1.0);
    let outcome = twinlink_launch::interop::run_exchange_with_peer_fixture(
        &fixture,
        &altered,
        &dir,
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(!outcome.all_matched());
    assert!(
        outcome.rclpy.stderr.contains("target_speed"),
        "{}",
        outcome.rclpy.stderr
    );
    assert!(
        outcome.r2r.stderr.contains("Recommendation"),
        "{}",
        outcome.r2r.stderr
    );
}
