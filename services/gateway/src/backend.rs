//! One backend (the detector, or OCR): its replicas behind one tower stack, built
//! once and cloned per call (clones share the concurrency limit and the balancer).
//!
//! ```text
//! trace context → load shed → concurrency limit → timeout → buffer → p2c balance
//!                                                         → replica (eject on failure) → Channel
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceBuilder};

use crate::metrics::{GatewayMetrics, code_label};

/// The stack every call goes through; cheap to clone.
/// Its error is a `Status` (not a `BoxError`): tonic's clients find it as is, and
/// rustc can prove the client futures `Send`.
pub type Stack = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Status>;

/// How long a replica that failed at the transport level gets no new calls.
const EJECT_FOR: Duration = Duration::from_secs(1);
/// A backend failure this close to the deadline is taken for the deadline.
const DEADLINE_SLACK: Duration = Duration::from_millis(5);
/// The retry hint sent with every RESOURCE_EXHAUSTED the gateway makes.
pub const RETRY_AFTER: Duration = Duration::from_millis(50);

/// How to reach one backend and how much of it to use.
#[derive(Debug, Clone)]
pub struct BackendSettings {
    /// Replica URLs (`http://host:port`); at least one.
    pub urls: Vec<String>,
    /// Calls in flight across all replicas; the next one is shed.
    pub concurrency: usize,
    /// Longest one call may take, whatever the client's deadline.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{backend}: no replica URL given")]
    NoReplicas { backend: &'static str },
    #[error("{backend}: bad replica URL `{url}`: {source}")]
    BadUrl {
        backend: &'static str,
        url: String,
        source: tonic::transport::Error,
    },
}

/// A backend's stack, its name for logs and metrics, and its replica count.
#[derive(Clone)]
pub struct Backend {
    name: &'static str,
    stack: Stack,
    replicas: usize,
    metrics: GatewayMetrics,
}

impl Backend {
    /// Builds the stack; connections open lazily, on the first call. Needs a Tokio
    /// runtime (the balancer runs on its own task).
    pub fn new(
        name: &'static str,
        settings: &BackendSettings,
        metrics: GatewayMetrics,
    ) -> Result<Self, BackendError> {
        if settings.urls.is_empty() {
            return Err(BackendError::NoReplicas { backend: name });
        }
        let pool: Arc<Vec<Arc<ReplicaHealth>>> = Arc::new(
            settings
                .urls
                .iter()
                .map(|_| Arc::new(ReplicaHealth::default()))
                .collect(),
        );
        let mut replicas = Vec::with_capacity(settings.urls.len());
        for (index, url) in settings.urls.iter().enumerate() {
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|source| BackendError::BadUrl {
                    backend: name,
                    url: url.clone(),
                    source,
                })?
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                // A replica that vanished without closing its socket is noticed in
                // seconds, not at the next TCP timeout.
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5));
            let replica = Replica {
                channel: endpoint.connect_lazy(),
                url: url.as_str().into(),
                health: Arc::clone(&pool[index]),
                pool: Arc::clone(&pool),
                wake: None,
            };
            // Load = calls in flight on this replica: p2c sends the next call to the
            // less busy of two replicas picked at random.
            replicas.push(PendingRequests::new(replica, CompleteOnResponse::default()));
        }
        let balance = Balance::new(ServiceList::new(replicas));
        // The balancer is one service shared by every clone of the stack; the buffer
        // never holds more than the concurrency limit lets through.
        let balanced = Buffer::new(balance, settings.concurrency + 1);
        let shed = metrics.backend_shed.with_label_values(&[name]);
        let stack = ServiceBuilder::new()
            // Tower's own errors become statuses here, once, so every caller sees gRPC
            // codes: shed → RESOURCE_EXHAUSTED, elapsed → DEADLINE_EXCEEDED.
            .map_err(move |error: BoxError| {
                if error.is::<tower::load_shed::error::Overloaded>() {
                    shed.inc();
                }
                to_status(name, &*error)
            })
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
            replicas: settings.urls.len(),
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
                    if status.code() == Code::Unavailable && tries < 2 && self.replicas > 1 =>
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

/// RESOURCE_EXHAUSTED with a RetryInfo detail.
pub fn overloaded(message: String) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
    )
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

/// Transport health of one replica, shared with its siblings.
#[derive(Default)]
struct ReplicaHealth {
    ejected_until: Mutex<Option<Instant>>,
}

impl ReplicaHealth {
    fn ejected_until(&self, now: Instant) -> Option<Instant> {
        let until = *self.ejected_until.lock().unwrap_or_else(|e| e.into_inner());
        until.filter(|&until| until > now)
    }

    fn eject(&self) {
        *self.ejected_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + EJECT_FOR);
    }
}

/// One replica's channel. After a transport failure (refused, reset, gone) it
/// reports not-ready for [`EJECT_FOR`], so the balancer sends calls to its
/// siblings; when every sibling is ejected too it stays ready, so callers get a
/// fast UNAVAILABLE instead of waiting out their deadline.
struct Replica {
    channel: Channel,
    url: Arc<str>,
    health: Arc<ReplicaHealth>,
    pool: Arc<Vec<Arc<ReplicaHealth>>>,
    wake: Option<Pin<Box<tokio::time::Sleep>>>,
}

type ReplicaFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send + 'static>>;

impl Service<http::Request<Body>> for Replica {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = ReplicaFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let now = Instant::now();
        if let Some(until) = self.health.ejected_until(now) {
            let all_ejected = self
                .pool
                .iter()
                .all(|replica| replica.ejected_until(now).is_some());
            if !all_ejected {
                let sleep = self
                    .wake
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until.into())));
                sleep.as_mut().reset(until.into());
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        }
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let call = self.channel.call(request);
        let health = Arc::clone(&self.health);
        let url = Arc::clone(&self.url);
        Box::pin(async move {
            match call.await {
                Ok(response) => Ok(response),
                Err(error) => {
                    tracing::warn!(%url, %error, "backend replica failed; ejected for {EJECT_FOR:?}");
                    health.eject();
                    Err(error.into())
                }
            }
        })
    }
}
