//! What the engine tests with a real model and a real broker share: the provisioned
//! PP-OCRv4 recognition manifest, a broker over simulated devices, and waiting for an
//! engine state.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use plenum_broker::inventory::Simulated;
use plenum_broker::ledger::LedgerConfig;
use plenum_broker::{Broker, BrokerSettings};
use plenum_engine::{Engine, EngineState, ModelManifest};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const GIB: u64 = 1 << 30;

/// PP-OCRv4 recognition as `make setup` provisions it.
pub fn rec_manifest() -> ModelManifest {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/ocr/generated/ppocr-v4-rec.toml");
    assert!(
        path.exists(),
        "{} is missing: run `make setup` to provision the models",
        path.display()
    );
    ModelManifest::load(&path).expect("valid manifest")
}

/// The peak leases the broker at `url` holds now.
#[allow(dead_code)] // the working-memory tests' only
pub async fn peak_leases(url: &str) -> Vec<plenum_proto::broker::v1::Lease> {
    use plenum_proto::broker::v1::broker_client::BrokerClient;
    use plenum_proto::broker::v1::{LeasePurpose, StatusRequest};
    let mut broker = BrokerClient::connect(url.to_owned()).await.unwrap();
    let status = broker.status(StatusRequest {}).await.unwrap().into_inner();
    status
        .leases
        .into_iter()
        .filter(|lease| lease.purpose() == LeasePurpose::Peak)
        .collect()
}

/// A real broker over simulated devices (`--simulate` syntax), 1 GiB reserved on each.
pub async fn start_broker(devices: &str) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let broker = Broker::new(
        BrokerSettings {
            ledger: LedgerConfig {
                reserve_bytes: GIB,
                revoke_deadline: Duration::from_secs(5),
                ..LedgerConfig::default()
            },
            inventory: Arc::new(Simulated::parse(devices).unwrap()),
            token: None,
            poll_interval: Duration::from_millis(20),
            drain_timeout: Duration::from_millis(200),
        },
        shutdown.clone(),
    );
    tokio::spawn(async move { broker.serve(listener).await.unwrap() });
    (url, shutdown)
}

/// The engine's state once `check` holds; panics naming `what` after 20 s.
pub async fn wait_for_state(
    engine: &Engine,
    what: &str,
    check: impl Fn(&EngineState) -> bool,
) -> EngineState {
    let mut state = engine.state();
    let reached = tokio::time::timeout(Duration::from_secs(20), state.wait_for(|s| check(s))).await;
    match reached {
        Ok(Ok(state)) => state.clone(),
        _ => panic!("{what}: engine state stayed {:?}", engine.state().borrow()),
    }
}
