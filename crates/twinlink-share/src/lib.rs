//! Inter-twin sharing: consent policies, named data, coarsening, pseudonymous signed
//! disclosures. Pure Rust: no ROS, no Zenoh; the transport wiring lives elsewhere.
//!
//! A digital twin (DR) uses it in three ways:
//!
//! - **Publish** what its vehicle permits under names: [`Discloser::disclose`] asks the
//!   vehicle's [`Consent`] ([`policy`]), coarsens the observation ([`coarsen`](mod@coarsen)) and seals it
//!   with the twin's current pseudonym ([`identity`], [`disclosure`]); the result goes out
//!   under `"<category>/<tile>"` ([`tile::DataName`]).
//! - **Answer queries** from other twins: [`Verifier::verify_query`] says who asks (same
//!   fleet or another), and the same `disclose` applies the consent for that audience.
//! - **Receive** disclosures: [`Verifier::verify`] checks the envelope, the certificate chain,
//!   the signature, freshness and replays, and says which fleet the sender belongs to.
//!
//! To find sources on its vehicle's route ahead, a twin names the tiles the route passes
//! through ([`TileGrid::tiles_along`]) and asks for each.
//!
//! The credentials' files (fleet authority, trust anchor, a host's issuer) are read and
//! written by [`keyfile`]. What a twin contributes to the regional service's census (its
//! per-window contributor token, the windows) is in [`census`].
//!
//! Every `now_us` is microseconds since the Unix epoch ([`time`]).
//!
//! ```
//! use twinlink_share::*;
//! use twinlink_msgs::twin_msgs::msg::{Incident, SharedObservation, SharingRule};
//!
//! let now = 1_700_000_000_000_000; // µs since the epoch
//! // The operator certifies a DR host's issuer key for a day.
//! let authority = FleetAuthority::new("fleet-a", KeyPair::generate()).unwrap();
//! let host_key = KeyPair::generate();
//! let cert = authority.certify(host_key.public_key(), now, now + 86_400_000_000).unwrap();
//! let issuer = PseudonymIssuer::new(host_key, cert).unwrap();
//!
//! // The vehicle lets its twin share hazards with any twin, to 50 m, up to 60 s old.
//! let mut consent = Consent::new();
//! consent.grant(SharingRule {
//!     category: SharedObservation::CATEGORY_HAZARDS,
//!     audience: SharingRule::AUDIENCE_ANY_TWIN,
//!     spatial_precision: 50.0,
//!     max_age: 60.0,
//!     ..Default::default()
//! }, now).unwrap();
//! let rotation = Rotation::new(RotationConfig::default()).unwrap();
//! let mut discloser = Discloser::new(consent, rotation, TileGrid::default());
//!
//! let mut hazard = SharedObservation {
//!     category: SharedObservation::CATEGORY_HAZARDS,
//!     ..Default::default()
//! };
//! hazard.header.frame_id = "map".into();
//! hazard.header.stamp = time::ros_time(now - 2_000_000);
//! hazard.hazards.push(Incident { incident_id: "debris-1".into(), ..Default::default() });
//! let disclosure = discloser.disclose(&issuer, &hazard, Audience::Unknown, now).unwrap();
//! let name = format!("hazards/{}", disclosure.observation.region_tile); // publish under it
//! let bytes = disclosure.to_bytes().unwrap();
//!
//! // Another twin of the fleet receives and verifies it.
//! let mut verifier =
//!     Verifier::new("fleet-a", authority.public_key(), VerifierConfig::default()).unwrap();
//! let verified = verifier.verify(&bytes, now + 100_000).unwrap();
//! assert_eq!(verified.audience, Audience::SameFleet);
//! assert_eq!(name, "hazards/0_0");
//! assert_eq!(verifier.verify(&bytes, now + 200_000).unwrap_err().as_str(), "replayed");
//! ```

#![warn(missing_docs)]

pub mod census;
pub mod coarsen;
pub mod disclosure;
pub mod document;
pub mod identity;
pub mod keyfile;
pub mod policy;
pub mod tile;
pub mod time;

pub use coarsen::{coarsen, CoarsenError, PeriodKey};
pub use disclosure::{
    seal, DiscloseError, Discloser, Disclosure, EnvelopeError, Origin, Query, Rejection,
    ReplayGuard, SignedQuery, Verified, Verifier, VerifierConfig,
};
pub use document::{PolicyDocument, RuleDocument};
pub use identity::{
    CertificateChain, FleetAuthority, IdentityError, IssuerCertificate, KeyPair,
    PseudonymCertificate, PseudonymCredential, PseudonymIssuer, PublicKey, Rotation,
    RotationConfig, Signature,
};
pub use policy::{
    Audience, Consent, Decision, DenyReason, DisclosureRequest, PolicyError, PolicyProblem,
};
pub use tile::{category_name, parse_category, Category, DataName, TileGrid, TileName};
