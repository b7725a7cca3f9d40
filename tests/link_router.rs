//! A PE and its DR as separate processes through a Zenoh router, with an eavesdropping and
//! meddling third Zenoh session on the same router.
//!
//! The third session must not read any intra-twin field, and nothing it forges, replays,
//! reorders or tampers with may be accepted: the DR applies exactly what the PE sent, in
//! order, and counts every refusal under its reason.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{free_port, provision, start_router, work_dir};
use serde_json::Value;
use twinlink_launch::{workspace_binary, Supervised};
use twinlink_link::link::zenoh_config;
use twinlink_link::{TwinKeys, VehicleId};

fn end(
    dir: &Path,
    binary: &str,
    role: &str,
    vehicle: &str,
    router: &str,
    extra: &[&str],
) -> Command {
    let mut c = Command::new(workspace_binary(binary).unwrap());
    c.args([
        "--vehicle",
        vehicle,
        "--mode",
        "client",
        "--connect",
        router,
        "--keys",
    ])
    .arg(dir.join(format!("{vehicle}.{role}.key")))
    .arg("--report")
    .arg(dir.join(format!("{role}.json")))
    .args(extra)
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(dir.join(format!("{role}.log"))).unwrap());
    c
}

/// Starts `twinlink-<role>` (`pe` or `dr`) as a client of `router`.
fn spawn_end(dir: &Path, role: &str, vehicle: &str, router: &str, extra: &[&str]) -> Supervised {
    let binary = format!("twinlink-{role}");
    Supervised::spawn(role, end(dir, &binary, role, vehicle, router, extra)).unwrap()
}

/// Waits for the PE to finish and asserts it succeeded, showing its log if not.
fn pe_finishes(pe: &mut Supervised, dir: &Path) {
    let status = pe
        .wait_timeout(Duration::from_secs(60))
        .unwrap()
        .expect("PE finished");
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(dir.join("pe.log")).unwrap()
    );
}

fn read_report(dir: &Path, role: &str) -> Value {
    let path = dir.join(format!("{role}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        let log = std::fs::read_to_string(dir.join(format!("{role}.log"))).unwrap_or_default();
        panic!("{}: {e}\n{log}", path.display())
    });
    serde_json::from_str(&text).unwrap()
}

/// Every recommendation the DR made reached the PE once and in order, except those a newer
/// one replaced in the DR's outbox before they left (coalescing, counted there).
fn assert_recommendations_consistent(pe: &Value, dr: &Value) {
    let made = dr["recommendations"].as_u64().unwrap();
    let coalesced = dr["link"]["outbox"]["coalesced"].as_u64().unwrap();
    assert_eq!(
        pe["recommendations"].as_u64().unwrap() + coalesced,
        made,
        "{pe}\n{dr}"
    );
    assert_eq!(
        pe["last_sequence"].as_u64().unwrap(),
        made,
        "the newest reached the PE"
    );
    assert_eq!(pe["sequence_repeats"], 0, "none applied twice");
    assert!(pe["sequence_gaps"].as_u64().unwrap() <= coalesced);
}

fn stop_dr(mut dr: Supervised) {
    // On SIGTERM the DR closes its link and writes its report.
    dr.terminate();
    dr.wait_timeout(Duration::from_secs(5)).unwrap();
}

#[test]
fn pe_and_dr_processes_sync_through_a_router() {
    let dir = work_dir("router_sync");
    let vehicle = "veh-router";
    provision(&dir, vehicle);
    let router_ep = format!("tcp/127.0.0.1:{}", free_port());
    let _router = start_router(&dir, "router", &router_ep, None);
    let dr = spawn_end(&dir, "dr", vehicle, &router_ep, &[]);
    let mut pe = spawn_end(
        &dir,
        "pe",
        vehicle,
        &router_ep,
        &["--count", "40", "--rate-hz", "40"],
    );
    pe_finishes(&mut pe, &dir);
    // The PE is gone: its twin keeps predicting where it is.
    std::thread::sleep(Duration::from_millis(1500));
    stop_dr(dr);
    let pe = read_report(&dir, "pe");
    let dr = read_report(&dir, "dr");
    assert_eq!(dr["out_of_order"], 0);
    assert_eq!(dr["bad_messages"], 0);
    assert!(dr["summaries"].as_u64().unwrap() >= 1);
    assert_recommendations_consistent(&pe, &dr);
    assert_eq!(dr["link"]["rejected"], serde_json::json!({}));
    assert!(dr["predictions_while_away"].as_u64().unwrap() >= 1, "{dr}");
    // The minimal PE drives along x at 20 m/s; after it left, the twin's estimate of its
    // position keeps moving on from the last state.
    let predicted_x = dr["predicted_position"][0].as_f64().unwrap();
    assert!(predicted_x > 30.0, "predicted x {predicted_x}: {dr}");
}

/// Frames the eavesdropper saw, by key.
type Captured = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_session_can_neither_read_nor_inject() {
    let dir = work_dir("router_privacy");
    let vehicle = "veh-private";
    provision(&dir, vehicle);
    let router_ep = format!("tcp/127.0.0.1:{}", free_port());
    let _router = start_router(&dir, "router", &router_ep, None);

    // The third party: a plain Zenoh client of the same router.
    let third = zenoh::open(zenoh_config("client", &[], std::slice::from_ref(&router_ep)).unwrap())
        .await
        .unwrap();
    let keys = TwinKeys::new(VehicleId::new(vehicle).unwrap());
    let captured: Captured = Arc::default();
    let sink = captured.clone();
    let _spy = third
        .declare_subscriber(keys.all())
        .callback(move |s| {
            sink.lock().unwrap().push((
                s.key_expr().to_string(),
                s.payload().to_bytes().into_owned(),
            ))
        })
        .await
        .unwrap();
    // It also answers handshakes itself, hoping the PE takes its answer.
    let fake_answers = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let hellos = fake_answers.clone();
    let _rogue = third
        .declare_queryable(keys.sync())
        .callback(move |q| {
            if let Some(p) = q.payload() {
                hellos.lock().unwrap().push(p.to_bytes().into_owned());
            }
            let mut forged = vec![1u8];
            forged.extend((0..48).map(|i| i as u8));
            let _ = futures_lite_reply(&q, forged);
        })
        .await
        .unwrap();

    let dr = spawn_end(&dir, "dr", vehicle, &router_ep, &[]);
    let mut pe = spawn_end(
        &dir,
        "pe",
        vehicle,
        &router_ep,
        &["--count", "120", "--rate-hz", "40"],
    );

    // Let traffic flow, then meddle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let snapshot = captured.lock().unwrap().clone();
    let uplink: Vec<Vec<u8>> = snapshot
        .iter()
        .filter(|(k, _)| *k == keys.uplink().as_str())
        .map(|(_, p)| p.clone())
        .collect();
    assert!(
        uplink.len() >= 10,
        "the eavesdropper saw {} uplink frames",
        uplink.len()
    );
    let publisher = third.declare_publisher(keys.uplink()).await.unwrap();
    // Replayed: frames sent verbatim again.
    for frame in uplink.iter().rev().take(5) {
        publisher.put(frame.clone()).await.unwrap();
    }
    // Reordered-old: the oldest captured frames, after newer ones were applied.
    for frame in uplink.iter().take(5) {
        publisher.put(frame.clone()).await.unwrap();
    }
    // Tampered: one bit flipped in the ciphertext, and in the header's counter.
    for (i, frame) in uplink.iter().rev().take(5).enumerate() {
        let mut t = frame.clone();
        let at = if i % 2 == 0 { t.len() - 20 } else { 10 };
        t[at] ^= 0x40;
        publisher.put(t).await.unwrap();
    }
    // Forged: valid-looking headers under the live session id with random ciphertext.
    let live_session = &uplink.last().unwrap()[1..9];
    for n in 0..5u8 {
        let mut f = vec![1u8];
        f.extend_from_slice(live_session);
        f.extend_from_slice(&(1_000_000u64 + n as u64).to_le_bytes());
        f.extend((0..200).map(|i| (i as u8).wrapping_mul(n + 3)));
        publisher.put(f).await.unwrap();
    }
    // A captured handshake, replayed to the DR.
    // Captured handshakes, replayed to the DR. (A handshake the PE sent before the DR was
    // up reached only the rogue; the DR has not seen it, answers it, and the session it
    // makes is never confirmed. The one that opened the live session is a replay.)
    let hellos = fake_answers.lock().unwrap().clone();
    let hello = hellos.last().cloned();
    for hello in &hellos {
        let replies = third
            .get(keys.sync())
            .target(zenoh::query::QueryTarget::All)
            .consolidation(zenoh::query::ConsolidationMode::None)
            .payload(hello.clone())
            .timeout(Duration::from_secs(1))
            .await
            .unwrap();
        while replies.recv_async().await.is_ok() {}
    }

    let status =
        tokio::task::spawn_blocking(move || pe.wait_timeout(Duration::from_secs(60)).unwrap())
            .await
            .unwrap()
            .expect("PE finished");
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(dir.join("pe.log")).unwrap()
    );
    stop_dr(dr);
    let pe = read_report(&dir, "pe");
    let dr = read_report(&dir, "dr");

    // Nothing readable: no field of any twin message appears in what crossed the router.
    let all = captured.lock().unwrap().clone();
    assert!(all.len() > 100);
    for (key, payload) in &all {
        for needle in [
            &b"base_link"[..],
            b"fused",
            b"twin_msgs",
            b"veh-private",
            b"ahead",
            b"objects/",
        ] {
            assert!(
                !payload.windows(needle.len()).any(|w| w == needle),
                "{} readable on {key}",
                String::from_utf8_lossy(needle)
            );
        }
    }
    // Nothing accepted: the DR applied what the PE sent, once each, in order.
    assert_eq!(dr["out_of_order"], 0);
    assert_eq!(dr["bad_messages"], 0);
    assert_recommendations_consistent(&pe, &dr);
    let rejected = &dr["link"]["rejected"];
    let count = |reason: &str| rejected[reason].as_u64().unwrap_or(0);
    // 20 frames were injected. Replays, old frames and tampered copies whose counter was
    // already seen are refused by the replay window before any decryption; the forged ones
    // and the copies with a changed counter fail authentication.
    let frames_refused =
        count("replayed") + count("too_old") + count("unknown_session") + count("auth_failed");
    assert!(frames_refused >= 20, "{rejected}");
    assert!(
        count("auth_failed") >= 7,
        "forged and counter-tampered frames: {rejected}"
    );
    assert!(
        hello.is_some(),
        "the rogue queryable saw the PE's handshake"
    );
    assert!(count("handshake_replayed") >= 1, "{rejected}");
    // The PE refused the rogue answers to its handshakes, and still reached its DR.
    let pe_rejected = &pe["link"]["rejected"];
    if !fake_answers.lock().unwrap().is_empty() {
        assert!(
            pe_rejected["handshake_failed"].as_u64().unwrap_or(0) >= 1,
            "{pe_rejected}"
        );
    }
    // And each refusal was logged with its reason.
    let log = std::fs::read_to_string(dir.join("dr.log")).unwrap();
    assert!(
        log.contains("reason=\"auth_failed\"") || log.contains("reason=auth_failed"),
        "{log}"
    );
    third.close().await.unwrap();
}

fn futures_lite_reply(q: &zenoh::query::Query, payload: Vec<u8>) -> zenoh::Result<()> {
    use zenoh::Wait as _;
    q.reply(q.key_expr().clone(), payload).wait()
}

/// Runs DR and PE through a router for `count` summaries, the DR starting from `map`.
fn drive_with_map(name: &str, map: Option<&twinlink_link::bandwidth::CoverageMap>) -> Value {
    let dir = work_dir(name);
    let vehicle = "veh-horizon";
    provision(&dir, vehicle);
    let router_ep = format!("tcp/127.0.0.1:{}", free_port());
    let _router = start_router(&dir, "router", &router_ep, None);
    let map_path = dir.join("coverage.json");
    if let Some(map) = map {
        std::fs::write(&map_path, serde_json::to_vec(map).unwrap()).unwrap();
    }
    let map_arg = map_path.to_str().unwrap().to_string();
    let dr = spawn_end(
        &dir,
        "dr",
        vehicle,
        &router_ep,
        &["--coverage-map", &map_arg],
    );
    let mut pe = spawn_end(
        &dir,
        "pe",
        vehicle,
        &router_ep,
        &["--count", "25", "--rate-hz", "10"],
    );
    pe_finishes(&mut pe, &dir);
    stop_dr(dr);
    let report = read_report(&dir, "dr");
    // The DR saved what it learned.
    let saved: twinlink_link::bandwidth::CoverageMap =
        serde_json::from_str(&std::fs::read_to_string(&map_path).unwrap()).unwrap();
    assert!(!saved.is_empty());
    report
}

#[test]
fn the_dr_sends_a_horizon_that_covers_a_predicted_outage() {
    use twinlink_link::bandwidth::{BandwidthSample, CoverageMap};
    // The fleet knows a coverage hole from x = 100 m to 400 m on the PE's road; the minimal
    // PE drives along x at 20 m/s from x = 0, so the hole starts in 5 s and ends in 20 s.
    let mut map = CoverageMap::new(50.0);
    for _ in 0..5 {
        for x in (0..2000).step_by(10) {
            let x = x as f64;
            let bps = if (100.0..400.0).contains(&x) {
                0.0
            } else {
                5e6
            };
            map.learn(&BandwidthSample {
                t_s: 0.0,
                x,
                y: 0.0,
                bps,
            });
        }
    }
    let with_hole = drive_with_map("horizon_hole", Some(&map));
    let horizon = with_hole["longest_horizon_s"].as_f64().unwrap();
    assert!(
        (20.0..=30.0).contains(&horizon),
        "horizon {horizon} s: {with_hole}"
    );
    assert!(with_hole["bandwidth_samples"].as_u64().unwrap() >= 2);
    let without = drive_with_map("horizon_none", None);
    assert_eq!(
        without["longest_horizon_s"].as_f64().unwrap(),
        5.0,
        "{without}"
    );
}
