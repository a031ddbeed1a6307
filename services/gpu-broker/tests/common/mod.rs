//! Starts a real broker on 127.0.0.1:0 in this process, for tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use plenum_broker::inventory::{Inventory, Simulated};
use plenum_broker::ledger::LedgerConfig;
use plenum_broker::{Broker, BrokerSettings};
use plenum_proto::broker::v1 as pb;
use plenum_proto::broker::v1::broker_client::BrokerClient;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const GIB: u64 = 1 << 30;

pub struct RunningBroker {
    pub addr: SocketAddr,
    pub metrics: prometheus::Registry,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
}

impl RunningBroker {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> BrokerClient<Channel> {
        BrokerClient::connect(self.url())
            .await
            .expect("broker reachable")
    }

    pub async fn status(&self) -> pb::StatusResponse {
        self.client()
            .await
            .status(pb::StatusRequest {})
            .await
            .expect("status")
            .into_inner()
    }

    /// Stops the broker and waits until it no longer serves.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// The old system's machine: one simulated 8 GiB GTX 1070 with 1 GiB reserve.
pub fn gtx_1070() -> LedgerConfig {
    LedgerConfig {
        reserve_bytes: GIB,
        session_ttl: Duration::from_secs(3),
        orphan_grace: Duration::from_millis(300),
        release_confirm_timeout: Duration::from_secs(2),
        revoke_deadline: Duration::from_secs(3),
        recovery_window: Duration::ZERO,
        loading_timeout: Duration::from_secs(60),
        overrun_tolerance: 0,
        overrun_settle: Duration::ZERO,
    }
}

pub async fn start(ledger: LedgerConfig) -> RunningBroker {
    start_with(
        ledger,
        Arc::new(Simulated::parse("GTX 1070:8GiB").unwrap()),
        None,
        "127.0.0.1:0",
    )
    .await
}

pub async fn start_with(
    ledger: LedgerConfig,
    inventory: Arc<dyn Inventory>,
    token: Option<&str>,
    addr: &str,
) -> RunningBroker {
    let listener = TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let broker = Broker::new(
        BrokerSettings {
            ledger,
            inventory,
            token: token.map(Arc::from),
            poll_interval: Duration::from_millis(20),
            drain_timeout: Duration::from_millis(500),
        },
        shutdown.clone(),
    );
    let metrics = broker.metrics_registry();
    let task = tokio::spawn(async move {
        broker.serve(listener).await.expect("broker serves");
    });
    RunningBroker {
        addr,
        metrics,
        shutdown,
        task,
    }
}

/// Polls `check` on the broker's status until it holds, or fails after `within`.
/// Polling a real server is the point here: the broker's clock drives the change.
pub async fn eventually<F>(
    broker: &RunningBroker,
    within: Duration,
    what: &str,
    check: F,
) -> pb::StatusResponse
where
    F: Fn(&pb::StatusResponse) -> bool,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let status = broker.status().await;
        if check(&status) {
            return status;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{what}: not true within {within:?}; last status: {status:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("debug,h2=info,tower=info,hyper=info")
        .with_test_writer()
        .try_init();
}
