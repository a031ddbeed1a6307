//! On a GPU, one input the broker cannot grant a peak lease for runs on the CPU, one
//! row per call, with nothing of it counted on the device. Alone in its binary: its
//! 3 GiB passes would disturb another test's profile, which measures the whole
//! process (see `hungry`).

mod hungry;
#[allow(dead_code)]
mod support;

use std::time::Duration;

use hungry::{on_the_simulated_gpu, pages};
use plenum_engine::Target;
use plenum_proto::broker::v1::StatusRequest;
use plenum_proto::broker::v1::broker_client::BrokerClient;
use support::{peak_leases, start_broker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peak_the_broker_cannot_grant_runs_the_input_on_the_cpu() {
    // 1 GiB leasable: the weights (256 MiB) and the work lease fit, a 2.8 GiB peak never does.
    let (url, shutdown) = start_broker("small:2GiB").await;
    let (engine, calls) = on_the_simulated_gpu(&url, None, true).await;

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
