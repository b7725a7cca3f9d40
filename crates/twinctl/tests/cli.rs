//! What a user sees from `twinctl provision` and `twinctl audit verify`, good and bad.

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

fn twinctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_twinctl"))
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("twinctl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn provision_writes_both_ends_private_and_loadable_and_prints_no_secret() {
    let dir = temp_dir("ok");
    let out = twinctl()
        .args(["provision", "veh-7", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vehicle = twinlink_link::VehicleId::new("veh-7").unwrap();
    for role in [twinlink_link::Role::Pe, twinlink_link::Role::Dr] {
        let path = dir.join(format!("veh-7.{role}.key"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
        twinlink_link::KeyMaterial::load(&path, &vehicle, role).unwrap();
        // The private key never appears in the output.
        let text = std::fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let private = json["private_key"].as_str().unwrap();
        let printed = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!printed.contains(private));
        assert!(!printed.contains(&private[..16]));
    }
    // No silent overwrite.
    let again = twinctl()
        .args(["provision", "veh-7", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let forced = twinctl()
        .args(["provision", "veh-7", "--force", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(forced.status.success());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_vehicle_ids_are_refused_with_the_reason() {
    let dir = temp_dir("bad");
    for (bad, needle) in [
        ("a/b", "contains '/'"),
        ("", "is empty"),
        ("x*", "contains '*'"),
    ] {
        let out = twinctl()
            .args(["provision", bad, "--out"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("vehicle id") && err.contains(needle),
            "{bad}: {err}"
        );
    }
    assert!(!dir.exists(), "nothing written for a bad id");
}

/// A DR data directory holding one audit log for `vehicle`, written by the DR host's
/// library: genesis, 40 records, a checkpoint every 16 and one at the clean close.
fn audit_data_dir(name: &str, vehicle: &str) -> std::path::PathBuf {
    use twin_dr_host::audit::{AuditConfig, AuditLog, Kind};
    let data = temp_dir(name);
    let id = twinlink_link::VehicleId::new(vehicle).unwrap();
    let mut log = AuditLog::open(
        &data.join(vehicle),
        &id,
        AuditConfig {
            checkpoint_every: 16,
            ..AuditConfig::default()
        },
    )
    .unwrap();
    for seq in 0..40u64 {
        let detail = serde_json::json!({"stream": "perception", "seq": seq, "bytes": 1000 + seq});
        log.append(
            Kind::ExchangeIn,
            detail,
            format!("summary {seq}").as_bytes(),
        )
        .unwrap();
    }
    log.close().unwrap();
    data
}

fn verify(vehicle: &str, data: &std::path::Path, extra: &[&str]) -> std::process::Output {
    twinctl()
        .args(["audit", "verify", vehicle, "--data-dir"])
        .arg(data)
        .args(extra)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

#[test]
fn audit_verify_passes_an_intact_log_and_names_an_altered_or_removed_record() {
    let data = audit_data_dir("audit-ok", "veh-3");
    let log_path = data.join("veh-3").join("audit.log");
    let records = std::fs::read_to_string(&log_path).unwrap().lines().count();
    assert_eq!(records, 1 + 40 + 3);

    let out = verify("veh-3", &data, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!("records: {records}, checkpoints: 3")),
        "{stdout}"
    );
    assert!(stdout.contains("OK"), "{stdout}");
    assert!(stdout.contains("not pinned"), "{stdout}");

    // Pinned to the key in audit.pub.
    let public = std::fs::read_to_string(data.join("veh-3").join("audit.pub")).unwrap();
    let out = verify("veh-3", &data, &["--public-key", public.trim()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("(pinned)"));

    let out = verify("veh-3", &data, &["--json"]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["intact"], true);
    assert_eq!(json["records"], records);
    assert_eq!(json["problems"], serde_json::json!([]));

    // Alter record 20's detail.
    let original = std::fs::read_to_string(&log_path).unwrap();
    let mut lines: Vec<String> = original.lines().map(str::to_string).collect();
    let record: serde_json::Value = serde_json::from_str(&lines[20]).unwrap();
    assert_eq!(record["index"], 20);
    let bytes = record["detail"]["bytes"].as_u64().unwrap();
    lines[20] = lines[20].replace(
        &format!("\"bytes\":{bytes}"),
        &format!("\"bytes\":{}", bytes + 1),
    );
    std::fs::write(&log_path, lines.join("\n") + "\n").unwrap();
    let out = verify("veh-3", &data, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("TAMPERED: 1 problem(s) found"), "{stdout}");
    assert!(
        stdout.contains("record 20 was altered (line 21)"),
        "{stdout}"
    );
    let out = verify("veh-3", &data, &["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["intact"], false);
    assert_eq!(json["problems"][0]["problem"], "altered");
    assert_eq!(json["problems"][0]["index"], 20);
    assert_eq!(json["problems"][0]["severity"], "failure");
    assert_eq!(
        json["problems"][0]["message"],
        "record 20 was altered (line 21)"
    );

    // Remove record 7 instead.
    let mut lines: Vec<&str> = original.lines().collect();
    lines.remove(7);
    std::fs::write(&log_path, lines.join("\n") + "\n").unwrap();
    let out = verify("veh-3", &data, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("record 7 removed"),
        "{}",
        text(&out.stdout)
    );
    std::fs::remove_dir_all(&data).unwrap();
}

#[test]
fn audit_verify_against_another_pinned_key_fails() {
    let data = audit_data_dir("audit-pin", "veh-4");
    let other = audit_data_dir("audit-pin-other", "veh-5");
    let foreign = std::fs::read_to_string(other.join("veh-5").join("audit.pub")).unwrap();
    let out = verify("veh-4", &data, &["--public-key", foreign.trim()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("is not the pinned key"), "{stdout}");
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::remove_dir_all(&other).unwrap();
}

#[test]
fn audit_verify_errors_name_the_cause_and_exit_2() {
    let data = audit_data_dir("audit-err", "veh-6");
    // No directory for the vehicle.
    let out = verify("veh-9", &data, &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&data.join("veh-9").display().to_string()) && err.contains("does not exist"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    // A directory without a log.
    std::fs::create_dir_all(data.join("veh-8")).unwrap();
    let out = verify("veh-8", &data, &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "no audit log at {}",
            data.join("veh-8").join("audit.log").display()
        )),
        "{err}"
    );
    // A bad vehicle id or key.
    let out = verify("a/b", &data, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("vehicle id"),
        "{}",
        text(&out.stderr)
    );
    let out = verify("veh-6", &data, &["--public-key", "xyz"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--public-key"),
        "{}",
        text(&out.stderr)
    );
    // A usage error is 2 as well (clap).
    let out = twinctl().args(["audit", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(&data).unwrap();
}

#[test]
fn dr_commands_name_an_unreachable_host_and_bad_ids() {
    // Nothing listens on a port that was just free.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = format!("127.0.0.1:{port}");
    let out = twinctl()
        .args(["dr", "list", "--admin", &admin])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot reach the DR host's admin endpoint") && err.contains(&admin),
        "{err}"
    );
    let out = twinctl()
        .args(["dr", "status", "a/b", "--admin", &admin])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("vehicle id"),
        "{}",
        text(&out.stderr)
    );
    let out = twinctl()
        .args(["dr", "list", "--admin", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not-an-address"));
}

#[test]
fn fleet_init_and_certify_host_write_private_credentials_that_verify() {
    let dir = temp_dir("fleet");
    let out = twinctl()
        .args(["fleet", "init", "acme", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = dir.join("acme.authority.key");
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A second init does not replace the authority silently.
    let again = twinctl()
        .args(["fleet", "init", "acme", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let out = twinctl()
        .args([
            "fleet",
            "certify-host",
            "host-1",
            "--days",
            "7",
            "--authority",
        ])
        .arg(&secret)
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let issuer = twinlink_share::keyfile::load_issuer(&dir.join("host-1.issuer.key")).unwrap();
    let anchor = twinlink_share::keyfile::load_anchor(&dir.join("acme.authority.pub")).unwrap();
    assert_eq!(issuer.fleet_id(), "acme");
    assert!(issuer.certificate().is_signed_by(&anchor.public_key));
    let week = issuer.certificate().valid_until_us - issuer.certificate().valid_from_us;
    assert_eq!(week, 7 * 86_400 * 1_000_000);
    // No secret in what was printed.
    let text: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&secret).unwrap()).unwrap();
    let key = text["secret_key"].as_str().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(key));

    // Bad input: a fleet id that could not be a key chunk, an unreadable authority.
    let bad = twinctl()
        .args(["fleet", "init", "a/b", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("fleet id"));
    let missing = twinctl()
        .args([
            "fleet",
            "certify-host",
            "h",
            "--authority",
            "/nonexistent/x.key",
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/x.key"));
    let _ = std::fs::remove_dir_all(&dir);
}
