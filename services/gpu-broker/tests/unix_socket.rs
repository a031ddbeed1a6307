//! The broker on a Unix socket books a holder under the PID the kernel reports
//! for the socket's peer, whatever the holder claims; over TCP the claim stands.

use std::sync::Arc;
use std::time::Duration;

use plenum_broker::inventory::Simulated;
use plenum_broker::{Broker, BrokerSettings};
use plenum_proto::broker::v1::broker_client::BrokerClient;
use plenum_proto::broker::v1::{self as pb, session_event, session_request};
use plenum_runtime::listen::{ListenAddr, Listener};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

mod common;

/// A PID no test process has: what a holder in another PID namespace might report.
const CLAIMED_PID: u32 = 4_000_000;

async fn start(addr: ListenAddr) -> (String, CancellationToken) {
    let listener = Listener::bind(&addr).await.expect("bind");
    let url = match listener.local_addr().unwrap() {
        ListenAddr::Tcp(addr) => format!("http://{addr}"),
        unix => unix.to_string(),
    };
    let shutdown = CancellationToken::new();
    let broker = Broker::new(
        BrokerSettings {
            ledger: common::gtx_1070(),
            inventory: Arc::new(Simulated::parse("GTX 1070:8GiB").unwrap()),
            token: None,
            poll_interval: Duration::from_millis(20),
            drain_timeout: Duration::from_millis(200),
        },
        shutdown.clone(),
    );
    tokio::spawn(async move { broker.serve(listener).await.expect("broker serves") });
    (url, shutdown)
}

async fn client(url: &str) -> BrokerClient<Channel> {
    let channel = Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .expect("broker reachable");
    BrokerClient::new(channel)
}

/// Opens a session claiming `CLAIMED_PID` and returns the PID the broker booked.
async fn booked_pid(url: &str) -> u32 {
    let mut client = client(url).await;
    let hello = pb::SessionRequest {
        kind: Some(session_request::Kind::Hello(pb::Hello {
            holder: Some(pb::Holder {
                name: "claims-a-pid".into(),
                instance_id: "instance-claims-a-pid".into(),
                pid: CLAIMED_PID,
                host: "test".into(),
            }),
            reclaims: vec![],
        })),
    };
    // Keep the request stream open so the session stays alive while we look.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(hello).await.unwrap();
    let mut events = client
        .open_session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("session opens")
        .into_inner();
    let opened = events.next().await.expect("an event").expect("opened");
    let Some(session_event::Kind::Opened(opened)) = opened.kind else {
        panic!("first event is not Opened: {opened:?}");
    };
    let status = client
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    drop(tx);
    let session = status
        .sessions
        .iter()
        .find(|session| session.session_id == opened.session_id)
        .expect("the session is in the books");
    session.holder.as_ref().expect("holder").pid
}

#[tokio::test]
async fn over_a_unix_socket_the_peer_credentials_name_the_holder_pid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/broker.sock");
    let (url, shutdown) = start(ListenAddr::Unix(path.clone())).await;
    assert!(url.starts_with("unix:///"), "{url}");

    assert_eq!(booked_pid(&url).await, std::process::id());

    shutdown.cancel();
}

#[tokio::test]
async fn over_tcp_the_holder_reported_pid_stands() {
    let (url, shutdown) = start(ListenAddr::Tcp("127.0.0.1:0".parse().unwrap())).await;

    assert_eq!(booked_pid(&url).await, CLAIMED_PID);

    shutdown.cancel();
}
