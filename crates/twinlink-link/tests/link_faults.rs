//! Two real link ends on real Zenoh sessions over loopback TCP, under injected faults.
//!
//! Every test uses its own ports and vehicle id, so they run in parallel.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use twinlink_link::fault::FaultPlan;
use twinlink_link::link::now_us;
use twinlink_link::scenario;
use twinlink_link::{Link, LinkConfig, LinkEvent, Message, Priority};

fn configs(name: &str) -> (LinkConfig, LinkConfig) {
    scenario::pair_configs(name).unwrap()
}

async fn open_pair(pe: LinkConfig, dr: LinkConfig) -> (Link, Link) {
    scenario::open_pair(pe, dr).await.unwrap()
}

fn numbered(i: u64, priority: Priority) -> Message {
    Message {
        // Distinct streams: nothing may be coalesced, so every message must arrive.
        stream: format!("n/{i}"),
        priority,
        type_name: "test/Numbered".into(),
        created_us: now_us(),
        payload: i.to_le_bytes().to_vec(),
    }
}

fn number(m: &Message) -> u64 {
    u64::from_le_bytes(m.payload[..8].try_into().unwrap())
}

/// What one end applied, and how its peer's presence changed.
#[derive(Default, Debug)]
struct Seen {
    numbers: Vec<u64>,
    downs: Vec<Instant>,
    ups: Vec<Instant>,
}

fn drain(link: &mut Link, seen: &mut Seen) {
    while let Some(event) = link.try_recv() {
        match event {
            LinkEvent::Message(d) => seen.numbers.push(number(&d.message)),
            LinkEvent::PeerDown { .. } => seen.downs.push(Instant::now()),
            LinkEvent::PeerUp { .. } => seen.ups.push(Instant::now()),
        }
    }
}

/// Sends `count` numbered messages each way (one every `gap`), runs `during` halfway,
/// then waits until both ends applied everything; checks exactly-once, in-order delivery.
async fn exchange(
    pe: &mut Link,
    dr: &mut Link,
    count: u64,
    gap: Duration,
    during: impl FnOnce(),
    settle: Duration,
) -> (Seen, Seen) {
    let mut at_dr = Seen::default();
    let mut at_pe = Seen::default();
    let mut during = Some(during);
    for i in 0..count {
        pe.send(numbered(i, Priority::Objects)).unwrap();
        dr.send(numbered(i, Priority::OwnState)).unwrap();
        if i == count / 2 {
            (during.take().unwrap())();
        }
        tokio::time::sleep(gap).await;
        drain(pe, &mut at_pe);
        drain(dr, &mut at_dr);
    }
    let deadline = Instant::now() + settle;
    while (at_dr.numbers.len() as u64) < count || (at_pe.numbers.len() as u64) < count {
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        drain(pe, &mut at_pe);
        drain(dr, &mut at_dr);
    }
    let expected: Vec<u64> = (0..count).collect();
    let stats = (pe.stats().await.unwrap(), dr.stats().await.unwrap());
    assert_eq!(
        at_dr.numbers, expected,
        "DR applied (PE stats {:?})",
        stats.0
    );
    assert_eq!(
        at_pe.numbers, expected,
        "PE applied (DR stats {:?})",
        stats.1
    );
    for s in [&stats.0, &stats.1] {
        // A duplicated frame is a replay to the crypto layer: refused and counted there.
        let replayed = s.rejected(twinlink_link::Rejection::Replayed);
        assert_eq!(s.rejected_total(), replayed, "{:?}", s.rejected);
        assert_eq!(s.outbox.dropped, [0; 4]);
    }
    (at_pe, at_dr)
}

async fn with_plan(name: &str, plan: &str) -> (twinlink_link::LinkStats, twinlink_link::LinkStats) {
    let (pe_cfg, dr_cfg) = configs(name);
    let (mut pe, mut dr) = open_pair(pe_cfg, dr_cfg).await;
    let plan: FaultPlan = plan.parse().unwrap();
    pe.faults().set_plan(plan.clone());
    dr.faults().set_plan(plan);
    exchange(
        &mut pe,
        &mut dr,
        200,
        Duration::from_millis(2),
        || {},
        Duration::from_secs(20),
    )
    .await;
    let stats = (pe.stats().await.unwrap(), dr.stats().await.unwrap());
    pe.close().await;
    dr.close().await;
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_or_doubled_and_order_kept_under_drop() {
    let (pe, dr) = with_plan("faults-drop", "drop=0.25").await;
    assert!(
        pe.faults.dropped > 10 && dr.faults.dropped > 10,
        "{:?} {:?}",
        pe.faults,
        dr.faults
    );
    assert!(pe.sender.retransmitted + pe.sender.skips_sent > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_or_doubled_and_order_kept_under_duplication() {
    let (pe, dr) = with_plan("faults-dup", "dup=0.4").await;
    assert!(pe.faults.duplicated > 10);
    assert!(dr.rejected(twinlink_link::Rejection::Replayed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_or_doubled_and_order_kept_under_reordering_and_delay() {
    let (pe, _) = with_plan(
        "faults-reorder",
        "reorder=0.4,reorder_ms=15,delay_ms=10,jitter_ms=10",
    )
    .await;
    assert!(pe.faults.reordered > 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_or_doubled_and_order_kept_under_throttling() {
    let (pe, _) = with_plan("faults-throttle", "rate_kbps=256,queue_kb=64").await;
    assert!(pe.faults.delivered > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_is_noticed_within_a_second_and_both_catch_up_after_it() {
    let (pe_cfg, dr_cfg) = configs("faults-cut");
    let (mut pe, mut dr) = open_pair(pe_cfg, dr_cfg).await;
    let cut = Duration::from_millis(2500);
    let (pe_faults, dr_faults) = (pe.faults().clone(), dr.faults().clone());
    let mut cut_at = None;
    let (at_pe, at_dr) = exchange(
        &mut pe,
        &mut dr,
        150,
        Duration::from_millis(20),
        || {
            pe_faults.cut_for(cut);
            dr_faults.cut_for(cut);
            cut_at = Some(Instant::now());
        },
        Duration::from_secs(20),
    )
    .await;
    let cut_at = cut_at.unwrap();
    for (who, seen) in [("PE", &at_pe), ("DR", &at_dr)] {
        let down = seen
            .downs
            .first()
            .unwrap_or_else(|| panic!("{who} never noticed the cut"));
        let noticed = down.duration_since(cut_at);
        assert!(
            noticed < Duration::from_secs(1),
            "{who} noticed the cut after {noticed:?}"
        );
        assert!(
            seen.ups.iter().any(|u| *u > *down),
            "{who} never saw its peer again"
        );
    }
    pe.close().await;
    dr.close().await;
}

/// The vehicle's radio alone: its end's outbound and inbound fault layers (loss, delay, a
/// bottleneck, then a cut) and nothing on the DR's end. Both directions suffer, nothing is
/// lost or doubled, and both ends notice the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_radio_at_the_vehicle_alone_acts_both_ways_without_loss() {
    let (pe_cfg, dr_cfg) = configs("faults-radio");
    let plan: FaultPlan = "drop=0.15,delay_ms=15,rate_kbps=2000".parse().unwrap();
    pe_cfg.faults.set_plan(plan.clone());
    pe_cfg.inbound_faults.set_plan(plan);
    let (out, inbound) = (pe_cfg.faults.clone(), pe_cfg.inbound_faults.clone());
    let (mut pe, mut dr) = open_pair(pe_cfg, dr_cfg).await;
    let cut = Duration::from_millis(2000);
    let (radio_out, radio_in) = (out.clone(), inbound.clone());
    let (at_pe, at_dr) = exchange(
        &mut pe,
        &mut dr,
        120,
        Duration::from_millis(20),
        || {
            radio_out.cut_for(cut);
            radio_in.cut_for(cut);
        },
        Duration::from_secs(30),
    )
    .await;
    for (who, seen) in [("PE", &at_pe), ("DR", &at_dr)] {
        assert!(!seen.downs.is_empty(), "{who} never noticed the cut");
    }
    let (o, i) = (out.stats(), inbound.stats());
    assert!(o.dropped > 0 && o.cut > 0, "outbound {o:?}");
    assert!(i.dropped > 0 && i.cut > 0, "inbound {i:?}");
    assert!(i.delivered > 0, "inbound {i:?}");
    pe.close().await;
    dr.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_leaves_is_noticed_within_a_second() {
    let (pe_cfg, dr_cfg) = configs("presence-leave");
    let (mut pe, dr) = open_pair(pe_cfg, dr_cfg).await;
    let left = Instant::now();
    dr.close().await;
    let deadline = left + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(deadline.into(), pe.recv()).await {
            Ok(Some(LinkEvent::PeerDown { reason })) => {
                assert!(
                    left.elapsed() < Duration::from_secs(1),
                    "noticed after {:?} ({reason})",
                    left.elapsed()
                );
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("the PE did not notice: {other:?}"),
        }
    }
    pe.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_and_forward_keeps_priorities_coalesces_and_counts_drops_across_an_outage() {
    let (pe_cfg, dr_cfg) = configs("store-forward");
    let mut pe_cfg = pe_cfg;
    pe_cfg.outbox_messages = 8;
    let (mut pe, mut dr) = open_pair(pe_cfg, dr_cfg).await;
    pe.faults().cut_for(Duration::from_secs(60));
    dr.faults().cut_for(Duration::from_secs(60));
    // Wait until the PE knows the DR is gone, so that everything waits in the outbox.
    loop {
        match tokio::time::timeout(Duration::from_secs(3), pe.recv()).await {
            Ok(Some(LinkEvent::PeerDown { .. })) => break,
            Ok(Some(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    let msg = |stream: &str, priority, n: u64| Message {
        stream: stream.into(),
        priority,
        type_name: "test/Numbered".into(),
        created_us: now_us(),
        payload: n.to_le_bytes().to_vec(),
    };
    for n in 0..50 {
        // Own state is coalesced to the newest; objects overflow the 8-message outbox.
        pe.send(msg("state", Priority::OwnState, n)).unwrap();
        pe.send(msg(&format!("objects/{n}"), Priority::Objects, 1000 + n))
            .unwrap();
    }
    pe.send(msg("hazard/1", Priority::Hazard, 5000)).unwrap();
    let stats = pe.stats().await.unwrap();
    assert_eq!(stats.outbox.queued, 8);
    assert_eq!(stats.outbox.coalesced, 49);
    // 50 objects + 1 hazard + 1 state into 8 places: 44 objects dropped, all counted.
    assert_eq!(stats.outbox.dropped, [0, 0, 44, 0]);
    pe.faults().heal();
    dr.faults().heal();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 8 {
        match tokio::time::timeout_at(deadline.into(), dr.recv()).await {
            Ok(Some(LinkEvent::Message(d))) => {
                got.push((d.message.stream.clone(), number(&d.message)))
            }
            Ok(Some(_)) => {}
            other => panic!("{other:?}; got {got:?}"),
        }
    }
    assert_eq!(
        got[0],
        ("state".to_string(), 49),
        "own state first, and only the newest"
    );
    assert_eq!(got[1], ("hazard/1".to_string(), 5000), "then hazards");
    let objects: Vec<u64> = got[2..].iter().map(|(_, n)| *n).collect();
    assert_eq!(
        objects,
        (1044..1050).collect::<Vec<_>>(),
        "then the newest objects, in order"
    );
    pe.close().await;
    dr.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_without_loss() {
    let (mut pe_cfg, dr_cfg) = configs("rekey");
    pe_cfg.rekey_after = Duration::from_millis(300);
    let (mut pe, mut dr) = open_pair(pe_cfg, dr_cfg).await;
    exchange(
        &mut pe,
        &mut dr,
        150,
        Duration::from_millis(10),
        || {},
        Duration::from_secs(10),
    )
    .await;
    let (p, d) = (pe.stats().await.unwrap(), dr.stats().await.unwrap());
    assert!(
        p.rekeys >= 3 && d.rekeys >= 3,
        "PE {} DR {} rotations",
        p.rekeys,
        d.rekeys
    );
    pe.close().await;
    dr.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_megabyte_message_and_a_1_hz_stream_pass_without_loss_or_outliers() {
    let (pe_cfg, dr_cfg) = configs("big-and-slow");
    let (mut pe, mut dr) = open_pair(pe_cfg, dr_cfg).await;
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    pe.send(Message {
        stream: "blob".into(),
        priority: Priority::Info,
        type_name: "test/Blob".into(),
        created_us: now_us(),
        payload: big.clone(),
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline.into(), dr.recv()).await {
            Ok(Some(LinkEvent::Message(d))) => {
                assert_eq!(d.message.payload, big);
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("the 1 MB message did not arrive: {other:?}"),
        }
    }
    // 1 Hz: each message is answered by the DR; the round trip is timed at the PE.
    let mut rtts = BTreeMap::new();
    for i in 0..4u64 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let start = Instant::now();
        pe.send(numbered(i, Priority::OwnState)).unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(2), dr.recv()).await {
                Ok(Some(LinkEvent::Message(d))) => {
                    assert_eq!(number(&d.message), i);
                    dr.send(numbered(i, Priority::OwnState)).unwrap();
                    break;
                }
                Ok(Some(_)) => {}
                other => panic!("message {i} did not arrive: {other:?}"),
            }
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(2), pe.recv()).await {
                Ok(Some(LinkEvent::Message(d))) => {
                    assert_eq!(number(&d.message), i);
                    break;
                }
                Ok(Some(_)) => {}
                other => panic!("answer {i} did not arrive: {other:?}"),
            }
        }
        rtts.insert(i, start.elapsed());
    }
    // Idle seconds between messages must not add latency (no batching or wake-up delay):
    // every round trip stays within a few milliseconds even in a debug build.
    for (i, rtt) in &rtts {
        assert!(
            *rtt < Duration::from_millis(20),
            "round trip {i} took {rtt:?}: {rtts:?}"
        );
    }
    let (p, d) = (pe.stats().await.unwrap(), dr.stats().await.unwrap());
    assert_eq!(p.rejected_total() + d.rejected_total(), 0);
    // Exactly once each: the blob and four numbers (a retransmission the receiver drops as
    // a duplicate is allowed: a loaded debug build may take longer than the timer).
    assert_eq!(d.receiver.delivered, 5);
    assert_eq!(p.receiver.delivered, 4);
    pe.close().await;
    dr.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_dr_gets_the_latest_state_and_numbering_goes_on() {
    let (pe_cfg, dr_cfg) = configs("dr-restart");
    let dr_cfg2 = dr_cfg.clone();
    let (pe, mut dr) = open_pair(pe_cfg, dr_cfg).await;
    let msg = |stream: &str, n: u64| Message {
        stream: stream.into(),
        priority: Priority::OwnState,
        type_name: "test/Numbered".into(),
        created_us: now_us(),
        payload: n.to_le_bytes().to_vec(),
    };
    for n in 0..20 {
        pe.send(msg("state", n)).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut last = None;
    while last != Some(19) {
        match tokio::time::timeout(Duration::from_secs(5), dr.recv()).await {
            Ok(Some(LinkEvent::Message(d))) => last = Some(number(&d.message)),
            Ok(Some(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    dr.close().await;
    // A new DR process with no memory of the PE.
    let mut dr = Link::open(dr_cfg2).await.unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.is_empty() {
        match tokio::time::timeout_at(deadline.into(), dr.recv()).await {
            Ok(Some(LinkEvent::Message(d))) => got.push(number(&d.message)),
            Ok(Some(_)) => {}
            other => panic!("the new DR got nothing: {other:?}"),
        }
    }
    assert_eq!(got, vec![19], "the new DR is given the latest state");
    pe.send(msg("state", 20)).unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), dr.recv()).await {
            Ok(Some(LinkEvent::Message(d))) => {
                assert_eq!(number(&d.message), 20);
                assert!(d.seq >= 20, "numbering continues: {}", d.seq);
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    pe.close().await;
    dr.close().await;
}
