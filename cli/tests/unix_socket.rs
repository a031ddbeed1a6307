//! The node-local broker: a broker on a Unix socket, a real `plenum broker lease`
//! child process holding a lease through it (booked under the child's real PID),
//! and `plenum broker status` and `plenum health` asking over the same socket.

mod support;

use std::sync::Arc;
use std::time::Duration;

use plenum_broker::inventory::Simulated;
use plenum_broker::ledger::LedgerConfig;
use plenum_broker::{Broker, BrokerSettings};
use plenum_runtime::listen::{ListenAddr, Listener};
use tokio_util::sync::CancellationToken;

async fn start_broker(dir: &tempfile::TempDir) -> (String, CancellationToken) {
    let path = dir.path().join("run/plenum/broker.sock");
    let listener = Listener::bind(&ListenAddr::Unix(path.clone()))
        .await
        .expect("bind the socket");
    let shutdown = CancellationToken::new();
    let broker = Broker::new(
        BrokerSettings {
            ledger: LedgerConfig {
                reserve_bytes: 1 << 30,
                ..LedgerConfig::default()
            },
            inventory: Arc::new(Simulated::parse("GTX 1070:8GiB").unwrap()),
            token: None,
            poll_interval: Duration::from_millis(50),
            drain_timeout: Duration::from_millis(200),
        },
        shutdown.clone(),
    );
    tokio::spawn(async move { broker.serve(listener).await.unwrap() });
    (format!("unix://{}", path.display()), shutdown)
}

async fn status_json(url: &str) -> serde_json::Value {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_plenum"))
        .args(["broker", "--broker", url, "status", "--json"])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("valid JSON")
}

#[tokio::test]
async fn a_lease_over_a_unix_socket_is_booked_under_the_holders_real_pid() {
    let dir = tempfile::tempdir().unwrap();
    let (url, shutdown) = start_broker(&dir).await;
    let (mut child, pid) = support::lease_holder(
        &url,
        &["--bytes", "2GiB", "--commit", "2GiB", "--hold", "forever"],
        "committed",
    )
    .await;

    let status = status_json(&url).await;
    let leases = status["leases"].as_array().expect("leases");
    assert_eq!(leases.len(), 1, "{status:#}");
    assert_eq!(leases[0]["holder"]["pid"], pid, "{status:#}");

    child.start_kill().unwrap();
    child.wait().await.unwrap();
    shutdown.cancel();
}

#[tokio::test]
async fn health_answers_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (url, shutdown) = start_broker(&dir).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_plenum"))
        .args(["health", &url])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "SERVING");
    shutdown.cancel();
}
