//! The host's Prometheus metrics (OpenMetrics text, served at `/metrics`).
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `twinlink_dr_provisioned` | gauge | | twins hosted (key files found) |
//! | `twinlink_dr_active` | gauge | | twins whose vehicle is connected (link open) |
//! | `twinlink_dr_messages_total` | counter | `type` | messages applied, by ROS type |
//! | `twinlink_dr_recommendations_total` | counter | | recommendations sent |
//! | `twinlink_dr_rejected_total` | counter | `reason` | inputs refused, by reason |
//! | `twinlink_dr_latency_seconds` | histogram | | summary received → recommendation handed to the link |
//! | `twinlink_dr_panics_total` | counter | | twins whose task panicked (each restarted alone) |
//! | `twinlink_dr_activations_total` | counter | | twins woken by their vehicle |
//! | `twinlink_dr_store_commits_total` | counter | `result` | durable-store transactions |
//! | `twinlink_dr_store_commit_seconds` | histogram | | duration of a commit (fsync included) |
//! | `twinlink_dr_store_batch_messages` | histogram | | messages per commit |
//! | `twinlink_dr_regional_tiles_total` | counter | `result` | regional tiles: `received`, `undecodable`, `name_mismatch`, `bad_key`, `rate_limited`, `overflow` |
//! | `twinlink_dr_disclosures_total` | counter | `result` | hazards offered for disclosure: `disclosed` or the consent's reason for not (`no_rule`, `grant_expired`, `revoked`, `audience_unknown`, ...) |
//! | `twinlink_dr_relay_received_total` | counter | `result` | other twins' disclosures received: `verified` or why refused (`bad_signature`, `unsigned`, `replayed`, `unknown_authority`, `name_mismatch`, `rate_limited`, ...) |
//! | `twinlink_dr_relay_ignored_total` | counter | `reason` | verified disclosures a twin did not take (`fetch_not_allowed`, `own`, `off_route`, ...) |
//! | `twinlink_dr_relay_delivered_total` | counter | | relayed observations sent to a vehicle |
//! | `twinlink_dr_census_total` | counter | `result` | census samples: `sent`, or why not (`no_rule`, `revoked`, `stale_state`, `off_route`, ...) |
//! | `twinlink_dr_queries_received_total` | counter | `result` | other twins' queries for shared data: `verified` (passed to the twins that share) or why refused (`bad_signature`, `replayed`, `unknown_authority`, `name_mismatch`, `oversize`, `overflow`, `rate_limited`, `busy`, ...) |
//! | `twinlink_dr_queries_sent_total` | counter | `result` | the host's queries for hazards ahead of its fetching twins: `sent`, `failed`, `signing_failed` |
//! | `twinlink_dr_query_replies_total` | counter | `result` | replies to the host's queries: `received` (then verified like any disclosure), `error` |

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a metric family: one (name, value) pair.
pub type Labels = Vec<(&'static str, String)>;

/// Every metric of a host.
pub struct HostMetrics {
    registry: Registry,
    /// Twins hosted.
    pub provisioned: Gauge,
    /// Twins with an open link.
    pub active: Gauge,
    /// Messages applied, by type.
    pub messages: Family<Labels, Counter>,
    /// Recommendations sent.
    pub recommendations: Counter,
    /// Inputs refused, by reason.
    pub rejected: Family<Labels, Counter>,
    /// Summary in → recommendation out [s].
    pub latency: Histogram,
    /// Twin tasks that panicked.
    pub panics: Counter,
    /// Twins woken.
    pub activations: Counter,
    /// Store commits by result.
    pub commits: Family<Labels, Counter>,
    /// Commit duration [s].
    pub commit_seconds: Histogram,
    /// Messages per commit.
    pub batch_messages: Histogram,
    /// Regional tiles by result.
    pub regional: Family<Labels, Counter>,
    /// Hazards offered for disclosure, by result.
    pub disclosures: Family<Labels, Counter>,
    /// Other twins' disclosures received, by result.
    pub relay_received: Family<Labels, Counter>,
    /// Verified disclosures not taken by a twin, by reason.
    pub relay_ignored: Family<Labels, Counter>,
    /// Relayed observations sent to vehicles.
    pub relay_delivered: Counter,
    /// Census samples, by result.
    pub census: Family<Labels, Counter>,
    /// Shards of the fleet this host owns (fleet hosts only).
    pub owned_shards: Gauge,
    /// Shards gained, lost or given back (fleet hosts only), by change.
    pub ownership_changes: Family<Labels, Counter>,
    /// Other twins' queries received, by result.
    pub queries_received: Family<Labels, Counter>,
    /// The host's own queries, by result.
    pub queries_sent: Family<Labels, Counter>,
    /// Replies to the host's queries, by result.
    pub query_replies: Family<Labels, Counter>,
}

impl HostMetrics {
    /// Registers every metric.
    pub fn new() -> Arc<HostMetrics> {
        let mut registry = Registry::with_prefix("twinlink_dr");
        let m = HostMetrics {
            provisioned: Gauge::default(),
            active: Gauge::default(),
            messages: Family::default(),
            recommendations: Counter::default(),
            rejected: Family::default(),
            // 50 µs to ~3.3 s.
            latency: Histogram::new(exponential_buckets(50e-6, 2.0, 17)),
            panics: Counter::default(),
            activations: Counter::default(),
            commits: Family::default(),
            commit_seconds: Histogram::new(exponential_buckets(100e-6, 2.0, 14)),
            batch_messages: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            regional: Family::default(),
            disclosures: Family::default(),
            relay_received: Family::default(),
            relay_ignored: Family::default(),
            relay_delivered: Counter::default(),
            census: Family::default(),
            owned_shards: Gauge::default(),
            ownership_changes: Family::default(),
            queries_received: Family::default(),
            queries_sent: Family::default(),
            query_replies: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "provisioned",
            "Twins hosted (key files found)",
            m.provisioned.clone(),
        );
        registry.register(
            "owned_shards",
            "Shards of the fleet this host owns (a host of a fleet only)",
            m.owned_shards.clone(),
        );
        registry.register(
            "ownership_changes",
            "Shards gained, lost (the database session broke) or given back, by change",
            m.ownership_changes.clone(),
        );
        registry.register(
            "active",
            "Twins whose vehicle is connected",
            m.active.clone(),
        );
        registry.register(
            "messages",
            "Messages applied, by ROS type",
            m.messages.clone(),
        );
        registry.register(
            "recommendations",
            "Recommendations sent",
            m.recommendations.clone(),
        );
        registry.register("rejected", "Inputs refused, by reason", m.rejected.clone());
        registry.register(
            "latency_seconds",
            "Summary received to recommendation handed to the link",
            m.latency.clone(),
        );
        registry.register(
            "panics",
            "Twin tasks that panicked (restarted alone)",
            m.panics.clone(),
        );
        registry.register(
            "activations",
            "Twins woken by their vehicle",
            m.activations.clone(),
        );
        registry.register(
            "store_commits",
            "Durable-store transactions, by result",
            m.commits.clone(),
        );
        registry.register(
            "store_commit_seconds",
            "Duration of a durable-store commit (fsync included)",
            m.commit_seconds.clone(),
        );
        registry.register(
            "store_batch_messages",
            "Messages per durable-store commit",
            m.batch_messages.clone(),
        );
        registry.register(
            "regional_tiles",
            "Regional tiles received, by result",
            m.regional.clone(),
        );
        registry.register(
            "disclosures",
            "Hazards offered for disclosure: disclosed, or the consent's reason for not",
            m.disclosures.clone(),
        );
        registry.register(
            "relay_received",
            "Other twins' disclosures received: verified, or why refused",
            m.relay_received.clone(),
        );
        registry.register(
            "relay_ignored",
            "Verified disclosures a twin did not take, by reason",
            m.relay_ignored.clone(),
        );
        registry.register(
            "relay_delivered",
            "Relayed observations sent to vehicles",
            m.relay_delivered.clone(),
        );
        registry.register(
            "census",
            "Census samples: sent, or why not",
            m.census.clone(),
        );
        registry.register(
            "queries_received",
            "Other twins' queries for shared data: verified, or why refused",
            m.queries_received.clone(),
        );
        registry.register(
            "queries_sent",
            "Queries for hazards ahead of the host's fetching twins, by result",
            m.queries_sent.clone(),
        );
        registry.register(
            "query_replies",
            "Replies to the host's queries, by result",
            m.query_replies.clone(),
        );
        Arc::new(HostMetrics { registry, ..m })
    }

    /// Counts a refused input.
    pub fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    /// Counts an applied message of ROS type `type_name`.
    pub fn applied(&self, type_name: &str) {
        self.messages
            .get_or_create(&vec![("type", type_name.to_string())])
            .inc();
    }

    /// Counts `n` shards changing hands (`change`: gained, lost, released).
    pub fn count_ownership(&self, change: &str, n: usize) {
        self.ownership_changes
            .get_or_create(&vec![("change", change.to_string())])
            .inc_by(n as u64);
    }

    /// Counts `value` in the one-label `family` (label `label`).
    pub fn count(family: &Family<Labels, Counter>, label: &'static str, value: &str) {
        family
            .get_or_create(&vec![(label, value.to_string())])
            .inc();
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
        let m = HostMetrics::new();
        m.provisioned.set(3);
        m.reject("below_k");
        m.reject("below_k");
        m.applied("twin_msgs/msg/VehicleState");
        m.latency.observe(0.002);
        let text = m.render();
        assert!(text.contains("twinlink_dr_provisioned 3"), "{text}");
        assert!(
            text.contains("twinlink_dr_rejected_total{reason=\"below_k\"} 2"),
            "{text}"
        );
        assert!(text.contains("twinlink_dr_messages_total{type=\"twin_msgs/msg/VehicleState\"} 1"));
        assert!(text.contains("twinlink_dr_latency_seconds_count 1"));
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
