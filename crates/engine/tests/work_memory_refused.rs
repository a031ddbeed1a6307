//! On a GPU with `cpu_fallback` off, one input that needs a peak lease the broker
//! cannot grant is refused naming the bytes, and the model never sees it. Alone in its
//! binary: another test's passes would disturb this engine's profile, which measures
//! the whole process (see `hungry`).

mod hungry;
#[allow(dead_code)]
mod support;

use hungry::{MIB, pages, start_with_fallback};
use plenum_engine::{AdmissionError, DeviceChoice, EngineError, Target};
use plenum_lease::{LeaseClient, LeaseClientConfig};
use support::{peak_leases, start_broker};

const WORK: u64 = 192 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_cpu_fallback_a_peak_the_broker_cannot_grant_refuses_the_request() {
    let (url, shutdown) = start_broker("small:2GiB").await;
    let lease = LeaseClient::connect(LeaseClientConfig::new(url.clone(), "hungry")).unwrap();
    let (engine, calls) =
        start_with_fallback(DeviceChoice::SimGpu, Some(WORK), Some(lease), None, false).await;
    let state = engine.state().borrow().clone();
    assert_eq!(state.placement, Target::SimulatedGpu(0), "{}", state.reason);

    let refused = engine.infer(pages(1, 4096)).await.unwrap_err();
    match &refused {
        EngineError::Admission(AdmissionError::PeakRefused { bytes, budget, .. }) => {
            assert!(*bytes > 2 * 1024 * MIB, "{refused}");
            assert_eq!(*budget, WORK);
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
