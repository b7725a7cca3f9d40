//! Many link ends on one Zenoh session through a [`LinkHub`]: a DR host's side and a fleet
//! of vehicles' side, each with one set of wildcard declarations, over loopback TCP.

use std::collections::BTreeMap;
use std::time::Duration;

use twinlink_link::hub::HubEvent;
use twinlink_link::link::now_us;
use twinlink_link::scenario::loopback_endpoint;
use twinlink_link::{
    KeyMaterial, Link, LinkConfig, LinkEnd, LinkEvent, LinkHub, Message, Priority, Role, VehicleId,
    ZenohSettings,
};

fn numbered(i: u64) -> Message {
    Message {
        stream: format!("n/{i}"),
        priority: Priority::Objects,
        type_name: "test/Numbered".into(),
        created_us: now_us(),
        payload: i.to_le_bytes().to_vec(),
    }
}

fn number(m: &Message) -> u64 {
    u64::from_le_bytes(m.payload[..8].try_into().unwrap())
}

struct Fleet {
    vehicles: Vec<VehicleId>,
    pe: Vec<LinkConfig>,
    dr: Vec<LinkConfig>,
}

fn fleet(prefix: &str, n: usize) -> Fleet {
    let endpoint = loopback_endpoint().unwrap();
    let tag = rand::random::<u32>();
    let mut f = Fleet {
        vehicles: vec![],
        pe: vec![],
        dr: vec![],
    };
    for i in 0..n {
        let v = VehicleId::new(&format!("{prefix}-{tag}-{i}")).unwrap();
        let (pe, dr) = KeyMaterial::generate_pair(&v).unwrap();
        f.pe.push(LinkConfig::new(
            pe,
            ZenohSettings::peer_connecting(&endpoint),
        ));
        f.dr.push(LinkConfig::new(
            dr,
            ZenohSettings::peer_listening(&endpoint),
        ));
        f.vehicles.push(v);
    }
    f
}

async fn session(settings: &ZenohSettings) -> zenoh::Session {
    zenoh::open(settings.to_config().unwrap()).await.unwrap()
}

/// Receives from a [`LinkEnd`] until `count` numbered messages arrived; answers each with
/// the same number (the acknowledgement rides on the answer).
async fn echo(end: &mut LinkEnd, count: usize) -> Vec<u64> {
    let mut got = vec![];
    while got.len() < count {
        match tokio::time::timeout(Duration::from_secs(20), end.recv()).await {
            Ok(Some(LinkEvent::Message(d))) => {
                let n = number(&d.message);
                got.push(n);
                end.send(numbered(n));
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("the DR link end stopped"),
            Err(_) => panic!("the DR link end got {} of {count} messages", got.len()),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dr_hub_serves_many_link_ends_and_each_gets_only_its_own_vehicle() {
    const VEHICLES: usize = 6;
    const MESSAGES: u64 = 40;
    let f = fleet("hub", VEHICLES);
    let dr_session = session(&f.dr[0].zenoh).await;
    let dr_hub = LinkHub::declare(dr_session.clone(), Role::Dr)
        .await
        .unwrap();
    let mut watch = dr_hub.watch();
    let pe_session = session(&f.pe[0].zenoh).await;
    let pe_hub = LinkHub::declare(pe_session.clone(), Role::Pe)
        .await
        .unwrap();

    // Half the vehicles run as tasks (Link), half inline (LinkEnd); all on the PE hub.
    let mut dr_tasks = vec![];
    for config in f.dr.clone() {
        let mut end = LinkEnd::open_in(&dr_hub, config).await.unwrap();
        dr_tasks.push(tokio::spawn(async move {
            end.wait_peer_up(Duration::from_secs(20)).await.unwrap();
            let got = echo(&mut end, MESSAGES as usize).await;
            let stats = end.stats();
            // Keep driving the end (acknowledgements, retransmissions, heartbeats) until the
            // vehicle has acknowledged every answer: a fixed wait is too short on a loaded
            // machine, and an inline end does nothing while nobody polls it.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while end.stats().sender.in_flight > 0 && tokio::time::Instant::now() < deadline {
                let _ = tokio::time::timeout(Duration::from_millis(100), end.recv()).await;
            }
            end.close().await;
            (got, stats)
        }));
    }
    let mut pe_tasks = vec![];
    for (i, config) in f.pe.clone().into_iter().enumerate() {
        let hub = pe_hub.clone();
        pe_tasks.push(tokio::spawn(async move {
            let mut got = vec![];
            if i % 2 == 0 {
                let mut link = Link::open_in(&hub, config).await.unwrap();
                link.wait_peer_up(Duration::from_secs(20)).await.unwrap();
                for n in 0..MESSAGES {
                    link.send(numbered(n)).unwrap();
                }
                while (got.len() as u64) < MESSAGES {
                    match tokio::time::timeout(Duration::from_secs(20), link.recv()).await {
                        Ok(Some(LinkEvent::Message(d))) => got.push(number(&d.message)),
                        Ok(Some(_)) => {}
                        other => panic!("vehicle {i}: {} answers, then {other:?}", got.len()),
                    }
                }
                link.close().await;
            } else {
                let mut end = LinkEnd::open_in(&hub, config).await.unwrap();
                end.wait_peer_up(Duration::from_secs(20)).await.unwrap();
                for n in 0..MESSAGES {
                    end.send(numbered(n));
                }
                while (got.len() as u64) < MESSAGES {
                    match tokio::time::timeout(Duration::from_secs(20), end.recv()).await {
                        Ok(Some(LinkEvent::Message(d))) => got.push(number(&d.message)),
                        Ok(Some(_)) => {}
                        other => panic!("vehicle {i}: {} answers, then {other:?}", got.len()),
                    }
                }
                end.close().await;
            }
            got
        }));
    }
    let expected: Vec<u64> = (0..MESSAGES).collect();
    for (i, t) in pe_tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), expected, "vehicle {i}'s answers");
    }
    for (i, t) in dr_tasks.into_iter().enumerate() {
        let (got, stats) = t.await.unwrap();
        assert_eq!(got, expected, "twin {i}: in order, exactly once");
        assert_eq!(stats.vehicle, f.vehicles[i].as_str());
        assert_eq!(
            stats.rejected_total(),
            0,
            "twin {i} refused frames: {stats:?}"
        );
    }
    let stats = dr_hub.stats();
    assert_eq!(
        stats.registered, 0,
        "every link end left the hub: {stats:?}"
    );
    assert_eq!(stats.bad_keys, 0);

    // Every vehicle's presence was reported to the watcher, and its departure too.
    let mut presence: BTreeMap<String, Vec<bool>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while presence.values().filter(|v| v.ends_with(&[false])).count() < VEHICLES {
        match tokio::time::timeout_at(deadline, watch.recv()).await {
            Ok(Some(HubEvent::Presence { vehicle, present })) => presence
                .entry(vehicle.to_string())
                .or_default()
                .push(present),
            Ok(Some(HubEvent::Unrouted { .. })) => {}
            other => panic!("presence so far {presence:?}, then {other:?}"),
        }
    }
    for v in &f.vehicles {
        assert_eq!(presence.get(v.as_str()), Some(&vec![true, false]), "{v}");
    }
    pe_session.close().await.unwrap();
    dr_session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_for_a_vehicle_without_a_link_end_is_reported_and_the_link_comes_up_once_it_registers(
) {
    let f = fleet("unrouted", 1);
    let dr_session = session(&f.dr[0].zenoh).await;
    let dr_hub = LinkHub::declare(dr_session.clone(), Role::Dr)
        .await
        .unwrap();
    let mut watch = dr_hub.watch();
    let mut pe = Link::open(f.pe[0].clone()).await.unwrap();
    // The vehicle appears and tries to handshake; no twin is registered yet.
    let mut saw_presence = false;
    let mut saw_unrouted = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !(saw_presence && saw_unrouted) {
        match tokio::time::timeout_at(deadline, watch.recv()).await {
            Ok(Some(HubEvent::Presence {
                vehicle,
                present: true,
            })) => {
                assert_eq!(vehicle, f.vehicles[0]);
                saw_presence = true;
            }
            Ok(Some(HubEvent::Unrouted { vehicle })) => {
                assert_eq!(vehicle, f.vehicles[0]);
                saw_unrouted = true;
            }
            other => panic!("presence {saw_presence}, unrouted {saw_unrouted}, then {other:?}"),
        }
    }
    assert!(dr_hub.is_present(&f.vehicles[0]));
    assert!(dr_hub.stats().unrouted_queries >= 1);
    // The twin wakes: its link end registers and the vehicle's next handshake meets it.
    let mut dr = LinkEnd::open_in(&dr_hub, f.dr[0].clone()).await.unwrap();
    let (pe_up, dr_up) = tokio::join!(
        pe.wait_peer_up(Duration::from_secs(15)),
        dr.wait_peer_up(Duration::from_secs(15))
    );
    pe_up.unwrap();
    dr_up.unwrap();
    pe.send(numbered(7)).unwrap();
    let got = echo(&mut dr, 1).await;
    assert_eq!(got, vec![7]);
    // A link end of the wrong role is refused by the hub.
    let err = match LinkEnd::open_in(&dr_hub, f.pe[0].clone()).await {
        Ok(_) => panic!("a PE link end was accepted by a DR hub"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("cannot use a hub"), "{err}");
    pe.close().await;
    dr.close().await;
    dr_session.close().await.unwrap();
}
