//! One backend's replicas: each a channel the balancer may choose while the
//! replica is fit for calls, and the pool that knows them all.
//!
//! A replica is out while it is *ejected* (a call to it failed at the transport
//! level, or several calls in a row reached their deadline unanswered: see
//! [`Ejection`]) or while its health watch says it takes no work (NOT_SERVING, or
//! the watch itself failed). An out replica reports not-ready,
//! so the balancer sends calls to its siblings; when every replica is out they
//! all report ready again, so callers get a fast UNAVAILABLE instead of waiting
//! out their deadline.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::StreamExt;
use prometheus::IntGaugeVec;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::{BoxError, Service};

use crate::backend::{CallDeadline, Ejection};
use crate::discovery::{Membership, ReplicaUrl};
use crate::health_watch::{self, Health};

/// What the balancer balances over: a replica whose load is its calls in flight
/// (p2c sends the next call to the less busy of two replicas picked at random).
pub type Balanced = PendingRequests<Replica>;

/// The replicas of one backend and what is known of each, shared by all of them.
pub struct Pool {
    backend: &'static str,
    /// The gRPC service whose health is watched on every replica.
    service: &'static str,
    members: Mutex<HashMap<ReplicaUrl, Arc<ReplicaState>>>,
    ejection: Ejection,
    /// Discovery has finished its first round.
    settled: AtomicBool,
    /// Ticks when a replica joins or leaves, or its health changes: an out
    /// replica waiting for a sibling to fail (or for itself to recover) wakes.
    changed: watch::Sender<()>,
    /// Replicas by health, for `plenum_gateway_backend_replicas`.
    gauge: IntGaugeVec,
}

/// Transport and health of one replica.
struct ReplicaState {
    ejected_until: Mutex<Option<Instant>>,
    health: Mutex<Health>,
    /// Calls in a row that reached their deadline unanswered; an answer resets it.
    silent_calls: AtomicU32,
}

impl ReplicaState {
    fn ejected_until(&self, now: Instant) -> Option<Instant> {
        let until = *lock(&self.ejected_until);
        until.filter(|&until| until > now)
    }

    fn health(&self) -> Health {
        *lock(&self.health)
    }

    fn takes_calls(&self, now: Instant) -> bool {
        self.health().takes_calls() && self.ejected_until(now).is_none()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    pub fn new(
        backend: &'static str,
        service: &'static str,
        ejection: Ejection,
        gauge: IntGaugeVec,
    ) -> Arc<Self> {
        for health in Health::ALL {
            gauge.with_label_values(&[backend, health.label()]).set(0);
        }
        Arc::new(Self {
            backend,
            service,
            members: Mutex::new(HashMap::new()),
            ejection,
            settled: AtomicBool::new(false),
            changed: watch::channel(()).0,
            gauge,
        })
    }

    /// Replicas in the pool now.
    pub fn len(&self) -> usize {
        lock(&self.members).len()
    }

    /// Discovery looked and found no replica at all.
    pub fn is_settled_empty(&self) -> bool {
        self.settled.load(Ordering::SeqCst) && lock(&self.members).is_empty()
    }

    /// Wakes whoever waits on [`Pool::changes`].
    fn tick(&self) {
        self.changed.send_replace(());
    }

    pub fn changes(&self) -> WatchStream<()> {
        WatchStream::from_changes(self.changed.subscribe())
    }

    fn all_out(&self, now: Instant) -> bool {
        lock(&self.members)
            .values()
            .all(|replica| !replica.takes_calls(now))
    }

    fn gauge_add(&self, health: Health, delta: i64) {
        self.gauge
            .with_label_values(&[self.backend, health.label()])
            .add(delta);
    }

    /// Takes `state` out of the balancer for the ejection's duration. Its siblings
    /// waiting for it to fail wake (when it was the last one in, they all serve).
    fn eject(&self, state: &ReplicaState) {
        *lock(&state.ejected_until) = Some(Instant::now() + self.ejection.duration);
        self.tick();
    }

    /// A call to `url` failed at the transport level: out at once.
    fn call_failed(&self, url: &ReplicaUrl, state: &ReplicaState, error: &BoxError) {
        tracing::warn!(backend = self.backend, %url, %error, "backend replica failed; ejected for {:?}", self.ejection.duration);
        self.eject(state);
    }

    /// A call to `url` reached its deadline unanswered: out once that happened
    /// `after_timeouts` times in a row. A hung process keeps its connection (and,
    /// until keepalive notices, its health watch), so silence is the only sign.
    fn call_unanswered(&self, url: &ReplicaUrl, state: &ReplicaState) {
        let in_a_row = state.silent_calls.fetch_add(1, Ordering::SeqCst) + 1;
        let after = self.ejection.after_timeouts;
        if after == 0 || in_a_row < after {
            tracing::debug!(backend = self.backend, %url, in_a_row, "backend call reached its deadline unanswered");
            return;
        }
        tracing::warn!(
            backend = self.backend,
            %url,
            in_a_row,
            "backend replica left {in_a_row} calls in a row unanswered at their deadline; ejected for {:?}",
            self.ejection.duration
        );
        self.eject(state);
    }

    /// Records what `url`'s health watch heard, if `state` is still that member.
    fn set_health(&self, url: &ReplicaUrl, state: &Arc<ReplicaState>, health: Health) {
        {
            let members = lock(&self.members);
            let mut current = lock(&state.health);
            if *current == health {
                return;
            }
            if members
                .get(url)
                .is_some_and(|member| Arc::ptr_eq(member, state))
            {
                self.gauge_add(*current, -1);
                self.gauge_add(health, 1);
            }
            *current = health;
        }
        match health {
            Health::NotServing | Health::Unreachable => {
                tracing::warn!(backend = self.backend, %url, health = health.label(), "replica out: no new calls");
            }
            _ => {
                tracing::info!(backend = self.backend, %url, health = health.label(), "replica health")
            }
        }
        self.tick();
    }
}

impl Membership for Arc<Pool> {
    type Replica = Balanced;

    fn join(&self, url: &ReplicaUrl) -> Option<Balanced> {
        let endpoint = match Endpoint::from_shared(url.to_string()) {
            Ok(endpoint) => endpoint,
            Err(error) => {
                tracing::warn!(backend = self.backend, %url, %error, "cannot dial a replica; left out");
                return None;
            }
        };
        let channel = endpoint
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            // A replica that vanished without closing its socket is noticed in
            // seconds, not at the next TCP timeout.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        let state = Arc::new(ReplicaState {
            ejected_until: Mutex::new(None),
            health: Mutex::new(Health::Unknown),
            silent_calls: AtomicU32::new(0),
        });
        if let Some(old) = lock(&self.members).insert(url.clone(), Arc::clone(&state)) {
            self.gauge_add(old.health(), -1);
        }
        self.gauge_add(Health::Unknown, 1);
        self.tick();
        let watcher = {
            let (pool, url, state) = (Arc::clone(self), url.clone(), Arc::clone(&state));
            tokio::spawn(health_watch::watch(
                channel.clone(),
                self.service,
                move |health| pool.set_health(&url, &state, health),
            ))
        };
        let replica = Replica {
            channel,
            url: url.clone(),
            state,
            pool: Arc::clone(self),
            changes: self.changes(),
            wake: None,
            _watcher: AbortOnDrop(watcher),
        };
        Some(PendingRequests::new(replica, CompleteOnResponse::default()))
    }

    fn leave(&self, url: &ReplicaUrl) {
        if let Some(old) = lock(&self.members).remove(url) {
            self.gauge_add(old.health(), -1);
        }
        self.tick();
    }

    fn settle(&self) {
        self.settled.store(true, Ordering::SeqCst);
        self.tick();
    }
}

/// Ends the replica's health watch with the replica.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One replica's channel, not ready while it is out (see the module's comment).
pub struct Replica {
    channel: Channel,
    url: ReplicaUrl,
    state: Arc<ReplicaState>,
    pool: Arc<Pool>,
    changes: WatchStream<()>,
    wake: Option<Pin<Box<tokio::time::Sleep>>>,
    _watcher: AbortOnDrop,
}

type ReplicaFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send + 'static>>;

impl Service<http::Request<Body>> for Replica {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = ReplicaFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            // Listen for changes before looking, so one that lands after the
            // look still wakes this task.
            while let Poll::Ready(Some(())) = self.changes.poll_next_unpin(cx) {}
            let now = Instant::now();
            if self.state.takes_calls(now) || self.pool.all_out(now) {
                break;
            }
            if let Some(until) = self.state.ejected_until(now) {
                let sleep = self
                    .wake
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until.into())));
                sleep.as_mut().reset(until.into());
                if sleep.as_mut().poll(cx).is_ready() {
                    continue;
                }
            }
            return Poll::Pending;
        }
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let url = Arc::clone(&self.url);
        if self.state.health() == Health::NotServing {
            // Chosen only because every replica is out: the replica said it
            // takes no work, so fail now rather than hand it some.
            return Box::pin(std::future::ready(Err(Status::unavailable(format!(
                "{url} reports NOT_SERVING"
            ))
            .into())));
        }
        let outcome = CallOutcome {
            deadline: request.extensions().get::<CallDeadline>().copied(),
            url,
            state: Arc::clone(&self.state),
            pool: Arc::clone(&self.pool),
            ended: false,
        };
        let call = self.channel.call(request);
        Box::pin(async move {
            let result = call.await.map_err(BoxError::from);
            outcome.record(&result);
            result
        })
    }
}

/// Follows one call to a replica to its end and tells the pool how it went: an
/// answer, a transport failure, or silence until the deadline. Silence is a call
/// ended at its deadline by whichever timer fired first: the channel's own (it
/// enforces `grpc-timeout`), the gateway's (the call is dropped), or the
/// replica's (CANCELLED or DEADLINE_EXCEEDED with no body). A call its caller gave
/// up on earlier says nothing about the replica.
struct CallOutcome {
    deadline: Option<CallDeadline>,
    url: ReplicaUrl,
    state: Arc<ReplicaState>,
    pool: Arc<Pool>,
    ended: bool,
}

impl CallOutcome {
    fn record(mut self, result: &Result<http::Response<Body>, BoxError>) {
        self.ended = true;
        match result {
            Err(error) if timer_expired(&**error) => {
                self.pool.call_unanswered(&self.url, &self.state)
            }
            Err(error) => self.pool.call_failed(&self.url, &self.state, error),
            Ok(response) if self.cut_at_deadline(response) => {
                self.pool.call_unanswered(&self.url, &self.state)
            }
            Ok(_) => self.state.silent_calls.store(0, Ordering::SeqCst),
        }
    }

    fn reached_deadline(&self) -> bool {
        self.deadline.is_some_and(|deadline| deadline.reached())
    }

    /// The replica's own timer ended the call at its deadline (a trailers-only
    /// answer whose status says so).
    fn cut_at_deadline(&self, response: &http::Response<Body>) -> bool {
        let cut = Status::from_header_map(response.headers()).is_some_and(|status| {
            matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded)
        });
        cut && self.reached_deadline()
    }
}

/// The channel's timer for the call's `grpc-timeout` ended it: silence, not a
/// transport failure.
fn timer_expired(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = error.source();
    }
    false
}

impl Drop for CallOutcome {
    fn drop(&mut self) {
        if !self.ended && self.reached_deadline() {
            self.pool.call_unanswered(&self.url, &self.state);
        }
    }
}
