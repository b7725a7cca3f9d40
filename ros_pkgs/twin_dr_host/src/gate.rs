//! The gate in front of everything that reaches a host from outside its twins' links:
//! other twins' disclosures and queries, the regional service's tiles.
//!
//! Each input is refused first if its key expression is not a plain key (a publisher may
//! put on a wildcard expression that matches the host's subscriptions: `bad_key`), then if
//! its key is over its rate (a flood on one tile costs that tile its excess and leaves the
//! others alone), then if its kind is over the total rate of all keys together (so that
//! inventing keys does not multiply the allowance): both `rate_limited`. The work a flood can
//! cause (decoding, signature checks) is thus bounded before it is done. What the gate lets
//! through is then checked as before (size, decoding, signatures and chains for disclosures
//! and queries, names, field ranges); what is refused anywhere is counted by reason in the
//! host's metrics. In the trust-zone deployment these inputs arrive on a Zenoh session of
//! their own ([`OutsideSettings`]), apart from the session of the vehicle's private link.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use twinlink_link::ZenohSettings;

/// Inputs per second allowed per key by default.
pub const DEFAULT_RATE_HZ: u32 = 50;
/// Inputs a key may send at once above its rate by default.
pub const DEFAULT_BURST: u32 = 100;
/// Inputs per second of one kind, all keys together, by default (also its burst).
pub const DEFAULT_TOTAL_HZ: u32 = 500;

/// The kinds of outside input, each limited on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// Another twin's disclosure (a put on a share key).
    Disclosure,
    /// Another twin's query for shared data.
    Query,
    /// The regional service's traffic of a tile.
    Regional,
    /// A reply to one of the host's own queries.
    Reply,
}

const KINDS: usize = 4;

/// Rate limits of the outside inputs, per kind: per key, and all keys together.
pub struct Gate {
    per_key: [DefaultKeyedRateLimiter<String>; KINDS],
    total: [DefaultDirectRateLimiter; KINDS],
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
    /// Inputs per second of one kind, all keys together (also its burst).
    pub total_hz: u32,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            rate_hz: DEFAULT_RATE_HZ,
            burst: DEFAULT_BURST,
            total_hz: DEFAULT_TOTAL_HZ,
        }
    }
}

impl GateConfig {
    /// Checks the limits: each within 1..=100 000.
    pub fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("rate", self.rate_hz),
            ("burst", self.burst),
            ("total rate", self.total_hz),
        ] {
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
        let total = || Quota::per_second(nz(config.total_hz));
        Ok(Gate {
            per_key: std::array::from_fn(|_| RateLimiter::keyed(quota())),
            total: std::array::from_fn(|_| RateLimiter::direct(total())),
        })
    }

    /// Whether an input of `kind` on `key` may pass now; if not, the reason to count it
    /// under (`bad_key` or `rate_limited`) before dropping it.
    pub fn admit(&self, kind: Inbound, key: &str) -> Result<(), &'static str> {
        if key.contains(['*', '$']) {
            return Err("bad_key");
        }
        let k = kind as usize;
        if self.per_key[k].check_key(&key.to_string()).is_err() || self.total[k].check().is_err() {
            return Err("rate_limited");
        }
        Ok(())
    }

    /// Forgets the keys whose allowance is full again (call now and then: the keys an
    /// outsider may invent are bounded by the total rate between two calls).
    pub fn forget_idle_keys(&self) {
        for limiter in &self.per_key {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Keys remembered now, all kinds together.
    pub fn keys(&self) -> usize {
        self.per_key.iter().map(|l| l.len()).sum()
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
            total_hz: 1000,
        })
        .unwrap();
        let passed = (0..100)
            .filter(|_| {
                gate.admit(Inbound::Disclosure, "twinlink/v1/share/hazards/0_0")
                    .is_ok()
            })
            .count();
        // The burst, and perhaps one refilled while the loop ran.
        assert!((5..=6).contains(&passed), "{passed}");
        assert_eq!(
            gate.admit(Inbound::Disclosure, "twinlink/v1/share/hazards/0_0"),
            Err("rate_limited")
        );
        assert!(gate
            .admit(Inbound::Disclosure, "twinlink/v1/share/hazards/1_0")
            .is_ok());
        // Each kind has its own limits.
        assert!(gate
            .admit(Inbound::Query, "twinlink/v1/share/hazards/0_0")
            .is_ok());
        assert!(gate
            .admit(Inbound::Regional, "twinlink/v1/region/0_0/traffic")
            .is_ok());
    }

    #[test]
    fn inventing_keys_does_not_multiply_the_allowance() {
        let gate = Gate::new(GateConfig {
            rate_hz: 10,
            burst: 5,
            total_hz: 50,
        })
        .unwrap();
        let passed = (0..1000)
            .filter(|i| {
                gate.admit(
                    Inbound::Regional,
                    &format!("twinlink/v1/region/x{i}/traffic"),
                )
                .is_ok()
            })
            .count();
        assert!((50..=52).contains(&passed), "{passed}");
        assert_eq!(gate.keys(), 1000);
        // Another kind keeps its own total.
        assert!(gate
            .admit(Inbound::Reply, "twinlink/v1/share/hazards/0_0")
            .is_ok());
    }

    #[test]
    fn wildcard_keys_are_refused_and_full_keys_forgotten() {
        let gate = Gate::new(GateConfig::default()).unwrap();
        for key in [
            "twinlink/v1/share/*/0_0",
            "twinlink/v1/share/**",
            "twinlink/v1/share/hazards/$*0",
        ] {
            assert_eq!(
                gate.admit(Inbound::Disclosure, key),
                Err("bad_key"),
                "{key}"
            );
        }
        assert!(gate
            .admit(Inbound::Disclosure, "twinlink/v1/share/hazards/0_0")
            .is_ok());
        assert_eq!(gate.keys(), 1);
        std::thread::sleep(std::time::Duration::from_millis(50));
        // One input of a burst of 100 at 50/s: its allowance is full again after 20 ms.
        gate.forget_idle_keys();
        assert_eq!(gate.keys(), 0);
    }

    #[test]
    fn limits_are_checked() {
        for (rate_hz, burst, total_hz) in [(0, 10, 10), (10, 0, 10), (200_000, 10, 10), (10, 10, 0)]
        {
            let e = Gate::new(GateConfig {
                rate_hz,
                burst,
                total_hz,
            })
            .unwrap_err();
            assert!(e.contains("within 1..=100000"), "{e}");
        }
    }
}
