//! Files of the sharing credentials, as `twinctl fleet` writes them and DR hosts read them.
//!
//! | file | holder | contents |
//! | --- | --- | --- |
//! | `<fleet>.authority.key` (mode 0600) | the fleet operator, offline | fleet id, the authority's secret key |
//! | `<fleet>.authority.pub` | every DR host (a trust anchor) | fleet id, the authority's public key |
//! | `<host>.issuer.key` (mode 0600) | one DR host | its issuer secret key and the authority's certificate for it |
//!
//! All are JSON with keys in hex. Secret files are refused when others can read them, as
//! ssh refuses a private key that is readable by others.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::identity::{FleetAuthority, IssuerCertificate, KeyPair, PseudonymIssuer, PublicKey};

/// Why a credential file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not what it should be.
    #[error("{path}: {problem}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, naming the field.
        problem: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthorityFile {
    fleet: String,
    secret_key: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnchorFile {
    fleet: String,
    public_key: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerFile {
    fleet: String,
    secret_key: String,
    certificate: String,
}

/// A fleet authority's public key: what a DR host trusts disclosures under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustAnchor {
    /// The fleet.
    pub fleet_id: String,
    /// Its authority's public key.
    pub public_key: PublicKey,
}

fn invalid(path: &Path, problem: impl Into<String>) -> KeyFileError {
    KeyFileError::Invalid {
        path: path.display().to_string(),
        problem: problem.into(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(path: &Path, field: &str, text: &str) -> Result<Vec<u8>, KeyFileError> {
    if text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(path, format!("{field}: not hex")));
    }
    Ok((0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("checked hex"))
        .collect())
}

fn key32(path: &Path, field: &str, text: &str) -> Result<[u8; 32], KeyFileError> {
    hex_decode(path, field, text)?
        .try_into()
        .map_err(|_| invalid(path, format!("{field}: 32 bytes (64 hex digits) expected")))
}

fn write(path: &Path, text: &str, secret: bool, force: bool) -> Result<(), KeyFileError> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io(path))?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io(path))?;
    }
    file.write_all(text.as_bytes()).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

fn read_secret(path: &Path) -> Result<String, KeyFileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path)
            .map_err(io(path))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(invalid(
                path,
                format!(
                    "mode {:o}: a secret key file must be readable by its owner only (chmod 600)",
                    mode & 0o777
                ),
            ));
        }
    }
    std::fs::read_to_string(path).map_err(io(path))
}

fn parse<T: for<'de> Deserialize<'de>>(path: &Path, text: &str) -> Result<T, KeyFileError> {
    serde_json::from_str(text).map_err(|e| invalid(path, e.to_string()))
}

/// Writes a fleet authority's secret (mode 0600) to `path`; `force` replaces a file.
pub fn save_authority(
    path: &Path,
    authority: &FleetAuthority,
    force: bool,
) -> Result<(), KeyFileError> {
    let file = AuthorityFile {
        fleet: authority.fleet_id().to_string(),
        secret_key: hex_encode(&authority.key().secret_bytes()),
    };
    let text = serde_json::to_string_pretty(&file).expect("serializes");
    write(path, &text, true, force)
}

/// Reads a fleet authority's secret.
pub fn load_authority(path: &Path) -> Result<FleetAuthority, KeyFileError> {
    let file: AuthorityFile = parse(path, &read_secret(path)?)?;
    let key = KeyPair::from_secret_bytes(&key32(path, "secret_key", &file.secret_key)?);
    FleetAuthority::new(&file.fleet, key).map_err(|e| invalid(path, format!("fleet: {e}")))
}

/// Writes a trust anchor (public) to `path`.
pub fn save_anchor(path: &Path, anchor: &TrustAnchor, force: bool) -> Result<(), KeyFileError> {
    let file = AnchorFile {
        fleet: anchor.fleet_id.clone(),
        public_key: anchor.public_key.to_hex(),
    };
    let text = serde_json::to_string_pretty(&file).expect("serializes");
    write(path, &text, false, force)
}

/// Reads a trust anchor.
pub fn load_anchor(path: &Path) -> Result<TrustAnchor, KeyFileError> {
    let file: AnchorFile = parse(path, &std::fs::read_to_string(path).map_err(io(path))?)?;
    crate::identity::check_fleet_id(&file.fleet)
        .map_err(|e| invalid(path, format!("fleet: {e}")))?;
    Ok(TrustAnchor {
        fleet_id: file.fleet,
        public_key: PublicKey(key32(path, "public_key", &file.public_key)?),
    })
}

/// Writes a DR host's issuer key and certificate (mode 0600) to `path`.
pub fn save_issuer(
    path: &Path,
    key: &KeyPair,
    certificate: &IssuerCertificate,
    force: bool,
) -> Result<(), KeyFileError> {
    let file = IssuerFile {
        fleet: certificate.fleet_id.clone(),
        secret_key: hex_encode(&key.secret_bytes()),
        certificate: hex_encode(&certificate.to_bytes()),
    };
    let text = serde_json::to_string_pretty(&file).expect("serializes");
    write(path, &text, true, force)
}

/// Reads a DR host's issuer: its key must match the certificate, and the certificate must
/// be of the fleet the file names.
pub fn load_issuer(path: &Path) -> Result<PseudonymIssuer, KeyFileError> {
    let file: IssuerFile = parse(path, &read_secret(path)?)?;
    let key = KeyPair::from_secret_bytes(&key32(path, "secret_key", &file.secret_key)?);
    let certificate =
        IssuerCertificate::from_bytes(&hex_decode(path, "certificate", &file.certificate)?)
            .map_err(|e| invalid(path, format!("certificate: {e}")))?;
    if certificate.fleet_id != file.fleet {
        return Err(invalid(
            path,
            format!(
                "fleet: the file says {:?}, the certificate {:?}",
                file.fleet, certificate.fleet_id
            ),
        ));
    }
    PseudonymIssuer::new(key, certificate).map_err(|e| invalid(path, format!("certificate: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "twinlink_share_keyfile_{}_{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn credentials_round_trip_and_secrets_stay_private() {
        let d = dir();
        let authority = FleetAuthority::new("acme", KeyPair::generate()).unwrap();
        let path = d.join("acme.authority.key");
        save_authority(&path, &authority, false).unwrap();
        assert!(
            save_authority(&path, &authority, false).is_err(),
            "no silent overwrite"
        );
        let back = load_authority(&path).unwrap();
        assert_eq!(back.fleet_id(), "acme");
        assert_eq!(back.public_key(), authority.public_key());

        let anchor = TrustAnchor {
            fleet_id: "acme".into(),
            public_key: authority.public_key(),
        };
        save_anchor(&d.join("acme.authority.pub"), &anchor, false).unwrap();
        assert_eq!(load_anchor(&d.join("acme.authority.pub")).unwrap(), anchor);

        let issuer_key = KeyPair::generate();
        let cert = authority
            .certify(issuer_key.public_key(), 0, u64::MAX / 2)
            .unwrap();
        let issuer_path = d.join("host-1.issuer.key");
        save_issuer(&issuer_path, &issuer_key, &cert, false).unwrap();
        let issuer = load_issuer(&issuer_path).unwrap();
        assert_eq!(issuer.fleet_id(), "acme");
        assert!(issuer.certificate().is_signed_by(&authority.public_key()));

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&issuer_path)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&issuer_path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = load_issuer(&issuer_path).unwrap_err().to_string();
            assert!(e.contains("chmod 600"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn damaged_files_are_refused_naming_the_field() {
        let d = dir();
        let write_secret = |name: &str, text: &str| {
            let p = d.join(name);
            write(&p, text, true, true).unwrap();
            p
        };
        let p = write_secret("a.key", r#"{"fleet": "acme", "secret_key": "zz"}"#);
        assert!(load_authority(&p)
            .unwrap_err()
            .to_string()
            .contains("secret_key"));
        let p = write_secret("b.key", r#"{"fleet": "a b", "secret_key": "00"}"#);
        assert!(load_authority(&p).is_err());
        let p = write_secret("c.key", r#"{"fleet": "acme"}"#);
        assert!(load_authority(&p)
            .unwrap_err()
            .to_string()
            .contains("secret_key"));
        // An issuer file whose key is not the certified one.
        let authority = FleetAuthority::new("acme", KeyPair::generate()).unwrap();
        let cert = authority
            .certify(KeyPair::generate().public_key(), 0, u64::MAX / 2)
            .unwrap();
        let p = d.join("wrong.issuer.key");
        save_issuer(&p, &KeyPair::generate(), &cert, false).unwrap();
        assert!(load_issuer(&p)
            .unwrap_err()
            .to_string()
            .contains("certificate"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
