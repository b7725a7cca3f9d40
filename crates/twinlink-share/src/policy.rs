//! The consent model: what a vehicle lets its twin disclose, and to whom.
//!
//! A [`Consent`] holds the vehicle's validated `SharingPolicy`. It follows the spirit of
//! Eclipse Ditto's policies: a *resource* is a data category, a *subject* is an audience
//! (twins of the same fleet, or any twin), the one permission is "disclose", and everything
//! not granted is denied. [`Consent::grant`] adds or replaces the rule of one category,
//! [`Consent::revoke`] withdraws it (an explicit revoke, reported as such until a later grant
//! or policy replaces it), [`Consent::set`] replaces the whole policy; each bumps the version.
//! Like a Ditto subject's expiry, a rule may carry an expiry after which it grants nothing.
//!
//! Validation agrees with the vehicle side (`twinlink-vehicle`'s `PolicyStore`) on categories,
//! duplicates, audiences and non-negative precision, and is stricter: precision at most
//! [`MAX_SPATIAL_PRECISION_M`], `max_age` positive, and a valid expiry that is not already past.

use std::collections::BTreeSet;
use std::fmt;

use twinlink_msgs::builtin_interfaces::msg::Time;
use twinlink_msgs::twin_msgs::msg::{SharedObservation, SharingPolicy, SharingRule};
use twinlink_msgs::twin_msgs::srv::SetSharingPolicy;

use crate::tile::Category;
use crate::time::{is_zero, time_us};

/// Coarsest spatial precision a rule may ask for (m). A coarser one is almost certainly a
/// unit mistake, and would make disclosures useless while still disclosing something.
pub const MAX_SPATIAL_PRECISION_M: f32 = 10_000.0;

/// What is wrong with one field of a policy or rule.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyProblem {
    /// The category is not one of `SharedObservation::CATEGORY_*`.
    UnknownCategory(u8),
    /// A second rule for a category that already has one.
    DuplicateCategory(u8),
    /// The audience is not one of `SharingRule::AUDIENCE_*`.
    UnknownAudience(u8),
    /// The precision is NaN, infinite, negative or above [`MAX_SPATIAL_PRECISION_M`].
    BadPrecision(f32),
    /// `max_age` is NaN, infinite, zero or negative.
    BadMaxAge(f32),
    /// The expiry is not a valid time (negative seconds or `nanosec >= 1e9`).
    BadExpiry,
    /// The expiry is already past: the rule would grant nothing.
    AlreadyExpired,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownCategory(c) => write!(f, "{c} is not a SharedObservation category"),
            Self::DuplicateCategory(c) => write!(f, "a second rule for category {c}"),
            Self::UnknownAudience(a) => write!(f, "{a} is not an AUDIENCE_* value"),
            Self::BadPrecision(p) => write!(
                f,
                "{p} must be a number of metres from 0 to {MAX_SPATIAL_PRECISION_M}"
            ),
            Self::BadMaxAge(a) => write!(f, "{a} must be a positive number of seconds"),
            Self::BadExpiry => write!(f, "not a valid time (sec >= 0, nanosec < 1e9)"),
            Self::AlreadyExpired => write!(f, "already past; use zero for \"until revoked\""),
        }
    }
}

/// A policy or rule was refused; `field` names the offending field, e.g.
/// `rules[1].spatial_precision`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct PolicyError {
    /// Path of the field, e.g. `rules[2].category` (or `rule.max_age` for [`Consent::grant`]).
    pub field: String,
    /// What is wrong with it.
    pub problem: PolicyProblem,
}

fn check_rule(rule: &SharingRule, prefix: &str, now_us: u64) -> Result<(), PolicyError> {
    let err = |field: &str, problem| {
        Err(PolicyError {
            field: format!("{prefix}.{field}"),
            problem,
        })
    };
    if Category::from_u8(rule.category).is_none() {
        return err("category", PolicyProblem::UnknownCategory(rule.category));
    }
    if Audience::rule_audience(rule.audience).is_none() {
        return err("audience", PolicyProblem::UnknownAudience(rule.audience));
    }
    let p = rule.spatial_precision;
    if !(p.is_finite() && (0.0..=MAX_SPATIAL_PRECISION_M).contains(&p)) {
        return err("spatial_precision", PolicyProblem::BadPrecision(p));
    }
    if !(rule.max_age.is_finite() && rule.max_age > 0.0) {
        return err("max_age", PolicyProblem::BadMaxAge(rule.max_age));
    }
    if !is_zero(&rule.expires) {
        match time_us(&rule.expires) {
            None => return err("expires", PolicyProblem::BadExpiry),
            Some(t) if t <= now_us => return err("expires", PolicyProblem::AlreadyExpired),
            Some(_) => {}
        }
    }
    Ok(())
}

/// Checks a whole policy at time `now_us` (µs since the epoch) without accepting it; the
/// error names the first offending field. `version` is ignored, as on input to the service.
pub fn validate_policy(policy: &SharingPolicy, now_us: u64) -> Result<(), PolicyError> {
    let mut seen = BTreeSet::new();
    for (i, rule) in policy.rules.iter().enumerate() {
        let prefix = format!("rules[{i}]");
        check_rule(rule, &prefix, now_us)?;
        if !seen.insert(rule.category) {
            return Err(PolicyError {
                field: format!("{prefix}.category"),
                problem: PolicyProblem::DuplicateCategory(rule.category),
            });
        }
    }
    Ok(())
}

/// How the receiver of a disclosure relates to the disclosing twin's vehicle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Audience {
    /// A twin whose certificate chain leads to the same fleet authority.
    SameFleet,
    /// A twin of another (trusted) fleet.
    OtherFleet,
    /// Not known: a publication anyone subscribed may receive, or an unauthenticated query.
    /// Only rules with `AUDIENCE_ANY_TWIN` disclose to it.
    Unknown,
}

/// What a rule's `audience` value allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleAudience {
    Nobody,
    SameFleet,
    AnyTwin,
}

impl Audience {
    fn rule_audience(value: u8) -> Option<RuleAudience> {
        match value {
            SharingRule::AUDIENCE_NOBODY => Some(RuleAudience::Nobody),
            SharingRule::AUDIENCE_SAME_FLEET => Some(RuleAudience::SameFleet),
            SharingRule::AUDIENCE_ANY_TWIN => Some(RuleAudience::AnyTwin),
            _ => None,
        }
    }

    /// A short, stable name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SameFleet => "same_fleet",
            Self::OtherFleet => "other_fleet",
            Self::Unknown => "unknown",
        }
    }
}

/// One question to the consent: may an observation of `category`, `age_s` old, go to a
/// receiver related as `audience`?
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DisclosureRequest {
    /// `SharedObservation::CATEGORY_*`.
    pub category: u8,
    /// How the receiver relates to this vehicle.
    pub audience: Audience,
    /// Age of the observation at disclosure time (s); NaN is treated as too old, a negative
    /// age (a clock ahead of ours) as zero.
    pub age_s: f64,
}

impl DisclosureRequest {
    /// A request for `category` data, `age_s` old, for `audience`.
    pub fn new(category: u8, audience: Audience, age_s: f64) -> Self {
        Self {
            category,
            audience,
            age_s,
        }
    }
}

/// Why the consent refuses a disclosure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// The category is not one of `SharedObservation::CATEGORY_*`.
    UnknownCategory,
    /// No rule for the category: default deny.
    NoRule,
    /// The vehicle revoked the category (until it grants it again or sets a new policy).
    Revoked,
    /// The rule's `expires` is past.
    GrantExpired,
    /// The rule's audience is `AUDIENCE_NOBODY`.
    AudienceNobody,
    /// The rule allows the same fleet only and the receiver is of another fleet.
    OtherFleet,
    /// The rule allows the same fleet only and the receiver is not known.
    AudienceUnknown,
    /// The observation is older than the rule's `max_age`.
    TooOld,
}

impl DenyReason {
    /// A short, stable name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownCategory => "unknown_category",
            Self::NoRule => "no_rule",
            Self::Revoked => "revoked",
            Self::GrantExpired => "grant_expired",
            Self::AudienceNobody => "audience_nobody",
            Self::OtherFleet => "other_fleet",
            Self::AudienceUnknown => "audience_unknown",
            Self::TooOld => "too_old",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The consent's answer to a [`DisclosureRequest`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Disclose, coarsened to `precision_m` metres, if not older than `max_age_s`
    /// (see [`crate::coarsen::coarsen`]).
    Allow {
        /// Positions are snapped to a grid of this pitch (m); 0 = exact.
        precision_m: f32,
        /// Observations older than this are not disclosed (s).
        max_age_s: f32,
    },
    /// Do not disclose.
    Deny(DenyReason),
}

impl Decision {
    /// True for [`Decision::Allow`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// A short, stable name for metrics labels: `allow` or the deny reason.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Allow { .. } => "allow",
            Decision::Deny(reason) => reason.as_str(),
        }
    }
}

/// A vehicle's validated sharing policy, with Ditto-style grant, revoke and set.
///
/// The default is the empty policy at version 0: nothing is disclosed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Consent {
    /// Validated; rules sorted by category; `version` set by this consent.
    policy: SharingPolicy,
    /// Categories revoked since the last `set`, and not granted again.
    revoked: BTreeSet<u8>,
}

impl Consent {
    /// The default-deny consent (no rules, version 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// The policy in force, with its version; rules sorted by category.
    pub fn policy(&self) -> &SharingPolicy {
        &self.policy
    }

    /// The version of the policy in force (0 until one is accepted).
    pub fn version(&self) -> u64 {
        self.policy.version
    }

    /// The rule for `category`, if any.
    pub fn rule(&self, category: u8) -> Option<&SharingRule> {
        self.policy.rules.iter().find(|r| r.category == category)
    }

    /// Whether the vehicle lets its twin query other twins on its own.
    pub fn may_fetch_autonomously(&self) -> bool {
        self.policy.allow_autonomous_fetch
    }

    fn bump(&mut self) -> u64 {
        self.policy.version = self.policy.version.saturating_add(1);
        self.policy.version
    }

    /// Replaces the whole policy (and forgets earlier revokes) if it is valid at `now_us`;
    /// returns the new version. The policy's own `version` is ignored. On error nothing
    /// changes.
    pub fn set(&mut self, mut policy: SharingPolicy, now_us: u64) -> Result<u64, PolicyError> {
        validate_policy(&policy, now_us)?;
        policy.rules.sort_by_key(|r| r.category);
        policy.version = self.policy.version;
        self.policy = policy;
        self.revoked.clear();
        Ok(self.bump())
    }

    /// Adds the rule for its category, replacing any earlier one (and lifting a revoke);
    /// returns the new version. Errors name fields as `rule.<field>`.
    pub fn grant(&mut self, rule: SharingRule, now_us: u64) -> Result<u64, PolicyError> {
        check_rule(&rule, "rule", now_us)?;
        self.revoked.remove(&rule.category);
        match self
            .policy
            .rules
            .iter_mut()
            .find(|r| r.category == rule.category)
        {
            Some(existing) => *existing = rule,
            None => {
                self.policy.rules.push(rule);
                self.policy.rules.sort_by_key(|r| r.category);
            }
        }
        Ok(self.bump())
    }

    /// Withdraws the rule of `category`: later requests are denied with
    /// [`DenyReason::Revoked`] until a grant or a new policy. Returns the new version; a
    /// revoke of a category without a rule is still recorded.
    pub fn revoke(&mut self, category: u8) -> Result<u64, PolicyError> {
        if Category::from_u8(category).is_none() {
            return Err(PolicyError {
                field: "category".into(),
                problem: PolicyProblem::UnknownCategory(category),
            });
        }
        self.policy.rules.retain(|r| r.category != category);
        self.revoked.insert(category);
        Ok(self.bump())
    }

    /// Sets whether the twin may query other twins on its own; returns the new version.
    pub fn set_autonomous_fetch(&mut self, allow: bool) -> u64 {
        self.policy.allow_autonomous_fetch = allow;
        self.bump()
    }

    /// Handles a `SetSharingPolicy` service call: accepts the policy if valid at `now_us`.
    /// The response carries the version in force either way, and on refusal the reason.
    pub fn handle_set_request(
        &mut self,
        request: SetSharingPolicy::Request,
        now_us: u64,
    ) -> SetSharingPolicy::Response {
        match self.set(request.policy, now_us) {
            Ok(version) => SetSharingPolicy::Response {
                accepted: true,
                message: String::new(),
                version,
            },
            Err(e) => SetSharingPolicy::Response {
                accepted: false,
                message: e.to_string(),
                version: self.version(),
            },
        }
    }

    /// Decides one disclosure at `now_us` (µs since the epoch).
    ///
    /// Checks, in order: known category, not revoked, a rule exists, the rule has not
    /// expired, its audience is not NOBODY, the receiver is in the audience (SAME_FLEET
    /// admits [`Audience::SameFleet`] only, ANY_TWIN everyone), and the observation is not
    /// older than `max_age`.
    pub fn decide(&self, request: &DisclosureRequest, now_us: u64) -> Decision {
        use DenyReason::*;
        if Category::from_u8(request.category).is_none() {
            return Decision::Deny(UnknownCategory);
        }
        if self.revoked.contains(&request.category) {
            return Decision::Deny(Revoked);
        }
        let Some(rule) = self.rule(request.category) else {
            return Decision::Deny(NoRule);
        };
        if expired(&rule.expires, now_us) {
            return Decision::Deny(GrantExpired);
        }
        match (Audience::rule_audience(rule.audience), request.audience) {
            // Validation admits no other value; fail closed all the same.
            (None | Some(RuleAudience::Nobody), _) => return Decision::Deny(AudienceNobody),
            (Some(RuleAudience::SameFleet), Audience::OtherFleet) => {
                return Decision::Deny(OtherFleet)
            }
            (Some(RuleAudience::SameFleet), Audience::Unknown) => {
                return Decision::Deny(AudienceUnknown)
            }
            _ => {}
        }
        if request.age_s.is_nan() || request.age_s > f64::from(rule.max_age) {
            return Decision::Deny(TooOld);
        }
        Decision::Allow {
            precision_m: rule.spatial_precision,
            max_age_s: rule.max_age,
        }
    }

    /// The decision for disclosing `observation` (its category, and its age from the header
    /// stamp) to `audience` at `now_us`.
    pub fn decide_for(
        &self,
        observation: &SharedObservation,
        audience: Audience,
        now_us: u64,
    ) -> Decision {
        let age_s = match time_us(&observation.header.stamp) {
            Some(stamp) => crate::time::seconds_between(stamp, now_us).max(0.0),
            None => f64::NAN,
        };
        self.decide(
            &DisclosureRequest::new(observation.category, audience, age_s),
            now_us,
        )
    }
}

fn expired(expires: &Time, now_us: u64) -> bool {
    !is_zero(expires) && time_us(expires).is_none_or(|t| t <= now_us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::ros_time;

    const NOW: u64 = 1_700_000_000_000_000;
    const H: u8 = SharedObservation::CATEGORY_HAZARDS;
    const O: u8 = SharedObservation::CATEGORY_OBJECTS;
    const T: u8 = SharedObservation::CATEGORY_TRAFFIC;

    fn rule(category: u8, audience: u8) -> SharingRule {
        SharingRule {
            category,
            audience,
            spatial_precision: 50.0,
            max_age: 60.0,
            ..Default::default()
        }
    }

    fn ask(c: &Consent, category: u8, audience: Audience, age_s: f64) -> Decision {
        c.decide(&DisclosureRequest::new(category, audience, age_s), NOW)
    }

    #[test]
    fn default_deny() {
        let c = Consent::new();
        assert_eq!(c.version(), 0);
        assert!(!c.may_fetch_autonomously());
        for cat in [H, O, T] {
            for a in [Audience::SameFleet, Audience::OtherFleet, Audience::Unknown] {
                assert_eq!(ask(&c, cat, a, 0.0), Decision::Deny(DenyReason::NoRule));
            }
        }
        let mut c = Consent::new();
        c.set(
            SharingPolicy {
                rules: vec![rule(H, SharingRule::AUDIENCE_ANY_TWIN)],
                ..Default::default()
            },
            NOW,
        )
        .unwrap();
        assert!(ask(&c, H, Audience::OtherFleet, 1.0).is_allowed());
        assert_eq!(
            ask(&c, O, Audience::SameFleet, 1.0),
            Decision::Deny(DenyReason::NoRule),
            "a category without a rule discloses nothing"
        );
    }

    #[test]
    fn each_deny_reason() {
        let mut c = Consent::new();
        let mut expiring = rule(T, SharingRule::AUDIENCE_ANY_TWIN);
        expiring.expires = ros_time(NOW + 1_000_000);
        c.set(
            SharingPolicy {
                rules: vec![
                    rule(H, SharingRule::AUDIENCE_NOBODY),
                    rule(O, SharingRule::AUDIENCE_SAME_FLEET),
                    expiring,
                ],
                allow_autonomous_fetch: true,
                version: 77,
            },
            NOW,
        )
        .unwrap();
        assert_eq!(c.version(), 1, "input version is ignored");
        assert!(c.may_fetch_autonomously());
        use DenyReason::*;
        assert_eq!(
            ask(&c, 9, Audience::SameFleet, 0.0),
            Decision::Deny(UnknownCategory)
        );
        assert_eq!(
            ask(&c, H, Audience::SameFleet, 0.0),
            Decision::Deny(AudienceNobody)
        );
        assert_eq!(
            ask(&c, O, Audience::OtherFleet, 0.0),
            Decision::Deny(OtherFleet)
        );
        assert_eq!(
            ask(&c, O, Audience::Unknown, 0.0),
            Decision::Deny(AudienceUnknown)
        );
        assert_eq!(
            ask(&c, O, Audience::SameFleet, 61.0),
            Decision::Deny(TooOld)
        );
        assert_eq!(
            ask(&c, O, Audience::SameFleet, f64::NAN),
            Decision::Deny(TooOld)
        );
        assert_eq!(
            ask(&c, O, Audience::SameFleet, 60.0),
            Decision::Allow {
                precision_m: 50.0,
                max_age_s: 60.0
            }
        );
        assert!(ask(&c, T, Audience::Unknown, 0.0).is_allowed());
        let later = NOW + 1_000_000;
        assert_eq!(
            c.decide(&DisclosureRequest::new(T, Audience::Unknown, 0.0), later),
            Decision::Deny(GrantExpired),
            "a grant that expired stops disclosure"
        );
        c.revoke(O).unwrap();
        assert_eq!(
            ask(&c, O, Audience::SameFleet, 0.0),
            Decision::Deny(Revoked)
        );
        let labels: BTreeSet<_> = [
            UnknownCategory,
            NoRule,
            Revoked,
            GrantExpired,
            AudienceNobody,
            OtherFleet,
            AudienceUnknown,
            TooOld,
        ]
        .iter()
        .map(|r| r.as_str())
        .collect();
        assert_eq!(labels.len(), 8);
    }

    #[test]
    fn grant_then_revoke_then_grant_again() {
        let mut c = Consent::new();
        assert_eq!(
            c.grant(rule(H, SharingRule::AUDIENCE_SAME_FLEET), NOW),
            Ok(1)
        );
        assert!(ask(&c, H, Audience::SameFleet, 0.0).is_allowed());
        // A second grant for the category replaces the first.
        assert_eq!(c.grant(rule(H, SharingRule::AUDIENCE_ANY_TWIN), NOW), Ok(2));
        assert!(ask(&c, H, Audience::OtherFleet, 0.0).is_allowed());
        assert_eq!(c.policy().rules.len(), 1);
        assert_eq!(c.revoke(H), Ok(3));
        assert_eq!(
            ask(&c, H, Audience::SameFleet, 0.0),
            Decision::Deny(DenyReason::Revoked)
        );
        assert!(c.policy().rules.is_empty());
        assert_eq!(
            c.grant(rule(H, SharingRule::AUDIENCE_SAME_FLEET), NOW),
            Ok(4)
        );
        assert!(ask(&c, H, Audience::SameFleet, 0.0).is_allowed());
        c.revoke(O).unwrap();
        assert_eq!(c.set(SharingPolicy::default(), NOW), Ok(6));
        assert_eq!(
            ask(&c, O, Audience::SameFleet, 0.0),
            Decision::Deny(DenyReason::NoRule),
            "a new policy replaces the revokes too"
        );
        assert_eq!(c.set_autonomous_fetch(true), 7);
        assert!(c.may_fetch_autonomously());
        assert!(c.revoke(0).is_err());
        assert_eq!(c.version(), 7);
    }

    #[test]
    fn validation_names_the_field_and_changes_nothing() {
        let mut c = Consent::new();
        c.grant(rule(H, SharingRule::AUDIENCE_ANY_TWIN), NOW)
            .unwrap();
        let before = c.clone();
        let check = |c: &mut Consent, rules: Vec<SharingRule>, field: &str| {
            let e = c
                .set(
                    SharingPolicy {
                        rules,
                        ..Default::default()
                    },
                    NOW,
                )
                .unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().starts_with(field));
        };
        let ok = rule(O, SharingRule::AUDIENCE_SAME_FLEET);
        check(&mut c, vec![ok.clone(), rule(0, 1)], "rules[1].category");
        check(&mut c, vec![ok.clone(), ok.clone()], "rules[1].category");
        check(&mut c, vec![rule(H, 3)], "rules[0].audience");
        for p in [f32::NAN, -0.5, f32::INFINITY, 10_000.5] {
            let mut r = ok.clone();
            r.spatial_precision = p;
            check(&mut c, vec![r], "rules[0].spatial_precision");
        }
        for a in [f32::NAN, 0.0, -1.0, f32::INFINITY] {
            let mut r = ok.clone();
            r.max_age = a;
            check(&mut c, vec![r], "rules[0].max_age");
        }
        let mut r = ok.clone();
        r.expires = Time {
            sec: 5,
            nanosec: 1_000_000_000,
        };
        check(&mut c, vec![r.clone()], "rules[0].expires");
        r.expires = Time {
            sec: -5,
            nanosec: 0,
        };
        check(&mut c, vec![r.clone()], "rules[0].expires");
        r.expires = ros_time(NOW);
        check(&mut c, vec![r.clone()], "rules[0].expires");
        assert_eq!(
            c.grant(r, NOW).unwrap_err().problem,
            PolicyProblem::AlreadyExpired
        );
        assert_eq!(c, before);
        // Precision 0 (exact) and the maximum are valid.
        let mut exact = ok.clone();
        exact.spatial_precision = 0.0;
        let mut coarsest = rule(T, SharingRule::AUDIENCE_ANY_TWIN);
        coarsest.spatial_precision = MAX_SPATIAL_PRECISION_M;
        assert!(validate_policy(
            &SharingPolicy {
                rules: vec![exact, coarsest],
                ..Default::default()
            },
            NOW
        )
        .is_ok());
    }

    #[test]
    fn the_service_call_reports_acceptance_and_refusal() {
        let mut c = Consent::new();
        let ok = c.handle_set_request(
            SetSharingPolicy::Request {
                policy: SharingPolicy {
                    rules: vec![rule(H, SharingRule::AUDIENCE_ANY_TWIN)],
                    ..Default::default()
                },
            },
            NOW,
        );
        assert!(ok.accepted && ok.message.is_empty() && ok.version == 1);
        let refused = c.handle_set_request(
            SetSharingPolicy::Request {
                policy: SharingPolicy {
                    rules: vec![rule(H, 7)],
                    ..Default::default()
                },
            },
            NOW,
        );
        assert!(!refused.accepted);
        assert!(
            refused.message.contains("rules[0].audience"),
            "{}",
            refused.message
        );
        assert_eq!(refused.version, 1);
    }

    #[test]
    fn decide_for_takes_the_age_from_the_header() {
        let mut c = Consent::new();
        c.grant(rule(H, SharingRule::AUDIENCE_ANY_TWIN), NOW)
            .unwrap();
        let mut obs = SharedObservation {
            category: H,
            ..Default::default()
        };
        obs.header.stamp = ros_time(NOW - 30_000_000);
        assert!(c.decide_for(&obs, Audience::Unknown, NOW).is_allowed());
        obs.header.stamp = ros_time(NOW - 61_000_000);
        assert_eq!(
            c.decide_for(&obs, Audience::Unknown, NOW),
            Decision::Deny(DenyReason::TooOld)
        );
        obs.header.stamp = ros_time(NOW + 5_000_000);
        assert!(c.decide_for(&obs, Audience::Unknown, NOW).is_allowed());
    }
}
