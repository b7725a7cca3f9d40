//! The algorithms of twinlink's vehicle-side ROS 2 nodes, without ROS.
//!
//! Each node under `ros_pkgs/` is a thin r2r layer over one module here:
//!
//! | node | module |
//! |---|---|
//! | `twin_lidar_summarizer` | [`lidar`] |
//! | `twin_radar_summarizer` | [`radar`] |
//! | `twin_link_node` | [`uplink`], [`inclusion`] |
//!
//! Shared: [`cloud`] reads PointCloud2 by its field descriptions, [`geometry`] holds sensor
//! mountings, [`params`] declares and validates node parameters, [`markers`] draws debug
//! MarkerArrays, and [`synth`] makes sensor data with known truth for tests and benchmarks.

pub mod camera;
pub mod cloud;
pub mod geometry;
pub mod identity;
pub mod inclusion;
pub mod lidar;
pub mod markers;
pub mod params;
pub mod radar;
pub mod synth;
pub mod uplink;
