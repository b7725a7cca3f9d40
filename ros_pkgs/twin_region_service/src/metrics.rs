//! The service's Prometheus metrics (OpenMetrics text, served at `/metrics`).
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `twinlink_region_contributions_accepted_total` | counter | | census reports accepted |
//! | `twinlink_region_contributions_refused_total` | counter | `reason` | census reports refused, by reason (every reason present from the start) |
//! | `twinlink_region_windows_closed_total` | counter | | aggregation windows closed |
//! | `twinlink_region_tiles_published_total` | counter | | traffic tiles published (at least k contributors) |
//! | `twinlink_region_tiles_withheld_total` | counter | | tiles with census but fewer than k contributors, not published |
//! | `twinlink_region_stretches_withheld_total` | counter | `reason` | lane stretches left out of published tiles: `sparse`, `implausible` |
//! | `twinlink_region_hazard_tiles_published_total` | counter | | hazards tiles published (outside incidents) |
//! | `twinlink_region_incidents_added_total` | counter | `source` | outside incidents taken (`rsu`, `operator`) |
//! | `twinlink_region_incidents_refused_total` | counter | `reason` | outside incidents refused, by reason |
//! | `twinlink_region_queries_answered_total` | counter | | replies sent to queries for tiles |
//! | `twinlink_region_publish_errors_total` | counter | | tiles that could not be encoded or put |

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::refusal::RefusalReason;

/// Labels of a metric family: one (name, value) pair.
pub type Labels = Vec<(&'static str, String)>;

/// Every metric of the service.
pub struct RegionMetrics {
    registry: Registry,
    /// Census reports accepted.
    pub accepted: Counter,
    /// Census reports refused, by reason.
    pub refused: Family<Labels, Counter>,
    /// Windows closed.
    pub windows_closed: Counter,
    /// Traffic tiles published.
    pub tiles_published: Counter,
    /// Tiles withheld below k.
    pub tiles_withheld: Counter,
    /// Lane stretches left out, by reason.
    pub stretches_withheld: Family<Labels, Counter>,
    /// Hazards tiles published.
    pub hazard_tiles_published: Counter,
    /// Outside incidents taken, by source.
    pub incidents_added: Family<Labels, Counter>,
    /// Outside incidents refused, by reason.
    pub incidents_refused: Family<Labels, Counter>,
    /// Query replies sent.
    pub queries_answered: Counter,
    /// Tiles that could not be encoded or put.
    pub publish_errors: Counter,
}

impl RegionMetrics {
    /// Registers every metric (every refusal reason at 0).
    pub fn new() -> Arc<RegionMetrics> {
        let mut registry = Registry::with_prefix("twinlink_region");
        let m = RegionMetrics {
            accepted: Counter::default(),
            refused: Family::default(),
            windows_closed: Counter::default(),
            tiles_published: Counter::default(),
            tiles_withheld: Counter::default(),
            stretches_withheld: Family::default(),
            hazard_tiles_published: Counter::default(),
            incidents_added: Family::default(),
            incidents_refused: Family::default(),
            queries_answered: Counter::default(),
            publish_errors: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "contributions_accepted",
            "Census reports accepted",
            m.accepted.clone(),
        );
        registry.register(
            "contributions_refused",
            "Census reports refused, by reason",
            m.refused.clone(),
        );
        registry.register(
            "windows_closed",
            "Aggregation windows closed",
            m.windows_closed.clone(),
        );
        registry.register(
            "tiles_published",
            "Traffic tiles published (at least k contributors)",
            m.tiles_published.clone(),
        );
        registry.register(
            "tiles_withheld",
            "Tiles with census but fewer than k contributors, not published",
            m.tiles_withheld.clone(),
        );
        registry.register(
            "stretches_withheld",
            "Lane stretches left out of published tiles, by reason",
            m.stretches_withheld.clone(),
        );
        registry.register(
            "hazard_tiles_published",
            "Hazards tiles published (incidents from outside the census)",
            m.hazard_tiles_published.clone(),
        );
        registry.register(
            "incidents_added",
            "Incidents from outside the census taken, by source",
            m.incidents_added.clone(),
        );
        registry.register(
            "incidents_refused",
            "Incidents from outside the census refused, by reason",
            m.incidents_refused.clone(),
        );
        registry.register(
            "queries_answered",
            "Replies sent to queries for tiles",
            m.queries_answered.clone(),
        );
        registry.register(
            "publish_errors",
            "Tiles that could not be encoded or put",
            m.publish_errors.clone(),
        );
        for reason in RefusalReason::ALL {
            let _ = m
                .refused
                .get_or_create(&vec![("reason", reason.as_str().to_string())]);
        }
        Arc::new(RegionMetrics { registry, ..m })
    }

    /// Counts a refused contribution.
    pub fn refuse(&self, reason: RefusalReason) {
        self.refused
            .get_or_create(&vec![("reason", reason.as_str().to_string())])
            .inc();
    }

    /// Counts `n` lane stretches left out for `reason`.
    pub fn stretches(&self, reason: &str, n: u32) {
        if n > 0 {
            self.stretches_withheld
                .get_or_create(&vec![("reason", reason.to_string())])
                .inc_by(u64::from(n));
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String does not fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_labels() {
        let m = RegionMetrics::new();
        m.accepted.inc();
        m.refuse(RefusalReason::Undecodable);
        m.refuse(RefusalReason::Undecodable);
        m.stretches("sparse", 3);
        m.stretches("implausible", 0);
        m.tiles_withheld.inc();
        let text = m.render();
        assert!(
            text.contains("twinlink_region_contributions_accepted_total 1"),
            "{text}"
        );
        assert!(
            text.contains("twinlink_region_contributions_refused_total{reason=\"undecodable\"} 2")
        );
        assert!(text
            .contains("twinlink_region_contributions_refused_total{reason=\"window_too_old\"} 0"));
        assert!(text.contains("twinlink_region_stretches_withheld_total{reason=\"sparse\"} 3"));
        assert!(!text.contains("implausible"));
        assert!(text.contains("twinlink_region_tiles_withheld_total 1"));
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
