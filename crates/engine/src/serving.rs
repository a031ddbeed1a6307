//! A model service's life around its engines: it answers from the moment it binds,
//! NOT_SERVING (overall and by name) while its models load, SERVING once every one is
//! ready, and NOT_SERVING again for good when a model's thread stops; then it drains
//! and ends with [`ModelStopped`], which `main` turns into
//! [`ModelStopped::EXIT_CODE`] for the supervisor to restart it.

use std::future::Future;
use std::time::Duration;

use plenum_runtime::grpc::GrpcServer;
use plenum_runtime::listen::Listener;
use plenum_runtime::service::{Service, ServiceConfig, Started};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::health::stopped_now;
use crate::{Engine, EngineError, ModelStopped, first_stopped};

/// A model service serving while it loads; see the module's words.
pub struct ModelService {
    health: HealthReporter,
    name: &'static str,
    /// Stops the server: the caller's shutdown, or this service's own after a stop.
    stop: CancellationToken,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl ModelService {
    /// Starts serving `server` (which carries service `S`) on `listener` now, as
    /// NOT_SERVING, until `shutdown`.
    pub async fn start<S: NamedService>(
        server: GrpcServer,
        listener: impl Into<Listener>,
        shutdown: &CancellationToken,
        drain: Duration,
    ) -> Self {
        let health = server.health();
        // tonic-health starts the overall "" as SERVING: not true until the models load.
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health.set_not_serving::<S>().await;
        let stop = shutdown.child_token();
        let server = tokio::spawn(server.serve(listener.into(), stop.clone(), drain));
        Self {
            health,
            name: S::NAME,
            stop,
            server,
        }
    }

    /// Waits for `load` (the models), unless shutdown comes first: then `Ok(None)`
    /// once the server has drained. A failed load stops the server, and is returned;
    /// a model that stopped while loading as [`ModelStopped`], for its exit code.
    pub async fn load<T>(
        &mut self,
        load: impl Future<Output = Result<T, EngineError>>,
    ) -> anyhow::Result<Option<T>> {
        let loaded = tokio::select! {
            loaded = load => loaded,
            () = self.stop.cancelled() => {
                self.stopped_server().await?;
                return Ok(None);
            }
            ended = &mut self.server => {
                ended??;
                return Ok(None);
            }
        };
        match loaded {
            Ok(models) => Ok(Some(models)),
            Err(error) => {
                self.set_status(ServingStatus::NotServing).await;
                tracing::error!(%error, "the models did not load");
                self.stop.cancel();
                self.stopped_server().await?;
                Err(match error {
                    EngineError::Stopped(stopped) => stopped.into(),
                    other => other.into(),
                })
            }
        }
    }

    /// SERVING now; serves until shutdown (`Ok`), or until one of `engines` stops:
    /// then NOT_SERVING, an error naming the model, a drain, and `Err(ModelStopped)`.
    pub async fn serve(mut self, engines: &[Engine]) -> anyhow::Result<()> {
        // A model may have stopped while the others loaded: then never say SERVING.
        let stopped = match stopped_now(engines) {
            Some(stopped) => stopped,
            None => {
                self.set_status(ServingStatus::Serving).await;
                tokio::select! {
                    stopped = first_stopped(engines) => stopped,
                    () = self.stop.cancelled() => return self.stopped_server().await,
                    ended = &mut self.server => return Ok(ended??),
                }
            }
        };
        self.set_status(ServingStatus::NotServing).await;
        tracing::error!(
            model = %stopped.model,
            reason = %stopped.reason,
            exit_code = ModelStopped::EXIT_CODE,
            "a model stopped: NOT_SERVING, draining, then exiting for a restart"
        );
        self.stop.cancel();
        self.stopped_server().await?;
        Err(stopped.into())
    }

    async fn set_status(&self, status: ServingStatus) {
        self.health.set_service_status("", status).await;
        self.health.set_service_status(self.name, status).await;
    }

    /// Waits for the server's end after `stop`.
    async fn stopped_server(&mut self) -> anyhow::Result<()> {
        (&mut self.server).await??;
        Ok(())
    }
}

/// A model service's flags: what its models may lease on a GPU, for the cap on its
/// CUDA allocator.
pub trait ModelServiceConfig: ServiceConfig {
    /// Bytes its models may lease on one GPU at most (see [`crate::EngineArgs::gpu_plan`]);
    /// `None` when they never run on CUDA.
    fn gpu_plan(&self) -> anyhow::Result<Option<u64>>;
}

/// The whole `main` of a model service: variables that libraries read once as they
/// load set first (libgomp's passive wait policy; the CUDA allocator's cap, see
/// [`crate::cuda_cap`]) by re-executing the binary with them, then the shared
/// start-up of [`plenum_runtime::service`]; a model whose thread stopped ends the
/// process with [`ModelStopped::EXIT_CODE`], for its supervisor to restart it.
pub fn main<C, F, Fut>(service: &Service, serve: F) -> anyhow::Result<()>
where
    C: ModelServiceConfig,
    F: FnOnce(Started<C>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut vars = crate::omp::passive_wait_policy();
    if let Some(conf) = cuda_allocator_cap::<C>(service) {
        vars.push((crate::cuda_cap::ALLOC_CONF, conf));
    }
    crate::omp::reexec_with(&vars);
    let serve = |started: Started<C>| {
        if let Ok(conf) = std::env::var(crate::cuda_cap::ALLOC_CONF) {
            tracing::info!(%conf, "the CUDA allocator's configuration (its cap: the most the models may lease)");
        }
        serve(started)
    };
    plenum_runtime::service::main_then(service, serve, crate::health::exit_if_stopped)
}

/// The allocator configuration capping this process at its GPU plan, when it may run
/// on CUDA, NVML sees a device, and the operator set no fraction of their own.
fn cuda_allocator_cap<C: ModelServiceConfig>(service: &Service) -> Option<String> {
    let config: C = plenum_runtime::config::parse_with_defaults(&[
        ("listen", service.listen),
        ("metrics_listen", service.metrics_listen),
    ]);
    let plan = match config.gpu_plan() {
        Ok(plan) => plan?,
        // The start-up reports the same error properly; nothing to cap meanwhile.
        Err(_) => return None,
    };
    let existing = crate::cuda_cap::existing_conf();
    crate::cuda_cap::capped_conf(
        existing.as_deref(),
        plan,
        crate::cuda_cap::smallest_device_bytes()?,
    )
}
