//! The live fleet view in a real browser: two DR hosts of one fleet (PostgreSQL, a Zenoh
//! router), four vehicles, and Debian's Chromium, headless, opening one host's `/view`.
//!
//! The page must show every twin of both hosts (the second host's through the first),
//! each vehicle on the road where it reported itself, coloured by its link (a vehicle whose
//! link closed is shown away, its twin predicting), its advice, a vehicle without a
//! `traffic` grant listed but not placed, and both hosts with their metrics. It must
//! follow the vehicles live (a vehicle that moves is drawn elsewhere on the next read),
//! refuse a page without a token to the data, and the screenshot must show the road and
//! the dots where the vehicles are.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, provision, start_router, wait_for, work_dir, Postgres};
use twin_dr_host::admin;
use twin_dr_host::road::{RoadSpec, SpeedLimit};
use twinlink_launch::{workspace_binary, Supervised};
use twinlink_link::link::now_us;
use twinlink_link::minimal::{ros_time, to_link};
use twinlink_link::{KeyMaterial, Link, LinkConfig, Priority, Role, VehicleId, ZenohSettings};
use twinlink_msgs::twin_msgs::msg::VehicleState;

const OPERATOR_TOKEN: &str = "view-operator-token-0123456789";
const VIEWER_TOKEN: &str = "view-viewer-token-0123456789";

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

fn start_host(dir: &Path, name: &str, db: &str, router: &str) -> (String, Supervised) {
    let road = dir.join("road.json").display().to_string();
    common::start_fleet_host(
        dir,
        name,
        db,
        "4",
        &[router.to_string()],
        VIEWER_TOKEN,
        &[
            "--road",
            &road,
            "--rescan-ms",
            "200",
            // The away vehicle's twin stays active (predicting) for the whole test.
            "--idle-after-s",
            "600",
        ],
    )
}

fn state(vehicle: &str, x: f64, lane: i32) -> VehicleState {
    let mut s = VehicleState::default();
    s.header.stamp = ros_time(now_us());
    s.header.frame_id = "map".into();
    s.vehicle_id = vehicle.into();
    s.pose.position.x = x;
    s.pose.position.y = lane as f64 * 3.5;
    s.pose.orientation.w = 1.0;
    s.twist.linear.x = 25.0;
    s.lane_index = lane;
    s.length = 4.5;
    s.width = 1.9;
    s
}

/// Headless Chromium as the machine's probe runs it: no sandbox (root), no GPU, none of
/// its own network traffic, a fresh profile.
fn chromium(dir: &Path, run: &str, extra: &[&str], url: &str) -> std::process::Output {
    let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("Debian's chromium package (scripts/setup.sh installs it)");
    let profile = dir.join(format!("chromium-{run}"));
    // A browser that hangs is ended after a minute (the test then fails, saying so).
    let out = Command::new("timeout")
        .args(["--kill-after=5", "60", binary])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,1100",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn dump_dom(dir: &Path, run: &str, url: &str) -> String {
    String::from_utf8(chromium(dir, run, &["--dump-dom"], url).stdout).unwrap()
}

/// The `<g>` of one vehicle on the road (`None`: not drawn).
fn drawn<'a>(dom: &'a str, vehicle: &str) -> Option<&'a str> {
    let at = dom.find(&format!("class=\"vehicle\" data-vehicle=\"{vehicle}\""))?;
    let end = dom[at..].find("</g>")? + at;
    Some(&dom[at..end])
}

fn attribute(element: &str, name: &str) -> f64 {
    let at = element.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
    let end = element[at..].find('"').unwrap() + at;
    element[at..end].parse().unwrap()
}

/// A decoded screenshot: width, height, RGB(A) rows.
struct Image {
    width: usize,
    height: usize,
    channels: usize,
    pixels: Vec<u8>,
}

impl Image {
    fn load(path: &Path) -> Image {
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut pixels).unwrap();
        Image {
            width: info.width as usize,
            height: info.height as usize,
            channels: info.color_type.samples(),
            pixels,
        }
    }

    /// The rows more than half of whose pixels are near `rgb`.
    fn rows_mostly(&self, rgb: [u8; 3]) -> Vec<usize> {
        (0..self.height)
            .filter(|&y| self.like(rgb, y..y + 1).0 > self.width / 2)
            .collect()
    }

    /// Pixels near `rgb` (each channel within 6) in rows `ys`: how many, the mean row,
    /// and the first and last row.
    fn like(&self, rgb: [u8; 3], ys: std::ops::Range<usize>) -> (usize, f64, usize, usize) {
        let (mut n, mut sum, mut first, mut last) = (0usize, 0f64, usize::MAX, 0);
        for y in ys.start..ys.end.min(self.height) {
            for x in 0..self.width {
                let p = &self.pixels[(y * self.width + x) * self.channels..][..3];
                if p.iter().zip(rgb).all(|(&a, b)| a.abs_diff(b) <= 6) {
                    n += 1;
                    sum += y as f64;
                    first = first.min(y);
                    last = last.max(y);
                }
            }
        }
        (n, sum / n.max(1) as f64, first, last)
    }
}

#[test]
fn the_fleet_view_shows_the_vehicles_their_links_and_advice_live_in_a_browser() {
    let dir = work_dir("fleet_view");
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    std::fs::write(
        dir.join("tokens"),
        format!("operator ops {OPERATOR_TOKEN}\nviewer wall {VIEWER_TOKEN}\n"),
    )
    .unwrap();
    let road = RoadSpec {
        points: vec![[0.0, 0.0], [2000.0, 0.0]],
        lanes: 3,
        lane_width: 3.5,
        segments: vec![],
        speed_limits: vec![SpeedLimit {
            from_s: 0.0,
            limit: 30.0,
        }],
    };
    std::fs::write(dir.join("road.json"), serde_json::to_string(&road).unwrap()).unwrap();
    // Where each vehicle is: metres along the road and lane.
    let vehicles = [
        ("veh-v1", 200.0, 0),
        ("veh-v2", 700.0, 1),
        ("veh-v12", 1300.0, 2),
        ("veh-v6", 1800.0, 1),
    ];
    // One vehicle in each of the fleet's 4 shards: each host serves two.
    let mut shards: Vec<u32> = vehicles
        .iter()
        .map(|(v, _, _)| twin_dr_host::fleet::shard_of(v, 4))
        .collect();
    shards.sort_unstable();
    assert_eq!(shards, [0, 1, 2, 3]);
    for (v, _, _) in &vehicles {
        provision(&dir.join("keys"), v);
    }
    let db = Postgres::start("view");
    let endpoint = format!("tcp/127.0.0.1:{}", free_port());
    let _router = start_router(&dir, "router", &endpoint, None);
    let (admin1, mut host1) = start_host(&dir, "host-1", &db.url, &endpoint);
    let (admin2, mut host2) = start_host(&dir, "host-2", &db.url, &endpoint);
    // Both hosts serve some of the four.
    // (An answer that is not there yet is an empty list: asked again.)
    let owners = || -> Vec<String> {
        let Ok((200, body)) = admin::request(
            "GET",
            &admin1,
            "/view/data",
            Some(VIEWER_TOKEN),
            None,
            Duration::from_secs(3),
        ) else {
            return vec![];
        };
        let data: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        data["twins"]
            .as_array()
            .map(|twins| {
                twins
                    .iter()
                    .map(|t| t["host"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    wait_for(
        "four twins over both hosts",
        Duration::from_secs(20),
        || {
            let o = owners();
            o.len() == 4 && o.contains(&"host-1".into()) && o.contains(&"host-2".into())
        },
    );
    // Three vehicles let their fleet see where they are, at 1 m; the fourth does not.
    for (v, _, _) in &vehicles[..3] {
        let (ok, out) = twinctl(&[
            "policy",
            "set",
            v,
            "--admin",
            &admin1,
            "--rule",
            "traffic:same_fleet:1:600",
        ]);
        assert!(ok, "{out}");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut links: Vec<Option<Link>> = vehicles
        .iter()
        .map(|(v, _, _)| {
            let id = VehicleId::new(v).unwrap();
            let keys =
                KeyMaterial::load(&dir.join("keys").join(format!("{v}.pe.key")), &id, Role::Pe)
                    .unwrap();
            let mut link = rt
                .block_on(Link::open(LinkConfig::new(
                    keys,
                    ZenohSettings::client_of(&endpoint),
                )))
                .unwrap();
            rt.block_on(link.wait_peer_up(Duration::from_secs(20)))
                .unwrap();
            Some(link)
        })
        .collect();
    let send_states = |links: &[Option<Link>], shift: f64| {
        for (link, (v, x, lane)) in links.iter().zip(&vehicles) {
            if let Some(link) = link {
                let x = if *v == "veh-v1" { x + shift } else { *x };
                let s = state(v, x, *lane);
                link.send(to_link("state", Priority::OwnState, &s, now_us()))
                    .unwrap();
            }
        }
    };
    for _ in 0..15 {
        send_states(&links, 0.0);
        std::thread::sleep(Duration::from_millis(100));
    }
    // veh-v12 drives out of coverage: its twin stays active, predicting, until it idles.
    rt.block_on(links[2].take().unwrap().close());
    wait_for(
        "veh-v12's twin to see it gone",
        Duration::from_secs(10),
        || {
            send_states(&links, 0.0);
            admin::request(
                "GET",
                &admin1,
                "/twins/veh-v12/state",
                Some(VIEWER_TOKEN),
                None,
                Duration::from_secs(2),
            )
            .is_ok_and(|(_, body)| body.contains("\"connected\": false"))
        },
    );
    for _ in 0..5 {
        send_states(&links, 0.0);
        std::thread::sleep(Duration::from_millis(100));
    }

    let url = format!("http://{admin1}/view#token={VIEWER_TOKEN}");
    let dom = dump_dom(&dir, "first", &url);
    std::fs::write(dir.join("first.html"), &dom).unwrap();
    // Every twin of both hosts, in the table, with its host and link state.
    for (v, link) in [
        ("veh-v1", "connected"),
        ("veh-v2", "connected"),
        ("veh-v12", "offline"),
        ("veh-v6", "connected"),
    ] {
        assert!(
            dom.contains(&format!("<tr data-vehicle=\"{v}\" data-link=\"{link}\">")),
            "{v} {link} in the table: see {}",
            dir.join("first.html").display()
        );
    }
    assert!(dom.contains("4 twins, 3 vehicles connected, 2 of 2 hosts live"));
    assert!(dom.contains("<tr data-host=\"host-1\">") && dom.contains("<tr data-host=\"host-2\">"));
    // Advice from the twins ("… km/h, lane n") and its reason.
    assert!(dom.contains(" km/h, lane "), "no advice shown");
    // On the road: the granted ones, where they are; the fourth listed as withheld.
    let v1 = drawn(&dom, "veh-v1").expect("veh-v1 on the road");
    let v2 = drawn(&dom, "veh-v2").expect("veh-v2 on the road");
    let v3 = drawn(&dom, "veh-v12").expect("veh-v12 on the road");
    assert!(v1.contains("data-link=\"connected\"") && v3.contains("data-link=\"offline\""));
    assert!(drawn(&dom, "veh-v6").is_none(), "veh-v6 has no grant");
    assert!(
        dom.contains("veh-v6 (no_rule)"),
        "veh-v6 listed as withheld"
    );
    // 2 km in rows of 1 km: v1 left of v2 in the first row, v3 in the second row below.
    let (x1, y1) = (attribute(v1, "cx"), attribute(v1, "cy"));
    let (x2, y2) = (attribute(v2, "cx"), attribute(v2, "cy"));
    let y3 = attribute(v3, "cy");
    assert!(x1 < x2, "v1 ({x1}) is behind v2 ({x2})");
    assert!(y1 > y2, "lane 0 ({y1}) is drawn below lane 1 ({y2})");
    assert!(y3 > y1 + 30.0, "the second kilometre is the second row");
    assert!(
        dom.contains("data-updates=\""),
        "the page read its data at least once"
    );

    // Live: veh-v1 moves 500 m; the page draws it there.
    for _ in 0..10 {
        send_states(&links, 500.0);
        std::thread::sleep(Duration::from_millis(100));
    }
    let dom = dump_dom(&dir, "second", &url);
    let moved = attribute(drawn(&dom, "veh-v1").expect("veh-v1 still drawn"), "cx");
    assert!(
        moved > x1 + 200.0,
        "veh-v1 moved 500 m: drawn at {moved}, was {x1}"
    );

    // Without the token the page says what is needed and shows no data.
    let dom = dump_dom(&dir, "no-token", &format!("http://{admin1}/view"));
    assert!(dom.contains("needs a viewer token"), "{dom}");
    assert!(!dom.contains("data-vehicle=\"veh-v1\""));

    // The screenshot: the road's asphalt, green dots above amber (the second row).
    let shot: PathBuf = dir.join("fleet-view.png");
    chromium(
        &dir,
        "screenshot",
        &[&format!("--screenshot={}", shot.display())],
        &url,
    );
    let image = Image::load(&shot);
    // The road's rows: those mostly asphalt (the two 1 km bands).
    let road = image.rows_mostly([0x3f, 0x47, 0x53]);
    assert!(road.len() > 40, "the road: {} rows", road.len());
    let (top, bottom) = (road[0], *road.last().unwrap());
    let road_rows = top..bottom + 1;
    let (green, green_y, _, _) = image.like([0x1f, 0x9d, 0x55], road_rows.clone());
    let (amber, amber_y, _, _) = image.like([0xe0, 0x8a, 0x00], road_rows);
    assert!(green > 2 * 80, "green dots: {green} pixels");
    assert!(amber > 80, "the away vehicle's dot: {amber} pixels");
    assert!(
        amber_y > green_y + 30.0,
        "the away vehicle (1.3 km, y {amber_y}) is drawn in the second row, below the first (y {green_y})"
    );
    println!("fleet view screenshot: {}", shot.display());

    for link in links.into_iter().flatten() {
        rt.block_on(link.close());
    }
    for p in [&mut host1, &mut host2] {
        p.terminate();
        let _ = p.wait_timeout(Duration::from_secs(10));
    }
    let _ = admin2;
}
