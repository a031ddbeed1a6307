//! The detector's health follows its model, over real gRPC: NOT_SERVING (and calls
//! UNAVAILABLE) while the model loads, SERVING once it can answer, NOT_SERVING when
//! the model's thread stops, and then `run` ends with `ModelStopped`. A fake model
//! (here, not in the product) loads when told and panics when told.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plenum_detector::{DetectorSettings, load_manifest, run};
use plenum_engine::tch::{Device, Kind, Tensor};
use plenum_engine::{DeviceChoice, EngineSettings, Model, ModelLoader, ModelStopped};
use plenum_proto::detector::v1::{self as pb, detector_client::DetectorClient};
use plenum_vision::decode::Limits;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const SERVICE: &str = "plenum.detector.v1.Detector";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A YOLO-shaped model that finds nothing: `[n, 4 + 2 classes, 1 anchor]` of zeros.
struct FakeYolo {
    panic_next: Arc<AtomicBool>,
}

impl Model for FakeYolo {
    fn forward(&mut self, input: &Tensor) -> Result<Tensor, String> {
        if self.panic_next.swap(false, Ordering::SeqCst) {
            panic!("the fake model was told to panic");
        }
        Ok(Tensor::zeros(
            [input.size()[0], 6, 1],
            (Kind::Float, Device::Cpu),
        ))
    }

    fn move_to(&mut self, _device: Device) -> Result<(), String> {
        Ok(())
    }
}

struct Detector {
    client: DetectorClient<Channel>,
    health: HealthClient<Channel>,
    run: JoinHandle<anyhow::Result<()>>,
    shutdown: CancellationToken,
}

/// Starts the detector with the fake model, which loads only once `gate` lets it
/// (a message, or the sender dropped) when one is given.
async fn start(
    gate: Option<std::sync::mpsc::Receiver<()>>,
    panic_next: Arc<AtomicBool>,
) -> Detector {
    let gate = Mutex::new(gate);
    let loader = ModelLoader::new(move |_| {
        if let Some(gate) = gate.lock().unwrap().as_ref() {
            let _ = gate.recv();
        }
        Ok(Box::new(FakeYolo {
            panic_next: Arc::clone(&panic_next),
        }))
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let settings = DetectorSettings {
        manifest: load_manifest(&repo().join("models"), "test-2class").expect("committed model"),
        engine: EngineSettings {
            device: DeviceChoice::Cpu,
            max_queue_delay: Duration::from_millis(1),
            loader,
            ..EngineSettings::default()
        },
        lease: None,
        limits: Limits {
            max_bytes: 4 << 20,
            max_pixels: 12_000_000,
        },
        max_images: 8,
        max_request_bytes: 16 << 20,
        tile_overlap: 128,
        max_single_pass: 2048,
        pass_scale: 1.0,
        drain_timeout: Duration::from_millis(200),
    };
    let stop = shutdown.clone();
    let run = tokio::spawn(async move {
        let registry = prometheus::Registry::new();
        run(settings, &registry, listener, stop).await
    });
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    Detector {
        client: DetectorClient::new(channel.clone()),
        health: HealthClient::new(channel),
        run,
        shutdown,
    }
}

fn page() -> pb::DetectRequest {
    let image = std::fs::read(repo().join("tests/detector/images/case0_640x640.png")).unwrap();
    pb::DetectRequest {
        images: vec![image],
        options: None,
    }
}

async fn check(health: &mut HealthClient<Channel>, service: &str) -> ServingStatus {
    let answer = health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health answers")
        .into_inner();
    ServingStatus::try_from(answer.status).unwrap()
}

/// Reads the health watch until `wanted` (bounded, so a wrong state fails the test).
async fn watch_until(updates: &mut tonic::Streaming<HealthCheckResponse>, wanted: ServingStatus) {
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(update) = updates.message().await.expect("the watch continues") {
            if update.status == wanted as i32 {
                return;
            }
        }
        panic!("the health watch ended before {wanted:?}");
    })
    .await;
    assert!(seen.is_ok(), "health never turned {wanted:?}");
}

async fn watch(health: &mut HealthClient<Channel>) -> tonic::Streaming<HealthCheckResponse> {
    health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch opens")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_the_model_loads_and_serving_after() {
    let (release, gate) = std::sync::mpsc::channel();
    let mut detector = start(Some(gate), Arc::default()).await;

    assert_eq!(
        check(&mut detector.health, "").await,
        ServingStatus::NotServing
    );
    assert_eq!(
        check(&mut detector.health, SERVICE).await,
        ServingStatus::NotServing
    );
    let refused = detector.client.detect(page()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("loading"), "{refused:?}");

    let mut updates = watch(&mut detector.health).await;
    release.send(()).unwrap();
    watch_until(&mut updates, ServingStatus::Serving).await;
    assert_eq!(
        check(&mut detector.health, SERVICE).await,
        ServingStatus::Serving
    );
    let answer = detector
        .client
        .detect(page())
        .await
        .expect("serves")
        .into_inner();
    assert_eq!(answer.results.len(), 1);
    assert_eq!(answer.model, "test-2class");

    detector.shutdown.cancel();
    detector.run.await.unwrap().expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_panic_turns_health_not_serving_and_run_ends_with_model_stopped() {
    let panic_next = Arc::new(AtomicBool::new(false));
    let mut detector = start(None, Arc::clone(&panic_next)).await;
    let mut updates = watch(&mut detector.health).await;
    watch_until(&mut updates, ServingStatus::Serving).await;
    detector
        .client
        .detect(page())
        .await
        .expect("serves before the panic");

    panic_next.store(true, Ordering::SeqCst);
    let failed = detector.client.detect(page()).await.unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    watch_until(&mut updates, ServingStatus::NotServing).await;

    let ended = tokio::time::timeout(Duration::from_secs(30), detector.run)
        .await
        .expect("run ends by itself after the drain")
        .unwrap();
    let error = ended.expect_err("a stopped model is an error");
    let stopped = error
        .downcast_ref::<ModelStopped>()
        .expect("the error is ModelStopped");
    assert_eq!(stopped.model, "test-2class");
    assert!(
        stopped.reason.contains("told to panic"),
        "{}",
        stopped.reason
    );
}
