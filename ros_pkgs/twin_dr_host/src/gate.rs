//! The gate in front of everything that reaches a host from outside its twins' links:
//! other twins' disclosures and queries, the regional service's tiles.
//!
//! Each kind of input has a rate limit per key expression (a tile's key, a query's key):
//! a flood on one key costs that key its excess and leaves the others alone, and the work
//! a flood can cause (decoding, signature checks) is bounded before it is done. What the
//! gate lets through is then checked as before (size, decoding, signatures and chains,
//! freshness, replay, field ranges); what is refused anywhere is counted by reason in the
//! host's metrics. In the trust-zone deployment these inputs arrive on a Zenoh session of
//! their own ([`OutsideSettings`]), apart from the session of the vehicle's private link.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use twinlink_link::ZenohSettings;

/// Inputs per second allowed per key by default.
pub const DEFAULT_RATE_HZ: u32 = 50;
/// Inputs a key may send at once above its rate by default.
pub const DEFAULT_BURST: u32 = 100;
/// Keys remembered at most; above this, keys idle for a while are forgotten.
const MAX_KEYS: usize = 16_384;

/// The kinds of outside input, each limited on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// Another twin's disclosure (a put on a share key).
    Disclosure,
    /// Another twin's query for shared data.
    Query,
    /// The regional service's traffic of a tile.
    Regional,
}

/// Rate limits of the outside inputs, per kind and key.
pub struct Gate {
    disclosures: DefaultKeyedRateLimiter<String>,
    queries: DefaultKeyedRateLimiter<String>,
    regional: DefaultKeyedRateLimiter<String>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").finish_non_exhaustive()
    }
}

/// Limits of the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateConfig {
    /// Inputs per second per key (each kind on its own).
    pub rate_hz: u32,
    /// Inputs a key may send at once.
    pub burst: u32,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            rate_hz: DEFAULT_RATE_HZ,
            burst: DEFAULT_BURST,
        }
    }
}

impl GateConfig {
    /// Checks the limits: each within 1..=100 000.
    pub fn check(&self) -> Result<(), String> {
        for (name, v) in [("rate", self.rate_hz), ("burst", self.burst)] {
            if !(1..=100_000).contains(&v) {
                return Err(format!(
                    "the outside {name} must be within 1..=100000, got {v}"
                ));
            }
        }
        Ok(())
    }
}

impl Gate {
    /// A gate with `config`'s limits (checked with [`GateConfig::check`]).
    pub fn new(config: GateConfig) -> Result<Gate, String> {
        config.check()?;
        let nz = |v: u32| NonZeroU32::new(v).expect("checked above");
        let quota = || Quota::per_second(nz(config.rate_hz)).allow_burst(nz(config.burst));
        Ok(Gate {
            disclosures: RateLimiter::keyed(quota()),
            queries: RateLimiter::keyed(quota()),
            regional: RateLimiter::keyed(quota()),
        })
    }

    /// Whether an input of `kind` on `key` may pass now (`false`: over its rate; count it
    /// as `rate_limited` and drop it).
    pub fn admit(&self, kind: Inbound, key: &str) -> bool {
        let limiter = match kind {
            Inbound::Disclosure => &self.disclosures,
            Inbound::Query => &self.queries,
            Inbound::Regional => &self.regional,
        };
        if limiter.len() > MAX_KEYS {
            limiter.retain_recent();
        }
        limiter.check_key(&key.to_string()).is_ok()
    }
}

/// The trust-zone deployment's second Zenoh session: everything but the twins' private
/// links (other twins' disclosures and queries, the regional service, census, DENMs) goes
/// over it, so the session of the vehicle's link need not be reachable from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutsideSettings {
    /// How to join the outside Zenoh network.
    pub zenoh: ZenohSettings,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_on_one_key_is_cut_to_its_rate_and_leaves_other_keys_alone() {
        let gate = Gate::new(GateConfig {
            rate_hz: 10,
            burst: 5,
        })
        .unwrap();
        let passed = (0..100)
            .filter(|_| gate.admit(Inbound::Disclosure, "twinlink/v1/share/hazards/0_0"))
            .count();
        // The burst, and perhaps one refilled while the loop ran.
        assert!((5..=6).contains(&passed), "{passed}");
        assert!(gate.admit(Inbound::Disclosure, "twinlink/v1/share/hazards/1_0"));
        // Each kind has its own limits.
        assert!(gate.admit(Inbound::Query, "twinlink/v1/share/hazards/0_0"));
        assert!(gate.admit(Inbound::Regional, "twinlink/v1/region/0_0/traffic"));
    }

    #[test]
    fn limits_are_checked() {
        for (rate_hz, burst) in [(0, 10), (10, 0), (200_000, 10)] {
            let e = Gate::new(GateConfig { rate_hz, burst }).unwrap_err();
            assert!(e.contains("within 1..=100000"), "{e}");
        }
    }
}
