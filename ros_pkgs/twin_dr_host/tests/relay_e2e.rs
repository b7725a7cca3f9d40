//! Inter-twin relay through a real DR host on loopback: four vehicles' links, a fleet
//! authority and the host's certified issuer, an eavesdropping Zenoh session on the share
//! key space, and forged disclosures published beside the real ones.
//!
//! - veh-1 lets its twin fetch from other twins and drives behind the others;
//! - veh-2 lets hazards go to any twin and reports a stalled vehicle ahead;
//! - veh-3 set no policy (default deny) and reports one too;
//! - veh-4's grant expires a few seconds after it reports its hazard.

#![allow(clippy::field_reassign_with_default)]

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{pe_config, recv_until, state, wait_for, HostRun};
use serde_json::Value;
use twinlink_link::link::now_us;
use twinlink_link::minimal::{from_link, ros_time, to_link};
use twinlink_link::{keys, Link, LinkEvent, Priority};
use twinlink_msgs::geometry_msgs::msg::Point;
use twinlink_msgs::twin_msgs::msg::{Incident, SharedObservation, SharingPolicy, SharingRule};
use twinlink_share::keyfile::{self, TrustAnchor};
use twinlink_share::{
    seal, Disclosure, FleetAuthority, KeyPair, PseudonymIssuer, Verifier, VerifierConfig,
};

const DAY_US: u64 = 86_400_000_000;
/// The map frame's WGS84 origin the host's DENMs are placed with.
const CITS_ORIGIN: &str = "48.137,11.575,520";

/// A sample a listener heard: its key and payload.
type Sample = (String, Vec<u8>);
/// What the eavesdropper heard, with the time it heard it.
type Heard = Arc<Mutex<Vec<(u64, String, Vec<u8>)>>>;

/// Writes the fleet's trust anchor and a host issuer certified by it; returns the authority
/// (to forge with) and the host's arguments.
fn fleet_files(run: &HostRun) -> (FleetAuthority, Vec<String>) {
    let authority = FleetAuthority::new("fleet-a", KeyPair::generate()).unwrap();
    let key = KeyPair::generate();
    let now = now_us();
    let cert = authority
        .certify(key.public_key(), now - 60_000_000, now + DAY_US)
        .unwrap();
    let issuer = run.dir.join("host.issuer.key");
    keyfile::save_issuer(&issuer, &key, &cert, false).unwrap();
    let anchor = run.dir.join("fleet-a.authority.pub");
    keyfile::save_anchor(
        &anchor,
        &TrustAnchor {
            fleet_id: "fleet-a".into(),
            public_key: authority.public_key(),
        },
        false,
    )
    .unwrap();
    let args = vec![
        "--issuer-key".to_string(),
        issuer.display().to_string(),
        "--trust-anchor".to_string(),
        anchor.display().to_string(),
        "--cits-origin".to_string(),
        CITS_ORIGIN.to_string(),
    ];
    (authority, args)
}

fn policy(audience: Option<u8>, fetch: bool, expires_us: u64) -> SharingPolicy {
    let mut p = SharingPolicy::default();
    if let Some(audience) = audience {
        let mut rule = SharingRule::default();
        rule.category = SharedObservation::CATEGORY_HAZARDS;
        rule.audience = audience;
        rule.spatial_precision = 10.0;
        rule.max_age = 30.0;
        if expires_us > 0 {
            rule.expires = ros_time(expires_us);
        }
        p.rules.push(rule);
    }
    p.allow_autonomous_fetch = fetch;
    p
}

/// `p` with traffic data allowed to the fleet (the regional service's census).
fn with_census(mut p: SharingPolicy) -> SharingPolicy {
    let mut rule = SharingRule::default();
    rule.category = SharedObservation::CATEGORY_TRAFFIC;
    rule.audience = SharingRule::AUDIENCE_SAME_FLEET;
    rule.spatial_precision = 50.0;
    rule.max_age = 10.0;
    p.rules.push(rule);
    p
}

fn stalled(id: &str, x: f64) -> Incident {
    let mut i = Incident::default();
    i.incident_id = id.into();
    i.incident_kind = Incident::INCIDENT_STALLED_VEHICLE;
    i.position = Point { x, y: 0.0, z: 0.0 };
    i.lane_index = 0;
    i.extent = 5.0;
    i.confidence = 0.9;
    i.detected = ros_time(now_us());
    i
}

/// A vehicle connected to its twin, with its policy and state sent.
fn connect(
    rt: &tokio::runtime::Runtime,
    run: &HostRun,
    vehicle: &str,
    x: f64,
    policy: Option<SharingPolicy>,
) -> Link {
    let keys = run.provision(vehicle);
    let mut pe = rt.block_on(Link::open(pe_config(run, keys))).unwrap();
    rt.block_on(pe.wait_peer_up(Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("{vehicle}'s twin answered: {e}"));
    if let Some(p) = policy {
        pe.send(to_link("policy", Priority::OwnState, &p, now_us()))
            .unwrap();
    }
    pe.send(to_link(
        "state",
        Priority::OwnState,
        &state(vehicle, now_us(), x, 0.0),
        now_us(),
    ))
    .unwrap();
    pe
}

/// Every relayed observation a vehicle receives within `within`, with its arrival time.
fn relayed(
    rt: &tokio::runtime::Runtime,
    pe: &mut Link,
    within: Duration,
    until_one: bool,
) -> Vec<(u64, SharedObservation)> {
    let mut got = Vec::new();
    recv_until(rt, pe, within, |e| {
        if let LinkEvent::Message(d) = e {
            if d.message.stream == "relayed" {
                got.push((
                    now_us(),
                    from_link::<SharedObservation>(&d.message).unwrap(),
                ));
                return until_one;
            }
        }
        false
    });
    got
}

/// The audit records of a vehicle's twin (read after the host stopped).
fn audit_records(run: &HostRun, vehicle: &str) -> Vec<Value> {
    let text =
        std::fs::read_to_string(run.dir.join("data").join(vehicle).join("audit.log")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn disclosures<'a>(records: &'a [Value], direction: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["kind"] == "disclosure" && r["detail"]["direction"] == direction)
        .map(|r| &r["detail"])
        .collect()
}

fn hazard_xs(observation: &SharedObservation) -> Vec<f64> {
    observation.hazards.iter().map(|h| h.position.x).collect()
}

#[test]
fn permitted_hazards_reach_vehicles_along_the_route_and_nothing_else_leaves() {
    let mut run = HostRun::new("relay");
    let (authority, share_args) = fleet_files(&run);
    let args: Vec<&str> = share_args.iter().map(String::as_str).collect();
    run.start(&args);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // The eavesdropper: a plain Zenoh session on the whole share key space.
    let heard: Heard = Arc::default();
    let config =
        twinlink_link::link::zenoh_config("peer", &[], std::slice::from_ref(&run.endpoint))
            .unwrap();
    let session = rt.block_on(async { zenoh::open(config).await }).unwrap();
    let sink = heard.clone();
    let census: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let census_sink = census.clone();
    let _census_listener = rt
        .block_on(async {
            session
                .declare_subscriber("twinlink/v1/census/*")
                .callback(move |s| {
                    census_sink.lock().unwrap().push((
                        s.key_expr().to_string(),
                        s.payload().to_bytes().into_owned(),
                    ))
                })
                .await
        })
        .unwrap();
    let denms: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let denm_sink = denms.clone();
    let _denm_listener = rt
        .block_on(async {
            session
                .declare_subscriber("twinlink/v1/cits/denm-out/*")
                .callback(move |s| {
                    denm_sink.lock().unwrap().push((
                        s.key_expr().to_string(),
                        s.payload().to_bytes().into_owned(),
                    ))
                })
                .await
        })
        .unwrap();
    let _eavesdropper = rt
        .block_on(async {
            session
                .declare_subscriber("twinlink/v1/share/**")
                .callback(move |s| {
                    sink.lock().unwrap().push((
                        now_us(),
                        s.key_expr().to_string(),
                        s.payload().to_bytes().into_owned(),
                    ))
                })
                .await
        })
        .unwrap();

    // veh-1 lets its twin fetch on its own; its twin takes the policy.
    let mut pe1 = connect(&rt, &run, "veh-1", 1000.0, Some(policy(None, true, 0)));
    wait_for("veh-1's policy", Duration::from_secs(10), || {
        run.json("/twins/veh-1")["sharing"]["fetch_allowed"] == true
    });

    // veh-2 permits hazards to any twin and reports a stalled vehicle at x = 3000.
    let pe2 = connect(
        &rt,
        &run,
        "veh-2",
        2900.0,
        Some(with_census(policy(
            Some(SharingRule::AUDIENCE_ANY_TWIN),
            false,
            0,
        ))),
    );
    wait_for("veh-2's policy", Duration::from_secs(10), || {
        run.json("/twins/veh-2")["sharing"]["policy_version"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    pe2.send(to_link(
        "incident",
        Priority::Hazard,
        &stalled("stall-a", 3000.0),
        now_us(),
    ))
    .unwrap();
    let first = relayed(&rt, &mut pe1, Duration::from_secs(5), true);
    assert_eq!(first.len(), 1, "veh-1 got veh-2's hazard");
    let (first_at, first_obs) = &first[0];
    assert_eq!(hazard_xs(first_obs), vec![3000.0]);
    assert_eq!(first_obs.position_precision, 10.0);
    assert_ne!(
        first_obs.hazards[0].incident_id, "stall-a",
        "ids are not disclosed"
    );

    // veh-3 has no policy: its hazard at x = 5000 must never leave its twin.
    let pe3 = connect(&rt, &run, "veh-3", 4900.0, None);
    pe3.send(to_link(
        "incident",
        Priority::Hazard,
        &stalled("stall-b", 5000.0),
        now_us(),
    ))
    .unwrap();
    // veh-4's grant ends 4 s from now: disclosed at first, then no more.
    let pe4 = connect(&rt, &run, "veh-4", 6900.0, None);
    let expiry = now_us() + 4_000_000;
    pe4.send(to_link(
        "policy",
        Priority::OwnState,
        &policy(Some(SharingRule::AUDIENCE_ANY_TWIN), false, expiry),
        now_us(),
    ))
    .unwrap();
    wait_for("veh-4's policy", Duration::from_secs(10), || {
        run.json("/twins/veh-4")["sharing"]["policy_version"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    pe4.send(to_link(
        "incident",
        Priority::Hazard,
        &stalled("stall-c", 7000.0),
        now_us(),
    ))
    .unwrap();

    // Forgeries beside the real traffic, from the eavesdropper's session.
    wait_for("a disclosure to copy", Duration::from_secs(5), || {
        !heard.lock().unwrap().is_empty()
    });
    let (_, key, genuine) = heard.lock().unwrap()[0].clone();
    let put = |key: &str, bytes: Vec<u8>| {
        rt.block_on(async { session.put(key, bytes).await })
            .unwrap()
    };
    // Replayed as is.
    put(&key, genuine.clone());
    // Moved 500 m after signing.
    let mut moved = Disclosure::from_bytes(&genuine).unwrap();
    moved.observation.hazards[0].position.x += 500.0;
    put(&key, moved.to_bytes().unwrap());
    // The signature removed.
    let mut unsigned = Disclosure::from_bytes(&genuine).unwrap();
    unsigned.observation.signature.clear();
    put(&key, unsigned.to_bytes().unwrap());
    // Well signed by a fleet nobody trusts.
    let rogue = FleetAuthority::new("rogue", KeyPair::generate()).unwrap();
    let forge = |authority: &FleetAuthority, x: f64| {
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
        obs.region_tile = format!("{}_0", (x / 1000.0).floor() as i64);
        obs.hazards.push(stalled("forged", x));
        seal(obs, &mut credential).unwrap().to_bytes().unwrap()
    };
    let tile = |name: &str| keys::RegionTile::new(name).unwrap();
    put(
        keys::share("hazards", &tile("9_0")).unwrap().as_str(),
        forge(&rogue, 9500.0),
    );
    // Genuine fleet, published under another tile than it names.
    put(
        keys::share("hazards", &tile("9_0")).unwrap().as_str(),
        forge(&authority, 11_500.0),
    );

    // Long enough for veh-2's and veh-4's announcements, and veh-4's expiry.
    let later = relayed(&rt, &mut pe1, Duration::from_secs(8), false);
    for (_, obs) in &later {
        for x in hazard_xs(obs) {
            assert!(
                x == 3000.0 || x == 7000.0,
                "veh-1 got only real hazards: {x}"
            );
        }
    }
    assert!(
        later.iter().any(|(_, o)| hazard_xs(o) == vec![7000.0]),
        "veh-4's hazard arrived while granted"
    );
    let metric = |result: &str| {
        run.metric(&format!(
            "twinlink_dr_relay_received_total{{result=\"{result}\"}}"
        ))
    };
    for result in [
        "replayed",
        "bad_signature",
        "unsigned",
        "unknown_authority",
        "name_mismatch",
    ] {
        assert_eq!(metric(result), 1.0, "{result} counted once");
    }
    assert!(metric("verified") >= 3.0);
    assert!(run.metric("twinlink_dr_relay_delivered_total") >= 2.0);
    assert!(run.metric("twinlink_dr_disclosures_total{result=\"no_rule\"}") >= 1.0);
    assert!(run.metric("twinlink_dr_disclosures_total{result=\"grant_expired\"}") >= 1.0);

    for pe in [pe1, pe2, pe3, pe4] {
        rt.block_on(pe.close());
    }
    rt.block_on(async { session.close().await }).unwrap();
    run.stop();

    // Census: only veh-2 consented; its samples name its tile, never the vehicle, and its
    // position snapped to its rule's 50 m. It sent one state: a sample a second while that
    // state was fresh (2 s), none while its twin only predicted it.
    let census = census.lock().unwrap().clone();
    assert!(
        (1..=3).contains(&census.len()),
        "veh-2 contributed while its state was fresh: {}",
        census.len()
    );
    for (key, bytes) in &census {
        assert_eq!(
            key, "twinlink/v1/census/2_0",
            "only veh-2 (x = 2900) contributes"
        );
        let r: twinlink_msgs::twin_msgs::msg::CensusReport =
            twinlink_msgs::codec::decode(bytes).unwrap();
        assert_eq!(r.tile_id, "2_0");
        assert!(!r.contributor.contains("veh"), "{}", r.contributor);
        assert_eq!(r.s % 50.0, 0.0, "{}", r.s);
        assert_eq!(
            r.incidents.len(),
            0,
            "hazards are for any twin, not the census rule"
        );
    }

    // Permitted hazards also left as standard DENMs for C-ITS gateways; veh-3's never did.
    let origin = twinlink_cits::GeoOrigin::parse(CITS_ORIGIN).unwrap();
    let denms = denms.lock().unwrap().clone();
    assert!(!denms.is_empty(), "no DENM");
    for (key, bytes) in &denms {
        let denm = twinlink_cits::denm::decode_denm(bytes).unwrap();
        let incident = twinlink_cits::denm::denm_to_incident(&denm, &origin).unwrap();
        let x = incident.position.x;
        assert_eq!(incident.incident_kind, Incident::INCIDENT_STALLED_VEHICLE);
        assert!(
            (x - 3000.0).abs() < 1.0 || (x - 7000.0).abs() < 1.0,
            "{key}: a DENM at x = {x}"
        );
        assert!(
            key.ends_with(if x < 5000.0 { "/3_0" } else { "/7_0" }),
            "{key}"
        );
    }

    // What the eavesdropper heard, verified as a twin would.
    let mut verifier =
        Verifier::new("fleet-a", authority.public_key(), VerifierConfig::default()).unwrap();
    let heard = heard.lock().unwrap().clone();
    let mut heard_ids = HashSet::new();
    for (at, _, bytes) in &heard {
        let Ok(v) = verifier.verify(bytes, *at) else {
            continue; // the forgeries and the replay
        };
        let xs = hazard_xs(&v.observation);
        assert!(!xs.contains(&5000.0), "veh-3's denied hazard never left");
        if xs.contains(&7000.0) {
            assert!(
                *at < expiry + 500_000,
                "veh-4's hazard after its grant expired"
            );
        }
        heard_ids.insert((v.pseudonym.clone(), v.observation.disclosure_id));
    }

    // Both audits agree: every disclosure veh-1's twin took is one that a twin recorded
    // disclosing, and the first arrived within 200 ms of veh-2's twin learning it.
    let out2 = audit_records(&run, "veh-2");
    let out4 = audit_records(&run, "veh-4");
    let disclosed: Vec<&Value> = disclosures(&out2, "out")
        .into_iter()
        .chain(disclosures(&out4, "out"))
        .filter(|d| {
            d["decision"].is_null()
                && d["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("hazards/"))
        })
        .collect();
    // Published, not answered to veh-1's twin's queries (replies go to the querier only).
    let published: Vec<&&Value> = disclosed.iter().filter(|d| d["via"].is_null()).collect();
    // veh-2's twin recorded its census contributions too (once per window).
    assert!(disclosures(&out2, "out")
        .iter()
        .any(|d| d["name"] == "census/2_0" && d["audience"] == "regional_service"));
    let key_of = |d: &Value| {
        (
            d["pseudonym"].as_str().unwrap().to_string(),
            d["disclosure_id"].as_u64().unwrap(),
        )
    };
    let disclosed_ids: HashSet<_> = disclosed.iter().map(|d| key_of(d)).collect();
    let published_ids: HashSet<_> = published.iter().map(|d| key_of(d)).collect();
    assert!(
        published_ids.is_subset(&heard_ids),
        "what the twins recorded disclosing is what went on the wire"
    );
    let taken = audit_records(&run, "veh-1");
    let taken = disclosures(&taken, "in");
    assert!(
        taken.len() >= 2,
        "veh-2's and veh-4's hazards (repeats are not passed on): {taken:?}"
    );
    for d in &taken {
        assert!(
            disclosed_ids.contains(&key_of(d)),
            "{d} was disclosed by a twin"
        );
    }
    let first_out = disclosed
        .iter()
        .find(|d| key_of(d) == (first_obs.origin_pseudonym.clone(), first_obs.disclosure_id))
        .expect("the first relayed hazard is in veh-2's audit");
    let learned = first_out["at_us"].as_u64().unwrap();
    let latency_ms = (*first_at as f64 - learned as f64) / 1000.0;
    eprintln!("relay latency: {latency_ms:.1} ms");
    assert!(
        (0.0..200.0).contains(&latency_ms),
        "veh-1 got it {latency_ms:.1} ms after veh-2's twin learned it"
    );
    // veh-3's twin recorded why it kept its hazard; nobody recorded taking it.
    let denied3 = audit_records(&run, "veh-3");
    let denied3 = disclosures(&denied3, "out");
    assert!(!denied3.is_empty());
    assert!(denied3
        .iter()
        .all(|d| d["decision"] == "denied" && d["reason"] == "no_rule"));
    // veh-4's twin recorded the expiry.
    assert!(disclosures(&out4, "out")
        .iter()
        .any(|d| d["reason"] == "grant_expired"));
}

/// A host's sharing arguments: an issuer of `authority`'s fleet certified by it, and the
/// trust anchors of `trusted`.
fn host_share_args(
    run: &HostRun,
    authority: &FleetAuthority,
    trusted: &[&FleetAuthority],
) -> Vec<String> {
    let key = KeyPair::generate();
    let now = now_us();
    let cert = authority
        .certify(key.public_key(), now - 60_000_000, now + DAY_US)
        .unwrap();
    let issuer = run.dir.join("host.issuer.key");
    keyfile::save_issuer(&issuer, &key, &cert, false).unwrap();
    let mut args = vec!["--issuer-key".to_string(), issuer.display().to_string()];
    for fleet in trusted {
        let anchor = run.dir.join(format!("{}.authority.pub", fleet.fleet_id()));
        keyfile::save_anchor(
            &anchor,
            &TrustAnchor {
                fleet_id: fleet.fleet_id().into(),
                public_key: fleet.public_key(),
            },
            false,
        )
        .unwrap();
        args.extend(["--trust-anchor".to_string(), anchor.display().to_string()]);
    }
    args
}

/// A signed query of `authority`'s fleet for `name`, made now.
fn signed_query(authority: &FleetAuthority, name: &str) -> Vec<u8> {
    let key = KeyPair::generate();
    let now = now_us();
    let cert = authority
        .certify(key.public_key(), now - 1_000_000, now + DAY_US)
        .unwrap();
    let issuer = PseudonymIssuer::new(key, cert).unwrap();
    let mut credential = issuer.issue(now - 1_000_000, now + 600_000_000).unwrap();
    twinlink_share::SignedQuery::new(name.parse().unwrap(), &mut credential, now).to_bytes()
}

/// The replies a query on `key` with `payload` gets within 2 s.
fn ask(
    rt: &tokio::runtime::Runtime,
    session: &zenoh::Session,
    key: &str,
    payload: Vec<u8>,
) -> usize {
    rt.block_on(async {
        let replies = session
            .get(key)
            .payload(payload)
            .timeout(Duration::from_secs(2))
            .await
            .unwrap();
        let mut n = 0;
        while let Ok(reply) = replies.recv_async().await {
            if reply.result().is_ok() {
                n += 1;
            }
        }
        n
    })
}

#[test]
fn same_fleet_hazards_reach_only_the_fleets_twins_that_ask_by_name() {
    let fleet_a = FleetAuthority::new("fleet-a", KeyPair::generate()).unwrap();
    let fleet_b = FleetAuthority::new("fleet-b", KeyPair::generate()).unwrap();
    // Host B (fleet a) holds veh-2, whose hazards go to its own fleet only; host A (fleet a)
    // and host C (fleet b) each hold a vehicle that lets its twin fetch on its own. Every
    // host trusts both fleets; A and C connect to B.
    let mut host_b = HostRun::new("query_b");
    let args_b = host_share_args(&host_b, &fleet_a, &[&fleet_a, &fleet_b]);
    host_b.start(&args_b.iter().map(String::as_str).collect::<Vec<_>>());
    let mut host_a = HostRun::new("query_a");
    let mut args_a = host_share_args(&host_a, &fleet_a, &[&fleet_a, &fleet_b]);
    args_a.extend(["--connect".to_string(), host_b.endpoint.clone()]);
    host_a.start(&args_a.iter().map(String::as_str).collect::<Vec<_>>());
    let mut host_c = HostRun::new("query_c");
    let mut args_c = host_share_args(&host_c, &fleet_b, &[&fleet_a, &fleet_b]);
    args_c.extend(["--connect".to_string(), host_b.endpoint.clone()]);
    host_c.start(&args_c.iter().map(String::as_str).collect::<Vec<_>>());
    let rt = tokio::runtime::Runtime::new().unwrap();

    // The eavesdropper hears every publication on the share key space.
    let heard: Heard = Arc::default();
    let config =
        twinlink_link::link::zenoh_config("peer", &[], std::slice::from_ref(&host_b.endpoint))
            .unwrap();
    let session = rt.block_on(async { zenoh::open(config).await }).unwrap();
    let sink = heard.clone();
    let _eavesdropper = rt
        .block_on(async {
            session
                .declare_subscriber("twinlink/v1/share/**")
                .callback(move |s| {
                    sink.lock().unwrap().push((
                        now_us(),
                        s.key_expr().to_string(),
                        s.payload().to_bytes().into_owned(),
                    ))
                })
                .await
        })
        .unwrap();

    let pe2 = connect(
        &rt,
        &host_b,
        "veh-2",
        2900.0,
        Some(policy(Some(SharingRule::AUDIENCE_SAME_FLEET), false, 0)),
    );
    wait_for("veh-2's policy", Duration::from_secs(10), || {
        host_b.json("/twins/veh-2")["sharing"]["policy_version"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    pe2.send(to_link(
        "incident",
        Priority::Hazard,
        &stalled("stall-q", 3000.0),
        now_us(),
    ))
    .unwrap();
    wait_for("veh-2's hazard", Duration::from_secs(10), || {
        host_b.json("/twins/veh-2")["sharing"]["shared_hazards"] == 1
    });

    // The twins that join now learn it by asking: veh-1's of the same fleet does...
    let mut pe1 = connect(&rt, &host_a, "veh-1", 1000.0, Some(policy(None, true, 0)));
    let joined = now_us();
    let mut pe9 = connect(&rt, &host_c, "veh-9", 1000.0, Some(policy(None, true, 0)));
    let got1 = relayed(&rt, &mut pe1, Duration::from_secs(8), true);
    assert_eq!(
        got1.len(),
        1,
        "veh-1's twin asked tile 3_0 and got veh-2's hazard"
    );
    let (at1, obs1) = &got1[0];
    // At once, not after a query period (5 s): a tile is asked as soon as a twin wants it.
    let after_ms = (*at1 - joined) as f64 / 1000.0;
    eprintln!("the late joiner learned it {after_ms:.0} ms after connecting");
    assert!(after_ms < 4500.0, "{after_ms:.0} ms");
    assert_eq!(hazard_xs(obs1), vec![3000.0]);
    assert_eq!(obs1.region_tile, "3_0");
    // ...veh-9's of another fleet asks too, and gets nothing.
    let got9 = relayed(&rt, &mut pe9, Duration::from_secs(6), false);
    assert!(got9.is_empty(), "veh-9 is of another fleet: {got9:?}");
    assert!(host_c.metric("twinlink_dr_queries_sent_total{result=\"sent\"}") >= 1.0);
    assert!(host_b.metric("twinlink_dr_disclosures_total{result=\"other_fleet\"}") >= 1.0);

    // Queries that are not a twin's, or not what they say, get no reply and are counted.
    let key = "twinlink/v1/share/hazards/3_0";
    assert_eq!(ask(&rt, &session, key, Vec::new()), 0);
    assert_eq!(
        ask(&rt, &session, key, signed_query(&fleet_a, "hazards/5_0")),
        0
    );
    let rogue = FleetAuthority::new("rogue", KeyPair::generate()).unwrap();
    assert_eq!(
        ask(&rt, &session, key, signed_query(&rogue, "hazards/3_0")),
        0
    );
    let query_metric = |result: &str| {
        host_b.metric(&format!(
            "twinlink_dr_queries_received_total{{result=\"{result}\"}}"
        ))
    };
    for result in ["unsigned", "name_mismatch", "unknown_authority"] {
        assert!(query_metric(result) >= 1.0, "{result} counted");
    }
    assert!(query_metric("verified") >= 2.0);
    // A genuine query of the fleet gets the hazard, to the querier alone.
    assert_eq!(
        ask(&rt, &session, key, signed_query(&fleet_a, "hazards/3_0")),
        1
    );

    for pe in [pe1, pe2, pe9] {
        rt.block_on(pe.close());
    }
    rt.block_on(async { session.close().await }).unwrap();
    for host in [&mut host_a, &mut host_b, &mut host_c] {
        host.stop();
    }

    // Nothing of veh-2's hazard was ever published (read without verifying: anything
    // that looks like it counts).
    for (_, key, bytes) in heard.lock().unwrap().iter() {
        assert!(!key.ends_with("/3_0"), "{key}: published in veh-2's tile");
        if let Ok(d) = Disclosure::from_bytes(bytes) {
            assert!(
                !hazard_xs(&d.observation).contains(&3000.0),
                "{key}: a same-fleet hazard on the open keys"
            );
        }
    }
    // Both audits agree: what veh-1's twin took is what veh-2's twin recorded answering
    // to a query of fleet a; veh-2's twin also recorded refusing fleet b.
    let out2 = audit_records(&host_b, "veh-2");
    let out2 = disclosures(&out2, "out");
    let answered: HashSet<(String, u64)> = out2
        .iter()
        .filter(|d| d["via"] == "query" && d["decision"].is_null())
        .map(|d| {
            assert_eq!(d["to_fleet"], "fleet-a");
            assert_eq!(d["audience"], "same_fleet");
            (
                d["pseudonym"].as_str().unwrap().to_string(),
                d["disclosure_id"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(out2
        .iter()
        .any(|d| d["via"] == "query" && d["reason"] == "other_fleet"));
    assert!(out2
        .iter()
        .any(|d| d["via"].is_null() && d["reason"] == "audience_unknown"));
    let taken = audit_records(&host_a, "veh-1");
    let taken = disclosures(&taken, "in");
    assert!(!taken.is_empty());
    for d in taken {
        assert_eq!(d["audience"], "same_fleet");
        let id = (
            d["pseudonym"].as_str().unwrap().to_string(),
            d["disclosure_id"].as_u64().unwrap(),
        );
        assert!(answered.contains(&id), "{d} was answered by veh-2's twin");
    }
}
