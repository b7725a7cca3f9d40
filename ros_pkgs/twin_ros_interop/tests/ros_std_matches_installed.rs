//! The standard message definitions twinlink builds from (msgs/ros_std, so the codec builds
//! without ROS) must equal the installed ROS 2 definitions in every field, constant and default.

use std::path::{Path, PathBuf};
use twinlink_msgs::idl::{self, MessageDef};

fn installed_definition(package: &str, file: &str) -> Option<PathBuf> {
    let prefixes =
        std::env::var("AMENT_PREFIX_PATH").expect("AMENT_PREFIX_PATH is set by scripts/env.sh");
    prefixes
        .split(':')
        .map(|p| {
            Path::new(p)
                .join("share")
                .join(package)
                .join("msg")
                .join(file)
        })
        .find(|p| p.exists())
}

/// Everything that affects types and bytes; documentation is left out.
fn signature(def: &MessageDef) -> (Vec<String>, Vec<String>) {
    let fields = def
        .fields
        .iter()
        .map(|f| {
            let default = f
                .default
                .as_deref()
                .map(|d| d.parse::<f64>().map_or(d.to_string(), |n| n.to_string()));
            format!("{} {} {:?} {:?}", f.base, f.name, f.arity, default)
        })
        .collect();
    let constants = def
        .constants
        .iter()
        .map(|c| format!("{} {}={}", c.kind.name(), c.name, c.value))
        .collect();
    (fields, constants)
}

#[test]
fn ros_std_matches_installed_ros() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../msgs/ros_std");
    let mut compared = 0;
    for pkg in std::fs::read_dir(&root).unwrap() {
        let pkg = pkg.unwrap().path();
        if !pkg.is_dir() {
            continue;
        }
        let package = pkg.file_name().unwrap().to_string_lossy().to_string();
        for file in std::fs::read_dir(pkg.join("msg")).unwrap() {
            let file = file.unwrap().path();
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            let stem = file.file_stem().unwrap().to_string_lossy().to_string();
            let installed = installed_definition(&package, &name).unwrap_or_else(|| {
                panic!("{package}/msg/{name} is not installed under AMENT_PREFIX_PATH")
            });
            let ours =
                idl::parse_message(&package, &stem, &std::fs::read_to_string(&file).unwrap(), 1)
                    .unwrap();
            let theirs = idl::parse_message(
                &package,
                &stem,
                &std::fs::read_to_string(&installed).unwrap(),
                1,
            )
            .unwrap_or_else(|e| panic!("{}: {e}", installed.display()));
            assert_eq!(
                signature(&ours),
                signature(&theirs),
                "msgs/ros_std/{package}/msg/{name} differs from {}",
                installed.display()
            );
            compared += 1;
        }
    }
    assert!(compared >= 13, "only {compared} definitions compared");
}
