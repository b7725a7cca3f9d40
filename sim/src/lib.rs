//! twinlink's simulator: the world that vehicles and their twins are tried in, since a real
//! road (or CARLA and Gazebo) is not always at hand.
//!
//! - [`scenario`]: what a run contains (road, traffic, hazards, bottlenecks, coverage), read
//!   from YAML and validated with errors that name the field.
//! - [`traffic`]: the drivers, IDM for speed and MOBIL for lane choice (the simulator's own
//!   implementations, independent of the twin's planner).
//! - [`world`]: vehicles on a multi-lane highway stepped on a virtual clock, deterministic
//!   for a seed, counting collisions, hard brakes, time-to-collision and throughput.
//! - [`sensors`]: object-level LiDAR, radar and camera models with occlusion and noise,
//!   giving the `twin_msgs/PerceptionSummary` and `VehicleState` a connected vehicle sends.
//! - [`fast`]: fast mode, the world with every connected vehicle's link path and twin (the
//!   link's and the DR host's own code) in one process on the virtual clock.
//!
//! - [`realtime`]: real-time mode's simulator side: the world on the wall clock and the raw
//!   sensor data (LiDAR and radar point clouds, odometry, camera detections) of the vehicles
//!   that real ROS 2 nodes drive; their twins' advice applied to their drivers.
//!
//! - [`report`], [`plots`], [`recording`]: the demo's comparison (table, `report.json`),
//!   its PNG plots and its MCAP recording.
//!
//! Coverage along the road ([`scenario::CoverageSpec::at`]) gives the link quality a
//! connected vehicle has where it is, for the link's fault layer to apply.

pub mod fast;
pub mod plots;
pub mod realtime;
pub mod recording;
pub mod report;
pub mod scenario;
pub mod sensors;
pub mod traffic;
pub mod world;

pub use scenario::{Scenario, ScenarioError};
pub use world::{Vehicle, World, WorldStats};
