//! The regional cloud service: turns the census that twins contribute into k-anonymous
//! regional traffic per map tile, and serves it by name over Zenoh. Runs without ROS.
//!
//! Twins put `twin_msgs/CensusReport`s (one sample of their vehicle: segment, lane,
//! position, speed, plus known incidents, under a per-window pseudonym) on
//! `twinlink/v1/census/<tile>`. At the end of each aggregation window the service puts,
//! for every tile that at least k distinct contributors reported in, a
//! `twin_msgs/RegionalTraffic` on `twinlink/v1/region/<tile>/traffic`, which DR hosts
//! read; tiles below k never leave the service.
//!
//! Layers (only [`service`] and [`http`] do I/O):
//!
//! - [`census`]: the contract with twins: epoch-aligned windows, contributor tokens, times.
//! - [`denm`]: road-side units' DENMs (C-ITS, UPER) as outside incidents of their tile.
//! - [`refusal`]: why an input was refused; rate-limited logging of refusals.
//! - [`aggregate`]: validation and k-anonymous aggregation (space-mean speed, density,
//!   flow per lane stretch; incidents merged by id), pure and tested without Zenoh.
//! - [`metrics`], [`http`]: Prometheus metrics and their endpoint.
//! - [`service`]: the aggregator on a Zenoh session: subscriber, puts and queryables.
//!
//! ```
//! use std::time::Duration;
//! use twin_region_service::aggregate::{Aggregator, AggregatorConfig, TileOutcome};
//! use twin_region_service::census::{contributor_token, ros_time};
//! use twinlink_link::keys::RegionTile;
//! use twinlink_msgs::std_msgs::msg::Header;
//! use twinlink_msgs::twin_msgs::msg::CensusReport;
//!
//! let window = 30_000_000; // 30 s in µs
//! let start = 1_700_000_010 / 30 * window; // a window start (µs since the epoch)
//! let mut agg = Aggregator::new(AggregatorConfig::default(), start).unwrap();
//! let tile = RegionTile::new("t_12_34").unwrap();
//! for twin in 0..10u8 {
//!     let report = CensusReport {
//!         header: Header { stamp: ros_time(start + 5_000_000), frame_id: "map".into() },
//!         tile_id: tile.as_str().into(),
//!         contributor: contributor_token(&[twin; 32], start / window),
//!         window_start: ros_time(start),
//!         segment_id: "a7-north".into(),
//!         lane_index: 1,
//!         s: 120.0,
//!         speed: 22.0,
//!         incidents: vec![],
//!     };
//!     agg.contribute(&tile, &report, start + 6_000_000).unwrap();
//! }
//! let closed = agg.close_due(start + window + 1_000_000);
//! let TileOutcome::Published(tile) = &closed[0].tiles[0] else { panic!("below k") };
//! assert_eq!(tile.traffic.contributors, 10);
//! assert_eq!(tile.traffic.lanes[0].mean_speed, 22.0);
//! ```

#![warn(missing_docs)]

pub mod aggregate;
pub mod denm;
pub use twinlink_share::census;
pub mod http;
pub mod metrics;
pub mod refusal;
pub mod service;
