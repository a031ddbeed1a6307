//! Bad input gets a clear error naming the problem, and the broker keeps serving.

mod common;

use std::time::Duration;

use common::{GIB, gtx_1070, start};
use plenum_lease::{LeaseClient, LeaseClientConfig, LeaseRequest};
use plenum_proto::broker::v1::{self as pb, session_event, session_request};
use tokio_stream::StreamExt;
use tonic::Code;

async fn session(url: &str, name: &str) -> (LeaseClient, String) {
    let client = LeaseClient::connect(LeaseClientConfig::new(url, name)).unwrap();
    let session_id = client
        .wait_for_session(Duration::from_secs(5))
        .await
        .unwrap();
    (client, session_id)
}

fn acquire(session_id: &str, bytes: i64) -> pb::AcquireRequest {
    pb::AcquireRequest {
        session_id: session_id.to_owned(),
        bytes,
        ..Default::default()
    }
}

#[tokio::test]
async fn byte_counts_must_be_positive_and_possible() {
    let broker = start(gtx_1070()).await;
    let (_client, session_id) = session(&broker.url(), "ocr").await;
    let mut raw = broker.client().await;
    for (bytes, why) in [
        (0, "must be > 0"),
        (-5, "must be > 0"),
        (1 << 50, "can never fit"),
    ] {
        let error = raw
            .acquire(acquire(&session_id, bytes))
            .await
            .expect_err("refused");
        assert_eq!(error.code(), Code::InvalidArgument, "{bytes}: {error:?}");
        assert!(
            error.message().starts_with("bytes:"),
            "names the field: {}",
            error.message()
        );
        assert!(error.message().contains(why), "{}", error.message());
    }
    let error = raw
        .commit(pb::CommitRequest {
            session_id: session_id.clone(),
            lease_id: "x".into(),
            measured_bytes: -1,
        })
        .await
        .expect_err("negative commit");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("measured_bytes"));

    let mut bad_device = acquire(&session_id, GIB as i64);
    bad_device.device_index = Some(7);
    let error = raw.acquire(bad_device).await.expect_err("no device 7");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("device_index"));

    let mut bad_priority = acquire(&session_id, GIB as i64);
    bad_priority.priority = 42;
    let error = raw.acquire(bad_priority).await.expect_err("no priority 42");
    assert!(error.message().contains("priority"));

    // Still serving.
    assert!(raw.acquire(acquire(&session_id, GIB as i64)).await.is_ok());
    broker.stop().await;
}

#[tokio::test]
async fn unknown_leases_and_sessions_are_not_found() {
    let broker = start(gtx_1070()).await;
    let (_client, session_id) = session(&broker.url(), "ocr").await;
    let mut raw = broker.client().await;
    let error = raw
        .release(pb::ReleaseRequest {
            session_id: session_id.clone(),
            lease_id: "no-such-lease".into(),
        })
        .await
        .expect_err("unknown lease");
    assert_eq!(error.code(), Code::NotFound);
    assert!(error.message().contains("no-such-lease"));

    let error = raw
        .acquire(acquire("no-such-session", GIB as i64))
        .await
        .expect_err("unknown session");
    assert_eq!(error.code(), Code::NotFound);
    let error = raw
        .acquire(acquire("", GIB as i64))
        .await
        .expect_err("missing session");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().starts_with("session_id"));
    broker.stop().await;
}

#[tokio::test]
async fn another_sessions_lease_is_not_yours() {
    let broker = start(gtx_1070()).await;
    let (owner, _) = session(&broker.url(), "detector").await;
    let (_thief, thief_session) = session(&broker.url(), "ocr").await;
    let lease = owner
        .acquire(LeaseRequest::weights("det", GIB))
        .await
        .unwrap();
    let mut raw = broker.client().await;
    let error = raw
        .release(pb::ReleaseRequest {
            session_id: thief_session.clone(),
            lease_id: lease.id().to_owned(),
        })
        .await
        .expect_err("not the owner");
    assert_eq!(error.code(), Code::PermissionDenied);
    let error = raw
        .commit(pb::CommitRequest {
            session_id: thief_session,
            lease_id: lease.id().to_owned(),
            measured_bytes: 1,
        })
        .await
        .expect_err("not the owner");
    assert_eq!(error.code(), Code::PermissionDenied);
    assert_eq!(
        broker.status().await.leases.len(),
        1,
        "the lease is untouched"
    );
    broker.stop().await;
}

fn heartbeat() -> pb::SessionRequest {
    pb::SessionRequest {
        kind: Some(session_request::Kind::Heartbeat(pb::Heartbeat::default())),
    }
}

fn hello(name: &str) -> pb::SessionRequest {
    pb::SessionRequest {
        kind: Some(session_request::Kind::Hello(pb::Hello {
            holder: Some(pb::Holder {
                name: name.into(),
                instance_id: uuid_like(name),
                pid: 1,
                host: "test".into(),
            }),
            reclaims: vec![],
        })),
    }
}

fn uuid_like(seed: &str) -> String {
    format!("instance-{seed}")
}

#[tokio::test]
async fn session_messages_out_of_order_are_refused() {
    let broker = start(gtx_1070()).await;
    let mut raw = broker.client().await;

    // A heartbeat before hello.
    let error = raw
        .open_session(tokio_stream::iter([heartbeat()]))
        .await
        .expect_err("hello must come first");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("hello"), "{}", error.message());

    // A hello without a holder.
    let empty = pb::SessionRequest {
        kind: Some(session_request::Kind::Hello(pb::Hello::default())),
    };
    let error = raw
        .open_session(tokio_stream::iter([empty]))
        .await
        .expect_err("holder required");
    assert!(
        error.message().starts_with("hello.holder"),
        "{}",
        error.message()
    );

    // A second hello on an open session ends it with an error.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello("ocr")).await.unwrap();
    let mut events = raw
        .open_session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("opened")
        .into_inner();
    let opened = events.next().await.unwrap().unwrap();
    assert!(matches!(opened.kind, Some(session_event::Kind::Opened(_))));
    tx.send(hello("ocr")).await.unwrap();
    let error = events.next().await.unwrap().expect_err("second hello");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("only heartbeats"),
        "{}",
        error.message()
    );

    // The broker keeps serving.
    assert!(broker.status().await.devices.len() == 1);
    broker.stop().await;
}
