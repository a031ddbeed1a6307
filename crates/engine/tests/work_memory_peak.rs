//! On a GPU, one input that alone needs more working memory than the model's work
//! lease asks the broker for a peak lease for the rest, held for that call only (one
//! the broker cannot grant: `work_memory_refused.rs` and `work_memory_fallback.rs`).
//! Alone in its binary: see `hungry`.

mod hungry;
#[allow(dead_code)]
mod support;

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use hungry::{BYTES_PER_ELEMENT, GPU_WORK, Gate, on_the_simulated_gpu, pages};
use support::{peak_leases, start_broker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_over_the_work_lease_runs_under_a_peak_lease_held_for_that_call() {
    let (url, shutdown) = start_broker("GTX 1070:8GiB").await;
    let (entered, entered_rx) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let gate = Arc::new(Gate {
        over_elements: 3 * 1024 * 1024,
        entered,
        release: Mutex::new(release_rx),
    });
    let (engine, calls) = on_the_simulated_gpu(&url, Some(gate), true).await;
    assert!(peak_leases(&url).await.is_empty());

    // 2048² × 3 elements × 64 bytes = 768 MiB for the row, by the profile.
    let running = tokio::spawn({
        let engine = engine.clone();
        async move { engine.infer(pages(1, 2048)).await }
    });
    tokio::task::spawn_blocking(move || entered_rx.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("the large row reaches the model");
    let held = peak_leases(&url).await;
    let [peak] = held.as_slice() else {
        panic!("one peak lease while the row runs, got {held:?}");
    };
    let row = (2048 * 2048 * 3 * BYTES_PER_ELEMENT) as u64;
    assert_eq!(peak.device_index, 0);
    assert!(peak.model_key.ends_with("#peak"), "{}", peak.model_key);
    assert!(
        peak.granted_bytes > row - GPU_WORK - row / 4 && peak.granted_bytes < row,
        "the peak covers the row's bytes above the work lease: {} granted for a {row}-byte row",
        peak.granted_bytes
    );
    release.send(()).unwrap();
    let output = running.await.unwrap().expect("the large row is answered");
    assert_eq!(output.size(), [1, 2]);
    assert_eq!(*calls.lock().unwrap(), [1]);

    // Given back once the call is done.
    let mut left = peak_leases(&url).await;
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = peak_leases(&url).await;
    }
    assert!(
        left.is_empty(),
        "the peak lease outlived its call: {left:?}"
    );
    // Rows within the work lease take none.
    calls.lock().unwrap().clear();
    let small = engine.infer(pages(2, 320)).await.expect("small pages fit");
    assert_eq!(small.size(), [2, 2]);
    assert_eq!(*calls.lock().unwrap(), [2]);
    assert!(peak_leases(&url).await.is_empty());
    shutdown.cancel();
}
