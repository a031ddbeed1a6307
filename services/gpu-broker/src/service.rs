//! `plenum.broker.v1.Broker` over the ledger: turns calls into ledger operations,
//! delivers what the ledger has to say, waits for queued grants, and keeps the
//! books in step with the inventory.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::Stream;
use plenum_proto::broker::v1::broker_server::Broker;
use plenum_proto::broker::v1::{self as pb, session_event, session_request};
use plenum_runtime::bytes::format_bytes;
use plenum_runtime::deadline::grpc_timeout;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status, Streaming};

use crate::convert::{
    claim_from_proto, holder_from_hello, lease_to_proto, reclaim_to_proto, status_to_proto,
};
use crate::delivery::Outlets;
use crate::error::BrokerError;
use crate::inventory::Inventory;
use crate::ledger::{
    AcquireOutcome, AcquireSpec, Ledger, Notice, Priority, Purpose, StatusSnapshot,
};
use crate::metrics::BrokerMetrics;
use crate::process;

/// The broker's clock: tokio's, so tests with paused time drive the books too.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The books and the channels their news goes out on, behind one lock.
pub(crate) struct Books {
    ledger: Ledger,
    outlets: Outlets,
}

/// Whether a measurement also refreshes the Prometheus gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gauges {
    Refresh,
    Skip,
}

/// Everything the handlers and the background loop share.
pub(crate) struct Shared {
    books: Mutex<Books>,
    inventory: Arc<dyn Inventory>,
    instance_id: String,
    metrics: BrokerMetrics,
    /// Carries the ledger version; WatchStatus wakes on every change.
    changes: watch::Sender<u64>,
    /// Asks the background loop to measure now (after a release).
    measure_soon: Notify,
    shutdown: CancellationToken,
}

impl Shared {
    pub(crate) fn new(
        ledger: Ledger,
        inventory: Arc<dyn Inventory>,
        metrics: BrokerMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            books: Mutex::new(Books {
                ledger,
                outlets: Outlets::default(),
            }),
            inventory,
            instance_id: uuid::Uuid::new_v4().to_string(),
            metrics,
            changes: watch::channel(0).0,
            measure_soon: Notify::new(),
            shutdown,
        }
    }

    /// Runs `operation` on the ledger, then delivers and publishes what changed.
    fn with_ledger<T>(&self, operation: impl FnOnce(&mut Ledger, Instant) -> T) -> T {
        self.with_books(|books, now| operation(&mut books.ledger, now))
    }

    /// Like [`Shared::with_ledger`], with the outlets too (to listen for a grant).
    fn with_books<T>(&self, operation: impl FnOnce(&mut Books, Instant) -> T) -> T {
        let mut books = self.lock();
        let now = now();
        let result = operation(&mut books, now);
        self.after_change(&mut books, now);
        result
    }

    fn lock(&self) -> MutexGuard<'_, Books> {
        // A panic while holding the lock is a bug; the books are still the best we have.
        self.books
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn after_change(&self, books: &mut Books, now: Instant) {
        let Books { ledger, outlets } = books;
        outlets.deliver(ledger, now);
        for notice in ledger.take_notices() {
            self.metrics.record(&notice);
            log_notice(&notice);
        }
        self.changes.send_if_modified(|version| {
            let changed = *version != ledger.version();
            *version = ledger.version();
            changed
        });
    }

    /// Measures the devices (outside the lock: NVML calls take milliseconds) and
    /// advances the ledger's clock.
    pub(crate) fn measure_and_tick(&self, gauges: Gauges) {
        let (held, silent) = {
            let books = self.lock();
            (books.ledger.held_bytes(), books.ledger.unresponsive_pids())
        };
        // A hung holder's bytes stay booked only while its process exists.
        let gone: Vec<u32> = silent
            .into_iter()
            .filter(|&pid| !process::is_running(pid))
            .collect();
        let measured = self.inventory.measure(&held);
        let status = self.with_ledger(|ledger, now| {
            ledger.processes_gone(&gone, now);
            match measured {
                Ok(usage) => ledger.observe(usage, now),
                Err(error) => {
                    tracing::warn!(%error, "cannot measure devices; keeping the last measurement")
                }
            }
            ledger.tick(now);
            (gauges == Gauges::Refresh).then(|| ledger.status(now))
        });
        if let Some(status) = status {
            self.metrics.update(&self.decorate(status));
        }
    }

    fn decorate(&self, status: StatusSnapshot) -> pb::StatusResponse {
        status_to_proto(status, &self.instance_id, self.inventory.kind())
    }

    pub(crate) fn status(&self) -> pb::StatusResponse {
        let status = self.lock().ledger.status(now());
        self.decorate(status)
    }

    pub(crate) async fn measure_soon_notified(&self) {
        self.measure_soon.notified().await;
    }

    pub(crate) fn announce_shutdown(&self) {
        self.lock()
            .outlets
            .announce_shutdown("the broker is shutting down; keep your leases and reconnect");
    }
}

fn log_notice(notice: &Notice) {
    match notice {
        Notice::Granted {
            lease,
            bytes,
            device,
        } => {
            tracing::debug!(%lease, bytes, device, "lease granted");
        }
        Notice::Revoked { lease, holder } => tracing::info!(%lease, %holder, "revocation sent"),
        Notice::RevokeOverdue { lease, holder } => {
            tracing::warn!(%lease, %holder, "holder let a revocation deadline pass; its bytes stay booked");
        }
        Notice::ReleaseConfirmed { lease } => {
            tracing::debug!(%lease, "release confirmed by the inventory")
        }
        Notice::ReleaseUnconfirmed { lease, holder } => tracing::warn!(
            %lease, %holder,
            "release never showed in the inventory within the bounded wait; returning the bytes anyway"
        ),
        Notice::SessionExpired { session, holder } => {
            tracing::warn!(%session, %holder, "session missed its heartbeats; its leases are orphaned");
        }
        Notice::SessionUnresponsive { session, holder } => {
            tracing::warn!(%session, %holder, "session missed its heartbeats but its process still holds device memory; its leases stay booked as unresponsive");
        }
        Notice::UnresponsiveFreed { lease, why } => {
            tracing::info!(%lease, "unresponsive lease released: {why}");
        }
        Notice::OrphansReleased { lease } => {
            tracing::info!(%lease, "orphaned lease released after the grace");
        }
        Notice::LoadingTimedOut { lease } => {
            tracing::warn!(%lease, "lease loaded for too long without a commit; it no longer blocks its device");
        }
        Notice::Overrun {
            holder,
            pid,
            device,
            lease,
            granted,
            used,
            model_keys,
        } => {
            let over = format_bytes(used.saturating_sub(*granted));
            let models = model_keys.join(",");
            match lease {
                Some(lease) => tracing::warn!(
                    %holder, pid, device, %lease, granted, used, %models,
                    "holder reports a lease's allocations past its grant: {over} over"
                ),
                None => tracing::warn!(
                    %holder, pid, device, granted, used, %models,
                    "holder uses more of the device than its leases grant: {over} over"
                ),
            }
        }
        Notice::OverrunEnded {
            holder,
            pid,
            device,
            lease,
            lasted,
        } => {
            tracing::info!(%holder, pid, device, ?lease, ?lasted, "overrun ended: back within the lease");
        }
    }
}

/// The caller's PID when it came over a Unix socket: the kernel's peer credentials,
/// in the broker's PID namespace. Over TCP there is none, and the holder's own word
/// stands.
fn peer_pid<T>(request: &Request<T>) -> Option<u32> {
    let credentials = request.extensions().get::<UdsConnectInfo>()?.peer_cred?;
    credentials.pid().and_then(|pid| u32::try_from(pid).ok())
}

/// Books the holder under the PID the kernel vouches for: NVML reports usage by the
/// PIDs the broker sees, and a containerised holder knows only its own namespace's.
fn use_peer_pid(holder: &mut pb::Holder, peer_pid: u32) {
    if holder.pid != peer_pid {
        tracing::warn!(
            holder = %holder.name,
            reported = holder.pid,
            peer = peer_pid,
            "the holder's own PID differs from the socket's peer credentials (another PID namespace?); booking it under the peer's"
        );
    }
    holder.pid = peer_pid;
}

/// The gRPC face of the broker.
#[derive(Clone)]
pub struct BrokerService {
    shared: Arc<Shared>,
}

impl BrokerService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::SessionEvent, Status>> + Send>>;
type StatusStream = Pin<Box<dyn Stream<Item = Result<pb::StatusResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Broker for BrokerService {
    type OpenSessionStream = EventStream;
    type WatchStatusStream = StatusStream;

    async fn open_session(
        &self,
        request: Request<Streaming<pb::SessionRequest>>,
    ) -> Result<Response<EventStream>, Status> {
        let peer_pid = peer_pid(&request);
        let mut inbound = request.into_inner();
        let mut hello = match inbound.message().await? {
            Some(pb::SessionRequest {
                kind: Some(session_request::Kind::Hello(hello)),
            }) => hello,
            Some(_) => {
                return Err(BrokerError::invalid(
                    "kind",
                    "the first message of a session must be `hello`",
                )
                .into());
            }
            None => {
                return Err(
                    BrokerError::invalid("hello", "the stream ended before `hello`").into(),
                );
            }
        };
        if let (Some(holder), Some(pid)) = (hello.holder.as_mut(), peer_pid) {
            use_peer_pid(holder, pid);
        }
        let holder = holder_from_hello(hello.holder)?;
        let claims = hello.reclaims.into_iter().map(claim_from_proto).collect();
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let (session_id, reclaims) = self.shared.with_books(|books, now| {
            let (session_id, reclaims) = books.ledger.open_session(holder, claims, now)?;
            books.outlets.open_session(&session_id, events_tx);
            Ok::<_, BrokerError>((session_id, reclaims))
        })?;
        let config = self.shared.lock().ledger.config().clone();
        let opened = pb::SessionEvent {
            kind: Some(session_event::Kind::Opened(pb::SessionOpened {
                session_id: session_id.clone(),
                ttl_ms: config.session_ttl.as_millis() as u64,
                heartbeat_interval_ms: (config.session_ttl / 3).as_millis() as u64,
                broker_instance_id: self.shared.instance_id.clone(),
                reclaims: reclaims.into_iter().map(reclaim_to_proto).collect(),
            })),
        };

        let (outbound, outbound_rx) = mpsc::channel(16);
        let _ = outbound.try_send(Ok(opened));
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = inbound.message() => match message {
                        Ok(Some(pb::SessionRequest { kind: Some(session_request::Kind::Heartbeat(beat)) })) => {
                            let idle_for = beat
                                .idle_ms
                                .into_iter()
                                .map(|(lease, ms)| (lease, Duration::from_millis(ms)))
                                .collect();
                            let alive = shared.with_ledger(|ledger, now| {
                                ledger.heartbeat(&session_id, beat.busy_lease_ids, now)?;
                                ledger.report_idle(&session_id, idle_for, now);
                                ledger.report_use(&session_id, beat.used_bytes);
                                Ok::<_, BrokerError>(())
                            });
                            if alive.is_err() {
                                break;
                            }
                        }
                        Ok(Some(_)) => {
                            let error = BrokerError::invalid("kind", "only heartbeats may follow `hello` on a session");
                            let _ = outbound.send(Err(error.into())).await;
                            break;
                        }
                        // The holder closed the stream or its connection died (kill -9).
                        Ok(None) | Err(_) => break,
                    },
                    event = events.recv() => match event {
                        Some(event) => {
                            if outbound.send(Ok(event)).await.is_err() {
                                break;
                            }
                        }
                        // The ledger ended this session (missed heartbeats).
                        None => break,
                    },
                    () = shared.shutdown.cancelled() => {
                        // Deliver the shutdown notice, then let the server stop.
                        while let Ok(event) = events.try_recv() {
                            let _ = outbound.send(Ok(event)).await;
                        }
                        return;
                    }
                }
            }
            shared.with_ledger(|ledger, now| ledger.end_session(&session_id, now));
            tracing::info!(%session_id, "session ended");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound_rx))))
    }

    async fn acquire(
        &self,
        request: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::AcquireResponse>, Status> {
        let deadline = grpc_timeout(request.metadata());
        let request = request.into_inner();
        let wait = queue_wait(Duration::from_millis(request.max_wait_ms), deadline);
        let device_uuid = request.device_uuid;
        let mut spec = AcquireSpec {
            session_id: request.session_id,
            bytes: request.bytes,
            device: request.device_index,
            priority: Priority::from_proto(request.priority)?,
            purpose: Purpose::from_proto(request.purpose)?,
            wait,
            model_key: request.model_key,
            use_measured_estimate: request.use_measured_estimate,
        };
        let outcome = self.shared.with_books(|books, now| {
            spec.device = named_device(&books.ledger, spec.device, device_uuid.as_deref())?;
            books
                .ledger
                .acquire(spec, now)
                .map(|outcome| match outcome {
                    AcquireOutcome::Granted(lease) => Placed::Now(lease_to_proto(lease)),
                    AcquireOutcome::Queued { waiter } => {
                        Placed::Queued(waiter, books.outlets.await_grant(waiter))
                    }
                })
        });
        let lease = match outcome {
            Ok(Placed::Now(lease)) => {
                self.shared.measure_soon.notify_one();
                lease
            }
            Ok(Placed::Queued(waiter, grant)) => {
                QueuedAcquire::new(Arc::clone(&self.shared), waiter, grant)
                    .wait(wait)
                    .await?
            }
            Err(error) => {
                if matches!(error, BrokerError::Exhausted(_)) {
                    self.shared.metrics.refusals.inc();
                }
                return Err(error.into());
            }
        };
        Ok(Response::new(pb::AcquireResponse { lease: Some(lease) }))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let request = request.into_inner();
        let lease = self.shared.with_ledger(|ledger, now| {
            ledger.commit(
                &request.session_id,
                &request.lease_id,
                request.measured_bytes,
                now,
            )
        })?;
        // A commit changes what the holder uses: measure soon, so status shows it.
        self.shared.measure_soon.notify_one();
        Ok(Response::new(pb::CommitResponse {
            lease: Some(lease_to_proto(lease)),
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let request = request.into_inner();
        let lease = self.shared.with_ledger(|ledger, now| {
            ledger.release(&request.session_id, &request.lease_id, now)
        })?;
        // The bytes come back once the inventory shows them freed: look soon.
        self.shared.measure_soon.notify_one();
        Ok(Response::new(pb::ReleaseResponse {
            lease: Some(lease_to_proto(lease)),
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(self.shared.status()))
    }

    async fn watch_status(
        &self,
        request: Request<pb::WatchStatusRequest>,
    ) -> Result<Response<StatusStream>, Status> {
        let interval = match request.into_inner().interval_ms {
            0 => Duration::from_secs(1),
            ms => Duration::from_millis(ms.max(50)),
        };
        let shared = Arc::clone(&self.shared);
        let mut changes = shared.changes.subscribe();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                if tx.send(Ok(shared.status())).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(interval) => {}
                    () = tx.closed() => return,
                    () = shared.shutdown.cancelled() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Where an Acquire stands once the ledger has seen it.
enum Placed {
    Now(pb::Lease),
    Queued(u64, oneshot::Receiver<pb::Lease>),
}

/// An Acquire waiting in the queue. If the caller goes away (cancelled, deadline),
/// dropping this takes the request out of the queue, and gives back a grant that
/// raced with the departure, so nothing is booked for a caller who never heard.
struct QueuedAcquire {
    shared: Arc<Shared>,
    waiter: u64,
    grant: oneshot::Receiver<pb::Lease>,
    settled: bool,
}

impl QueuedAcquire {
    fn new(shared: Arc<Shared>, waiter: u64, grant: oneshot::Receiver<pb::Lease>) -> Self {
        Self {
            shared,
            waiter,
            grant,
            settled: false,
        }
    }

    async fn wait(mut self, wait: Duration) -> Result<pb::Lease, Status> {
        let timeout = tokio::time::sleep(wait);
        tokio::select! {
            granted = &mut self.grant => {
                self.settled = true;
                granted.map_err(|_| Status::not_found("the session ended while the request was queued"))
            }
            () = timeout => {
                let waiter = self.waiter;
                let refusal = self.shared.with_ledger(|ledger, now| ledger.cancel_waiter(waiter, now));
                self.settled = true;
                match refusal {
                    Some(refusal) => {
                        self.shared.metrics.refusals.inc();
                        Err(BrokerError::Exhausted(refusal).into())
                    }
                    // Granted in the instant before the timeout took it out.
                    None => self.grant.try_recv().map_err(|_| {
                        Status::not_found("the session ended while the request was queued")
                    }),
                }
            }
        }
    }
}

impl Drop for QueuedAcquire {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let waiter = self.waiter;
        let raced = self.grant.try_recv().ok();
        self.shared.with_ledger(|ledger, now| {
            ledger.cancel_waiter(waiter, now);
            if let Some(lease) = raced {
                ledger.discard_undelivered(&lease.lease_id, now);
            }
        });
    }
}

/// The device an Acquire names, by index or by uuid (both set must agree).
fn named_device(
    ledger: &Ledger,
    index: Option<u32>,
    uuid: Option<&str>,
) -> Result<Option<u32>, BrokerError> {
    let Some(uuid) = uuid.filter(|uuid| !uuid.is_empty()) else {
        return Ok(index);
    };
    let by_uuid = ledger.device_index_of(uuid).ok_or_else(|| {
        BrokerError::invalid("device_uuid", format!("no device with uuid {uuid}"))
    })?;
    match index {
        Some(index) if index != by_uuid => Err(BrokerError::invalid(
            "device_uuid",
            format!("names device {by_uuid}, but device_index names device {index}"),
        )),
        _ => Ok(Some(by_uuid)),
    }
}

/// How long an Acquire may queue: its own `max_wait`, cut short enough before the
/// call's deadline that the refusal still reaches the caller.
fn queue_wait(max_wait: Duration, deadline: Option<Duration>) -> Duration {
    match deadline {
        Some(deadline) => {
            let margin =
                (deadline / 10).clamp(Duration::from_millis(5), Duration::from_millis(100));
            max_wait.min(deadline.saturating_sub(margin))
        }
        None => max_wait,
    }
}

/// Checks `authorization: Bearer <token>` on every broker call when a token is set.
#[derive(Clone)]
pub struct TokenCheck {
    expected: Option<Arc<str>>,
}

impl TokenCheck {
    pub fn new(token: Option<Arc<str>>) -> Self {
        Self { expected: token }
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        match presented {
            Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => Ok(request),
            Some(_) => Err(BrokerError::Unauthenticated("the bearer token is wrong").into()),
            None => Err(BrokerError::Unauthenticated(
                "this broker needs `authorization: Bearer <token>`",
            )
            .into()),
        }
    }
}

/// Compares without an early exit, so timing does not reveal the token's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_wait_ends_before_the_deadline() {
        let wait = queue_wait(Duration::from_secs(5), Some(Duration::from_secs(1)));
        assert_eq!(wait, Duration::from_millis(900));
        let wait = queue_wait(Duration::from_millis(200), Some(Duration::from_secs(10)));
        assert_eq!(wait, Duration::from_millis(200));
    }

    #[test]
    fn token_comparison_is_exact() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
