//! The intra-twin link: private, loss-free, two-way synchronization between a vehicle (the
//! physical entity, PE) and its twin (the digital representative, DR) over Zenoh.
//!
//! Layers, bottom up (each is plain Rust with its own tests; only [`link`] does I/O):
//!
//! - [`keys`]: every Zenoh key expression, defined once.
//! - [`crypto`]: key material, Noise `KK` sessions, sealed frames, replay windows.
//! - [`protocol`]: what a sealed frame carries.
//! - [`sync`]: outbox with priorities and coalescing, sequence numbers, acknowledgements,
//!   retransmission, in-order exactly-once delivery.
//! - [`fault`]: drop, duplicate, reorder, delay, cut and throttle, for tests and demos.
//! - [`radio`]: link quality by position (a coverage map) applied to a link end's fault
//!   layers both ways, so the real link crosses simulated coverage.
//! - [`link`]: a link end on a Zenoh session, with presence and key rotation.
//! - [`hub`]: one set of wildcard declarations for the many link ends of a host.

pub mod bandwidth;
pub mod cli;
pub mod crypto;
pub mod fault;
pub mod hub;
pub mod inclusion;
pub mod keys;
pub mod link;
pub mod minimal;
pub mod protocol;
pub mod radio;
pub mod rate;
pub mod scenario;
pub mod sync;

pub use crypto::{KeyMaterial, Rejection};
pub use fault::{FaultControl, FaultPlan};
pub use hub::LinkHub;
pub use keys::{Role, TwinKeys, VehicleId};
pub use link::{Link, LinkConfig, LinkEnd, LinkEvent, LinkStats, ZenohSettings};
pub use sync::{Delivered, Message, Priority, PushOutcome};
