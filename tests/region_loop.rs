//! The regional loop with real processes on loopback: twelve vehicles' links to their twins
//! on a DR host, the twins contributing their census (their vehicles consent to traffic
//! data for the fleet), the regional service aggregating it into a k-anonymous tile, and
//! the tile coming back to every twin on the route by name. A thirteenth vehicle that set
//! no policy contributes nothing.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, work_dir};
use twinlink_launch::{workspace_binary, Supervised};
use twinlink_link::link::now_us;
use twinlink_link::minimal::{ros_time, to_link};
use twinlink_link::{KeyMaterial, Link, LinkConfig, Priority, VehicleId, ZenohSettings};
use twinlink_msgs::twin_msgs::msg::{
    RegionalTraffic, SharedObservation, SharingPolicy, SharingRule, VehicleState,
};

const CONSENTING: usize = 12;

fn log(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(format!("{name}.log"))).unwrap()
}

fn traffic_consent() -> SharingPolicy {
    SharingPolicy {
        rules: vec![SharingRule {
            category: SharedObservation::CATEGORY_TRAFFIC,
            audience: SharingRule::AUDIENCE_SAME_FLEET,
            spatial_precision: 10.0,
            max_age: 10.0,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn state(vehicle: &str, x: f64) -> VehicleState {
    let mut s = VehicleState {
        vehicle_id: vehicle.into(),
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
    s.twist.linear.x = 25.0;
    s
}

#[test]
fn twins_census_becomes_a_k_anonymous_tile_that_comes_back_to_them() {
    let dir = work_dir("region_loop");
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    let (region_port, host_port) = (free_port(), free_port());
    let region_endpoint = format!("tcp/127.0.0.1:{region_port}");
    let host_endpoint = format!("tcp/127.0.0.1:{host_port}");
    let admin = format!("127.0.0.1:{}", free_port());
    let mut c = Command::new(workspace_binary("twin-region-service").unwrap());
    c.args([
        "--listen",
        &region_endpoint,
        "--window-s",
        "2",
        "--metrics",
        "off",
    ])
    .env("RUST_LOG", "info,zenoh=warn")
    .stdout(Stdio::null())
    .stderr(log(&dir, "region"));
    let _region = Supervised::spawn("twin-region-service", c).unwrap();
    let vehicles: Vec<String> = (0..=CONSENTING).map(|i| format!("veh-{i:02}")).collect();
    let mut pe_keys = Vec::new();
    for v in &vehicles {
        let id = VehicleId::new(v).unwrap();
        let (pe, dr) = KeyMaterial::generate_pair(&id).unwrap();
        dr.save(&dir.join("keys").join(format!("{v}.dr.key")), false)
            .unwrap();
        pe_keys.push(pe);
    }
    let mut c = Command::new(workspace_binary("twin-dr-host").unwrap());
    c.arg("--keys")
        .arg(dir.join("keys"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args([
            "--listen",
            &host_endpoint,
            "--connect",
            &region_endpoint,
            "--admin",
            &admin,
            "--census-window-s",
            "2",
        ])
        .env("RUST_LOG", "info,zenoh=warn")
        .stdout(Stdio::null())
        .stderr(log(&dir, "host"));
    let _host = Supervised::spawn("twin-dr-host", c).unwrap();

    // The tiles the service publishes, heard on the region key space.
    let heard: Arc<Mutex<Vec<RegionalTraffic>>> = Arc::default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let config =
        twinlink_link::link::zenoh_config("peer", &[], std::slice::from_ref(&region_endpoint))
            .unwrap();
    let session = rt.block_on(async { zenoh::open(config).await }).unwrap();
    let sink = heard.clone();
    let _listener = rt
        .block_on(async {
            session
                .declare_subscriber("twinlink/v1/region/*/traffic")
                .callback(move |s| {
                    if let Ok(t) = twinlink_msgs::codec::decode(&s.payload().to_bytes()) {
                        sink.lock().unwrap().push(t);
                    }
                })
                .await
        })
        .unwrap();

    // Thirteen vehicles in tile 1_0; all but the last consent to the census.
    let mut links = Vec::new();
    for (i, keys) in pe_keys.into_iter().enumerate() {
        let mut link = rt
            .block_on(Link::open(LinkConfig::new(
                keys,
                ZenohSettings::peer_connecting(&host_endpoint),
            )))
            .unwrap();
        rt.block_on(link.wait_peer_up(Duration::from_secs(20)))
            .unwrap_or_else(|e| panic!("{}'s twin answered: {e}", vehicles[i]));
        if i < CONSENTING {
            link.send(to_link(
                "policy",
                Priority::OwnState,
                &traffic_consent(),
                now_us(),
            ))
            .unwrap();
        }
        links.push(link);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut t = 0.0;
    let tile = loop {
        for (i, link) in links.iter_mut().enumerate() {
            let x = 1100.0 + 40.0 * i as f64 + 25.0 * t;
            link.send(to_link(
                "state",
                Priority::OwnState,
                &state(&vehicles[i], x),
                now_us(),
            ))
            .unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        t += 0.2;
        if let Some(tile) = heard
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.tile_id == "1_0")
            .cloned()
        {
            break tile;
        }
        assert!(
            Instant::now() < deadline,
            "no tile 1_0 from the regional service; host log:\n{}",
            std::fs::read_to_string(dir.join("host.log")).unwrap_or_default()
        );
    };
    // Twelve twins contributed, one vote each; the one without consent did not.
    assert_eq!(tile.k_threshold, 10);
    assert_eq!(tile.contributors as usize, CONSENTING, "{tile:?}");
    let lane = tile
        .lanes
        .iter()
        .find(|l| l.lane_index == 1)
        .unwrap_or_else(|| panic!("lane 1 in {tile:?}"));
    assert!((lane.mean_speed - 25.0).abs() < 1.0, "{lane:?}");
    // The tile came back to the twins by name (dormant or active, every twin on the route).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let doc = twin_dr_host_admin(&admin, "/twins/veh-00");
        if doc["counters"]["regional_tiles"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the tile never reached veh-00's twin: {doc}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = twin_dr_host_text(&admin, "/metrics");
    assert!(
        metrics.contains("twinlink_dr_census_total{result=\"no_rule\"}"),
        "the vehicle without a policy was counted: {metrics}"
    );
    for link in links {
        rt.block_on(link.close());
    }
    rt.block_on(async { session.close().await }).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

fn twin_dr_host_text(admin: &str, path: &str) -> String {
    twin_dr_host::admin::get(admin, path, Duration::from_secs(5))
        .map(|(_, body)| body)
        .unwrap_or_default()
}

fn twin_dr_host_admin(admin: &str, path: &str) -> serde_json::Value {
    serde_json::from_str(&twin_dr_host_text(admin, path)).unwrap_or_default()
}
