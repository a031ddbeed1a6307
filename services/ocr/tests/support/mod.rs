//! The real OCR service on a loopback socket, for every test file here.

use std::path::PathBuf;
use std::time::Duration;

use plenum_engine::{DeviceChoice, EngineSettings};
use plenum_ocr::{OcrSettings, run};
use plenum_proto::ocr::v1::ocr_client::OcrClient;
use plenum_vision::decode::Limits;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Starts `plenum-ocr` on the CPU with the provisioned models and connects to it;
/// cancel the token to stop it.
pub async fn start() -> (OcrClient<Channel>, CancellationToken) {
    start_with(engine_settings()).await
}

/// The engine settings [`start`] serves with: the CPU, batches gathered for 2 ms.
pub fn engine_settings() -> EngineSettings {
    EngineSettings {
        device: DeviceChoice::Cpu,
        max_queue_delay: Duration::from_millis(2),
        ..EngineSettings::default()
    }
}

/// The same with these engine settings.
pub async fn start_with(engine: EngineSettings) -> (OcrClient<Channel>, CancellationToken) {
    start_configured(engine, true).await
}

/// The same, with text detection in windows around `read_within` regions or not.
pub async fn start_configured(
    engine: EngineSettings,
    fast_within: bool,
) -> (OcrClient<Channel>, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let settings = OcrSettings {
        models: repo().join("models"),
        engine,
        lease: None,
        limits: Limits {
            max_bytes: 4 << 20,
            max_pixels: 4_000_000,
        },
        max_crops: 64,
        fast_within,
        max_request_bytes: 16 << 20,
        drain_timeout: Duration::from_millis(200),
    };
    let registry = prometheus::Registry::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        run(settings, &registry, listener, stop)
            .await
            .expect("ocr runs")
    });
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    plenum_runtime::health::wait_serving(channel.clone(), Duration::from_secs(120))
        .await
        .expect("SERVING within two minutes");
    (OcrClient::new(channel), shutdown)
}
