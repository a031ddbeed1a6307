//! The GPU broker's client, as model services use it.
//!
//! A [`LeaseClient`] keeps one broker session alive in the background: it sends
//! heartbeats, reconnects with backoff when the broker goes away, and re-asserts
//! (reclaims) every lease it still holds when it comes back, so a broker restart
//! never loses or double-books memory. Leases come back as [`LeaseGuard`]s that
//! release on drop. Revocations and lost leases arrive as [`LeaseEvent`]s.
//!
//! The question every model service asks, "wait up to T for N bytes, else tell me
//! to use the CPU", is [`LeaseClient::acquire_or_cpu`].
#![forbid(unsafe_code)]

mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use plenum_proto::broker::v1 as pb;
use plenum_proto::broker::v1::broker_client::BrokerClient;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::codegen::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

pub use pb::{LeasePurpose as Purpose, Priority};

/// Who this process is, to the broker.
#[derive(Debug, Clone)]
pub struct LeaseClientConfig {
    /// The broker's URL, e.g. `http://127.0.0.1:7001`.
    pub broker_url: String,
    /// Sent as `authorization: Bearer <token>` when set.
    pub token: Option<Arc<str>>,
    /// The service name shown in the broker's status, e.g. "detector".
    pub holder_name: String,
    /// Longest pause between reconnect attempts.
    pub max_backoff: Duration,
}

impl LeaseClientConfig {
    pub fn new(broker_url: impl Into<String>, holder_name: impl Into<String>) -> Self {
        Self {
            broker_url: broker_url.into(),
            token: None,
            holder_name: holder_name.into(),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// What to ask the broker for.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    pub bytes: u64,
    /// Names the model, so the broker can remember its measured size.
    pub model_key: String,
    pub priority: Priority,
    pub purpose: Purpose,
    /// How long to wait in the broker's queue before giving up.
    pub max_wait: Duration,
    /// A device index the lease must go to, or None for the broker's best fit.
    pub device: Option<u32>,
    /// The same by uuid (as the broker's status lists it); with `device` set too,
    /// both must name the same device.
    pub device_uuid: Option<String>,
    /// Ask for the broker's remembered measured size of `model_key` instead of `bytes`.
    pub use_measured_estimate: bool,
}

impl LeaseRequest {
    /// Weights of `model_key` at normal priority, answered at once.
    pub fn weights(model_key: impl Into<String>, bytes: u64) -> Self {
        Self {
            bytes,
            model_key: model_key.into(),
            priority: Priority::Normal,
            purpose: Purpose::Weights,
            max_wait: Duration::ZERO,
            device: None,
            device_uuid: None,
            use_measured_estimate: false,
        }
    }

    pub fn wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }
}

/// Something the broker told this holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Give this lease back (move the model to CPU, then release) within `deadline`.
    Revoked {
        lease_id: String,
        deadline: Duration,
        reason: String,
    },
    /// The broker no longer honours this lease (a reclaim was refused): stop using the GPU.
    Lost { lease_id: String, reason: String },
    /// A session is open (first time, or after a reconnect).
    Connected {
        session_id: String,
        broker_instance_id: String,
    },
    /// The session ended; the client is reconnecting.
    Disconnected,
}

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// The broker cannot give the bytes now: use the CPU, ask again after `retry_after`.
    #[error("refused: {message} (free {free_bytes} bytes, retry after {retry_after:?})")]
    Refused {
        message: String,
        free_bytes: u64,
        retry_after: Duration,
    },
    /// No session with the broker could be opened in time.
    #[error("the broker is unreachable: {0}")]
    Unavailable(String),
    /// The broker rejected the request itself.
    #[error("the broker rejected the request: {0}")]
    Rejected(tonic::Status),
}

/// Where a model should run, as the broker decided.
#[derive(Debug)]
pub enum Placement {
    Gpu(LeaseGuard),
    Cpu { reason: String },
}

/// The current session, once one is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionInfo {
    pub(crate) session_id: String,
    pub(crate) broker_instance_id: String,
}

/// A lease this process holds, remembered so it can be reclaimed after a reconnect.
#[derive(Debug, Clone)]
pub(crate) struct HeldLease {
    pub(crate) claim: pb::LeaseClaim,
    pub(crate) busy: bool,
    /// When the model under it last served a request, if the holder says; sent
    /// as idle time with each heartbeat so the broker revokes the stalest first.
    pub(crate) last_used: Option<std::time::Instant>,
    /// The most device bytes the holder said this lease's allocations reached since
    /// the last heartbeat; sent and cleared with the next one.
    pub(crate) used_peak: Option<u64>,
}

type Client = BrokerClient<InterceptedService<Channel, Authorize>>;

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) holder: pb::Holder,
    pub(crate) max_backoff: Duration,
    pub(crate) session: watch::Sender<Option<SessionInfo>>,
    pub(crate) held: Mutex<HashMap<String, HeldLease>>,
    /// Grants announced on the session that no Acquire reply has claimed yet.
    pub(crate) unclaimed: Mutex<HashMap<String, Instant>>,
    pub(crate) events: broadcast::Sender<LeaseEvent>,
    pub(crate) to_release: mpsc::UnboundedSender<String>,
    pub(crate) shutdown: CancellationToken,
}

impl Inner {
    pub(crate) fn held(&self) -> MutexGuard<'_, HashMap<String, HeldLease>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn unclaimed(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.unclaimed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A handle to the broker session; cheap to clone. The session ends when the last
/// clone is dropped or [`LeaseClient::close`] is called.
#[derive(Clone)]
pub struct LeaseClient {
    inner: Arc<Inner>,
    _close_on_drop: Arc<tokio_util::sync::DropGuard>,
}

impl std::fmt::Debug for LeaseClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseClient")
            .field("holder", &self.inner.holder)
            .finish()
    }
}

impl LeaseClient {
    /// Starts the session in the background and returns at once; calls wait for the
    /// session as needed.
    pub fn connect(config: LeaseClientConfig) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(config.broker_url.clone())?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        let client = BrokerClient::with_interceptor(
            channel,
            Authorize {
                token: config.token.clone(),
            },
        );
        let holder = pb::Holder {
            name: config.holder_name.clone(),
            instance_id: uuid::Uuid::new_v4().to_string(),
            pid: std::process::id(),
            host: hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        let (to_release, release_queue) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let inner = Arc::new(Inner {
            client,
            holder,
            max_backoff: config.max_backoff,
            session: watch::channel(None).0,
            held: Mutex::new(HashMap::new()),
            unclaimed: Mutex::new(HashMap::new()),
            events: broadcast::channel(64).0,
            to_release,
            shutdown: shutdown.clone(),
        });
        tokio::spawn(session::keep_session(Arc::clone(&inner)));
        tokio::spawn(session::release_dropped(
            Arc::downgrade(&inner),
            release_queue,
        ));
        Ok(Self {
            inner,
            _close_on_drop: Arc::new(shutdown.drop_guard()),
        })
    }

    /// The client a model service's `--broker` / `--broker-token` flags ask for, or
    /// None (and a log line) when there is no broker: the service then runs on CPU.
    pub fn from_args(
        args: &plenum_runtime::config::BrokerClientArgs,
        holder_name: &str,
    ) -> Result<Option<Self>, tonic::transport::Error> {
        let Some(url) = &args.broker else {
            tracing::info!("no --broker: models run on the CPU");
            return Ok(None);
        };
        let mut config = LeaseClientConfig::new(url.clone(), holder_name);
        config.token = args.token.as_ref().map(|token| token.shared());
        Self::connect(config).map(Some)
    }

    /// This process as the broker sees it.
    pub fn holder(&self) -> &pb::Holder {
        &self.inner.holder
    }

    /// Events from the broker: revocations, lost leases, reconnects.
    pub fn events(&self) -> broadcast::Receiver<LeaseEvent> {
        self.inner.events.subscribe()
    }

    /// Waits up to `timeout` for an open session; returns its id.
    pub async fn wait_for_session(&self, timeout: Duration) -> Result<String, AcquireError> {
        let mut session = self.inner.session.subscribe();
        let opened = tokio::time::timeout(timeout, session.wait_for(Option::is_some)).await;
        match opened {
            Ok(Ok(info)) => Ok(info
                .as_ref()
                .map(|info| info.session_id.clone())
                .unwrap_or_default()),
            _ => Err(AcquireError::Unavailable(format!(
                "no broker session within {timeout:?}"
            ))),
        }
    }

    /// The number of leases this client holds.
    pub fn held_count(&self) -> usize {
        self.inner.held().len()
    }

    /// Asks for a lease; waits in the broker's queue up to `request.max_wait`.
    // A client span per broker call, so the broker's server span joins the caller's trace.
    #[tracing::instrument(name = "lease.acquire", skip_all, fields(otel.kind = "client", model_key = %request.model_key, bytes = request.bytes))]
    pub async fn acquire(&self, request: LeaseRequest) -> Result<LeaseGuard, AcquireError> {
        let connect_wait = request.max_wait.max(Duration::from_secs(2));
        let session_id = self.wait_for_session(connect_wait).await?;
        let mut call = tonic::Request::new(pb::AcquireRequest {
            session_id,
            bytes: i64::try_from(request.bytes).unwrap_or(i64::MAX),
            device_index: request.device,
            priority: request.priority as i32,
            purpose: request.purpose as i32,
            max_wait_ms: u64::try_from(request.max_wait.as_millis()).unwrap_or(u64::MAX),
            model_key: request.model_key.clone(),
            use_measured_estimate: request.use_measured_estimate,
            device_uuid: request.device_uuid.clone(),
        });
        // The broker caps its queue wait below this deadline, so a refusal still arrives.
        call.set_timeout(request.max_wait + Duration::from_secs(5));
        let response = self.inner.client.clone().acquire(call).await;
        let lease = match response {
            Ok(response) => response.into_inner().lease.unwrap_or_default(),
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                return Err(refusal(&status));
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::NotFound
                ) =>
            {
                return Err(AcquireError::Unavailable(status.message().to_owned()));
            }
            Err(status) => return Err(AcquireError::Rejected(status)),
        };
        self.inner.unclaimed().remove(&lease.lease_id);
        self.inner.held().insert(
            lease.lease_id.clone(),
            HeldLease {
                claim: pb::LeaseClaim {
                    lease_id: lease.lease_id.clone(),
                    device_uuid: lease.device_uuid.clone(),
                    bytes: i64::try_from(lease.granted_bytes).unwrap_or(i64::MAX),
                    committed: false,
                    priority: lease.priority,
                    purpose: lease.purpose,
                    model_key: lease.model_key.clone(),
                },
                busy: false,
                last_used: None,
                used_peak: None,
            },
        );
        Ok(LeaseGuard {
            client: self.clone(),
            lease_id: lease.lease_id,
            device_index: lease.device_index,
            device_uuid: lease.device_uuid,
            granted_bytes: lease.granted_bytes,
            released: false,
        })
    }

    /// Waits up to `request.max_wait` for the bytes; if the broker cannot give them
    /// (or cannot be reached), says to use the CPU and why.
    pub async fn acquire_or_cpu(&self, request: LeaseRequest) -> Placement {
        match self.acquire(request).await {
            Ok(lease) => Placement::Gpu(lease),
            Err(error) => Placement::Cpu {
                reason: error.to_string(),
            },
        }
    }

    /// Ends the session: the broker releases this client's leases after its grace.
    pub fn close(&self) {
        self.inner.shutdown.cancel();
    }
}

fn refusal(status: &tonic::Status) -> AcquireError {
    let details = status.get_error_details();
    let free_bytes = details
        .error_info()
        .and_then(|info| info.metadata.get("free_bytes"))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let retry_after = details
        .retry_info()
        .and_then(|info| info.retry_delay)
        .unwrap_or(Duration::from_secs(1));
    AcquireError::Refused {
        message: status.message().to_owned(),
        free_bytes,
        retry_after,
    }
}

/// A granted lease. Release it explicitly with [`LeaseGuard::release`]; dropping it
/// releases in the background.
#[derive(Debug)]
pub struct LeaseGuard {
    client: LeaseClient,
    lease_id: String,
    device_index: u32,
    device_uuid: String,
    granted_bytes: u64,
    released: bool,
}

impl LeaseGuard {
    pub fn id(&self) -> &str {
        &self.lease_id
    }

    pub fn device_index(&self) -> u32 {
        self.device_index
    }

    pub fn device_uuid(&self) -> &str {
        &self.device_uuid
    }

    pub fn granted_bytes(&self) -> u64 {
        self.granted_bytes
    }

    /// Reports what the model really uses; the lease shrinks or grows to it.
    #[tracing::instrument(name = "lease.commit", skip_all, fields(otel.kind = "client", lease_id = %self.lease_id, measured_bytes = measured_bytes))]
    pub async fn commit(&mut self, measured_bytes: u64) -> Result<(), tonic::Status> {
        let session_id = self.session_id()?;
        let lease = self
            .client
            .inner
            .client
            .clone()
            .commit(pb::CommitRequest {
                session_id,
                lease_id: self.lease_id.clone(),
                measured_bytes: i64::try_from(measured_bytes).unwrap_or(i64::MAX),
            })
            .await?
            .into_inner()
            .lease
            .unwrap_or_default();
        self.granted_bytes = lease.granted_bytes;
        if let Some(held) = self.client.inner.held().get_mut(&self.lease_id) {
            held.claim.bytes = i64::try_from(lease.granted_bytes).unwrap_or(i64::MAX);
            held.claim.committed = true;
        }
        Ok(())
    }

    /// Marks the lease busy (serving requests) or idle; the broker only revokes idle ones.
    pub fn set_busy(&self, busy: bool) {
        if let Some(held) = self.client.inner.held().get_mut(&self.lease_id) {
            held.busy = busy;
        }
    }

    /// Says when the model under this lease last served a request: the broker
    /// revokes the least recently used idle leases first.
    pub fn set_last_used(&self, at: std::time::Instant) {
        if let Some(held) = self.client.inner.held().get_mut(&self.lease_id) {
            held.last_used = Some(at);
        }
    }

    /// Says how many device bytes this lease's allocations reach now (weights, or a
    /// pass's working memory). The broker hears the peak since the last heartbeat;
    /// on a simulated device that is what it measures, so using more than the lease
    /// grants shows as an overrun.
    pub fn report_use(&self, bytes: u64) {
        if let Some(held) = self.client.inner.held().get_mut(&self.lease_id) {
            held.used_peak = Some(held.used_peak.map_or(bytes, |peak| peak.max(bytes)));
        }
    }

    /// Gives the lease back and waits for the broker to take it.
    #[tracing::instrument(name = "lease.release", skip_all, fields(otel.kind = "client", lease_id = %self.lease_id))]
    pub async fn release(mut self) -> Result<(), tonic::Status> {
        self.released = true;
        self.client.inner.held().remove(&self.lease_id);
        let session_id = self.session_id()?;
        self.client
            .inner
            .client
            .clone()
            .release(pb::ReleaseRequest {
                session_id,
                lease_id: self.lease_id.clone(),
            })
            .await?;
        Ok(())
    }

    fn session_id(&self) -> Result<String, tonic::Status> {
        self.client
            .inner
            .session
            .borrow()
            .as_ref()
            .map(|info| info.session_id.clone())
            .ok_or_else(|| tonic::Status::unavailable("no broker session right now"))
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if !self.released {
            self.client.inner.held().remove(&self.lease_id);
            let _ = self.client.inner.to_release.send(self.lease_id.clone());
        }
    }
}

/// Adds the bearer token and the caller's trace context to every broker call.
#[derive(Clone)]
pub struct Authorize {
    token: Option<Arc<str>>,
}

impl Authorize {
    pub fn new(token: Option<Arc<str>>) -> Self {
        Self { token }
    }
}

impl tonic::service::Interceptor for Authorize {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut request = plenum_runtime::propagation::inject_trace_context(request)?;
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                tonic::Status::invalid_argument(
                    "the broker token has characters a header cannot carry",
                )
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}
