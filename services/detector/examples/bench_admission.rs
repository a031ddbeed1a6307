//! Benchmark: what admission by bytes adds to a Detect call, measured alone. Before a
//! call decodes anything the detector reads the image's header for its size, prices
//! the call's working memory, and takes (then gives back) that many bytes of its
//! budget; this times exactly those steps on a normal 1600×1200 page.
//!
//!   cargo run --release --example bench_admission [-- ITERATIONS]
//!
//! Prints the median and p99 per call; BENCHMARKS.md sets them beside the page's
//! Detect latency.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use plenum_engine::{MemoryProfile, WorkBudget};
use plenum_vision::decode::{Limits, dimensions};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let iterations: usize = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(20_000);
    let page = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/pages/page_0000.png"),
    )
    .expect("tests/pages/page_0000.png");
    let limits = Limits::default();
    // The default budget, and the detector's measured profile (BENCHMARKS.md, issue 10).
    let budget = WorkBudget::new(2 << 30, Duration::from_secs(10));
    let profile = MemoryProfile {
        fixed: 7.9 * 1024.0 * 1024.0,
        per_element: 9.2,
        samples: Vec::new(),
    };
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let (width, height) = dimensions(&page, &limits).expect("a valid page");
        let decoded = u64::from(width) * u64::from(height) * 11;
        let tensors = 2 * 3 * 4 * u64::from(width) * u64::from(height);
        let model = profile.bytes(3 * u64::from(width) * u64::from(height));
        let permit = budget.admit(decoded + tensors + model).await.expect("fits");
        drop(std::hint::black_box(permit));
        times.push(started.elapsed());
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "admission of a 1600x1200 PNG, {iterations} calls: median {:.1} us, p99 {:.1} us",
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6
    );
}
