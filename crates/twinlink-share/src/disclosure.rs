//! The signed envelope of a disclosure, and its verification by the receiver.
//!
//! [`seal`] turns a coarsened `SharedObservation` into a [`Disclosure`]: it sets
//! `origin_pseudonym` and a `disclosure_id` (1, 2, … per pseudonym), and signs, with the
//! pseudonym key, the label `"twinlink-share/disclosure/v1\0"` followed by the observation's
//! CDR encoding with `signature` empty (the label keeps a disclosure signature from being
//! taken for any other statement made with the same key). The envelope carries the
//! certificate chain along:
//!
//! | bytes | content |
//! |---|---|
//! | 1 | envelope version, [`ENVELOPE_VERSION`] |
//! | 2 | length `C` of the chain, u16 little-endian, at most [`MAX_CHAIN_BYTES`] |
//! | C | [`CertificateChain`], postcard |
//! | 4 | length `N` of the observation, u32 little-endian |
//! | N | `SharedObservation`, ROS 2 CDR (encapsulation header + little-endian CDR), signature included |
//!
//! Nothing may follow; the whole envelope is at most [`MAX_DISCLOSURE_BYTES`]. Both the
//! chain and the observation must be in their canonical encoding (what this crate writes),
//! so one signed content has exactly one envelope.
//!
//! A [`Verifier`] checks, in order: envelope ([`Rejection::Malformed`]), signature present
//! (`Unsigned`), the issuer's fleet is trusted (`UnknownAuthority`), the authority signed the
//! issuer certificate (`ChainBroken`), it is valid now (`CertificateExpired` /
//! `CertificateNotYetValid`), the issuer signed the pseudonym certificate (`ChainBroken`), it
//! is valid now, the observation's origin is the certificate's pseudonym
//! (`PseudonymMismatch`), the pseudonym key signed the observation (`BadSignature`), the
//! observation is well-formed (`Malformed`), not from the future (`FromTheFuture`) nor too
//! old (`Stale`), and only then records it in the [`ReplayGuard`] (`Replayed`), so that
//! nothing unauthenticated changes the verifier's state.
//!
//! Queries use the same chain: a querying twin signs a [`Query`] for a data name with its
//! credential, and the answering twin verifies it ([`Verifier::verify_query`]) to learn the
//! querier's [`Audience`] before it asks its consent.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use twinlink_msgs::codec::{self, DecodeLimits};
use twinlink_msgs::twin_msgs::msg::SharedObservation;

use crate::coarsen::{coarsen, CoarsenError};
use crate::identity::{
    check_fleet_id, CertificateChain, IdentityError, PseudonymCredential, PseudonymIssuer,
    PublicKey, Rotation, Signature, Validity,
};
use crate::policy::{Audience, Consent, Decision, DenyReason};
use crate::tile::{Category, DataName, TileGrid};
use crate::time::{time_us, US_PER_S};

/// The envelope version this crate writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;

/// Largest envelope accepted or produced: 1 MiB (several thousand objects).
pub const MAX_DISCLOSURE_BYTES: usize = 1 << 20;

/// Largest certificate chain in an envelope (bytes); a real one is about 250.
pub const MAX_CHAIN_BYTES: usize = 1024;

/// Largest signed query (bytes).
pub const MAX_QUERY_BYTES: usize = 2048;

const DISCLOSURE_LABEL: &[u8] = b"twinlink-share/disclosure/v1\0";
const QUERY_LABEL: &str = "twinlink-share/query/v1";

/// Why an envelope could not be read or written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EnvelopeError {
    /// No bytes at all.
    #[error("empty envelope")]
    Empty,
    /// More than [`MAX_DISCLOSURE_BYTES`] (or [`MAX_QUERY_BYTES`]).
    #[error("envelope of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The version byte is not [`ENVELOPE_VERSION`].
    #[error("envelope version {0} is not supported (expected {ENVELOPE_VERSION})")]
    UnknownVersion(u8),
    /// The bytes end inside a field.
    #[error("truncated: the envelope ends inside {0}")]
    Truncated(&'static str),
    /// The chain length exceeds [`MAX_CHAIN_BYTES`].
    #[error("certificate chain of {0} bytes exceeds the {MAX_CHAIN_BYTES}-byte limit")]
    ChainTooLarge(usize),
    /// The chain does not decode.
    #[error("certificate chain: {0}")]
    Chain(IdentityError),
    /// The observation does not decode or encode.
    #[error("observation: {0}")]
    Observation(String),
    /// A signed query does not decode.
    #[error("query: {0}")]
    Query(String),
    /// A part is not in its canonical encoding.
    #[error("{0} is not in canonical encoding")]
    NotCanonical(&'static str),
    /// Bytes follow the observation.
    #[error("{0} bytes after the end of the envelope")]
    TrailingBytes(usize),
}

/// A sealed observation with the chain that proves its origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Disclosure {
    /// Pseudonym and issuer certificates.
    pub chain: CertificateChain,
    /// The observation, with `origin_pseudonym`, `disclosure_id` and `signature` set.
    pub observation: SharedObservation,
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], EnvelopeError> {
        if self.bytes.len() < n {
            return Err(EnvelopeError::Truncated(what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
}

fn encode_observation(observation: &SharedObservation) -> Result<Vec<u8>, EnvelopeError> {
    codec::encode(observation).map_err(|e| EnvelopeError::Observation(e.to_string()))
}

impl Disclosure {
    /// The origin pseudonym.
    pub fn pseudonym(&self) -> &str {
        &self.observation.origin_pseudonym
    }

    /// The disclosure id.
    pub fn disclosure_id(&self) -> u64 {
        self.observation.disclosure_id
    }

    /// The envelope (see the module documentation for the layout).
    pub fn to_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        let chain = self.chain.to_bytes();
        if chain.len() > MAX_CHAIN_BYTES {
            return Err(EnvelopeError::ChainTooLarge(chain.len()));
        }
        let observation = encode_observation(&self.observation)?;
        let len = 1 + 2 + chain.len() + 4 + observation.len();
        if len > MAX_DISCLOSURE_BYTES {
            return Err(EnvelopeError::TooLarge {
                len,
                max: MAX_DISCLOSURE_BYTES,
            });
        }
        let mut out = Vec::with_capacity(len);
        out.push(ENVELOPE_VERSION);
        out.extend_from_slice(&(chain.len() as u16).to_le_bytes());
        out.extend_from_slice(&chain);
        out.extend_from_slice(&(observation.len() as u32).to_le_bytes());
        out.extend_from_slice(&observation);
        Ok(out)
    }

    /// Reads an envelope; checks its structure and encodings, not its signatures.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.is_empty() {
            return Err(EnvelopeError::Empty);
        }
        if bytes.len() > MAX_DISCLOSURE_BYTES {
            return Err(EnvelopeError::TooLarge {
                len: bytes.len(),
                max: MAX_DISCLOSURE_BYTES,
            });
        }
        let mut r = Reader { bytes };
        let version = r.take(1, "the version")?[0];
        if version != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnknownVersion(version));
        }
        let c = r.take(2, "the chain length")?;
        let chain_len = usize::from(u16::from_le_bytes([c[0], c[1]]));
        if chain_len > MAX_CHAIN_BYTES {
            return Err(EnvelopeError::ChainTooLarge(chain_len));
        }
        let chain_bytes = r.take(chain_len, "the certificate chain")?;
        let chain = CertificateChain::from_bytes(chain_bytes).map_err(EnvelopeError::Chain)?;
        if chain.to_bytes() != chain_bytes {
            return Err(EnvelopeError::NotCanonical("the certificate chain"));
        }
        let n = r.take(4, "the observation length")?;
        let obs_len = u32::from_le_bytes([n[0], n[1], n[2], n[3]]) as usize;
        let obs_bytes = r.take(obs_len, "the observation")?;
        if !r.bytes.is_empty() {
            return Err(EnvelopeError::TrailingBytes(r.bytes.len()));
        }
        let limits = DecodeLimits {
            max_message_bytes: MAX_DISCLOSURE_BYTES,
        };
        let observation: SharedObservation = codec::decode_with_limits(obs_bytes, &limits)
            .map_err(|e| EnvelopeError::Observation(e.to_string()))?;
        if encode_observation(&observation)? != obs_bytes {
            return Err(EnvelopeError::NotCanonical("the observation"));
        }
        Ok(Self { chain, observation })
    }
}

/// The bytes a disclosure signature covers: label, then the CDR encoding of the observation
/// with `signature` empty.
pub fn signed_bytes(observation: &SharedObservation) -> Result<Vec<u8>, EnvelopeError> {
    let mut unsigned = observation.clone();
    unsigned.signature = Vec::new();
    let mut out = DISCLOSURE_LABEL.to_vec();
    codec::encode_into(&unsigned, &mut out)
        .map_err(|e| EnvelopeError::Observation(e.to_string()))?;
    Ok(out)
}

/// Seals `observation` (already coarsened) with `credential`: sets `origin_pseudonym` and
/// the next `disclosure_id`, signs, and attaches the credential's chain. Fails only if the
/// observation cannot be encoded or the envelope would exceed [`MAX_DISCLOSURE_BYTES`]; no
/// disclosure id is used up then.
pub fn seal(
    mut observation: SharedObservation,
    credential: &mut PseudonymCredential,
) -> Result<Disclosure, EnvelopeError> {
    observation.origin_pseudonym = credential.pseudonym().to_string();
    observation.signature = Vec::new();
    let mut disclosure = Disclosure {
        chain: credential.chain().clone(),
        observation,
    };
    // Size and encodability first (the signature adds a fixed 64 bytes).
    let len = disclosure.to_bytes()?.len() + 64;
    if len > MAX_DISCLOSURE_BYTES {
        return Err(EnvelopeError::TooLarge {
            len,
            max: MAX_DISCLOSURE_BYTES,
        });
    }
    disclosure.observation.disclosure_id = credential.next_disclosure_id();
    let signature = credential.sign(&signed_bytes(&disclosure.observation)?);
    disclosure.observation.signature = signature.0.to_vec();
    Ok(disclosure)
}

/// Why a verifier refused a disclosure or query. Every refusal is a value, never a panic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    /// The bytes are not a well-formed envelope or observation.
    #[error("malformed: {0}")]
    Malformed(String),
    /// The signature field is empty.
    #[error("the observation is not signed")]
    Unsigned,
    /// The signature is not the pseudonym key's over this observation.
    #[error("the signature does not verify")]
    BadSignature,
    /// The issuer's fleet is not in the trust list.
    #[error("fleet {0:?} is not trusted")]
    UnknownAuthority(String),
    /// A certificate is not signed by the key above it.
    #[error("the {0} is not signed by the key above it")]
    ChainBroken(&'static str),
    /// A certificate has expired.
    #[error("the {0} has expired")]
    CertificateExpired(&'static str),
    /// A certificate is not valid yet.
    #[error("the {0} is not valid yet")]
    CertificateNotYetValid(&'static str),
    /// `origin_pseudonym` is not the certificate's pseudonym.
    #[error("origin {claimed:?} differs from the certificate's pseudonym {certified:?}")]
    PseudonymMismatch {
        /// What the observation says.
        claimed: String,
        /// What the certificate says.
        certified: String,
    },
    /// This disclosure id of this pseudonym was seen before, or is too old to tell.
    #[error("disclosure {id} of {pseudonym} was already received or is too old")]
    Replayed {
        /// The pseudonym.
        pseudonym: String,
        /// The disclosure (or query) id.
        id: u64,
    },
    /// The observation is older than the verifier's bound.
    #[error("the observation is {age_s:.1} s old, more than {max_s:.1} s")]
    Stale {
        /// Its age (s).
        age_s: f64,
        /// The bound (s).
        max_s: f64,
    },
    /// The observation's stamp is ahead of the clock by more than the allowed skew.
    #[error("the observation is stamped {ahead_s:.3} s in the future")]
    FromTheFuture {
        /// How far ahead (s).
        ahead_s: f64,
    },
}

impl Rejection {
    /// A short, stable name for logs and metrics labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Unsigned => "unsigned",
            Self::BadSignature => "bad_signature",
            Self::UnknownAuthority(_) => "unknown_authority",
            Self::ChainBroken(_) => "chain_broken",
            Self::CertificateExpired(_) => "certificate_expired",
            Self::CertificateNotYetValid(_) => "certificate_not_yet_valid",
            Self::PseudonymMismatch { .. } => "pseudonym_mismatch",
            Self::Replayed { .. } => "replayed",
            Self::Stale { .. } => "stale",
            Self::FromTheFuture { .. } => "from_the_future",
        }
    }
}

impl From<EnvelopeError> for Rejection {
    fn from(e: EnvelopeError) -> Self {
        Rejection::Malformed(e.to_string())
    }
}

/// Who is behind a verified chain, as far as the receiver may know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The fleet of the issuing authority.
    pub fleet_id: String,
    /// [`Audience::SameFleet`] if that is the receiver's fleet, else [`Audience::OtherFleet`].
    pub audience: Audience,
    /// The pseudonym (unique within its fleet; tell origins apart by fleet and pseudonym).
    pub pseudonym: String,
    /// The pseudonym's certified public key.
    pub public_key: PublicKey,
    /// End of the pseudonym certificate's validity (µs).
    pub valid_until_us: u64,
}

/// A disclosure that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The observation as disclosed (signature included, for audit).
    pub observation: SharedObservation,
    /// The fleet of the issuing authority.
    pub fleet_id: String,
    /// How the sender relates to the receiver: SameFleet or OtherFleet.
    pub audience: Audience,
    /// The sender's pseudonym.
    pub pseudonym: String,
}

/// How many ids below the highest a [`ReplayGuard`] tracks per pseudonym.
pub const REPLAY_WINDOW: u64 = 128;

/// Default number of pseudonyms a [`ReplayGuard`] remembers.
pub const DEFAULT_MAX_PSEUDONYMS: usize = 65_536;

#[derive(Debug, Clone)]
struct ReplayEntry {
    /// Highest id seen.
    highest: u64,
    /// Bit i set: id `highest - i` seen.
    window: u128,
}

/// Remembers, per pseudonym, the highest disclosure id and which of the
/// [`REPLAY_WINDOW`] ids below it were seen (a sliding bitmap as in IPsec's anti-replay).
/// An id seen before, or further below the highest than the window, is a replay.
///
/// Pseudonyms are told apart by their certified public key, not their name: a name is
/// unique only within its issuer, and a key cannot be claimed without the secret that signs
/// (so a malicious issuer cannot exhaust another twin's ids by reusing its name).
///
/// Memory is bounded: at most `max_pseudonyms` entries of a few dozen bytes. Entries go
/// when their pseudonym certificate has expired (its disclosures fail verification from
/// then on anyway). When the guard is full of live pseudonyms, the one whose certificate
/// ends soonest is evicted and counted in [`ReplayGuard::forced_evictions`]; replays of
/// that pseudonym are then caught only by the staleness bound.
#[derive(Debug, Clone)]
pub struct ReplayGuard {
    max_pseudonyms: usize,
    entries: HashMap<PublicKey, ReplayEntry>,
    by_expiry: BTreeSet<(u64, PublicKey)>,
    forced_evictions: u64,
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PSEUDONYMS)
    }
}

impl ReplayGuard {
    /// A guard remembering at most `max_pseudonyms` pseudonyms (at least 1).
    pub fn new(max_pseudonyms: usize) -> Self {
        Self {
            max_pseudonyms: max_pseudonyms.max(1),
            entries: HashMap::new(),
            by_expiry: BTreeSet::new(),
            forced_evictions: 0,
        }
    }

    /// Pseudonyms remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if no pseudonym is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How often a live pseudonym had to be forgotten because the guard was full.
    pub fn forced_evictions(&self) -> u64 {
        self.forced_evictions
    }

    /// Forgets pseudonyms whose entries expired by `now_us`; returns how many.
    pub fn purge(&mut self, now_us: u64) -> usize {
        let mut n = 0;
        while let Some((expires, _)) = self.by_expiry.first() {
            if *expires > now_us {
                break;
            }
            if let Some((_, key)) = self.by_expiry.pop_first() {
                self.entries.remove(&key);
                n += 1;
            }
        }
        n
    }

    /// Records id `id` of the pseudonym with certified key `pseudonym_key` (remembered until
    /// `expires_us`) and returns true if it is new, false if it is a replay.
    pub fn check_and_record(
        &mut self,
        pseudonym_key: &PublicKey,
        id: u64,
        expires_us: u64,
        now_us: u64,
    ) -> bool {
        if let Some(entry) = self.entries.get_mut(pseudonym_key) {
            if id > entry.highest {
                let shift = id - entry.highest;
                entry.window = if shift >= 128 {
                    0
                } else {
                    entry.window << shift
                } | 1;
                entry.highest = id;
                return true;
            }
            let back = entry.highest - id;
            if back >= REPLAY_WINDOW || entry.window & (1u128 << back) != 0 {
                return false;
            }
            entry.window |= 1u128 << back;
            return true;
        }
        if self.entries.len() >= self.max_pseudonyms {
            self.purge(now_us);
        }
        if self.entries.len() >= self.max_pseudonyms {
            if let Some((_, evicted)) = self.by_expiry.pop_first() {
                self.entries.remove(&evicted);
                self.forced_evictions += 1;
            }
        }
        self.entries.insert(
            *pseudonym_key,
            ReplayEntry {
                highest: id,
                window: 1,
            },
        );
        self.by_expiry.insert((expires_us, *pseudonym_key));
        true
    }
}

/// Settings of a [`Verifier`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifierConfig {
    /// Allowed clock difference for certificate validity and future stamps (µs).
    pub max_clock_skew_us: u64,
    /// Observations older than this are refused as [`Rejection::Stale`] (µs). Coarsened
    /// stamps are rounded down to the second, so allow a second more than the senders'
    /// `max_age`.
    pub max_age_us: u64,
    /// Queries stamped further from now than this are refused as stale or from the future
    /// (µs).
    pub max_query_age_us: u64,
    /// Pseudonyms the replay guard remembers at most.
    pub max_pseudonyms: usize,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        Self {
            max_clock_skew_us: 2 * US_PER_S,
            max_age_us: 120 * US_PER_S,
            max_query_age_us: 10 * US_PER_S,
            max_pseudonyms: DEFAULT_MAX_PSEUDONYMS,
        }
    }
}

/// Checks disclosures (and queries) from other twins against a trust list.
#[derive(Debug, Clone)]
pub struct Verifier {
    own_fleet: String,
    trust: HashMap<String, PublicKey>,
    config: VerifierConfig,
    replay: ReplayGuard,
}

impl Verifier {
    /// A verifier for a twin of `own_fleet`, trusting that fleet's `own_authority`.
    pub fn new(
        own_fleet: &str,
        own_authority: PublicKey,
        config: VerifierConfig,
    ) -> Result<Self, IdentityError> {
        check_fleet_id(own_fleet)?;
        let mut trust = HashMap::new();
        trust.insert(own_fleet.to_string(), own_authority);
        Ok(Self {
            own_fleet: own_fleet.to_string(),
            trust,
            config,
            replay: ReplayGuard::new(config.max_pseudonyms),
        })
    }

    /// Trusts `authority` for `fleet_id` (replacing an earlier key for it).
    pub fn trust(&mut self, fleet_id: &str, authority: PublicKey) -> Result<(), IdentityError> {
        check_fleet_id(fleet_id)?;
        self.trust.insert(fleet_id.to_string(), authority);
        Ok(())
    }

    /// Stops trusting `fleet_id`; returns whether it was trusted.
    pub fn distrust(&mut self, fleet_id: &str) -> bool {
        self.trust.remove(fleet_id).is_some()
    }

    /// The receiver's fleet.
    pub fn own_fleet(&self) -> &str {
        &self.own_fleet
    }

    /// The settings.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// The replay guard (for metrics).
    pub fn replay_guard(&self) -> &ReplayGuard {
        &self.replay
    }

    /// Forgets pseudonyms whose certificates expired; call now and then (it also happens
    /// when the guard is full).
    pub fn purge(&mut self, now_us: u64) -> usize {
        self.replay.purge(now_us)
    }

    /// Checks a chain at `now_us`: trusted fleet, both signatures, both validity windows.
    pub fn verify_chain(&self, chain: &CertificateChain, now_us: u64) -> Result<Origin, Rejection> {
        let skew = self.config.max_clock_skew_us;
        let issuer = &chain.issuer;
        let authority = self
            .trust
            .get(&issuer.fleet_id)
            .ok_or_else(|| Rejection::UnknownAuthority(issuer.fleet_id.clone()))?;
        if !issuer.is_signed_by(authority) {
            return Err(Rejection::ChainBroken("issuer certificate"));
        }
        check_validity(issuer.validity(now_us, skew), "issuer certificate")?;
        let pseudonym = &chain.pseudonym;
        if !pseudonym.is_signed_by(&issuer.issuer_key) {
            return Err(Rejection::ChainBroken("pseudonym certificate"));
        }
        check_validity(pseudonym.validity(now_us, skew), "pseudonym certificate")?;
        Ok(Origin {
            fleet_id: issuer.fleet_id.clone(),
            audience: if issuer.fleet_id == self.own_fleet {
                Audience::SameFleet
            } else {
                Audience::OtherFleet
            },
            pseudonym: pseudonym.pseudonym.clone(),
            public_key: pseudonym.public_key,
            valid_until_us: pseudonym.valid_until_us,
        })
    }

    /// Reads and verifies an envelope received at `now_us`.
    pub fn verify(&mut self, bytes: &[u8], now_us: u64) -> Result<Verified, Rejection> {
        let disclosure = Disclosure::from_bytes(bytes)?;
        self.verify_disclosure(disclosure, now_us)
    }

    /// Verifies a decoded disclosure received at `now_us` (see the module documentation for
    /// the order of the checks).
    pub fn verify_disclosure(
        &mut self,
        disclosure: Disclosure,
        now_us: u64,
    ) -> Result<Verified, Rejection> {
        let Disclosure { chain, observation } = disclosure;
        if observation.signature.is_empty() {
            return Err(Rejection::Unsigned);
        }
        let origin = self.verify_chain(&chain, now_us)?;
        if observation.origin_pseudonym != origin.pseudonym {
            return Err(Rejection::PseudonymMismatch {
                claimed: observation.origin_pseudonym.clone(),
                certified: origin.pseudonym,
            });
        }
        let signature = <[u8; 64]>::try_from(observation.signature.as_slice())
            .map_err(|_| Rejection::BadSignature)?;
        if !chain
            .pseudonym
            .public_key
            .verifies(&signed_bytes(&observation)?, &Signature(signature))
        {
            return Err(Rejection::BadSignature);
        }
        if Category::from_u8(observation.category).is_none() {
            return Err(Rejection::Malformed(format!(
                "category {} is not a SharedObservation category",
                observation.category
            )));
        }
        if observation.header.frame_id != "map" {
            return Err(Rejection::Malformed(format!(
                "header.frame_id is {:?}, not \"map\"",
                observation.header.frame_id
            )));
        }
        let stamp = time_us(&observation.header.stamp)
            .ok_or_else(|| Rejection::Malformed("header.stamp is not a valid time".into()))?;
        self.check_time(stamp, self.config.max_age_us, now_us)?;
        self.record(&origin, observation.disclosure_id, now_us)?;
        Ok(Verified {
            observation,
            fleet_id: origin.fleet_id,
            audience: origin.audience,
            pseudonym: origin.pseudonym,
        })
    }

    /// Reads and verifies a signed query received at `now_us`; returns who asks.
    pub fn verify_query(
        &mut self,
        bytes: &[u8],
        now_us: u64,
    ) -> Result<(Query, Origin), Rejection> {
        self.verify_signed_query(SignedQuery::from_bytes(bytes)?, now_us)
    }

    /// Verifies a decoded signed query received at `now_us` (for a caller that read it
    /// already, e.g. to check its name first); returns who asks.
    pub fn verify_signed_query(
        &mut self,
        signed: SignedQuery,
        now_us: u64,
    ) -> Result<(Query, Origin), Rejection> {
        if signed.query.data_name().is_none() {
            return Err(Rejection::Malformed(format!(
                "{:?} is not a data name",
                signed.query.name
            )));
        }
        let origin = self.verify_chain(&signed.chain, now_us)?;
        if !signed
            .chain
            .pseudonym
            .public_key
            .verifies(&signed.query.signed_bytes(), &signed.signature)
        {
            return Err(Rejection::BadSignature);
        }
        self.check_time(signed.query.stamp_us, self.config.max_query_age_us, now_us)?;
        self.record(&origin, signed.query.id, now_us)?;
        Ok((signed.query, origin))
    }

    fn check_time(&self, stamp_us: u64, max_age_us: u64, now_us: u64) -> Result<(), Rejection> {
        let skew = self.config.max_clock_skew_us;
        if stamp_us > now_us.saturating_add(skew) {
            return Err(Rejection::FromTheFuture {
                ahead_s: (stamp_us - now_us) as f64 / US_PER_S as f64,
            });
        }
        let age = now_us.saturating_sub(stamp_us);
        if age > max_age_us {
            return Err(Rejection::Stale {
                age_s: age as f64 / US_PER_S as f64,
                max_s: max_age_us as f64 / US_PER_S as f64,
            });
        }
        Ok(())
    }

    fn record(&mut self, origin: &Origin, id: u64, now_us: u64) -> Result<(), Rejection> {
        let expires = origin
            .valid_until_us
            .saturating_add(self.config.max_clock_skew_us);
        if self
            .replay
            .check_and_record(&origin.public_key, id, expires, now_us)
        {
            Ok(())
        } else {
            Err(Rejection::Replayed {
                pseudonym: origin.pseudonym.clone(),
                id,
            })
        }
    }
}

fn check_validity(validity: Validity, which: &'static str) -> Result<(), Rejection> {
    match validity {
        Validity::Valid => Ok(()),
        Validity::Expired => Err(Rejection::CertificateExpired(which)),
        Validity::NotYetValid => Err(Rejection::CertificateNotYetValid(which)),
    }
}

/// A twin's request for data by name, e.g. hazards in one tile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// What is asked for, as `"<category>/<tile>"` ([`DataName`]).
    pub name: String,
    /// When the query was made (µs since the epoch).
    pub stamp_us: u64,
    /// The querier's next id from its credential (shared with its disclosure ids), for replay
    /// protection.
    pub id: u64,
}

#[derive(Serialize)]
struct QueryTbs<'a> {
    label: &'a str,
    query: &'a Query,
}

impl Query {
    /// The bytes the querier signs.
    pub fn signed_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(&QueryTbs {
            label: QUERY_LABEL,
            query: self,
        })
        .expect("postcard encodes a query")
    }

    /// The data name asked for, if it is one.
    pub fn data_name(&self) -> Option<DataName> {
        self.name.parse().ok()
    }
}

/// A query signed with the querier's pseudonym key, with its chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedQuery {
    /// The query.
    pub query: Query,
    /// The querier's chain.
    pub chain: CertificateChain,
    /// Signature by the pseudonym key over [`Query::signed_bytes`].
    pub signature: Signature,
}

impl SignedQuery {
    /// Signs a query for `name` at `now_us` with `credential`.
    pub fn new(name: DataName, credential: &mut PseudonymCredential, now_us: u64) -> Self {
        let query = Query {
            name: name.to_string(),
            stamp_us: now_us,
            id: credential.next_disclosure_id(),
        };
        let signature = credential.sign(&query.signed_bytes());
        Self {
            query,
            chain: credential.chain().clone(),
            signature,
        }
    }

    /// The encoding: [`ENVELOPE_VERSION`], then postcard.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![ENVELOPE_VERSION];
        out.extend(postcard::to_stdvec(self).expect("postcard encodes a signed query"));
        out
    }

    /// Reads an encoding; checks its structure, not its signatures.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let (&version, body) = bytes.split_first().ok_or(EnvelopeError::Empty)?;
        if bytes.len() > MAX_QUERY_BYTES {
            return Err(EnvelopeError::TooLarge {
                len: bytes.len(),
                max: MAX_QUERY_BYTES,
            });
        }
        if version != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnknownVersion(version));
        }
        let (query, rest): (Self, _) =
            postcard::take_from_bytes(body).map_err(|e| EnvelopeError::Query(e.to_string()))?;
        if !rest.is_empty() {
            return Err(EnvelopeError::TrailingBytes(rest.len()));
        }
        check_fleet_id(&query.chain.issuer.fleet_id).map_err(EnvelopeError::Chain)?;
        crate::identity::check_pseudonym(&query.chain.pseudonym.pseudonym)
            .map_err(EnvelopeError::Chain)?;
        if query.to_bytes() != bytes {
            return Err(EnvelopeError::NotCanonical("the query"));
        }
        Ok(query)
    }
}

/// Why [`Discloser::disclose`] produced nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DiscloseError {
    /// The consent refused.
    #[error("denied: {0}")]
    Denied(DenyReason),
    /// The observation could not be coarsened (too old, malformed).
    #[error(transparent)]
    Coarsen(CoarsenError),
    /// No credential could be issued.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The envelope could not be made.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
}

impl DiscloseError {
    /// A short, stable name for logs and metrics labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Denied(reason) => reason.as_str(),
            Self::Coarsen(e) => e.as_str(),
            Self::Identity(_) => "identity",
            Self::Envelope(_) => "envelope",
        }
    }
}

/// One twin's sharing side: its vehicle's consent, its pseudonym rotation and the tile grid.
///
/// [`Discloser::disclose`] is the whole outbound path: decide, coarsen, seal.
#[derive(Debug, Clone)]
pub struct Discloser {
    /// The vehicle's consent; change it through grant, revoke and set.
    pub consent: Consent,
    /// The twin's pseudonym rotation.
    pub rotation: Rotation,
    /// The grid tile names are built on.
    pub grid: TileGrid,
}

impl Discloser {
    /// A discloser with `consent`, `rotation` and `grid`.
    pub fn new(consent: Consent, rotation: Rotation, grid: TileGrid) -> Self {
        Self {
            consent,
            rotation,
            grid,
        }
    }

    /// Decides, coarsens and seals `observation` for a receiver related as `audience`, at
    /// `now_us`, with a credential from `issuer` (rotated when due). Publish the result
    /// under the name of its (coarsened) `region_tile` and category.
    pub fn disclose(
        &mut self,
        issuer: &PseudonymIssuer,
        observation: &SharedObservation,
        audience: Audience,
        now_us: u64,
    ) -> Result<Disclosure, DiscloseError> {
        let decision = self.consent.decide_for(observation, audience, now_us);
        if let Decision::Deny(reason) = decision {
            return Err(DiscloseError::Denied(reason));
        }
        let credential = self.rotation.current(issuer, now_us)?;
        let coarse = coarsen(
            observation,
            &decision,
            credential.period_key(),
            &self.grid,
            now_us,
        )
        .map_err(|e| match e {
            CoarsenError::Denied(reason) => DiscloseError::Denied(reason),
            other => DiscloseError::Coarsen(other),
        })?;
        Ok(seal(coarse, credential)?)
    }

    /// Signs a query for `name` with the current credential (rotated when due). The consent
    /// does not gate this; check [`Consent::may_fetch_autonomously`] for queries the twin
    /// makes on its own.
    pub fn query(
        &mut self,
        issuer: &PseudonymIssuer,
        name: DataName,
        now_us: u64,
    ) -> Result<SignedQuery, IdentityError> {
        let credential = self.rotation.current(issuer, now_us)?;
        Ok(SignedQuery::new(name, credential, now_us))
    }
}

impl fmt::Display for Disclosure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "disclosure {} of {} ({} in {})",
            self.observation.disclosure_id,
            self.observation.origin_pseudonym,
            crate::tile::category_name(self.observation.category).unwrap_or("?"),
            self.observation.region_tile
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::tests::{fleet, T0};
    use crate::identity::{FleetAuthority, KeyPair, RotationConfig};
    use crate::policy::Consent;
    use crate::tile::TileName;
    use crate::time::ros_time;
    use proptest::prelude::*;
    use twinlink_msgs::geometry_msgs::msg::Point;
    use twinlink_msgs::twin_msgs::msg::{Incident, SharingRule};

    const NOW: u64 = T0 + 3_600 * US_PER_S;

    fn hazard_observation(stamp_us: u64) -> SharedObservation {
        let mut obs = SharedObservation {
            category: SharedObservation::CATEGORY_HAZARDS,
            region_tile: "-2_0".into(),
            position_precision: 20.0,
            ..Default::default()
        };
        obs.header.frame_id = "map".into();
        obs.header.stamp = ros_time(stamp_us);
        obs.hazards.push(Incident {
            incident_id: "0123456789abcdef".into(),
            incident_kind: Incident::INCIDENT_DEBRIS,
            position: Point {
                x: -1240.0,
                y: 980.0,
                z: 0.0,
            },
            segment_id: "seg_42".into(),
            s: 120.0,
            confidence: 0.9,
            ..Default::default()
        });
        obs
    }

    struct World {
        authority: FleetAuthority,
        issuer: PseudonymIssuer,
        credential: PseudonymCredential,
    }

    fn world() -> World {
        let (authority, issuer) = fleet("fleet-a");
        let credential = issuer
            .issue(NOW - 60 * US_PER_S, NOW + 300 * US_PER_S)
            .unwrap();
        World {
            authority,
            issuer,
            credential,
        }
    }

    fn verifier(w: &World) -> Verifier {
        Verifier::new(
            "fleet-a",
            w.authority.public_key(),
            VerifierConfig::default(),
        )
        .unwrap()
    }

    fn sealed(w: &mut World) -> Vec<u8> {
        seal(hazard_observation(NOW), &mut w.credential)
            .unwrap()
            .to_bytes()
            .unwrap()
    }

    fn find(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("needle present")
    }

    #[test]
    fn seal_and_verify_round_trip() {
        let mut w = world();
        let disclosure = seal(hazard_observation(NOW), &mut w.credential).unwrap();
        assert_eq!(disclosure.pseudonym(), w.credential.pseudonym());
        assert_eq!(disclosure.disclosure_id(), 1);
        assert_eq!(disclosure.observation.signature.len(), 64);
        assert!(disclosure.to_string().contains("hazards in -2_0"));
        let bytes = disclosure.to_bytes().unwrap();
        assert_eq!(bytes[0], ENVELOPE_VERSION);
        assert_eq!(Disclosure::from_bytes(&bytes).unwrap(), disclosure);
        let mut v = verifier(&w);
        let ok = v.verify(&bytes, NOW + 500_000).unwrap();
        assert_eq!(ok.observation, disclosure.observation);
        assert_eq!(ok.fleet_id, "fleet-a");
        assert_eq!(ok.audience, Audience::SameFleet);
        assert_eq!(ok.pseudonym, w.credential.pseudonym());
        let second = sealed(&mut w);
        assert!(v.verify(&second, NOW).is_ok());
        // A twin of another fleet that trusts fleet-a sees an OtherFleet sender.
        let (b_authority, _) = fleet("fleet-b");
        let mut other = Verifier::new(
            "fleet-b",
            b_authority.public_key(),
            VerifierConfig::default(),
        )
        .unwrap();
        other.trust("fleet-a", w.authority.public_key()).unwrap();
        assert_eq!(
            other.verify(&bytes, NOW).unwrap().audience,
            Audience::OtherFleet
        );
        assert!(other.distrust("fleet-a"));
        assert_eq!(
            other.verify(&second, NOW).unwrap_err(),
            Rejection::UnknownAuthority("fleet-a".into())
        );
    }

    #[test]
    fn one_changed_byte_in_the_observation_breaks_the_signature() {
        let mut w = world();
        let mut bytes = sealed(&mut w);
        let at = find(&bytes, b"seg_42");
        bytes[at + 4] = b'3';
        let e = verifier(&w).verify(&bytes, NOW).unwrap_err();
        assert_eq!(e, Rejection::BadSignature);
        assert_eq!(e.as_str(), "bad_signature");
    }

    #[test]
    fn one_changed_byte_in_the_signature_is_a_bad_signature() {
        let mut w = world();
        let mut bytes = sealed(&mut w);
        let n = bytes.len();
        bytes[n - 1] ^= 0x01;
        assert_eq!(
            verifier(&w).verify(&bytes, NOW).unwrap_err(),
            Rejection::BadSignature
        );
        bytes[n - 1] ^= 0x01;
        bytes[n - 40] ^= 0x80;
        assert_eq!(
            verifier(&w).verify(&bytes, NOW).unwrap_err(),
            Rejection::BadSignature
        );
    }

    #[test]
    fn one_changed_byte_in_a_certificate_breaks_the_chain() {
        let mut w = world();
        let bytes = sealed(&mut w);
        let chain = w.credential.chain().clone();
        let pseudonym_key = find(&bytes, &chain.pseudonym.public_key.0);
        let mut forged = bytes.clone();
        forged[pseudonym_key + 7] ^= 0x10;
        assert_eq!(
            verifier(&w).verify(&forged, NOW).unwrap_err(),
            Rejection::ChainBroken("pseudonym certificate")
        );
        let issuer_key = find(&bytes, &chain.issuer.issuer_key.0);
        let mut forged = bytes.clone();
        forged[issuer_key + 3] ^= 0x01;
        assert_eq!(
            verifier(&w).verify(&forged, NOW).unwrap_err(),
            Rejection::ChainBroken("issuer certificate")
        );
        // The pseudonym itself, in the certificate only: the chain breaks first.
        let name = find(&bytes, chain.pseudonym.pseudonym.as_bytes());
        let mut forged = bytes.clone();
        forged[name] = if forged[name] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            verifier(&w).verify(&forged, NOW).unwrap_err(),
            Rejection::ChainBroken("pseudonym certificate")
        );
    }

    #[test]
    fn unsigned_disclosures_are_refused() {
        let mut w = world();
        let mut d = seal(hazard_observation(NOW), &mut w.credential).unwrap();
        d.observation.signature.clear();
        let bytes = d.to_bytes().unwrap();
        let e = verifier(&w).verify(&bytes, NOW).unwrap_err();
        assert_eq!(e, Rejection::Unsigned);
        d.observation.signature = vec![1; 63];
        assert_eq!(
            verifier(&w).verify_disclosure(d, NOW).unwrap_err(),
            Rejection::BadSignature
        );
    }

    #[test]
    fn replays_are_refused() {
        let mut w = world();
        let mut v = verifier(&w);
        let all: Vec<Vec<u8>> = (0..200).map(|_| sealed(&mut w)).collect();
        // Same bytes twice.
        assert!(v.verify(&all[0], NOW).is_ok());
        assert_eq!(v.verify(&all[0], NOW).unwrap_err().as_str(), "replayed");
        // Out of order within the window is fine, once.
        assert!(v.verify(&all[199], NOW).is_ok());
        assert!(v.verify(&all[150], NOW).is_ok());
        assert!(matches!(
            v.verify(&all[150], NOW),
            Err(Rejection::Replayed { id: 151, .. })
        ));
        // An older id after a newer one, outside the window: refused even if never seen.
        assert!(matches!(
            v.verify(&all[5], NOW),
            Err(Rejection::Replayed { id: 6, .. })
        ));
        assert_eq!(v.replay_guard().len(), 1);
    }

    #[test]
    fn foreign_and_impostor_authorities_are_refused() {
        let (_, issuer_b) = fleet("fleet-b");
        let mut cred_b = issuer_b.issue(NOW - 1, NOW + 60 * US_PER_S).unwrap();
        let bytes = seal(hazard_observation(NOW), &mut cred_b)
            .unwrap()
            .to_bytes()
            .unwrap();
        let w = world();
        let e = verifier(&w).verify(&bytes, NOW).unwrap_err();
        assert_eq!(e, Rejection::UnknownAuthority("fleet-b".into()));
        assert_eq!(e.as_str(), "unknown_authority");
        // An authority that calls itself fleet-a with its own key.
        let (_, impostor) = fleet("fleet-a");
        let mut cred = impostor.issue(NOW - 1, NOW + 60 * US_PER_S).unwrap();
        let bytes = seal(hazard_observation(NOW), &mut cred)
            .unwrap()
            .to_bytes()
            .unwrap();
        assert_eq!(
            verifier(&w).verify(&bytes, NOW).unwrap_err(),
            Rejection::ChainBroken("issuer certificate")
        );
    }

    #[test]
    fn a_pseudonym_name_reused_by_another_issuer_cannot_exhaust_its_ids() {
        let mut w = world();
        let victim = w.credential.pseudonym().to_string();
        // A trusted but malicious fleet-b issuer certifies its own key under the victim's name
        // and sends the highest possible id.
        let authority_b = FleetAuthority::new("fleet-b", KeyPair::generate()).unwrap();
        let issuer_key = KeyPair::generate();
        let issuer = authority_b
            .certify(issuer_key.public_key(), T0, T0 + 86_400 * US_PER_S)
            .unwrap();
        let twin_key = KeyPair::generate();
        let mut pseudonym = crate::identity::PseudonymCertificate {
            pseudonym: victim.clone(),
            public_key: twin_key.public_key(),
            valid_from_us: NOW - 1,
            valid_until_us: NOW + 60 * US_PER_S,
            signature: Signature([0; 64]),
        };
        pseudonym.signature = issuer_key.sign(&pseudonym.signed_bytes());
        let mut obs = hazard_observation(NOW);
        obs.origin_pseudonym = victim.clone();
        obs.disclosure_id = u64::MAX;
        obs.signature = twin_key.sign(&signed_bytes(&obs).unwrap()).0.to_vec();
        let evil = Disclosure {
            chain: CertificateChain { pseudonym, issuer },
            observation: obs,
        };
        let mut v = verifier(&w);
        v.trust("fleet-b", authority_b.public_key()).unwrap();
        let got = v.verify(&evil.to_bytes().unwrap(), NOW).unwrap();
        assert_eq!(
            (got.fleet_id.as_str(), got.pseudonym.as_str()),
            ("fleet-b", victim.as_str())
        );
        // The real twin's disclosures still go through.
        assert!(v.verify(&sealed(&mut w), NOW).is_ok());
        assert_eq!(v.replay_guard().len(), 2);
    }

    #[test]
    fn certificate_validity_and_observation_time_are_checked() {
        let mut w = world();
        let bytes = sealed(&mut w);
        let skew = VerifierConfig::default().max_clock_skew_us;
        let until = w.credential.valid_until_us();
        let from = w.credential.certificate().valid_from_us;
        let e = verifier(&w).verify(&bytes, until + skew).unwrap_err();
        assert_eq!(e, Rejection::CertificateExpired("pseudonym certificate"));
        assert_eq!(e.as_str(), "certificate_expired");
        assert!(verifier(&w)
            .verify(&bytes, until + skew - 1)
            .is_err_and(|e| e.as_str() == "stale"));
        let e = verifier(&w).verify(&bytes, from - skew - 1).unwrap_err();
        assert_eq!(
            e,
            Rejection::CertificateNotYetValid("pseudonym certificate")
        );
        // The issuer certificate expires too.
        let day = 86_400 * US_PER_S;
        assert_eq!(
            verifier(&w).verify(&bytes, T0 + day + skew).unwrap_err(),
            Rejection::CertificateExpired("issuer certificate")
        );
        // Stale and from the future, by the observation's own stamp.
        let max_age = VerifierConfig::default().max_age_us;
        let old = seal(hazard_observation(NOW - max_age - 1), &mut w.credential)
            .unwrap()
            .to_bytes()
            .unwrap();
        assert!(matches!(
            verifier(&w).verify(&old, NOW),
            Err(Rejection::Stale { .. })
        ));
        let future = seal(hazard_observation(NOW + skew + 1), &mut w.credential)
            .unwrap()
            .to_bytes()
            .unwrap();
        let e = verifier(&w).verify(&future, NOW).unwrap_err();
        assert_eq!(e.as_str(), "from_the_future");
        let near_future = seal(hazard_observation(NOW + skew), &mut w.credential)
            .unwrap()
            .to_bytes()
            .unwrap();
        assert!(verifier(&w).verify(&near_future, NOW).is_ok());
        // A refused disclosure leaves no trace in the replay guard.
        let mut v = verifier(&w);
        assert!(v.verify(&future, NOW).is_err());
        assert!(v.replay_guard().is_empty());
    }

    #[test]
    fn an_origin_other_than_the_certificate_is_a_pseudonym_mismatch() {
        let mut w = world();
        let mut d = seal(hazard_observation(NOW), &mut w.credential).unwrap();
        d.observation.origin_pseudonym = "00000000deadbeef".into();
        // Signed properly by the pseudonym key: only the name is wrong.
        let sig = w.credential.sign(&signed_bytes(&d.observation).unwrap());
        d.observation.signature = sig.0.to_vec();
        let bytes = d.to_bytes().unwrap();
        let e = verifier(&w).verify(&bytes, NOW).unwrap_err();
        assert_eq!(e.as_str(), "pseudonym_mismatch");
        assert!(e.to_string().contains("00000000deadbeef"));
    }

    #[test]
    fn malformed_envelopes_say_why() {
        let mut w = world();
        let bytes = sealed(&mut w);
        let err = |b: &[u8]| Disclosure::from_bytes(b).unwrap_err();
        assert_eq!(err(&[]), EnvelopeError::Empty);
        assert_eq!(err(&[2]), EnvelopeError::UnknownVersion(2));
        assert_eq!(err(&[1, 0]), EnvelopeError::Truncated("the chain length"));
        assert_eq!(err(&[1, 0xff, 0xff]), EnvelopeError::ChainTooLarge(0xffff));
        assert!(matches!(
            err(&vec![1; MAX_DISCLOSURE_BYTES + 1]),
            EnvelopeError::TooLarge { .. }
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(err(&longer), EnvelopeError::TrailingBytes(1));
        for cut in 0..bytes.len() {
            assert!(
                Disclosure::from_bytes(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        // A non-canonical observation (options bytes of the CDR header set).
        let chain_len = usize::from(u16::from_le_bytes([bytes[1], bytes[2]]));
        let mut odd = bytes.clone();
        odd[3 + chain_len + 4 + 3] = 1;
        assert_eq!(err(&odd), EnvelopeError::NotCanonical("the observation"));
        let mut v = verifier(&w);
        let e = v.verify(&odd, NOW).unwrap_err();
        assert_eq!(e.as_str(), "malformed");
        // Semantically wrong but signed: refused after the signature check.
        let mut obs = hazard_observation(NOW);
        obs.header.frame_id = "base_link".into();
        let bytes = seal(obs, &mut w.credential).unwrap().to_bytes().unwrap();
        assert_eq!(v.verify(&bytes, NOW).unwrap_err().as_str(), "malformed");
        let mut obs = hazard_observation(NOW);
        obs.category = 77;
        let bytes = seal(obs, &mut w.credential).unwrap().to_bytes().unwrap();
        assert_eq!(v.verify(&bytes, NOW).unwrap_err().as_str(), "malformed");
    }

    #[test]
    fn oversized_observations_are_not_sealed() {
        let mut w = world();
        let mut obs = hazard_observation(NOW);
        obs.hazards = vec![obs.hazards[0].clone(); 12_000];
        assert!(matches!(
            seal(obs, &mut w.credential),
            Err(EnvelopeError::TooLarge { .. })
        ));
        assert_eq!(w.credential.next_disclosure_id(), 1, "no id used up");
    }

    #[test]
    fn rejection_labels_are_distinct() {
        let all = [
            Rejection::Malformed(String::new()),
            Rejection::Unsigned,
            Rejection::BadSignature,
            Rejection::UnknownAuthority(String::new()),
            Rejection::ChainBroken(""),
            Rejection::CertificateExpired(""),
            Rejection::CertificateNotYetValid(""),
            Rejection::PseudonymMismatch {
                claimed: String::new(),
                certified: String::new(),
            },
            Rejection::Replayed {
                pseudonym: String::new(),
                id: 0,
            },
            Rejection::Stale {
                age_s: 0.0,
                max_s: 0.0,
            },
            Rejection::FromTheFuture { ahead_s: 0.0 },
        ];
        let labels: BTreeSet<_> = all.iter().map(Rejection::as_str).collect();
        assert_eq!(labels.len(), all.len());
    }

    #[test]
    fn replay_guard_memory_stays_bounded() {
        let key = |i: u64| {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&i.to_le_bytes());
            PublicKey(k)
        };
        let mut guard = ReplayGuard::new(100);
        for i in 0..1_000u64 {
            assert!(guard.check_and_record(&key(i), 1, NOW + 1_000 + i, NOW));
            assert!(guard.len() <= 100);
        }
        assert_eq!(guard.len(), 100);
        assert_eq!(guard.forced_evictions(), 900);
        // The survivors are the ones that expire last.
        assert!(!guard.check_and_record(&key(999), 1, NOW + 1_999, NOW));
        // Expired entries are purged first, without forced evictions.
        let mut guard = ReplayGuard::new(100);
        for i in 0..1_000u64 {
            guard.check_and_record(&key(i), i, NOW + i, NOW + i);
        }
        assert_eq!(guard.forced_evictions(), 0);
        assert!(guard.len() <= 100);
        let remembered = guard.len();
        assert_eq!(guard.purge(NOW + 10_000), remembered);
        assert!(guard.is_empty());
        // Many ids of one pseudonym take no more memory.
        let mut guard = ReplayGuard::new(10);
        for id in 0..100_000u64 {
            assert!(guard.check_and_record(&key(7), id, NOW + 1, NOW));
        }
        assert_eq!(guard.len(), 1);
        assert!(!guard.check_and_record(&key(7), 0, NOW + 1, NOW));
        assert!(!guard.check_and_record(&key(7), 99_999, NOW + 1, NOW));
        assert!(guard.check_and_record(&key(7), u64::MAX, NOW + 1, NOW));
        assert!(!guard.check_and_record(&key(7), u64::MAX, NOW + 1, NOW));
    }

    #[test]
    fn the_discloser_decides_coarsens_and_seals() {
        let w = world();
        let mut consent = Consent::new();
        consent
            .grant(
                SharingRule {
                    category: SharedObservation::CATEGORY_HAZARDS,
                    audience: SharingRule::AUDIENCE_SAME_FLEET,
                    spatial_precision: 50.0,
                    max_age: 30.0,
                    ..Default::default()
                },
                NOW,
            )
            .unwrap();
        let mut discloser = Discloser::new(
            consent,
            Rotation::new(RotationConfig::default()).unwrap(),
            TileGrid::default(),
        );
        let mut raw = hazard_observation(NOW - 1_250_000);
        raw.hazards[0].position.x = -1234.5;
        raw.hazards[0].incident_id = "tracker-17".into();
        let d = discloser
            .disclose(&w.issuer, &raw, Audience::SameFleet, NOW)
            .unwrap();
        let mut v = verifier(&w);
        let got = v.verify(&d.to_bytes().unwrap(), NOW).unwrap();
        assert_eq!(got.observation.hazards[0].position.x, -1250.0);
        assert_ne!(got.observation.hazards[0].incident_id, "tracker-17");
        assert_eq!(got.observation.position_precision, 50.0);
        assert_eq!(got.observation.header.stamp.nanosec, 0);
        let e = discloser
            .disclose(&w.issuer, &raw, Audience::OtherFleet, NOW)
            .unwrap_err();
        assert_eq!(e, DiscloseError::Denied(DenyReason::OtherFleet));
        assert_eq!(e.as_str(), "other_fleet");
        let e = discloser
            .disclose(&w.issuer, &raw, Audience::SameFleet, NOW + 40 * US_PER_S)
            .unwrap_err();
        assert_eq!(e.as_str(), "too_old");
        let mut objects = raw.clone();
        objects.category = SharedObservation::CATEGORY_OBJECTS;
        objects.hazards.clear();
        let e = discloser
            .disclose(&w.issuer, &objects, Audience::SameFleet, NOW)
            .unwrap_err();
        assert_eq!(e, DiscloseError::Denied(DenyReason::NoRule));
    }

    #[test]
    fn queries_say_who_asks() {
        let mut w = world();
        let name = DataName::new(Category::Hazards, TileName::new(12, -3));
        let q = SignedQuery::new(name, &mut w.credential, NOW);
        let bytes = q.to_bytes();
        assert_eq!(SignedQuery::from_bytes(&bytes).unwrap(), q);
        let mut v = verifier(&w);
        let (query, origin) = v.verify_query(&bytes, NOW).unwrap();
        assert_eq!(query.data_name(), Some(name));
        assert_eq!(origin.audience, Audience::SameFleet);
        assert_eq!(origin.pseudonym, w.credential.pseudonym());
        assert_eq!(
            v.verify_query(&bytes, NOW).unwrap_err().as_str(),
            "replayed"
        );
        let stale = VerifierConfig::default().max_query_age_us + 1;
        assert_eq!(
            verifier(&w)
                .verify_query(&bytes, NOW + stale)
                .unwrap_err()
                .as_str(),
            "stale"
        );
        let mut forged = q.clone();
        forged.query.name = "objects/12_-3".into();
        assert_eq!(
            verifier(&w)
                .verify_query(&forged.to_bytes(), NOW)
                .unwrap_err(),
            Rejection::BadSignature
        );
        let mut bad_name = q.clone();
        bad_name.query.name = "x".into();
        assert_eq!(
            verifier(&w)
                .verify_query(&bad_name.to_bytes(), NOW)
                .unwrap_err()
                .as_str(),
            "malformed"
        );
        let mut discloser = Discloser::new(
            Consent::new(),
            Rotation::new(RotationConfig::default()).unwrap(),
            TileGrid::default(),
        );
        let q = discloser.query(&w.issuer, name, NOW).unwrap();
        assert!(verifier(&w).verify_query(&q.to_bytes(), NOW).is_ok());
        assert!(SignedQuery::from_bytes(&[]).is_err());
        assert!(SignedQuery::from_bytes(&vec![1; MAX_QUERY_BYTES + 1]).is_err());
    }

    fn template() -> (World, Vec<u8>) {
        let mut w = world();
        let bytes = sealed(&mut w);
        (w, bytes)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Disclosure::from_bytes(&bytes);
            let _ = SignedQuery::from_bytes(&bytes);
            let w = world();
            let mut v = verifier(&w);
            prop_assert!(v.verify(&bytes, NOW).is_err());
            prop_assert!(v.verify_query(&bytes, NOW).is_err());
        }

        #[test]
        fn plausible_headers_with_arbitrary_bodies_never_panic(
            chain_len in 0u16..1100,
            obs_len in any::<u32>(),
            body in proptest::collection::vec(any::<u8>(), 0..1500),
        ) {
            let mut bytes = vec![ENVELOPE_VERSION];
            bytes.extend_from_slice(&chain_len.to_le_bytes());
            let split = usize::from(chain_len).min(body.len());
            bytes.extend_from_slice(&body[..split]);
            bytes.extend_from_slice(&obs_len.to_le_bytes());
            bytes.extend_from_slice(&body[split..]);
            let w = world();
            prop_assert!(verifier(&w).verify(&bytes, NOW).is_err());
        }

        #[test]
        fn any_changed_byte_of_a_valid_envelope_is_refused(
            index in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let (w, mut bytes) = template();
            let i = index.index(bytes.len());
            bytes[i] ^= flip;
            prop_assert!(verifier(&w).verify(&bytes, NOW).is_err(), "byte {} ^ {}", i, flip);
        }

        #[test]
        fn any_cut_or_extension_is_refused(cut in any::<prop::sample::Index>(), extra in any::<u8>()) {
            let (w, bytes) = template();
            let n = cut.index(bytes.len());
            prop_assert!(verifier(&w).verify(&bytes[..n], NOW).is_err());
            let mut longer = bytes.clone();
            longer.push(extra);
            prop_assert!(verifier(&w).verify(&longer, NOW).is_err());
        }
    }

    #[test]
    fn keys_restored_from_secrets_verify_the_same() {
        let key = KeyPair::generate();
        let again = KeyPair::from_secret_bytes(&key.secret_bytes());
        let sig = key.sign(b"x");
        assert!(again.public_key().verifies(b"x", &sig));
        assert!(!again.public_key().verifies(b"y", &sig));
        assert!(!PublicKey([0xff; 32]).verifies(b"x", &sig));
    }
}
