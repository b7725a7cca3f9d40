//! The digital representative (DR) host: one DR per provisioned vehicle. Runs without ROS.
//!
//! Layers, bottom up (plain Rust with their own tests; only [`host`] and [`admin`] do
//! I/O):
//!
//! - [`tracker`]: the multi-object tracker that fuses the vehicle's LiDAR, radar and
//!   camera summaries in the map frame.
//! - [`ego`]: the estimate of the vehicle itself, predicted while it is offline.
//! - [`road`]: the lane-level road model along the vehicle's route (Frenet s/d, lanes).
//! - [`world`]: what the DR knows around its vehicle: tracks, regional traffic, incidents,
//!   in road coordinates.
//! - [`hazard_detect`]: stalled vehicles and debris learned from the vehicle's own tracks.
//! - [`planner`]: IDM speed and MOBIL lane choice with lookahead, the safety filter, and
//!   the recommendation with its horizon and reason.
//! - [`relay`]: what a twin discloses to other twins under its vehicle's consent, and
//!   what it takes from theirs.
//! - [`twin`]: one DR, tying the above together without I/O.
//! - [`store`]: durable state (embedded `redb`, or the fleet's shared database) with group
//!   commit.
//! - [`fleet`]: many hosts over one PostgreSQL database: shared state, which host owns
//!   which twins, failover.
//! - [`audit`]: the hash-chained, signed history of every exchange and disclosure.
//! - [`gate`]: rate limits in front of every outside input; the trust zone's outside session.
//! - [`metrics`], [`admin`]: Prometheus metrics, the operator endpoint and the fleet view.
//! - [`host`]: thousands of twins on one Zenoh session and tokio runtime.
//! - [`sequences`]: generated multi-sensor sequences with ground truth, for scoring the
//!   tracker.

pub mod admin;
pub mod audit;
pub mod ego;
pub mod fleet;
pub mod gate;
pub mod hazard_detect;
pub mod host;
pub mod metrics;
pub mod model;
pub mod planner;
pub mod relay;
pub mod road;
pub mod sequences;
pub mod store;
pub mod tracker;
pub mod twin;
pub mod world;
