//! The regional service as a real process on real Zenoh (loopback): twins' census in,
//! k-anonymous tiles out, queries for the newest tile, refusals on /metrics; and the
//! service in-process with an outside incident feed (the input the DENM bridge will use).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use twin_region_service::aggregate::{harmonic_mean, AggregatorConfig, IncidentSource};
use twin_region_service::census::{contributor_token, now_us, ros_time, Windows};
use twin_region_service::http;
use twin_region_service::service::{self, IncidentInput, ServiceConfig};
use twinlink_link::keys::{self, RegionTile};
use twinlink_link::ZenohSettings;
use twinlink_msgs::codec;
use twinlink_msgs::geometry_msgs::msg::Point;
use twinlink_msgs::std_msgs::msg::Header;
use twinlink_msgs::twin_msgs::msg::{CensusReport, Incident, RegionalTraffic};

const WINDOW_US: u64 = 1_000_000;

/// The service's process: killed (and reaped) when dropped, whether the test passed or not.
struct ServiceProcess {
    child: Child,
    log: PathBuf,
    endpoint: String,
    metrics: String,
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl ServiceProcess {
    /// Starts `twin-region-service` on free loopback ports with `extra` flags and waits
    /// until it serves (its metrics answer once its Zenoh declarations are made).
    fn start(extra: &[&str]) -> Self {
        let endpoint = format!("tcp/127.0.0.1:{}", free_port());
        let metrics = format!("127.0.0.1:{}", free_port());
        let log = std::env::temp_dir().join(format!(
            "twin_region_service_e2e_{}_{}.log",
            std::process::id(),
            free_port()
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_twin-region-service"))
            .args(["--listen", &endpoint, "--metrics", &metrics])
            .args(extra)
            .env("RUST_LOG", "info,zenoh=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut service = ServiceProcess {
            child,
            log,
            endpoint,
            metrics,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http::get(&service.metrics, "/metrics", Duration::from_secs(1)).is_err() {
            if let Ok(Some(status)) = service.child.try_wait() {
                panic!("service exited with {status}:\n{}", service.log());
            }
            assert!(
                Instant::now() < deadline,
                "service did not start:\n{}",
                service.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        service
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn metrics(&self) -> String {
        let addr = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            http::get(&addr, "/metrics", Duration::from_secs(5))
                .unwrap()
                .1
        })
        .await
        .unwrap()
    }

    /// The value of the metric line starting with `name` (labels included), 0 if absent.
    async fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// Lane 0 speeds of the busy tile's first six twins; the other six drive lane 1 at 30 m/s.
const LANE0_SPEEDS: [f32; 6] = [20.0, 21.0, 22.0, 23.0, 24.0, 25.0];

/// Twin `i`'s census report for `tile` now: tokens are derived per window from a secret,
/// as twins do.
fn report(tile: &RegionTile, i: usize, now: u64) -> CensusReport {
    let windows = Windows::new(WINDOW_US);
    let secret = format!("{}-secret-{i}", tile.as_str());
    let (lane, s, speed) = if i < 6 {
        (0, 100.0 + 10.0 * i as f64, LANE0_SPEEDS[i])
    } else {
        (1, 200.0 + 10.0 * i as f64, 30.0)
    };
    CensusReport {
        header: Header {
            stamp: ros_time(now),
            frame_id: "map".into(),
        },
        tile_id: tile.as_str().into(),
        contributor: contributor_token(secret.as_bytes(), windows.index_of(now)),
        window_start: ros_time(windows.start_of(now)),
        segment_id: "a7-north".into(),
        lane_index: lane,
        s,
        speed,
        incidents: Vec::new(),
    }
}

async fn contribute(session: &zenoh::Session, tile: &RegionTile, twins: usize) {
    let key = keys::census(tile);
    let now = now_us();
    for i in 0..twins {
        let bytes = codec::encode(&report(tile, i, now)).unwrap();
        session.put(&key, bytes).await.unwrap();
    }
}

async fn peer(endpoint: &str) -> zenoh::Session {
    let config = ZenohSettings::peer_connecting(endpoint)
        .to_config()
        .unwrap();
    zenoh::open(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn census_of_twins_becomes_k_anonymous_tiles_served_by_name() {
    let service = ServiceProcess::start(&["--window-s", "1"]);
    let session = peer(&service.endpoint).await;
    let traffic = session
        .declare_subscriber(keys::any_region("traffic").unwrap())
        .await
        .unwrap();
    let busy = RegionTile::new("busy_1").unwrap();
    let quiet = RegionTile::new("quiet_2").unwrap();

    // Twelve twins in one tile, five in another, each reporting every 200 ms (as twins
    // do, a fresh token each window), until a full window of the busy tile arrives.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut received: Vec<RegionalTraffic> = Vec::new();
    let mut next_put = Instant::now();
    while !received.iter().any(|t| t.contributors == 12) {
        assert!(
            Instant::now() < deadline,
            "no tile with 12 contributors; got {received:?}\n{}",
            service.log()
        );
        if Instant::now() >= next_put {
            contribute(&session, &busy, 12).await;
            contribute(&session, &quiet, 5).await;
            next_put += Duration::from_millis(200);
        }
        if let Ok(Ok(sample)) =
            tokio::time::timeout(Duration::from_millis(50), traffic.recv_async()).await
        {
            received.push(codec::decode(&sample.payload().to_bytes()).unwrap());
        }
    }

    // Malformed contributions are refused, counted by reason, and the service goes on.
    session
        .put(keys::census(&busy), b"not a census report".to_vec())
        .await
        .unwrap();
    let mismatched = codec::encode(&report(&quiet, 0, now_us())).unwrap();
    session.put(keys::census(&busy), mismatched).await.unwrap();

    // Stop contributing; the window in progress still closes with what it got, then
    // nothing newer comes.
    let stop = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < stop {
        if let Ok(Ok(sample)) =
            tokio::time::timeout(Duration::from_millis(100), traffic.recv_async()).await
        {
            received.push(codec::decode(&sample.payload().to_bytes()).unwrap());
        }
    }

    // Only the busy tile ever arrives, with its k, never the quiet tile (5 < k).
    for tile in &received {
        assert_eq!(tile.tile_id, "busy_1", "{tile:?}");
        assert_eq!(tile.k_threshold, 10);
        assert!(
            tile.contributors >= 10 && tile.contributors <= 12,
            "{tile:?}"
        );
        assert_eq!((tile.window.sec, tile.window.nanosec), (1, 0));
        assert_eq!(tile.header.frame_id, "map");
    }
    let full = received.iter().find(|t| t.contributors == 12).unwrap();
    assert_eq!(full.lanes.len(), 2, "{full:?}");
    let lane0 = &full.lanes[0];
    assert_eq!(
        (
            lane0.segment_id.as_str(),
            lane0.lane_index,
            lane0.start_s,
            lane0.end_s
        ),
        ("a7-north", 0, 0.0, 500.0)
    );
    let speeds: Vec<f64> = LANE0_SPEEDS.iter().map(|&v| f64::from(v)).collect();
    let expected = harmonic_mean(&speeds).unwrap() as f32;
    assert!((lane0.mean_speed - expected).abs() < 1e-3, "{lane0:?}");
    assert!(
        (lane0.density - 12.0).abs() < 1e-3,
        "6 vehicles on 0.5 km: {lane0:?}"
    );
    assert!(
        (lane0.flow - 12.0 * expected * 3.6).abs() < 0.1,
        "{lane0:?}"
    );
    let lane1 = &full.lanes[1];
    assert_eq!(lane1.lane_index, 1);
    assert!((lane1.mean_speed - 30.0).abs() < 1e-3, "{lane1:?}");

    // A twin arriving now asks by name and gets the newest tile at once.
    let newest = received.last().unwrap();
    let replies = session
        .get(keys::any_region("traffic").unwrap())
        .timeout(Duration::from_secs(2))
        .await
        .unwrap();
    let mut answers = Vec::new();
    while let Ok(reply) = replies.recv_async().await {
        let sample = reply.result().expect("a tile, not an error");
        answers.push((
            sample.key_expr().as_str().to_string(),
            codec::decode::<RegionalTraffic>(&sample.payload().to_bytes()).unwrap(),
        ));
    }
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].0, "twinlink/v1/region/busy_1/traffic");
    assert_eq!(&answers[0].1, newest);
    let replies = session
        .get(keys::region(&quiet, "traffic").unwrap())
        .timeout(Duration::from_secs(1))
        .await
        .unwrap();
    assert!(replies.recv_async().await.is_err(), "quiet tile served");

    // Metrics: accepted, published, withheld below k, refused by reason.
    let refused = "twinlink_region_contributions_refused_total";
    assert_eq!(
        service
            .metric(&format!("{refused}{{reason=\"undecodable\"}}"))
            .await,
        1.0
    );
    assert_eq!(
        service
            .metric(&format!("{refused}{{reason=\"tile_mismatch\"}}"))
            .await,
        1.0
    );
    assert!(
        service
            .metric("twinlink_region_contributions_accepted_total")
            .await
            >= 17.0
    );
    assert!(
        service
            .metric("twinlink_region_tiles_published_total")
            .await
            >= received.len() as f64
    );
    assert!(service.metric("twinlink_region_tiles_withheld_total").await >= 1.0);
    assert!(
        service
            .metric("twinlink_region_queries_answered_total")
            .await
            >= 1.0
    );
    session.close().await.unwrap();
}

#[test]
fn bad_flags_are_refused_naming_the_flag() {
    // Each run must fail at once; one that starts serving is killed (by the guard) and
    // reported.
    let run = |args: &[&str]| {
        let err = std::env::temp_dir().join(format!(
            "twin_region_service_flags_{}_{}.log",
            std::process::id(),
            free_port()
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_twin-region-service"))
            .args(args)
            .env("RUST_LOG", "off")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let mut process = ServiceProcess {
            child,
            log: err,
            endpoint: String::new(),
            metrics: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = process.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{args:?} accepted: the service runs"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success(), "{args:?} accepted");
        process.log()
    };
    let listen = ["--listen", "tcp/127.0.0.1:0", "--metrics", "off"];
    for (flag, value, problem) in [
        ("--k", "1", "must be within 2..="),
        ("--geo-origin", "48.1", "1 numbers"),
        ("--geo-origin", "north,11", "give LAT,LON"),
        ("--geo-origin", "95,11", "--geo-origin"),
        ("--k", "ten", "invalid value"),
        ("--k", "-3", "invalid value"),
        ("--window-s", "0.1", "must be within 0.5..=3600"),
        ("--window-s", "-1", "non-negative"),
        ("--stretch-m", "0", "must be within 10..="),
        ("--min-stretch-contributors", "1", "at least 2"),
        ("--grace-s", "20", "at most half the window"),
        ("--grace-s", "-0.5", "non-negative"),
        ("--penetration", "2", "within (0, 1]"),
        ("--incident-ttl-s", "0", "within (0, 86400]"),
        ("--metrics", "nowhere", "an address like"),
        ("--mode", "router", "invalid value"),
    ] {
        let mut args = listen.to_vec();
        if flag == "--metrics" {
            args.truncate(2);
        }
        args.extend([flag, value]);
        let err = run(&args);
        assert!(
            err.contains(flag) && err.contains(problem),
            "{flag} {value}: {err}"
        );
    }
    let err = run(&["--metrics", "off"]);
    assert!(err.contains("--listen"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_incidents_are_published_on_hazards_without_k() {
    let endpoint = format!("tcp/127.0.0.1:{}", free_port());
    let config = ServiceConfig {
        zenoh: ZenohSettings::peer_listening(&endpoint),
        aggregation: AggregatorConfig::for_window(Duration::from_secs(1)),
        metrics: None,
        denm_origin: None,
    };
    let (feed, incidents) = mpsc::channel(8);
    let (stop, stopped) = oneshot::channel::<()>();
    let (ready, is_ready) = oneshot::channel();
    let service = tokio::spawn(service::run(
        config,
        incidents,
        async {
            let _ = stopped.await;
        },
        Some(ready),
    ));
    is_ready.await.unwrap();
    let session = peer(&endpoint).await;
    let hazards = session
        .declare_subscriber(keys::any_region("hazards").unwrap())
        .await
        .unwrap();
    let rural = RegionTile::new("rural_9").unwrap();
    let incident = Incident {
        incident_id: "denm-4711".into(),
        incident_kind: Incident::INCIDENT_ROADWORKS,
        position: Point {
            x: 1200.0,
            y: -3.5,
            z: 0.0,
        },
        segment_id: "b12".into(),
        s: 1200.0,
        lane_index: 0,
        extent: 300.0,
        confidence: 1.0,
        detected: ros_time(now_us()),
        expires: ros_time(now_us() + 600 * 1_000_000),
    };
    feed.send(IncidentInput {
        tile: rural.clone(),
        incident: incident.clone(),
        source: IncidentSource::Rsu,
    })
    .await
    .unwrap();

    // No twin contributes in this tile, yet the hazard is published at the window's close.
    let sample = tokio::time::timeout(Duration::from_secs(10), hazards.recv_async())
        .await
        .expect("no hazards tile")
        .unwrap();
    assert_eq!(
        sample.key_expr().as_str(),
        "twinlink/v1/region/rural_9/hazards"
    );
    let tile: RegionalTraffic = codec::decode(&sample.payload().to_bytes()).unwrap();
    assert_eq!(tile.incidents, vec![incident]);
    assert!(tile.lanes.is_empty());
    assert_eq!((tile.contributors, tile.k_threshold), (0, 0));
    // ... and served to a query by name.
    let replies = session
        .get(keys::region(&rural, "hazards").unwrap())
        .timeout(Duration::from_secs(2))
        .await
        .unwrap();
    let reply = replies.recv_async().await.expect("no answer");
    let answered: RegionalTraffic =
        codec::decode(&reply.result().unwrap().payload().to_bytes()).unwrap();
    assert_eq!(answered.tile_id, "rural_9");

    session.close().await.unwrap();
    let _ = stop.send(());
    service.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_road_side_units_denm_becomes_a_hazard_of_its_tile() {
    use twinlink_cits::denm::{encode_denm, incident_to_denm, DenmContext};
    let origin = twinlink_cits::GeoOrigin {
        latitude_deg: 48.137,
        longitude_deg: 11.575,
        altitude_m: 520.0,
    };
    let endpoint = format!("tcp/127.0.0.1:{}", free_port());
    let config = ServiceConfig {
        zenoh: ZenohSettings::peer_listening(&endpoint),
        aggregation: AggregatorConfig::for_window(Duration::from_secs(1)),
        metrics: None,
        denm_origin: Some(origin),
    };
    let (_feed, incidents) = mpsc::channel(1);
    let (stop, stopped) = oneshot::channel::<()>();
    let (ready, is_ready) = oneshot::channel();
    let service = tokio::spawn(service::run(
        config,
        incidents,
        async {
            let _ = stopped.await;
        },
        Some(ready),
    ));
    is_ready.await.unwrap();
    let session = peer(&endpoint).await;
    let hazards = session
        .declare_subscriber(keys::any_region("hazards").unwrap())
        .await
        .unwrap();
    // A road-side unit warns of an accident at x = 3250 m (tile 3_0), in standard UPER.
    let warned = Incident {
        incident_id: "rsu".into(),
        incident_kind: Incident::INCIDENT_ACCIDENT,
        position: Point {
            x: 3250.0,
            y: 3.5,
            z: 0.0,
        },
        lane_index: 1,
        extent: 200.0,
        confidence: 0.8,
        detected: ros_time(now_us() - 2_000_000),
        expires: ros_time(now_us() + 600_000_000),
        ..Default::default()
    };
    let ctx = DenmContext::road_side_unit(4242, origin, ros_time(now_us()));
    let bytes = encode_denm(&incident_to_denm(&warned, &ctx).unwrap()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Garbage first: refused and counted, the service goes on.
    session
        .put(keys::cits_denm(), b"not a DENM".to_vec())
        .await
        .unwrap();
    session.put(keys::cits_denm(), bytes).await.unwrap();
    let sample = tokio::time::timeout(Duration::from_secs(10), hazards.recv_async())
        .await
        .expect("no hazards tile")
        .unwrap();
    assert_eq!(sample.key_expr().as_str(), "twinlink/v1/region/3_0/hazards");
    let tile: RegionalTraffic = codec::decode(&sample.payload().to_bytes()).unwrap();
    assert_eq!(tile.incidents.len(), 1, "{tile:?}");
    let got = &tile.incidents[0];
    assert_eq!(got.incident_id, "denm-4242-0");
    assert_eq!(got.incident_kind, Incident::INCIDENT_ACCIDENT);
    assert!((got.position.x - 3250.0).abs() < 0.5, "{:?}", got.position);
    assert_eq!(got.lane_index, 1);
    session.close().await.unwrap();
    let _ = stop.send(());
    service.await.unwrap().unwrap();
}
