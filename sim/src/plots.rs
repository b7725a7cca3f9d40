//! The demo's plots (PNG): time-space diagrams, speeds, link quality over time and latency
//! distributions. Text is drawn with DejaVu Sans (Debian's `fonts-dejavu-core`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::realtime::{AdviceSample, LinkSample, Snapshot};

/// Where the font is looked for.
pub const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

const FONT: &str = "sans-serif";

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Registers the plots' font once; an error says which package provides it.
fn font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = FONT_PATHS
                .iter()
                .find_map(|p| std::fs::read(p).ok())
                .ok_or_else(|| {
                    format!(
                        "no font for the plots at {}: install fonts-dejavu-core",
                        FONT_PATHS.join(" or ")
                    )
                })?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| "DejaVuSans.ttf is not a usable font".to_string())
        })
        .clone()
}

/// A colour from red (0) through yellow to green (1).
fn speed_colour(fraction: f64) -> RGBColor {
    let f = fraction.clamp(0.0, 1.0);
    let (r, g) = if f < 0.5 {
        (220.0, 40.0 + 360.0 * f)
    } else {
        (220.0 - 400.0 * (f - 0.5), 220.0)
    };
    RGBColor(r as u8, g as u8, 40)
}

/// Everything a plot set needs.
pub struct PlotInput<'a> {
    /// The road's length [m].
    pub road_m: f64,
    /// The speed limit [m/s] (top of the speed colour scale).
    pub limit_mps: f64,
    /// The run's duration [s].
    pub duration_s: f64,
    /// The baseline's snapshots.
    pub baseline: &'a [Snapshot],
    /// The twin run's snapshots.
    pub twin: &'a [&'a Snapshot],
    /// Its link samples.
    pub links: &'a [&'a LinkSample],
    /// Its advice.
    pub advice: &'a [&'a AdviceSample],
}

fn time_space(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    snapshots: &[&Snapshot],
    input: &PlotInput,
) -> Result<(), String> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..input.duration_s, 0.0..input.road_m)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("time [s]")
        .y_desc("position along the road [m]")
        .label_style((FONT, 13))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(snapshots.iter().flat_map(|s| {
            s.vehicles.iter().map(move |v| {
                Circle::new((s.t, v.s), 1, speed_colour(v.v / input.limit_mps).filled())
            })
        }))
        .map_err(err)?;
    // Hazards: their stretch while active.
    chart
        .draw_series(snapshots.iter().flat_map(|s| {
            s.hazards.iter().map(move |&(_, back, front)| {
                Rectangle::new([(s.t, back), (s.t + 0.5, front + 20.0)], BLACK.filled())
            })
        }))
        .map_err(err)?;
    // The driven vehicles' trajectories.
    let mut names: Vec<&str> = snapshots
        .iter()
        .flat_map(|s| s.vehicles.iter().filter_map(|v| v.driven.as_deref()))
        .collect();
    names.sort_unstable();
    names.dedup();
    for (k, name) in names.iter().enumerate() {
        let colour = Palette99::pick(k).to_rgba();
        chart
            .draw_series(LineSeries::new(
                snapshots.iter().filter_map(|s| {
                    s.vehicles
                        .iter()
                        .find(|v| v.driven.as_deref() == Some(*name))
                        .map(|v| (s.t, v.s))
                }),
                colour.stroke_width(2),
            ))
            .map_err(err)?
            .label(name.to_string())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    if !names.is_empty() {
        chart
            .configure_series_labels()
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// Time-space diagrams of the baseline and the twin run side by side: every vehicle a dot
/// coloured by speed (red stopped, green at the limit), hazards black, the twinned
/// vehicles' trajectories as lines.
pub fn plot_time_space(path: &Path, input: &PlotInput) -> Result<(), String> {
    font()?;
    let root = BitMapBackend::new(path, (1400, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((1, 2));
    let baseline: Vec<&Snapshot> = input.baseline.iter().collect();
    time_space(&areas[0], "no twin", &baseline, input)?;
    time_space(&areas[1], "twin", input.twin, input)?;
    root.present().map_err(err)
}

fn mean_speed(s: &Snapshot) -> Option<(f64, f64)> {
    (!s.vehicles.is_empty()).then(|| {
        (
            s.t,
            s.vehicles.iter().map(|v| v.v).sum::<f64>() / s.vehicles.len() as f64 * 3.6,
        )
    })
}

/// Mean speed of all vehicles over time (baseline and twin), and each twinned vehicle's
/// speed with the speed its twin advised.
pub fn plot_speeds(path: &Path, input: &PlotInput) -> Result<(), String> {
    font()?;
    let root = BitMapBackend::new(path, (1400, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((1, 2));
    let top = input.limit_mps * 3.6 * 1.15;
    let mut chart = ChartBuilder::on(&areas[0])
        .caption("mean speed of all vehicles", (FONT, 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..input.duration_s, 0.0..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("time [s]")
        .y_desc("speed [km/h]")
        .label_style((FONT, 13))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            input.baseline.iter().filter_map(mean_speed),
            BLUE.stroke_width(2),
        ))
        .map_err(err)?
        .label("no twin")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(
            input.twin.iter().filter_map(|s| mean_speed(s)),
            RED.stroke_width(2),
        ))
        .map_err(err)?
        .label("twin")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    chart
        .configure_series_labels()
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(err)?;

    let mut chart = ChartBuilder::on(&areas[1])
        .caption(
            "twinned vehicles: speed (line) and advice (dots)",
            (FONT, 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..input.duration_s, 0.0..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("time [s]")
        .y_desc("speed [km/h]")
        .label_style((FONT, 13))
        .draw()
        .map_err(err)?;
    let mut names: Vec<&str> = input.advice.iter().map(|a| a.vehicle.as_str()).collect();
    for s in input.twin {
        names.extend(s.vehicles.iter().filter_map(|v| v.driven.as_deref()));
    }
    names.sort_unstable();
    names.dedup();
    for (k, name) in names.iter().enumerate() {
        let colour = Palette99::pick(k).to_rgba();
        chart
            .draw_series(LineSeries::new(
                input.twin.iter().filter_map(|s| {
                    s.vehicles
                        .iter()
                        .find(|v| v.driven.as_deref() == Some(*name))
                        .map(|v| (s.t, v.v * 3.6))
                }),
                colour.stroke_width(2),
            ))
            .map_err(err)?
            .label(name.to_string())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(
                input
                    .advice
                    .iter()
                    .filter(|a| a.vehicle == *name)
                    .map(|a| Circle::new((a.t, a.target_speed * 3.6), 2, colour.filled())),
            )
            .map_err(err)?;
    }
    if !names.is_empty() {
        chart
            .configure_series_labels()
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerLeft)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}

/// Each twinned vehicle's link over time: round-trip time and measured goodput.
pub fn plot_link_quality(path: &Path, input: &PlotInput) -> Result<(), String> {
    font()?;
    let root = BitMapBackend::new(path, (1400, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((1, 2));
    let mut names: Vec<&str> = input.links.iter().map(|l| l.vehicle.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let rtt_top = input
        .links
        .iter()
        .map(|l| l.rtt_s * 1e3)
        .fold(1.0f64, f64::max)
        * 1.1;
    let bw_top = input
        .links
        .iter()
        .map(|l| l.measured_bandwidth_bps / 1e3)
        .fold(1.0f64, f64::max)
        * 1.1;
    for (area, title, unit, top, value) in [
        (
            &areas[0],
            "link round-trip time (bands: link down)",
            "RTT [ms]",
            rtt_top,
            (|l: &LinkSample| l.rtt_s * 1e3) as fn(&LinkSample) -> f64,
        ),
        (
            &areas[1],
            "link goodput",
            "measured [kbit/s]",
            bw_top,
            |l: &LinkSample| l.measured_bandwidth_bps / 1e3,
        ),
    ] {
        let mut chart = ChartBuilder::on(area)
            .caption(title, (FONT, 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..input.duration_s, 0.0..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("time [s]")
            .y_desc(unit)
            .label_style((FONT, 13))
            .draw()
            .map_err(err)?;
        for (k, name) in names.iter().enumerate() {
            let colour = Palette99::pick(k).to_rgba();
            let samples: Vec<&LinkSample> = input
                .links
                .iter()
                .copied()
                .filter(|l| l.vehicle == *name)
                .collect();
            // Lines only while the link is up; while it is down (no coverage, a tunnel) a
            // band in the vehicle's colour along the bottom, one per vehicle.
            let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
            let band = top * (0.012 + 0.018 * k as f64);
            for pair in samples.windows(2) {
                let (l, next) = (pair[0], pair[1]);
                if l.link_state >= 2 {
                    segments
                        .last_mut()
                        .expect("a segment")
                        .push((l.t, value(l)));
                } else {
                    if !segments.last().expect("a segment").is_empty() {
                        segments.push(Vec::new());
                    }
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [(l.t, band), (next.t, band + top * 0.012)],
                            colour.mix(0.6).filled(),
                        )))
                        .map_err(err)?;
                }
            }
            for (i, segment) in segments.into_iter().filter(|s| !s.is_empty()).enumerate() {
                let series = chart
                    .draw_series(LineSeries::new(segment, colour.stroke_width(2)))
                    .map_err(err)?;
                if i == 0 {
                    series.label(name.to_string()).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
                }
            }
        }
        if !names.is_empty() {
            chart
                .configure_series_labels()
                .label_font((FONT, 13))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }
    }
    root.present().map_err(err)
}

/// Cumulative distributions of the advice latency (twin -> driver) and the links' RTT.
pub fn plot_latency_cdf(path: &Path, input: &PlotInput) -> Result<(), String> {
    font()?;
    let root = BitMapBackend::new(path, (800, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut advice: Vec<f64> = input.advice.iter().map(|a| a.latency_ms.max(0.0)).collect();
    let mut rtt: Vec<f64> = input
        .links
        .iter()
        .filter(|l| l.rtt_s > 0.0 && l.link_state >= 2)
        .map(|l| l.rtt_s * 1e3)
        .collect();
    advice.sort_by(f64::total_cmp);
    rtt.sort_by(f64::total_cmp);
    let top = advice.iter().chain(&rtt).copied().fold(1.0f64, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption("latency distribution", (FONT, 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..top, 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency [ms]")
        .y_desc("fraction at most")
        .label_style((FONT, 13))
        .draw()
        .map_err(err)?;
    for (values, label, colour) in [
        (&advice, "advice: twin -> driver", RED),
        (&rtt, "link RTT", BLUE),
    ] {
        let n = values.len().max(1) as f64;
        chart
            .draw_series(LineSeries::new(
                values
                    .iter()
                    .enumerate()
                    .map(move |(i, v)| (*v, (i + 1) as f64 / n)),
                colour.stroke_width(2),
            ))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// All four plots into `dir`; returns their paths.
pub fn plot_all(dir: &Path, input: &PlotInput) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    for (name, plot) in [
        (
            "time_space.png",
            plot_time_space as fn(&Path, &PlotInput) -> Result<(), String>,
        ),
        ("speeds.png", plot_speeds),
        ("link_quality.png", plot_link_quality),
        ("latency_cdf.png", plot_latency_cdf),
    ] {
        let path = dir.join(name);
        plot(&path, input).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::VehicleSample;

    #[test]
    fn plots_are_pngs_with_something_drawn() {
        let snaps: Vec<Snapshot> = (0..20)
            .map(|i| Snapshot {
                t: i as f64 * 0.5,
                vehicles: (0..5)
                    .map(|k| VehicleSample {
                        id: k,
                        s: 100.0 * k as f64 + 10.0 * i as f64,
                        lane: (k % 2) as usize,
                        v: 20.0 + k as f64,
                        truck: false,
                        driven: (k == 2).then(|| "car_1".to_string()),
                        advised: None,
                    })
                    .collect(),
                hazards: vec![(0, 900.0, 905.0)],
            })
            .collect();
        let twin: Vec<&Snapshot> = snaps.iter().collect();
        let links: Vec<LinkSample> = (0..10)
            .map(|i| LinkSample {
                t: i as f64,
                vehicle: "car_1".into(),
                link_state: 2,
                rtt_s: 0.002 + 0.001 * i as f64,
                measured_bandwidth_bps: 5e4,
                uplink_bytes: 1000 * i,
                downlink_bytes: 100 * i,
                buffered: 0,
            })
            .collect();
        let advice: Vec<AdviceSample> = (0..10)
            .map(|i| AdviceSample {
                t: i as f64,
                vehicle: "car_1".into(),
                target_speed: 25.0,
                target_lane: 0,
                reason_code: 1,
                reason: String::new(),
                latency_ms: 1.0 + i as f64,
                refused: None,
            })
            .collect();
        let links: Vec<&LinkSample> = links.iter().collect();
        let advice: Vec<&AdviceSample> = advice.iter().collect();
        let input = PlotInput {
            road_m: 1000.0,
            limit_mps: 30.0,
            duration_s: 10.0,
            baseline: &snaps,
            twin: &twin,
            links: &links,
            advice: &advice,
        };
        let dir = std::env::temp_dir().join(format!("twinlink-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let written = plot_all(&dir, &input).unwrap();
        assert_eq!(written.len(), 4);
        for p in written {
            let bytes = std::fs::read(&p).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", p.display());
            // A blank white image compresses to almost nothing.
            assert!(
                bytes.len() > 10_000,
                "{}: {} bytes",
                p.display(),
                bytes.len()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
