//! The three deployments of `deploy/`, each started from its systemd unit as shipped: the
//! unit's `ExecStart` with its `Environment=` defaults, some of them overridden the way an
//! operator's drop-in would (this run's ports and directories). Binaries are the
//! workspace's.
//!
//! - **cloud**: a router and a DR host behind it (client); a vehicle through the router
//!   gets advice.
//! - **edge**: a DR host a vehicle reaches directly as a Zenoh peer (no router on the
//!   link's path), also joined to a cloud router.
//! - **trust zone**: the vehicle's own DR with a private session for the link and an
//!   outside one. Outsiders see nothing of the link; garbage and floods on the outside are
//!   refused and counted by reason while the twin keeps advising; a genuine disclosure of
//!   the fleet passes the gate, is verified and reaches the vehicle over the private link.

// Messages are built field by field from their defaults, as ROS users write them.
#![allow(clippy::field_reassign_with_default)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, provision, wait_for, work_dir};
use twinlink_launch::{workspace_binary, workspace_root, Supervised};
use twinlink_link::link::{now_us, zenoh_config};
use twinlink_link::minimal::{from_link, ros_time, to_link};
use twinlink_link::ZenohSettings;
use twinlink_link::{keys, KeyMaterial, Link, LinkConfig, LinkEvent, Priority, Role, VehicleId};
use twinlink_msgs::geometry_msgs::msg::Point;
use twinlink_msgs::twin_msgs::msg::{
    Incident, Recommendation, RegionalTraffic, SharedObservation, SharingPolicy, VehicleState,
};
use twinlink_share::keyfile::{self, TrustAnchor};
use twinlink_share::{seal, FleetAuthority, KeyPair, PseudonymIssuer};

const TOKEN: &str = "deploy-operator-token-0123456789";
const DAY_US: u64 = 86_400_000_000;

/// A systemd unit of `deploy/`: its `Environment=` defaults and its `ExecStart` words.
struct Unit {
    env: HashMap<String, String>,
    exec: Vec<String>,
}

impl Unit {
    fn load(path: &str) -> Unit {
        let text = std::fs::read_to_string(workspace_root().join(path)).unwrap();
        let joined = text.replace("\\\n", " ");
        let mut env = HashMap::new();
        let mut exec = Vec::new();
        for line in joined.lines().map(str::trim) {
            if let Some(kv) = line.strip_prefix("Environment=") {
                let (k, v) = kv.split_once('=').expect("Environment=KEY=VALUE");
                env.insert(k.to_string(), v.to_string());
            } else if let Some(cmd) = line.strip_prefix("ExecStart=") {
                exec = cmd.split_whitespace().map(str::to_string).collect();
            }
        }
        assert!(!exec.is_empty(), "{path}: no ExecStart");
        Unit { env, exec }
    }

    /// The unit's command with `${VAR}` taken from `overrides`, else from its defaults.
    fn command(&self, overrides: &[(&str, String)]) -> Command {
        let mut env = self.env.clone();
        for (k, v) in overrides {
            assert!(env.contains_key(*k), "the unit has no {k}");
            env.insert(k.to_string(), v.clone());
        }
        let words: Vec<String> = self
            .exec
            .iter()
            .map(|w| {
                let mut w = w.clone();
                for (k, v) in &env {
                    w = w.replace(&format!("${{{k}}}"), v);
                }
                assert!(!w.contains("${"), "unset variable in {w}");
                w
            })
            .collect();
        let binary = Path::new(&words[0]).file_name().unwrap().to_str().unwrap();
        let mut c = Command::new(workspace_binary(binary).unwrap());
        c.args(&words[1..]);
        c
    }

    fn arg(&self, flag: &str) -> Option<&str> {
        let at = self.exec.iter().position(|w| w == flag)?;
        self.exec.get(at + 1).map(String::as_str)
    }
}

/// The directories and files a DR host unit names, under `dir`.
fn host_files(dir: &Path, vehicles: &[&str]) -> Vec<(&'static str, String)> {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    for v in vehicles {
        provision(&keys, v);
    }
    std::fs::write(dir.join("tokens"), format!("operator ops {TOKEN}\n")).unwrap();
    vec![
        ("KEYS_DIR", keys.display().to_string()),
        ("DATA_DIR", dir.join("data").display().to_string()),
        ("ADMIN", format!("127.0.0.1:{}", free_port())),
        ("ADMIN_TOKENS", dir.join("tokens").display().to_string()),
    ]
}

fn start(dir: &Path, name: &str, mut c: Command) -> Supervised {
    c.env("RUST_LOG", "info,zenoh=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap());
    Supervised::spawn(name, c).unwrap()
}

fn wait_port(endpoint: &str) {
    let addr = endpoint.trim_start_matches("tcp/").to_string();
    wait_for(
        &format!("{addr} to listen"),
        Duration::from_secs(20),
        || std::net::TcpStream::connect(&addr).is_ok(),
    );
}

fn state(vehicle: &str, x: f64) -> VehicleState {
    let mut s = VehicleState::default();
    s.header.stamp = ros_time(now_us());
    s.header.frame_id = "map".into();
    s.vehicle_id = vehicle.into();
    s.pose.position.x = x;
    s.pose.orientation.w = 1.0;
    s.twist.linear.x = 25.0;
    s.length = 4.5;
    s.width = 1.9;
    s
}

/// The vehicle's end of its link, opened with `zenoh`, up within 20 s.
fn vehicle(rt: &tokio::runtime::Runtime, dir: &Path, name: &str, zenoh: ZenohSettings) -> Link {
    let id = VehicleId::new(name).unwrap();
    let keys = KeyMaterial::load(
        &dir.join("keys").join(format!("{name}.pe.key")),
        &id,
        Role::Pe,
    )
    .unwrap();
    let mut link = rt
        .block_on(Link::open(LinkConfig::new(keys, zenoh)))
        .unwrap();
    rt.block_on(link.wait_peer_up(Duration::from_secs(20)))
        .unwrap_or_else(|e| panic!("{name}'s twin did not answer: {e}"));
    link
}

/// Sends the vehicle's state every 200 ms until `pick` takes a message it receives
/// (within 10 s, else the test fails saying `what`); returns what it took.
fn sending_until<T>(
    rt: &tokio::runtime::Runtime,
    link: &mut Link,
    name: &str,
    x: f64,
    what: &str,
    mut pick: impl FnMut(&twinlink_link::Message) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "{what}");
        link.send(to_link(
            "state",
            Priority::OwnState,
            &state(name, x),
            now_us(),
        ))
        .unwrap();
        let got = rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(200), async {
                while let Some(e) = link.recv().await {
                    if let LinkEvent::Message(d) = e {
                        if let Some(t) = pick(&d.message) {
                            return Some(t);
                        }
                    }
                }
                None
            })
            .await
        });
        if let Ok(Some(t)) = got {
            return t;
        }
    }
}

/// Sends states until a recommendation arrives (within 10 s); returns it.
fn advised(rt: &tokio::runtime::Runtime, link: &mut Link, name: &str, x: f64) -> Recommendation {
    sending_until(rt, link, name, x, &format!("{name} got no advice"), |m| {
        from_link::<Recommendation>(m).ok()
    })
}

/// The sum of a metric's series whose labels contain `labels` (0 when it has none).
fn metric(admin: &str, name: &str, labels: &str) -> f64 {
    common::metric(admin, TOKEN, name, labels)
}

fn stop(mut p: Supervised) {
    p.terminate();
    let _ = p.wait_timeout(Duration::from_secs(10));
}

#[test]
fn cloud_a_dr_host_behind_a_router_advises_a_vehicle_that_reaches_it_through_the_router() {
    let dir = work_dir("deploy_cloud");
    let router_unit = Unit::load("deploy/cloud/twinlink-router.service");
    let host_unit = Unit::load("deploy/cloud/twin-dr-host.service");
    assert_eq!(host_unit.arg("--mode"), Some("client"));
    let router = format!("tcp/127.0.0.1:{}", free_port());
    let r = start(
        &dir,
        "router",
        router_unit.command(&[("LISTEN", router.clone())]),
    );
    wait_port(&router);
    let mut files = host_files(&dir, &["veh-c1"]);
    files.push(("ROUTER", router.clone()));
    let h = start(&dir, "host", host_unit.command(&files));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut link = vehicle(&rt, &dir, "veh-c1", ZenohSettings::client_of(&router));
    let r1 = advised(&rt, &mut link, "veh-c1", 100.0);
    assert_eq!(r1.vehicle_id, "veh-c1");
    rt.block_on(link.close());
    stop(h);
    stop(r);
}

#[test]
fn edge_a_vehicle_reaches_its_dr_host_directly_as_a_peer() {
    let dir = work_dir("deploy_edge");
    let unit = Unit::load("deploy/edge/twin-dr-host.service");
    assert_eq!(unit.arg("--mode"), Some("peer"));
    let cloud = format!("tcp/127.0.0.1:{}", free_port());
    let cloud_router = common::start_router(&dir, "cloud-router", &cloud, None);
    let listen = format!("tcp/127.0.0.1:{}", free_port());
    let mut files = host_files(&dir, &["veh-e1"]);
    files.push(("LINK_LISTEN", listen.clone()));
    files.push(("CLOUD_ROUTER", cloud.clone()));
    let h = start(&dir, "host", unit.command(&files));
    wait_port(&listen);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut link = vehicle(&rt, &dir, "veh-e1", ZenohSettings::peer_connecting(&listen));
    let r1 = advised(&rt, &mut link, "veh-e1", 100.0);
    assert_eq!(r1.vehicle_id, "veh-e1");
    let rtt = rt.block_on(link.stats()).unwrap().rtt.smoothed_us;
    println!("edge: link RTT {rtt:?} us");
    rt.block_on(link.close());
    stop(h);
    drop(cloud_router);
}

/// The fleet's authority and this DR's issuer, as `twinctl fleet init` and `certify-host`
/// write them.
fn fleet_files(dir: &Path) -> (FleetAuthority, PathBuf, PathBuf) {
    let authority = FleetAuthority::new("fleet-tz", KeyPair::generate()).unwrap();
    let key = KeyPair::generate();
    let now = now_us();
    let cert = authority
        .certify(key.public_key(), now - 60_000_000, now + DAY_US)
        .unwrap();
    let issuer = dir.join("host.issuer.key");
    keyfile::save_issuer(&issuer, &key, &cert, false).unwrap();
    let anchor = dir.join("fleet.authority.pub");
    keyfile::save_anchor(
        &anchor,
        &TrustAnchor {
            fleet_id: "fleet-tz".into(),
            public_key: authority.public_key(),
        },
        false,
    )
    .unwrap();
    (authority, issuer, anchor)
}

/// A hazard another twin of the fleet disclosed, sealed under a pseudonym of its own.
fn disclosure(authority: &FleetAuthority, id: &str, x: f64) -> (String, Vec<u8>) {
    let key = KeyPair::generate();
    let now = now_us();
    let cert = authority
        .certify(key.public_key(), now - 1_000_000, now + DAY_US)
        .unwrap();
    let issuer = PseudonymIssuer::new(key, cert).unwrap();
    let mut credential = issuer.issue(now - 1_000_000, now + 600_000_000).unwrap();
    let mut obs = SharedObservation::default();
    obs.category = SharedObservation::CATEGORY_HAZARDS;
    obs.header.frame_id = "map".into();
    obs.header.stamp = ros_time(now);
    let tile = format!("{}_0", (x / 1000.0).floor() as i64);
    obs.region_tile = tile.clone();
    let mut i = Incident::default();
    i.incident_id = id.into();
    i.incident_kind = Incident::INCIDENT_STALLED_VEHICLE;
    i.position = Point { x, y: 0.0, z: 0.0 };
    i.lane_index = 0;
    i.extent = 5.0;
    i.confidence = 0.9;
    i.detected = ros_time(now);
    obs.hazards.push(i);
    let key = keys::share("hazards", &keys::RegionTile::new(&tile).unwrap()).unwrap();
    (
        key.to_string(),
        seal(obs, &mut credential).unwrap().to_bytes().unwrap(),
    )
}

#[test]
fn trust_zone_outside_messages_pass_the_gate_before_they_reach_the_vehicle() {
    let dir = work_dir("deploy_trust_zone");
    let unit = Unit::load("deploy/trust-zone/twin-dr-host.service");
    assert_eq!(unit.arg("--outside-mode"), Some("client"));
    let outside = format!("tcp/127.0.0.1:{}", free_port());
    let outside_router = common::start_router(&dir, "outside-router", &outside, None);
    let private = format!("tcp/127.0.0.1:{}", free_port());
    let (authority, issuer, anchor) = fleet_files(&dir);
    let mut files = host_files(&dir, &["veh-t1"]);
    let admin = files[2].1.clone();
    files.extend([
        ("PRIVATE_LISTEN", private.clone()),
        ("OUTSIDE_ROUTER", outside.clone()),
        ("ISSUER_KEY", issuer.display().to_string()),
        ("TRUST_ANCHOR", anchor.display().to_string()),
    ]);
    let h = start(&dir, "host", unit.command(&files));
    wait_port(&private);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // An outsider on the outside router hears everything it can.
    let zenoh = zenoh_config("client", &[], std::slice::from_ref(&outside)).unwrap();
    let outsider = rt.block_on(async { zenoh::open(zenoh).await }).unwrap();
    let heard: Arc<Mutex<Vec<String>>> = Arc::default();
    let h2 = heard.clone();
    let _all = rt
        .block_on(async {
            outsider
                .declare_subscriber("**")
                .callback(move |s| h2.lock().unwrap().push(s.key_expr().to_string()))
                .await
        })
        .unwrap();

    // The vehicle on the private session; it lets its twin take other twins' hazards.
    let mut link = vehicle(
        &rt,
        &dir,
        "veh-t1",
        ZenohSettings::peer_connecting(&private),
    );
    let mut policy = SharingPolicy::default();
    policy.allow_autonomous_fetch = true;
    link.send(to_link("policy", Priority::OwnState, &policy, now_us()))
        .unwrap();
    advised(&rt, &mut link, "veh-t1", 100.0);

    // Nothing of the link is seen outside: no frames, no presence.
    let tokens = rt.block_on(async {
        let replies = outsider.liveliness().get("twinlink/**").await.unwrap();
        let mut keys = Vec::new();
        while let Ok(Ok(r)) =
            tokio::time::timeout(Duration::from_millis(500), replies.recv_async()).await
        {
            if let Ok(s) = r.result() {
                keys.push(s.key_expr().to_string());
            }
        }
        keys
    });
    assert!(
        tokens.iter().all(|k| !k.starts_with("twinlink/v1/twin/")),
        "link presence outside: {tokens:?}"
    );

    // Garbage and a flood on a tile of the route: refused, counted, the twin unharmed.
    let (share_key, genuine) = disclosure(&authority, "stalled-1", 1500.0);
    rt.block_on(async {
        for i in 0..200u32 {
            outsider
                .put(&share_key, format!("not a disclosure {i}").into_bytes())
                .congestion_control(zenoh::qos::CongestionControl::Block)
                .await
                .unwrap();
        }
    });
    // Each of the 200 counted: the excess over the key's burst as rate-limited, the rest
    // as malformed.
    wait_for(
        "every outside input counted",
        Duration::from_secs(10),
        || metric(&admin, "twinlink_dr_relay_received_total", "") >= 200.0,
    );
    let limited = metric(&admin, "twinlink_dr_relay_received_total", "rate_limited");
    let malformed = metric(&admin, "twinlink_dr_relay_received_total", "malformed");
    assert_eq!(limited + malformed, 200.0);
    assert!(
        limited >= 100.0 && malformed >= 40.0,
        "{limited} rate-limited, {malformed} malformed"
    );
    advised(&rt, &mut link, "veh-t1", 110.0);

    // A put on a wildcard expression matching the host's tiles, and a regional tile
    // published under another tile's key: refused and counted.
    let mut wrong_tile = RegionalTraffic::default();
    wrong_tile.tile_id = "0_0".into();
    rt.block_on(async {
        outsider
            .put("twinlink/v1/share/*/1_0", b"wildcard".to_vec())
            .await
            .unwrap();
        outsider
            .put(
                "twinlink/v1/region/5_0/traffic",
                twinlink_msgs::codec::encode(&wrong_tile).unwrap(),
            )
            .await
            .unwrap();
    });
    wait_for(
        "the wildcard and the misnamed tile refused",
        Duration::from_secs(10),
        || {
            metric(&admin, "twinlink_dr_relay_received_total", "bad_key") == 1.0
                && metric(&admin, "twinlink_dr_regional_tiles_total", "name_mismatch") == 1.0
        },
    );

    // A genuine disclosure of the fleet passes (once the key's rate allows it), is
    // verified and reaches the vehicle over the private link.
    std::thread::sleep(Duration::from_secs(3));
    rt.block_on(async { outsider.put(&share_key, genuine.clone()).await.unwrap() });
    let relayed = sending_until(
        &rt,
        &mut link,
        "veh-t1",
        120.0,
        "the genuine disclosure did not reach the vehicle",
        |m| {
            (m.stream == "relayed")
                .then(|| from_link::<SharedObservation>(m).ok())
                .flatten()
        },
    );
    assert_eq!(relayed.hazards.len(), 1);
    assert!((relayed.hazards[0].position.x - 1500.0).abs() < 20.0);
    assert_eq!(
        metric(&admin, "twinlink_dr_relay_received_total", "verified"),
        1.0
    );
    let outside_keys = heard.lock().unwrap().clone();
    assert!(
        outside_keys
            .iter()
            .all(|k| !k.starts_with("twinlink/v1/twin/")),
        "link traffic outside: {:?}",
        outside_keys
            .iter()
            .find(|k| k.starts_with("twinlink/v1/twin/"))
    );
    rt.block_on(link.close());
    stop(h);
    drop(outside_router);
}
