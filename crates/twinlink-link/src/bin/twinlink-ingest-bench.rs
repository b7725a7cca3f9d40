//! DR-side ingest on one thread: open (decrypt and authenticate), decode the envelope and
//! the CDR summary, apply (in-order delivery, latest summary kept). Prints summaries per
//! second. Pin it to one core (`taskset -c 0`) to read it as "per core".

use std::time::Instant;

use clap::Parser;
use serde_json::json;
use twinlink_link::link::{now_us, IngestPipeline};
use twinlink_link::minimal::{self, from_link, to_link};
use twinlink_link::{KeyMaterial, Priority, VehicleId};
use twinlink_msgs::twin_msgs::msg::PerceptionSummary;

#[derive(Debug, Parser)]
#[command(about = "DR ingest throughput on one thread")]
struct Args {
    /// Objects per summary.
    #[arg(long, default_value_t = 50)]
    objects: usize,
    /// Frames to ingest (distinct frames, sealed beforehand).
    #[arg(long, default_value_t = 100_000)]
    frames: usize,
    /// Measured repetitions; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let vehicle = VehicleId::new("bench")?;
    let mut rates = Vec::new();
    for _ in 0..args.runs {
        let (pe, dr) = KeyMaterial::generate_pair(&vehicle)?;
        let (mut pipeline, mut sealer) = IngestPipeline::new(pe, dr)?;
        let frames: Vec<Vec<u8>> = (0..args.frames)
            .map(|i| {
                let s = minimal::perception_summary(args.objects, i as f64 * 0.1, now_us());
                sealer.seal(to_link(
                    minimal::STREAM_OBJECTS,
                    Priority::Objects,
                    &s,
                    now_us(),
                ))
            })
            .collect();
        let mut latest: Option<PerceptionSummary> = None;
        let mut applied = 0usize;
        let begin = Instant::now();
        for frame in &frames {
            for delivered in pipeline.ingest(frame) {
                latest = Some(from_link(&delivered.message)?);
                applied += 1;
            }
        }
        let elapsed = begin.elapsed();
        anyhow::ensure!(
            applied == args.frames,
            "applied {applied} of {}",
            args.frames
        );
        anyhow::ensure!(
            pipeline.stats().rejected_total() == 0,
            "rejections in a clean run"
        );
        anyhow::ensure!(latest.is_some_and(|s| s.objects.len() == args.objects));
        rates.push(args.frames as f64 / elapsed.as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!(
        "{}",
        json!({"objects": args.objects, "frame_bytes_approx": null, "runs": rates, "summaries_per_s_median": median.round()})
    );
    Ok(())
}
