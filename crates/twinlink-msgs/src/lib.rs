//! twinlink's messages as plain Rust types, with a CDR codec that is byte-compatible with ROS 2.
//!
//! The types are generated at build time from the same `.msg`/`.srv` files that the ROS
//! interface package `twin_msgs` is built from (`msgs/twin_msgs`), plus the standard messages
//! twinlink exchanges (`msgs/ros_std`). Modules mirror r2r's layout, so code can move between
//! the ROS side and the ROS-free side by changing one `use`:
//!
//! ```
//! use twinlink_msgs::twin_msgs::msg::{DetectedObject, PerceptionSummary};
//! use twinlink_msgs::codec;
//!
//! let mut summary = PerceptionSummary {
//!     sensor_id: "lidar_top".into(),
//!     sensor_kind: PerceptionSummary::SENSOR_LIDAR,
//!     ..Default::default()
//! };
//! summary.objects.push(DetectedObject { id: 7, ..Default::default() });
//! let bytes = codec::encode(&summary).unwrap();
//! assert_eq!(&bytes[..4], &[0, 1, 0, 0]); // CDR, little endian
//! let back: PerceptionSummary = codec::decode(&bytes).unwrap();
//! assert_eq!(back, summary);
//! ```
//!
//! The wire format is ROS 2's: a 4-byte encapsulation header followed by OMG CDR (XCDR1),
//! with alignment counted from the end of the header. A test in `ros_pkgs/twin_ros_interop`
//! checks, for every message here, that these bytes equal what rcl serializes.

pub mod codec;
pub mod idl;
pub mod layout;
#[cfg(feature = "testing")]
pub mod testing;

include!(concat!(env!("OUT_DIR"), "/generated.rs"));

use std::fmt::Debug;

/// A ROS 2 message type with a CDR encoding.
pub trait Message:
    serde::Serialize
    + serde::de::DeserializeOwned
    + layout::CdrElement
    + Clone
    + Debug
    + PartialEq
    + Default
    + Send
    + Sync
    + 'static
{
    /// Full ROS type name, e.g. `twin_msgs/msg/VehicleState`.
    const TYPE_NAME: &'static str;

    /// Checks the length limits of bounded strings and sequences (`string<=N`, `T[<=N]`),
    /// which CDR itself does not carry.
    fn check_bounds(&self) -> Result<(), BoundError>;
}

/// A bounded string or sequence holds more than its definition allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{type_name}.{field}: length {len} exceeds the bound {max}")]
pub struct BoundError {
    /// Message type that declares the field.
    pub type_name: &'static str,
    /// Field name.
    pub field: &'static str,
    /// Actual length.
    pub len: usize,
    /// Declared maximum.
    pub max: usize,
}

impl BoundError {
    /// `Ok` if `len <= max`, else the error naming the field.
    pub fn check(
        type_name: &'static str,
        field: &'static str,
        len: usize,
        max: usize,
    ) -> Result<(), BoundError> {
        if len <= max {
            Ok(())
        } else {
            Err(BoundError {
                type_name,
                field,
                len,
                max,
            })
        }
    }
}
