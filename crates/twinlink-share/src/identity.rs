//! Pseudonymous, verifiable origins: a two-level ed25519 certificate chain.
//!
//! - A fleet operator holds a [`FleetAuthority`] key. Receivers trust it by its public key,
//!   configured per fleet id. It certifies DR hosts' issuer keys ([`IssuerCertificate`]).
//! - A DR host holds a [`PseudonymIssuer`]: its issuer key and certificate. For each twin it
//!   issues a [`PseudonymCredential`] per rotation period: a fresh ed25519 key, a random
//!   pseudonym (16 hex digits, drawn at random, never derived from the vehicle id), and a
//!   [`PseudonymCertificate`] binding the two for a validity window, signed by the issuer.
//! - A twin signs what it discloses with its current pseudonym key and ships the chain
//!   ([`CertificateChain`]) along. [`Rotation`] keeps each twin's credential current.
//!
//! A receiver learns the fleet (it must, to apply SAME_FLEET rules) and the issuing host's
//! key, never the vehicle. Certificates of one period carry identical validity windows, so
//! they say nothing about when a twin started or rotated.
//!
//! Certificates serialize with postcard (compact, deterministic); each signature covers a
//! domain-separation label followed by the postcard encoding of the other fields.

use std::fmt;

use ed25519_dalek::{Signature as DalekSignature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::coarsen::PeriodKey;
use crate::time::US_PER_S;

/// Longest fleet id (bytes).
pub const MAX_FLEET_ID_LEN: usize = 64;

/// Length of a pseudonym (hex digits).
pub const PSEUDONYM_LEN: usize = 16;

/// Default rotation period of pseudonyms: 5 minutes (µs).
pub const DEFAULT_ROTATION_PERIOD_US: u64 = 300 * US_PER_S;

/// Default largest delay of a twin's rotation after the period boundary: 5 s (µs).
pub const DEFAULT_ROTATION_JITTER_US: u64 = 5 * US_PER_S;

/// Default time a pseudonym certificate stays valid after the latest possible rotation, for
/// disclosures still in flight: 30 s (µs).
pub const DEFAULT_CERTIFICATE_GRACE_US: u64 = 30 * US_PER_S;

const ISSUER_CERT_LABEL: &str = "twinlink-share/issuer-certificate/v1";
const PSEUDONYM_CERT_LABEL: &str = "twinlink-share/pseudonym-certificate/v1";

/// Why a key, certificate or credential could not be made or read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IdentityError {
    /// A fleet id is empty, too long or has characters outside `[A-Za-z0-9_.-]`.
    #[error("fleet id {0:?}: 1 to 64 characters of [A-Za-z0-9_.-]")]
    BadFleetId(String),
    /// A pseudonym is not 16 lowercase hex digits.
    #[error("pseudonym {0:?} is not 16 lowercase hex digits")]
    BadPseudonym(String),
    /// A validity window is empty.
    #[error("validity from {from_us} to {until_us} µs is empty")]
    BadValidity {
        /// Start (µs since the epoch).
        from_us: u64,
        /// End (µs since the epoch).
        until_us: u64,
    },
    /// The issuer key does not match the public key in the issuer certificate.
    #[error("the issuer key does not match the certificate's public key")]
    KeyMismatch,
    /// The issuer's own certificate does not cover the requested time.
    #[error("the issuer certificate is not valid at {at_us} µs (valid {from_us}..{until_us})")]
    IssuerNotValid {
        /// The time asked for (µs).
        at_us: u64,
        /// Issuer certificate's start (µs).
        from_us: u64,
        /// Issuer certificate's end (µs).
        until_us: u64,
    },
    /// A rotation setting is unusable.
    #[error("rotation: {0}")]
    BadRotation(&'static str),
    /// Bytes are not a certificate (or chain).
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Why not.
        reason: String,
    },
}

/// Checks a fleet id: 1 to [`MAX_FLEET_ID_LEN`] characters of `[A-Za-z0-9_.-]`.
pub fn check_fleet_id(fleet_id: &str) -> Result<(), IdentityError> {
    if !fleet_id.is_empty()
        && fleet_id.len() <= MAX_FLEET_ID_LEN
        && fleet_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        Ok(())
    } else {
        Err(IdentityError::BadFleetId(fleet_id.to_string()))
    }
}

/// Checks a pseudonym: exactly 16 lowercase hex digits.
pub fn check_pseudonym(pseudonym: &str) -> Result<(), IdentityError> {
    if pseudonym.len() == PSEUDONYM_LEN
        && pseudonym
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(IdentityError::BadPseudonym(pseudonym.to_string()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An ed25519 public key (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublicKey(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl PublicKey {
    /// True if `signature` is a valid (strictly checked) ed25519 signature of `message` by
    /// this key. Keys that are not valid curve points verify nothing.
    pub fn verifies(&self, message: &[u8], signature: &Signature) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        key.verify_strict(message, &DalekSignature::from_bytes(&signature.0))
            .is_ok()
    }

    /// Lowercase hex, 64 digits.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

/// An ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(#[serde(with = "serde_bytes")] pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex(&self.0))
    }
}

/// An ed25519 key pair. `Debug` shows the public key only; the secret is zeroized on drop.
#[derive(Clone)]
pub struct KeyPair(SigningKey);

impl KeyPair {
    /// A fresh key from the operating system's randomness (through `rand`'s thread RNG).
    pub fn generate() -> Self {
        let mut secret: [u8; 32] = rand::random();
        let key = SigningKey::from_bytes(&secret);
        secret.fill(0);
        Self(key)
    }

    /// The key pair of a stored 32-byte secret.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(secret))
    }

    /// The 32-byte secret, for storage by the caller (keep it private).
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.0.sign(message).to_bytes())
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({})", self.public_key().to_hex())
    }
}

/// Whether a certificate covers a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Valid.
    Valid,
    /// Not valid yet.
    NotYetValid,
    /// No longer valid.
    Expired,
}

fn validity(from_us: u64, until_us: u64, now_us: u64, skew_us: u64) -> Validity {
    if now_us.saturating_add(skew_us) < from_us {
        Validity::NotYetValid
    } else if now_us.saturating_sub(skew_us) >= until_us {
        Validity::Expired
    } else {
        Validity::Valid
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Only fixed-size fields and strings: postcard cannot fail on these types.
    postcard::to_stdvec(value).expect("postcard encodes certificate fields")
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &'static str) -> Result<T, IdentityError> {
    let err = |reason: String| IdentityError::Decode { what, reason };
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| err(e.to_string()))?;
    if !rest.is_empty() {
        return Err(err(format!("{} bytes after the end", rest.len())));
    }
    Ok(value)
}

/// A fleet authority's statement: "`issuer_key` issues pseudonyms for fleet `fleet_id`
/// from `valid_from_us` until `valid_until_us`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerCertificate {
    /// The fleet; receivers look the authority key up by it.
    pub fleet_id: String,
    /// The DR host's issuer public key.
    pub issuer_key: PublicKey,
    /// Start of validity (µs since the epoch).
    pub valid_from_us: u64,
    /// End of validity, exclusive (µs since the epoch).
    pub valid_until_us: u64,
    /// The authority's signature over the other fields.
    pub signature: Signature,
}

#[derive(Serialize)]
struct IssuerTbs<'a> {
    label: &'a str,
    fleet_id: &'a str,
    issuer_key: &'a PublicKey,
    valid_from_us: u64,
    valid_until_us: u64,
}

impl IssuerCertificate {
    /// The bytes the authority signs.
    pub fn signed_bytes(&self) -> Vec<u8> {
        encode(&IssuerTbs {
            label: ISSUER_CERT_LABEL,
            fleet_id: &self.fleet_id,
            issuer_key: &self.issuer_key,
            valid_from_us: self.valid_from_us,
            valid_until_us: self.valid_until_us,
        })
    }

    /// True if the signature is `authority`'s.
    pub fn is_signed_by(&self, authority: &PublicKey) -> bool {
        authority.verifies(&self.signed_bytes(), &self.signature)
    }

    /// Whether the certificate covers `now_us`, allowing `skew_us` of clock difference.
    pub fn validity(&self, now_us: u64, skew_us: u64) -> Validity {
        validity(self.valid_from_us, self.valid_until_us, now_us, skew_us)
    }

    /// The postcard encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes and checks the fleet id's syntax (not the signature).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        let cert: Self = decode(bytes, "issuer certificate")?;
        check_fleet_id(&cert.fleet_id)?;
        Ok(cert)
    }
}

/// An issuer's statement: "`public_key` speaks as `pseudonym` from `valid_from_us` until
/// `valid_until_us`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PseudonymCertificate {
    /// 16 lowercase hex digits, random.
    pub pseudonym: String,
    /// The twin's key for this period.
    pub public_key: PublicKey,
    /// Start of validity (µs since the epoch).
    pub valid_from_us: u64,
    /// End of validity, exclusive (µs since the epoch).
    pub valid_until_us: u64,
    /// The issuer's signature over the other fields.
    pub signature: Signature,
}

#[derive(Serialize)]
struct PseudonymTbs<'a> {
    label: &'a str,
    pseudonym: &'a str,
    public_key: &'a PublicKey,
    valid_from_us: u64,
    valid_until_us: u64,
}

impl PseudonymCertificate {
    /// The bytes the issuer signs.
    pub fn signed_bytes(&self) -> Vec<u8> {
        encode(&PseudonymTbs {
            label: PSEUDONYM_CERT_LABEL,
            pseudonym: &self.pseudonym,
            public_key: &self.public_key,
            valid_from_us: self.valid_from_us,
            valid_until_us: self.valid_until_us,
        })
    }

    /// True if the signature is `issuer`'s.
    pub fn is_signed_by(&self, issuer: &PublicKey) -> bool {
        issuer.verifies(&self.signed_bytes(), &self.signature)
    }

    /// Whether the certificate covers `now_us`, allowing `skew_us` of clock difference.
    pub fn validity(&self, now_us: u64, skew_us: u64) -> Validity {
        validity(self.valid_from_us, self.valid_until_us, now_us, skew_us)
    }

    /// The postcard encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes and checks the pseudonym's syntax (not the signature).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        let cert: Self = decode(bytes, "pseudonym certificate")?;
        check_pseudonym(&cert.pseudonym)?;
        Ok(cert)
    }
}

/// What a disclosure carries to prove its origin: the pseudonym certificate and the
/// certificate of the issuer that signed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateChain {
    /// The disclosing twin's certificate.
    pub pseudonym: PseudonymCertificate,
    /// Its issuer's certificate, signed by the fleet authority.
    pub issuer: IssuerCertificate,
}

impl CertificateChain {
    /// The postcard encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes and checks the syntax of the fleet id and pseudonym (not the signatures).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        let chain: Self = decode(bytes, "certificate chain")?;
        check_fleet_id(&chain.issuer.fleet_id)?;
        check_pseudonym(&chain.pseudonym.pseudonym)?;
        Ok(chain)
    }
}

/// A fleet operator's signing authority.
#[derive(Debug, Clone)]
pub struct FleetAuthority {
    fleet_id: String,
    key: KeyPair,
}

impl FleetAuthority {
    /// The authority of `fleet_id` with `key`.
    pub fn new(fleet_id: &str, key: KeyPair) -> Result<Self, IdentityError> {
        check_fleet_id(fleet_id)?;
        Ok(Self {
            fleet_id: fleet_id.to_string(),
            key,
        })
    }

    /// The fleet id.
    pub fn fleet_id(&self) -> &str {
        &self.fleet_id
    }

    /// The public key receivers trust for this fleet.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// The key pair (to store its secret).
    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    /// Certifies a DR host's issuer key for `[valid_from_us, valid_until_us)`.
    pub fn certify(
        &self,
        issuer_key: PublicKey,
        valid_from_us: u64,
        valid_until_us: u64,
    ) -> Result<IssuerCertificate, IdentityError> {
        if valid_from_us >= valid_until_us {
            return Err(IdentityError::BadValidity {
                from_us: valid_from_us,
                until_us: valid_until_us,
            });
        }
        let mut cert = IssuerCertificate {
            fleet_id: self.fleet_id.clone(),
            issuer_key,
            valid_from_us,
            valid_until_us,
            signature: Signature([0; 64]),
        };
        cert.signature = self.key.sign(&cert.signed_bytes());
        Ok(cert)
    }
}

/// A DR host's pseudonym issuer: its key and the fleet authority's certificate for it.
#[derive(Debug, Clone)]
pub struct PseudonymIssuer {
    key: KeyPair,
    certificate: IssuerCertificate,
}

impl PseudonymIssuer {
    /// The issuer with `key`, certified by `certificate`; refuses a certificate for another
    /// key (the authority's signature is the receivers' to check).
    pub fn new(key: KeyPair, certificate: IssuerCertificate) -> Result<Self, IdentityError> {
        if key.public_key() != certificate.issuer_key {
            return Err(IdentityError::KeyMismatch);
        }
        check_fleet_id(&certificate.fleet_id)?;
        Ok(Self { key, certificate })
    }

    /// The issuer's certificate.
    pub fn certificate(&self) -> &IssuerCertificate {
        &self.certificate
    }

    /// The fleet this issuer belongs to.
    pub fn fleet_id(&self) -> &str {
        &self.certificate.fleet_id
    }

    /// Issues a credential with a fresh key and a random pseudonym for
    /// `[valid_from_us, valid_until_us)`, cut to the end of the issuer's own certificate.
    /// Refuses if the issuer's certificate does not cover `valid_from_us`.
    pub fn issue(
        &self,
        valid_from_us: u64,
        valid_until_us: u64,
    ) -> Result<PseudonymCredential, IdentityError> {
        let own = &self.certificate;
        if own.validity(valid_from_us, 0) != Validity::Valid {
            return Err(IdentityError::IssuerNotValid {
                at_us: valid_from_us,
                from_us: own.valid_from_us,
                until_us: own.valid_until_us,
            });
        }
        let valid_until_us = valid_until_us.min(own.valid_until_us);
        if valid_from_us >= valid_until_us {
            return Err(IdentityError::BadValidity {
                from_us: valid_from_us,
                until_us: valid_until_us,
            });
        }
        let key = KeyPair::generate();
        let mut certificate = PseudonymCertificate {
            pseudonym: format!("{:016x}", rand::random::<u64>()),
            public_key: key.public_key(),
            valid_from_us,
            valid_until_us,
            signature: Signature([0; 64]),
        };
        certificate.signature = self.key.sign(&certificate.signed_bytes());
        Ok(PseudonymCredential {
            key,
            chain: CertificateChain {
                pseudonym: certificate,
                issuer: own.clone(),
            },
            period_key: PeriodKey::generate(),
            next_disclosure_id: 1,
        })
    }
}

/// One twin's identity for one period: its pseudonym key, the chain that certifies it, the
/// period's secret for keyed ids, and the counter of disclosure ids. Never leaves the DR host.
#[derive(Debug, Clone)]
pub struct PseudonymCredential {
    key: KeyPair,
    chain: CertificateChain,
    period_key: PeriodKey,
    next_disclosure_id: u64,
}

impl PseudonymCredential {
    /// The pseudonym (16 hex digits).
    pub fn pseudonym(&self) -> &str {
        &self.chain.pseudonym.pseudonym
    }

    /// The pseudonym certificate.
    pub fn certificate(&self) -> &PseudonymCertificate {
        &self.chain.pseudonym
    }

    /// The chain to ship with disclosures.
    pub fn chain(&self) -> &CertificateChain {
        &self.chain
    }

    /// The period's key for keyed incident ids (see [`crate::coarsen`](mod@crate::coarsen)).
    pub fn period_key(&self) -> &PeriodKey {
        &self.period_key
    }

    /// End of validity of the pseudonym certificate (µs since the epoch).
    pub fn valid_until_us(&self) -> u64 {
        self.chain.pseudonym.valid_until_us
    }

    /// The next disclosure id (1, 2, … per pseudonym), consumed.
    pub fn next_disclosure_id(&mut self) -> u64 {
        let id = self.next_disclosure_id;
        self.next_disclosure_id = id.saturating_add(1);
        id
    }

    /// Signs `message` with the pseudonym key.
    pub fn sign(&self, message: &[u8]) -> Signature {
        self.key.sign(message)
    }
}

/// Settings of pseudonym rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationConfig {
    /// Length of a pseudonym period (µs); periods start at multiples of it since the epoch.
    pub period_us: u64,
    /// A twin rotates at a random moment within this long after the period boundary (µs);
    /// less than the period.
    pub jitter_us: u64,
    /// Certificates stay valid this long after the latest possible rotation (µs).
    pub grace_us: u64,
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            period_us: DEFAULT_ROTATION_PERIOD_US,
            jitter_us: DEFAULT_ROTATION_JITTER_US,
            grace_us: DEFAULT_CERTIFICATE_GRACE_US,
        }
    }
}

/// Keeps one twin's credential current.
///
/// Periods are aligned to multiples of `period_us` since the epoch, and every certificate of
/// period k is valid from `k·period` to `(k+1)·period + jitter + grace`: certificates carry
/// no twin-specific times. Each twin rotates at `(k+1)·period + j` with `j` drawn uniformly
/// from `[0, jitter]` anew each period. The jitter is small on purpose: it spreads the key
/// generation and signing of a host with many twins, and the receivers' burst of new chains
/// to verify, over a few seconds instead of one instant, while rotations still cluster
/// around the boundary, where many pseudonyms change at once and old and new ones are hard
/// to pair up. A large jitter would make each change stand out on its own.
#[derive(Debug, Clone)]
pub struct Rotation {
    config: RotationConfig,
    current: Option<PseudonymCredential>,
    rotate_at_us: u64,
}

impl Rotation {
    /// A rotation with `config`; refuses a zero period or a jitter not below the period.
    pub fn new(config: RotationConfig) -> Result<Self, IdentityError> {
        if config.period_us == 0 {
            return Err(IdentityError::BadRotation("period_us must be positive"));
        }
        if config.jitter_us >= config.period_us {
            return Err(IdentityError::BadRotation(
                "jitter_us must be less than period_us",
            ));
        }
        Ok(Self {
            config,
            current: None,
            rotate_at_us: 0,
        })
    }

    /// The settings.
    pub fn config(&self) -> &RotationConfig {
        &self.config
    }

    /// When the current credential will be replaced (µs), if there is one.
    pub fn rotate_at_us(&self) -> Option<u64> {
        self.current.as_ref().map(|_| self.rotate_at_us)
    }

    /// The credential for `now_us`, issuing a new one from `issuer` when there is none yet or
    /// the rotation time has come.
    pub fn current(
        &mut self,
        issuer: &PseudonymIssuer,
        now_us: u64,
    ) -> Result<&mut PseudonymCredential, IdentityError> {
        if self.current.is_none() || now_us >= self.rotate_at_us {
            return self.rotate_now(issuer, now_us);
        }
        self.current
            .as_mut()
            .ok_or(IdentityError::BadRotation("no credential"))
    }

    /// Replaces the credential at once (e.g. after the vehicle revoked a grant, so that
    /// later disclosures cannot be linked to earlier ones), for the period containing
    /// `now_us` (from the issuer certificate's start if that is later than the period's).
    pub fn rotate_now(
        &mut self,
        issuer: &PseudonymIssuer,
        now_us: u64,
    ) -> Result<&mut PseudonymCredential, IdentityError> {
        let RotationConfig {
            period_us,
            jitter_us,
            grace_us,
        } = self.config;
        let boundary = now_us - now_us % period_us;
        let end = boundary.saturating_add(period_us);
        // The first period of a new issuer certificate starts with that certificate.
        let start = boundary.max(issuer.certificate().valid_from_us);
        let credential = issuer.issue(
            start,
            end.saturating_add(jitter_us).saturating_add(grace_us),
        )?;
        self.rotate_at_us = end.saturating_add(rand::random_range(0..=jitter_us));
        Ok(self.current.insert(credential))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const T0: u64 = 1_700_000_000_000_000;

    /// An authority of `fleet`, an issuer certified by it for a day from T0, and the key.
    pub(crate) fn fleet(fleet: &str) -> (FleetAuthority, PseudonymIssuer) {
        let authority = FleetAuthority::new(fleet, KeyPair::generate()).unwrap();
        let issuer_key = KeyPair::generate();
        let cert = authority
            .certify(issuer_key.public_key(), T0, T0 + 86_400 * US_PER_S)
            .unwrap();
        (authority, PseudonymIssuer::new(issuer_key, cert).unwrap())
    }

    #[test]
    fn certificates_chain_and_serialize() {
        let (authority, issuer) = fleet("fleet-a");
        let cred = issuer.issue(T0, T0 + 60 * US_PER_S).unwrap();
        check_pseudonym(cred.pseudonym()).unwrap();
        let chain = cred.chain().clone();
        assert!(chain.issuer.is_signed_by(&authority.public_key()));
        assert!(chain.pseudonym.is_signed_by(&chain.issuer.issuer_key));
        assert!(!chain.pseudonym.is_signed_by(&authority.public_key()));
        assert_eq!(chain.pseudonym.public_key, cred.key.public_key());
        let bytes = chain.to_bytes();
        assert!(bytes.len() < 300, "{} bytes", bytes.len());
        assert_eq!(CertificateChain::from_bytes(&bytes).unwrap(), chain);
        assert!(CertificateChain::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(CertificateChain::from_bytes(&longer).is_err());
        let issuer_bytes = chain.issuer.to_bytes();
        assert_eq!(
            IssuerCertificate::from_bytes(&issuer_bytes).unwrap(),
            chain.issuer
        );
        let p = PseudonymCertificate::from_bytes(&chain.pseudonym.to_bytes()).unwrap();
        assert_eq!(p, chain.pseudonym);
        // Any changed field breaks the signature.
        let mut forged = chain.pseudonym.clone();
        forged.valid_until_us += 1;
        assert!(!forged.is_signed_by(&chain.issuer.issuer_key));
        let mut forged = chain.issuer.clone();
        forged.fleet_id = "fleet-b".into();
        assert!(!forged.is_signed_by(&authority.public_key()));
    }

    #[test]
    fn pseudonyms_are_random_and_keys_fresh() {
        let (_, issuer) = fleet("fleet-a");
        let a = issuer.issue(T0, T0 + 1).unwrap();
        let b = issuer.issue(T0, T0 + 1).unwrap();
        assert_ne!(a.pseudonym(), b.pseudonym());
        assert_ne!(a.certificate().public_key, b.certificate().public_key);
        assert_ne!(a.period_key(), b.period_key());
        assert!(!format!("{a:?}").contains(&hex(&a.key.secret_bytes())));
    }

    #[test]
    fn issuing_respects_the_issuer_certificate() {
        let (authority, issuer) = fleet("fleet-a");
        let day = 86_400 * US_PER_S;
        let cut = issuer.issue(T0 + day - 10, T0 + 2 * day).unwrap();
        assert_eq!(cut.valid_until_us(), T0 + day);
        assert!(matches!(
            issuer.issue(T0 + day, T0 + 2 * day),
            Err(IdentityError::IssuerNotValid { .. })
        ));
        assert!(matches!(
            issuer.issue(T0 - 1, T0 + 5),
            Err(IdentityError::IssuerNotValid { .. })
        ));
        assert!(issuer.issue(T0 + 5, T0 + 5).is_err());
        let other = KeyPair::generate();
        assert_eq!(
            PseudonymIssuer::new(other, issuer.certificate().clone()).unwrap_err(),
            IdentityError::KeyMismatch
        );
        assert!(authority
            .certify(PublicKey([0; 32]), T0 + 1, T0 + 1)
            .is_err());
        for bad in ["", "with space", "ü", &"x".repeat(65)] {
            assert!(FleetAuthority::new(bad, KeyPair::generate()).is_err());
        }
        let restored = KeyPair::from_secret_bytes(&authority.key().secret_bytes());
        assert_eq!(restored.public_key(), authority.public_key());
    }

    #[test]
    fn rotation_follows_period_boundaries_with_bounded_jitter() {
        let (_, issuer) = fleet("fleet-a");
        let config = RotationConfig::default();
        let mut rotation = Rotation::new(config).unwrap();
        assert_eq!(rotation.rotate_at_us(), None);
        let p = config.period_us;
        let start = T0 + p - T0 % p + 10; // just after a boundary
        let first = rotation.current(&issuer, start).unwrap();
        let first_name = first.pseudonym().to_string();
        assert_eq!(first.certificate().valid_from_us, start - 10);
        assert_eq!(
            first.valid_until_us(),
            start - 10 + p + config.jitter_us + config.grace_us
        );
        assert_eq!(first.next_disclosure_id(), 1);
        assert_eq!(first.next_disclosure_id(), 2);
        let at = rotation.rotate_at_us().unwrap();
        assert!(at >= start - 10 + p && at <= start - 10 + p + config.jitter_us);
        // Same credential until the rotation time, counters continuing.
        let same = rotation.current(&issuer, at - 1).unwrap();
        assert_eq!(same.pseudonym(), first_name);
        assert_eq!(same.next_disclosure_id(), 3);
        let next = rotation.current(&issuer, at).unwrap();
        let next_name = next.pseudonym().to_string();
        assert_ne!(next_name, first_name);
        assert_eq!(next.next_disclosure_id(), 1);
        assert_eq!(next.certificate().valid_from_us, start - 10 + p);
        let forced = rotation.rotate_now(&issuer, at + 1).unwrap();
        assert_ne!(forced.pseudonym(), next_name);
        // Jitter differs between twins (so they do not rotate in lockstep).
        let times: std::collections::BTreeSet<u64> = (0..20)
            .map(|_| {
                let mut r = Rotation::new(config).unwrap();
                r.current(&issuer, start).unwrap();
                r.rotate_at_us().unwrap()
            })
            .collect();
        assert!(times.len() > 1);
        assert!(Rotation::new(RotationConfig {
            period_us: 0,
            ..config
        })
        .is_err());
        assert!(Rotation::new(RotationConfig {
            jitter_us: p,
            ..config
        })
        .is_err());
    }
}
