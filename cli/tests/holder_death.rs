//! A real child process holds a lease and is killed with SIGKILL: the broker's
//! books drop its lease within session TTL + grace. Also `plenum health` and
//! `plenum broker status --json` against a real broker.

mod support;

use support::status;

use std::sync::Arc;
use std::time::Duration;

use plenum_broker::inventory::Simulated;
use plenum_broker::ledger::LedgerConfig;
use plenum_broker::{Broker, BrokerSettings};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SESSION_TTL: Duration = Duration::from_secs(2);
const ORPHAN_GRACE: Duration = Duration::from_millis(500);

async fn start_broker() -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let broker = Broker::new(
        BrokerSettings {
            ledger: LedgerConfig {
                reserve_bytes: 1 << 30,
                session_ttl: SESSION_TTL,
                orphan_grace: ORPHAN_GRACE,
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
    (url, shutdown)
}

#[tokio::test]
async fn a_killed_holder_loses_its_lease_within_ttl_and_grace() {
    let (url, shutdown) = start_broker().await;
    let (mut child, pid) = support::lease_holder(
        &url,
        &["--bytes", "2GiB", "--commit", "2GiB", "--hold", "forever"],
        "committed",
    )
    .await;
    let held = status(&url).await;
    assert_eq!(held.leases.len(), 1);
    assert_eq!(held.leases[0].holder.as_ref().unwrap().pid, pid);

    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    let killed_at = tokio::time::Instant::now();
    let limit = SESSION_TTL + ORPHAN_GRACE + Duration::from_millis(500);
    loop {
        let now = status(&url).await;
        if now.leases.is_empty() {
            assert_eq!(now.devices[0].free_for_lease_bytes, 7 << 30);
            break;
        }
        assert!(
            killed_at.elapsed() < limit,
            "lease still booked {:?} after SIGKILL: {now:#?}",
            killed_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
}

#[tokio::test]
async fn health_exits_zero_only_when_serving() {
    let (url, shutdown) = start_broker().await;
    let addr = url.trim_start_matches("http://").to_owned();
    let serving = tokio::process::Command::new(env!("CARGO_BIN_EXE_plenum"))
        .args(["health", &addr])
        .output()
        .await
        .unwrap();
    assert!(serving.status.success());
    assert_eq!(String::from_utf8_lossy(&serving.stdout).trim(), "SERVING");

    let unknown = tokio::process::Command::new(env!("CARGO_BIN_EXE_plenum"))
        .args(["health", &addr, "--service", "no.such.Service"])
        .output()
        .await
        .unwrap();
    assert!(
        !unknown.status.success(),
        "an unknown service is not healthy"
    );

    shutdown.cancel();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nobody = listener.local_addr().unwrap().to_string();
    drop(listener);
    let down = tokio::process::Command::new(env!("CARGO_BIN_EXE_plenum"))
        .args(["health", &nobody, "--timeout", "500ms"])
        .output()
        .await
        .unwrap();
    assert!(!down.status.success(), "nothing listening is not healthy");
}

#[tokio::test]
async fn status_json_is_machine_readable() {
    let (url, shutdown) = start_broker().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_plenum"))
        .args(["broker", "--broker", &url, "status", "--json"])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("valid JSON");
    assert_eq!(json["inventory"], "simulated");
    assert_eq!(json["devices"][0]["name"], "GTX 1070");
    assert_eq!(json["devices"][0]["free_for_lease_bytes"], 7u64 << 30);
    shutdown.cancel();
}
