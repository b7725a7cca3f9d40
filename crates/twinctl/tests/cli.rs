//! What a user sees from `twinctl provision`, good and bad.

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
