//! The real detector service on a loopback socket, for the test files here.

use std::path::PathBuf;
use std::time::Duration;

use plenum_detector::{DetectorSettings, load_manifest, run};
use plenum_engine::{DeviceChoice, EngineSettings};
use plenum_proto::detector::v1::detector_client::DetectorClient;
use plenum_vision::decode::Limits;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Engine settings for a test: the CPU, batches formed within 2 ms.
pub fn cpu_engine() -> EngineSettings {
    EngineSettings {
        device: DeviceChoice::Cpu,
        max_queue_delay: Duration::from_millis(2),
        ..EngineSettings::default()
    }
}

/// Serves the committed model `model` with `engine` and pages of up to `max_pixels`;
/// returns a client once the service says SERVING.
pub async fn start(
    model: &str,
    engine: EngineSettings,
    max_pixels: u64,
) -> (DetectorClient<Channel>, CancellationToken) {
    start_with_pass_scale(model, engine, max_pixels, 1.0).await
}

/// [`start`] with `--pass-scale pass_scale`.
pub async fn start_with_pass_scale(
    model: &str,
    engine: EngineSettings,
    max_pixels: u64,
    pass_scale: f32,
) -> (DetectorClient<Channel>, CancellationToken) {
    let manifest = load_manifest(&repo().join("models"), model).expect("committed model");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let settings = DetectorSettings {
        manifest,
        engine,
        lease: None,
        limits: Limits {
            max_bytes: 4 << 20,
            max_pixels,
        },
        max_images: 8,
        max_request_bytes: 16 << 20,
        tile_overlap: 128,
        max_single_pass: 2048,
        pass_scale,
        drain_timeout: Duration::from_millis(200),
    };
    let registry = prometheus::Registry::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        run(settings, &registry, listener, stop)
            .await
            .expect("detector runs")
    });
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    plenum_runtime::health::wait_serving(channel.clone(), Duration::from_secs(120))
        .await
        .expect("SERVING within two minutes");
    let client = DetectorClient::new(channel);
    (client.max_decoding_message_size(64 << 20), shutdown)
}
