//! End-to-end protection of the intra-twin link.
//!
//! Only a PE and its DR hold the keys: routers and other Zenoh sessions see ciphertext.
//!
//! - **Identity.** `twinctl provision <vehicle>` makes two static X25519 key pairs and writes
//!   one [`KeyMaterial`] file per end (own private key, peer's public key), mode 0600.
//! - **Sessions.** The PE opens a session with a Noise `KK` handshake
//!   (`Noise_KK_25519_ChaChaPoly_BLAKE2s`, prologue bound to the vehicle id) carried by a Zenoh
//!   query to the DR. Both ends authenticate each other with their static keys and mix in
//!   fresh ephemeral keys, so every session has new keys (forward secrecy). Key rotation is
//!   a new handshake; the old session stays readable for a short grace period.
//! - **Frames.** A sealed frame is `version | session id | counter | chunks`. The payload is
//!   cut into chunks of at most [`CHUNK_PLAINTEXT`] bytes, each sealed with ChaCha20-Poly1305
//!   under nonce `counter << 16 | index`, the last with [`LAST_CHUNK_FLAG`] set (the STREAM
//!   construction), so a frame cannot be truncated, extended or spliced undetected and the
//!   header is authenticated by the nonce and the session's key.
//! - **Replay.** Each session and direction has a sliding window ([`ReplayWindow`]): a
//!   counter seen before is `replayed`, one older than the window is `too_old`.
//! - **Handshake replay.** The DR refuses a handshake whose session id it has seen, and a
//!   session it answered becomes active only when a frame sealed under it arrives, which
//!   only the holder of the PE's keys can make.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use snow::{Builder, HandshakeState, StatelessTransportState};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::keys::{Role, VehicleId};

/// The Noise protocol name used for every session.
pub const NOISE_PARAMS: &str = "Noise_KK_25519_ChaChaPoly_BLAKE2s";
/// Version byte at the start of every sealed frame and handshake message.
pub const WIRE_VERSION: u8 = 1;
/// Bytes of a sealed frame's clear header: version, session id, counter.
pub const FRAME_HEADER_LEN: usize = 1 + 8 + 8;
/// Authentication tag bytes per chunk.
pub const TAG_LEN: usize = 16;
/// Largest Noise message.
const NOISE_MAX: usize = 65535;
/// Plaintext bytes per sealed chunk.
pub const CHUNK_PLAINTEXT: usize = NOISE_MAX - TAG_LEN;
/// Set in a chunk's nonce when it is the frame's last chunk.
pub const LAST_CHUNK_FLAG: u64 = 1 << 15;
/// Largest plaintext a frame may carry (bounds the receiver's memory).
pub const MAX_FRAME_PLAINTEXT: usize = 32 << 20;
/// Largest frame counter; past it the sender must rotate keys.
pub const MAX_COUNTER: u64 = (1 << 48) - 1;
/// Width of the replay window, in frames.
pub const REPLAY_WINDOW: u64 = 4096;

/// Why a sealed message was refused. Every refusal is counted under its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Rejection {
    /// Too short, or its chunks do not add up.
    Malformed,
    /// A version byte this build does not speak.
    UnsupportedVersion,
    /// Sealed under a session this end does not hold (never made, or expired).
    UnknownSession,
    /// Authentication failed: forged, tampered, truncated or sealed with other keys.
    AuthFailed,
    /// A frame counter already received in this session.
    Replayed,
    /// A frame counter older than the replay window.
    TooOld,
    /// A handshake whose session id was already used.
    HandshakeReplayed,
    /// A handshake that failed to authenticate or parse.
    HandshakeFailed,
    /// Authenticated, but the plaintext did not decode.
    BadPayload,
}

impl Rejection {
    /// Every reason, for reports.
    pub const ALL: [Rejection; 9] = [
        Rejection::Malformed,
        Rejection::UnsupportedVersion,
        Rejection::UnknownSession,
        Rejection::AuthFailed,
        Rejection::Replayed,
        Rejection::TooOld,
        Rejection::HandshakeReplayed,
        Rejection::HandshakeFailed,
        Rejection::BadPayload,
    ];

    /// Snake-case name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::UnsupportedVersion => "unsupported_version",
            Rejection::UnknownSession => "unknown_session",
            Rejection::AuthFailed => "auth_failed",
            Rejection::Replayed => "replayed",
            Rejection::TooOld => "too_old",
            Rejection::HandshakeReplayed => "handshake_replayed",
            Rejection::HandshakeFailed => "handshake_failed",
            Rejection::BadPayload => "bad_payload",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors loading, saving or using key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is readable or writable by others than its owner.
    #[error("key file {path} has mode {mode:o}; it must not be accessible to group or others (chmod 600 {path})")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file's content is not valid key material.
    #[error("key file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// The file is for another vehicle or role than the one asked for.
    #[error("key file {path} is for {found_vehicle}/{found_role}, not {vehicle}/{role}")]
    WrongOwner {
        /// The file.
        path: PathBuf,
        /// Vehicle asked for.
        vehicle: String,
        /// Role asked for.
        role: Role,
        /// Vehicle in the file.
        found_vehicle: String,
        /// Role in the file.
        found_role: Role,
    },
    /// The crypto library refused an operation.
    #[error("noise: {0}")]
    Noise(String),
}

/// A 32-byte X25519 key, wiped from memory on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Key32([u8; 32]);

impl Key32 {
    fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A short fingerprint for people to compare (first 8 bytes, hex). Only for public keys.
    pub fn fingerprint(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl fmt::Debug for Key32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key32(<redacted>)")
    }
}

/// One end's key material: its own static key pair and its peer's public key.
///
/// `Debug` never prints the private key; nothing in the link logs key bytes.
#[derive(Clone)]
pub struct KeyMaterial {
    /// The vehicle whose twin this is.
    pub vehicle: VehicleId,
    /// Which end holds this material.
    pub role: Role,
    private: Key32,
    public: Key32,
    peer_public: Key32,
    /// Noise prologue: binds every session to the protocol version and the vehicle.
    prologue: Vec<u8>,
}

fn prologue_for(vehicle: &VehicleId) -> Vec<u8> {
    format!("twinlink/v1 intra-twin {vehicle}").into_bytes()
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("vehicle", &self.vehicle)
            .field("role", &self.role)
            .field("public", &hex::encode(self.public.as_bytes()))
            .field("peer_public", &hex::encode(self.peer_public.as_bytes()))
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    format: String,
    vehicle: String,
    role: Role,
    private_key: String,
    public_key: String,
    peer_public_key: String,
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        self.private_key.zeroize();
    }
}

const KEY_FILE_FORMAT: &str = "twinlink-key-v1";

fn noise_params() -> snow::params::NoiseParams {
    NOISE_PARAMS
        .parse()
        .expect("NOISE_PARAMS is a valid Noise protocol name")
}

fn public_of(private: &Key32) -> Key32 {
    let secret = x25519_dalek::StaticSecret::from(*private.as_bytes());
    Key32(x25519_dalek::PublicKey::from(&secret).to_bytes())
}

impl KeyMaterial {
    /// Makes fresh key pairs for both ends of `vehicle`'s twin: `(pe, dr)`.
    pub fn generate_pair(vehicle: &VehicleId) -> Result<(KeyMaterial, KeyMaterial), KeyError> {
        let builder = Builder::new(noise_params());
        let pe = builder
            .generate_keypair()
            .map_err(|e| KeyError::Noise(e.to_string()))?;
        let dr = builder
            .generate_keypair()
            .map_err(|e| KeyError::Noise(e.to_string()))?;
        let k = |v: &[u8]| Key32::from_slice(v).expect("X25519 keys are 32 bytes");
        let pe_material = KeyMaterial {
            vehicle: vehicle.clone(),
            role: Role::Pe,
            private: k(&pe.private),
            public: k(&pe.public),
            peer_public: k(&dr.public),
            prologue: prologue_for(vehicle),
        };
        let dr_material = KeyMaterial {
            vehicle: vehicle.clone(),
            role: Role::Dr,
            private: k(&dr.private),
            public: k(&dr.public),
            peer_public: k(&pe.public),
            prologue: prologue_for(vehicle),
        };
        Ok((pe_material, dr_material))
    }

    /// This end's public key.
    pub fn public_key(&self) -> &Key32 {
        &self.public
    }

    /// The peer's public key.
    pub fn peer_public_key(&self) -> &Key32 {
        &self.peer_public
    }

    /// The conventional file name of `role`'s key for `vehicle`: `<vehicle>.<role>.key`.
    pub fn file_name(vehicle: &VehicleId, role: Role) -> String {
        format!("{vehicle}.{role}.key")
    }

    /// Writes the material to `path`, created with mode 0600 (refuses to overwrite unless
    /// `overwrite`).
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = KeyFile {
            format: KEY_FILE_FORMAT.to_string(),
            vehicle: self.vehicle.to_string(),
            role: self.role,
            private_key: hex::encode(self.private.as_bytes()),
            public_key: hex::encode(self.public.as_bytes()),
            peer_public_key: hex::encode(self.peer_public.as_bytes()),
        };
        let mut text = serde_json::to_string_pretty(&file).expect("key file serializes");
        text.push('\n');
        let mut options = fs::OpenOptions::new();
        options.write(true).mode(0o600);
        if overwrite {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        let mut out = options.open(path).map_err(io)?;
        // An existing file keeps its mode on truncate; make sure it is 0600.
        out.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        out.write_all(text.as_bytes()).map_err(io)?;
        out.sync_all().map_err(io)?;
        text.zeroize();
        Ok(())
    }

    /// Reads and checks key material for `vehicle`'s `role` end from `path`.
    ///
    /// Refuses files that group or others can access, malformed keys, a public key that
    /// does not belong to the private key, and files made for another vehicle or role.
    pub fn load(path: &Path, vehicle: &VehicleId, role: Role) -> Result<KeyMaterial, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let invalid = |reason: String| KeyError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let meta = fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut text = fs::read_to_string(path).map_err(io)?;
        let parsed: Result<KeyFile, _> = serde_json::from_str(&text);
        text.zeroize();
        // serde_json's message names the field but never echoes values.
        let file = parsed.map_err(|e| invalid(format!("not a twinlink key file: {e}")))?;
        if file.format != KEY_FILE_FORMAT {
            return Err(invalid(format!(
                "field `format` is {:?}, expected {KEY_FILE_FORMAT:?}",
                file.format
            )));
        }
        let decode = |field: &str, value: &str| -> Result<Key32, KeyError> {
            let mut bytes = hex::decode(value)
                .map_err(|_| invalid(format!("field `{field}` is not hexadecimal")))?;
            let key = Key32::from_slice(&bytes).ok_or_else(|| {
                invalid(format!(
                    "field `{field}` has {} bytes; an X25519 key has 32",
                    bytes.len()
                ))
            });
            bytes.zeroize();
            key
        };
        let private = decode("private_key", &file.private_key)?;
        let public = decode("public_key", &file.public_key)?;
        let peer_public = decode("peer_public_key", &file.peer_public_key)?;
        if public_of(&private) != public {
            return Err(invalid(
                "field `public_key` does not belong to `private_key`".to_string(),
            ));
        }
        if file.vehicle != vehicle.as_str() || file.role != role {
            return Err(KeyError::WrongOwner {
                path: path.to_path_buf(),
                vehicle: vehicle.to_string(),
                role,
                found_vehicle: file.vehicle.clone(),
                found_role: file.role,
            });
        }
        Ok(KeyMaterial {
            vehicle: vehicle.clone(),
            role,
            private,
            public,
            peer_public,
            prologue: prologue_for(vehicle),
        })
    }

    fn builder(&self) -> Result<Builder<'_>, snow::Error> {
        Builder::new(noise_params())
            .local_private_key(self.private.as_bytes())?
            .remote_public_key(self.peer_public.as_bytes())?
            .prologue(&self.prologue)
    }
}

/// A sliding replay window over frame counters (RFC 6479 style, as IPsec and WireGuard).
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    highest: Option<u64>,
    bits: Vec<u64>,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            highest: None,
            bits: vec![0; (REPLAY_WINDOW / 64) as usize],
        }
    }
}

impl ReplayWindow {
    fn slot(&self, counter: u64) -> (usize, u64) {
        let index = counter % REPLAY_WINDOW;
        ((index / 64) as usize, 1u64 << (index % 64))
    }

    /// Checks `counter` without recording it.
    pub fn check(&self, counter: u64) -> Result<(), Rejection> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if counter > highest {
            return Ok(());
        }
        if highest - counter >= REPLAY_WINDOW {
            return Err(Rejection::TooOld);
        }
        let (word, bit) = self.slot(counter);
        if self.bits[word] & bit != 0 {
            Err(Rejection::Replayed)
        } else {
            Ok(())
        }
    }

    /// Records `counter` as received; call only after the frame authenticated.
    pub fn record(&mut self, counter: u64) {
        match self.highest {
            None => {
                self.highest = Some(counter);
            }
            Some(highest) if counter > highest => {
                let advance = counter - highest;
                if advance >= REPLAY_WINDOW {
                    self.bits.iter_mut().for_each(|w| *w = 0);
                } else {
                    for c in highest + 1..=counter {
                        let (word, bit) = self.slot(c);
                        self.bits[word] &= !bit;
                    }
                }
                self.highest = Some(counter);
            }
            Some(_) => {}
        }
        let (word, bit) = self.slot(counter);
        self.bits[word] |= bit;
    }
}

/// The keys of one established session, both directions.
pub struct Session {
    id: u64,
    transport: StatelessTransportState,
    next_counter: u64,
    replay: ReplayWindow,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &format_args!("{:016x}", self.id))
            .field("next_counter", &self.next_counter)
            .finish_non_exhaustive()
    }
}

/// The clear header of a sealed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Session the frame is sealed under.
    pub session: u64,
    /// Frame counter within the session (the nonce's high bits).
    pub counter: u64,
}

/// Reads a sealed frame's clear header.
pub fn peek_header(frame: &[u8]) -> Result<FrameHeader, Rejection> {
    if frame.len() < FRAME_HEADER_LEN + TAG_LEN {
        return Err(Rejection::Malformed);
    }
    if frame[0] != WIRE_VERSION {
        return Err(Rejection::UnsupportedVersion);
    }
    let session = u64::from_le_bytes(frame[1..9].try_into().expect("8 bytes"));
    let counter = u64::from_le_bytes(frame[9..17].try_into().expect("8 bytes"));
    if counter > MAX_COUNTER {
        return Err(Rejection::Malformed);
    }
    Ok(FrameHeader { session, counter })
}

fn chunk_nonce(counter: u64, index: usize, last: bool) -> u64 {
    (counter << 16) | index as u64 | if last { LAST_CHUNK_FLAG } else { 0 }
}

/// Bytes a sealed frame of `plaintext_len` bytes takes on the wire.
pub fn sealed_len(plaintext_len: usize) -> usize {
    let chunks = plaintext_len.div_ceil(CHUNK_PLAINTEXT).max(1);
    FRAME_HEADER_LEN + plaintext_len + chunks * TAG_LEN
}

impl Session {
    fn new(id: u64, transport: StatelessTransportState) -> Self {
        Self {
            id,
            transport,
            next_counter: 0,
            replay: ReplayWindow::default(),
        }
    }

    /// The session id carried in every frame's header.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Frames sealed so far in this session.
    pub fn frames_sealed(&self) -> u64 {
        self.next_counter
    }

    /// Seals `plaintext` into a new frame, appended to `out`.
    pub fn seal_into(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), KeyError> {
        if plaintext.len() > MAX_FRAME_PLAINTEXT {
            return Err(KeyError::Noise(format!(
                "frame of {} bytes exceeds the {} byte limit",
                plaintext.len(),
                MAX_FRAME_PLAINTEXT
            )));
        }
        if self.next_counter > MAX_COUNTER {
            return Err(KeyError::Noise(
                "session counter exhausted; rotate keys".into(),
            ));
        }
        let counter = self.next_counter;
        self.next_counter += 1;
        let start = out.len();
        out.reserve(sealed_len(plaintext.len()));
        out.push(WIRE_VERSION);
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&counter.to_le_bytes());
        let chunks: Vec<&[u8]> = if plaintext.is_empty() {
            vec![&[][..]]
        } else {
            plaintext.chunks(CHUNK_PLAINTEXT).collect()
        };
        let last_index = chunks.len() - 1;
        for (index, chunk) in chunks.into_iter().enumerate() {
            let at = out.len();
            out.resize(at + chunk.len() + TAG_LEN, 0);
            let nonce = chunk_nonce(counter, index, index == last_index);
            self.transport
                .write_message(nonce, chunk, &mut out[at..])
                .map_err(|e| {
                    out.truncate(start);
                    KeyError::Noise(e.to_string())
                })?;
        }
        Ok(())
    }

    /// Seals `plaintext` into a new frame.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut out = Vec::new();
        self.seal_into(plaintext, &mut out)?;
        Ok(out)
    }

    /// Opens a frame sealed under this session, checking and recording its counter.
    pub fn open(&mut self, frame: &[u8]) -> Result<Vec<u8>, Rejection> {
        let mut out = Vec::new();
        self.open_into(frame, &mut out)?;
        Ok(out)
    }

    /// Like [`Session::open`], writing the plaintext into `out` (cleared first).
    pub fn open_into(&mut self, frame: &[u8], out: &mut Vec<u8>) -> Result<(), Rejection> {
        let header = peek_header(frame)?;
        if header.session != self.id {
            return Err(Rejection::UnknownSession);
        }
        self.replay.check(header.counter)?;
        let body = &frame[FRAME_HEADER_LEN..];
        let chunk_wire = CHUNK_PLAINTEXT + TAG_LEN;
        let chunks = body.len().div_ceil(chunk_wire).max(1);
        let last_len = body.len() - (chunks - 1) * chunk_wire;
        if last_len < TAG_LEN || body.len() - chunks * TAG_LEN > MAX_FRAME_PLAINTEXT {
            return Err(Rejection::Malformed);
        }
        out.clear();
        out.resize(body.len() - chunks * TAG_LEN, 0);
        let mut written = 0;
        for (index, sealed) in body.chunks(chunk_wire).enumerate() {
            let nonce = chunk_nonce(header.counter, index, index == chunks - 1);
            let n = self
                .transport
                .read_message(nonce, sealed, &mut out[written..])
                .map_err(|_| Rejection::AuthFailed)?;
            written += n;
        }
        out.truncate(written);
        self.replay.record(header.counter);
        Ok(())
    }
}

/// Payload of the handshake's first message, inside Noise's encryption.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello<T> {
    /// Vehicle the initiator believes it talks for (must match the responder's).
    pub vehicle: String,
    /// Session id the initiator chose (random).
    pub session: u64,
    /// Application data (catch-up state).
    pub body: T,
}

/// An initiator's handshake in flight.
pub struct PendingHandshake {
    state: Box<HandshakeState>,
    session: u64,
}

impl fmt::Debug for PendingHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PendingHandshake({:016x})", self.session)
    }
}

impl PendingHandshake {
    /// The session id this handshake will establish.
    pub fn session_id(&self) -> u64 {
        self.session
    }
}

fn encode_handshake(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + message.len());
    out.push(WIRE_VERSION);
    out.extend_from_slice(message);
    out
}

fn decode_handshake(bytes: &[u8]) -> Result<&[u8], Rejection> {
    match bytes.first() {
        None => Err(Rejection::Malformed),
        Some(&WIRE_VERSION) => Ok(&bytes[1..]),
        Some(_) => Err(Rejection::UnsupportedVersion),
    }
}

/// Starts a handshake as the initiator (the PE): returns the state and the first message.
pub fn initiate<T: Serialize>(
    material: &KeyMaterial,
    session: u64,
    body: &T,
) -> Result<(PendingHandshake, Vec<u8>), KeyError> {
    let noise = |e: snow::Error| KeyError::Noise(e.to_string());
    let mut state = material
        .builder()
        .map_err(noise)?
        .build_initiator()
        .map_err(noise)?;
    let hello = Hello {
        vehicle: material.vehicle.to_string(),
        session,
        body,
    };
    let payload = postcard::to_stdvec(&hello).map_err(|e| KeyError::Noise(e.to_string()))?;
    let mut message = vec![0u8; NOISE_MAX];
    let n = state.write_message(&payload, &mut message).map_err(noise)?;
    message.truncate(n);
    Ok((
        PendingHandshake {
            state: Box::new(state),
            session,
        },
        encode_handshake(&message),
    ))
}

/// Answers a first handshake message as the responder (the DR).
///
/// Returns the new session (not yet confirmed), the initiator's hello and the answer.
pub fn respond<T, R>(
    material: &KeyMaterial,
    first: &[u8],
    reply: impl FnOnce(&Hello<T>) -> R,
) -> Result<(Session, Hello<T>, Vec<u8>), Rejection>
where
    T: for<'de> Deserialize<'de>,
    R: Serialize,
{
    let first = decode_handshake(first)?;
    let mut state = material
        .builder()
        .and_then(|b| b.build_responder())
        .map_err(|_| Rejection::HandshakeFailed)?;
    let mut payload = vec![0u8; NOISE_MAX];
    let n = state
        .read_message(first, &mut payload)
        .map_err(|_| Rejection::HandshakeFailed)?;
    let hello: Hello<T> =
        postcard::from_bytes(&payload[..n]).map_err(|_| Rejection::HandshakeFailed)?;
    if hello.vehicle != material.vehicle.as_str() {
        return Err(Rejection::HandshakeFailed);
    }
    let answer = postcard::to_stdvec(&reply(&hello)).map_err(|_| Rejection::HandshakeFailed)?;
    let mut message = vec![0u8; NOISE_MAX];
    let n = state
        .write_message(&answer, &mut message)
        .map_err(|_| Rejection::HandshakeFailed)?;
    message.truncate(n);
    let transport = state
        .into_stateless_transport_mode()
        .map_err(|_| Rejection::HandshakeFailed)?;
    Ok((
        Session::new(hello.session, transport),
        hello,
        encode_handshake(&message),
    ))
}

/// Completes the initiator's handshake with the responder's answer.
///
/// An answer that does not authenticate (a rogue responder, a forgery) gives the pending
/// handshake back unchanged, so the next answer can still complete it.
pub fn complete<R>(
    pending: PendingHandshake,
    answer: &[u8],
) -> Result<(Session, R), (Rejection, Option<PendingHandshake>)>
where
    R: for<'de> Deserialize<'de>,
{
    let answer = match decode_handshake(answer) {
        Ok(a) => a,
        Err(reason) => return Err((reason, Some(pending))),
    };
    let PendingHandshake { mut state, session } = pending;
    let mut payload = vec![0u8; NOISE_MAX];
    let n = match state.read_message(answer, &mut payload) {
        Ok(n) => n,
        // snow restores its state when a message fails to authenticate.
        Err(_) => {
            return Err((
                Rejection::HandshakeFailed,
                Some(PendingHandshake { state, session }),
            ))
        }
    };
    let body: R =
        postcard::from_bytes(&payload[..n]).map_err(|_| (Rejection::HandshakeFailed, None))?;
    let transport = (*state)
        .into_stateless_transport_mode()
        .map_err(|_| (Rejection::HandshakeFailed, None))?;
    Ok((Session::new(session, transport), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (KeyMaterial, KeyMaterial) {
        KeyMaterial::generate_pair(&VehicleId::new("veh-1").unwrap()).unwrap()
    }

    fn sessions() -> (Session, Session) {
        let (pe, dr) = pair();
        let (pending, first) = initiate(&pe, 7, &42u32).unwrap();
        let (dr_session, hello, answer) = respond::<u32, u32>(&dr, &first, |h| h.body + 1).unwrap();
        assert_eq!(hello.body, 42);
        assert_eq!(hello.session, 7);
        let (pe_session, reply) = complete::<u32>(pending, &answer).unwrap();
        assert_eq!(reply, 43);
        (pe_session, dr_session)
    }

    #[test]
    fn frames_round_trip_both_ways_and_are_not_plaintext() {
        let (mut pe, mut dr) = sessions();
        let secret = b"speed=13.9 frame_id=base_link".to_vec();
        let frame = pe.seal(&secret).unwrap();
        assert!(!frame.windows(9).any(|w| w == b"base_link"));
        assert_eq!(frame.len(), sealed_len(secret.len()));
        assert_eq!(dr.open(&frame).unwrap(), secret);
        let back = dr.seal(b"ack").unwrap();
        assert_eq!(pe.open(&back).unwrap(), b"ack");
        // A frame is only readable in the direction it was sealed for.
        let own = pe.seal(b"x").unwrap();
        assert_eq!(pe.open(&own), Err(Rejection::AuthFailed));
    }

    #[test]
    fn replayed_old_and_tampered_frames_are_refused() {
        let (mut pe, mut dr) = sessions();
        let frames: Vec<_> = (0..5).map(|i| pe.seal(&[i; 100]).unwrap()).collect();
        assert!(dr.open(&frames[1]).is_ok());
        assert!(
            dr.open(&frames[0]).is_ok(),
            "reordering within the window is fine"
        );
        assert_eq!(dr.open(&frames[1]), Err(Rejection::Replayed));
        let mut tampered = frames[2].clone();
        tampered[FRAME_HEADER_LEN + 3] ^= 1;
        assert_eq!(dr.open(&tampered), Err(Rejection::AuthFailed));
        assert!(
            dr.open(&frames[2]).is_ok(),
            "a failed forgery does not burn the counter"
        );
        let mut counter_swapped = frames[3].clone();
        counter_swapped[9] = 4;
        assert_eq!(dr.open(&counter_swapped), Err(Rejection::AuthFailed));
        let mut other_session = frames[3].clone();
        other_session[1] ^= 0xff;
        assert_eq!(dr.open(&other_session), Err(Rejection::UnknownSession));
        let mut version = frames[3].clone();
        version[0] = 9;
        assert_eq!(dr.open(&version), Err(Rejection::UnsupportedVersion));
        assert_eq!(dr.open(&frames[3][..10]), Err(Rejection::Malformed));
        for _ in 0..REPLAY_WINDOW {
            pe.seal(b"").unwrap();
        }
        let newest = pe.seal(b"n").unwrap();
        assert!(dr.open(&newest).is_ok());
        assert_eq!(dr.open(&frames[4]), Err(Rejection::TooOld));
    }

    #[test]
    fn large_frames_are_chunked_and_cannot_be_truncated_or_extended() {
        let (mut pe, mut dr) = sessions();
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7) as u8).collect();
        let frame = pe.seal(&big).unwrap();
        assert_eq!(frame.len(), sealed_len(big.len()));
        let chunk_wire = CHUNK_PLAINTEXT + TAG_LEN;
        // Cut after a whole number of chunks: the last remaining chunk lacks the last flag.
        let truncated = &frame[..FRAME_HEADER_LEN + 3 * chunk_wire];
        assert_eq!(dr.open(truncated), Err(Rejection::AuthFailed));
        let mut extended = frame.clone();
        extended.extend_from_slice(&frame[FRAME_HEADER_LEN..FRAME_HEADER_LEN + chunk_wire]);
        assert_eq!(dr.open(&extended), Err(Rejection::AuthFailed));
        assert_eq!(dr.open(&frame).unwrap(), big);
        let exact = vec![5u8; CHUNK_PLAINTEXT * 2];
        let frame = pe.seal(&exact).unwrap();
        assert_eq!(dr.open(&frame).unwrap(), exact);
        let empty = pe.seal(&[]).unwrap();
        assert_eq!(dr.open(&empty).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn handshakes_fail_with_other_keys_or_vehicle_and_tampering() {
        let (pe, dr) = pair();
        let (_, stranger) = pair();
        let (_, first) = initiate(&pe, 1, &()).unwrap();
        assert_eq!(
            respond::<(), ()>(&stranger, &first, |_| ()).unwrap_err(),
            Rejection::HandshakeFailed
        );
        let mut tampered = first.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            respond::<(), ()>(&dr, &tampered, |_| ()).unwrap_err(),
            Rejection::HandshakeFailed
        );
        let (pending, first) = initiate(&pe, 2, &()).unwrap();
        let (_, _, mut answer) = respond::<(), ()>(&dr, &first, |_| ()).unwrap();
        let good = answer.clone();
        answer[5] ^= 1;
        let (reason, pending) = complete::<()>(pending, &answer).unwrap_err();
        assert_eq!(reason, Rejection::HandshakeFailed);
        // A rogue answer does not spoil the handshake: the real one still completes it.
        let (_, stranger_answer) = {
            let (p2, f2) = initiate(&pe, 3, &()).unwrap();
            drop(p2);
            let (_, _, a) = respond::<(), ()>(&dr, &f2, |_| ()).unwrap();
            ((), a)
        };
        let (reason, pending) = complete::<()>(pending.unwrap(), &stranger_answer).unwrap_err();
        assert_eq!(reason, Rejection::HandshakeFailed);
        complete::<()>(pending.unwrap(), &good).unwrap();
    }

    #[test]
    fn replay_window_tracks_exactly_what_it_saw() {
        let mut w = ReplayWindow::default();
        for c in [5u64, 3, 9, 4] {
            w.check(c).unwrap();
            w.record(c);
        }
        for c in [5u64, 3, 9, 4] {
            assert_eq!(w.check(c), Err(Rejection::Replayed));
        }
        for c in [0u64, 1, 2, 6, 7, 8, 10] {
            w.check(c).unwrap();
        }
        w.record(9 + REPLAY_WINDOW);
        assert_eq!(w.check(9), Err(Rejection::TooOld));
        w.check(10).unwrap();
        assert_eq!(w.check(9 + REPLAY_WINDOW), Err(Rejection::Replayed));
    }

    #[test]
    fn key_files_are_private_checked_and_never_print_secrets() {
        let dir = std::env::temp_dir().join(format!("twinlink-keys-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let vehicle = VehicleId::new("veh-1").unwrap();
        let (pe, dr) = KeyMaterial::generate_pair(&vehicle).unwrap();
        let path = dir.join(KeyMaterial::file_name(&vehicle, Role::Pe));
        let _ = fs::remove_file(&path);
        pe.save(&path, false).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(pe.save(&path, false).is_err(), "no silent overwrite");
        let loaded = KeyMaterial::load(&path, &vehicle, Role::Pe).unwrap();
        assert_eq!(loaded.public_key(), pe.public_key());
        assert_eq!(loaded.peer_public_key(), dr.public_key());
        let private_hex = hex::encode(pe.private.as_bytes());
        assert!(!format!("{loaded:?}").contains(&private_hex));
        let err = KeyMaterial::load(&path, &vehicle, Role::Dr).unwrap_err();
        assert!(matches!(err, KeyError::WrongOwner { .. }), "{err}");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = KeyMaterial::load(&path, &vehicle, Role::Pe).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();

        let text = fs::read_to_string(&path).unwrap();
        let other = KeyMaterial::generate_pair(&vehicle).unwrap().0;
        let swapped = text.replace(
            &hex::encode(pe.public_key().as_bytes()),
            &hex::encode(other.public_key().as_bytes()),
        );
        fs::write(&path, swapped).unwrap();
        let err = KeyMaterial::load(&path, &vehicle, Role::Pe).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        assert!(!err.to_string().contains(&private_hex));
        fs::write(
            &path,
            text.replace("\"private_key\": \"", "\"private_key\": \"zz"),
        )
        .unwrap();
        let err = KeyMaterial::load(&path, &vehicle, Role::Pe).unwrap_err();
        assert!(
            err.to_string().contains("`private_key` is not hexadecimal"),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
