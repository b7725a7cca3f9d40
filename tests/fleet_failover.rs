//! A fleet: three DR host processes over one PostgreSQL database, behind two Zenoh routers,
//! with vehicles connected through the second router. The host serving the most vehicles
//! is killed with SIGKILL while they send; its twins must move to the survivors within
//! 5 s, with every message a vehicle saw acknowledged in the database, each exactly once,
//! and each twin's audit chain intact across the hosts it ran on. Then an operator drains
//! one survivor with `twinctl`: its twins move to the last host the same way.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, provision, start_router, wait_for, work_dir, Postgres};
use twin_dr_host::audit;
use twin_dr_host::fleet::SharedStore;
use twinlink_launch::{workspace_binary, Supervised};
use twinlink_link::link::now_us;
use twinlink_link::minimal::{ros_time, to_link};
use twinlink_link::{KeyMaterial, Link, LinkConfig, Priority, Role, VehicleId, ZenohSettings};
use twinlink_msgs::twin_msgs::msg::VehicleState;

const SHARDS: &str = "8";
const OPERATOR_TOKEN: &str = "fleet-operator-token-0123456789";

struct Host {
    name: String,
    admin: String,
    process: Option<Supervised>,
}

fn start_host(dir: &Path, name: &str, db: &str, router: &str) -> Host {
    let (admin, process) = common::start_fleet_host(
        dir,
        name,
        db,
        SHARDS,
        &[router.to_string()],
        OPERATOR_TOKEN,
        &["--rescan-ms", "200"],
    );
    Host {
        name: name.into(),
        admin,
        process: Some(process),
    }
}

impl Host {
    fn metric(&self, name: &str) -> f64 {
        common::metric(&self.admin, OPERATOR_TOKEN, name, "")
    }
}

fn twinctl(args: &[&str]) -> (bool, String) {
    let out = Command::new(workspace_binary("twinctl").unwrap())
        .args(["--token", OPERATOR_TOKEN])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn state(vehicle: &str, t_us: u64, x: f64) -> VehicleState {
    let mut s = VehicleState::default();
    s.header.stamp = ros_time(t_us);
    s.header.frame_id = "map".into();
    s.vehicle_id = vehicle.into();
    s.pose.position.x = x;
    s.pose.position.y = 3.5;
    s.pose.orientation.w = 1.0;
    s.twist.linear.x = 20.0;
    s.lane_index = 1;
    s.length = 4.5;
    s.width = 1.9;
    s
}

#[test]
fn a_killed_hosts_twins_move_to_the_survivors_losing_nothing_acknowledged() {
    let dir = work_dir("fleet_failover");
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    std::fs::write(
        dir.join("tokens"),
        format!("operator ops {OPERATOR_TOKEN}\n"),
    )
    .unwrap();
    let db = Postgres::start("failover");
    let vehicles: Vec<String> = (1..=6).map(|i| format!("veh-f{i}")).collect();
    for v in &vehicles {
        provision(&dir.join("keys"), v);
    }
    let r1 = format!("tcp/127.0.0.1:{}", free_port());
    let r2 = format!("tcp/127.0.0.1:{}", free_port());
    let _router1 = start_router(&dir, "router1", &r1, None);
    let _router2 = start_router(&dir, "router2", &r2, Some(&r1));
    let mut hosts = vec![
        start_host(&dir, "host-a", &db.url, &r1),
        start_host(&dir, "host-b", &db.url, &r1),
        start_host(&dir, "host-c", &db.url, &r2),
    ];
    // The shards settle: every one owned, by three hosts.
    wait_for(
        "the shards spread over the hosts",
        Duration::from_secs(20),
        || {
            let owned: Vec<f64> = hosts
                .iter()
                .map(|h| h.metric("twinlink_dr_owned_shards"))
                .collect();
            owned.iter().sum::<f64>() == 8.0 && owned.iter().all(|&n| n > 0.0)
        },
    );
    let store = SharedStore::open_reader(&db.url).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut links: Vec<Link> = vehicles
        .iter()
        .map(|v| {
            let id = VehicleId::new(v).unwrap();
            let keys =
                KeyMaterial::load(&dir.join("keys").join(format!("{v}.pe.key")), &id, Role::Pe)
                    .unwrap();
            rt.block_on(Link::open(LinkConfig::new(
                keys,
                ZenohSettings::client_of(&r2),
            )))
            .unwrap()
        })
        .collect();
    for link in &mut links {
        rt.block_on(link.wait_peer_up(Duration::from_secs(20)))
            .unwrap();
    }
    // Each message on a stream of its own, so that none supersedes another.
    let t0 = now_us();
    let send = |links: &[Link], k: u64| {
        for (link, v) in links.iter().zip(&vehicles) {
            let t = t0 + k * 20_000;
            let m = to_link(
                &format!("log/{k}"),
                Priority::Info,
                &state(v, t, k as f64),
                t,
            );
            link.send(m).unwrap();
        }
    };
    let total = 400u64;
    for k in 0..100 {
        send(&links, k);
        std::thread::sleep(Duration::from_millis(20));
    }
    // The victim: the host serving the most of these vehicles.
    let owners: Vec<String> = vehicles
        .iter()
        .map(|v| store.owner_of(v).unwrap().expect("every shard owned"))
        .collect();
    let victim_name = ["host-a", "host-b", "host-c"]
        .into_iter()
        .max_by_key(|h| owners.iter().filter(|o| o == h).count())
        .unwrap()
        .to_string();
    let moved: Vec<usize> = (0..vehicles.len())
        .filter(|&i| owners[i] == victim_name)
        .collect();
    assert!(!moved.is_empty());
    let acked = |links: &[Link]| -> Vec<u64> {
        links
            .iter()
            .map(|l| rt.block_on(l.stats()).unwrap().sender.acknowledged)
            .collect()
    };
    let victim = hosts.iter().position(|h| h.name == victim_name).unwrap();
    hosts[victim].process.take().unwrap().kill();
    let killed_at = Instant::now();
    let acked_at_kill = acked(&links);
    // What the vehicles saw acknowledged is in the database, though the host died.
    for (i, v) in vehicles.iter().enumerate() {
        let stored = store.messages(v, 0).unwrap();
        assert!(
            stored.len() as u64 >= acked_at_kill[i],
            "{v}: {} stored, {} acknowledged",
            stored.len(),
            acked_at_kill[i]
        );
    }
    // The vehicles keep sending; the moved ones are acknowledged again by a survivor.
    let mut k = 100;
    let mut recovered: Vec<Option<Duration>> = vec![None; vehicles.len()];
    while recovered
        .iter()
        .enumerate()
        .any(|(i, r)| moved.contains(&i) && r.is_none())
    {
        assert!(
            killed_at.elapsed() < Duration::from_secs(15),
            "the twins of {victim_name} did not move: {recovered:?}"
        );
        if k < 250 {
            send(&links, k);
            k += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
        let now = acked(&links);
        for &i in &moved {
            if recovered[i].is_none() && now[i] > acked_at_kill[i] {
                recovered[i] = Some(killed_at.elapsed());
            }
        }
    }
    let worst = recovered.iter().flatten().max().copied().unwrap();
    println!("failover: {victim_name} killed; its {} twins acknowledging again after {recovered:?} (worst {worst:?})", moved.len());
    assert!(worst < Duration::from_secs(5), "failover took {worst:?}");
    for v in moved.iter().map(|&i| &vehicles[i]) {
        let owner = store.owner_of(v).unwrap().unwrap();
        assert_ne!(owner, victim_name, "{v} moved");
    }
    let all_acknowledged = |links: &[Link]| {
        wait_for(
            "every message acknowledged",
            Duration::from_secs(30),
            || {
                links.iter().all(|l| {
                    let s = rt.block_on(l.stats()).unwrap();
                    s.sender.in_flight == 0 && s.outbox.queued == 0
                })
            },
        )
    };
    for k in k..300 {
        send(&links, k);
    }
    all_acknowledged(&links);

    // The operator's view: two live hosts, the killed one gone.
    let alive: Vec<usize> = (0..hosts.len())
        .filter(|&i| hosts[i].process.is_some())
        .collect();
    let (ok, table) = twinctl(&["dr", "hosts", "--admin", &hosts[alive[0]].admin]);
    assert!(ok, "{table}");
    assert!(
        table.starts_with("fleet of 3 hosts (2 live), 8 shards"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&victim_name) && l.contains(" gone ")),
        "{table}"
    );
    // Draining one survivor moves its twins to the last host.
    let (drained, last) = (alive[0], alive[1]);
    let (ok, out) = twinctl(&["dr", "drain", "--admin", &hosts[drained].admin]);
    assert!(ok, "{out}");
    for k in 300..total {
        send(&links, k);
        std::thread::sleep(Duration::from_millis(10));
    }
    wait_for(
        "the drained host's shards moved",
        Duration::from_secs(15),
        || {
            hosts[drained].metric("twinlink_dr_owned_shards") == 0.0
                && hosts[last].metric("twinlink_dr_owned_shards") == 8.0
        },
    );
    all_acknowledged(&links);
    // A twin asked for at the drained host is answered by the one serving it.
    let (ok, status) = twinctl(&[
        "dr",
        "status",
        &vehicles[0],
        "--admin",
        &hosts[drained].admin,
    ]);
    assert!(
        ok && status.starts_with(&format!("twin of {}", vehicles[0])),
        "{status}"
    );
    let (_, table) = twinctl(&["dr", "hosts", "--admin", &hosts[last].admin]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&hosts[drained].name) && l.contains(" draining ")),
        "{table}"
    );
    for link in links {
        rt.block_on(link.close());
    }
    // Every message of every vehicle in the database, once.
    for v in &vehicles {
        let stored = store.messages(v, 0).unwrap();
        let mut streams: Vec<u64> = stored
            .iter()
            .map(|m| m.stream.trim_start_matches("log/").parse().unwrap())
            .collect();
        streams.sort_unstable();
        assert_eq!(
            streams,
            (0..total).collect::<Vec<_>>(),
            "{v}: each message exactly once"
        );
    }
    // Each twin's history goes on in one chain across the hosts it ran on.
    for v in &vehicles {
        let report = audit::verify(
            &dir.join("audit").join(v),
            &VehicleId::new(v).unwrap(),
            None,
        )
        .unwrap();
        assert!(report.is_intact(), "{v}: {report:?}");
    }
    for h in &mut hosts {
        if let Some(mut p) = h.process.take() {
            p.terminate();
            let _ = p.wait_timeout(Duration::from_secs(10));
        }
    }
}

mod fencing {
    use super::*;
    use std::sync::Arc;
    use twin_dr_host::fleet::{host_key, shard_of, FleetConfig, OwnershipEvent};
    use twin_dr_host::store::{StoredMessage, WriteOp};

    fn join(
        db: &Postgres,
        name: &str,
        shards: u32,
    ) -> Result<
        (
            SharedStore,
            tokio::sync::mpsc::UnboundedReceiver<OwnershipEvent>,
        ),
        twin_dr_host::store::StoreError,
    > {
        SharedStore::join(FleetConfig {
            url: db.url.clone(),
            host_name: name.into(),
            admin: String::new(),
            shards,
            retention: 1000,
        })
    }

    fn next(events: &mut tokio::sync::mpsc::UnboundedReceiver<OwnershipEvent>) -> OwnershipEvent {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(e) = events.try_recv() {
                return e;
            }
            assert!(Instant::now() < deadline, "no ownership event");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn op(vehicle: &str, seq: u64) -> WriteOp {
        let (notify, _) = tokio::sync::mpsc::unbounded_channel();
        WriteOp {
            vehicle: Arc::from(vehicle),
            incarnation: 7,
            recommendation_seq: seq,
            message: StoredMessage {
                seq,
                stream: "state".into(),
                type_name: "twin_msgs/msg/VehicleState".into(),
                created_us: 1000 + seq,
                payload: vec![seq as u8; 4],
            },
            notify,
        }
    }

    /// A vehicle of each of the 4 shards.
    fn one_per_shard() -> Vec<String> {
        let mut out = vec![String::new(); 4];
        for i in 0.. {
            let v = format!("veh-{i}");
            let s = shard_of(&v, 4) as usize;
            if out[s].is_empty() {
                out[s] = v;
            }
            if out.iter().all(|v| !v.is_empty()) {
                return out;
            }
        }
        unreachable!()
    }

    #[test]
    fn a_host_writes_only_the_shards_it_holds() {
        let db = Postgres::start("fencing");
        let vehicles = one_per_shard();
        let (a, mut a_events) = join(&db, "a", 4).unwrap();
        let OwnershipEvent::Gained(mut first) = next(&mut a_events) else {
            panic!("a should take every shard")
        };
        first.sort_unstable();
        assert_eq!(first, vec![0, 1, 2, 3]);
        let durable = a
            .commit(&[op(&vehicles[0], 0), op(&vehicles[1], 0)])
            .unwrap();
        assert_eq!(durable.len(), 2);
        // A second host of the same name is refused; so is another shard count.
        let e = join(&db, "a", 4).err().unwrap().to_string();
        assert!(e.contains("in use"), "{e}");
        let e = join(&db, "c", 8).err().unwrap().to_string();
        assert!(e.contains("4 shards") && e.contains("--shards"), "{e}");
        // b joins: a gives two shards back once their twins stopped; b takes them.
        let (b, mut b_events) = join(&db, "b", 4).unwrap();
        let OwnershipEvent::Release(given) = next(&mut a_events) else {
            panic!("a should give shards back")
        };
        assert_eq!(given.len(), 2);
        // Until a says its twins stopped, the shards are a's: b gets nothing yet.
        std::thread::sleep(Duration::from_millis(700));
        assert!(b_events.try_recv().is_err());
        a.released(given.clone());
        let OwnershipEvent::Gained(taken) = next(&mut b_events) else {
            panic!("b should take the shards")
        };
        let sorted = |mut v: Vec<u32>| {
            v.sort_unstable();
            v
        };
        assert_eq!(sorted(taken), sorted(given.clone()));
        // a's writes to a shard it gave back are refused (not written, not reported).
        let moved = &vehicles[given[0] as usize];
        let kept = (0..4u32).find(|s| !given.contains(s)).unwrap();
        let stays = &vehicles[kept as usize];
        let durable = a.commit(&[op(moved, 1), op(stays, 1)]).unwrap();
        assert_eq!(durable, vec![(Arc::from(stays.as_str()), 1)]);
        assert!(b.messages(moved, 1).unwrap().is_empty(), "fenced");
        assert_eq!(b.messages(stays, 1).unwrap().len(), 1);
        assert_eq!(b.owner_of(moved).unwrap().as_deref(), Some("b"));
        // a's database session is cut: a loses everything at once, b takes it over, and
        // a's writes go nowhere.
        let out = Command::new("psql")
            .arg(&db.url)
            .arg("-qtAc")
            .arg(format!(
                "select pg_terminate_backend(pid) from pg_locks where locktype = 'advisory' and objid = {} and objsubid = 2",
                host_key("a")
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = a.commit(&[op(stays, 2)]);
        assert!(r.as_ref().map_or(true, |d| d.is_empty()), "{r:?}");
        let mut lost = false;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !lost {
            assert!(
                Instant::now() < deadline,
                "a never learned it lost its shards"
            );
            match a_events.try_recv() {
                Ok(OwnershipEvent::Lost(shards)) => {
                    assert_eq!(shards.len(), 2);
                    lost = true;
                }
                Ok(other) => panic!("{other:?}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        assert!(b.messages(stays, 2).unwrap().is_empty());
        // a's host reconnects as a member of the fleet, and the shards settle at two each
        // (each host giving back what it is told to, as a host's loop does).
        let deadline = Instant::now() + Duration::from_secs(15);
        while !(a.view().shards.len() == 2 && b.view().shards.len() == 2) {
            assert!(Instant::now() < deadline, "{:?} {:?}", a.view(), b.view());
            for (store, events) in [(&a, &mut a_events), (&b, &mut b_events)] {
                while let Ok(e) = events.try_recv() {
                    if let OwnershipEvent::Release(shards) = e {
                        store.released(shards);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(a.view().connected);
    }
}
