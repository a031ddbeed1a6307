//! Where a lease lands on a machine with two GPUs, over real gRPC: best fit, ties
//! to the less loaded device, a holder's device preference, a refusal that
//! says what each device has free, and which device gives way when memory is
//! short (the least recently used idle holder's).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{GIB, gtx_1070, start_with};
use plenum_broker::inventory::Simulated;
use plenum_lease::{LeaseClient, LeaseClientConfig, LeaseEvent, LeaseRequest, Purpose};
use plenum_proto::broker::v1 as pb;
use tonic_types::StatusExt;

/// Two simulated GPUs; with the 1 GiB reserve they lease `a − 1` and `b − 1` GiB.
async fn two_devices(spec: &str) -> (common::RunningBroker, LeaseClient) {
    let broker = start_with(
        gtx_1070(),
        Arc::new(Simulated::parse(spec).unwrap()),
        None,
        "127.0.0.1:0",
    )
    .await;
    let client =
        LeaseClient::connect(LeaseClientConfig::new(broker.url(), "placement")).expect("valid url");
    (broker, client)
}

/// Activation headroom: not single-flight, so several can be granted in a row.
fn peak(bytes: u64, device: Option<u32>) -> LeaseRequest {
    let mut request = LeaseRequest::weights("peak", bytes);
    request.purpose = Purpose::Peak;
    request.device = device;
    request
}

#[tokio::test]
async fn a_lease_goes_where_it_leaves_the_least_room() {
    // 7 GiB and 5 GiB leasable: 4 GiB leaves 3 on A but 1 on B, so B. The device
    // with the most room (A) would strand a 5 GiB model later.
    let (broker, client) = two_devices("A:8GiB,B:6GiB").await;
    let lease = client.acquire(peak(4 * GIB, None)).await.expect("fits");
    assert_eq!(lease.device_index(), 1, "best fit is the smaller device");

    // And the 5 GiB model still has a home.
    let big = client.acquire(peak(5 * GIB, None)).await.expect("fits A");
    assert_eq!(big.device_index(), 0);
    broker.stop().await;
}

#[tokio::test]
async fn equal_fits_go_to_the_device_with_fewer_leases() {
    let (broker, client) = two_devices("A:8GiB,B:8GiB").await;
    // A: two 1 GiB leases, B: one 2 GiB lease; both have 5 GiB free.
    let mut held = Vec::new();
    for (bytes, device) in [(GIB, 0), (GIB, 0), (2 * GIB, 1)] {
        let lease = client.acquire(peak(bytes, Some(device))).await.unwrap();
        assert_eq!(lease.device_index(), device, "a device index is honoured");
        held.push(lease);
    }
    let status = broker.status().await;
    assert_eq!(
        status.devices[0].free_for_lease_bytes,
        status.devices[1].free_for_lease_bytes
    );
    let lease = client.acquire(peak(GIB, None)).await.unwrap();
    assert_eq!(
        lease.device_index(),
        1,
        "the tie goes to the less loaded device"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_device_uuid_preference_is_honoured_over_best_fit() {
    let (broker, client) = two_devices("A:8GiB,B:6GiB").await;
    let session_id = client
        .wait_for_session(Duration::from_secs(5))
        .await
        .unwrap();
    let uuid_a = broker.status().await.devices[0].uuid.clone();
    let mut raw = broker.client().await;
    // Best fit would choose B; the holder asks for A by uuid.
    let lease = raw
        .acquire(pb::AcquireRequest {
            session_id: session_id.clone(),
            bytes: (4 * GIB) as i64,
            purpose: pb::LeasePurpose::Peak as i32,
            device_uuid: Some(uuid_a.clone()),
            ..Default::default()
        })
        .await
        .expect("A has room")
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(lease.device_index, 0);
    assert_eq!(lease.device_uuid, uuid_a);

    // Through the lease client: A (3 GiB left) is now the best fit for 1 GiB, but
    // the holder names B.
    let uuid_b = broker.status().await.devices[1].uuid.clone();
    let mut by_client = peak(GIB, None);
    by_client.device_uuid = Some(uuid_b);
    let lease = client.acquire(by_client).await.expect("B has room");
    assert_eq!(lease.device_index(), 1);

    let unknown = raw
        .acquire(pb::AcquireRequest {
            session_id: session_id.clone(),
            bytes: GIB as i64,
            device_uuid: Some("GPU-nowhere".into()),
            ..Default::default()
        })
        .await
        .expect_err("no such device");
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
    assert!(
        unknown.message().starts_with("device_uuid:"),
        "{}",
        unknown.message()
    );

    let disagree = raw
        .acquire(pb::AcquireRequest {
            session_id,
            bytes: GIB as i64,
            device_index: Some(1),
            device_uuid: Some(uuid_a),
            ..Default::default()
        })
        .await
        .expect_err("index and uuid name different devices");
    assert_eq!(disagree.code(), tonic::Code::InvalidArgument);
    broker.stop().await;
}

#[tokio::test]
async fn a_request_no_single_device_can_hold_is_refused_naming_each_devices_free_bytes() {
    let (broker, client) = two_devices("A:8GiB,B:8GiB").await;
    let _a = client.acquire(peak(4 * GIB, Some(0))).await.unwrap();
    let _b = client
        .acquire(peak(3 * GIB + GIB / 2, Some(1)))
        .await
        .unwrap();
    let session_id = client
        .wait_for_session(Duration::from_secs(5))
        .await
        .unwrap();
    // 3 GiB + 3.5 GiB free in all, but 5 GiB fits on neither.
    let refused = broker
        .client()
        .await
        .acquire(pb::AcquireRequest {
            session_id,
            bytes: (5 * GIB) as i64,
            max_wait_ms: 0,
            ..Default::default()
        })
        .await
        .expect_err("fits on no single device");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    let message = refused.message();
    assert!(
        message.contains("device 0: 3.00 GiB") && message.contains("device 1: 3.50 GiB"),
        "names each device's free bytes: {message}"
    );
    let details = refused.get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(info.metadata["free_bytes_device_0"], (3 * GIB).to_string());
    assert_eq!(
        info.metadata["free_bytes_device_1"],
        (3 * GIB + GIB / 2).to_string()
    );
    assert_eq!(info.metadata["free_bytes"], (3 * GIB + GIB / 2).to_string());
    broker.stop().await;
}

/// A committed, idle, low-priority model of its own holder on `device`, last used
/// `idle` ago; it gives the lease back when the broker revokes it.
async fn idle_model(
    broker: &common::RunningBroker,
    name: &str,
    device: u32,
    idle: Duration,
) -> (LeaseClient, String, tokio::task::JoinHandle<bool>) {
    let client = LeaseClient::connect(LeaseClientConfig::new(broker.url(), name)).unwrap();
    let mut request = LeaseRequest::weights(name, 3 * GIB).priority(pb::Priority::Low);
    request.device = Some(device);
    let mut lease = client.acquire(request).await.expect("fits");
    lease.commit(3 * GIB).await.unwrap();
    lease.set_last_used(std::time::Instant::now() - idle);
    let id = lease.id().to_owned();
    let mut events = client.events();
    let revoked = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let LeaseEvent::Revoked { lease_id, .. } = event
                && lease_id == lease.id()
            {
                lease.release().await.unwrap();
                return true;
            }
        }
        false
    });
    (client, id, revoked)
}

#[tokio::test]
async fn revocation_picks_the_least_recently_used_idle_holder() {
    // 3 GiB leasable per device, each full with one idle low-priority model: the one
    // on device 0 was used a second ago, the one on device 1 two minutes ago.
    let (broker, _) = two_devices("A:4GiB,B:4GiB").await;
    let (_recent, recent_id, recent_revoked) =
        idle_model(&broker, "recent", 0, Duration::from_secs(1)).await;
    let (_stale, stale_id, stale_revoked) =
        idle_model(&broker, "stale", 1, Duration::from_secs(120)).await;
    common::eventually(
        &broker,
        Duration::from_secs(5),
        "idle times reported",
        |status| {
            let idle = |id: &str| {
                status
                    .leases
                    .iter()
                    .find(|lease| lease.lease_id == id)
                    .map_or(0, |lease| lease.idle_ms)
            };
            idle(&stale_id) >= 120_000 && idle(&recent_id) < 60_000
        },
    )
    .await;

    // A high-priority model needs a whole device: the stalest holder gives way.
    let urgent = LeaseClient::connect(LeaseClientConfig::new(broker.url(), "urgent")).unwrap();
    let lease = urgent
        .acquire(
            LeaseRequest::weights("urgent", 3 * GIB)
                .priority(pb::Priority::High)
                .wait(Duration::from_secs(10)),
        )
        .await
        .expect("granted once the stale holder gives its lease back");
    assert_eq!(lease.device_index(), 1, "placed where the LRU holder was");
    assert!(stale_revoked.await.unwrap(), "the stale holder was revoked");
    let status = broker.status().await;
    let recent = status
        .leases
        .iter()
        .find(|lease| lease.lease_id == recent_id)
        .expect("the recently used model keeps its lease");
    assert_eq!(recent.state, pb::LeaseState::Active as i32);
    recent_revoked.abort();
    broker.stop().await;
}
