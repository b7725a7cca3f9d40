//! The DR's tamper-evident history: one append-only, hash-chained, signed audit log per
//! vehicle.
//!
//! A DR records every message it exchanges with its vehicle, every disclosure of the
//! vehicle's data to another party, every change of the sharing policy and its own
//! lifecycle. An auditor (or the vehicle's owner) can later check that nothing in that
//! history was altered, removed or reordered. The log holds digests of payloads, never the
//! payloads themselves.
//!
//! # Design
//!
//! **Files.** A vehicle's DR keeps, in its own directory (`<data-dir>/<vehicle-id>/`):
//!
//! | file | what | mode |
//! | --- | --- | --- |
//! | `audit.log` | the records, one JSON object per line, append-only | 0600 |
//! | `audit.key` | the ed25519 key that signs this log's checkpoints (JSON) | 0600 |
//! | `audit.pub` | the public key, 64 hex digits and a newline, for operators to pin | 0644 |
//!
//! **Records.** Every line of `audit.log` is one record with these fields, in this order:
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `index` | integer | 0-based position in the log; consecutive |
//! | `time_us` | integer | wall-clock time of writing, microseconds since the Unix epoch |
//! | `kind` | string | [`Kind`], snake_case: `genesis`, `exchange_in`, `exchange_out`, `disclosure`, `policy`, `lifecycle`, `checkpoint` |
//! | `detail` | object | a small JSON object describing the event (stream, type name, sequence number, byte count, peer, category, ...) |
//! | `payload_sha256` | string | SHA-256 of the payload bytes, 64 lowercase hex digits (of the empty string when there is no payload) |
//! | `prev` | string | the `hash` of the previous record, 64 lowercase hex digits; all zeros for record 0 |
//! | `hash` | string | SHA-256 of the record's canonical encoding (below), 64 lowercase hex digits |
//!
//! **Canonical encoding.** A record's hash is SHA-256 over the UTF-8 bytes of
//!
//! ```text
//! {"index":I,"time_us":T,"kind":"K","detail":D,"payload_sha256":"P","prev":"R"}
//! ```
//!
//! that is the record without its `hash` field, fields in exactly this order, no whitespace
//! anywhere. `I` and `T` are decimal integers; `P` and `R` lowercase hex. `D` is the detail
//! object written with its object keys (at every depth) sorted by their UTF-8 bytes, no
//! whitespace, strings escaped as serde_json does (only `"`, `\` and control characters;
//! `\b \f \n \r \t`, other controls as `\u00xx` with lowercase hex; non-ASCII as is).
//! [`AuditLog::append`] refuses details with non-integer numbers so that every detail
//! survives a parse and re-encode byte for byte. The line written to the file is that same
//! text with `,"hash":"H"` inserted before the final `}`, then `\n`. The hash covers the
//! record's content, not its bytes: a line reformatted without changing any value still
//! verifies.
//!
//! **Chain.** Each record's `prev` is the previous record's `hash`, so changing any record
//! changes its hash and breaks the link from the next one, and recomputing that hash breaks
//! the next link, and so on to the end of the log.
//!
//! **Genesis.** Record 0 has kind `genesis`, an empty payload and the detail
//! `{"format":"twinlink-audit/1","public_key":"<64 hex>","vehicle":"<vehicle id>"}`: the
//! vehicle this log belongs to and the ed25519 public key that signs its checkpoints.
//!
//! **Checkpoints.** A `checkpoint` record is written after every
//! [`AuditConfig::checkpoint_every`] records that are not checkpoints (the genesis counts;
//! default 256), and on demand by [`AuditLog::checkpoint`], which the DR calls at clean
//! shutdown ([`AuditLog::close`]). Its payload is empty and its detail is
//! `{"signature":"<128 hex>"}`: an ed25519 signature over the bytes
//!
//! ```text
//! "twinlink-audit-checkpoint/1"   27 ASCII bytes (domain separation)
//! 0x00                            1 byte
//! len(vehicle id)                 4 bytes, big-endian
//! vehicle id                      its UTF-8 bytes
//! index                           8 bytes, big-endian: the checkpoint record's own index
//! prev                            32 bytes: the hash of the record before the checkpoint
//! ```
//!
//! Because `prev` commits to the whole chain before it, one signature vouches for every
//! earlier record. The checkpoint record itself is chained like any other. Signatures are
//! checked with `verify_strict`.
//!
//! **Key.** `audit.key` is JSON:
//! `{"format":"twinlink-audit-key/1","vehicle":"<id>","secret_key":"<64 hex>","public_key":"<64 hex>"}`,
//! mode 0600, created with the log on first open from 32 random bytes. Opening refuses a key
//! file that group or others can access, that was made for another vehicle, or whose
//! `public_key` does not belong to its `secret_key`, naming the field.
//!
//! **Durability.** Appends are buffered writes; the file is flushed and fsynced at every
//! checkpoint and on [`AuditLog::sync`]. A crash may leave a torn last line (no newline):
//! [`AuditLog::open`] cuts it off, logs a warning, and (like after any crash that left
//! records after the last checkpoint) appends a `lifecycle` record
//! `{"event":"recovered","torn_bytes":N,"unsigned_records":M}`, so the recovery itself is
//! part of the history ([`AuditLog::recovered`]). A log that fails verification is an error
//! on open: a DR never extends a tampered history. One process writes a directory at a
//! time (the host runs one DR per vehicle); the whole log is read and verified on open.
//!
//! **Verification.** [`verify`] reads the whole log and lists every problem it finds
//! ([`Problem`]), naming records by index and lines by number (1-based), and counts
//! records and checkpoints. It classifies what happened:
//!
//! - the records whose indices increase along the file form the *spine* (the longest such
//!   sequence; among equally long ones, the one that keeps earlier lines); a record off the
//!   spine is *out of order* (named with the record it follows in the file), or a
//!   *duplicate* when the spine already holds its index;
//! - a record whose hash does not match its content is *altered*; when its index field
//!   itself was altered and it sits alone in a gap of the spine, it is named by its
//!   position;
//! - indices missing from the spine that appear nowhere in the file were *removed*;
//! - a record whose content matches its hash but that the next record does not link to
//!   was *altered and re-hashed*;
//! - a checkpoint whose signature does not verify (with the pinned key when one is given,
//!   otherwise the genesis key) is a *bad signature*; a genesis key other than the pinned
//!   key, a genesis for another vehicle, and lines that are not records are failures;
//! - records after the last valid checkpoint are an *unsigned tail* and a torn last line
//!   is a *torn tail*: warnings, not failures ([`VerifyReport::is_intact`] ignores them).
//!
//! # Limits
//!
//! - **Truncation.** Records cut off the end of the log, even before its last checkpoint,
//!   leave a shorter log that is indistinguishable from one that was never longer. A clean
//!   shutdown ends the log with a checkpoint, so an auditor who knows the DR stopped
//!   cleanly should expect the last record to be a checkpoint; anchoring checkpoint hashes
//!   outside the host would close this gap.
//! - **Unsigned tail.** Records after the last checkpoint can be rewritten wholesale (and
//!   their hashes recomputed) without a trace; hence the warning.
//! - **The key.** Whoever holds `audit.key` can rewrite the whole history and re-sign it.
//!   Whoever can replace both the log and the key can start a new history with a new key:
//!   only a public key pinned elsewhere (from `audit.pub`, at provisioning) detects that.
//! - **Privacy.** Payloads are never stored, but the SHA-256 of a small, guessable payload
//!   can be confirmed by hashing guesses; details must not carry personal data.
//! - **Classification** is a best explanation, not a proof: several tamperings close
//!   together can be named differently from how they were made (for example, a removal
//!   whose following records were renumbered and re-hashed shows only as a bad signature
//!   at the next checkpoint). Still, short of the key being stolen, any change to the
//!   records before a checkpoint that is still in the log is detected.
//! - **Time** is recorded, not checked: wall clocks step, so `time_us` may go backwards.

#![warn(missing_docs)]

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use twinlink_link::VehicleId;

/// File name of the log inside a vehicle's directory.
pub const LOG_FILE: &str = "audit.log";
/// File name of the signing key inside a vehicle's directory.
pub const KEY_FILE: &str = "audit.key";
/// File name of the public key (hex) inside a vehicle's directory.
pub const PUBLIC_KEY_FILE: &str = "audit.pub";
/// The `format` of a log, in its genesis record's detail.
pub const LOG_FORMAT: &str = "twinlink-audit/1";
/// The `format` of a key file.
pub const KEY_FORMAT: &str = "twinlink-audit-key/1";
/// Domain-separation prefix of the bytes a checkpoint signs.
pub const CHECKPOINT_DOMAIN: &[u8] = b"twinlink-audit-checkpoint/1";
/// Default number of records between automatic checkpoints.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 256;
/// Largest canonical encoding of a record's detail, in bytes.
pub const MAX_DETAIL_BYTES: usize = 4096;

/// `prev` of record 0.
const ZERO_HASH: [u8; 32] = [0; 32];

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Record 0: the vehicle and the key that signs the log (written by the log itself).
    Genesis,
    /// A message received from the vehicle (PE).
    ExchangeIn,
    /// A message sent to the vehicle (PE).
    ExchangeOut,
    /// Data given to another party: who, what category, what precision.
    Disclosure,
    /// A change of the vehicle's sharing policy.
    Policy,
    /// The DR's lifecycle: start, stop, restart, recovered.
    Lifecycle,
    /// A signature over the chain so far (written by the log itself).
    Checkpoint,
}

impl Kind {
    /// The snake_case name used in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Genesis => "genesis",
            Kind::ExchangeIn => "exchange_in",
            Kind::ExchangeOut => "exchange_out",
            Kind::Disclosure => "disclosure",
            Kind::Policy => "policy",
            Kind::Lifecycle => "lifecycle",
            Kind::Checkpoint => "checkpoint",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settings of an [`AuditLog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditConfig {
    /// Write a checkpoint after this many records that are not checkpoints (at least 1).
    pub checkpoint_every: u64,
    /// Whether a checkpoint waits for its fsync. Off, the checkpoint is only handed to the
    /// operating system and [`AuditLog::take_deferred_sync`] gives the fsync to run
    /// elsewhere (an async host runs it on a blocking thread, not on the task that appends).
    pub sync_at_checkpoint: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            sync_at_checkpoint: true,
        }
    }
}

/// Errors opening, writing or verifying an audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// There is no log to verify.
    #[error("no audit log at {}", .path.display())]
    NoLog {
        /// Where the log was expected.
        path: PathBuf,
    },
    /// The key file is accessible to group or others.
    #[error("audit key file {} has mode {mode:o}; it must not be accessible to group or others (chmod 600 {})", .path.display(), .path.display())]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file (or `audit.pub`) is missing, malformed or belongs elsewhere.
    #[error("audit key file {}: {reason}", .path.display())]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// The existing log failed verification; it is not extended.
    #[error("audit log {} failed verification; refusing to extend it: {report}", .path.display())]
    Tampered {
        /// The log.
        path: PathBuf,
        /// Everything verification found.
        report: Box<VerifyReport>,
    },
    /// An argument was refused (reserved kind, bad detail, bad setting, bad key text).
    #[error("{0}")]
    Invalid(String),
    /// An earlier write failed; the log must be reopened (which repairs a torn line).
    #[error("audit log {} is unusable after an earlier write error; reopen it", .path.display())]
    Failed {
        /// The log.
        path: PathBuf,
    },
}

/// What [`AuditLog::open`] repaired after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes of an incomplete last line that were cut off.
    pub torn_bytes: u64,
    /// Records found after the last checkpoint (written but never signed).
    pub unsigned_records: u64,
    /// Index of the `lifecycle` record (`"event":"recovered"`) that records the recovery.
    pub record: u64,
}

/// One vehicle's audit log, open for appending.
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    log_path: PathBuf,
    vehicle: VehicleId,
    key: SigningKey,
    config: AuditConfig,
    out: BufWriter<File>,
    /// A checkpoint was written whose fsync was deferred.
    sync_deferred: bool,
    len: u64,
    head: [u8; 32],
    since_checkpoint: u64,
    last_checkpoint: Option<u64>,
    failed: bool,
    recovered: Option<Recovery>,
}

// A log always holds its genesis record, so it is never empty.
#[allow(clippy::len_without_is_empty)]
impl AuditLog {
    /// Opens the log of `vehicle` in `dir` (the vehicle's own directory), creating the
    /// directory (0700), the key and the log on first use.
    ///
    /// An existing log is read and verified against the key file's public key; a log that
    /// fails verification is refused ([`AuditError::Tampered`]). A torn last line is cut off
    /// and, like records left after the last checkpoint by a crash, recorded in a
    /// `lifecycle` `recovered` record ([`AuditLog::recovered`]).
    pub fn open(
        dir: &Path,
        vehicle: &VehicleId,
        config: AuditConfig,
    ) -> Result<AuditLog, AuditError> {
        if config.checkpoint_every == 0 {
            return Err(AuditError::Invalid(
                "checkpoint_every must be at least 1".to_string(),
            ));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_at(dir))?;
        let log_path = dir.join(LOG_FILE);
        let existing = match fs::read(&log_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_at(&log_path)(e)),
        };
        let has_records = existing.contains(&b'\n');
        let key_path = dir.join(KEY_FILE);
        let key = match fs::symlink_metadata(&key_path) {
            Ok(_) => load_key(&key_path, vehicle)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if has_records {
                    return Err(AuditError::KeyFile {
                        path: key_path,
                        reason: format!(
                            "missing, but {} exists; it cannot be extended without the key that signs its checkpoints",
                            log_path.display()
                        ),
                    });
                }
                create_key(dir, &key_path, vehicle)?
            }
            Err(e) => return Err(io_at(&key_path)(e)),
        };
        write_or_check_public_key(dir, &key)?;
        if has_records {
            Self::reopen(dir, log_path, vehicle, key, config, &existing)
        } else {
            Self::create(dir, log_path, vehicle, key, config, existing.len() as u64)
        }
    }

    fn create(
        dir: &Path,
        log_path: PathBuf,
        vehicle: &VehicleId,
        key: SigningKey,
        config: AuditConfig,
        torn_bytes: u64,
    ) -> Result<AuditLog, AuditError> {
        // Truncates a file that holds nothing but a torn line (a crash while writing the
        // genesis record).
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(io_at(&log_path))?;
        let mut log = AuditLog {
            dir: dir.to_path_buf(),
            log_path,
            vehicle: vehicle.clone(),
            key,
            config,
            out: BufWriter::with_capacity(64 * 1024, file),
            sync_deferred: false,
            len: 0,
            head: ZERO_HASH,
            since_checkpoint: 0,
            last_checkpoint: None,
            failed: false,
            recovered: None,
        };
        let mut detail = Map::new();
        detail.insert("format".into(), LOG_FORMAT.into());
        detail.insert("vehicle".into(), vehicle.as_str().into());
        detail.insert(
            "public_key".into(),
            hex::encode(log.key.verifying_key().to_bytes()).into(),
        );
        log.write_record(Kind::Genesis, &detail, &sha256(b""))?;
        log.sync()?;
        sync_dir(dir)?;
        if torn_bytes > 0 {
            log.record_recovery(torn_bytes, 0)?;
        }
        Ok(log)
    }

    fn reopen(
        dir: &Path,
        log_path: PathBuf,
        vehicle: &VehicleId,
        key: SigningKey,
        config: AuditConfig,
        bytes: &[u8],
    ) -> Result<AuditLog, AuditError> {
        let pinned = key.verifying_key();
        let analysis = analyze(bytes, &log_path, vehicle, Some(pinned));
        let tail = match analysis.tail {
            Some(tail) if analysis.report.is_intact() => tail,
            _ => {
                return Err(AuditError::Tampered {
                    path: log_path,
                    report: Box::new(analysis.report),
                })
            }
        };
        let torn_bytes = (bytes.len() - analysis.complete_len) as u64;
        if torn_bytes > 0 {
            tracing::warn!(
                log = %log_path.display(),
                torn_bytes,
                "audit log: cutting off an incomplete last line left by a crash"
            );
            let file = OpenOptions::new()
                .write(true)
                .open(&log_path)
                .map_err(io_at(&log_path))?;
            file.set_len(analysis.complete_len as u64)
                .and_then(|()| file.sync_all())
                .map_err(io_at(&log_path))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&log_path)
            .map_err(io_at(&log_path))?;
        let since_checkpoint = match tail.last_checkpoint {
            Some(c) => tail.len - 1 - c,
            None => tail.len,
        };
        let mut log = AuditLog {
            dir: dir.to_path_buf(),
            log_path,
            vehicle: vehicle.clone(),
            key,
            config,
            out: BufWriter::with_capacity(64 * 1024, file),
            sync_deferred: false,
            len: tail.len,
            head: tail.head,
            since_checkpoint,
            last_checkpoint: tail.last_checkpoint,
            failed: false,
            recovered: None,
        };
        if torn_bytes > 0 || since_checkpoint > 0 {
            log.record_recovery(torn_bytes, since_checkpoint)?;
        }
        Ok(log)
    }

    fn record_recovery(
        &mut self,
        torn_bytes: u64,
        unsigned_records: u64,
    ) -> Result<(), AuditError> {
        let mut detail = Map::new();
        detail.insert("event".into(), "recovered".into());
        detail.insert("torn_bytes".into(), torn_bytes.into());
        detail.insert("unsigned_records".into(), unsigned_records.into());
        let record = self.write_record(Kind::Lifecycle, &detail, &sha256(b""))?;
        self.sync()?;
        tracing::warn!(
            vehicle = %self.vehicle,
            torn_bytes,
            unsigned_records,
            record,
            "audit log recovered after an unclean stop"
        );
        self.recovered = Some(Recovery {
            torn_bytes,
            unsigned_records,
            record,
        });
        Ok(())
    }

    /// Appends a record of `kind` with `detail` (a small JSON object whose numbers are
    /// integers) and the SHA-256 of `payload`; returns its index. Writes a checkpoint after
    /// it when one is due.
    ///
    /// Refuses the kinds the log writes itself (`genesis`, `checkpoint`) and details that
    /// are not objects, hold non-integer numbers or encode to more than
    /// [`MAX_DETAIL_BYTES`].
    pub fn append(&mut self, kind: Kind, detail: Value, payload: &[u8]) -> Result<u64, AuditError> {
        if matches!(kind, Kind::Genesis | Kind::Checkpoint) {
            return Err(AuditError::Invalid(format!(
                "{kind} records are written by the audit log itself"
            )));
        }
        let detail = check_detail(detail)?;
        let index = self.write_record(kind, &detail, &sha256(payload))?;
        if self.since_checkpoint >= self.config.checkpoint_every {
            self.checkpoint()?;
        }
        Ok(index)
    }

    /// Writes a signed checkpoint (unless the last record already is one) and syncs the
    /// file; returns the checkpoint's index.
    pub fn checkpoint(&mut self) -> Result<u64, AuditError> {
        self.usable()?;
        if let (0, Some(last)) = (self.since_checkpoint, self.last_checkpoint) {
            self.sync()?;
            return Ok(last);
        }
        let index = self.len;
        let message = checkpoint_message(self.vehicle.as_str(), index, &self.head);
        let signature = self.key.sign(&message);
        let mut detail = Map::new();
        detail.insert("signature".into(), hex::encode(signature.to_bytes()).into());
        self.write_record(Kind::Checkpoint, &detail, &sha256(b""))?;
        if self.config.sync_at_checkpoint {
            self.sync()?;
        } else {
            self.flush()?;
            self.sync_deferred = true;
        }
        Ok(index)
    }

    /// With [`AuditConfig::sync_at_checkpoint`] off: after a checkpoint, the fsync it
    /// deferred, to run on any thread (it syncs a second handle of the same file); `None`
    /// when no checkpoint is waiting for one.
    pub fn take_deferred_sync(
        &mut self,
    ) -> Result<Option<impl FnOnce() -> Result<(), AuditError> + Send + 'static>, AuditError> {
        if !std::mem::take(&mut self.sync_deferred) {
            return Ok(None);
        }
        self.flush()?;
        let path = self.log_path.clone();
        let file = self.out.get_ref().try_clone().map_err(io_at(&path))?;
        Ok(Some(move || file.sync_data().map_err(io_at(&path))))
    }

    /// Hands buffered records to the operating system (no fsync): they then survive the
    /// process being killed, though not the machine losing power before the next
    /// [`AuditLog::sync`] or checkpoint.
    pub fn flush(&mut self) -> Result<(), AuditError> {
        self.usable()?;
        let result = self.out.flush();
        result.map_err(|e| {
            self.failed = true;
            io_at(&self.log_path)(e)
        })
    }

    /// Flushes buffered records and fsyncs the file.
    pub fn sync(&mut self) -> Result<(), AuditError> {
        self.usable()?;
        let result = self
            .out
            .flush()
            .and_then(|()| self.out.get_ref().sync_data());
        result.map_err(|e| {
            // After a failed write or fsync, what reached the disk is unknown.
            self.failed = true;
            io_at(&self.log_path)(e)
        })
    }

    /// Clean shutdown: writes a final checkpoint and syncs; returns its index.
    pub fn close(mut self) -> Result<u64, AuditError> {
        let index = self.checkpoint()?;
        if std::mem::take(&mut self.sync_deferred) {
            self.sync()?;
        }
        Ok(index)
    }

    /// Number of records in the log (the next record's index).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Hash of the last record.
    pub fn head_hash(&self) -> [u8; 32] {
        self.head
    }

    /// The public key that verifies this log's checkpoints.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The vehicle this log belongs to.
    pub fn vehicle(&self) -> &VehicleId {
        &self.vehicle
    }

    /// The vehicle's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records written since the last checkpoint (not signed yet).
    pub fn unsigned_records(&self) -> u64 {
        self.since_checkpoint
    }

    /// What opening repaired after a crash, if anything.
    pub fn recovered(&self) -> Option<Recovery> {
        self.recovered
    }

    fn usable(&self) -> Result<(), AuditError> {
        if self.failed {
            return Err(AuditError::Failed {
                path: self.log_path.clone(),
            });
        }
        Ok(())
    }

    fn write_record(
        &mut self,
        kind: Kind,
        detail: &Map<String, Value>,
        payload_sha256: &[u8; 32],
    ) -> Result<u64, AuditError> {
        self.usable()?;
        let index = self.len;
        let (line, hash) = encode_record(index, now_us(), kind, detail, payload_sha256, &self.head);
        if let Err(e) = self.out.write_all(line.as_bytes()) {
            // Part of the line may have reached the file; reopening repairs it.
            self.failed = true;
            return Err(io_at(&self.log_path)(e));
        }
        self.len += 1;
        self.head = hash;
        if kind == Kind::Checkpoint {
            self.since_checkpoint = 0;
            self.last_checkpoint = Some(index);
        } else {
            self.since_checkpoint += 1;
        }
        Ok(index)
    }
}

/// How serious a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Tampering (or damage): the log is not intact.
    Failure,
    /// Worth knowing, not evidence of tampering.
    Warning,
}

/// One thing [`verify`] found. Records are named by index, lines by number (from 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// The log holds no records.
    Empty,
    /// A line that is not a record.
    NotARecord {
        /// The line.
        line: u64,
        /// Index of the record on the closest line before it.
        after: Option<u64>,
        /// Why it is not a record.
        reason: String,
    },
    /// The record's content does not match its hash.
    Altered {
        /// The record (by position when its index field was altered too).
        index: u64,
        /// Its line.
        line: u64,
        /// What its index field reads, when that differs from `index`.
        claimed_index: Option<u64>,
    },
    /// The record matches its hash but the next record does not link to it: it was
    /// altered and its hash recomputed.
    AlteredAndRehashed {
        /// The record.
        index: u64,
        /// Its line.
        line: u64,
    },
    /// Records `first..=last` are missing.
    Removed {
        /// First missing index.
        first: u64,
        /// Last missing index.
        last: u64,
    },
    /// A record found after a record with a higher index.
    OutOfOrder {
        /// The record.
        index: u64,
        /// Its line.
        line: u64,
        /// Index of the record on the closest line before it.
        after: Option<u64>,
    },
    /// A second record with an index the chain already holds.
    Duplicate {
        /// The index.
        index: u64,
        /// The line of the copy that is not part of the chain.
        line: u64,
        /// Whether it is an exact copy of the record in the chain.
        identical: bool,
    },
    /// A checkpoint whose signature is missing, malformed or does not verify.
    BadSignature {
        /// The checkpoint record.
        index: u64,
        /// Its line.
        line: u64,
        /// First record it should vouch for (after the previous checkpoint).
        first_covered: u64,
        /// What is wrong.
        reason: String,
    },
    /// Checkpoints that could not be checked: no genesis key and no pinned key.
    UncheckedSignatures {
        /// How many.
        count: u64,
    },
    /// The genesis record's key is not the pinned key.
    GenesisKeyMismatch {
        /// The genesis record's key (hex).
        genesis: String,
        /// The pinned key (hex).
        pinned: String,
    },
    /// The genesis record names another vehicle.
    WrongVehicle {
        /// The vehicle it names.
        found: String,
        /// The vehicle verified for.
        expected: String,
    },
    /// Record 0 is not a valid genesis record.
    BadGenesis {
        /// What is wrong.
        reason: String,
    },
    /// A genesis record other than record 0.
    MisplacedGenesis {
        /// The record.
        index: u64,
        /// Its line.
        line: u64,
    },
    /// Records after the last valid checkpoint: not signed yet (warning).
    UnsignedTail {
        /// First unsigned record.
        first: u64,
        /// Last record.
        last: u64,
    },
    /// The last line is incomplete, from a crash while writing (warning).
    TornTail {
        /// The line.
        line: u64,
        /// Its length.
        bytes: u64,
        /// Index of the record on the line before it.
        after: Option<u64>,
    },
}

impl Problem {
    /// Whether this is tampering (failure) or only worth knowing (warning).
    pub fn severity(&self) -> Severity {
        match self {
            Problem::UnsignedTail { .. } | Problem::TornTail { .. } => Severity::Warning,
            _ => Severity::Failure,
        }
    }

    /// Sort key: failures first, then by the record concerned.
    fn sort_key(&self) -> (Severity, u64) {
        let position = match self {
            Problem::Empty
            | Problem::UncheckedSignatures { .. }
            | Problem::GenesisKeyMismatch { .. }
            | Problem::WrongVehicle { .. }
            | Problem::BadGenesis { .. } => 0,
            Problem::NotARecord { after, .. } | Problem::TornTail { after, .. } => {
                after.map_or(0, |a| a + 1)
            }
            Problem::Altered { index, .. }
            | Problem::AlteredAndRehashed { index, .. }
            | Problem::OutOfOrder { index, .. }
            | Problem::Duplicate { index, .. }
            | Problem::BadSignature { index, .. }
            | Problem::MisplacedGenesis { index, .. } => *index,
            Problem::Removed { first, .. } | Problem::UnsignedTail { first, .. } => *first,
        };
        (self.severity(), position)
    }
}

fn after_text(after: Option<u64>) -> String {
    match after {
        Some(a) => format!("after record {a}"),
        None => "at the start of the log".to_string(),
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Empty => write!(
                f,
                "the log holds no records (a DR's log starts with its genesis record)"
            ),
            Problem::NotARecord {
                line,
                after,
                reason,
            } => write!(
                f,
                "line {line} is not a record ({}): {reason}",
                after_text(*after)
            ),
            Problem::Altered {
                index,
                line,
                claimed_index,
            } => {
                write!(f, "record {index} was altered (line {line}")?;
                if let Some(claimed) = claimed_index {
                    write!(f, "; its index field reads {claimed}")?;
                }
                write!(f, ")")
            }
            Problem::AlteredAndRehashed { index, line } => write!(
                f,
                "record {index} was altered and its hash recomputed (line {line}; record {} no longer links to it)",
                index + 1
            ),
            Problem::Removed { first, last } if first == last => {
                write!(f, "record {first} removed")
            }
            Problem::Removed { first, last } => write!(
                f,
                "records {first} to {last} removed ({} records)",
                last - first + 1
            ),
            Problem::OutOfOrder { index, line, after } => write!(
                f,
                "record {index} is out of order (line {line}, {})",
                after_text(*after)
            ),
            Problem::Duplicate {
                index,
                line,
                identical: true,
            } => write!(f, "record {index} appears again at line {line} (a copy)"),
            Problem::Duplicate {
                index,
                line,
                identical: false,
            } => write!(
                f,
                "a second, different record {index} at line {line} is not part of the chain (inserted or replaced)"
            ),
            Problem::BadSignature {
                index,
                line,
                first_covered,
                reason,
            } => {
                write!(f, "checkpoint record {index} (line {line}): {reason}")?;
                if *first_covered < *index {
                    write!(
                        f,
                        "; records {first_covered} to {} are not vouched for by it",
                        index - 1
                    )?;
                }
                Ok(())
            }
            Problem::UncheckedSignatures { count } => write!(
                f,
                "{count} checkpoint signature(s) could not be checked: no valid genesis key and no pinned key"
            ),
            Problem::GenesisKeyMismatch { genesis, pinned } => write!(
                f,
                "the genesis record's key {genesis} is not the pinned key {pinned}: the log was re-created or re-signed with another key"
            ),
            Problem::WrongVehicle { found, expected } => write!(
                f,
                "the genesis record names vehicle {found:?}, not {expected:?}"
            ),
            Problem::BadGenesis { reason } => {
                write!(f, "record 0 is not a valid genesis record: {reason}")
            }
            Problem::MisplacedGenesis { index, line } => {
                write!(f, "record {index} (line {line}) is a second genesis record")
            }
            Problem::UnsignedTail { first, last } if first == last => write!(
                f,
                "record {first} comes after the last valid checkpoint and is not signed yet"
            ),
            Problem::UnsignedTail { first, last } => write!(
                f,
                "records {first} to {last} come after the last valid checkpoint and are not signed yet"
            ),
            Problem::TornTail { line, bytes, after } => write!(
                f,
                "the last line ({line}, {bytes} bytes, {}) is incomplete: a crash while writing (the DR cuts it off when it reopens an otherwise intact log)",
                after_text(*after)
            ),
        }
    }
}

/// What [`verify`] found in a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The log file.
    pub path: PathBuf,
    /// The vehicle verified for.
    pub vehicle: String,
    /// Lines that are records.
    pub records: u64,
    /// Checkpoint records in the chain (valid or not).
    pub checkpoints: u64,
    /// Index of the last record in the chain.
    pub last_index: Option<u64>,
    /// Index of the last checkpoint whose signature verified.
    pub signed_through: Option<u64>,
    /// The genesis record's public key (hex), when readable.
    pub genesis_public_key: Option<String>,
    /// Whether signatures were checked with a pinned key.
    pub key_pinned: bool,
    /// Everything found: failures first, then warnings, each by record.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True when nothing but warnings was found.
    pub fn is_intact(&self) -> bool {
        self.failures().next().is_none()
    }

    /// The problems that are failures.
    pub fn failures(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity() == Severity::Failure)
    }

    /// The problems that are warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity() == Severity::Warning)
    }

    /// The report as JSON: every field, `intact`, and each problem with its `severity` and
    /// human `message`.
    pub fn to_json(&self) -> Value {
        let mut value = serde_json::to_value(self).expect("a report serializes");
        value["intact"] = self.is_intact().into();
        value["problems"] = self
            .problems
            .iter()
            .map(|p| {
                let mut item = serde_json::to_value(p).expect("a problem serializes");
                item["severity"] = serde_json::to_value(p.severity()).expect("serializes");
                item["message"] = p.to_string().into();
                item
            })
            .collect();
        value
    }
}

impl fmt::Display for VerifyReport {
    /// The failures, separated by "; " (or "intact").
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut failures = self.failures().peekable();
        if failures.peek().is_none() {
            return f.write_str("intact");
        }
        for (i, problem) in failures.enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Verifies the log in `dir` (a vehicle's directory) for `vehicle`: reads all of
/// `audit.log` and reports every problem found.
///
/// Checkpoint signatures are checked with `pinned_public_key` when given (and the genesis
/// key must equal it), otherwise with the genesis record's key. Errors only when the log
/// cannot be read or the pinned key is not a valid ed25519 key; tampering is in the report.
pub fn verify(
    dir: &Path,
    vehicle: &VehicleId,
    pinned_public_key: Option<[u8; 32]>,
) -> Result<VerifyReport, AuditError> {
    let pinned = pinned_public_key
        .map(|bytes| {
            VerifyingKey::from_bytes(&bytes).map_err(|_| {
                AuditError::Invalid(format!(
                    "pinned key {} is not an ed25519 public key",
                    hex::encode(bytes)
                ))
            })
        })
        .transpose()?;
    let path = dir.join(LOG_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(AuditError::NoLog { path }),
        Err(e) => return Err(io_at(&path)(e)),
    };
    Ok(analyze(&bytes, &path, vehicle, pinned).report)
}

/// Most bytes [`tail`] reads from the end of a log.
pub const MAX_TAIL_BYTES: u64 = 16 << 20;

/// The newest `limit` records of the log in `dir` (of kind `kind` when given, e.g.
/// `policy`), oldest first, as they are written (records still in the writer's buffer are
/// not there yet). Reads backwards from the end, at most [`MAX_TAIL_BYTES`]; a torn last
/// line (a write cut short) is skipped. For reading a twin's history, not for verifying it
/// ([`verify`]).
pub fn tail(dir: &Path, limit: usize, kind: Option<&str>) -> std::io::Result<Vec<Value>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(dir.join(LOG_FILE))?;
    let len = file.metadata()?.len();
    let mut out: Vec<Value> = Vec::new();
    let mut carry: Vec<u8> = Vec::new();
    let mut pos = len;
    let floor = len.saturating_sub(MAX_TAIL_BYTES);
    let mut first_line = true;
    while pos > floor && out.len() < limit {
        let step = (pos - floor).min(64 << 10);
        pos -= step;
        file.seek(SeekFrom::Start(pos))?;
        let mut block = vec![0u8; step as usize];
        file.read_exact(&mut block)?;
        block.extend_from_slice(&carry);
        // Whole lines only: what precedes the first newline may continue further back.
        let split = if pos == 0 {
            0
        } else {
            match block.iter().position(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => {
                    carry = block;
                    continue;
                }
            }
        };
        carry = block[..split].to_vec();
        let lines: Vec<&[u8]> = block[split..].split(|&b| b == b'\n').collect();
        for line in lines.into_iter().rev() {
            if line.is_empty() {
                continue;
            }
            let last = std::mem::replace(&mut first_line, false);
            let Ok(record) = serde_json::from_slice::<Value>(line) else {
                if last {
                    continue; // torn by a crash mid-write
                }
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a record of the audit log is not JSON (`twinctl audit verify` tells more)",
                ));
            };
            if kind.is_none_or(|k| record["kind"] == k) {
                out.push(record);
                if out.len() == limit {
                    break;
                }
            }
        }
    }
    out.reverse();
    Ok(out)
}

/// Parses a public key written as 64 hex digits (as in `audit.pub`; surrounding
/// whitespace is ignored).
pub fn parse_public_key(text: &str) -> Result<[u8; 32], AuditError> {
    let text = text.trim();
    let bytes = hex::decode(text)
        .map_err(|_| AuditError::Invalid("public key is not hexadecimal".to_string()))?;
    let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        AuditError::Invalid(format!(
            "public key has {} bytes; an ed25519 public key has 32 (64 hex digits)",
            bytes.len()
        ))
    })?;
    VerifyingKey::from_bytes(&key)
        .map_err(|_| AuditError::Invalid("public key is not an ed25519 public key".to_string()))?;
    Ok(key)
}

// ---------------------------------------------------------------------------------------
// Encoding

/// A record as read from a line.
#[derive(Debug, Clone)]
struct Record {
    index: u64,
    time_us: u64,
    kind: Kind,
    detail: Map<String, Value>,
    payload_sha256: [u8; 32],
    prev: [u8; 32],
    hash: [u8; 32],
}

/// The JSON shape of a line, before its fields are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    index: u64,
    time_us: u64,
    kind: Kind,
    detail: Value,
    payload_sha256: String,
    prev: String,
    hash: String,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Writes `value` with object keys sorted by their UTF-8 bytes, at every depth, and no
/// whitespace.
fn write_canonical(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) => write_canonical_object(out, map),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, item);
            }
            out.push(']');
        }
        // serde_json's compact form: escaping as documented, shortest round-trip numbers.
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn write_canonical_object(out: &mut String, map: &Map<String, Value>) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    out.push('{');
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::from(key.as_str()).to_string());
        out.push(':');
        write_canonical(out, &map[key]);
    }
    out.push('}');
}

/// The canonical encoding of a record without its hash (see the module docs).
fn canonical(
    index: u64,
    time_us: u64,
    kind: Kind,
    detail: &Map<String, Value>,
    payload_sha256: &[u8; 32],
    prev: &[u8; 32],
) -> String {
    let mut out = String::with_capacity(256);
    out.push_str(&format!(
        "{{\"index\":{index},\"time_us\":{time_us},\"kind\":\"{}\",\"detail\":",
        kind.as_str()
    ));
    write_canonical_object(&mut out, detail);
    out.push_str(&format!(
        ",\"payload_sha256\":\"{}\",\"prev\":\"{}\"}}",
        hex::encode(payload_sha256),
        hex::encode(prev)
    ));
    out
}

/// The line (with its newline) and hash of a record.
fn encode_record(
    index: u64,
    time_us: u64,
    kind: Kind,
    detail: &Map<String, Value>,
    payload_sha256: &[u8; 32],
    prev: &[u8; 32],
) -> (String, [u8; 32]) {
    let mut line = canonical(index, time_us, kind, detail, payload_sha256, prev);
    let hash = sha256(line.as_bytes());
    line.pop(); // the closing brace
    line.push_str(&format!(",\"hash\":\"{}\"}}\n", hex::encode(hash)));
    (line, hash)
}

fn record_hash(record: &Record) -> [u8; 32] {
    sha256(
        canonical(
            record.index,
            record.time_us,
            record.kind,
            &record.detail,
            &record.payload_sha256,
            &record.prev,
        )
        .as_bytes(),
    )
}

/// The bytes a checkpoint at `index` signs (see the module docs).
fn checkpoint_message(vehicle: &str, index: u64, prev: &[u8; 32]) -> Vec<u8> {
    let vehicle = vehicle.as_bytes();
    let mut message = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 1 + 4 + vehicle.len() + 40);
    message.extend_from_slice(CHECKPOINT_DOMAIN);
    message.push(0);
    let len = u32::try_from(vehicle.len()).expect("vehicle ids are at most 64 bytes");
    message.extend_from_slice(&len.to_be_bytes());
    message.extend_from_slice(vehicle);
    message.extend_from_slice(&index.to_be_bytes());
    message.extend_from_slice(prev);
    message
}

/// 64 lowercase hex digits.
fn hex32(field: &str, text: &str) -> Result<[u8; 32], String> {
    let ok = text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !ok {
        return Err(format!("field `{field}` is not 64 lowercase hex digits"));
    }
    let mut out = [0; 32];
    hex::decode_to_slice(text, &mut out).map_err(|_| format!("field `{field}` is not hex"))?;
    Ok(out)
}

fn parse_record(line: &[u8]) -> Result<Record, String> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_string())?;
    if text.trim().is_empty() {
        return Err("empty line".to_string());
    }
    let raw: RawRecord = serde_json::from_str(text).map_err(|e| {
        // serde_json's position is within the line; the caller names the line.
        let message = e.to_string();
        let message = message
            .rsplit_once(" at line ")
            .map_or(message.as_str(), |(m, _)| m);
        match e.classify() {
            serde_json::error::Category::Data => format!("not a record: {message}"),
            _ => format!("not JSON: {message} (column {})", e.column()),
        }
    })?;
    let Value::Object(detail) = raw.detail else {
        return Err("field `detail` is not a JSON object".to_string());
    };
    Ok(Record {
        index: raw.index,
        time_us: raw.time_us,
        kind: raw.kind,
        detail,
        payload_sha256: hex32("payload_sha256", &raw.payload_sha256)?,
        prev: hex32("prev", &raw.prev)?,
        hash: hex32("hash", &raw.hash)?,
    })
}

fn check_detail(detail: Value) -> Result<Map<String, Value>, AuditError> {
    fn has_float(value: &Value) -> bool {
        match value {
            Value::Number(n) => n.is_f64(),
            Value::Array(items) => items.iter().any(has_float),
            Value::Object(map) => map.values().any(has_float),
            _ => false,
        }
    }
    let Value::Object(map) = detail else {
        return Err(AuditError::Invalid(
            "an audit record's detail must be a JSON object".to_string(),
        ));
    };
    if map.values().any(has_float) {
        return Err(AuditError::Invalid(
            "an audit record's detail may hold only integer numbers (write others as strings)"
                .to_string(),
        ));
    }
    let mut encoded = String::new();
    write_canonical_object(&mut encoded, &map);
    if encoded.len() > MAX_DETAIL_BYTES {
        return Err(AuditError::Invalid(format!(
            "an audit record's detail encodes to {} bytes; at most {MAX_DETAIL_BYTES}",
            encoded.len()
        )));
    }
    Ok(map)
}

// ---------------------------------------------------------------------------------------
// Keys

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileJson {
    format: String,
    vehicle: String,
    secret_key: String,
    public_key: String,
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Overwrites secret bytes before they are freed (best effort).
fn wipe(mut bytes: Vec<u8>) {
    bytes.fill(0);
    std::hint::black_box(&bytes);
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

fn create_key(dir: &Path, path: &Path, vehicle: &VehicleId) -> Result<SigningKey, AuditError> {
    let mut secret = rand::random::<[u8; 32]>();
    let key = SigningKey::from_bytes(&secret);
    secret.fill(0);
    std::hint::black_box(&secret);
    let file = KeyFileJson {
        format: KEY_FORMAT.to_string(),
        vehicle: vehicle.to_string(),
        secret_key: hex::encode(key.to_bytes()),
        public_key: hex::encode(key.verifying_key().to_bytes()),
    };
    let mut text = serde_json::to_string_pretty(&file).expect("a key file serializes");
    text.push('\n');
    wipe(file.secret_key.into_bytes());
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut out| {
            out.write_all(text.as_bytes())?;
            out.sync_all()
        });
    wipe(text.into_bytes());
    written.map_err(io_at(path))?;
    sync_dir(dir)?;
    Ok(key)
}

fn load_key(path: &Path, vehicle: &VehicleId) -> Result<SigningKey, AuditError> {
    let invalid = |reason: String| AuditError::KeyFile {
        path: path.to_path_buf(),
        reason,
    };
    let mode = fs::metadata(path)
        .map_err(io_at(path))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(AuditError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = fs::read_to_string(path).map_err(io_at(path))?;
    let parsed: Result<KeyFileJson, _> = serde_json::from_str(&text);
    wipe(text.into_bytes());
    // serde_json's message names the field but does not echo values.
    let file = parsed.map_err(|e| invalid(format!("not an audit key file: {e}")))?;
    let KeyFileJson {
        format,
        vehicle: file_vehicle,
        secret_key,
        public_key,
    } = file;
    let secret = hex::decode(&secret_key);
    wipe(secret_key.into_bytes());
    if format != KEY_FORMAT {
        return Err(invalid(format!(
            "field `format` is {format:?}, expected {KEY_FORMAT:?}"
        )));
    }
    if file_vehicle != vehicle.as_str() {
        return Err(invalid(format!(
            "field `vehicle` is {file_vehicle:?}, but this log belongs to {vehicle:?}",
            vehicle = vehicle.as_str()
        )));
    }
    let secret =
        secret.map_err(|_| invalid("field `secret_key` is not hexadecimal".to_string()))?;
    let secret_array: Result<[u8; 32], _> = secret.as_slice().try_into();
    let secret_len = secret.len();
    wipe(secret);
    let Ok(mut secret_array) = secret_array else {
        return Err(invalid(format!(
            "field `secret_key` has {secret_len} bytes; an ed25519 secret key has 32"
        )));
    };
    let key = SigningKey::from_bytes(&secret_array);
    secret_array.fill(0);
    std::hint::black_box(&secret_array);
    let public = hex::decode(&public_key)
        .map_err(|_| invalid("field `public_key` is not hexadecimal".to_string()))?;
    if public.as_slice() != key.verifying_key().as_bytes() {
        return Err(invalid(
            "field `public_key` does not belong to `secret_key`".to_string(),
        ));
    }
    Ok(key)
}

/// Writes `audit.pub` when missing; refuses one that names another key.
fn write_or_check_public_key(dir: &Path, key: &SigningKey) -> Result<(), AuditError> {
    let path = dir.join(PUBLIC_KEY_FILE);
    let public = hex::encode(key.verifying_key().to_bytes());
    match fs::read_to_string(&path) {
        Ok(text) if text.trim() == public => Ok(()),
        Ok(_) => Err(AuditError::KeyFile {
            path,
            reason: format!("holds a public key other than {KEY_FILE}'s `public_key` ({public})"),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)
                .and_then(|mut out| {
                    out.write_all(format!("{public}\n").as_bytes())?;
                    out.sync_all()
                })
                .map_err(io_at(&path))?;
            sync_dir(dir)
        }
        Err(e) => Err(io_at(&path)(e)),
    }
}

// ---------------------------------------------------------------------------------------
// Verification

/// A record and where it was found.
struct Entry {
    line: u64,
    record: Record,
    /// Its hash matches its content.
    valid: bool,
}

/// Where an intact log ends, to continue its chain.
struct Tail {
    len: u64,
    head: [u8; 32],
    last_checkpoint: Option<u64>,
}

struct Analysis {
    report: VerifyReport,
    /// The tail of the chain, when there is a chain.
    tail: Option<Tail>,
    /// Bytes up to and including the last newline.
    complete_len: usize,
}

/// The spine: entries in file order whose effective indices increase, with the index
/// their field claims when it differs.
struct SpineEntry {
    id: usize,
    index: u64,
    claimed: Option<u64>,
}

fn analyze(
    bytes: &[u8],
    path: &Path,
    vehicle: &VehicleId,
    pinned: Option<VerifyingKey>,
) -> Analysis {
    let mut problems = Vec::new();
    let complete_len = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let (complete, torn) = bytes.split_at(complete_len);

    // Lines.
    let mut entries: Vec<Entry> = Vec::new();
    let mut lines = 0u64;
    for raw in complete.split_inclusive(|&b| b == b'\n') {
        lines += 1;
        let after = entries.last().map(|e| e.record.index);
        match parse_record(&raw[..raw.len() - 1]) {
            Ok(record) => {
                let valid = record_hash(&record) == record.hash;
                entries.push(Entry {
                    line: lines,
                    record,
                    valid,
                });
            }
            Err(reason) => problems.push(Problem::NotARecord {
                line: lines,
                after,
                reason,
            }),
        }
    }
    if !torn.is_empty() {
        problems.push(Problem::TornTail {
            line: lines + 1,
            bytes: torn.len() as u64,
            after: entries.last().map(|e| e.record.index),
        });
    }
    if entries.is_empty() {
        problems.push(Problem::Empty);
    }

    let spine = find_spine(&entries);
    let in_spine: BTreeSet<usize> = spine.iter().map(|s| s.id).collect();
    let spine_by_index: HashMap<u64, usize> = spine.iter().map(|s| (s.index, s.id)).collect();
    let idx = |id: usize| entries[id].record.index;

    // Records off the spine: out of order or duplicates.
    let mut off_spine = BTreeSet::new();
    for (id, entry) in entries.iter().enumerate() {
        if in_spine.contains(&id) {
            continue;
        }
        let index = entry.record.index;
        off_spine.insert(index);
        if !entry.valid {
            problems.push(Problem::Altered {
                index,
                line: entry.line,
                claimed_index: None,
            });
        }
        if let Some(&twin) = spine_by_index.get(&index) {
            problems.push(Problem::Duplicate {
                index,
                line: entry.line,
                identical: entry.valid
                    && entries[twin].valid
                    && entries[twin].record.hash == entry.record.hash,
            });
        } else {
            problems.push(Problem::OutOfOrder {
                index,
                line: entry.line,
                after: id.checked_sub(1).map(idx),
            });
        }
    }

    // Gaps of the spine that no record fills: removed.
    let mut expected = 0u64;
    for s in &spine {
        if s.index > expected {
            let mut first = expected;
            for &present in off_spine.range(expected..s.index) {
                if present > first {
                    problems.push(Problem::Removed {
                        first,
                        last: present - 1,
                    });
                }
                first = present + 1;
            }
            if first < s.index {
                problems.push(Problem::Removed {
                    first,
                    last: s.index - 1,
                });
            }
        }
        expected = s.index + 1;
    }

    // Along the spine: altered records, and links broken by re-hashed records.
    for s in &spine {
        let entry = &entries[s.id];
        if !entry.valid {
            problems.push(Problem::Altered {
                index: s.index,
                line: entry.line,
                claimed_index: s.claimed,
            });
        }
    }
    let broken = |k: usize| -> bool {
        // The link from spine[k] to spine[k + 1], between two consecutive valid records.
        let (Some(a), Some(b)) = (spine.get(k), spine.get(k + 1)) else {
            return false;
        };
        let (ea, eb) = (&entries[a.id], &entries[b.id]);
        b.index == a.index + 1 && ea.valid && eb.valid && eb.record.prev != ea.record.hash
    };
    let mut k = 0;
    while k + 1 < spine.len() {
        if broken(k) {
            if broken(k + 1) {
                // Both links around spine[k + 1] are broken: its prev was changed and its
                // hash recomputed.
                let b = &spine[k + 1];
                problems.push(Problem::AlteredAndRehashed {
                    index: b.index,
                    line: entries[b.id].line,
                });
                k += 2;
                continue;
            }
            let a = &spine[k];
            problems.push(Problem::AlteredAndRehashed {
                index: a.index,
                line: entries[a.id].line,
            });
        }
        k += 1;
    }

    // Genesis.
    let mut genesis_key: Option<VerifyingKey> = None;
    let mut genesis_public_key = None;
    if let Some(first) = spine.first().filter(|s| s.index == 0) {
        let record = &entries[first.id].record;
        let bad = |reason: String| Problem::BadGenesis { reason };
        if record.kind != Kind::Genesis {
            problems.push(bad(format!("it is a {} record", record.kind)));
        } else {
            let text = |field: &str| record.detail.get(field).and_then(Value::as_str);
            if text("format") != Some(LOG_FORMAT) {
                problems.push(bad(format!("field `detail.format` is not {LOG_FORMAT:?}")));
            }
            match text("vehicle") {
                Some(found) if found == vehicle.as_str() => {}
                found => problems.push(Problem::WrongVehicle {
                    found: found.unwrap_or("").to_string(),
                    expected: vehicle.to_string(),
                }),
            }
            match text("public_key").map(|k| hex32("detail.public_key", k)) {
                Some(Ok(bytes)) => {
                    genesis_public_key = Some(hex::encode(bytes));
                    match VerifyingKey::from_bytes(&bytes) {
                        Ok(key) => genesis_key = Some(key),
                        Err(_) => problems.push(bad(
                            "field `detail.public_key` is not an ed25519 public key".to_string(),
                        )),
                    }
                }
                Some(Err(reason)) => problems.push(bad(reason)),
                None => problems.push(bad("field `detail.public_key` is missing".to_string())),
            }
        }
        if record.prev != ZERO_HASH {
            problems.push(bad("its prev is not all zeros".to_string()));
        }
    }
    for s in spine.iter().filter(|s| s.index > 0) {
        if entries[s.id].record.kind == Kind::Genesis {
            problems.push(Problem::MisplacedGenesis {
                index: s.index,
                line: entries[s.id].line,
            });
        }
    }
    if let (Some(pinned), Some(genesis)) = (pinned, genesis_key) {
        if pinned != genesis {
            problems.push(Problem::GenesisKeyMismatch {
                genesis: hex::encode(genesis.to_bytes()),
                pinned: hex::encode(pinned.to_bytes()),
            });
        }
    }

    // Checkpoints.
    let key = pinned.or(genesis_key);
    let key_name = if pinned.is_some() {
        "the pinned key"
    } else {
        "the genesis key"
    };
    let mut checkpoints = 0u64;
    let mut unchecked = 0u64;
    let mut signed_through = None;
    let mut previous_checkpoint: Option<u64> = None;
    for s in &spine {
        let entry = &entries[s.id];
        if entry.record.kind != Kind::Checkpoint {
            continue;
        }
        checkpoints += 1;
        let first_covered = previous_checkpoint.map_or(0, |c| c + 1);
        previous_checkpoint = Some(s.index);
        let Some(key) = key else {
            unchecked += 1;
            continue;
        };
        let result = checkpoint_signature(&entry.record).and_then(|signature| {
            let message =
                checkpoint_message(vehicle.as_str(), entry.record.index, &entry.record.prev);
            key.verify_strict(&message, &signature)
                .map_err(|_| format!("its signature does not verify with {key_name}"))
        });
        match result {
            Ok(()) if entry.valid => signed_through = Some(s.index),
            Ok(()) => {}
            Err(reason) => problems.push(Problem::BadSignature {
                index: s.index,
                line: entry.line,
                first_covered,
                reason,
            }),
        }
    }
    if unchecked > 0 {
        problems.push(Problem::UncheckedSignatures { count: unchecked });
    }

    let last = spine.last();
    if let Some(last) = last {
        if signed_through != Some(last.index) {
            problems.push(Problem::UnsignedTail {
                first: signed_through.map_or(0, |c| c + 1),
                last: last.index,
            });
        }
    }
    problems.sort_by_key(Problem::sort_key);

    let tail = last.map(|last| Tail {
        len: last.index + 1,
        head: entries[last.id].record.hash,
        last_checkpoint: previous_checkpoint,
    });
    Analysis {
        report: VerifyReport {
            path: path.to_path_buf(),
            vehicle: vehicle.to_string(),
            records: entries.len() as u64,
            checkpoints,
            last_index: last.map(|s| s.index),
            signed_through,
            genesis_public_key,
            key_pinned: pinned.is_some(),
            problems,
        },
        tail,
        complete_len,
    }
}

fn checkpoint_signature(record: &Record) -> Result<Signature, String> {
    let text = record
        .detail
        .get("signature")
        .and_then(Value::as_str)
        .ok_or_else(|| "its detail has no `signature`".to_string())?;
    let ok = text.len() == 128 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let mut bytes = [0u8; 64];
    if !ok || hex::decode_to_slice(text, &mut bytes).is_err() {
        return Err("field `detail.signature` is not 128 lowercase hex digits".to_string());
    }
    Ok(Signature::from_bytes(&bytes))
}

/// Finds the spine (see the module docs): the longest run of valid records whose indices
/// increase along the file, preferring earlier lines; a valid duplicate that links better
/// into it replaces the spine's record; then altered records are slotted into the gaps.
fn find_spine(entries: &[Entry]) -> Vec<SpineEntry> {
    let idx = |id: usize| entries[id].record.index;
    let valid: Vec<usize> = (0..entries.len()).filter(|&id| entries[id].valid).collect();

    // Longest strictly increasing subsequence starting at each valid entry, from the end:
    // best[k] is the largest first index of an increasing run of length k + 1 seen so far
    // (strictly decreasing in k).
    let mut lengths = vec![0usize; valid.len()];
    let mut best: Vec<u64> = Vec::new();
    for (k, &id) in valid.iter().enumerate().rev() {
        let x = idx(id);
        let count = best.partition_point(|&b| b > x);
        lengths[k] = count + 1;
        if count == best.len() {
            best.push(x);
        } else {
            best[count] = x;
        }
    }
    // Greedy from the front: the earliest entry that can still start a run of the needed
    // length.
    let mut spine: Vec<usize> = Vec::with_capacity(best.len());
    let mut need = best.len();
    let mut last: Option<u64> = None;
    for (k, &id) in valid.iter().enumerate() {
        if need == 0 {
            break;
        }
        let x = idx(id);
        if lengths[k] == need && last.is_none_or(|l| x > l) {
            spine.push(id);
            need -= 1;
            last = Some(x);
        }
    }

    // A duplicate that links into the chain better than the spine's record replaces it
    // (an inserted record placed before the genuine one).
    let links = |spine: &[usize], k: usize, id: usize| -> u8 {
        let record = &entries[id].record;
        let x = record.index;
        let before = match k.checked_sub(1).map(|j| spine[j]) {
            Some(p) => idx(p) + 1 == x && record.prev == entries[p].record.hash,
            None => x == 0 && record.prev == ZERO_HASH,
        };
        let after = spine
            .get(k + 1)
            .is_some_and(|&n| idx(n) == x + 1 && entries[n].record.prev == record.hash);
        u8::from(before) + u8::from(after)
    };
    for &id in &valid {
        if spine.binary_search(&id).is_ok() {
            continue;
        }
        let Ok(k) = spine.binary_search_by_key(&idx(id), |&s| idx(s)) else {
            continue;
        };
        let between = k.checked_sub(1).is_none_or(|j| spine[j] < id)
            && spine.get(k + 1).is_none_or(|&n| id < n);
        if between && links(&spine, k, id) > links(&spine, k, spine[k]) {
            spine[k] = id;
        }
    }

    // Altered records between two spine records: at their claimed indices when those fit
    // the gap, else by position when they fill it exactly (or follow the last record).
    let mut out: Vec<SpineEntry> = Vec::with_capacity(entries.len());
    let mut pending: Vec<usize> = Vec::new();
    let mut lo = 0u64;
    let mut next = spine.iter().peekable();
    let slot = |pending: &[usize], lo: u64, hi: Option<u64>, out: &mut Vec<SpineEntry>| {
        if pending.is_empty() {
            return;
        }
        let claimed: Vec<u64> = pending.iter().map(|&id| idx(id)).collect();
        let fits = claimed.windows(2).all(|w| w[0] < w[1])
            && claimed[0] >= lo
            && hi.is_none_or(|h| claimed[claimed.len() - 1] < h);
        if fits {
            out.extend(pending.iter().map(|&id| SpineEntry {
                id,
                index: idx(id),
                claimed: None,
            }));
        } else if hi.is_none_or(|h| h - lo == pending.len() as u64) {
            out.extend(pending.iter().zip(lo..).map(|(&id, index)| SpineEntry {
                id,
                index,
                claimed: (idx(id) != index).then_some(idx(id)),
            }));
        }
    };
    for (id, entry) in entries.iter().enumerate() {
        if next.peek() == Some(&&id) {
            next.next();
            slot(&pending, lo, Some(idx(id)), &mut out);
            pending.clear();
            out.push(SpineEntry {
                id,
                index: idx(id),
                claimed: None,
            });
            lo = idx(id) + 1;
        } else if !entry.valid {
            pending.push(id);
        }
    }
    slot(&pending, lo, None, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const EVERY: u64 = 100;

    fn veh() -> VehicleId {
        VehicleId::new("veh-1").unwrap()
    }

    fn config(every: u64) -> AuditConfig {
        AuditConfig {
            checkpoint_every: every,
            ..AuditConfig::default()
        }
    }

    /// A log of `n` appended records (plus genesis and checkpoints), closed cleanly.
    fn build(dir: &Path, n: u64, every: u64) -> [u8; 32] {
        let mut log = AuditLog::open(dir, &veh(), config(every)).unwrap();
        for i in 0..n {
            let (kind, detail) = match i % 4 {
                0 => (
                    Kind::ExchangeIn,
                    json!({"stream": "perception", "type_name": "twin_msgs/msg/PerceptionSummary", "seq": i, "bytes": 1200 + i}),
                ),
                1 => (
                    Kind::ExchangeOut,
                    json!({"stream": "recommendation", "type_name": "twin_msgs/msg/Recommendation", "seq": i, "bytes": 96}),
                ),
                2 => (
                    Kind::Disclosure,
                    json!({"peer": "veh-2", "category": "position", "precision": "lane", "seq": i}),
                ),
                _ => (
                    Kind::Policy,
                    json!({"category": "position", "share": "coarse", "seq": i}),
                ),
            };
            log.append(kind, detail, format!("payload {i}").as_bytes())
                .unwrap();
        }
        let key = log.public_key();
        log.close().unwrap();
        key
    }

    fn read_lines(dir: &Path) -> Vec<String> {
        fs::read_to_string(dir.join(LOG_FILE))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn write_lines(dir: &Path, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        fs::write(dir.join(LOG_FILE), text).unwrap();
    }

    fn kind_of(line: &str) -> Kind {
        parse_record(line.as_bytes()).unwrap().kind
    }

    fn check(dir: &Path, pinned: Option<[u8; 32]>) -> VerifyReport {
        verify(dir, &veh(), pinned).unwrap()
    }

    fn failures(report: &VerifyReport) -> Vec<Problem> {
        report.failures().cloned().collect()
    }

    /// Recomputes `prev` and `hash` from line `from` on (and, with `resign`, puts its key
    /// in the genesis record and signs every checkpoint with it), like an attacker who
    /// covers their tracks.
    fn rechain(lines: &mut [String], from: usize, resign: Option<&SigningKey>) {
        let mut prev = if from == 0 {
            ZERO_HASH
        } else {
            parse_record(lines[from - 1].as_bytes()).unwrap().hash
        };
        for line in lines.iter_mut().skip(from) {
            let mut record = parse_record(line.as_bytes()).unwrap();
            record.prev = prev;
            if let Some(key) = resign {
                match record.kind {
                    Kind::Genesis => {
                        record.detail.insert(
                            "public_key".into(),
                            hex::encode(key.verifying_key().to_bytes()).into(),
                        );
                    }
                    Kind::Checkpoint => {
                        let message = checkpoint_message("veh-1", record.index, &prev);
                        record.detail.insert(
                            "signature".into(),
                            hex::encode(key.sign(&message).to_bytes()).into(),
                        );
                    }
                    _ => {}
                }
            }
            let (text, hash) = encode_record(
                record.index,
                record.time_us,
                record.kind,
                &record.detail,
                &record.payload_sha256,
                &record.prev,
            );
            *line = text.trim_end().to_string();
            prev = hash;
        }
    }

    /// A tampered log of 300 appends with a checkpoint every 100 records.
    fn tamper_fixture() -> (tempfile::TempDir, Vec<String>, [u8; 32]) {
        let tmp = tempfile::tempdir().unwrap();
        let key = build(tmp.path(), 300, EVERY);
        let lines = read_lines(tmp.path());
        assert!(check(tmp.path(), Some(key)).problems.is_empty());
        (tmp, lines, key)
    }

    fn other_key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    #[test]
    fn the_tail_reads_the_newest_records_of_a_kind_backwards() {
        let tmp = tempfile::tempdir().unwrap();
        build(tmp.path(), 5000, DEFAULT_CHECKPOINT_EVERY);
        let lines = read_lines(tmp.path());
        let newest = tail(tmp.path(), 3, None).unwrap();
        assert_eq!(newest.len(), 3);
        let indices: Vec<u64> = newest
            .iter()
            .map(|r| r["index"].as_u64().unwrap())
            .collect();
        let last = lines.len() as u64 - 1;
        assert_eq!(indices, vec![last - 2, last - 1, last], "oldest first");
        // Checkpoints are spread over the whole log: the reader goes back block by block.
        let checkpoints = tail(tmp.path(), 100, Some("checkpoint")).unwrap();
        assert_eq!(
            checkpoints.len(),
            5000 / 256 + 1,
            "every one, from the start"
        );
        assert!(checkpoints.iter().all(|r| r["kind"] == "checkpoint"));
        assert_eq!(tail(tmp.path(), 10, Some("no-such-kind")).unwrap().len(), 0);
        // A line torn by a crash is skipped; damage elsewhere is an error.
        let log = tmp.path().join(LOG_FILE);
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut f, b"{\"index\": 99").unwrap();
        assert_eq!(tail(tmp.path(), 1, None).unwrap()[0]["index"], last);
        let mut text = std::fs::read_to_string(&log).unwrap();
        text.insert_str(text.len() - 200, "\nnot json\n");
        std::fs::write(&log, text).unwrap();
        assert!(tail(tmp.path(), 10, None).is_err());
    }

    #[test]
    fn intact_log_of_1000_records_with_checkpoints_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let key = build(tmp.path(), 1000, DEFAULT_CHECKPOINT_EVERY);
        let lines = read_lines(tmp.path());
        // genesis + 1000 records + a checkpoint after every 256 + the final one.
        assert_eq!(lines.len(), 1 + 1000 + 4);
        for (i, line) in lines.iter().enumerate() {
            let record = parse_record(line.as_bytes()).unwrap();
            assert_eq!(record.index, i as u64);
            assert!(!line.contains("payload "), "payloads are never stored");
        }
        for i in [256, 513, 770, 1004] {
            assert_eq!(kind_of(&lines[i]), Kind::Checkpoint, "record {i}");
        }
        let report = check(tmp.path(), Some(key));
        assert!(report.is_intact());
        assert_eq!(report.problems, vec![]);
        assert_eq!(report.records, 1005);
        assert_eq!(report.checkpoints, 4);
        assert_eq!(report.signed_through, Some(1004));
        assert_eq!(report.last_index, Some(1004));
        assert!(report.key_pinned);
        // audit.pub holds the key, and the unpinned check agrees.
        let public = fs::read_to_string(tmp.path().join(PUBLIC_KEY_FILE)).unwrap();
        assert_eq!(parse_public_key(&public).unwrap(), key);
        assert!(check(tmp.path(), None).is_intact());
        let json = report.to_json();
        assert_eq!(json["intact"], true);
        assert_eq!(json["records"], 1005);
    }

    #[test]
    fn a_deferred_checkpoint_sync_is_handed_out_once_per_checkpoint_and_the_log_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let deferred = AuditConfig {
            checkpoint_every: 4,
            sync_at_checkpoint: false,
        };
        let mut log = AuditLog::open(tmp.path(), &veh(), deferred).unwrap();
        // Opening writes and syncs the genesis itself: nothing is deferred yet.
        assert!(log.take_deferred_sync().unwrap().is_none());
        let mut jobs = 0;
        for i in 0..10u64 {
            log.append(Kind::ExchangeIn, json!({"seq": i}), b"x")
                .unwrap();
            if let Some(job) = log.take_deferred_sync().unwrap() {
                job().unwrap();
                jobs += 1;
                assert!(
                    log.take_deferred_sync().unwrap().is_none(),
                    "once per checkpoint"
                );
            }
        }
        // Checkpoints after the 3rd and the 7th record (the genesis counts toward the first).
        assert_eq!(jobs, 2);
        // Each checkpoint handed what came before it to the operating system: a reader sees
        // genesis, 7 records and 2 checkpoints before the close (the last 3 records are
        // still buffered), and the closed log, with its final checkpoint, verifies.
        assert_eq!(read_lines(tmp.path()).len(), 1 + 7 + 2);
        log.close().unwrap();
        assert_eq!(read_lines(tmp.path()).len(), 1 + 10 + 3);
        assert!(check(tmp.path(), None).is_intact());
    }

    #[test]
    fn canonical_encoding_and_checkpoint_message_are_as_documented() {
        let mut detail = Map::new();
        detail.insert("b".into(), json!("x\n\"é"));
        detail.insert("a".into(), json!({"z": [1, -2], "y": null}));
        let payload = sha256(b"");
        let (line, hash) = encode_record(3, 5, Kind::Disclosure, &detail, &payload, &ZERO_HASH);
        let expected = format!(
            r#"{{"index":3,"time_us":5,"kind":"disclosure","detail":{{"a":{{"y":null,"z":[1,-2]}},"b":"x\n\"é"}},"payload_sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","prev":"{}"}}"#,
            "0".repeat(64)
        );
        assert_eq!(hash, sha256(expected.as_bytes()));
        let with_hash = format!(
            "{},\"hash\":\"{}\"}}\n",
            &expected[..expected.len() - 1],
            hex::encode(hash)
        );
        assert_eq!(line, with_hash);
        // Parsing and re-encoding gives the same hash.
        let record = parse_record(line.trim_end().as_bytes()).unwrap();
        assert_eq!(record_hash(&record), hash);

        let message = checkpoint_message("veh-1", 0x0102, &[0xab; 32]);
        let mut expected = b"twinlink-audit-checkpoint/1\x00\x00\x00\x00\x05veh-1".to_vec();
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 2]);
        expected.extend_from_slice(&[0xab; 32]);
        assert_eq!(message, expected);
    }

    #[test]
    fn files_are_created_private_and_the_genesis_names_vehicle_and_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("veh-1");
        let log = AuditLog::open(&dir, &veh(), AuditConfig::default()).unwrap();
        let mode = |name: &str| fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(KEY_FILE), 0o600);
        assert_eq!(mode(LOG_FILE), 0o600);
        assert_eq!(mode(PUBLIC_KEY_FILE), 0o644);
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(log.len(), 1);
        let genesis = parse_record(read_lines(&dir)[0].as_bytes()).unwrap();
        assert_eq!(genesis.kind, Kind::Genesis);
        assert_eq!(genesis.prev, ZERO_HASH);
        assert_eq!(genesis.detail["vehicle"], "veh-1");
        assert_eq!(genesis.detail["format"], LOG_FORMAT);
        assert_eq!(genesis.detail["public_key"], hex::encode(log.public_key()));
        assert_eq!(genesis.hash, log.head_hash());
        let key_text = fs::read_to_string(dir.join(KEY_FILE)).unwrap();
        let key_json: Value = serde_json::from_str(&key_text).unwrap();
        assert_eq!(key_json["vehicle"], "veh-1");
        assert_eq!(key_json["public_key"], hex::encode(log.public_key()));
    }

    #[test]
    fn checkpoints_come_every_n_records_and_on_demand() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(tmp.path(), &veh(), config(10)).unwrap();
        let mut indices = vec![];
        for i in 0..25u64 {
            indices.push(
                log.append(Kind::ExchangeIn, json!({ "seq": i }), b"x")
                    .unwrap(),
            );
        }
        // genesis + 9 appends = 10 -> checkpoint at 10; 10 more -> checkpoint at 21.
        assert_eq!(indices[8], 9);
        assert_eq!(indices[9], 11);
        assert_eq!(indices[19], 22);
        assert_eq!(log.unsigned_records(), 6);
        assert_eq!(log.checkpoint().unwrap(), 28);
        // Nothing new since: no second checkpoint.
        assert_eq!(log.checkpoint().unwrap(), 28);
        assert_eq!(log.len(), 29);
        drop(log);
        let lines = read_lines(tmp.path());
        let checkpoints: Vec<usize> = (0..lines.len())
            .filter(|&i| kind_of(&lines[i]) == Kind::Checkpoint)
            .collect();
        assert_eq!(checkpoints, vec![10, 21, 28]);
        let report = check(tmp.path(), None);
        assert_eq!(report.problems, vec![]);
        assert_eq!(report.checkpoints, 3);
    }

    #[test]
    fn append_refuses_reserved_kinds_and_bad_details() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(tmp.path(), &veh(), AuditConfig::default()).unwrap();
        for kind in [Kind::Genesis, Kind::Checkpoint] {
            let err = log.append(kind, json!({}), b"").unwrap_err();
            assert!(
                err.to_string().contains("written by the audit log itself"),
                "{err}"
            );
        }
        let err = log.append(Kind::Policy, json!([1]), b"").unwrap_err();
        assert!(err.to_string().contains("JSON object"), "{err}");
        let err = log
            .append(Kind::Disclosure, json!({"precision_m": 2.5}), b"")
            .unwrap_err();
        assert!(err.to_string().contains("integer"), "{err}");
        let err = log
            .append(Kind::Policy, json!({"x": "y".repeat(5000)}), b"")
            .unwrap_err();
        assert!(err.to_string().contains("at most 4096"), "{err}");
        assert_eq!(log.len(), 1, "nothing was written");
        assert!(AuditLog::open(tmp.path(), &veh(), config(0)).is_err());
    }

    #[test]
    fn reopen_continues_the_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(tmp.path(), &veh(), config(8)).unwrap();
        for i in 0..20u64 {
            log.append(Kind::ExchangeIn, json!({ "seq": i }), b"a")
                .unwrap();
        }
        let key = log.public_key();
        let end = log.close().unwrap();
        let head = parse_record(read_lines(tmp.path())[end as usize].as_bytes())
            .unwrap()
            .hash;

        let mut log = AuditLog::open(tmp.path(), &veh(), config(8)).unwrap();
        assert_eq!(
            log.recovered(),
            None,
            "a clean close leaves nothing to recover"
        );
        assert_eq!(log.len(), end + 1);
        assert_eq!(log.head_hash(), head);
        assert_eq!(log.public_key(), key);
        assert_eq!(log.unsigned_records(), 0);
        let next = log
            .append(Kind::Lifecycle, json!({"event": "start"}), b"")
            .unwrap();
        assert_eq!(next, end + 1);
        for i in 0..20u64 {
            log.append(Kind::ExchangeOut, json!({ "seq": i }), b"b")
                .unwrap();
        }
        log.close().unwrap();
        let lines = read_lines(tmp.path());
        assert_eq!(
            parse_record(lines[next as usize].as_bytes()).unwrap().prev,
            head
        );
        let report = check(tmp.path(), Some(key));
        assert_eq!(report.problems, vec![]);
        assert_eq!(report.records, lines.len() as u64);
    }

    #[test]
    fn reopen_after_a_crash_records_the_recovery() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(tmp.path(), &veh(), config(100)).unwrap();
        for i in 0..5u64 {
            log.append(Kind::ExchangeIn, json!({ "seq": i }), b"a")
                .unwrap();
        }
        log.sync().unwrap();
        drop(log); // no checkpoint: an unclean stop
        let report = check(tmp.path(), None);
        assert!(report.is_intact());
        assert_eq!(
            report.problems,
            vec![Problem::UnsignedTail { first: 0, last: 5 }]
        );
        let log = AuditLog::open(tmp.path(), &veh(), config(100)).unwrap();
        assert_eq!(
            log.recovered(),
            Some(Recovery {
                torn_bytes: 0,
                unsigned_records: 6,
                record: 6
            })
        );
        log.close().unwrap();
        let lines = read_lines(tmp.path());
        let recovered = parse_record(lines[6].as_bytes()).unwrap();
        assert_eq!(recovered.kind, Kind::Lifecycle);
        assert_eq!(recovered.detail["event"], "recovered");
        assert_eq!(check(tmp.path(), None).problems, vec![]);
    }

    #[test]
    fn changed_detail_byte_is_named_altered() {
        let (tmp, mut lines, key) = tamper_fixture();
        assert_eq!(kind_of(&lines[41]), Kind::ExchangeIn);
        lines[41] = lines[41].replace("\"seq\":40", "\"seq\":50");
        write_lines(tmp.path(), &lines);
        let report = check(tmp.path(), Some(key));
        assert!(!report.is_intact());
        assert_eq!(
            failures(&report),
            vec![Problem::Altered {
                index: 41,
                line: 42,
                claimed_index: None
            }]
        );
        assert_eq!(report.to_string(), "record 41 was altered (line 42)");
        // And the DR refuses to extend it.
        match AuditLog::open(tmp.path(), &veh(), config(EVERY)) {
            Err(AuditError::Tampered { report, .. }) => {
                assert!(report.to_string().contains("record 41 was altered"));
            }
            other => panic!("expected Tampered, got {other:?}"),
        }
    }

    #[test]
    fn changed_payload_digest_is_named_altered() {
        let (tmp, mut lines, key) = tamper_fixture();
        let record = parse_record(lines[77].as_bytes()).unwrap();
        let digest = hex::encode(record.payload_sha256);
        let forged = hex::encode(sha256(b"something else"));
        lines[77] = lines[77].replace(&digest, &forged);
        write_lines(tmp.path(), &lines);
        assert_eq!(
            failures(&check(tmp.path(), Some(key))),
            vec![Problem::Altered {
                index: 77,
                line: 78,
                claimed_index: None
            }]
        );
    }

    #[test]
    fn altered_index_field_is_named_by_position() {
        let (tmp, mut lines, key) = tamper_fixture();
        lines[60] = lines[60].replace("\"index\":60,", "\"index\":6,");
        write_lines(tmp.path(), &lines);
        assert_eq!(
            failures(&check(tmp.path(), Some(key))),
            vec![Problem::Altered {
                index: 60,
                line: 61,
                claimed_index: Some(6)
            }]
        );
    }

    #[test]
    fn altered_record_with_recomputed_hash_is_named() {
        let (tmp, mut lines, key) = tamper_fixture();
        let mut record = parse_record(lines[150].as_bytes()).unwrap();
        record.detail.insert("peer".into(), "somebody-else".into());
        let (text, _) = encode_record(
            record.index,
            record.time_us,
            record.kind,
            &record.detail,
            &record.payload_sha256,
            &record.prev,
        );
        lines[150] = text.trim_end().to_string();
        write_lines(tmp.path(), &lines);
        assert_eq!(
            failures(&check(tmp.path(), Some(key))),
            vec![Problem::AlteredAndRehashed {
                index: 150,
                line: 151
            }]
        );
    }

    #[test]
    fn record_relinked_and_rehashed_is_named_not_its_predecessor() {
        let (tmp, mut lines, key) = tamper_fixture();
        // Record 170's prev is pointed at record 168 and its hash recomputed: both links
        // around it break, and it is the one named.
        let mut record = parse_record(lines[170].as_bytes()).unwrap();
        record.prev = parse_record(lines[168].as_bytes()).unwrap().hash;
        let (text, _) = encode_record(
            record.index,
            record.time_us,
            record.kind,
            &record.detail,
            &record.payload_sha256,
            &record.prev,
        );
        lines[170] = text.trim_end().to_string();
        write_lines(tmp.path(), &lines);
        assert_eq!(
            failures(&check(tmp.path(), Some(key))),
            vec![Problem::AlteredAndRehashed {
                index: 170,
                line: 171
            }]
        );
    }

    #[test]
    fn removals_around_a_surviving_moved_record_are_split() {
        let (tmp, mut lines, key) = tamper_fixture();
        // Records 60 to 64 are gone from their place but 62 survives, moved to line 80.
        let moved = lines[62].clone();
        lines.drain(60..65);
        lines.insert(79, moved);
        write_lines(tmp.path(), &lines);
        assert_eq!(
            failures(&check(tmp.path(), Some(key))),
            vec![
                Problem::Removed {
                    first: 60,
                    last: 61
                },
                Problem::OutOfOrder {
                    index: 62,
                    line: 80,
                    after: Some(83)
                },
                Problem::Removed {
                    first: 63,
                    last: 64
                },
            ]
        );
    }

    #[test]
    fn one_deleted_line_is_named_removed() {
        let (tmp, mut lines, key) = tamper_fixture();
        assert_ne!(kind_of(&lines[150]), Kind::Checkpoint);
        lines.remove(150);
        write_lines(tmp.path(), &lines);
        let report = check(tmp.path(), Some(key));
        assert_eq!(
            failures(&report),
            vec![Problem::Removed {
                first: 150,
                last: 150
            }]
        );
        assert_eq!(report.to_string(), "record 150 removed");
    }

    #[test]
    fn three_deleted_lines_are_named_as_a_range() {
        let (tmp, mut lines, key) = tamper_fixture();
        lines.drain(12..15);
        write_lines(tmp.path(), &lines);
        let report = check(tmp.path(), Some(key));
        assert_eq!(
            failures(&report),
            vec![Problem::Removed {
                first: 12,
                last: 14
            }]
        );
        assert_eq!(report.to_string(), "records 12 to 14 removed (3 records)");
    }

    #[test]
    fn deleted_checkpoint_and_deleted_genesis_are_named() {
        let (tmp, mut lines, key) = tamper_fixture();
        assert_eq!(kind_of(&lines[100]), Kind::Checkpoint);
        lines.remove(100);
        lines.remove(0);
        write_lines(tmp.path(), &lines);
        let report = check(tmp.path(), Some(key));
        assert_eq!(
            failures(&report),
            vec![
                Problem::Removed { first: 0, last: 0 },
                Problem::Removed {
                    first: 100,
                    last: 100
                }
            ]
        );
        // Without genesis and without a pinned key, signatures cannot be checked.
        let report = check(tmp.path(), None);
        assert!(failures(&report).contains(&Problem::UncheckedSignatures { count: 3 }));
    }

    #[test]
    fn swapped_lines_are_named_out_of_order() {
        let (tmp, mut lines, key) = tamper_fixture();
        lines.swap(20, 21);
        write_lines(tmp.path(), &lines);
        let report = check(tmp.path(), Some(key));
        assert_eq!(
            failures(&report),
            vec![Problem::OutOfOrder {
                index: 20,
                line: 22,
                after: Some(21)
            }]
        );
        assert_eq!(
            report.to_string(),
            "record 20 is out of order (line 22, after record 21)"
        );
    }

    #[test]
    fn line_moved_later_is_named_out_of_order() {
        let (tmp, mut lines, key) = tamper_fixture();
        let moved = lines.remove(20);
        lines.insert(22, moved); // now after record 22
        write_lines(tmp.path(), &lines);
        assert_eq!(
            failures(&check(tmp.path(), Some(key))),
            vec![Problem::OutOfOrder {
                index: 20,
                line: 23,
                after: Some(22)
            }]
        );
    }

    #[test]
    fn line_moved_earlier_names_the_moved_record() {
        let (tmp, mut lines, key) = tamper_fixture();
        let moved = lines.remove(230);
        lines.insert(225, moved);
        write_lines(tmp.path(), &lines);
        assert_eq!(
            failures(&check(tmp.path(), Some(key))),
            vec![Problem::OutOfOrder {
                index: 230,
                line: 226,
                after: Some(224)
            }]
        );
    }

    #[test]
    fn duplicated_and_inserted_records_are_named() {
        let (tmp, mut lines, key) = tamper_fixture();
        // A copy of record 30 at the end; a forged record 90 placed before the genuine one.
        lines.push(lines[30].clone());
        let genuine = parse_record(lines[90].as_bytes()).unwrap();
        let mut detail = genuine.detail.clone();
        detail.insert("peer".into(), "advertiser".into());
        let (forged, _) = encode_record(
            90,
            genuine.time_us,
            genuine.kind,
            &detail,
            &genuine.payload_sha256,
            &genuine.prev,
        );
        lines.insert(90, forged.trim_end().to_string());
        write_lines(tmp.path(), &lines);
        let total = lines.len() as u64;
        assert_eq!(
            failures(&check(tmp.path(), Some(key))),
            vec![
                Problem::Duplicate {
                    index: 30,
                    line: total,
                    identical: true
                },
                Problem::Duplicate {
                    index: 90,
                    line: 91,
                    identical: false
                },
            ]
        );
    }

    #[test]
    fn several_tamperings_at_once_are_each_named() {
        let (tmp, mut lines, key) = tamper_fixture();
        // Work from the end so earlier positions stay put.
        lines.swap(220, 221);
        lines.drain(150..153);
        lines[41] = lines[41].replace("\"bytes\":1240", "\"bytes\":1241");
        write_lines(tmp.path(), &lines);
        assert_eq!(
            failures(&check(tmp.path(), Some(key))),
            vec![
                Problem::Altered {
                    index: 41,
                    line: 42,
                    claimed_index: None
                },
                Problem::Removed {
                    first: 150,
                    last: 152
                },
                Problem::OutOfOrder {
                    index: 220,
                    line: 219,
                    after: Some(221)
                },
            ]
        );
    }

    #[test]
    fn log_re_signed_with_another_key_fails_against_the_pinned_key() {
        let (tmp, mut lines, key) = tamper_fixture();
        lines[41] = lines[41].replace("\"seq\":40", "\"seq\":50");
        rechain(&mut lines, 0, Some(&other_key()));
        write_lines(tmp.path(), &lines);
        // Self-consistent: without a pinned key nothing shows (the documented limit).
        assert!(check(tmp.path(), None).is_intact());
        let report = check(tmp.path(), Some(key));
        let failures = failures(&report);
        assert_eq!(
            failures[0],
            Problem::GenesisKeyMismatch {
                genesis: hex::encode(other_key().verifying_key().to_bytes()),
                pinned: hex::encode(key),
            }
        );
        let bad: Vec<u64> = failures[1..]
            .iter()
            .map(|p| match p {
                Problem::BadSignature { index, .. } => *index,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(bad, vec![100, 201, 302, 304]);
        // The DR's own key file pins it too.
        assert!(matches!(
            AuditLog::open(tmp.path(), &veh(), config(EVERY)),
            Err(AuditError::Tampered { .. })
        ));
    }

    #[test]
    fn forged_checkpoint_signature_is_named() {
        let (tmp, mut lines, key) = tamper_fixture();
        // The last checkpoint: forging an earlier one would also break the signatures after
        // it, which sign the hashes that change when the chain is recomputed.
        let mut record = parse_record(lines[304].as_bytes()).unwrap();
        assert_eq!(record.kind, Kind::Checkpoint);
        let message = checkpoint_message("veh-1", 304, &record.prev);
        record.detail.insert(
            "signature".into(),
            hex::encode(other_key().sign(&message).to_bytes()).into(),
        );
        let (text, _) = encode_record(
            304,
            record.time_us,
            record.kind,
            &record.detail,
            &record.payload_sha256,
            &record.prev,
        );
        lines[304] = text.trim_end().to_string();
        write_lines(tmp.path(), &lines);
        let report = check(tmp.path(), Some(key));
        assert_eq!(
            failures(&report),
            vec![Problem::BadSignature {
                index: 304,
                line: 305,
                first_covered: 303,
                reason: "its signature does not verify with the pinned key".to_string(),
            }]
        );
        assert_eq!(report.signed_through, Some(302));
        assert_eq!(
            report.warnings().cloned().collect::<Vec<_>>(),
            vec![Problem::UnsignedTail {
                first: 303,
                last: 304
            }]
        );
        // Unpinned, the genesis key catches it the same way.
        assert_eq!(
            failures(&check(tmp.path(), None)),
            vec![Problem::BadSignature {
                index: 304,
                line: 305,
                first_covered: 303,
                reason: "its signature does not verify with the genesis key".to_string(),
            }]
        );
    }

    #[test]
    fn altered_checkpoint_does_not_count_as_signed() {
        let (tmp, mut lines, key) = tamper_fixture();
        // The signature still verifies (it signs index and prev, not the time), but the
        // record was altered, so records after checkpoint 302 are not vouched for.
        let record = parse_record(lines[304].as_bytes()).unwrap();
        let time = format!("\"time_us\":{}", record.time_us);
        lines[304] = lines[304].replace(&time, "\"time_us\":1");
        write_lines(tmp.path(), &lines);
        let report = check(tmp.path(), Some(key));
        assert_eq!(
            failures(&report),
            vec![Problem::Altered {
                index: 304,
                line: 305,
                claimed_index: None
            }]
        );
        assert_eq!(report.signed_through, Some(302));
        assert_eq!(
            report.warnings().cloned().collect::<Vec<_>>(),
            vec![Problem::UnsignedTail {
                first: 303,
                last: 304
            }]
        );
    }

    #[test]
    fn junk_line_is_named_not_a_record() {
        let (tmp, mut lines, key) = tamper_fixture();
        let last = lines.len() as u64 - 1;
        lines.push("hello auditor".to_string());
        write_lines(tmp.path(), &lines);
        let report = check(tmp.path(), Some(key));
        let failures = failures(&report);
        assert_eq!(failures.len(), 1);
        match &failures[0] {
            Problem::NotARecord {
                line,
                after,
                reason,
            } => {
                assert_eq!(*line, last + 2);
                assert_eq!(*after, Some(last));
                assert_eq!(reason, "not JSON: expected value (column 1)");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn torn_last_line_is_a_warning_and_open_cuts_it_off() {
        let (tmp, lines, key) = tamper_fixture();
        let last = lines.len() as u64 - 1;
        let path = tmp.path().join(LOG_FILE);
        let torn = "{\"index\":305,\"time_us\":17";
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(torn.as_bytes()).unwrap();
        drop(file);
        let report = check(tmp.path(), Some(key));
        assert!(report.is_intact());
        assert_eq!(
            report.problems,
            vec![Problem::TornTail {
                line: last + 2,
                bytes: torn.len() as u64,
                after: Some(last)
            }]
        );
        let log = AuditLog::open(tmp.path(), &veh(), config(EVERY)).unwrap();
        assert_eq!(
            log.recovered(),
            Some(Recovery {
                torn_bytes: torn.len() as u64,
                unsigned_records: 0,
                record: last + 1
            })
        );
        log.close().unwrap();
        // The fragment is gone (it would otherwise run into the next line: not a record).
        let report = check(tmp.path(), Some(key));
        assert_eq!(report.problems, vec![]);
        assert_eq!(report.records, last + 3);
        assert!(fs::read_to_string(&path).unwrap().ends_with("}\n"));
    }

    #[test]
    fn key_file_with_loose_permissions_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        build(tmp.path(), 3, EVERY);
        let key_path = tmp.path().join(KEY_FILE);
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = AuditLog::open(tmp.path(), &veh(), config(EVERY)).unwrap_err();
        assert!(
            matches!(err, AuditError::KeyPermissions { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = AuditLog::open(tmp.path(), &veh(), config(EVERY)).unwrap_err();
        assert!(
            matches!(err, AuditError::KeyPermissions { mode: 0o640, .. }),
            "{err}"
        );
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();
        AuditLog::open(tmp.path(), &veh(), config(EVERY)).unwrap();
    }

    #[test]
    fn key_file_for_another_vehicle_or_with_a_foreign_public_key_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        build(tmp.path(), 3, EVERY);
        let key_path = tmp.path().join(KEY_FILE);
        let original = fs::read_to_string(&key_path).unwrap();

        let other = VehicleId::new("veh-2").unwrap();
        let err = AuditLog::open(tmp.path(), &other, config(EVERY)).unwrap_err();
        assert!(err.to_string().contains("field `vehicle`"), "{err}");

        let mut json: Value = serde_json::from_str(&original).unwrap();
        json["public_key"] = hex::encode(other_key().verifying_key().to_bytes()).into();
        fs::write(&key_path, json.to_string()).unwrap();
        let err = AuditLog::open(tmp.path(), &veh(), config(EVERY)).unwrap_err();
        assert!(err.to_string().contains("field `public_key`"), "{err}");

        json["secret_key"] = "abcd".into();
        fs::write(&key_path, json.to_string()).unwrap();
        let err = AuditLog::open(tmp.path(), &veh(), config(EVERY)).unwrap_err();
        assert!(err.to_string().contains("field `secret_key`"), "{err}");

        // A missing key with an existing log is refused, never replaced.
        fs::remove_file(&key_path).unwrap();
        let err = AuditLog::open(tmp.path(), &veh(), config(EVERY)).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(!key_path.exists());
    }

    #[test]
    fn log_of_another_vehicle_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        build(tmp.path(), 3, EVERY);
        let other = VehicleId::new("veh-2").unwrap();
        let report = verify(tmp.path(), &other, None).unwrap();
        // The genesis names veh-1, and the checkpoint signs veh-1's id.
        assert_eq!(
            failures(&report),
            vec![
                Problem::WrongVehicle {
                    found: "veh-1".to_string(),
                    expected: "veh-2".to_string()
                },
                Problem::BadSignature {
                    index: 4,
                    line: 5,
                    first_covered: 0,
                    reason: "its signature does not verify with the genesis key".to_string()
                }
            ]
        );
        // Renaming the vehicle in the genesis record (and recomputing the chain) does not
        // make it veh-2's log: the signatures still name veh-1.
        let mut lines = read_lines(tmp.path());
        lines[0] = lines[0].replace("\"vehicle\":\"veh-1\"", "\"vehicle\":\"veh-2\"");
        rechain(&mut lines, 0, None);
        write_lines(tmp.path(), &lines);
        let report = verify(tmp.path(), &other, None).unwrap();
        assert_eq!(
            failures(&report),
            vec![Problem::BadSignature {
                index: 4,
                line: 5,
                first_covered: 0,
                reason: "its signature does not verify with the genesis key".to_string()
            }]
        );
    }

    #[test]
    fn missing_log_and_bad_pinned_keys_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let err = verify(&tmp.path().join("nope"), &veh(), None).unwrap_err();
        assert!(matches!(err, AuditError::NoLog { .. }));
        assert!(err.to_string().contains("nope/audit.log"), "{err}");
        assert!(parse_public_key("xyz").is_err());
        assert!(parse_public_key(&"ab".repeat(31)).is_err());
    }
}
