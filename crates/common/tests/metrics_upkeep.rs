//! Histogram samples do not pile up in a process nobody scrapes: the exporter keeps each sample
//! until it is drained, and `common::metrics` drains them on its own.
//! (Its own test binary: the resident size measured is this process's alone.)

use std::time::{Duration, Instant};

/// Resident memory of this process, in bytes.
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn histogram_samples_are_drained_without_a_scrape() {
    common::metrics::handle();
    let histogram = metrics::histogram!("upkeep_test_seconds");
    const BATCH: usize = 1_000_000;
    const BATCHES: usize = 4;
    let wait_for_drain = || {
        // Two drains ending after the batch: at least one started after its last sample.
        let seen = common::metrics::upkeeps();
        let deadline = Instant::now() + common::metrics::UPKEEP * 10;
        while common::metrics::upkeeps() < seen + 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // One batch first, so that the allocator's arenas are as big as one batch needs.
    for i in 0..BATCH {
        histogram.record(i as f64 * 1e-7);
    }
    wait_for_drain();
    let before = resident();
    for _ in 0..BATCHES {
        for i in 0..BATCH {
            histogram.record(i as f64 * 1e-7);
        }
        wait_for_drain();
    }
    let grown = resident().saturating_sub(before);
    // Kept, the samples would take at least 8 bytes each: 32 MB for these four batches.
    assert!(
        grown < 8 * BATCH as u64,
        "resident memory grew by {grown} bytes over {BATCHES} batches of {BATCH} samples"
    );
    // And the drained samples are all in the buckets.
    let page = common::metrics::handle().render();
    let count = page
        .lines()
        .find(|l| l.starts_with("upkeep_test_seconds_count"))
        .and_then(|l| l.split_whitespace().last())
        .expect("the histogram's count");
    assert_eq!(count, ((BATCHES + 1) * BATCH).to_string());
}
