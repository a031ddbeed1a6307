//! Idle offload and promotion with a real model (PP-OCRv4 recognition) and a real
//! broker over two simulated GPUs: an unused model gives its lease back and moves to
//! the CPU; the next request is served from the CPU and promotes it back to the
//! device the broker grants. And the lighter way to fit: the model's fp16 variant,
//! which asks for half the VRAM and answers like fp32 within the provisioned tolerance.

mod support;

use std::time::Duration;

use plenum_engine::tch::{Device, Kind, Tensor};
use plenum_engine::{DeviceChoice, Engine, EngineMetrics, EngineSettings, Precision, Target};
use plenum_lease::{LeaseClient, LeaseClientConfig, LeaseRequest, Priority, Purpose};
use support::{GIB, rec_manifest, start_broker, wait_for_state};

fn crops(seed: i64) -> Tensor {
    plenum_engine::tch::manual_seed(seed);
    Tensor::rand([1, 3, 48, 64], (Kind::Float, Device::Cpu))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_model_is_offloaded_and_the_next_request_promotes_it_back() {
    // Best fit puts the model on the 2 GiB card (device 1, 1 GiB leasable).
    let (url, shutdown) = start_broker("big:8GiB,small:2GiB").await;
    let lease = LeaseClient::connect(LeaseClientConfig::new(url.clone(), "ocr")).unwrap();
    let engine = Engine::start(
        rec_manifest(),
        EngineSettings {
            device: DeviceChoice::SimGpu,
            lease_wait: Duration::from_secs(2),
            priority: Priority::Low,
            idle_after: Duration::from_millis(200),
            idle_offload: Some(Duration::from_millis(600)),
            ..EngineSettings::default()
        },
        Some(lease.clone()),
        EngineMetrics::unregistered("rec"),
    )
    .await
    .unwrap();
    wait_for_state(&engine, "on device 1 at start", |s| {
        s.placement == Target::SimulatedGpu(1)
    })
    .await;

    // Nobody asks: the model moves to the CPU and gives its lease back.
    let state = wait_for_state(&engine, "offloaded", |s| s.placement == Target::Cpu).await;
    assert!(state.reason.contains("idle"), "{}", state.reason);
    assert_eq!(lease.held_count(), 0, "the lease is given back");
    // The broker sees the memory free: another holder gets all of device 1.
    let probe = LeaseClient::connect(LeaseClientConfig::new(url.clone(), "probe")).unwrap();
    let mut whole_card = LeaseRequest::weights("probe", GIB).wait(Duration::from_secs(5));
    whole_card.purpose = Purpose::Peak;
    whole_card.device = Some(1);
    let taken = probe
        .acquire(whole_card)
        .await
        .expect("device 1 is free again");
    taken.release().await.unwrap();

    // A request: answered (from the CPU), and the model goes back up.
    let output = engine
        .infer(crops(1))
        .await
        .expect("served while offloaded");
    assert_eq!(output.size(), [1, 8, 6625]);
    let state = wait_for_state(&engine, "promoted", |s| s.placement.is_gpu()).await;
    assert_eq!(state.placement, Target::SimulatedGpu(1), "{}", state.reason);
    assert_eq!(lease.held_count(), 2, "the weights and the work lease");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_idle_offload_an_unused_model_keeps_its_lease() {
    let (url, shutdown) = start_broker("small:2GiB").await;
    let lease = LeaseClient::connect(LeaseClientConfig::new(url, "ocr")).unwrap();
    let engine = Engine::start(
        rec_manifest(),
        EngineSettings {
            device: DeviceChoice::SimGpu,
            idle_after: Duration::from_millis(100),
            ..EngineSettings::default()
        },
        Some(lease.clone()),
        EngineMetrics::unregistered("rec"),
    )
    .await
    .unwrap();
    wait_for_state(&engine, "on the GPU", |s| s.placement.is_gpu()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(engine.state().borrow().placement.is_gpu());
    assert_eq!(lease.held_count(), 2, "the weights and the work lease");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fp16_variant_asks_for_half_and_answers_like_fp32() {
    let manifest = rec_manifest();
    let half = manifest
        .with_precision(Precision::Fp16)
        .expect("make setup provisions the fp16 variant");
    assert_eq!(half.vram_estimate_bytes, manifest.vram_estimate_bytes / 2);
    let start = |precision| {
        Engine::start(
            rec_manifest(),
            EngineSettings {
                device: DeviceChoice::Cpu,
                precision,
                ..EngineSettings::default()
            },
            None,
            EngineMetrics::unregistered("rec"),
        )
    };
    let (full, half) = (
        start(Precision::Fp32).await.unwrap(),
        start(Precision::Fp16).await.unwrap(),
    );
    let input = crops(5);
    let expected = full.infer(input.shallow_clone()).await.unwrap();
    let output = half.infer(input).await.unwrap();
    assert_eq!(output.kind(), Kind::Float, "answers in f32");
    let scale = expected.abs().max().double_value(&[]);
    let diff = (&output - &expected).abs().max().double_value(&[]) / scale;
    assert!(diff < 0.1, "fp16 differs from fp32 by {diff} of the range");
    let same = output
        .argmax(-1, false)
        .eq_tensor(&expected.argmax(-1, false))
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    assert!(same >= 0.99, "arg-max agrees on {same}");
}
