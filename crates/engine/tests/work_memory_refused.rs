//! On a GPU with `cpu_fallback` off, one input that needs a peak lease the broker
//! cannot grant is refused naming the bytes, and the model never sees it. Alone in its
//! binary: another test's passes would disturb this engine's profile, which measures
//! the whole process (see `hungry`).

mod hungry;
#[allow(dead_code)]
mod support;

use hungry::{GPU_WORK, MIB, on_the_simulated_gpu, pages};
use plenum_engine::{AdmissionError, EngineError};
use support::{peak_leases, start_broker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_cpu_fallback_a_peak_the_broker_cannot_grant_refuses_the_request() {
    let (url, shutdown) = start_broker("small:2GiB").await;
    let (engine, calls) = on_the_simulated_gpu(&url, None, false).await;

    let refused = engine.infer(pages(1, 4096)).await.unwrap_err();
    match &refused {
        EngineError::Admission(AdmissionError::PeakRefused { bytes, budget, .. }) => {
            assert!(*bytes > 2 * 1024 * MIB, "{refused}");
            assert_eq!(*budget, GPU_WORK);
        }
        other => panic!("expected a refused peak, got {other:?}"),
    }
    let status = refused.clone().into_status("detection");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.message().contains("bytes"), "{}", status.message());
    assert!(calls.lock().unwrap().is_empty(), "the model never saw it");
    assert!(peak_leases(&url).await.is_empty());
    let small = engine
        .infer(pages(1, 320))
        .await
        .expect("the engine serves on");
    assert_eq!(small.size(), [1, 2]);
    shutdown.cancel();
}
