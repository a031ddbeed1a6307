//! A row that alone would exceed `work_memory` is refused naming its bytes, before the
//! model sees it. Alone in its binary: see `hungry`.

mod hungry;

use hungry::{MIB, pages, start};
use plenum_engine::{AdmissionError, EngineError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_over_the_work_memory_is_refused_naming_its_bytes() {
    let (engine, calls) = start(Some(192 * MIB)).await;
    // 2048² × 3 elements × 64 bytes = 768 MiB for one row.
    let refused = engine.infer(pages(1, 2048)).await.unwrap_err();
    match &refused {
        EngineError::Admission(AdmissionError::TooLarge { bytes, budget }) => {
            assert!(*bytes > 600 * MIB, "{refused}");
            assert_eq!(*budget, 192 * MIB);
        }
        other => panic!("expected a refusal by bytes, got {other:?}"),
    }
    assert!(refused.to_string().contains("bytes"));
    assert!(calls.lock().unwrap().is_empty(), "the model never saw it");
    // Smaller work still goes through.
    let small = engine
        .infer(pages(1, 320))
        .await
        .expect("a small page fits");
    assert_eq!(small.size(), [1, 2]);
}
