//! Freshness over a 64 kbit/s path: a real PE and DR link (Zenoh over loopback TCP), the
//! path throttled both ways by the fault layer behind a large bottleneck queue.
//!
//! The adaptive PE (window rate control, object inclusion within the path's budget) keeps
//! the DR's view of it fresh; the same PE without adaptation fills the queue and the DR's
//! view ages without bound. Both figures are printed; `make bench` records them too.

use twinlink_link::scenario::{freshness, FreshnessConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adaptive_pe_stays_fresher_than_500_ms_at_64_kbit_s() {
    let report = freshness(FreshnessConfig::adaptive_64k(20.0))
        .await
        .unwrap();
    eprintln!(
        "adaptive: median {:.0} ms, p95 {:.0} ms, max {:.0} ms over the second half; {} states, {} objects applied",
        report.median_ms_second_half,
        report.p95_ms_second_half,
        report.max_ms_second_half,
        report.states_applied,
        report.objects_applied
    );
    // Sampled every 100 ms; the 95th percentile, so that one scheduling hiccup of a loaded
    // test machine does not decide, and a hard bound well below the fixed sender's seconds.
    assert!(
        report.p95_ms_second_half < 500.0 && report.max_ms_second_half < 1000.0,
        "the DR's view of its PE aged to p95 {:.0} ms, max {:.0} ms: {:?}",
        report.p95_ms_second_half,
        report.max_ms_second_half,
        report.ages_ms
    );
    assert!(report.states_applied > 100, "{}", report.states_applied);
    assert!(report.objects_applied > 0, "objects still get through");
    assert_eq!(report.pe.outbox.dropped, [0; 4], "coalescing, not dropping");
    assert!(report.pe.outbox.coalesced > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_rate_pe_falls_ever_further_behind_at_64_kbit_s() {
    let report = freshness(FreshnessConfig::fixed_64k(12.0)).await.unwrap();
    eprintln!(
        "fixed: age {:.0} ms at the end, median {:.0} ms over the second half",
        report.end_ms, report.median_ms_second_half
    );
    assert!(report.end_ms > 3000.0, "{:?}", report.ages_ms);
    // The age keeps growing: each second of the last half is older than the one before.
    let ages = &report.ages_ms;
    let at = |t: f64| {
        ages.iter()
            .filter(|(s, _)| (*s - t).abs() < 0.5)
            .map(|(_, a)| *a)
            .fold(f64::NAN, f64::max)
    };
    for t in [7.0, 9.0, 11.0] {
        assert!(
            at(t) > at(t - 2.0) + 500.0,
            "age at {t} s: {} vs {}",
            at(t),
            at(t - 2.0)
        );
    }
}
