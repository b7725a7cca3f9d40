//! An operator sets a twin's sharing policy with `twinctl` against a real DR host on
//! loopback: tokens are checked by role, the policy is enforced at once (a hazard the
//! twin kept is disclosed on the open keys after the operator allowed it), recorded in the
//! twin's audit log under the operator's name, survives a `kill -9` of the host, and is
//! replaced by a newer policy from the vehicle.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, work_dir};
use serde_json::Value;
use twinlink_launch::{workspace_binary, Supervised};
use twinlink_link::link::now_us;
use twinlink_link::minimal::{ros_time, to_link};
use twinlink_link::{Link, LinkConfig, Priority, ZenohSettings};
use twinlink_msgs::geometry_msgs::msg::Point;
use twinlink_msgs::twin_msgs::msg::{Incident, SharingPolicy, VehicleState};
use twinlink_share::keyfile::{self, TrustAnchor};
use twinlink_share::{FleetAuthority, KeyPair, Verifier, VerifierConfig};

/// What the eavesdropper heard: arrival time and payload.
type Heard = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

const OPERATOR_TOKEN: &str = "op-7f3a9c2e51d84b06a1";
const VIEWER_TOKEN: &str = "view-2b8e4f61c09d7a35";

fn twinctl(args: &[&str], token: Option<&str>) -> Output {
    let mut c = Command::new(workspace_binary("twinctl").unwrap());
    c.args(args).env_remove("TWINLINK_ADMIN_TOKEN");
    if let Some(t) = token {
        c.env("TWINLINK_ADMIN_TOKEN", t);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Host {
    dir: PathBuf,
    endpoint: String,
    admin: String,
    args: Vec<String>,
    process: Option<Supervised>,
}

impl Host {
    fn start(&mut self) {
        let mut c = Command::new(workspace_binary("twin-dr-host").unwrap());
        c.arg("--keys")
            .arg(self.dir.join("keys"))
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen", &self.endpoint, "--admin", &self.admin])
            .args(&self.args)
            .env("RUST_LOG", "info,zenoh=warn")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("host.log"))
                    .unwrap(),
            );
        self.process = Some(Supervised::spawn("twin-dr-host", c).unwrap());
        wait_for("the host's admin endpoint", || {
            twin_dr_host::admin::get(&self.admin, "/metrics", Duration::from_secs(1)).is_ok()
        });
    }

    fn policy(&self) -> Value {
        let o = twinctl(
            &["policy", "get", "veh-2", "--admin", &self.admin, "--json"],
            Some(VIEWER_TOKEN),
        );
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn fleet_files(dir: &Path) -> (FleetAuthority, Vec<String>) {
    let authority = FleetAuthority::new("fleet-a", KeyPair::generate()).unwrap();
    let key = KeyPair::generate();
    let now = now_us();
    let cert = authority
        .certify(key.public_key(), now - 60_000_000, now + 86_400_000_000)
        .unwrap();
    let issuer = dir.join("host.issuer.key");
    keyfile::save_issuer(&issuer, &key, &cert, false).unwrap();
    let anchor = dir.join("fleet-a.authority.pub");
    keyfile::save_anchor(
        &anchor,
        &TrustAnchor {
            fleet_id: "fleet-a".into(),
            public_key: authority.public_key(),
        },
        false,
    )
    .unwrap();
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        format!("operator alice {OPERATOR_TOKEN}\nviewer bob {VIEWER_TOKEN}\n"),
    )
    .unwrap();
    let args = [
        "--issuer-key",
        issuer.to_str().unwrap(),
        "--trust-anchor",
        anchor.to_str().unwrap(),
        "--admin-tokens",
        tokens.to_str().unwrap(),
    ];
    (authority, args.iter().map(|s| s.to_string()).collect())
}

fn state(x: f64) -> VehicleState {
    let mut s = VehicleState {
        vehicle_id: "veh-2".into(),
        length: 4.5,
        width: 1.9,
        lane_index: 1,
        ..Default::default()
    };
    s.header.stamp = ros_time(now_us());
    s.header.frame_id = "map".into();
    s.pose.position.x = x;
    s.pose.position.y = 3.5;
    s.pose.orientation.w = 1.0;
    s
}

#[test]
fn operators_set_policies_that_are_enforced_audited_and_durable() {
    let dir = work_dir("operator_policy");
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    let (authority, args) = fleet_files(&dir);
    let mut host = Host {
        endpoint: format!("tcp/127.0.0.1:{}", free_port()),
        admin: format!("127.0.0.1:{}", free_port()),
        dir: dir.clone(),
        args,
        process: None,
    };
    let keys = dir.join("keys");
    let o = twinctl(
        &["provision", "veh-2", "--out", keys.to_str().unwrap()],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    host.start();
    let admin = host.admin.clone();

    // Tokens by role: none, unknown, viewer, operator.
    let o = twinctl(&["policy", "get", "veh-2", "--admin", &admin], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("needs a token"), "{}", text(&o));
    let o = twinctl(
        &["policy", "get", "veh-2", "--admin", &admin],
        Some("nobody-knows-this-token"),
    );
    assert!(
        text(&o).contains("does not know this token"),
        "{}",
        text(&o)
    );
    let o = twinctl(
        &["policy", "get", "veh-2", "--admin", &admin],
        Some(VIEWER_TOKEN),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("nothing set (default deny)"),
        "{}",
        text(&o)
    );
    let allow = [
        "policy",
        "set",
        "veh-2",
        "--admin",
        &admin,
        "--rule",
        "hazards:any_twin:10:30:3600",
    ];
    let o = twinctl(&allow, Some(VIEWER_TOKEN));
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("403"), "{}", text(&o));
    // Bad rules are named before anything is sent.
    let o = twinctl(
        &[
            "policy",
            "set",
            "veh-2",
            "--admin",
            &admin,
            "--rule",
            "hazards:everyone:10:30",
        ],
        Some(OPERATOR_TOKEN),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("\"everyone\""), "{}", text(&o));
    // Values the consent refuses come back from the host.
    let o = twinctl(
        &[
            "policy",
            "set",
            "veh-2",
            "--admin",
            &admin,
            "--rule",
            "hazards:any_twin:10:0",
        ],
        Some(OPERATOR_TOKEN),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("400"), "{}", text(&o));
    assert!(text(&o).contains("max_age"), "{}", text(&o));
    let o = twinctl(
        &[
            "policy",
            "set",
            "veh-2",
            "--admin",
            &admin,
            "--rule",
            "hazards:any_twin:10:30",
        ],
        None,
    );
    assert!(text(&o).contains("needs an operator token"), "{}", text(&o));

    // veh-2 connects without a policy and reports a hazard its twin keeps to itself.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let heard: Heard = Arc::default();
    let config =
        twinlink_link::link::zenoh_config("peer", &[], std::slice::from_ref(&host.endpoint))
            .unwrap();
    let session = rt.block_on(async { zenoh::open(config).await }).unwrap();
    let sink = heard.clone();
    let _eavesdropper = rt
        .block_on(async {
            session
                .declare_subscriber("twinlink/v1/share/**")
                .callback(move |s| {
                    sink.lock()
                        .unwrap()
                        .push((now_us(), s.payload().to_bytes().into_owned()))
                })
                .await
        })
        .unwrap();
    let pe_keys = twinlink_link::KeyMaterial::load(
        &keys.join("veh-2.pe.key"),
        &twinlink_link::VehicleId::new("veh-2").unwrap(),
        twinlink_link::Role::Pe,
    )
    .unwrap();
    let mut pe = rt
        .block_on(Link::open(LinkConfig::new(
            pe_keys,
            ZenohSettings::peer_connecting(&host.endpoint),
        )))
        .unwrap();
    rt.block_on(pe.wait_peer_up(Duration::from_secs(10)))
        .unwrap();
    pe.send(to_link(
        "state",
        Priority::OwnState,
        &state(2900.0),
        now_us(),
    ))
    .unwrap();
    // Its policy shares nothing, and its clock is an hour ahead of the host's.
    let skew = 3_600_000_000;
    pe.send(to_link(
        "policy",
        Priority::OwnState,
        &SharingPolicy::default(),
        now_us() + skew,
    ))
    .unwrap();
    wait_for("the vehicle's policy", || {
        host.policy()["origin"]["source"] == "vehicle"
    });
    let mut hazard = Incident {
        incident_id: "stall-op".into(),
        incident_kind: Incident::INCIDENT_STALLED_VEHICLE,
        position: Point {
            x: 3000.0,
            y: 0.0,
            z: 0.0,
        },
        extent: 5.0,
        confidence: 0.9,
        ..Default::default()
    };
    hazard.detected = ros_time(now_us());
    pe.send(to_link("incident", Priority::Hazard, &hazard, now_us()))
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(heard.lock().unwrap().is_empty(), "default deny");

    // The operator allows hazards to any twin: the next announcement discloses it.
    let o = twinctl(&allow, Some(OPERATOR_TOKEN));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("set by operator alice"), "{}", text(&o));
    let doc = host.policy();
    assert_eq!(doc["origin"]["source"], "operator");
    assert_eq!(doc["policy"]["rules"][0]["audience"], "any_twin");
    let expires = doc["policy"]["rules"][0]["expires_at_us"].as_u64().unwrap();
    assert!(expires > now_us() + 3_500_000_000 && expires < now_us() + 3_700_000_000);
    wait_for("veh-2's hazard on the open keys", || {
        !heard.lock().unwrap().is_empty()
    });
    let mut verifier =
        Verifier::new("fleet-a", authority.public_key(), VerifierConfig::default()).unwrap();
    let (at, bytes) = heard.lock().unwrap()[0].clone();
    let v = verifier.verify(&bytes, at).unwrap();
    assert_eq!(v.observation.hazards[0].position.x, 3000.0);

    // kill -9: the operator's policy, set after the vehicle's (whatever the vehicle's
    // clock says), is back after the restart.
    let kill_and_restart = |host: &mut Host| {
        if let Some(mut p) = host.process.take() {
            p.kill();
        }
        host.start();
    };
    kill_and_restart(&mut host);
    let restored = host.policy();
    assert_eq!(restored["origin"], doc["origin"], "{restored}");
    assert_eq!(restored["policy"], doc["policy"]);

    // The vehicle's own newer policy replaces it, also after another restart.
    pe.send(to_link(
        "policy",
        Priority::OwnState,
        &SharingPolicy::default(),
        now_us() + skew,
    ))
    .unwrap();
    wait_for("the vehicle's policy", || {
        host.policy()["origin"]["source"] == "vehicle"
    });
    assert_eq!(host.policy()["policy"]["rules"], Value::Array(vec![]));
    kill_and_restart(&mut host);
    assert_eq!(host.policy()["origin"]["source"], "vehicle");

    rt.block_on(pe.close());
    rt.block_on(async { session.close().await }).unwrap();
    if let Some(mut p) = host.process.take() {
        p.terminate();
        p.wait_timeout(Duration::from_secs(15)).unwrap();
    }

    // The audit log names the operator, and it verifies.
    let log = std::fs::read_to_string(dir.join("data/veh-2/audit.log")).unwrap();
    let records: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records.iter().any(|r| r["kind"] == "policy"
        && r["detail"]["source"] == "operator"
        && r["detail"]["operator"] == "alice"));
    assert!(records
        .iter()
        .any(|r| r["kind"] == "policy" && r["detail"]["source"] == "vehicle"));
    let data = dir.join("data");
    let o = twinctl(
        &[
            "audit",
            "verify",
            "veh-2",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The newest recommendation `pe` receives within `within`.
fn newest_advice(
    rt: &tokio::runtime::Runtime,
    pe: &mut Link,
    within: Duration,
) -> Option<twinlink_msgs::twin_msgs::msg::Recommendation> {
    use twinlink_link::minimal::from_link;
    use twinlink_link::LinkEvent;
    let mut newest = None;
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + within;
        while let Ok(Some(e)) = tokio::time::timeout_at(deadline, pe.recv()).await {
            if let LinkEvent::Message(d) = e {
                if let Ok(r) = from_link(&d.message) {
                    newest = Some(r);
                }
            }
        }
    });
    newest
}

#[test]
fn operators_read_a_twins_state_and_set_what_they_want_of_it() {
    let dir = work_dir("twin_state");
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        format!("operator alice {OPERATOR_TOKEN}\nviewer bob {VIEWER_TOKEN}\n"),
    )
    .unwrap();
    let mut host = Host {
        endpoint: format!("tcp/127.0.0.1:{}", free_port()),
        admin: format!("127.0.0.1:{}", free_port()),
        dir: dir.clone(),
        args: vec!["--admin-tokens".into(), tokens.to_str().unwrap().into()],
        process: None,
    };
    let o = twinctl(
        &["provision", "veh-2", "--out", keys.to_str().unwrap()],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    host.start();
    let admin = host.admin.clone();
    let state_json = || {
        let o = twinctl(
            &["state", "get", "veh-2", "--admin", &admin, "--json"],
            Some(VIEWER_TOKEN),
        );
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };

    let rt = tokio::runtime::Runtime::new().unwrap();
    let pe_keys = twinlink_link::KeyMaterial::load(
        &keys.join("veh-2.pe.key"),
        &twinlink_link::VehicleId::new("veh-2").unwrap(),
        twinlink_link::Role::Pe,
    )
    .unwrap();
    let mut pe = rt
        .block_on(Link::open(LinkConfig::new(
            pe_keys,
            ZenohSettings::peer_connecting(&host.endpoint),
        )))
        .unwrap();
    rt.block_on(pe.wait_peer_up(Duration::from_secs(10)))
        .unwrap();
    let send_state = |pe: &Link| {
        let mut s = state(1234.0);
        s.twist.linear.x = 30.0;
        pe.send(to_link("state", Priority::OwnState, &s, now_us()))
            .unwrap();
    };
    send_state(&pe);
    let advice = newest_advice(&rt, &mut pe, Duration::from_secs(2)).expect("advice");
    assert!(advice.target_speed > 25.0, "{}", advice.target_speed);

    // Without the vehicle's grant the operator sees versions and the link, not where it is.
    let doc = state_json();
    assert_eq!(doc["reported"]["state"], Value::Null, "{doc}");
    assert_eq!(doc["reported"]["withheld"], "no_rule");
    assert!(doc["reported"]["version"].as_u64().unwrap() > 0);
    assert_eq!(doc["connectivity"]["connected"], true);
    assert!(doc["connectivity"]["since_us"].as_u64().unwrap() > 0);
    assert!(doc["connectivity"]["rtt_us"].as_u64().is_some(), "{doc}");
    assert_eq!(doc["desired"]["version"], 0);
    let o = twinctl(
        &["state", "get", "veh-2", "--admin", &admin],
        Some(VIEWER_TOKEN),
    );
    assert!(text(&o).contains("withheld (no_rule)"), "{}", text(&o));
    // A traffic grant to the fleet shows it, at the grant's 100 m.
    let o = twinctl(
        &[
            "policy",
            "set",
            "veh-2",
            "--admin",
            &admin,
            "--rule",
            "traffic:same_fleet:100:10",
        ],
        Some(OPERATOR_TOKEN),
    );
    assert!(o.status.success(), "{}", text(&o));
    let doc = state_json();
    assert_eq!(doc["reported"]["state"]["x"], 1200.0, "{doc}");
    assert_eq!(doc["reported"]["state"]["y"], 0.0, "{doc}");

    // Desired state: operators only, checked, versioned, in force at once.
    let cap = [
        "state",
        "set",
        "veh-2",
        "--admin",
        &admin,
        "--max-speed-kmh",
        "54",
    ];
    let o = twinctl(&cap, Some(VIEWER_TOKEN));
    assert!(text(&o).contains("403"), "{}", text(&o));
    let o = twinctl(
        &[
            "state",
            "set",
            "veh-2",
            "--admin",
            &admin,
            "--max-speed-kmh",
            "900",
        ],
        Some(OPERATOR_TOKEN),
    );
    assert!(text(&o).contains("max_speed_mps"), "{}", text(&o));
    let o = twinctl(&cap, Some(OPERATOR_TOKEN));
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("desired   v1: speed cap 54 km/h, set by alice"),
        "{}",
        text(&o)
    );
    send_state(&pe);
    let advice = newest_advice(&rt, &mut pe, Duration::from_secs(2)).expect("advice");
    assert!(
        (advice.target_speed - 15.0).abs() < 1e-3,
        "{}",
        advice.target_speed
    );
    assert!(advice.reason.contains("operator"), "{}", advice.reason);
    // A change made against a version that moved on is refused.
    let o = twinctl(
        &[
            "state",
            "set",
            "veh-2",
            "--admin",
            &admin,
            "--no-cap",
            "--if-version",
            "0",
        ],
        Some(OPERATOR_TOKEN),
    );
    assert!(text(&o).contains("409"), "{}", text(&o));

    // Durable: after kill -9 the twin still has the operator's cap.
    host.process.take().unwrap().kill();
    host.start();
    let doc = state_json();
    assert_eq!(doc["desired"]["version"], 1, "{doc}");
    assert_eq!(doc["desired"]["by"], "alice");
    assert!((doc["desired"]["max_speed_mps"].as_f64().unwrap() - 15.0).abs() < 1e-9);
    // The change is in the twin's history, read through the host.
    let o = twinctl(
        &[
            "history", "veh-2", "--admin", &admin, "--kind", "policy", "--limit", "5",
        ],
        Some(VIEWER_TOKEN),
    );
    assert!(o.status.success(), "{}", text(&o));
    let table = text(&o);
    assert!(
        table
            .lines()
            .any(|l| l.contains(" policy ") && l.contains("desired_set") && l.contains("alice")),
        "{table}"
    );
    let o = twinctl(
        &["history", "veh-2", "--admin", &admin, "--kind", "nonsense"],
        Some(VIEWER_TOKEN),
    );
    assert!(text(&o).contains("kind must be one of"), "{}", text(&o));
    rt.block_on(pe.close());
}
