//! The lease protocol end to end: a real broker on a socket, real holders through
//! crates/lease, on the old system's machine (a simulated 8 GiB GTX 1070).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{GIB, eventually, gtx_1070, start, start_with};
use plenum_broker::inventory::{DeviceInfo, DeviceUsage, HeldBytes, Inventory, InventoryError};
use plenum_lease::{
    AcquireError, LeaseClient, LeaseClientConfig, LeaseEvent, LeaseRequest, Priority,
};
use plenum_proto::broker::v1 as pb;
use tonic_types::StatusExt;

fn holder(url: &str, name: &str) -> LeaseClient {
    LeaseClient::connect(LeaseClientConfig::new(url, name)).expect("valid url")
}

#[tokio::test]
async fn the_old_systems_machine_refuses_then_revokes_for_a_higher_priority() {
    let broker = start(gtx_1070()).await;
    let url = broker.url();
    let detector = holder(&url, "detector");
    let ocr = holder(&url, "ocr");
    let third = holder(&url, "batch-job");

    let mut detector_lease = detector
        .acquire(LeaseRequest::weights("detector/yolo", 2 * GIB))
        .await
        .expect("detector gets 2 GiB");
    detector_lease.commit(2 * GIB).await.unwrap();
    let mut ocr_lease = ocr
        .acquire(LeaseRequest::weights("ocr/ppocr", 2 * GIB))
        .await
        .expect("ocr gets 2 GiB");
    ocr_lease.commit(2 * GIB).await.unwrap();
    // The detector served a request just now, the OCR model a minute ago.
    detector_lease.set_last_used(std::time::Instant::now());
    ocr_lease.set_last_used(std::time::Instant::now() - Duration::from_secs(60));
    let ocr_id = ocr_lease.id().to_owned();
    eventually(
        &broker,
        Duration::from_secs(5),
        "idle times reported",
        |status| {
            status
                .leases
                .iter()
                .any(|lease| lease.lease_id == ocr_id && lease.idle_ms >= 60_000)
        },
    )
    .await;

    // 8 GiB − 1 GiB reserve − 4 GiB leased = 3 GiB: 4 GiB does not fit.
    let refused = third
        .acquire(LeaseRequest::weights("job", 4 * GIB).wait(Duration::from_millis(200)))
        .await
        .expect_err("4 GiB cannot fit");
    match refused {
        AcquireError::Refused {
            free_bytes,
            retry_after,
            ..
        } => {
            assert_eq!(free_bytes, 3 * GIB);
            assert!(retry_after > Duration::ZERO);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // The same ask at high priority: the broker revokes a lower-priority idle holder
    // (both are normal; the least recently used, ocr, goes first), which moves off
    // the GPU and releases; then the ask is granted.
    let mut ocr_events = ocr.events();
    let revoked_holder = tokio::spawn(async move {
        loop {
            match ocr_events.recv().await {
                Ok(LeaseEvent::Revoked { lease_id, .. }) => {
                    assert_eq!(lease_id, ocr_lease.id());
                    ocr_lease.release().await.unwrap();
                    return lease_id;
                }
                Ok(_) => continue,
                Err(error) => panic!("event stream broke: {error}"),
            }
        }
    });
    let granted = third
        .acquire(
            LeaseRequest::weights("job", 4 * GIB)
                .priority(Priority::High)
                .wait(Duration::from_secs(5)),
        )
        .await
        .expect("granted after the revocation");
    assert_eq!(granted.granted_bytes(), 4 * GIB);
    let revoked = revoked_holder.await.unwrap();

    let status = broker.status().await;
    let lease_ids: Vec<&str> = status.leases.iter().map(|l| l.lease_id.as_str()).collect();
    assert!(
        !lease_ids.contains(&revoked.as_str()),
        "the revoked lease is gone"
    );
    assert!(
        lease_ids.contains(&detector_lease.id()),
        "the normal-priority holder kept its lease"
    );
    assert_eq!(status.devices[0].leased_bytes, 6 * GIB);
    broker.stop().await;
}

#[tokio::test]
async fn a_refusal_carries_free_bytes_and_retry_after_in_standard_details() {
    let broker = start(gtx_1070()).await;
    let client = holder(&broker.url(), "detector");
    let mut lease = client
        .acquire(LeaseRequest::weights("det", 4 * GIB))
        .await
        .unwrap();
    lease.commit(4 * GIB).await.unwrap();
    let session_id = client
        .wait_for_session(Duration::from_secs(5))
        .await
        .unwrap();
    let mut raw = broker.client().await;
    let status = raw
        .acquire(pb::AcquireRequest {
            session_id,
            bytes: (4 * GIB) as i64,
            max_wait_ms: 0,
            ..Default::default()
        })
        .await
        .expect_err("3 GiB free, 4 GiB asked");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let details = status.get_error_details();
    let info = details.error_info().expect("ErrorInfo detail");
    assert_eq!(info.metadata["free_bytes"], (3 * GIB).to_string());
    assert_eq!(info.metadata["requested_bytes"], (4 * GIB).to_string());
    assert!(
        details
            .retry_info()
            .and_then(|retry| retry.retry_delay)
            .is_some()
    );
    broker.stop().await;
}

#[tokio::test]
async fn commit_shrinks_and_grows_and_the_broker_remembers_the_measured_size() {
    let broker = start(gtx_1070()).await;
    let client = holder(&broker.url(), "ocr");
    let mut lease = client
        .acquire(LeaseRequest::weights("ocr/rec", 2 * GIB))
        .await
        .unwrap();

    lease.commit(GIB).await.expect("shrink");
    assert_eq!(lease.granted_bytes(), GIB);
    let status = broker.status().await;
    assert_eq!(status.devices[0].leased_bytes, GIB);
    assert_eq!(status.devices[0].free_for_lease_bytes, 6 * GIB);
    assert_eq!(status.measured_estimates.get("ocr/rec"), Some(&GIB));

    lease.commit(3 * GIB).await.expect("grow into free room");
    assert_eq!(broker.status().await.devices[0].leased_bytes, 3 * GIB);

    let error = lease
        .commit(9 * GIB)
        .await
        .expect_err("cannot grow past the device");
    assert_eq!(error.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        broker.status().await.devices[0].leased_bytes,
        3 * GIB,
        "a refused growth changes nothing"
    );

    // The next holder of the same model gets the measured size as its estimate.
    lease.release().await.unwrap();
    let mut request = LeaseRequest::weights("ocr/rec", 2 * GIB);
    request.use_measured_estimate = true;
    let next = client.acquire(request).await.unwrap();
    assert_eq!(next.granted_bytes(), 3 * GIB);
    broker.stop().await;
}

#[tokio::test]
async fn a_simulated_release_is_confirmed_when_usage_drops() {
    let broker = start(gtx_1070()).await;
    let client = holder(&broker.url(), "ocr");
    let lease = client
        .acquire(LeaseRequest::weights("ocr", 2 * GIB))
        .await
        .unwrap();
    let id = lease.id().to_owned();
    lease.release().await.unwrap();
    let status = eventually(
        &broker,
        Duration::from_secs(2),
        "release confirmed",
        |status| status.leases.iter().all(|lease| lease.lease_id != id),
    )
    .await;
    assert_eq!(status.unconfirmed_releases, 0);
    assert_eq!(status.devices[0].free_for_lease_bytes, 7 * GIB);
    broker.stop().await;
}

/// An inventory whose memory never frees: a driver that leaks, or a holder that
/// says it released but did not. Lives in tests/ only.
struct StuckMemory {
    devices: Vec<DeviceInfo>,
    used_ever: std::sync::Mutex<std::collections::HashMap<u32, u64>>,
}

impl Inventory for StuckMemory {
    fn kind(&self) -> &'static str {
        "stuck"
    }
    fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }
    fn measure(&self, held: &[HeldBytes]) -> Result<Vec<DeviceUsage>, InventoryError> {
        let mut used = self.used_ever.lock().unwrap();
        for hold in held {
            let entry = used.entry(hold.pid).or_default();
            *entry = (*entry).max(hold.bytes);
        }
        Ok(vec![DeviceUsage {
            used_bytes: used.values().sum(),
            processes: used.clone(),
        }])
    }
}

#[tokio::test]
async fn a_release_the_inventory_never_shows_is_returned_after_the_bounded_wait_and_reported() {
    let inventory = Arc::new(StuckMemory {
        devices: vec![DeviceInfo {
            index: 0,
            uuid: "GPU-stuck".into(),
            name: "Stuck".into(),
            total_bytes: 8 * GIB,
        }],
        used_ever: Default::default(),
    });
    let mut config = gtx_1070();
    config.release_confirm_timeout = Duration::from_millis(400);
    let broker = start_with(config, inventory, None, "127.0.0.1:0").await;
    let client = holder(&broker.url(), "ocr");
    let lease = client
        .acquire(LeaseRequest::weights("ocr", 2 * GIB))
        .await
        .unwrap();
    let id = lease.id().to_owned();
    eventually(
        &broker,
        Duration::from_secs(2),
        "usage measured",
        |status| status.devices[0].used_bytes == 2 * GIB,
    )
    .await;
    lease.release().await.unwrap();

    let releasing = broker.status().await;
    let state = releasing
        .leases
        .iter()
        .find(|lease| lease.lease_id == id)
        .map(|lease| lease.state);
    assert_eq!(
        state,
        Some(pb::LeaseState::Releasing as i32),
        "booked until confirmed"
    );

    let status = eventually(
        &broker,
        Duration::from_secs(3),
        "bounded wait ends",
        |status| status.leases.iter().all(|lease| lease.lease_id != id),
    )
    .await;
    assert_eq!(
        status.unconfirmed_releases, 1,
        "the unconfirmed release is reported"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_holder_that_vanishes_loses_its_leases_after_the_grace() {
    let broker = start(gtx_1070()).await;
    let client = holder(&broker.url(), "detector");
    let lease = client
        .acquire(LeaseRequest::weights("det", 2 * GIB))
        .await
        .unwrap();
    std::mem::forget(lease); // the process "forgets" to release
    client.close();
    eventually(
        &broker,
        Duration::from_secs(3),
        "orphaned lease released",
        |status| status.leases.is_empty() && status.sessions.is_empty(),
    )
    .await;
    broker.stop().await;
}

#[tokio::test]
async fn single_flight_loading_makes_the_second_load_wait_for_the_first_commit() {
    let broker = start(gtx_1070()).await;
    let detector = holder(&broker.url(), "detector");
    let ocr = holder(&broker.url(), "ocr");
    let mut loading = detector
        .acquire(LeaseRequest::weights("det", GIB))
        .await
        .unwrap();

    let refused = ocr
        .acquire(LeaseRequest::weights("ocr", GIB).wait(Duration::from_millis(100)))
        .await;
    assert!(
        matches!(refused, Err(AcquireError::Refused { .. })),
        "one load at a time: {refused:?}"
    );

    let waiting = tokio::spawn({
        let ocr = ocr.clone();
        async move {
            ocr.acquire(LeaseRequest::weights("ocr", GIB).wait(Duration::from_secs(5)))
                .await
        }
    });
    eventually(
        &broker,
        Duration::from_secs(2),
        "the second load queues",
        |status| status.queue.len() == 1,
    )
    .await;
    loading.commit(GIB).await.unwrap();
    let second = waiting
        .await
        .unwrap()
        .expect("granted once the first load committed");
    assert_eq!(second.granted_bytes(), GIB);
    broker.stop().await;
}

#[tokio::test]
async fn the_queue_is_priority_then_fifo() {
    let broker = start(gtx_1070()).await;
    let url = broker.url();
    let big = holder(&url, "big");
    let mut hog = big
        .acquire(LeaseRequest::weights("hog", 7 * GIB))
        .await
        .unwrap();
    hog.commit(7 * GIB).await.unwrap();

    let low = holder(&url, "low");
    let high = holder(&url, "high");
    let first_low = tokio::spawn({
        let low = low.clone();
        async move {
            low.acquire(
                LeaseRequest::weights("a", GIB)
                    .priority(Priority::Low)
                    .wait(Duration::from_secs(10)),
            )
            .await
        }
    });
    eventually(&broker, Duration::from_secs(2), "low queued", |s| {
        s.queue.len() == 1
    })
    .await;
    let then_high = tokio::spawn({
        let high = high.clone();
        async move {
            high.acquire(
                LeaseRequest::weights("b", GIB)
                    .priority(Priority::High)
                    .wait(Duration::from_secs(10)),
            )
            .await
        }
    });
    let status = eventually(&broker, Duration::from_secs(2), "high queued", |s| {
        s.queue.len() == 2
    })
    .await;
    let order: Vec<String> = status
        .queue
        .iter()
        .map(|q| q.holder.as_ref().unwrap().name.clone())
        .collect();
    assert_eq!(
        order,
        ["high", "low"],
        "the later high-priority request is ahead"
    );

    // The hog is normal priority and idle: the high request revokes it; we release.
    hog.release().await.unwrap();
    let mut high_lease = then_high.await.unwrap().expect("high granted first");
    high_lease.commit(GIB).await.unwrap();
    let low_lease = first_low.await.unwrap().expect("low granted after");
    assert_eq!(low_lease.granted_bytes(), GIB);
    broker.stop().await;
}

#[tokio::test]
async fn a_broker_without_devices_refuses_every_acquire_so_callers_use_the_cpu() {
    let broker = start_with(
        gtx_1070(),
        Arc::new(plenum_broker::inventory::NoDevices),
        None,
        "127.0.0.1:0",
    )
    .await;
    let client = holder(&broker.url(), "ocr");
    match client
        .acquire_or_cpu(LeaseRequest::weights("ocr", GIB))
        .await
    {
        plenum_lease::Placement::Cpu { reason } => assert!(reason.contains("no GPU"), "{reason}"),
        plenum_lease::Placement::Gpu(_) => panic!("no device, no lease"),
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_restarted_broker_takes_reclaims_first_and_never_double_books() {
    let first = start(gtx_1070()).await;
    let addr = first.addr.to_string();
    let url = first.url();
    let detector = holder(&url, "detector");
    let ocr = holder(&url, "ocr");
    let mut det_lease = detector
        .acquire(LeaseRequest::weights("det", 3 * GIB))
        .await
        .unwrap();
    det_lease.commit(3 * GIB).await.unwrap();
    let mut ocr_lease = ocr
        .acquire(LeaseRequest::weights("ocr", 3 * GIB))
        .await
        .unwrap();
    ocr_lease.commit(3 * GIB).await.unwrap();
    first.stop().await;

    let mut config = gtx_1070();
    config.recovery_window = Duration::from_millis(1500);
    let second = start_with(
        config,
        Arc::new(plenum_broker::inventory::Simulated::parse("GTX 1070:8GiB").unwrap()),
        None,
        &addr,
    )
    .await;
    // A newcomer asks during the recovery window: it is not granted before it ends.
    let newcomer = holder(&url, "newcomer");
    let early = newcomer
        .acquire(LeaseRequest::weights("new", GIB).wait(Duration::from_millis(200)))
        .await;
    match early {
        Err(AcquireError::Refused { message, .. }) => {
            assert!(message.contains("recovery"), "{message}")
        }
        other => panic!("nothing is granted during recovery: {other:?}"),
    }

    let status = eventually(
        &second,
        Duration::from_secs(5),
        "both holders reclaimed",
        |status| status.leases.len() == 2,
    )
    .await;
    let ids: Vec<&str> = status.leases.iter().map(|l| l.lease_id.as_str()).collect();
    assert!(ids.contains(&det_lease.id()) && ids.contains(&ocr_lease.id()));
    assert_eq!(status.devices[0].leased_bytes, 6 * GIB);

    // After the window: 1 GiB is left, and 2 GiB must not be granted.
    eventually(&second, Duration::from_secs(3), "window over", |s| {
        s.recovery_window_left_ms == 0
    })
    .await;
    let fits = newcomer
        .acquire(LeaseRequest::weights("new", GIB).wait(Duration::from_secs(1)))
        .await;
    assert!(fits.is_ok(), "1 GiB fits after the window: {fits:?}");
    let too_much = newcomer
        .acquire(LeaseRequest::weights("new2", 2 * GIB))
        .await;
    assert!(
        matches!(too_much, Err(AcquireError::Refused { .. })),
        "no double booking: {too_much:?}"
    );
    // The reclaimed leases still work: commit through the new session.
    det_lease
        .commit(3 * GIB)
        .await
        .expect("reclaimed lease is live");
    second.stop().await;
}

#[tokio::test]
async fn with_a_token_calls_need_it_but_health_stays_open() {
    let broker = start_with(
        gtx_1070(),
        Arc::new(plenum_broker::inventory::Simulated::parse("GTX 1070:8GiB").unwrap()),
        Some("s3cret"),
        "127.0.0.1:0",
    )
    .await;
    let mut raw = broker.client().await;
    let refused = raw
        .status(pb::StatusRequest {})
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let channel = tonic::transport::Endpoint::from_shared(broker.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "plenum.broker.v1.Broker".into(),
        })
        .await
        .expect("health is open")
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let mut config = LeaseClientConfig::new(broker.url(), "ocr");
    config.token = Some(Arc::from("s3cret"));
    let client = LeaseClient::connect(config).unwrap();
    let lease = client.acquire(LeaseRequest::weights("ocr", GIB)).await;
    assert!(lease.is_ok(), "with the token: {lease:?}");
    broker.stop().await;
}

#[tokio::test]
async fn refusal_details_are_machine_readable() {
    let broker = start(gtx_1070()).await;
    let client = holder(&broker.url(), "detector");
    let session_id = client
        .wait_for_session(Duration::from_secs(5))
        .await
        .unwrap();
    let mut raw = broker.client().await;
    let status = raw
        .acquire(pb::AcquireRequest {
            session_id,
            bytes: (7 * GIB + 1) as i64,
            max_wait_ms: 0,
            ..Default::default()
        })
        .await;
    // 7 GiB + 1 byte exceeds what the 8 GiB card leases (8 − 1 reserve): never fits.
    let status = status.expect_err("over the leasable size");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let details = status.get_error_details();
    let violation = &details.bad_request().expect("field named").field_violations[0];
    assert_eq!(violation.field, "bytes");
    broker.stop().await;
}

#[tokio::test]
async fn watch_status_streams_every_change() {
    use tokio_stream::StreamExt;
    let broker = start(gtx_1070()).await;
    let mut updates = broker
        .client()
        .await
        .watch_status(pb::WatchStatusRequest {
            interval_ms: 60_000,
        })
        .await
        .unwrap()
        .into_inner();
    let first = updates.next().await.unwrap().unwrap();
    assert!(first.leases.is_empty());
    let client = holder(&broker.url(), "ocr");
    let lease = client
        .acquire(LeaseRequest::weights("ocr", 2 * GIB))
        .await
        .unwrap();
    // With a one-minute interval, only a change can bring the next snapshots this soon.
    let with_lease = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let status = updates.next().await.unwrap().unwrap();
            if status.leases.iter().any(|l| l.lease_id == lease.id()) {
                return status;
            }
        }
    })
    .await
    .expect("the grant is streamed");
    assert_eq!(with_lease.devices[0].leased_bytes, 2 * GIB);
    broker.stop().await;
}

#[tokio::test]
async fn the_metrics_endpoint_serves_the_books_per_device_and_holder() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = start(gtx_1070()).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let addr = plenum_runtime::metrics::spawn(
        "127.0.0.1:0".parse().unwrap(),
        broker.metrics.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let client = holder(&broker.url(), "detector");
    let mut lease = client
        .acquire(LeaseRequest::weights("det", 2 * GIB))
        .await
        .unwrap();
    lease.commit(GIB + GIB / 2).await.unwrap();
    let scrape = || async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).await.unwrap();
        body
    };
    let expected = [
        "plenum_broker_device_granted_bytes{device=\"0\",name=\"GTX 1070\"} 1610612736",
        "plenum_broker_device_free_bytes{device=\"0\",name=\"GTX 1070\"} 5905580032",
        "plenum_broker_holder_measured_bytes{device=\"0\",holder=\"detector\"} 1610612736",
        "plenum_broker_queue_length 0",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let body = scrape().await;
        if expected.iter().all(|line| body.contains(line)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never showed the lease:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    broker.stop().await;
}

/// The value of a counter in the broker's registry.
fn counter(broker: &common::RunningBroker, name: &str) -> f64 {
    broker
        .metrics
        .gather()
        .iter()
        .find(|family| family.name() == name)
        .and_then(|family| family.get_metric().first())
        .map_or(0.0, |metric| metric.get_counter().get_value())
}

#[tokio::test]
async fn a_holder_using_more_than_its_leases_is_reported_as_an_overrun_until_it_stops() {
    let broker = start(gtx_1070()).await;
    let client = holder(&broker.url(), "detector");
    let mut weights = client
        .acquire(LeaseRequest::weights("detector/yolo", GIB))
        .await
        .unwrap();
    weights.commit(GIB).await.unwrap();
    let mut work = client
        .acquire(LeaseRequest::weights("detector/work", 2 * GIB))
        .await
        .unwrap();
    work.commit(2 * GIB).await.unwrap();
    weights.report_use(GIB);
    work.report_use(0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        broker.status().await.overruns.is_empty(),
        "within its leases is no overrun"
    );

    // The model allocates twice its lease while the work lease is idle: the process
    // is within its 3 GiB, the lease is not.
    weights.report_use(2 * GIB);
    let status = eventually(
        &broker,
        Duration::from_secs(3),
        "a lease's overrun reported",
        |status| !status.overruns.is_empty(),
    )
    .await;
    assert_eq!(status.overruns.len(), 1, "{:?}", status.overruns);
    let overrun = &status.overruns[0];
    assert_eq!(overrun.holder.as_ref().unwrap().name, "detector");
    assert_eq!(overrun.lease_id, weights.id());
    assert_eq!(overrun.granted_bytes, GIB);
    assert_eq!(overrun.used_bytes, 2 * GIB);
    assert_eq!(overrun.model_keys, ["detector/yolo"]);
    let reported = status
        .leases
        .iter()
        .find(|lease| lease.lease_id == weights.id());
    assert_eq!(
        reported.unwrap().used_bytes,
        Some(2 * GIB),
        "status shows what the holder reported"
    );

    // Now the process as a whole: 5 GiB measured against 3 GiB of leases.
    work.report_use(2 * GIB);
    weights.report_use(3 * GIB);
    let status = eventually(
        &broker,
        Duration::from_secs(3),
        "the process's overrun reported",
        |status| {
            status
                .overruns
                .iter()
                .any(|overrun| overrun.lease_id.is_empty())
        },
    )
    .await;
    let process = status
        .overruns
        .iter()
        .find(|overrun| overrun.lease_id.is_empty())
        .unwrap();
    assert_eq!(process.granted_bytes, 3 * GIB);
    assert_eq!(process.used_bytes, 5 * GIB);
    assert_eq!(process.model_keys.len(), 2);
    assert_eq!(
        status.devices[0].free_for_lease_bytes,
        2 * GIB,
        "what it took beyond its leases is not free for others"
    );
    assert_eq!(counter(&broker, "plenum_broker_overruns_total"), 2.0);

    // Back within the leases: both end, and each counted once.
    weights.report_use(GIB);
    work.report_use(0);
    eventually(
        &broker,
        Duration::from_secs(3),
        "overruns ended",
        |status| status.overruns.is_empty(),
    )
    .await;
    assert_eq!(counter(&broker, "plenum_broker_overruns_total"), 2.0);
    broker.stop().await;
}
