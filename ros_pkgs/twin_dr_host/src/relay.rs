//! Inter-twin relay, without I/O: what one twin discloses of the hazards its vehicle
//! learned, and what it takes from other twins' disclosures.
//!
//! **Outbound.** The hazards a twin learns (raised by its detector from the vehicle's
//! tracks, or reported by the vehicle itself) arrive as [`HazardChanges`].
//! [`TwinSharing::on_changes`] puts each new or changed hazard through the vehicle's
//! consent ([`twinlink_share::Consent`]), coarsens it and seals it with the twin's current
//! pseudonym ([`twinlink_share::Discloser`]); a resolved or forgotten hazard is disclosed
//! once more with `expires` set to now, which withdraws it from the receivers. Hazards
//! still active are disclosed again every [`ANNOUNCE_PERIOD_US`]
//! ([`TwinSharing::announce_due`]), so that a twin that starts listening later learns them,
//! and so that a revoked or expired grant stops them at the next announcement. Every
//! result is an [`Outcome`]: disclosed (publish its bytes under its name, audit it) or
//! denied (audit the reason; nothing leaves).
//!
//! Publications reach anyone subscribed, so they are decided for
//! [`Audience::Unknown`]: only rules with `AUDIENCE_ANY_TWIN` let them out.
//!
//! **Inbound.** A disclosure that passed the host's [`twinlink_share::Verifier`] is offered
//! to each twin by [`TwinSharing::accept`]: a twin takes nothing unless its vehicle lets it
//! fetch from other twins on its own (`allow_autonomous_fetch`), ignores its own
//! disclosures (by its recent pseudonyms), and takes hazards only.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use twinlink_msgs::twin_msgs::msg::{Incident, SharedObservation, SharingPolicy};
use twinlink_share::keyfile::{self, TrustAnchor};
use twinlink_share::{
    time::ros_time, Audience, Category, Consent, DataName, DiscloseError, Discloser, PolicyError,
    PseudonymIssuer, Rotation, RotationConfig, TileGrid, TileName, Verified, Verifier,
    VerifierConfig,
};

use crate::hazard_detect::HazardChanges;
use crate::road::Road;

/// A relayed hazard as its vehicle last heard it: kind, lane, position [dm], withdrawn.
type Fingerprint = (u8, i32, i64, i64, bool);

/// A relayed hazard the vehicle already has is passed on again after this long [s].
pub const RELAY_REFRESH_S: f64 = 30.0;

/// Most relayed hazards remembered per twin for [`TwinSharing::forward_relayed`].
const MAX_FORWARDED: usize = 256;

/// How often a twin discloses its active hazards again [µs].
pub const ANNOUNCE_PERIOD_US: u64 = 2_000_000;

/// Most hazards one twin shares at once (the oldest is dropped beyond it).
pub const MAX_SHARED_HAZARDS: usize = 64;

/// How many of its own recent pseudonyms a twin remembers (to ignore its own
/// disclosures coming back).
const OWN_PSEUDONYMS: usize = 4;

/// A host's identity for sharing: its pseudonym issuer and the tile grid of names.
pub struct ShareIdentity {
    /// Issues the twins' rotating pseudonyms (certified by the fleet authority).
    pub issuer: PseudonymIssuer,
    /// The grid that tile names are built on (the same for every twin).
    pub grid: TileGrid,
}

impl std::fmt::Debug for ShareIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShareIdentity")
            .field("fleet", &self.issuer.fleet_id())
            .field("grid", &self.grid)
            .finish()
    }
}

/// A host's sharing settings: its identity and the fleets whose twins it believes.
#[derive(Debug, Clone)]
pub struct ShareConfig {
    /// The host's pseudonym issuer and tile grid.
    pub identity: Arc<ShareIdentity>,
    /// Fleet authorities trusted (the host's own fleet among them).
    pub anchors: Vec<TrustAnchor>,
}

impl ShareConfig {
    /// Reads the host's issuer file (`twinctl fleet certify-host`) and the trust anchors
    /// (`<fleet>.authority.pub` from `twinctl fleet init`). The issuer must be certified by
    /// the anchor of its own fleet, which must be among them.
    pub fn load(issuer: &Path, anchors: &[PathBuf]) -> Result<ShareConfig, String> {
        let issuer = keyfile::load_issuer(issuer).map_err(|e| e.to_string())?;
        let anchors = anchors
            .iter()
            .map(|p| keyfile::load_anchor(p).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let config = ShareConfig {
            identity: Arc::new(ShareIdentity {
                issuer,
                grid: TileGrid::default(),
            }),
            anchors,
        };
        config.verifier()?;
        Ok(config)
    }

    /// A verifier that trusts every anchor, for the host's own fleet.
    pub fn verifier(&self) -> Result<Verifier, String> {
        let fleet = self.identity.issuer.fleet_id();
        let own = self
            .anchors
            .iter()
            .find(|a| a.fleet_id == fleet)
            .ok_or_else(|| {
                format!("no trust anchor for the host's own fleet {fleet:?} (give its <fleet>.authority.pub)")
            })?;
        if !self
            .identity
            .issuer
            .certificate()
            .is_signed_by(&own.public_key)
        {
            return Err(format!(
                "the issuer is not certified by the trust anchor of fleet {fleet:?}"
            ));
        }
        let mut verifier = Verifier::new(fleet, own.public_key, VerifierConfig::default())
            .map_err(|e| e.to_string())?;
        for anchor in &self.anchors {
            if anchor.fleet_id != fleet {
                verifier
                    .trust(&anchor.fleet_id, anchor.public_key)
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(verifier)
    }
}

/// How far beside its route a host listens for disclosures [m]: a coarsened position may
/// have moved into the next tile.
pub const ROUTE_MARGIN_M: f64 = 300.0;

/// The tiles that `road` passes through, and those within `margin_m` of it: the names a
/// host subscribes to for its twins' routes.
pub fn route_tiles(road: &Road, grid: &TileGrid, margin_m: f64) -> Vec<TileName> {
    tiles_between(road, grid, 0.0, road.length(), margin_m)
}

/// The tiles that the stretch `from_s..=to_s` of `road` (clamped to the road) passes
/// through, and those within `margin_m` of it, in grid order.
pub fn tiles_between(
    road: &Road,
    grid: &TileGrid,
    from_s: f64,
    to_s: f64,
    margin_m: f64,
) -> Vec<TileName> {
    let mut tiles = std::collections::BTreeSet::new();
    let (from, to) = (
        from_s.clamp(0.0, road.length()),
        to_s.clamp(0.0, road.length()),
    );
    if from.is_nan() || to.is_nan() || from > to {
        return Vec::new();
    }
    let step = 50.0_f64.min((to - from).max(1.0));
    let lanes = road.lanes() as i32;
    let mut s = from;
    loop {
        for lane in [0, lanes - 1] {
            let (x, y, _) = road.to_map(s, road.lane_center(lane));
            tiles.extend(grid.tiles_near(x, y, margin_m));
        }
        if s >= to {
            break;
        }
        s = (s + step).min(to);
    }
    tiles.into_iter().collect()
}

/// How far ahead of its vehicle a twin that may fetch asks other twins for hazards [m].
pub const FETCH_AHEAD_M: f64 = 2_000.0;

/// One disclosure ready to leave the twin.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The name to publish it under (category and coarsened tile).
    pub name: DataName,
    /// The sealed envelope.
    pub bytes: Vec<u8>,
    /// The hazard's id inside this twin (private: for the twin's own audit only).
    pub hazard_id: String,
    /// Its id as disclosed (keyed per pseudonym period).
    pub disclosed_id: String,
    /// The pseudonym it is signed with.
    pub pseudonym: String,
    /// Unique per disclosure of that pseudonym.
    pub disclosure_id: u64,
    /// Whether it withdraws the hazard (resolved or forgotten).
    pub withdrawal: bool,
    /// Spatial precision applied [m].
    pub precision_m: f32,
    /// The hazard as disclosed (coarsened, its disclosed id).
    pub incident: Incident,
    /// Whom it was decided for: [`Audience::Unknown`] for publications, the querier's
    /// relation for an answer.
    pub audience: Audience,
}

/// What the consent made of one hazard.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Disclosed: publish and audit it.
    Disclosed(Box<Outgoing>),
    /// Not disclosed, and why (a `DiscloseError` label such as `no_rule`,
    /// `grant_expired`, `revoked`).
    Denied {
        /// The hazard's id inside this twin.
        hazard_id: String,
        /// Why.
        reason: &'static str,
        /// The same hazard was denied for the same reason last time (an announcement
        /// that changed nothing: count it, audit only the first).
        repeated: bool,
    },
}

/// What a query asks of [`TwinSharing::disclose`]: only hazards under `name`.
struct Want<'a> {
    name: &'a DataName,
    /// Denials are not counted or reported (the hazard lies in another tile).
    quiet_denial: bool,
}

/// Why a verified disclosure was not taken by a twin (not errors: counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// The vehicle does not let its twin fetch from others on its own.
    FetchNotAllowed,
    /// One of this twin's own disclosures.
    Own,
    /// A category the twin does not use (objects, traffic).
    Category,
}

impl Ignored {
    /// A short, stable label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::FetchNotAllowed => "fetch_not_allowed",
            Ignored::Own => "own",
            Ignored::Category => "category",
        }
    }
}

/// Counters of one twin's sharing.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SharingStats {
    /// Disclosures sealed.
    pub disclosed: u64,
    /// Disclosures refused by the consent, by reason.
    pub denied: BTreeMap<&'static str, u64>,
    /// Disclosures from other twins taken.
    pub accepted: u64,
    /// Disclosures from other twins not taken, by reason.
    pub ignored: BTreeMap<&'static str, u64>,
}

/// Where the sharing policy in force came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyOrigin {
    /// `none` (default deny, nothing set), `vehicle`, `operator`, or `refused` (the last
    /// policy set was invalid: default deny).
    pub source: &'static str,
    /// The operator who set it (for `operator`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// When it was set [µs since the Unix epoch, the host's clock]; 0 for `none`.
    pub at_us: u64,
    /// For a vehicle's policy: its own stamp (the vehicle's clock), which orders it against
    /// an operator's policy after a restart.
    #[serde(skip)]
    pub vehicle_created_us: u64,
}

impl PolicyOrigin {
    /// Nothing set yet.
    pub fn none() -> Self {
        PolicyOrigin {
            source: "none",
            operator: None,
            at_us: 0,
            vehicle_created_us: 0,
        }
    }

    /// Sent by the vehicle, stamped `created_us` by it, taken at `at_us`.
    pub fn vehicle(at_us: u64, created_us: u64) -> Self {
        PolicyOrigin {
            source: "vehicle",
            operator: None,
            at_us,
            vehicle_created_us: created_us,
        }
    }

    /// Set by `operator` at `at_us`.
    pub fn operator(operator: &str, at_us: u64) -> Self {
        PolicyOrigin {
            source: "operator",
            operator: Some(operator.to_string()),
            at_us,
            vehicle_created_us: 0,
        }
    }
}

/// One twin's sharing state: its vehicle's consent, its pseudonyms, the hazards it shares.
#[derive(Debug, Clone)]
pub struct TwinSharing {
    discloser: Discloser,
    /// Hazards shared now: their newest incident, by the twin's own id, in insertion order.
    active: HashMap<String, Incident>,
    order: VecDeque<String>,
    own_pseudonyms: VecDeque<String>,
    /// The last denial of each active hazard, per audience.
    denied_last: HashMap<(String, Audience), &'static str>,
    /// When each active hazard was last reported (raised or updated) [µs]: the stamp of
    /// its disclosures, so the rule's `max_age` holds for announcements too.
    seen_us: HashMap<String, u64>,
    /// What was last passed on to the vehicle of each relayed hazard, and when.
    forwarded: HashMap<String, (Fingerprint, f64)>,
    last_announce_us: u64,
    stats: SharingStats,
    origin: PolicyOrigin,
    /// The stamp of the newest policy the vehicle sent (0: none).
    newest_vehicle_policy_us: u64,
    /// Hazards withdrawn recently, with when: answered as withdrawals for
    /// [`WITHDRAWN_KEPT_US`], so that twins that learned them by query forget them.
    withdrawn: VecDeque<(Incident, u64)>,
}

/// How long a withdrawn hazard is still answered as a withdrawal [µs] (a receiver forgets
/// a relayed hazard after 120 s anyway).
pub const WITHDRAWN_KEPT_US: u64 = 120_000_000;

impl TwinSharing {
    /// A twin that shares nothing until its vehicle sets a policy (default deny), with
    /// pseudonyms rotated as `rotation` says and names on `grid`.
    pub fn new(
        rotation: RotationConfig,
        grid: TileGrid,
    ) -> Result<Self, twinlink_share::IdentityError> {
        Ok(TwinSharing {
            discloser: Discloser::new(Consent::new(), Rotation::new(rotation)?, grid),
            active: HashMap::new(),
            order: VecDeque::new(),
            own_pseudonyms: VecDeque::new(),
            denied_last: HashMap::new(),
            forwarded: HashMap::new(),
            seen_us: HashMap::new(),
            last_announce_us: 0,
            stats: SharingStats::default(),
            origin: PolicyOrigin::none(),
            newest_vehicle_policy_us: 0,
            withdrawn: VecDeque::new(),
        })
    }

    /// The vehicle's consent.
    pub fn consent(&self) -> &Consent {
        &self.discloser.consent
    }

    /// Counters.
    pub fn stats(&self) -> &SharingStats {
        &self.stats
    }

    /// Hazards shared now.
    pub fn active(&self) -> usize {
        self.active.len()
    }

    /// Replaces the vehicle's policy (validated); returns its version. A policy that takes
    /// anything away also rotates the pseudonym at the next disclosure, so that what
    /// follows cannot be linked to what went before.
    pub fn set_policy(&mut self, policy: SharingPolicy, now_us: u64) -> Result<u64, PolicyError> {
        self.set_policy_from(policy, PolicyOrigin::vehicle(now_us, now_us), now_us)
    }

    /// The stamp of the newest policy the vehicle sent (0: none): an operator's policy set
    /// after it is recorded with it, so that a restart keeps the same one in force.
    pub fn newest_vehicle_policy_us(&self) -> u64 {
        self.newest_vehicle_policy_us
    }

    /// Where the policy in force came from.
    pub fn policy_origin(&self) -> &PolicyOrigin {
        &self.origin
    }

    /// Like [`TwinSharing::set_policy`], for a policy from `origin` (the vehicle or an
    /// operator: the newest one set is in force).
    pub fn set_policy_from(
        &mut self,
        policy: SharingPolicy,
        origin: PolicyOrigin,
        now_us: u64,
    ) -> Result<u64, PolicyError> {
        if origin.source == "vehicle" {
            self.newest_vehicle_policy_us =
                self.newest_vehicle_policy_us.max(origin.vehicle_created_us);
        }
        let before = self.discloser.consent.policy().clone();
        let version = match self.discloser.consent.set(policy, now_us) {
            Ok(v) => v,
            Err(e) => {
                // A refused policy leaves nothing of the one before in force: default deny
                // until the vehicle sends one that is valid.
                self.discloser.consent = Consent::new();
                self.origin = PolicyOrigin {
                    source: "refused",
                    ..origin
                };
                self.rotate();
                return Err(e);
            }
        };
        self.origin = origin;
        let expiry = |r: &twinlink_msgs::twin_msgs::msg::SharingRule| {
            twinlink_share::time::time_us(&r.expires).filter(|&t| t > 0)
        };
        let narrowed = before.rules.iter().any(|old| {
            self.discloser.consent.rule(old.category).is_none_or(|new| {
                new.audience < old.audience
                    || new.spatial_precision > old.spatial_precision
                    || new.max_age < old.max_age
                    || match (expiry(old), expiry(new)) {
                        (None, Some(_)) => true,
                        (Some(o), Some(n)) => n < o,
                        _ => false,
                    }
            })
        });
        if narrowed {
            self.rotate();
        }
        Ok(version)
    }

    /// A new pseudonym at the next disclosure.
    fn rotate(&mut self) {
        {
            self.discloser.rotation = Rotation::new(*self.discloser.rotation.config())
                .expect("the same configuration was accepted before");
        }
    }

    /// Whether a relayed hazard (id as the receiving twin names it) should go on to the
    /// vehicle: new, changed (kind, lane, position, withdrawn) or last passed on
    /// [`RELAY_REFRESH_S`] ago. Announcements that repeat what the vehicle has are not
    /// sent again.
    pub fn forward_relayed(&mut self, incident: &Incident, withdrawal: bool, now: f64) -> bool {
        let print = (
            incident.incident_kind,
            incident.lane_index,
            (incident.position.x * 10.0).round() as i64,
            (incident.position.y * 10.0).round() as i64,
            withdrawal,
        );
        let fresh = match self.forwarded.get(&incident.incident_id) {
            Some((p, at)) => *p != print || now - at >= RELAY_REFRESH_S || now < *at,
            None => true,
        };
        if fresh {
            if self.forwarded.len() >= MAX_FORWARDED
                && !self.forwarded.contains_key(&incident.incident_id)
            {
                if let Some(oldest) = self
                    .forwarded
                    .iter()
                    .min_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
                    .map(|(k, _)| k.clone())
                {
                    self.forwarded.remove(&oldest);
                }
            }
            self.forwarded
                .insert(incident.incident_id.clone(), (print, now));
        }
        fresh
    }

    /// Discloses what changed (new and updated hazards; withdrawals of resolved and
    /// expired ones) at `now_us`.
    pub fn on_changes(
        &mut self,
        changes: HazardChanges,
        issuer: &PseudonymIssuer,
        now_us: u64,
    ) -> Vec<Outcome> {
        let mut out = Vec::new();
        if self.active.is_empty() {
            // Announcements repeat what is shared: their clock starts with the first hazard.
            self.last_announce_us = now_us;
        }
        // Ends first: a hazard resolved and raised again in one batch stays shared.
        for id in changes.resolved.iter().chain(&changes.expired) {
            if let Some(mut incident) = self.active.remove(id) {
                self.order.retain(|o| o != id);
                self.denied_last.retain(|(i, _), _| i != id);
                self.seen_us.remove(id);
                incident.expires = ros_time(now_us);
                out.extend(self.disclose(&incident, true, Audience::Unknown, None, issuer, now_us));
                self.withdrawn.retain(|(i, _)| i.incident_id != *id);
                self.withdrawn.push_back((incident, now_us));
                if self.withdrawn.len() > MAX_SHARED_HAZARDS {
                    self.withdrawn.pop_front();
                }
            }
        }
        for incident in changes.new.into_iter().chain(changes.updated) {
            let id = incident.incident_id.clone();
            self.seen_us.insert(id.clone(), now_us);
            if self.active.insert(id.clone(), incident).is_none() {
                self.order.push_back(id.clone());
            }
            while self.order.len() > MAX_SHARED_HAZARDS {
                if let Some(old) = self.order.pop_front() {
                    self.active.remove(&old);
                    self.denied_last.retain(|(i, _), _| *i != old);
                    self.seen_us.remove(&old);
                }
            }
            if let Some(incident) = self.active.get(&id).cloned() {
                out.extend(self.disclose(
                    &incident,
                    false,
                    Audience::Unknown,
                    None,
                    issuer,
                    now_us,
                ));
            }
        }
        out
    }

    /// Discloses every active hazard again when the last announcement is
    /// [`ANNOUNCE_PERIOD_US`] old (else nothing).
    pub fn announce_due(&mut self, issuer: &PseudonymIssuer, now_us: u64) -> Vec<Outcome> {
        if now_us < self.last_announce_us.saturating_add(ANNOUNCE_PERIOD_US) {
            return Vec::new();
        }
        self.last_announce_us = now_us;
        let incidents: Vec<Incident> = self
            .order
            .iter()
            .filter_map(|id| self.active.get(id).cloned())
            .collect();
        incidents
            .iter()
            .filter_map(|incident| {
                self.disclose(incident, false, Audience::Unknown, None, issuer, now_us)
            })
            .collect()
    }

    /// Answers a verified query for `name` from a twin related as `audience`: each active
    /// hazard that could lie in the named tile is decided for that audience (a
    /// `SAME_FLEET` rule discloses to the own fleet's twins here, never on the open keys);
    /// what is disclosed under exactly `name` is returned for the reply, denials as for
    /// publications. Nothing of other categories is shared yet.
    pub fn answer(
        &mut self,
        name: &DataName,
        audience: Audience,
        issuer: &PseudonymIssuer,
        now_us: u64,
    ) -> Vec<Outcome> {
        if name.category != Category::Hazards {
            return Vec::new();
        }
        while self
            .withdrawn
            .front()
            .is_some_and(|(_, at)| now_us.saturating_sub(*at) > WITHDRAWN_KEPT_US)
        {
            self.withdrawn.pop_front();
        }
        let grid = self.discloser.grid;
        // Coarsening moves a position by up to the rule's precision: hazards that far from
        // the tile may land in it.
        let reach = self
            .discloser
            .consent
            .rule(SharedObservation::CATEGORY_HAZARDS)
            .map_or(0.0, |r| f64::from(r.spatial_precision))
            .max(ROUTE_MARGIN_M);
        let near = |i: &Incident| {
            grid.tiles_near(i.position.x, i.position.y, reach)
                .contains(&name.tile)
        };
        let active: Vec<Incident> = self
            .order
            .iter()
            .filter_map(|id| self.active.get(id))
            .filter(|i| near(i))
            .cloned()
            .collect();
        let withdrawn: Vec<Incident> = self
            .withdrawn
            .iter()
            .map(|(i, _)| i)
            .filter(|i| near(i))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for (incident, withdrawal) in active
            .iter()
            .map(|i| (i, false))
            .chain(withdrawn.iter().map(|i| (i, true)))
        {
            let in_tile = grid.tile_of(incident.position.x, incident.position.y) == name.tile;
            // A denial concerns the asked tile only if the hazard lies in it; a
            // neighbour's is neither counted nor recorded for this query.
            let want = Want {
                name,
                quiet_denial: !in_tile,
            };
            out.extend(self.disclose(incident, withdrawal, audience, Some(want), issuer, now_us));
        }
        out
    }

    /// Decides, coarsens and seals one hazard for `audience`; `None` when `want` names
    /// another tile than the coarsened hazard's (a query for a neighbouring tile), or for a
    /// quiet denial.
    fn disclose(
        &mut self,
        incident: &Incident,
        withdrawal: bool,
        audience: Audience,
        want: Option<Want>,
        issuer: &PseudonymIssuer,
        now_us: u64,
    ) -> Option<Outcome> {
        let mut observation = SharedObservation {
            category: SharedObservation::CATEGORY_HAZARDS,
            hazards: vec![incident.clone()],
            ..Default::default()
        };
        observation.header.frame_id = "map".into();
        // As old as the newest report of the hazard (a withdrawal: now).
        let seen = if withdrawal {
            now_us
        } else {
            self.seen_us
                .get(&incident.incident_id)
                .copied()
                .unwrap_or(now_us)
                .min(now_us)
        };
        observation.header.stamp = ros_time(seen);
        let denied = |this: &mut Self, reason: &'static str| {
            if want.as_ref().is_some_and(|w| w.quiet_denial) {
                return None;
            }
            *this.stats.denied.entry(reason).or_default() += 1;
            let before = if withdrawal {
                None
            } else {
                this.denied_last
                    .insert((incident.incident_id.clone(), audience), reason)
            };
            Some(Outcome::Denied {
                hazard_id: incident.incident_id.clone(),
                reason,
                repeated: before == Some(reason),
            })
        };
        let disclosure = match self
            .discloser
            .disclose(issuer, &observation, audience, now_us)
        {
            Ok(d) => d,
            Err(e) => return denied(self, disclose_label(&e)),
        };
        let Ok(tile) = TileName::parse(&disclosure.observation.region_tile) else {
            return denied(self, "bad_tile");
        };
        let name = DataName::new(Category::Hazards, tile);
        if want.as_ref().is_some_and(|w| *w.name != name) {
            return None;
        }
        let Ok(bytes) = disclosure.to_bytes() else {
            return denied(self, "envelope");
        };
        let pseudonym = disclosure.pseudonym().to_string();
        if self.own_pseudonyms.back() != Some(&pseudonym) {
            self.own_pseudonyms.push_back(pseudonym.clone());
            if self.own_pseudonyms.len() > OWN_PSEUDONYMS {
                self.own_pseudonyms.pop_front();
            }
        }
        self.stats.disclosed += 1;
        self.denied_last
            .remove(&(incident.incident_id.clone(), audience));
        Some(Outcome::Disclosed(Box::new(Outgoing {
            name,
            hazard_id: incident.incident_id.clone(),
            disclosed_id: disclosure
                .observation
                .hazards
                .first()
                .map(|h| h.incident_id.clone())
                .unwrap_or_default(),
            pseudonym,
            disclosure_id: disclosure.disclosure_id(),
            withdrawal,
            precision_m: disclosure.observation.position_precision,
            incident: disclosure
                .observation
                .hazards
                .first()
                .cloned()
                .unwrap_or_default(),
            bytes,
            audience,
        })))
    }

    /// Whether this twin takes `verified` (see the module docs); the hazards to apply
    /// when it does.
    pub fn accept<'a>(&mut self, verified: &'a Verified) -> Result<&'a [Incident], Ignored> {
        let r = if !self.discloser.consent.may_fetch_autonomously() {
            Err(Ignored::FetchNotAllowed)
        } else if self.own_pseudonyms.contains(&verified.pseudonym) {
            Err(Ignored::Own)
        } else if verified.observation.category != SharedObservation::CATEGORY_HAZARDS {
            Err(Ignored::Category)
        } else {
            Ok(verified.observation.hazards.as_slice())
        };
        match r {
            Ok(_) => self.stats.accepted += 1,
            Err(why) => *self.stats.ignored.entry(why.as_str()).or_default() += 1,
        }
        r
    }
}

/// A metrics label for a refused disclosure.
pub fn disclose_label(e: &DiscloseError) -> &'static str {
    e.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinlink_msgs::geometry_msgs::msg::Point;
    use twinlink_msgs::twin_msgs::msg::SharingRule;
    use twinlink_share::{FleetAuthority, KeyPair, Verifier, VerifierConfig};

    const T0: u64 = 1_800_000_000_000_000;

    fn fleet() -> (FleetAuthority, PseudonymIssuer) {
        let authority = FleetAuthority::new("fleet-a", KeyPair::generate()).unwrap();
        let key = KeyPair::generate();
        let cert = authority
            .certify(key.public_key(), T0 - 1_000_000, T0 + 86_400_000_000)
            .unwrap();
        (authority, PseudonymIssuer::new(key, cert).unwrap())
    }

    fn sharing() -> TwinSharing {
        TwinSharing::new(RotationConfig::default(), TileGrid::default()).unwrap()
    }

    fn policy(audience: u8, fetch: bool, expires_us: u64) -> SharingPolicy {
        SharingPolicy {
            rules: vec![SharingRule {
                category: SharedObservation::CATEGORY_HAZARDS,
                audience,
                spatial_precision: 10.0,
                max_age: 30.0,
                expires: if expires_us == 0 {
                    Default::default()
                } else {
                    ros_time(expires_us)
                },
            }],
            allow_autonomous_fetch: fetch,
            version: 0,
        }
    }

    fn stalled(id: &str, x: f64) -> Incident {
        Incident {
            incident_id: id.into(),
            incident_kind: Incident::INCIDENT_STALLED_VEHICLE,
            position: Point { x, y: 0.0, z: 0.0 },
            lane_index: 0,
            extent: 5.0,
            confidence: 0.9,
            detected: ros_time(T0),
            ..Default::default()
        }
    }

    fn new_hazard(id: &str, x: f64) -> HazardChanges {
        HazardChanges {
            new: vec![stalled(id, x)],
            ..Default::default()
        }
    }

    #[test]
    fn default_deny_discloses_nothing() {
        let (_, issuer) = fleet();
        let mut s = sharing();
        let out = s.on_changes(new_hazard("h1", 1234.0), &issuer, T0);
        assert_eq!(
            out,
            vec![Outcome::Denied {
                hazard_id: "h1".into(),
                reason: "no_rule",
                repeated: false
            }]
        );
        assert_eq!(s.stats().disclosed, 0);
        assert_eq!(s.stats().denied["no_rule"], 1);
        // Announcing it again is the same denial: counted, marked repeated.
        let again = s.announce_due(&issuer, T0 + ANNOUNCE_PERIOD_US);
        assert!(matches!(again[0], Outcome::Denied { repeated: true, .. }));
        assert_eq!(s.stats().denied["no_rule"], 2);
    }

    #[test]
    fn same_fleet_rule_does_not_publish_to_unknown_receivers() {
        let (_, issuer) = fleet();
        let mut s = sharing();
        s.set_policy(policy(SharingRule::AUDIENCE_SAME_FLEET, false, 0), T0)
            .unwrap();
        let out = s.on_changes(new_hazard("h1", 1234.0), &issuer, T0);
        assert!(matches!(
            out[0],
            Outcome::Denied {
                reason: "audience_unknown",
                ..
            }
        ));
    }

    #[test]
    fn queries_are_answered_for_the_queriers_audience_and_tile_only() {
        let (authority, issuer) = fleet();
        let mut s = sharing();
        s.set_policy(policy(SharingRule::AUDIENCE_SAME_FLEET, false, 0), T0)
            .unwrap();
        // Two hazards: x = 1985 lies in tile 1_0 but within reach of 2_0's queries; x = 3500
        // is far from both.
        let _ = s.on_changes(new_hazard("h1", 1985.0), &issuer, T0);
        let _ = s.on_changes(new_hazard("h2", 3500.0), &issuer, T0);
        let name: DataName = "hazards/1_0".parse().unwrap();
        let out = s.answer(&name, Audience::SameFleet, &issuer, T0 + 1);
        assert_eq!(out.len(), 1, "{out:?}");
        let Outcome::Disclosed(d) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(d.name, name);
        assert_eq!(d.audience, Audience::SameFleet);
        assert_eq!(d.hazard_id, "h1");
        let mut verifier =
            Verifier::new("fleet-a", authority.public_key(), VerifierConfig::default()).unwrap();
        verifier.verify(&d.bytes, T0 + 1000).unwrap();
        // A neighbouring tile's query: h1 is a candidate but its name is 1_0: no reply, and
        // nothing counted as a denial.
        let denied_before = s.stats().denied.values().sum::<u64>();
        let next: DataName = "hazards/2_0".parse().unwrap();
        assert!(s
            .answer(&next, Audience::SameFleet, &issuer, T0 + 2)
            .is_empty());
        assert_eq!(s.stats().denied.values().sum::<u64>(), denied_before);
        // Another fleet's twin: refused, recorded once, then as repeats.
        let first = s.answer(&name, Audience::OtherFleet, &issuer, T0 + 3);
        assert_eq!(
            first,
            vec![Outcome::Denied {
                hazard_id: "h1".into(),
                reason: "other_fleet",
                repeated: false
            }]
        );
        let again = s.answer(&name, Audience::OtherFleet, &issuer, T0 + 4);
        assert!(matches!(again[0], Outcome::Denied { repeated: true, .. }));
        // Other categories are not answered.
        let objects: DataName = "objects/1_0".parse().unwrap();
        assert!(s
            .answer(&objects, Audience::SameFleet, &issuer, T0 + 5)
            .is_empty());
        // A hazard resolved...
        let _ = s.on_changes(
            HazardChanges {
                resolved: vec!["h1".into()],
                ..Default::default()
            },
            &issuer,
            T0 + 6,
        );
        // ...then answered as a withdrawal for a while (twins that learned it by query
        // forget it), then not at all.
        let out = s.answer(&name, Audience::SameFleet, &issuer, T0 + 7);
        let [Outcome::Disclosed(d)] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert!(d.withdrawal);
        assert!(s
            .answer(
                &name,
                Audience::SameFleet,
                &issuer,
                T0 + 8 + WITHDRAWN_KEPT_US
            )
            .is_empty());
    }

    #[test]
    fn tiles_between_cover_the_stretch_and_its_margin() {
        let road = Road::straight(20_000.0, 3, 33.3).unwrap();
        let grid = TileGrid::default();
        let tiles = tiles_between(&road, &grid, 1_000.0, 3_000.0, ROUTE_MARGIN_M);
        let names: Vec<String> = tiles.iter().map(|t| t.to_string()).collect();
        for want in ["0_0", "1_0", "2_0", "3_0"] {
            assert!(names.contains(&want.to_string()), "{names:?}");
        }
        assert!(!names.contains(&"4_0".to_string()), "{names:?}");
        assert!(!names.contains(&"5_0".to_string()), "{names:?}");
        // Clamped to the road; nothing for an empty or reversed stretch.
        assert!(tiles_between(&road, &grid, 3_000.0, 1_000.0, 0.0).is_empty());
        assert!(tiles_between(&road, &grid, f64::NAN, 1_000.0, 0.0).is_empty());
        let end = tiles_between(&road, &grid, 19_900.0, 25_000.0, 0.0);
        let end: Vec<String> = end.iter().map(|t| t.to_string()).collect();
        assert_eq!(end, ["19_0", "20_0"], "up to the road's end at x = 20000");
    }

    #[test]
    fn permitted_hazard_is_sealed_coarsened_named_and_verifiable() {
        let (authority, issuer) = fleet();
        let mut s = sharing();
        s.set_policy(policy(SharingRule::AUDIENCE_ANY_TWIN, false, 0), T0)
            .unwrap();
        let out = s.on_changes(new_hazard("h1", 1234.0), &issuer, T0);
        let Outcome::Disclosed(d) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(d.name.to_string(), "hazards/1_0");
        assert!(!d.withdrawal);
        assert_ne!(d.disclosed_id, "h1", "the twin's own id never leaves it");
        let mut verifier =
            Verifier::new("fleet-a", authority.public_key(), VerifierConfig::default()).unwrap();
        let v = verifier.verify(&d.bytes, T0 + 1000).unwrap();
        assert_eq!(v.pseudonym, d.pseudonym);
        assert_eq!(v.observation.disclosure_id, d.disclosure_id);
        let h = &v.observation.hazards[0];
        assert_eq!(h.position.x, 1230.0, "snapped to the 10 m grid");
        assert_eq!(h.incident_id, d.disclosed_id);
    }

    #[test]
    fn resolved_hazard_is_withdrawn_and_announcements_repeat_active_ones() {
        let (authority, issuer) = fleet();
        let mut s = sharing();
        s.set_policy(policy(SharingRule::AUDIENCE_ANY_TWIN, false, 0), T0)
            .unwrap();
        s.on_changes(new_hazard("h1", 100.0), &issuer, T0);
        s.on_changes(new_hazard("h2", 900.0), &issuer, T0);
        assert_eq!(s.active(), 2);
        // Announcements are due a period after the first hazard, and a period apart.
        assert!(s.announce_due(&issuer, T0 + 1).is_empty());
        assert_eq!(s.announce_due(&issuer, T0 + ANNOUNCE_PERIOD_US).len(), 2);
        assert!(s
            .announce_due(&issuer, T0 + ANNOUNCE_PERIOD_US + 1)
            .is_empty());
        let out = s.on_changes(
            HazardChanges {
                resolved: vec!["h1".into()],
                ..Default::default()
            },
            &issuer,
            T0 + 3_000_000,
        );
        let Outcome::Disclosed(d) = &out[0] else {
            panic!("{out:?}")
        };
        assert!(d.withdrawal);
        let mut verifier =
            Verifier::new("fleet-a", authority.public_key(), VerifierConfig::default()).unwrap();
        let v = verifier.verify(&d.bytes, T0 + 3_000_100).unwrap();
        let expires = twinlink_share::time::time_us(&v.observation.hazards[0].expires).unwrap();
        assert!((T0 + 3_000_000..=T0 + 4_000_000).contains(&expires));
        let again = s.announce_due(&issuer, T0 + 2 * ANNOUNCE_PERIOD_US + 3_000_000);
        assert_eq!(again.len(), 1, "only h2 is still announced");
        // Resolving an unknown hazard discloses nothing.
        let none = s.on_changes(
            HazardChanges {
                expired: vec!["never-shared".into()],
                ..Default::default()
            },
            &issuer,
            T0 + 6_000_000,
        );
        assert!(none.is_empty());
    }

    #[test]
    fn expired_grant_stops_disclosure() {
        let (_, issuer) = fleet();
        let mut s = sharing();
        s.set_policy(
            policy(SharingRule::AUDIENCE_ANY_TWIN, false, T0 + 1_000_000),
            T0,
        )
        .unwrap();
        let first = s.on_changes(new_hazard("h1", 100.0), &issuer, T0);
        assert!(matches!(first[0], Outcome::Disclosed(_)));
        let later = s.announce_due(&issuer, T0 + 5_000_000);
        assert_eq!(
            later,
            vec![Outcome::Denied {
                hazard_id: "h1".into(),
                reason: "grant_expired",
                repeated: false
            }]
        );
    }

    #[test]
    fn shared_hazards_are_bounded() {
        let (_, issuer) = fleet();
        let mut s = sharing();
        s.set_policy(policy(SharingRule::AUDIENCE_ANY_TWIN, false, 0), T0)
            .unwrap();
        for i in 0..(MAX_SHARED_HAZARDS + 10) {
            s.on_changes(new_hazard(&format!("h{i}"), 100.0 + i as f64), &issuer, T0);
        }
        assert_eq!(s.active(), MAX_SHARED_HAZARDS);
    }

    #[test]
    fn receiver_takes_hazards_only_when_allowed_and_not_its_own() {
        let (authority, issuer) = fleet();
        let mut sender = sharing();
        sender
            .set_policy(policy(SharingRule::AUDIENCE_ANY_TWIN, false, 0), T0)
            .unwrap();
        let out = sender.on_changes(new_hazard("h1", 100.0), &issuer, T0);
        let Outcome::Disclosed(d) = &out[0] else {
            panic!()
        };
        let mut verifier =
            Verifier::new("fleet-a", authority.public_key(), VerifierConfig::default()).unwrap();
        let v = verifier.verify(&d.bytes, T0 + 10).unwrap();

        let mut receiver = sharing();
        assert_eq!(receiver.accept(&v), Err(Ignored::FetchNotAllowed));
        receiver
            .set_policy(policy(SharingRule::AUDIENCE_NOBODY, true, 0), T0)
            .unwrap();
        assert_eq!(receiver.accept(&v).unwrap().len(), 1);
        assert_eq!(receiver.stats().accepted, 1);
        assert_eq!(receiver.stats().ignored["fetch_not_allowed"], 1);

        // The sender ignores its own disclosure coming back.
        sender
            .set_policy(policy(SharingRule::AUDIENCE_ANY_TWIN, true, 0), T0)
            .unwrap();
        assert_eq!(sender.accept(&v), Err(Ignored::Own));
    }

    #[test]
    fn route_tiles_cover_the_road_and_its_margin() {
        let road = Road::straight(5_000.0, 3, 30.0).unwrap();
        let grid = TileGrid::default();
        let tiles = route_tiles(&road, &grid, 300.0);
        let names: Vec<String> = tiles.iter().map(|t| t.to_string()).collect();
        // x from -300 to 5300, y from -300 to 307: tiles -1..=5 by -1..=0.
        for ix in -1..=5 {
            for iy in -1..=0 {
                assert!(
                    names.contains(&format!("{ix}_{iy}")),
                    "{ix}_{iy} in {names:?}"
                );
            }
        }
        assert_eq!(tiles.len(), 14, "{names:?}");
    }

    #[test]
    fn share_config_needs_the_own_fleets_anchor() {
        let (authority, issuer) = fleet();
        let other = FleetAuthority::new("fleet-b", KeyPair::generate()).unwrap();
        let anchor = |a: &FleetAuthority| TrustAnchor {
            fleet_id: a.fleet_id().into(),
            public_key: a.public_key(),
        };
        let identity = Arc::new(ShareIdentity {
            issuer,
            grid: TileGrid::default(),
        });
        let only_other = ShareConfig {
            identity: identity.clone(),
            anchors: vec![anchor(&other)],
        };
        assert!(only_other
            .verifier()
            .unwrap_err()
            .contains("no trust anchor"));
        let wrong_key = ShareConfig {
            identity: identity.clone(),
            anchors: vec![TrustAnchor {
                fleet_id: "fleet-a".into(),
                public_key: other.public_key(),
            }],
        };
        assert!(wrong_key.verifier().unwrap_err().contains("not certified"));
        let good = ShareConfig {
            identity,
            anchors: vec![anchor(&authority), anchor(&other)],
        };
        assert_eq!(good.verifier().unwrap().own_fleet(), "fleet-a");
    }

    #[test]
    fn a_refused_policy_leaves_default_deny_and_repeats_are_not_passed_on() {
        let (_, issuer) = fleet();
        let mut s = sharing();
        s.set_policy(policy(SharingRule::AUDIENCE_ANY_TWIN, true, 0), T0)
            .unwrap();
        // A grant that expired already is refused, and nothing of the old policy stays.
        assert!(s
            .set_policy(policy(SharingRule::AUDIENCE_ANY_TWIN, true, T0 - 1), T0)
            .is_err());
        assert!(!s.consent().may_fetch_autonomously());
        let out = s.on_changes(new_hazard("h1", 100.0), &issuer, T0);
        assert!(matches!(
            out[0],
            Outcome::Denied {
                reason: "no_rule",
                ..
            }
        ));

        let h = stalled("fleet-a/p/h1", 100.0);
        assert!(s.forward_relayed(&h, false, 10.0), "new");
        assert!(
            !s.forward_relayed(&h, false, 12.0),
            "an announcement of the same"
        );
        let mut moved = h.clone();
        moved.position.x += 10.0;
        assert!(s.forward_relayed(&moved, false, 13.0), "moved");
        assert!(s.forward_relayed(&moved, true, 14.0), "withdrawn");
        assert!(
            s.forward_relayed(&moved, true, 14.0 + RELAY_REFRESH_S),
            "refreshed"
        );
    }

    #[test]
    fn narrowing_the_policy_rotates_the_pseudonym() {
        let (_, issuer) = fleet();
        let mut s = sharing();
        s.set_policy(policy(SharingRule::AUDIENCE_ANY_TWIN, false, 0), T0)
            .unwrap();
        let a = s.on_changes(new_hazard("h1", 100.0), &issuer, T0);
        s.set_policy(policy(SharingRule::AUDIENCE_SAME_FLEET, false, 0), T0 + 1)
            .unwrap();
        s.set_policy(policy(SharingRule::AUDIENCE_ANY_TWIN, false, 0), T0 + 2)
            .unwrap();
        let b = s.on_changes(new_hazard("h2", 200.0), &issuer, T0 + 3);
        let (Outcome::Disclosed(a), Outcome::Disclosed(b)) = (&a[0], &b[0]) else {
            panic!()
        };
        assert_ne!(a.pseudonym, b.pseudonym);
    }
}
