//! `twinctl`: the operator's command line.
//!
//! `twinctl provision <vehicle-id>` makes the key pair of a vehicle's intra-twin link and
//! writes one key file per end (`<vehicle>.pe.key`, `<vehicle>.dr.key`), mode 0600. Key
//! bytes are never printed; only public keys' fingerprints are.
//!
//! `twinctl audit verify <vehicle-id>` checks the DR's tamper-evident history of that
//! vehicle (`<data-dir>/<vehicle-id>/audit.log`, see `twin_dr_host::audit`): hash chain,
//! order, checkpoint signatures, optionally against a pinned public key.
//!
//! `twinctl dr list` and `twinctl dr status <vehicle-id>` inspect a running DR host
//! through its admin endpoint (`twin-dr-host --admin`, 127.0.0.1:9464 by default): which
//! twins it hosts, active or dormant, and one twin's estimate, advice, counters and link.
//! A twin is provisioned on a host by writing its DR key into the host's keys directory
//! (`twinctl provision <vehicle-id> --out <keys-dir>`); the host picks it up by itself.
//!
//! `twinctl dr hosts` lists the hosts of a fleet (hosts over one database, `twin-dr-host
//! --fleet-db`); `twinctl dr drain --admin <host>` moves a host's twins to the others. A
//! twin asked for at a host that does not serve it is looked up at the host that does.
//!
//! `twinctl fleet init <fleet-id>` makes a fleet's authority for inter-twin sharing: its
//! secret (`<fleet>.authority.key`, mode 0600, kept offline by the operator) and its trust
//! anchor (`<fleet>.authority.pub`, given to every DR host). `twinctl fleet certify-host
//! <host>` certifies a DR host's pseudonym issuer for a number of days
//! (`<host>.issuer.key`, mode 0600): with it the host's twins sign what they disclose under
//! rotating pseudonyms that other fleets' twins can verify but not trace to a vehicle (see
//! `twinlink_share`).
//!
//! Exit status: 0 on success (for `audit verify`: the log is intact), 1 when `audit verify`
//! found tampering, 2 on usage and I/O errors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use twin_dr_host::audit::{self, VerifyReport};
use twinlink_link::{KeyMaterial, Role, VehicleId};

/// Exit status when `audit verify` found tampering.
const EXIT_TAMPERED: u8 = 1;
/// Exit status on usage and I/O errors (as clap's own usage errors).
const EXIT_ERROR: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "twinctl", about = "Operate twinlink twins", version)]
struct Cli {
    /// The operator's token for a DR host's admin endpoint (`twin-dr-host --admin-tokens`).
    #[arg(
        long,
        global = true,
        env = "TWINLINK_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make the key pair of a vehicle's intra-twin link and write both ends' key files.
    Provision {
        /// The vehicle's id (ASCII letters, digits, '_', '-', '.'; 1 to 64 bytes).
        vehicle: String,
        /// Directory to write `<vehicle>.pe.key` and `<vehicle>.dr.key` into.
        #[arg(long, default_value = "keys")]
        out: PathBuf,
        /// Replace existing key files (the old keys stop working).
        #[arg(long)]
        force: bool,
    },
    /// Inspect a DR's tamper-evident audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Inspect a running DR host through its admin endpoint.
    Dr {
        #[command(subcommand)]
        command: DrCommand,
    },
    /// Credentials of a fleet for inter-twin sharing.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Read or set what a twin may share with other twins (its vehicle's consent).
    /// A twin's history: the newest records of its audit log, through a DR host.
    History {
        /// The vehicle's id.
        vehicle: String,
        /// A DR host's admin endpoint (any host of the twin's fleet).
        #[arg(long, default_value = "127.0.0.1:9464")]
        admin: String,
        /// How many records, the newest (1 to 1000).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only records of this kind: exchange_in, exchange_out, disclosure, policy,
        /// lifecycle, checkpoint, genesis.
        #[arg(long)]
        kind: Option<String>,
        /// Print the records as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A twin's state for operators: reported, desired, connectivity.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// A twin's state: what its vehicle reported (under its grant), what the operator
    /// wants, both versioned, its advice and its link.
    Get {
        /// The vehicle's id.
        vehicle: String,
        /// A DR host's admin endpoint (any host of the twin's fleet).
        #[arg(long, default_value = "127.0.0.1:9464")]
        admin: String,
        /// Print the host's JSON as it is.
        #[arg(long)]
        json: bool,
    },
    /// Set what the operator wants of a twin (needs an operator token).
    Set {
        /// The vehicle's id.
        vehicle: String,
        /// A DR host's admin endpoint (any host of the twin's fleet).
        #[arg(long, default_value = "127.0.0.1:9464")]
        admin: String,
        /// Highest speed the twin may advise [km/h].
        #[arg(long, conflicts_with = "no_cap")]
        max_speed_kmh: Option<f64>,
        /// Remove the speed cap.
        #[arg(long)]
        no_cap: bool,
        /// Refuse the change if the desired state is no longer at this version (the
        /// version `state get` showed).
        #[arg(long)]
        if_version: Option<u64>,
        /// Print the host's JSON as it is.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// The sharing policy in force for a twin: rules, version and who set it.
    Get {
        /// The vehicle's id.
        vehicle: String,
        /// The host's admin endpoint (`twin-dr-host --admin`).
        #[arg(long, default_value = "127.0.0.1:9464")]
        admin: String,
        /// Print the host's JSON as it is.
        #[arg(long)]
        json: bool,
    },
    /// Replace a twin's sharing policy (needs an operator token). Categories without a
    /// rule are not shared; no rule at all shares nothing.
    ///
    /// Example: `twinctl policy set veh-1 --rule hazards:same_fleet:50:30:3600 --fetch`
    Set {
        /// The vehicle's id.
        vehicle: String,
        /// The host's admin endpoint (`twin-dr-host --admin`).
        #[arg(long, default_value = "127.0.0.1:9464")]
        admin: String,
        /// A rule, `CATEGORY:AUDIENCE:PRECISION_M:MAX_AGE_S[:EXPIRES_IN_S]`; category:
        /// hazards, objects, traffic; audience: nobody, same_fleet, any_twin (repeatable).
        #[arg(long, value_name = "RULE", conflicts_with = "file")]
        rule: Vec<String>,
        /// Let the twin ask other twins on its own for what its vehicle's route needs.
        #[arg(long, conflicts_with = "file")]
        fetch: bool,
        /// The whole policy as a JSON document (see `twinctl policy get --json`'s `policy`).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Print the host's JSON as it is.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum FleetCommand {
    /// Make a fleet's authority: its secret key and the trust anchor DR hosts verify with.
    Init {
        /// The fleet's id (ASCII letters, digits, '_', '-', '.').
        fleet: String,
        /// Directory to write `<fleet>.authority.key` (mode 0600) and `<fleet>.authority.pub`.
        #[arg(long, default_value = "fleet")]
        out: PathBuf,
        /// Replace existing files (every host certificate of the old authority stops being
        /// trusted where the new anchor replaces the old one).
        #[arg(long)]
        force: bool,
    },
    /// Certify a DR host's pseudonym issuer: writes `<host>.issuer.key` (mode 0600).
    CertifyHost {
        /// A name for the host (used for the file name only).
        host: String,
        /// The fleet authority's secret (`twinctl fleet init`).
        #[arg(long)]
        authority: PathBuf,
        /// How long the certificate is valid [days]; the host needs a new one before then.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3650))]
        days: u64,
        /// Directory to write the issuer file into.
        #[arg(long, default_value = "fleet")]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DrCommand {
    /// Every twin the host holds: active (its vehicle connected) or dormant, with counters.
    List {
        /// The host's admin endpoint (`twin-dr-host --admin`).
        #[arg(long, default_value = "127.0.0.1:9464")]
        admin: String,
        /// Print the host's JSON as it is.
        #[arg(long)]
        json: bool,
    },
    /// The hosts of the host's fleet: live or not, draining, shards owned.
    Hosts {
        /// Any host's admin endpoint (`twin-dr-host --admin`).
        #[arg(long, default_value = "127.0.0.1:9464")]
        admin: String,
        /// Print the host's JSON as it is.
        #[arg(long)]
        json: bool,
    },
    /// Drain a host of a fleet: it gives every shard back and its twins move to the other
    /// hosts (needs an operator token); the host keeps running, serving nothing.
    Drain {
        /// The admin endpoint of the host to drain.
        #[arg(long)]
        admin: String,
        /// Print the host's JSON as it is.
        #[arg(long)]
        json: bool,
    },
    /// One twin: its estimate of the vehicle, its advice, counters and link.
    Status {
        /// The vehicle's id.
        vehicle: String,
        /// The host's admin endpoint (`twin-dr-host --admin`).
        #[arg(long, default_value = "127.0.0.1:9464")]
        admin: String,
        /// Print the host's JSON as it is.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify a vehicle's audit log: hash chain, order and checkpoint signatures.
    ///
    /// Exits 0 when the log is intact (warnings allowed), 1 when tampering was found, 2 on
    /// errors (no such log, bad arguments).
    Verify {
        /// The vehicle's id (ASCII letters, digits, '_', '-', '.'; 1 to 64 bytes).
        vehicle: String,
        /// The DR host's data directory; the log is `<data-dir>/<vehicle>/audit.log`.
        #[arg(long, default_value = "dr-data")]
        data_dir: PathBuf,
        /// The log's public key (64 hex digits, from `audit.pub`, kept somewhere the DR
        /// host cannot write); without it a log re-created with a new key goes unnoticed.
        #[arg(long, value_name = "HEX")]
        public_key: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("twinctl: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let token = cli.token.as_deref();
    match cli.command {
        Command::Provision {
            vehicle,
            out,
            force,
        } => provision(&vehicle, &out, force).map(|()| ExitCode::SUCCESS),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    vehicle,
                    data_dir,
                    public_key,
                    json,
                },
        } => audit_verify(&vehicle, &data_dir, public_key.as_deref(), json),
        Command::Dr {
            command: DrCommand::List { admin, json },
        } => dr_list(&admin, token, json).map(|()| ExitCode::SUCCESS),
        Command::History {
            vehicle,
            admin,
            limit,
            kind,
            json,
        } => history(&vehicle, &admin, token, limit, kind.as_deref(), json)
            .map(|()| ExitCode::SUCCESS),
        Command::State {
            command:
                StateCommand::Get {
                    vehicle,
                    admin,
                    json,
                },
        } => state_get(&vehicle, &admin, token, json).map(|()| ExitCode::SUCCESS),
        Command::State {
            command:
                StateCommand::Set {
                    vehicle,
                    admin,
                    max_speed_kmh,
                    no_cap,
                    if_version,
                    json,
                },
        } => state_set(
            &vehicle,
            &admin,
            token,
            max_speed_kmh,
            no_cap,
            if_version,
            json,
        )
        .map(|()| ExitCode::SUCCESS),
        Command::Dr {
            command: DrCommand::Hosts { admin, json },
        } => dr_hosts(&admin, token, json).map(|()| ExitCode::SUCCESS),
        Command::Dr {
            command: DrCommand::Drain { admin, json },
        } => dr_drain(&admin, token, json).map(|()| ExitCode::SUCCESS),
        Command::Policy {
            command:
                PolicyCommand::Get {
                    vehicle,
                    admin,
                    json,
                },
        } => policy_get(&vehicle, &admin, token, json).map(|()| ExitCode::SUCCESS),
        Command::Policy {
            command:
                PolicyCommand::Set {
                    vehicle,
                    admin,
                    rule,
                    fetch,
                    file,
                    json,
                },
        } => {
            let document = match file {
                Some(path) => read_policy_file(&path)?,
                None => policy_from_rules(&rule, fetch, std::time::SystemTime::now())?,
            };
            policy_set(&vehicle, &admin, token, &document, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Dr {
            command:
                DrCommand::Status {
                    vehicle,
                    admin,
                    json,
                },
        } => dr_status(&vehicle, &admin, token, json).map(|()| ExitCode::SUCCESS),
        Command::Fleet {
            command: FleetCommand::Init { fleet, out, force },
        } => fleet_init(&fleet, &out, force).map(|()| ExitCode::SUCCESS),
        Command::Fleet {
            command:
                FleetCommand::CertifyHost {
                    host,
                    authority,
                    days,
                    out,
                    force,
                },
        } => fleet_certify_host(&host, &authority, days, &out, force).map(|()| ExitCode::SUCCESS),
    }
}

fn fleet_init(fleet: &str, out: &Path, force: bool) -> anyhow::Result<()> {
    use twinlink_share::keyfile;
    let authority = twinlink_share::FleetAuthority::new(fleet, twinlink_share::KeyPair::generate())
        .map_err(|e| anyhow::anyhow!("fleet id {fleet:?}: {e}"))?;
    std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    let secret = out.join(format!("{fleet}.authority.key"));
    let anchor = out.join(format!("{fleet}.authority.pub"));
    if !force {
        for p in [&secret, &anchor] {
            anyhow::ensure!(
                !p.exists(),
                "{} exists; pass --force to replace it (hosts certified by the old authority stop being trusted where its anchor is replaced)",
                p.display()
            );
        }
    }
    keyfile::save_authority(&secret, &authority, force)?;
    keyfile::save_anchor(
        &anchor,
        &keyfile::TrustAnchor {
            fleet_id: fleet.to_string(),
            public_key: authority.public_key(),
        },
        force,
    )?;
    emit(&format!(
        "fleet {fleet}: authority {} (keep offline, mode 0600)
  trust anchor {} (give to every DR host), public key {}
",
        secret.display(),
        anchor.display(),
        authority.public_key().to_hex()
    ))
}

fn fleet_certify_host(
    host: &str,
    authority: &Path,
    days: u64,
    out: &Path,
    force: bool,
) -> anyhow::Result<()> {
    use twinlink_share::keyfile;
    anyhow::ensure!(
        !host.is_empty()
            && host.len() <= 64
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)),
        "host name {host:?}: 1 to 64 ASCII letters, digits, '_', '-' or '.'"
    );
    let authority = keyfile::load_authority(authority)?;
    let issuer_key = twinlink_share::KeyPair::generate();
    let now = twinlink_share::time::now_us();
    let until = now + days * 86_400 * 1_000_000;
    let certificate = authority
        .certify(issuer_key.public_key(), now, until)
        .map_err(|e| anyhow::anyhow!("certifying {host}: {e}"))?;
    std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    let path = out.join(format!("{host}.issuer.key"));
    anyhow::ensure!(
        force || !path.exists(),
        "{} exists; pass --force to replace it",
        path.display()
    );
    keyfile::save_issuer(&path, &issuer_key, &certificate, force)?;
    emit(&format!(
        "host {host} of fleet {}: issuer {} (mode 0600), valid {days} days, public key {}
",
        authority.fleet_id(),
        path.display(),
        issuer_key.public_key().to_hex()
    ))
}

/// Sends `method` to `path` on the host's admin endpoint and parses the JSON answer; a
/// refusal becomes an error that says what to do.
fn admin_call(
    admin: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    let (code, text) = twin_dr_host::admin::request(
        method,
        admin,
        path,
        token,
        body,
        std::time::Duration::from_secs(5),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the DR host's admin endpoint at {admin}: {e} (is twin-dr-host running with --admin {admin}?)"
        )
    })?;
    let text = text.trim();
    match code {
        200 => serde_json::from_str(text).map_err(|e| {
            anyhow::anyhow!("the host at {admin} answered {path} with invalid JSON: {e}")
        }),
        401 if token.is_none() => anyhow::bail!(
            "the host at {admin} needs a token: give --token or set TWINLINK_ADMIN_TOKEN ({text})"
        ),
        401 => anyhow::bail!("the host at {admin} does not know this token ({text})"),
        _ => anyhow::bail!("the host at {admin} answered {method} {path} with {code}: {text}"),
    }
}

/// GETs `path` from the host's admin endpoint and parses the JSON body.
fn admin_json(admin: &str, path: &str, token: Option<&str>) -> anyhow::Result<serde_json::Value> {
    admin_call(admin, "GET", path, token, None)
}

fn dr_hosts(admin: &str, token: Option<&str>, json: bool) -> anyhow::Result<()> {
    let doc = admin_json(admin, "/fleet", token)?;
    if json {
        return emit(&(serde_json::to_string_pretty(&doc)? + "\n"));
    }
    if doc["fleet"].is_null() {
        return emit(&format!(
            "{admin} is a host on its own (not in a fleet: started without --fleet-db)\n"
        ));
    }
    emit(&format_hosts(&doc))
}

/// The fleet document of `GET /fleet` as a table.
fn format_hosts(doc: &serde_json::Value) -> String {
    let fleet = &doc["fleet"];
    let hosts = fleet["hosts"].as_array().cloned().unwrap_or_default();
    let live = hosts.iter().filter(|h| h["live"] == true).count();
    let mut text = format!(
        "fleet of {} hosts ({live} live), {} shards\n{:<20} {:<22} {:<9} {:>6}  {}\n",
        hosts.len(),
        fleet["shards"].as_u64().unwrap_or(0),
        "HOST",
        "ADMIN",
        "STATE",
        "SHARDS",
        "STARTED"
    );
    for h in &hosts {
        let state = match (h["live"] == true, h["draining"] == true) {
            (_, true) => "draining",
            (true, false) => "live",
            (false, false) => "gone",
        };
        text += &format!(
            "{:<20} {:<22} {:<9} {:>6}  {}\n",
            h["name"].as_str().unwrap_or("?"),
            h["admin"].as_str().unwrap_or(""),
            state,
            h["shards"].as_u64().unwrap_or(0),
            h["started_us"].as_u64().map_or("-".into(), rfc3339)
        );
    }
    text
}

fn history(
    vehicle: &str,
    admin: &str,
    token: Option<&str>,
    limit: usize,
    kind: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let vehicle = VehicleId::new(vehicle)?;
    anyhow::ensure!(
        (1..=twin_dr_host::admin::MAX_HISTORY).contains(&limit),
        "--limit must be 1 to {}, got {limit}",
        twin_dr_host::admin::MAX_HISTORY
    );
    let mut path = format!("/twins/{vehicle}/history?limit={limit}");
    if let Some(k) = kind {
        anyhow::ensure!(
            !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "--kind {k:?}: a record kind such as policy, lifecycle, disclosure"
        );
        path += &format!("&kind={k}");
    }
    let records = admin_json(admin, &path, token)?;
    if json {
        return emit(&(serde_json::to_string_pretty(&records)? + "\n"));
    }
    emit(&format_history(&vehicle, &records))
}

/// History records (`GET /twins/<v>/history`) as a table.
fn format_history(vehicle: &VehicleId, records: &serde_json::Value) -> String {
    let records = records.as_array().cloned().unwrap_or_default();
    let mut text = format!(
        "{} records of {vehicle}'s history\n{:>7}  {:<20}  {:<12}  {}\n",
        records.len(),
        "INDEX",
        "TIME",
        "KIND",
        "DETAIL"
    );
    for r in &records {
        let mut detail = r["detail"].to_string();
        if detail.len() > 100 {
            let mut cut = 97;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
            detail += "...";
        }
        text += &format!(
            "{:>7}  {:<20}  {:<12}  {}\n",
            r["index"],
            r["time_us"].as_u64().map_or("-".to_string(), rfc3339),
            r["kind"].as_str().unwrap_or("?"),
            detail
        );
    }
    text
}

fn state_get(vehicle: &str, admin: &str, token: Option<&str>, json: bool) -> anyhow::Result<()> {
    let vehicle = VehicleId::new(vehicle)?;
    let doc = admin_json(admin, &format!("/twins/{vehicle}/state"), token)?;
    if json {
        return emit(&(serde_json::to_string_pretty(&doc)? + "\n"));
    }
    emit(&format_state(&doc))
}

#[allow(clippy::too_many_arguments)]
fn state_set(
    vehicle: &str,
    admin: &str,
    token: Option<&str>,
    max_speed_kmh: Option<f64>,
    no_cap: bool,
    if_version: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let vehicle = VehicleId::new(vehicle)?;
    if token.is_none() {
        anyhow::bail!(
            "changing a desired state needs an operator token: give --token or set TWINLINK_ADMIN_TOKEN"
        );
    }
    let max_speed_mps = match (max_speed_kmh, no_cap) {
        (Some(kmh), _) => {
            anyhow::ensure!(
                kmh.is_finite() && kmh > 0.0,
                "--max-speed-kmh must be a positive number, got {kmh}"
            );
            Some(kmh / 3.6)
        }
        (None, true) => None,
        (None, false) => anyhow::bail!("say what to set: --max-speed-kmh KMH, or --no-cap"),
    };
    let body = serde_json::to_string(&twin_dr_host::admin::DesiredDocument {
        max_speed_mps,
        if_version,
    })?;
    let doc = admin_call(
        admin,
        "PUT",
        &format!("/twins/{vehicle}/desired"),
        token,
        Some(&body),
    )?;
    if json {
        return emit(&(serde_json::to_string_pretty(&doc)? + "\n"));
    }
    emit(&format!("desired state set.\n{}", format_state(&doc)))
}

/// A twin's state document (`GET /twins/<v>/state`) for people.
fn format_state(doc: &serde_json::Value) -> String {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let time = |v: &serde_json::Value| v.as_u64().map_or("-".to_string(), rfc3339);
    let mut text = format!(
        "twin of {}{}\n",
        doc["vehicle"].as_str().unwrap_or("?"),
        doc["host"]
            .as_str()
            .map_or(String::new(), |h| format!(" on {h}"))
    );
    let r = &doc["reported"];
    text += &match r["state"].as_object() {
        Some(s) => format!(
            "  reported  v{}: x {:.0} m, y {:.0} m, {:.1} m/s, lane {} (as the vehicle's grant allows)\n",
            r["version"], f(&s["x"]), f(&s["y"]), f(&s["speed"]), s["lane"]
        ),
        None => format!(
            "  reported  v{}: withheld ({})\n",
            r["version"],
            r["withheld"].as_str().unwrap_or("?")
        ),
    };
    let d = &doc["desired"];
    text += &format!(
        "  desired   v{}: {}{}\n",
        d["version"],
        match d["max_speed_mps"].as_f64() {
            Some(v) => format!("speed cap {:.0} km/h", v * 3.6),
            None => "no speed cap".to_string(),
        },
        match d["by"].as_str() {
            Some(by) if !by.is_empty() => format!(", set by {by} at {}", time(&d["set_at_us"])),
            _ => String::new(),
        }
    );
    if let Some(a) = doc["advice"].as_object() {
        text += &format!(
            "  advice:      {:.0} km/h, lane {}, {}\n",
            f(&a["target_speed"]) * 3.6,
            a["target_lane"],
            a["reason"].as_str().unwrap_or("")
        );
    }
    let c = &doc["connectivity"];
    text += &if c["connected"] == true {
        format!(
            "  link:        connected since {}, rtt {}, uplink {}\n",
            time(&c["since_us"]),
            c["rtt_us"]
                .as_u64()
                .map_or("-".into(), |us| format!("{:.1} ms", us as f64 / 1000.0)),
            c["uplink_bottleneck_bps"]
                .as_u64()
                .map_or("-".into(), |b| format!("{:.0} kbit/s", b as f64 / 1000.0)),
        )
    } else {
        format!(
            "  link:        not connected{}\n",
            c["until_us"]
                .as_u64()
                .map_or(String::new(), |t| format!(" since {}", rfc3339(t)))
        )
    };
    text
}

fn dr_drain(admin: &str, token: Option<&str>, json: bool) -> anyhow::Result<()> {
    if token.is_none() {
        anyhow::bail!(
            "draining a host needs an operator token: give --token or set TWINLINK_ADMIN_TOKEN"
        );
    }
    let doc = admin_call(admin, "POST", "/drain", token, None)?;
    if json {
        return emit(&(serde_json::to_string_pretty(&doc)? + "\n"));
    }
    emit(&format!(
        "draining {admin}: {} shards go back to the fleet; its twins move to the other hosts (watch with `twinctl dr hosts`)\n",
        doc["shards_to_give_back"]
    ))
}

fn dr_list(admin: &str, token: Option<&str>, json: bool) -> anyhow::Result<()> {
    let list = admin_json(admin, "/twins", token)?;
    if json {
        return emit(&(serde_json::to_string_pretty(&list)? + "\n"));
    }
    let twins = list.as_array().cloned().unwrap_or_default();
    let active = twins.iter().filter(|t| t["active"] == true).count();
    let mut text = format!(
        "{} twins on {admin}: {active} active, {} dormant\n{:<24} {:<8} {:>8} {:>10} {:>10} {:>8}\n",
        twins.len(),
        twins.len() - active,
        "VEHICLE",
        "STATE",
        "STATES",
        "SUMMARIES",
        "ADVICE",
        "REFUSED"
    );
    for t in &twins {
        let n = |k: &str| {
            t[k].as_u64()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into())
        };
        let state = if t["active"] == true {
            "active"
        } else {
            "dormant"
        };
        text += &format!(
            "{:<24} {:<8} {:>8} {:>10} {:>10} {:>8}\n",
            t["vehicle"].as_str().unwrap_or("?"),
            state,
            n("states"),
            n("summaries"),
            n("recommendations"),
            n("refused")
        );
    }
    emit(&text)
}

fn dr_status(vehicle: &str, admin: &str, token: Option<&str>, json: bool) -> anyhow::Result<()> {
    let vehicle = VehicleId::new(vehicle)?;
    let doc = admin_json(admin, &format!("/twins/{vehicle}"), token)?;
    if json {
        return emit(&(serde_json::to_string_pretty(&doc)? + "\n"));
    }
    let mut text = format!(
        "twin of {vehicle}: {}\n",
        if doc["active"] == true {
            "active (vehicle connected)"
        } else {
            "dormant (vehicle away)"
        }
    );
    let e = &doc["estimate"];
    if e.is_object() {
        text += &format!(
            "  estimate: x {:.1} m, y {:.1} m, {:.1} m/s, uncertainty {:.1} m, state {:.1} s old\n",
            e["x"].as_f64().unwrap_or(f64::NAN),
            e["y"].as_f64().unwrap_or(f64::NAN),
            e["speed"].as_f64().unwrap_or(f64::NAN),
            e["position_sigma"].as_f64().unwrap_or(f64::NAN),
            e["age"].as_f64().unwrap_or(f64::NAN)
        );
    } else {
        text += "  estimate: none (no vehicle state received yet)\n";
    }
    let d = &doc["desired"];
    if d.is_object() {
        text += &format!(
            "  advice: {:.1} m/s ({:.0} km/h), lane {}, {}\n",
            d["target_speed"].as_f64().unwrap_or(f64::NAN),
            d["target_speed"].as_f64().unwrap_or(f64::NAN) * 3.6,
            d["target_lane"],
            d["reason"].as_str().unwrap_or("")
        );
    }
    let c = &doc["counters"];
    text += &format!(
        "  counters: {} states, {} summaries, {} recommendations, {} regional tiles, {} refused\n  tracks: {}, hazards: {}\n",
        c["states"], c["summaries"], c["recommendations"], c["regional_tiles"], c["refused"],
        doc["tracks"], doc["hazards"].as_array().map_or(0, |h| h.len())
    );
    let l = &doc["link"];
    if l.is_object() {
        text += &format!(
            "  link: vehicle {}, rtt {} us, {} frames in, {} out, {} refused\n",
            if l["peer_alive"] == true {
                "reachable"
            } else {
                "gone"
            },
            l["rtt"]["smoothed_us"],
            l["frames_received"],
            l["frames_sent"],
            l["rejected"]
                .as_object()
                .map_or(0, |r| r.values().filter_map(|v| v.as_u64()).sum::<u64>())
        );
    }
    emit(&text)
}

/// A policy document from `--rule` arguments (`CATEGORY:AUDIENCE:PRECISION_M:MAX_AGE_S
/// [:EXPIRES_IN_S]`), expiries counted from `now`.
fn policy_from_rules(
    rules: &[String],
    fetch: bool,
    now: std::time::SystemTime,
) -> anyhow::Result<twinlink_share::PolicyDocument> {
    let now_us = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| anyhow::anyhow!("the clock is before 1970"))?
        .as_micros() as u64;
    let rules = rules
        .iter()
        .map(|text| {
            let parts: Vec<&str> = text.split(':').collect();
            let usage = || {
                anyhow::anyhow!(
                    "--rule {text:?}: expected CATEGORY:AUDIENCE:PRECISION_M:MAX_AGE_S[:EXPIRES_IN_S], e.g. hazards:same_fleet:50:30:3600"
                )
            };
            if !(4..=5).contains(&parts.len()) {
                return Err(usage());
            }
            let number = |what: &str, s: &str| {
                s.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| anyhow::anyhow!("--rule {text:?}: {what} {s:?} is not a number >= 0"))
            };
            let expires_at_us = match parts.get(4) {
                None => 0,
                Some(s) => {
                    let seconds = number("EXPIRES_IN_S", s)?;
                    if seconds == 0.0 || seconds > MAX_EXPIRES_IN_S {
                        anyhow::bail!("--rule {text:?}: EXPIRES_IN_S must be positive and at most {MAX_EXPIRES_IN_S} (10 years); leave it out for a grant until revoked");
                    }
                    now_us + (seconds * 1e6) as u64
                }
            };
            Ok(twinlink_share::RuleDocument {
                category: parts[0].to_string(),
                audience: parts[1].to_string(),
                precision_m: number("PRECISION_M", parts[2])? as f32,
                max_age_s: number("MAX_AGE_S", parts[3])? as f32,
                expires_at_us,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let document = twinlink_share::PolicyDocument {
        allow_autonomous_fetch: fetch,
        rules,
    };
    // Names are checked here, values by the twin.
    document.to_policy()?;
    Ok(document)
}

fn read_policy_file(path: &Path) -> anyhow::Result<twinlink_share::PolicyDocument> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let document: twinlink_share::PolicyDocument = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a sharing policy document: {e}", path.display()))?;
    document
        .to_policy()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(document)
}

fn policy_get(vehicle: &str, admin: &str, token: Option<&str>, json: bool) -> anyhow::Result<()> {
    let vehicle = VehicleId::new(vehicle)?;
    let doc = admin_json(admin, &format!("/twins/{vehicle}/policy"), token)?;
    if json {
        return emit(&(serde_json::to_string_pretty(&doc)? + "\n"));
    }
    emit(&format_policy(&doc))
}

fn policy_set(
    vehicle: &str,
    admin: &str,
    token: Option<&str>,
    document: &twinlink_share::PolicyDocument,
    json: bool,
) -> anyhow::Result<()> {
    let vehicle = VehicleId::new(vehicle)?;
    if token.is_none() {
        anyhow::bail!(
            "changing a policy needs an operator token: give --token or set TWINLINK_ADMIN_TOKEN"
        );
    }
    let body = serde_json::to_string(document)?;
    let doc = admin_call(
        admin,
        "PUT",
        &format!("/twins/{vehicle}/policy"),
        token,
        Some(&body),
    )?;
    if json {
        return emit(&(serde_json::to_string_pretty(&doc)? + "\n"));
    }
    emit(&format!("policy set.\n{}", format_policy(&doc)))
}

/// Longest grant `--rule` takes [s].
const MAX_EXPIRES_IN_S: f64 = 10.0 * 365.25 * 86_400.0;

/// A time in µs since the epoch as RFC 3339 (UTC, seconds); beyond the year 9999 (which
/// RFC 3339 cannot write) the number itself.
fn rfc3339(us: u64) -> String {
    const YEAR_10000_US: u64 = 253_402_300_800_000_000;
    if us >= YEAR_10000_US {
        return format!("{us} µs after 1970");
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_micros(us))
        .to_string()
}

/// A JSON number as text without a needless ".0" ("?" when it is not a number).
fn number(v: &serde_json::Value) -> String {
    v.as_f64().map_or("?".into(), |x| format!("{x}"))
}

/// A policy document from the host as a table.
fn format_policy(doc: &serde_json::Value) -> String {
    let origin = &doc["origin"];
    let source = origin["source"].as_str().unwrap_or("?");
    let set = match source {
        "none" => "nothing set (default deny)".to_string(),
        "operator" => format!(
            "set by operator {} at {}",
            origin["operator"].as_str().unwrap_or("?"),
            rfc3339(origin["at_us"].as_u64().unwrap_or(0))
        ),
        "refused" => "the last policy set was refused: default deny".to_string(),
        s => format!(
            "set by the {s} at {}",
            rfc3339(origin["at_us"].as_u64().unwrap_or(0))
        ),
    };
    let policy = &doc["policy"];
    let mut text = format!(
        "sharing policy of {}: version {}, {set}\n  fetch from other twins on its own: {}\n",
        doc["vehicle"].as_str().unwrap_or("?"),
        doc["version"],
        if policy["allow_autonomous_fetch"] == true {
            "yes"
        } else {
            "no"
        }
    );
    let rules = policy["rules"].as_array().cloned().unwrap_or_default();
    if rules.is_empty() {
        text += "  no rules: nothing is shared\n";
        return text;
    }
    text += &format!(
        "  {:<10} {:<11} {:>10} {:>8}  {}\n",
        "CATEGORY", "AUDIENCE", "PRECISION", "MAX AGE", "EXPIRES"
    );
    for r in rules {
        let expires = match r["expires_at_us"].as_u64().unwrap_or(0) {
            0 => "never".to_string(),
            us => rfc3339(us),
        };
        text += &format!(
            "  {:<10} {:<11} {:>8} m {:>6} s  {}\n",
            r["category"].as_str().unwrap_or("?"),
            r["audience"].as_str().unwrap_or("?"),
            number(&r["precision_m"]),
            number(&r["max_age_s"]),
            expires
        );
    }
    text
}

fn audit_verify(
    vehicle: &str,
    data_dir: &Path,
    public_key: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let vehicle = VehicleId::new(vehicle)?;
    let pinned = public_key
        .map(audit::parse_public_key)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--public-key: {e}"))?;
    let dir = data_dir.join(vehicle.as_str());
    if !dir.is_dir() {
        anyhow::bail!(
            "no data directory for vehicle {vehicle}: {} does not exist (the DR host keeps <data-dir>/<vehicle>/audit.log; is --data-dir right?)",
            dir.display()
        );
    }
    let report = audit::verify(&dir, &vehicle, pinned)?;
    let text = if json {
        serde_json::to_string_pretty(&report.to_json())? + "\n"
    } else {
        format_report(&report)
    };
    emit(&text)?;
    Ok(if report.is_intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_TAMPERED)
    })
}

/// Writes `text` to stdout; a reader that stopped reading (`| head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// The human summary: what was checked, then OK or each problem on its own line.
fn format_report(report: &VerifyReport) -> String {
    let mut lines = vec![format!(
        "audit log {} (vehicle {})",
        report.path.display(),
        report.vehicle
    )];
    let signed = match report.signed_through {
        Some(index) => format!("signed through record {index}"),
        None => "no valid checkpoint".to_string(),
    };
    lines.push(format!(
        "  records: {}, checkpoints: {}, {signed}",
        report.records, report.checkpoints
    ));
    lines.push(match (&report.genesis_public_key, report.key_pinned) {
        (Some(key), true) => format!("  key: {key} (pinned)"),
        (Some(key), false) => format!(
            "  key: {key} (not pinned: pass --public-key with the key from audit.pub, kept elsewhere, to detect a log re-created with another key)"
        ),
        (None, true) => "  key: pinned; the genesis record's key is unreadable".to_string(),
        (None, false) => "  key: unreadable, none pinned".to_string(),
    });
    let failures: Vec<_> = report.failures().collect();
    if failures.is_empty() {
        lines.push("OK: the chain is intact and every checkpoint signature verifies".to_string());
    } else {
        lines.push(format!("TAMPERED: {} problem(s) found", failures.len()));
        lines.extend(failures.iter().map(|problem| format!("  {problem}")));
    }
    lines.extend(
        report
            .warnings()
            .map(|warning| format!("warning: {warning}")),
    );
    lines.join("\n") + "\n"
}

fn provision(vehicle: &str, out: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let vehicle = VehicleId::new(vehicle)?;
    std::fs::create_dir_all(out)
        .map_err(|e| anyhow::anyhow!("creating key directory {}: {e}", out.display()))?;
    let pe_path = out.join(KeyMaterial::file_name(&vehicle, Role::Pe));
    let dr_path = out.join(KeyMaterial::file_name(&vehicle, Role::Dr));
    if !force {
        for path in [&pe_path, &dr_path] {
            if path.exists() {
                anyhow::bail!(
                    "{} exists; pass --force to replace the twin's keys (the old ones stop working)",
                    path.display()
                );
            }
        }
    }
    let (pe, dr) = KeyMaterial::generate_pair(&vehicle)?;
    pe.save(&pe_path, force)?;
    dr.save(&dr_path, force)?;
    println!("provisioned vehicle {vehicle}");
    println!(
        "  PE key: {} (public {})",
        pe_path.display(),
        pe.public_key().fingerprint()
    );
    println!(
        "  DR key: {} (public {})",
        dr_path.display(),
        dr.public_key().fingerprint()
    );
    println!(
        "copy the PE key to the vehicle and the DR key to its twin's host; both are mode 0600"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_from_the_command_line_become_a_document_or_a_named_error() {
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let rules = [
            "hazards:same_fleet:50:30:3600".to_string(),
            "traffic:any_twin:100:10".to_string(),
        ];
        let doc = policy_from_rules(&rules, true, now).unwrap();
        assert!(doc.allow_autonomous_fetch);
        assert_eq!(doc.rules[0].audience, "same_fleet");
        assert_eq!(doc.rules[0].precision_m, 50.0);
        assert_eq!(doc.rules[0].expires_at_us, 1_800_003_600_000_000);
        assert_eq!(doc.rules[1].expires_at_us, 0, "no expiry: until revoked");
        let err = |rule: &str| {
            policy_from_rules(&[rule.to_string()], false, now)
                .unwrap_err()
                .to_string()
        };
        assert!(err("hazards:any_twin:10").contains("expected CATEGORY:AUDIENCE"));
        assert!(err("hazards:any_twin:ten:30").contains("PRECISION_M \"ten\""));
        assert!(err("hazards:any_twin:10:30:0").contains("EXPIRES_IN_S must be positive"));
        assert!(err("hazards:any_twin:10:30:1e300").contains("at most"));
        assert_eq!(rfc3339(u64::MAX), format!("{} µs after 1970", u64::MAX));
        assert!(err("weather:any_twin:10:30").contains("\"weather\""));
        assert!(err("hazards:all:10:30").contains("\"all\""));
        // Nothing at all is a valid policy: nothing shared.
        assert!(policy_from_rules(&[], false, now).unwrap().rules.is_empty());
    }

    #[test]
    fn fleet_hosts_print_as_a_table() {
        let doc = serde_json::json!({"fleet": {"shards": 8, "hosts": [
            {"name": "host-a", "admin": "10.0.0.1:9464", "live": true, "draining": false, "shards": 5, "started_us": 1_796_000_000_000_000u64},
            {"name": "host-b", "admin": "10.0.0.2:9464", "live": false, "draining": true, "shards": 0, "started_us": 1_796_000_000_000_000u64},
            {"name": "host-c", "admin": "10.0.0.3:9464", "live": false, "draining": false, "shards": 0, "started_us": 1_796_000_000_000_000u64}
        ]}});
        let text = format_hosts(&doc);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "fleet of 3 hosts (1 live), 8 shards");
        assert!(
            lines[2].starts_with("host-a")
                && lines[2].contains(" live ")
                && lines[2].contains(" live           5  2026-"),
            "{text}"
        );
        assert!(lines[3].contains(" draining "), "{text}");
        assert!(lines[4].contains(" gone "), "{text}");
    }

    #[test]
    fn policies_print_as_a_table() {
        let doc = serde_json::json!({
            "vehicle": "veh-1", "version": 3,
            "origin": {"source": "operator", "operator": "alice", "at_us": 1_800_000_000_000_000u64},
            "policy": {"allow_autonomous_fetch": true, "rules": [
                {"category": "hazards", "audience": "same_fleet", "precision_m": 50.0,
                 "max_age_s": 30.0, "expires_at_us": 0}]}
        });
        let text = format_policy(&doc);
        assert!(
            text.contains("version 3, set by operator alice at 2027-01-15T08:00:00Z"),
            "{text}"
        );
        assert!(
            text.contains("fetch from other twins on its own: yes"),
            "{text}"
        );
        assert!(text.contains("hazards    same_fleet"), "{text}");
        assert!(text.contains("never"), "{text}");
        assert!(text.contains("       50 m     30 s  never"), "{text}");
    }
}
