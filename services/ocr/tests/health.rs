//! OCR's health while its three models load, over real gRPC: NOT_SERVING and calls
//! refused with UNAVAILABLE until every model is ready, then SERVING. The models are
//! fakes (here, not in the product) that load only when the test lets them.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use plenum_engine::tch::{Device, Kind, Tensor};
use plenum_engine::{DeviceChoice, EngineSettings, Model, ModelLoader};
use plenum_ocr::{OcrSettings, run};
use plenum_proto::ocr::v1::{self as pb, ocr_client::OcrClient};
use plenum_vision::decode::Limits;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Answers zeros; enough for warmups, which is all this test runs.
struct Idle;

impl Model for Idle {
    fn forward(&mut self, input: &Tensor) -> Result<Tensor, String> {
        Ok(Tensor::zeros(
            [input.size()[0], 1],
            (Kind::Float, Device::Cpu),
        ))
    }

    fn move_to(&mut self, _device: Device) -> Result<(), String> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_unavailable_and_health_not_serving_until_all_three_models_load() {
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let loader = ModelLoader::new(move |_| {
        // Every model waits until the test drops its end of the gate.
        let _ = gate.lock().unwrap().recv();
        Ok(Box::new(Idle))
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let settings = OcrSettings {
        models: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"),
        engine: EngineSettings {
            device: DeviceChoice::Cpu,
            loader,
            ..EngineSettings::default()
        },
        lease: None,
        limits: Limits {
            max_bytes: 4 << 20,
            max_pixels: 4_000_000,
        },
        max_crops: 64,
        fast_within: true,
        max_request_bytes: 16 << 20,
        drain_timeout: Duration::from_millis(200),
    };
    let stop = shutdown.clone();
    let running = tokio::spawn(async move {
        let registry = prometheus::Registry::new();
        run(settings, &registry, listener, stop).await
    });
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let mut ocr = OcrClient::new(channel);

    for service in ["", "plenum.ocr.v1.Ocr"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers while the models load")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::NotServing as i32, "`{service}`");
    }
    let page = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/detector/images/case0_640x640.png"),
    )
    .unwrap();
    let refused = ocr
        .read_text(pb::ReadTextRequest {
            image: page.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("loading"), "{refused:?}");
    let refused = ocr
        .recognize(pb::RecognizeRequest {
            crops: vec![page],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    let mut updates = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    drop(release);
    let serving = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(update) = updates.message().await.unwrap() {
            if update.status == ServingStatus::Serving as i32 {
                return;
            }
        }
        panic!("the health watch ended before SERVING");
    });
    serving.await.expect("SERVING once the models load");

    shutdown.cancel();
    running.await.unwrap().expect("a clean stop");
}
