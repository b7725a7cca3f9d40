//! The DR host as a real process: vehicles connect over real Zenoh on loopback, with
//! keys from `twinctl provision`'s library, and the host is inspected through its admin
//! endpoint, killed with SIGKILL and restarted.

#![allow(clippy::field_reassign_with_default)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{pe_config, recv_until, state, wait_for, HostRun};
use twin_dr_host::audit;
use twin_dr_host::store::Store;
use twinlink_link::link::now_us;
use twinlink_link::minimal::{from_link, ros_time, to_link};
use twinlink_link::{Link, LinkEvent, Priority, VehicleId};
use twinlink_msgs::twin_msgs::msg::{
    DetectedObject, Incident, LaneTraffic, PerceptionSummary, Recommendation, RegionalTraffic,
};

fn lidar(t_us: u64, objects: &[(f64, f64, f64)]) -> PerceptionSummary {
    let mut s = PerceptionSummary::default();
    s.header.stamp = ros_time(t_us);
    s.header.frame_id = "base_link".into();
    s.sensor_id = "lidar_top".into();
    s.sensor_kind = PerceptionSummary::SENSOR_LIDAR;
    s.objects = objects
        .iter()
        .map(|&(x, y, v)| {
            let mut o = DetectedObject::default();
            o.classification = DetectedObject::CLASS_CAR;
            o.class_confidence = 0.9;
            o.position.x = x;
            o.position.y = y;
            o.dimensions.x = 4.5;
            o.dimensions.y = 1.9;
            o.has_velocity = true;
            o.velocity.x = v;
            o.position_covariance = [0.04, 0.0, 0.0, 0.0, 0.04, 0.0, 0.0, 0.0, 0.1];
            o
        })
        .collect();
    s
}

async fn publish_tile(run: &HostRun, contributors: u32) {
    let config =
        twinlink_link::link::zenoh_config("peer", &[], std::slice::from_ref(&run.endpoint))
            .unwrap();
    let session = zenoh::open(config).await.unwrap();
    let mut tile = RegionalTraffic::default();
    tile.tile_id = "t1".into();
    tile.window.sec = 60;
    tile.contributors = contributors;
    tile.k_threshold = 10;
    tile.lanes.push(LaneTraffic {
        segment_id: "seg-3".into(),
        lane_index: 1,
        start_s: 0.0,
        end_s: 500.0,
        mean_speed: 6.0,
        density: 60.0,
        flow: 1400.0,
    });
    let mut inc = Incident::default();
    inc.incident_id = "stalled-7".into();
    inc.incident_kind = Incident::INCIDENT_STALLED_VEHICLE;
    inc.segment_id = "seg-4".into();
    inc.s = 200.0;
    inc.lane_index = 1;
    inc.extent = 6.0;
    inc.confidence = 0.9;
    tile.incidents.push(inc);
    let key = twinlink_link::keys::region(
        &twinlink_link::keys::RegionTile::new("t1").unwrap(),
        "traffic",
    )
    .unwrap();
    // Give the new session's declarations time to meet the host's subscriber.
    tokio::time::sleep(Duration::from_millis(500)).await;
    session
        .put(key, twinlink_msgs::codec::encode(&tile).unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    session.close().await.unwrap();
}

#[test]
fn host_wakes_a_twin_that_fuses_plans_and_goes_dormant() {
    let mut run = HostRun::new("serve");
    let pe_keys = run.provision("veh-1");
    run.provision("veh-2");
    run.start(&["--idle-after-s", "1"]);
    let twins = run.json("/twins");
    assert_eq!(twins.as_array().unwrap().len(), 2, "{twins}");
    assert!(twins
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["active"] == false));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut pe = rt.block_on(Link::open(pe_config(&run, pe_keys))).unwrap();
    rt.block_on(pe.wait_peer_up(Duration::from_secs(10)))
        .expect("the twin woke and answered");
    // A regional tile from a separate Zenoh session, as the regional service publishes it:
    // slow traffic and a stalled vehicle on the route. It reaches the active twin and the
    // dormant one; a tile below k-anonymity is refused by both and counted.
    rt.block_on(publish_tile(&run, 12));
    rt.block_on(publish_tile(&run, 3));
    wait_for(
        "the tile to reach both twins",
        Duration::from_secs(5),
        || {
            run.json("/twins/veh-2")["hazards"]
                .as_array()
                .unwrap()
                .len()
                == 1
                && run.json("/twins/veh-1")["hazards"]
                    .as_array()
                    .unwrap()
                    .len()
                    == 1
        },
    );
    wait_for(
        "the thin tile to be refused",
        Duration::from_secs(5),
        || run.metric("twinlink_dr_rejected_total{reason=\"below_k\"}") >= 2.0,
    );
    let start = now_us();
    let mut advice: Vec<Recommendation> = Vec::new();
    for k in 0..40u64 {
        let t = start + k * 50_000;
        let x = 1000.0 + 25.0 * k as f64 * 0.05;
        pe.send(to_link(
            "state",
            Priority::OwnState,
            &state("veh-1", t, x, 25.0),
            t,
        ))
        .unwrap();
        // A slower car 40 m ahead in the same lane.
        let lead = 1040.0 + 15.0 * k as f64 * 0.05;
        pe.send(to_link(
            "objects/lidar_top",
            Priority::Objects,
            &lidar(t, &[(lead - x, 0.0, 15.0)]),
            t,
        ))
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        while let Some(LinkEvent::Message(d)) = pe.try_recv() {
            if let Ok(r) = from_link::<Recommendation>(&d.message) {
                advice.push(r);
            }
        }
    }
    recv_until(&rt, &mut pe, Duration::from_secs(2), |e| {
        if let LinkEvent::Message(d) = e {
            if let Ok(r) = from_link::<Recommendation>(&d.message) {
                advice.push(r);
            }
        }
        advice.len() >= 30
    });
    assert!(advice.len() >= 30, "{} recommendations", advice.len());
    let last = advice.last().unwrap();
    assert_eq!(last.vehicle_id, "veh-1");
    assert_eq!(
        last.reason_code,
        Recommendation::REASON_FOLLOWING,
        "{}",
        last.reason
    );
    assert!(last.target_speed < 20.0, "{}", last.target_speed);
    assert!(last.horizon.len() >= 5);
    assert!(
        last.horizon[0].speed < 25.0,
        "the horizon slows down too: {:?}",
        last.horizon
    );
    assert!(advice.windows(2).all(|w| w[1].sequence > w[0].sequence));

    // A message of a type the twin does not take is refused and counted, so is an incident
    // report without an id; the twin goes on.
    pe.send(to_link(
        "odd",
        Priority::Info,
        &RegionalTraffic::default(),
        now_us(),
    ))
    .unwrap();
    pe.send(to_link(
        "incident",
        Priority::Hazard,
        &Incident::default(),
        now_us(),
    ))
    .unwrap();
    wait_for("the refusals to be counted", Duration::from_secs(5), || {
        run.metric("twinlink_dr_rejected_total{reason=\"unknown_type\"}") >= 1.0
            && run.metric("twinlink_dr_rejected_total{reason=\"invalid_incident\"}") >= 1.0
    });

    let doc = run.json("/twins/veh-1");
    assert_eq!(doc["active"], true, "{doc}");
    assert!(
        doc["counters"]["summaries"].as_u64().unwrap() >= 35,
        "{doc}"
    );
    assert_eq!(doc["tracks"], 1, "{doc}");
    assert!(doc["link"]["peer_alive"].as_bool().unwrap(), "{doc}");
    assert_eq!(run.get("/twins/veh-9").0, 404);
    assert!(run.metric("twinlink_dr_recommendations_total") >= 30.0);
    assert!(run.metric("twinlink_dr_latency_seconds_count") >= 30.0);

    // The operator's view: twinctl reads the same through the admin endpoint.
    let twinctl =
        twinlink_launch::workspace_binary("twinctl").expect("twinctl is built (make build)");
    let out = Command::new(&twinctl)
        .args(["dr", "list", "--admin", &run.admin])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{list}");
    assert!(
        list.contains("2 twins") && list.contains("1 active"),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("veh-1") && l.contains("active")),
        "{list}"
    );
    let out = Command::new(&twinctl)
        .args(["dr", "status", "veh-1", "--admin", &run.admin])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && status.contains("active (vehicle connected)"),
        "{status}"
    );
    assert!(
        status.contains("advice:")
            && status.contains("vehicle")
            && status.contains("link: vehicle reachable"),
        "{status}"
    );
    let out = Command::new(&twinctl)
        .args(["dr", "status", "veh-9", "--admin", &run.admin])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));

    // Provisioned while running: picked up by the rescan.
    run.provision("veh-3");
    wait_for("veh-3 to be hosted", Duration::from_secs(5), || {
        run.json("/twins").as_array().unwrap().len() == 3
    });

    // The vehicle leaves: after --idle-after-s the twin is dormant, and still predicts.
    rt.block_on(pe.close());
    wait_for("veh-1 to go dormant", Duration::from_secs(10), || {
        run.json("/twins/veh-1")["active"] == false
    });
    let doc = run.json("/twins/veh-1");
    let est = &doc["estimate"];
    assert!(est["age"].as_f64().unwrap() > 0.5, "{doc}");
    assert!(
        est["x"].as_f64().unwrap() > 1000.0 + 25.0 * 2.0,
        "still driving on: {doc}"
    );
    run.stop();
    // Its history verifies, with the library and with twinctl.
    let report = audit::verify(
        &run.dir.join("data").join("veh-1"),
        &VehicleId::new("veh-1").unwrap(),
        None,
    )
    .unwrap();
    assert!(report.is_intact(), "{report:?}");
    let out = Command::new(&twinctl)
        .args(["audit", "verify", "veh-1", "--data-dir"])
        .arg(run.dir.join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn kill_9_loses_nothing_the_host_acknowledged() {
    let mut run = HostRun::new("kill9");
    let pe_keys = run.provision("veh-k");
    run.start(&["--retention", "100000"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut pe = rt.block_on(Link::open(pe_config(&run, pe_keys))).unwrap();
    rt.block_on(pe.wait_peer_up(Duration::from_secs(10)))
        .unwrap();
    // Each message on a stream of its own, so that none supersedes another.
    let total = 400u64;
    let t0 = now_us();
    let send = |pe: &Link, k: u64| {
        let t = t0 + k * 10_000;
        let m = to_link(
            &format!("log/{k}"),
            Priority::Info,
            &state("veh-k", t, k as f64, 10.0),
            t,
        );
        pe.send(m).unwrap();
    };
    for k in 0..200 {
        send(&pe, k);
        std::thread::sleep(Duration::from_millis(2));
    }
    let acked_before = rt.block_on(pe.stats()).unwrap().sender.acknowledged;
    run.kill();
    let acked_at_kill = rt.block_on(pe.stats()).unwrap().sender.acknowledged;
    assert!(acked_at_kill >= acked_before && acked_at_kill > 0);
    // What the vehicle saw acknowledged is in the store, though the host died mid-stream.
    {
        let store = Store::open(&run.dir.join("data").join("host.redb"), 100_000).unwrap();
        let stored = store.messages("veh-k", 0).unwrap();
        assert!(
            stored.len() as u64 >= acked_at_kill,
            "{} stored, {acked_at_kill} acknowledged",
            stored.len()
        );
        let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "no holes");
    }
    // The vehicle keeps sending into the outage; the host comes back and catches up.
    for k in 200..total {
        send(&pe, k);
    }
    run.start(&["--retention", "100000"]);
    wait_for(
        "every message acknowledged",
        Duration::from_secs(30),
        || {
            rt.block_on(pe.stats()).unwrap().sender.in_flight == 0
                && rt.block_on(pe.stats()).unwrap().outbox.queued == 0
        },
    );
    rt.block_on(pe.close());
    run.stop();
    let store = Store::open(&run.dir.join("data").join("host.redb"), 100_000).unwrap();
    let stored = store.messages("veh-k", 0).unwrap();
    let mut streams: Vec<u64> = stored
        .iter()
        .map(|m| m.stream.trim_start_matches("log/").parse().unwrap())
        .collect();
    streams.sort_unstable();
    assert_eq!(
        streams,
        (0..total).collect::<Vec<_>>(),
        "each message exactly once"
    );
    let report = audit::verify(
        &run.dir.join("data").join("veh-k"),
        &VehicleId::new("veh-k").unwrap(),
        None,
    )
    .unwrap();
    assert!(report.is_intact(), "{report:?}");
}

/// Counts the recommendations that reach `pe` within `within`.
fn advice_within(rt: &tokio::runtime::Runtime, pe: &mut Link, within: Duration) -> usize {
    let mut n = 0;
    recv_until(rt, pe, within, |e| {
        if let LinkEvent::Message(d) = e {
            if from_link::<Recommendation>(&d.message).is_ok() {
                n += 1;
            }
        }
        false
    });
    n
}

#[test]
fn one_twins_panic_or_garbage_never_stops_another() {
    let mut run = HostRun::new("isolation");
    let keys_a = run.provision("veh-a");
    let keys_b = run.provision("veh-b");
    run.start(&["--chaos-panic-on-stream", "chaos"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut a = rt.block_on(Link::open(pe_config(&run, keys_a))).unwrap();
    let mut b = rt.block_on(Link::open(pe_config(&run, keys_b))).unwrap();
    rt.block_on(a.wait_peer_up(Duration::from_secs(10)))
        .unwrap();
    rt.block_on(b.wait_peer_up(Duration::from_secs(10)))
        .unwrap();
    let feed = |pe: &Link, vehicle: &str, k: u64| {
        let t = now_us();
        let x = 500.0 + k as f64;
        pe.send(to_link(
            "state",
            Priority::OwnState,
            &state(vehicle, t, x, 20.0),
            t,
        ))
        .unwrap();
        pe.send(to_link(
            "objects/lidar_top",
            Priority::Objects,
            &lidar(t, &[(30.0, 0.0, 15.0)]),
            t,
        ))
        .unwrap();
    };
    // Garbage from a: a payload that claims to be a summary, and a summary in the wrong
    // frame. Both are refused and counted; a's twin goes on.
    // (Streams of their own: a newer message of a stream supersedes one still queued.)
    let mut garbage = to_link(
        "objects/garbage",
        Priority::Objects,
        &lidar(now_us(), &[]),
        now_us(),
    );
    garbage.payload.truncate(7);
    a.send(garbage).unwrap();
    let mut wrong = lidar(now_us(), &[(10.0, 0.0, 1.0)]);
    wrong.header.frame_id = "map".into();
    a.send(to_link(
        "objects/map_frame",
        Priority::Objects,
        &wrong,
        now_us(),
    ))
    .unwrap();
    wait_for("the refusals to be counted", Duration::from_secs(5), || {
        run.metric("twinlink_dr_rejected_total{reason=\"undecodable\"}") >= 1.0
            && run.metric("twinlink_dr_rejected_total{reason=\"invalid_summary\"}") >= 1.0
    });
    for k in 0..10 {
        feed(&a, "veh-a", k);
        feed(&b, "veh-b", k);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        advice_within(&rt, &mut a, Duration::from_millis(500)) > 0,
        "a's twin survived the garbage"
    );
    // a's twin panics.
    a.send(to_link(
        "chaos",
        Priority::Info,
        &state("veh-a", now_us(), 0.0, 0.0),
        now_us(),
    ))
    .unwrap();
    wait_for("the panic to be counted", Duration::from_secs(5), || {
        run.metric("twinlink_dr_panics_total") >= 1.0
    });
    // b never noticed: its advice keeps coming.
    for k in 10..30 {
        feed(&b, "veh-b", k);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        advice_within(&rt, &mut b, Duration::from_millis(300)) >= 10,
        "b kept its twin"
    );
    // a's twin is rebuilt and, its vehicle still being there, woken again.
    rt.block_on(a.wait_peer_up(Duration::from_secs(15)))
        .expect("a's twin came back");
    let mut n = 0;
    for k in 10..40 {
        feed(&a, "veh-a", k);
        std::thread::sleep(Duration::from_millis(50));
        n += advice_within(&rt, &mut a, Duration::from_millis(1));
    }
    n += advice_within(&rt, &mut a, Duration::from_millis(500));
    assert!(n >= 10, "a's twin answers again ({n})");
    // The message that made it panic came again (it was never durable) and was quarantined,
    // not applied: one panic in all.
    assert_eq!(run.metric("twinlink_dr_panics_total"), 1.0);
    assert_eq!(
        run.metric("twinlink_dr_rejected_total{reason=\"poison_message\"}"),
        1.0
    );
    rt.block_on(a.close());
    rt.block_on(b.close());
    run.stop();
}
