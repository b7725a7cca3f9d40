//! The digital representative (DR) host: one DR per provisioned vehicle. Runs without ROS.
//!
//! Built so far: [`tracker`], the multi-object tracker that fuses the vehicle's LiDAR,
//! radar and camera summaries in the map frame.

pub mod tracker;
