//! A real child process (`plenum broker lease`) holds a lease and hangs: SIGSTOP
//! silences its heartbeats past the session TTL while its process, and so its GPU
//! memory, lives on. The broker keeps the bytes booked as `unresponsive`; SIGCONT
//! and the holder reclaims them; SIGKILL and they are freed.

mod support;

use support::status;

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use plenum_broker::inventory::Simulated;
use plenum_broker::ledger::LedgerConfig;
use plenum_broker::{Broker, BrokerSettings};
use plenum_lease::{AcquireError, LeaseClient, LeaseClientConfig, LeaseRequest};
use plenum_proto::broker::v1::{self as pb};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const GIB: u64 = 1 << 30;
/// Generous bound for each change to show, so a slow CI box does not fail the test.
const PATIENCE: Duration = Duration::from_secs(15);

struct TestBroker {
    url: String,
    metrics: prometheus::Registry,
    shutdown: CancellationToken,
}

async fn start_broker() -> TestBroker {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let broker = Broker::new(
        BrokerSettings {
            ledger: LedgerConfig {
                reserve_bytes: GIB,
                session_ttl: Duration::from_secs(1),
                orphan_grace: Duration::from_millis(300),
                ..LedgerConfig::default()
            },
            inventory: Arc::new(Simulated::parse("GTX 1070:8GiB").unwrap()),
            token: None,
            poll_interval: Duration::from_millis(50),
            drain_timeout: Duration::from_millis(200),
        },
        shutdown.clone(),
    );
    let metrics = broker.metrics_registry();
    tokio::spawn(async move { broker.serve(listener).await.unwrap() });
    TestBroker {
        url,
        metrics,
        shutdown,
    }
}

/// Polls the broker's status until `check` holds; the broker's clock drives it.
async fn eventually(
    url: &str,
    what: &str,
    check: impl Fn(&pb::StatusResponse) -> bool,
) -> pb::StatusResponse {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = status(url).await;
        if check(&now) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not seen; last status: {now:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn state_of(status: &pb::StatusResponse, lease_id: &str) -> Option<pb::LeaseState> {
    status
        .leases
        .iter()
        .find(|lease| lease.lease_id == lease_id)
        .map(|lease| pb::LeaseState::try_from(lease.state).unwrap_or_default())
}

fn gauge(registry: &prometheus::Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .find(|family| family.name() == name)
        .and_then(|family| {
            family
                .get_metric()
                .first()
                .map(|m| m.get_gauge().get_value())
        })
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[tokio::test]
async fn a_stopped_holder_keeps_its_bytes_booked_and_reclaims_them_when_continued() {
    let broker = start_broker().await;
    let url = broker.url.clone();
    let (mut child, pid) = support::lease_holder(
        &url,
        &["--bytes", "2GiB", "--commit", "2GiB", "--hold", "forever"],
        "committed",
    )
    .await;
    let pid = Pid::from_raw(pid as i32);
    let held = status(&url).await;
    let lease_id = held.leases[0].lease_id.clone();

    // Hung: alive, holding its memory, silent.
    kill(pid, Signal::SIGSTOP).unwrap();
    let hung = eventually(&url, "the silent holder shows as unresponsive", |s| {
        state_of(s, &lease_id) == Some(pb::LeaseState::Unresponsive)
    })
    .await;
    assert!(hung.sessions.is_empty(), "its session ended");
    assert_eq!(
        hung.devices[0].leased_bytes,
        2 * GIB,
        "its bytes stay booked"
    );
    assert_eq!(hung.devices[0].free_for_lease_bytes, 5 * GIB);
    // The gauges follow the books at the next poll.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while gauge(&broker.metrics, "plenum_broker_unresponsive_holders") != 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the metric never counted the unresponsive holder"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Someone else cannot have the hung holder's memory.
    let other = LeaseClient::connect(LeaseClientConfig::new(url.clone(), "other")).unwrap();
    match other.acquire(LeaseRequest::weights("big", 6 * GIB)).await {
        Err(AcquireError::Refused { free_bytes, .. }) => assert_eq!(free_bytes, 5 * GIB),
        other => panic!("6 GiB must not fit beside a hung 2 GiB holder: {other:?}"),
    }

    // Continued: it reconnects and reclaims; the same lease is active again.
    kill(pid, Signal::SIGCONT).unwrap();
    let back = eventually(&url, "the continued holder reclaims its lease", |s| {
        state_of(s, &lease_id) == Some(pb::LeaseState::Active)
    })
    .await;
    let session = &back.leases[0].session_id;
    assert!(
        back.sessions.iter().any(|s| &s.session_id == session),
        "the lease belongs to the holder's new session"
    );

    // Killed: the bytes come back.
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let freed = eventually(&url, "the killed holder's lease is freed", |s| {
        s.leases.is_empty()
    })
    .await;
    assert_eq!(freed.devices[0].free_for_lease_bytes, 7 * GIB);
    other.close();
    broker.shutdown.cancel();
}

#[tokio::test]
async fn a_holder_killed_while_hung_is_freed() {
    let broker = start_broker().await;
    let url = broker.url.clone();
    let (mut child, pid) =
        support::lease_holder(&url, &["--bytes", "2GiB", "--hold", "forever"], "holding").await;
    let pid = Pid::from_raw(pid as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    eventually(&url, "unresponsive", |s| {
        s.leases.first().map(|l| l.state) == Some(pb::LeaseState::Unresponsive as i32)
    })
    .await;
    // SIGKILL ends even a stopped process; its memory and its process are gone.
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let freed = eventually(&url, "freed once the process is gone", |s| {
        s.leases.is_empty()
    })
    .await;
    assert_eq!(freed.devices[0].free_for_lease_bytes, 7 * GIB);
    broker.shutdown.cancel();
}
