//! One backend (the detector, or OCR): its replicas behind one tower stack, built
//! once and cloned per call (clones share the concurrency limit and the balancer).
//!
//! ```text
//! trace context → deadline stamp → load shed → concurrency limit → timeout → buffer
//!   → fail when empty → p2c balance over the replicas discovery finds → replica
//!     (out while ejected or not serving) → Channel
//! ```

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::{Either, Ready};
use plenum_runtime::deadline::grpc_timeout_of;
use tokio_stream::wrappers::WatchStream;
use tonic::body::Body;
use tonic::{Code, Status};
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceBuilder};

use crate::discovery::{self, Discovery, Target, TargetError};
use crate::metrics::{GatewayMetrics, code_label};
use crate::replica::Pool;

/// The stack every call goes through; cheap to clone.
/// Its error is a `Status` (not a `BoxError`): tonic's clients find it as is, and
/// rustc can prove the client futures `Send`.
pub type Stack = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Status>;

/// A backend failure this close to the deadline is taken for the deadline.
const DEADLINE_SLACK: Duration = Duration::from_millis(5);
/// The retry hint sent with every RESOURCE_EXHAUSTED the gateway makes.
pub const RETRY_AFTER: Duration = Duration::from_millis(50);

/// How to reach one backend and how much of it to use.
#[derive(Debug, Clone)]
pub struct BackendSettings {
    /// Where the replicas are, at least one entry: `http://host:port` (one
    /// replica) or `dns://host:port` (a replica per address the name resolves to).
    pub urls: Vec<String>,
    /// Calls in flight across all replicas; the next one is shed.
    pub concurrency: usize,
    /// Longest one call may take, whatever the client's deadline.
    pub timeout: Duration,
    /// How `dns://` entries are resolved, and how often.
    pub discovery: Discovery,
    /// When a replica is taken out of the balancer, and for how long.
    pub ejection: Ejection,
}

/// When a replica gets no new calls for a while: at once when a call to it fails
/// at the transport level, and after `after_timeouts` calls in a row ran out their
/// time without an answer (a hung process answers nothing; its connection stays up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// How long an ejected replica gets no new calls.
    pub duration: Duration,
    /// Calls in a row that reached their deadline unanswered before the replica
    /// is ejected; 0 ejects on transport errors only. Once ejected for silence, a
    /// replica is ejected again by its next unanswered call, until one is answered.
    pub after_timeouts: u32,
}

impl Default for Ejection {
    /// One second out; three silent calls in a row. Small, so a hung replica costs
    /// a few callers their OCR, not half of all calls until it is restarted.
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(1),
            after_timeouts: 3,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{backend}: no replica URL given")]
    NoReplicas { backend: &'static str },
    #[error("{backend}: bad replica URL {source}")]
    BadUrl {
        backend: &'static str,
        source: TargetError,
    },
    #[error("{backend}: the resolve interval must be more than zero")]
    ZeroInterval { backend: &'static str },
}

/// A backend's stack, its name for logs and metrics, and its replicas.
#[derive(Clone)]
pub struct Backend {
    name: &'static str,
    stack: Stack,
    pool: Arc<Pool>,
    metrics: GatewayMetrics,
}

impl Backend {
    /// Builds the stack and starts finding the replicas; connections open lazily,
    /// on the first call. `service` is the backend's gRPC service, whose health
    /// is watched on every replica. Needs a Tokio runtime (the balancer, discovery
    /// and the health watches run on tasks of their own).
    pub fn new(
        name: &'static str,
        service: &'static str,
        settings: &BackendSettings,
        metrics: GatewayMetrics,
    ) -> Result<Self, BackendError> {
        if settings.urls.is_empty() {
            return Err(BackendError::NoReplicas { backend: name });
        }
        let targets = settings
            .urls
            .iter()
            .map(|url| Target::parse(url))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| BackendError::BadUrl {
                backend: name,
                source,
            })?;
        let resolves = targets.iter().any(|t| matches!(t, Target::Dns { .. }));
        if resolves && settings.discovery.interval.is_zero() {
            return Err(BackendError::ZeroInterval { backend: name });
        }
        let pool = Pool::new(
            name,
            service,
            settings.ejection,
            metrics.backend_replicas.clone(),
        );
        let changes =
            discovery::spawn(name, targets, settings.discovery.clone(), Arc::clone(&pool));
        let balance = FailWhenEmpty::new(name, Balance::new(changes), Arc::clone(&pool));
        // The balancer is one service shared by every clone of the stack; the buffer
        // never holds more than the concurrency limit lets through.
        let balanced = Buffer::new(balance, settings.concurrency + 1);
        let shed = metrics.backend_shed.with_label_values(&[name]);
        let timeout = settings.timeout;
        let stack = ServiceBuilder::new()
            // Tower's own errors become statuses here, once, so every caller sees gRPC
            // codes: shed → RESOURCE_EXHAUSTED, elapsed → DEADLINE_EXCEEDED.
            .map_err(move |error: BoxError| {
                if error.is::<tower::load_shed::error::Overloaded>() {
                    shed.inc();
                }
                to_status(name, &*error)
            })
            // When the call must be over, stamped as it enters: the replica it
            // reaches tells a call dropped at its deadline (silence) from one its
            // caller gave up on.
            .map_request(move |request: http::Request<Body>| CallDeadline::stamp(request, timeout))
            // Refuse at once when the limit below is reached: a queue in front of a
            // busy model only turns overload into timeouts and memory.
            .load_shed()
            // The old system's `max_ongoing_requests`: what one backend (all its
            // replicas together) is asked to do at a time.
            .concurrency_limit(settings.concurrency)
            // Inside the limit, so a hung backend gives its slot back when it expires.
            .timeout(settings.timeout)
            .service(balanced);
        Ok(Self {
            name,
            stack: BoxCloneSyncService::new(stack),
            pool,
            metrics,
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Counts a call refused on this backend's behalf before it reached the stack.
    pub fn count_shed(&self) {
        self.metrics
            .backend_shed
            .with_label_values(&[self.name])
            .inc();
    }

    /// Runs `attempt` with a clone of the stack and the time left before `deadline`
    /// (to send on as the backend call's own deadline). A call that found no
    /// replica able to take it (UNAVAILABLE) is tried once more when there are
    /// other replicas and time is left: the backends' calls only read, so a repeat
    /// is harmless. Records the outcome in the metrics.
    pub async fn call<T, F, Fut>(&self, deadline: Option<Instant>, attempt: F) -> Result<T, Status>
    where
        F: Fn(Stack, Option<Duration>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        let mut tries = 0;
        let result = loop {
            tries += 1;
            let remaining = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => break Err(deadline_exceeded(self.name)),
                },
                None => None,
            };
            let call = attempt(self.stack.clone(), remaining);
            let result = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline.into(), call)
                    .await
                    .unwrap_or_else(|_| Err(deadline_exceeded(self.name))),
                None => call.await,
            };
            match result {
                // The backend, told the same deadline, may cut the call a hair before
                // the gateway's own timer does (a reset stream, CANCELLED): it is
                // still the deadline.
                Err(_)
                    if deadline
                        .is_some_and(|deadline| Instant::now() + DEADLINE_SLACK >= deadline) =>
                {
                    break Err(deadline_exceeded(self.name));
                }
                Err(status)
                    if status.code() == Code::Unavailable && tries < 2 && self.pool.len() > 1 =>
                {
                    tracing::debug!(backend = self.name, %status, "retrying on another replica");
                }
                other => break other,
            }
        };
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        self.metrics
            .backend_requests
            .with_label_values(&[self.name, &code_label(code)])
            .inc();
        self.metrics
            .backend_seconds
            .with_label_values(&[self.name])
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

fn deadline_exceeded(backend: &str) -> Status {
    Status::deadline_exceeded(format!("the deadline passed while waiting for {backend}"))
}

/// When a backend call must be over: its `grpc-timeout`, within the backend's own
/// timeout. Carried in the request's extensions from the top of the stack to the
/// replica.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallDeadline(Instant);

impl CallDeadline {
    fn stamp(mut request: http::Request<Body>, backend_timeout: Duration) -> http::Request<Body> {
        let budget = grpc_timeout_of(request.headers())
            .map_or(backend_timeout, |timeout| timeout.min(backend_timeout));
        if let Some(at) = Instant::now().checked_add(budget) {
            request.extensions_mut().insert(CallDeadline(at));
        }
        request
    }

    /// The call ended now, at (or within a hair of) its deadline.
    pub(crate) fn reached(&self) -> bool {
        Instant::now() + DEADLINE_SLACK >= self.0
    }
}

/// RESOURCE_EXHAUSTED with the gateway's retry hint.
pub fn overloaded(message: String) -> Status {
    plenum_runtime::status::overloaded(message, RETRY_AFTER)
}

fn to_status(backend: &'static str, error: &(dyn std::error::Error + 'static)) -> Status {
    let mut source = Some(error);
    while let Some(error) = source {
        if error.is::<tower::load_shed::error::Overloaded>() {
            return overloaded(format!("{backend} is at its concurrency limit; shed"));
        }
        if error.is::<tower::timeout::error::Elapsed>() {
            return Status::deadline_exceeded(format!("{backend} did not answer in time"));
        }
        if let Some(status) = error.downcast_ref::<Status>() {
            return Status::new(status.code(), status.message());
        }
        source = error.source();
    }
    Status::unavailable(format!("{backend} unreachable: {error}"))
}

/// The balancer, answering UNAVAILABLE at once while discovery has found no
/// replica at all: p2c over nothing would wait for one until the deadline.
struct FailWhenEmpty<S> {
    backend: &'static str,
    inner: S,
    pool: Arc<Pool>,
    changes: WatchStream<()>,
    /// The last `poll_ready` found the pool empty: the next call fails.
    empty: bool,
}

impl<S> FailWhenEmpty<S> {
    fn new(backend: &'static str, inner: S, pool: Arc<Pool>) -> Self {
        Self {
            backend,
            inner,
            changes: pool.changes(),
            pool,
            empty: false,
        }
    }
}

impl<S> Service<http::Request<Body>> for FailWhenEmpty<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = BoxError>,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Either<S::Future, Ready<Result<http::Response<Body>, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Discovery settling on nothing sends the balancer no change: listen to
        // the pool so that wakes this task too.
        while let Poll::Ready(Some(())) = self.changes.poll_next_unpin(cx) {}
        // The balancer first, so it takes in the latest changes before the
        // pool is looked at.
        match self.inner.poll_ready(cx) {
            Poll::Ready(result) => {
                self.empty = false;
                Poll::Ready(result)
            }
            Poll::Pending if self.pool.is_settled_empty() => {
                self.empty = true;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if std::mem::take(&mut self.empty) {
            let status = Status::unavailable(format!("{} has no replica", self.backend));
            return Either::Right(futures::future::ready(Err(status.into())));
        }
        Either::Left(self.inner.call(request))
    }
}
