//! On a GPU, one input that alone needs more working memory than the model's work
//! lease asks the broker for a peak lease for the rest, held for that call only; when
//! the broker cannot grant it, the input runs on the CPU, or with `cpu_fallback` off
//! the request is refused naming the bytes and the model never sees it. Alone in its
//! binary: see `hungry`.

mod hungry;
#[allow(dead_code)]
mod support;

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use hungry::{BYTES_PER_ELEMENT, Gate, MIB, pages, start_on, start_with_fallback};
use plenum_engine::{AdmissionError, DeviceChoice, EngineError, Target};
use plenum_lease::{LeaseClient, LeaseClientConfig};
use plenum_proto::broker::v1::broker_client::BrokerClient;
use plenum_proto::broker::v1::{Lease, LeasePurpose, StatusRequest};
use support::start_broker;

const WORK: u64 = 192 * MIB;

async fn peak_leases(url: &str) -> Vec<Lease> {
    let mut broker = BrokerClient::connect(url.to_owned()).await.unwrap();
    let status = broker.status(StatusRequest {}).await.unwrap().into_inner();
    status
        .leases
        .into_iter()
        .filter(|lease| lease.purpose() == LeasePurpose::Peak)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_over_the_work_lease_runs_under_a_peak_lease_held_for_that_call() {
    let (url, shutdown) = start_broker("GTX 1070:8GiB").await;
    let lease = LeaseClient::connect(LeaseClientConfig::new(url.clone(), "hungry")).unwrap();
    let (entered, entered_rx) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let gate = Arc::new(Gate {
        over_elements: 3 * 1024 * 1024,
        entered,
        release: Mutex::new(release_rx),
    });
    let (engine, calls) = start_on(DeviceChoice::SimGpu, Some(WORK), Some(lease), Some(gate)).await;
    let state = engine.state().borrow().clone();
    assert_eq!(state.placement, Target::SimulatedGpu(0), "{}", state.reason);
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
        peak.granted_bytes > row - WORK - row / 4 && peak.granted_bytes < row,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peak_the_broker_cannot_grant_runs_the_input_on_the_cpu() {
    // 1 GiB leasable: the weights (256 MiB) and the work lease fit, a 2.8 GiB peak never does.
    let (url, shutdown) = start_broker("small:2GiB").await;
    let lease = LeaseClient::connect(LeaseClientConfig::new(url.clone(), "hungry")).unwrap();
    let (engine, calls) = start_on(DeviceChoice::SimGpu, Some(WORK), Some(lease), None).await;
    let state = engine.state().borrow().clone();
    assert_eq!(state.placement, Target::SimulatedGpu(0), "{}", state.reason);

    let output = engine
        .infer(pages(2, 4096))
        .await
        .expect("the pages the GPU cannot take are read on the CPU");
    assert_eq!(output.size(), [2, 2]);
    assert_eq!(
        *calls.lock().unwrap(),
        [1, 1],
        "one row per call on the CPU"
    );
    assert_eq!(engine.metrics().cpu_fallbacks(), 1);
    assert!(peak_leases(&url).await.is_empty());
    // Nothing of the 3 GiB passes was counted on the simulated device: the work lease
    // reports no use past its grant, so the broker sees no overrun (placement reports
    // use every 250 ms; the heartbeat carries it).
    let mut broker = BrokerClient::connect(url.clone()).await.unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let status = broker.status(StatusRequest {}).await.unwrap().into_inner();
        assert!(status.overruns.is_empty(), "{:?}", status.overruns);
        for lease in &status.leases {
            assert!(
                lease.used_bytes.unwrap_or(0) <= lease.granted_bytes,
                "{} reports {:?} of {} granted",
                lease.model_key,
                lease.used_bytes,
                lease.granted_bytes
            );
        }
    }
    // The model is still on the GPU, batching as before.
    calls.lock().unwrap().clear();
    assert_eq!(engine.state().borrow().placement, Target::SimulatedGpu(0));
    let small = engine.infer(pages(2, 320)).await.expect("small pages fit");
    assert_eq!(small.size(), [2, 2]);
    assert_eq!(*calls.lock().unwrap(), [2]);
    shutdown.cancel();
}

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
