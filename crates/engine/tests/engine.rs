//! The engine with a real converted model (PP-OCRv4 recognition, provisioned by
//! `make setup`) on the CPU, and a real broker with a simulated GPU.

mod support;

use std::time::Duration;

use plenum_engine::tch::{CModule, Device, Kind, Tensor};
use plenum_engine::{
    DeviceChoice, Engine, EngineError, EngineMetrics, EngineSettings, Precision, Target, Variant,
};
use plenum_lease::{LeaseClient, LeaseClientConfig, LeaseRequest, Priority};
use support::{GIB, rec_manifest, start_broker, wait_for_state};
use tokio_util::sync::CancellationToken;

fn crops(batch: i64, width: i64, seed: i64) -> Tensor {
    plenum_engine::tch::manual_seed(seed);
    Tensor::rand([batch, 3, 48, width], (Kind::Float, Device::Cpu)) * 2.0 - 1.0
}

fn settings(device: DeviceChoice) -> EngineSettings {
    EngineSettings {
        device,
        max_batch: 16,
        max_queue_delay: Duration::from_millis(20),
        queue_capacity: 64,
        warmup_timeout: Duration::from_secs(60),
        lease_wait: Duration::from_millis(300),
        priority: Priority::Low,
        idle_after: Duration::from_millis(200),
        ..EngineSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_through_the_engine_equal_the_model_called_directly() {
    let manifest = rec_manifest();
    let direct = CModule::load(manifest.model_path()).unwrap();
    let engine = Engine::start(
        manifest,
        settings(DeviceChoice::Cpu),
        None,
        EngineMetrics::unregistered("rec"),
    )
    .await
    .expect("loads");
    let state = engine.state().borrow().clone();
    assert!(state.ready);
    assert_eq!(state.placement, Target::Cpu);

    let input = crops(3, 160, 1);
    let expected = plenum_engine::tch::no_grad(|| direct.forward_ts(&[&input])).unwrap();
    let output = engine.infer(input).await.expect("inference");
    assert_eq!(output.size(), expected.size());
    assert_eq!(
        output.size(),
        [3, 20, 6625],
        "rec: W/8 steps over 6,625 classes"
    );
    let diff = (output - expected).abs().max().double_value(&[]);
    assert!(
        diff < 1e-5,
        "engine output differs from a direct call by {diff}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_form_batches_and_each_gets_its_own_rows() {
    let engine = Engine::start(
        rec_manifest(),
        settings(DeviceChoice::Cpu),
        None,
        EngineMetrics::unregistered("rec"),
    )
    .await
    .unwrap();
    let (calls_before, _) = engine.metrics().batches();
    let inputs: Vec<Tensor> = (0..12).map(|seed| crops(1, 96, seed)).collect();
    let alone = engine.infer(inputs[5].shallow_clone()).await.unwrap();

    let tasks: Vec<_> = inputs
        .iter()
        .map(|input| {
            let engine = engine.clone();
            let input = input.shallow_clone();
            tokio::spawn(async move { engine.infer(input).await })
        })
        .collect();
    let mut outputs = Vec::new();
    for task in tasks {
        outputs.push(task.await.unwrap().expect("each request answered"));
    }
    let (calls_after, rows_after) = engine.metrics().batches();
    let calls = calls_after - calls_before - 1;
    assert!(
        calls < 12,
        "12 concurrent requests took {calls} model calls: no batching"
    );
    assert!(rows_after >= 13.0);
    let diff = (&outputs[5] - alone).abs().max().double_value(&[]);
    assert!(
        diff < 1e-4,
        "request 5 got someone else's rows (diff {diff})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once_instead_of_waiting() {
    let mut tight = settings(DeviceChoice::Cpu);
    tight.queue_capacity = 2;
    tight.max_batch = 1;
    tight.max_queue_delay = Duration::ZERO;
    let engine = Engine::start(
        rec_manifest(),
        tight,
        None,
        EngineMetrics::unregistered("rec"),
    )
    .await
    .unwrap();
    let tasks: Vec<_> = (0..24)
        .map(|seed| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.infer(crops(1, 320, seed)).await })
        })
        .collect();
    let mut served = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => served += 1,
            Err(EngineError::Overloaded { capacity: 2 }) => refused += 1,
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert!(refused > 0, "24 requests into a queue of 2 must overflow");
    assert!(served >= 1);
    assert_eq!(served + refused, 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_broker_the_model_runs_on_the_cpu_and_says_why() {
    let engine = Engine::start(
        rec_manifest(),
        settings(DeviceChoice::Auto),
        None,
        EngineMetrics::unregistered("rec"),
    )
    .await
    .unwrap();
    let state = engine.state().borrow().clone();
    assert_eq!(state.placement, Target::Cpu);
    assert!(state.reason.contains("broker"), "{}", state.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_int8_model_stays_on_the_cpu_even_with_a_broker_and_a_free_gpu() {
    // The fp32 file stands in for the int8 one: what is tested is placement.
    let mut manifest = rec_manifest();
    manifest.variants = vec![Variant {
        precision: Precision::Int8,
        file: manifest.file.clone(),
        sha256: manifest.sha256.clone(),
        vram_estimate_bytes: 0,
        verified_max_rel_diff: None,
    }];
    let (url, shutdown) = start_broker("GTX 1070:8GiB").await;
    let lease = LeaseClient::connect(LeaseClientConfig::new(url, "ocr")).unwrap();
    let engine = Engine::start(
        manifest,
        EngineSettings {
            precision: Precision::Int8,
            ..settings(DeviceChoice::SimGpu)
        },
        Some(lease),
        EngineMetrics::unregistered("rec"),
    )
    .await
    .unwrap();
    // With fp32 this start would have taken the free simulated GPU's lease.
    let state = engine.state().borrow().clone();
    assert_eq!(state.placement, Target::Cpu, "{}", state.reason);
    assert!(state.reason.contains("int8"), "{}", state.reason);
    let output = engine.infer(crops(2, 64, 5)).await.expect("f32 input");
    assert_eq!(output.size(), [2, 8, 6625]);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_warmup_is_a_warning_and_the_model_still_serves() {
    let mut manifest = rec_manifest();
    manifest.input.shape = vec![-1, 7, 48, -1]; // warmup feeds 7 channels: the model refuses
    let engine = Engine::start(
        manifest,
        settings(DeviceChoice::Cpu),
        None,
        EngineMetrics::unregistered("rec"),
    )
    .await
    .expect("a warmup failure does not stop the start");
    assert!(engine.state().borrow().ready);
    let output = engine
        .infer(crops(1, 64, 3))
        .await
        .expect("serves after a failed warmup");
    assert_eq!(output.size(), [1, 8, 6625]);
    // A bad request fails alone; the engine keeps serving.
    let bad = engine
        .infer(Tensor::zeros([1, 5, 48, 64], (Kind::Float, Device::Cpu)))
        .await;
    assert!(matches!(bad, Err(EngineError::Inference(_))), "{bad:?}");
    assert!(engine.infer(crops(1, 64, 4)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_file_that_fails_its_checksum_is_not_loaded() {
    let mut manifest = rec_manifest();
    manifest.sha256 = "0".repeat(64);
    let error = Engine::start(
        manifest,
        settings(DeviceChoice::Cpu),
        None,
        EngineMetrics::unregistered("rec"),
    )
    .await
    .expect_err("checksum mismatch");
    assert!(error.to_string().contains("sha256"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_goes_to_the_device_its_lease_was_granted_on() {
    // Best fit: the 2 GiB card (1 GiB leasable) is left with less after the grant
    // than the 8 GiB one, so the broker places the lease on device 1, not device 0.
    let (url, shutdown) = start_broker("big:8GiB,small:2GiB").await;
    let lease = LeaseClient::connect(LeaseClientConfig::new(url, "ocr")).unwrap();
    let engine = Engine::start(
        rec_manifest(),
        settings(DeviceChoice::SimGpu),
        Some(lease),
        EngineMetrics::unregistered("rec"),
    )
    .await
    .unwrap();
    let state = wait_for_state(&engine, "on a GPU", |s| s.placement.is_gpu()).await;
    assert_eq!(state.placement, Target::SimulatedGpu(1), "{}", state.reason);
    let output = engine.infer(crops(1, 64, 7)).await.expect("serves there");
    assert_eq!(output.size(), [1, 8, 6625]);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_follows_the_lease_through_revocation_without_failing_a_request() {
    let (url, shutdown) = start_broker("GTX 1070:8GiB").await;
    let lease = LeaseClient::connect(LeaseClientConfig::new(url.clone(), "ocr")).unwrap();
    let engine = Engine::start(
        rec_manifest(),
        settings(DeviceChoice::SimGpu),
        Some(lease),
        EngineMetrics::unregistered("rec"),
    )
    .await
    .unwrap();
    wait_for_state(&engine, "on the GPU at start", |s| s.placement.is_gpu()).await;

    // A steady stream of requests while placement changes underneath.
    let stop = CancellationToken::new();
    let stream = tokio::spawn({
        let engine = engine.clone();
        let stop = stop.clone();
        async move {
            let (mut ok, mut failed) = (0, 0);
            let mut seed = 0;
            while !stop.is_cancelled() {
                seed += 1;
                match engine.infer(crops(2, 64, seed)).await {
                    Ok(output) if output.size() == [2, 8, 6625] => ok += 1,
                    _ => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            (ok, failed)
        }
    });

    // A high-priority holder needs nearly the whole card: the broker revokes the
    // engine's lease (it is low priority and idle between requests).
    let urgent = LeaseClient::connect(LeaseClientConfig::new(url.clone(), "urgent")).unwrap();
    let big = urgent
        .acquire(
            LeaseRequest::weights("urgent", 7 * GIB)
                .priority(Priority::High)
                .wait(Duration::from_secs(15)),
        )
        .await
        .expect("granted once the engine gives its lease back");
    let state = wait_for_state(&engine, "moved to the CPU", |s| s.placement == Target::Cpu).await;
    assert!(state.reason.contains("revoked"), "{}", state.reason);

    // Capacity returns: the engine asks again and moves back to the GPU.
    big.release().await.unwrap();
    wait_for_state(&engine, "back on the GPU", |s| s.placement.is_gpu()).await;

    stop.cancel();
    let (ok, failed) = stream.await.unwrap();
    assert_eq!(
        failed, 0,
        "no request failed across the moves ({ok} served)"
    );
    assert!(ok > 0);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_at_start_it_serves_from_the_cpu_and_moves_up_when_room_appears() {
    let (url, shutdown) = start_broker("GTX 1070:8GiB").await;
    let hog = LeaseClient::connect(LeaseClientConfig::new(url.clone(), "hog")).unwrap();
    let mut held = hog
        .acquire(LeaseRequest::weights("hog", 7 * GIB))
        .await
        .unwrap();
    held.commit(7 * GIB).await.unwrap();
    held.set_busy(true);

    let lease = LeaseClient::connect(LeaseClientConfig::new(url.clone(), "ocr")).unwrap();
    let engine = Engine::start(
        rec_manifest(),
        settings(DeviceChoice::SimGpu),
        Some(lease),
        EngineMetrics::unregistered("rec"),
    )
    .await
    .unwrap();
    let state = engine.state().borrow().clone();
    assert!(state.ready, "serves from the CPU while refused");
    assert_eq!(state.placement, Target::Cpu);
    assert!(engine.infer(crops(1, 64, 9)).await.is_ok());

    held.release().await.unwrap();
    wait_for_state(&engine, "on the GPU once room appears", |s| {
        s.placement.is_gpu()
    })
    .await;
    shutdown.cancel();
}
