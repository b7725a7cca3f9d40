//! A sharing policy as an operator writes and reads it (JSON through the DR host's admin
//! API and `twinctl policy`), converted to and from the `twin_msgs/SharingPolicy` the
//! twins enforce.
//!
//! ```json
//! {
//!   "allow_autonomous_fetch": true,
//!   "rules": [
//!     {"category": "hazards", "audience": "same_fleet", "precision_m": 50,
//!      "max_age_s": 30, "expires_at_us": 1796000000000000}
//!   ]
//! }
//! ```
//!
//! `category` is `hazards`, `objects` or `traffic`; `audience` is `nobody`, `same_fleet`
//! or `any_twin`; `expires_at_us` (µs since the Unix epoch) may be left out or 0 for a
//! grant until revoked. Unknown fields are refused, so that a misspelt field does not
//! silently grant more than intended. Values are checked by [`crate::validate_policy`]
//! when the policy is set.

use serde::{Deserialize, Serialize};
use twinlink_msgs::twin_msgs::msg::{SharingPolicy, SharingRule};

use crate::tile::{category_name, parse_category};
use crate::time::{ros_time, time_us};

/// One rule of a [`PolicyDocument`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDocument {
    /// `hazards`, `objects` or `traffic`.
    pub category: String,
    /// `nobody`, `same_fleet` or `any_twin`.
    pub audience: String,
    /// Positions are coarsened to this before disclosure [m].
    pub precision_m: f32,
    /// Observations older than this are not disclosed [s].
    pub max_age_s: f32,
    /// The grant ends at this time [µs since the Unix epoch]; 0 = until revoked.
    #[serde(default)]
    pub expires_at_us: u64,
}

/// A whole sharing policy (see the module documentation).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// Whether the twin may ask other twins on its own for its vehicle.
    #[serde(default)]
    pub allow_autonomous_fetch: bool,
    /// At most one rule per category; categories without one are not disclosed.
    #[serde(default)]
    pub rules: Vec<RuleDocument>,
}

/// Why a [`PolicyDocument`] is not a policy.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DocumentError {
    /// A category name that is not one of `hazards`, `objects`, `traffic`.
    #[error("rules[{index}].category {value:?} is not one of hazards, objects, traffic")]
    Category {
        /// The rule's position.
        index: usize,
        /// What it said.
        value: String,
    },
    /// An audience name that is not one of `nobody`, `same_fleet`, `any_twin`.
    #[error("rules[{index}].audience {value:?} is not one of nobody, same_fleet, any_twin")]
    Audience {
        /// The rule's position.
        index: usize,
        /// What it said.
        value: String,
    },
}

/// The name of a rule's audience value.
pub fn audience_name(audience: u8) -> &'static str {
    match audience {
        SharingRule::AUDIENCE_NOBODY => "nobody",
        SharingRule::AUDIENCE_SAME_FLEET => "same_fleet",
        SharingRule::AUDIENCE_ANY_TWIN => "any_twin",
        _ => "unknown",
    }
}

fn parse_audience(name: &str) -> Option<u8> {
    match name {
        "nobody" => Some(SharingRule::AUDIENCE_NOBODY),
        "same_fleet" => Some(SharingRule::AUDIENCE_SAME_FLEET),
        "any_twin" => Some(SharingRule::AUDIENCE_ANY_TWIN),
        _ => None,
    }
}

impl PolicyDocument {
    /// The policy message (names checked here; values when the policy is set).
    pub fn to_policy(&self) -> Result<SharingPolicy, DocumentError> {
        let rules = self
            .rules
            .iter()
            .enumerate()
            .map(|(index, r)| {
                Ok(SharingRule {
                    category: parse_category(&r.category).ok_or_else(|| {
                        DocumentError::Category {
                            index,
                            value: r.category.clone(),
                        }
                    })?,
                    audience: parse_audience(&r.audience).ok_or_else(|| {
                        DocumentError::Audience {
                            index,
                            value: r.audience.clone(),
                        }
                    })?,
                    spatial_precision: r.precision_m,
                    max_age: r.max_age_s,
                    expires: if r.expires_at_us == 0 {
                        Default::default()
                    } else {
                        ros_time(r.expires_at_us)
                    },
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(SharingPolicy {
            rules,
            allow_autonomous_fetch: self.allow_autonomous_fetch,
            version: 0,
        })
    }

    /// The document of a policy message.
    pub fn from_policy(policy: &SharingPolicy) -> Self {
        PolicyDocument {
            allow_autonomous_fetch: policy.allow_autonomous_fetch,
            rules: policy
                .rules
                .iter()
                .map(|r| RuleDocument {
                    category: category_name(r.category).unwrap_or("unknown").to_string(),
                    audience: audience_name(r.audience).to_string(),
                    precision_m: r.spatial_precision,
                    max_age_s: r.max_age,
                    expires_at_us: time_us(&r.expires).unwrap_or(0),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Consent;

    const NOW: u64 = 1_800_000_000_000_000;

    #[test]
    fn round_trips_and_is_enforceable() {
        let text = r#"{"allow_autonomous_fetch": true, "rules": [
            {"category": "hazards", "audience": "same_fleet", "precision_m": 50, "max_age_s": 30,
             "expires_at_us": 1800000600000000},
            {"category": "traffic", "audience": "any_twin", "precision_m": 100, "max_age_s": 10}]}"#;
        let doc: PolicyDocument = serde_json::from_str(text).unwrap();
        let policy = doc.to_policy().unwrap();
        assert_eq!(policy.rules.len(), 2);
        assert_eq!(policy.rules[0].audience, SharingRule::AUDIENCE_SAME_FLEET);
        assert_eq!(
            time_us(&policy.rules[0].expires),
            Some(1_800_000_600_000_000)
        );
        assert!(crate::time::is_zero(&policy.rules[1].expires));
        assert_eq!(PolicyDocument::from_policy(&policy), doc);
        let mut consent = Consent::new();
        assert_eq!(consent.set(policy, NOW), Ok(1));
        assert!(consent.may_fetch_autonomously());
    }

    #[test]
    fn names_what_is_wrong() {
        let bad = |text: &str| serde_json::from_str::<PolicyDocument>(text).map(|d| d.to_policy());
        let e = bad(r#"{"rules": [{"category": "gossip", "audience": "any_twin", "precision_m": 1, "max_age_s": 1}]}"#)
            .unwrap()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "rules[0].category \"gossip\" is not one of hazards, objects, traffic"
        );
        let e = bad(r#"{"rules": [{"category": "hazards", "audience": "everyone", "precision_m": 1, "max_age_s": 1}]}"#)
            .unwrap()
            .unwrap_err();
        assert!(
            e.to_string().contains("rules[0].audience \"everyone\""),
            "{e}"
        );
        // A misspelt field is refused rather than ignored.
        let e = bad(r#"{"allow_autonomus_fetch": true}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        // Values are the consent's to check.
        let doc: PolicyDocument = serde_json::from_str(
            r#"{"rules": [{"category": "hazards", "audience": "any_twin", "precision_m": -5, "max_age_s": 1}]}"#,
        )
        .unwrap();
        let e = Consent::new()
            .set(doc.to_policy().unwrap(), NOW)
            .unwrap_err();
        assert!(e.to_string().contains("spatial_precision"), "{e}");
    }
}
