//! A batch whose working memory would exceed `work_memory` is run in smaller calls.
//! Alone in its binary: see `hungry`.

mod hungry;

use hungry::{MIB, pages, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_work_memory_runs_in_smaller_calls() {
    // One 640² row takes 75 MiB here: two fit in 192 MiB, three do not.
    let (engine, calls) = start(Some(192 * MIB)).await;
    let output = engine.infer(pages(5, 640)).await.expect("answered");
    assert_eq!(output.size(), [5, 2]);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.iter().sum::<i64>(), 5, "{calls:?}");
    assert!(
        calls.iter().all(|&rows| rows <= 2),
        "calls of {calls:?} rows"
    );
}
