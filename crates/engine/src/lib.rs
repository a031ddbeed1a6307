//! The model host shared by the detector and the OCR service.
//!
//! An [`Engine`] loads one TorchScript model, runs it on a dedicated thread behind
//! a cloneable async handle, groups concurrent requests into batches, and places the
//! model where the GPU broker allows: on `cuda:N` under a lease, on the CPU when
//! refused (asking again in the background), back to the CPU when the broker
//! revokes the lease. Moves happen between batches and never drop a request.
//!
//! Rooms: [`manifest`] describes a model file, [`model`] is what runs it (TorchScript),
//! [`aoti`] runs its AOTInductor package on the CPU when one was provisioned, [`onnx`]
//! ONNX Runtime where provisioning timed it fastest on this CPU,
//! [`worker`] is the inference thread, [`placement`] follows the lease, [`health`] tells
//! a service when a model's thread has stopped, [`serving`] is a model service's
//! health from bind to exit, [`metrics`] reports, [`omp`] fixes
//! libgomp, `offload` moves an idle model off the GPU and promotes it back on demand.
//! [`memory_profile`] measures a model's working memory at load and [`admission`]
//! admits a service's requests against its working-memory budget.

pub mod admission;
pub mod aoti;
pub mod cuda_alloc;
pub mod cuda_cap;
pub mod health;
pub mod manifest;
pub mod memory_profile;
pub mod metrics;
pub mod model;
mod offload;
pub mod omp;
pub mod onnx;
mod placement;
pub mod serving;
pub mod status;
mod work_lease;
pub mod worker;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant};

use plenum_lease::{LeaseClient, Priority};
use tch::Tensor;
use tokio::sync::{oneshot, watch};

pub use admission::{AdmissionError, WorkBudget, WorkPermit};
pub use aoti::ModelFormat;
pub use health::{ModelStopped, first_stopped};
pub use manifest::{ModelManifest, Precision, Variant};
pub use memory_profile::MemoryProfile;
pub use metrics::{EngineMetrics, Move};
pub use model::{Model, ModelLoader, TorchScript};
pub use tch;
pub use worker::Target;

/// Where a model may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// A GPU when CUDA and a lease are available, else the CPU.
    Auto,
    /// Always the CPU; no lease is asked for.
    Cpu,
    /// A GPU under a lease; refuses to start without CUDA.
    Cuda,
    /// The full lease protocol with the compute on the CPU: for tests and laptops
    /// running `plenum-broker --simulate`.
    SimGpu,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("the model's queue is full ({capacity} waiting); retry shortly")]
    Overloaded { capacity: usize },
    #[error("the model failed on this input: {0}")]
    Inference(String),
    #[error("the model is not loaded: {0}")]
    NotReady(String),
    #[error("cannot load the model: {0}")]
    Load(String),
    /// The model's thread stopped (while loading: a panic or a stall in a warmup or
    /// a move); the service should be restarted.
    #[error(transparent)]
    Stopped(#[from] ModelStopped),
    /// The work does not fit the working-memory budget (too large, or not in time).
    #[error(transparent)]
    Admission(#[from] AdmissionError),
}

/// How the engine batches and places its model; the service fills it from flags.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub device: DeviceChoice,
    /// Most rows (images, crops) per model call.
    pub max_batch: usize,
    /// How long the first request of a batch waits for company.
    pub max_queue_delay: Duration,
    /// Requests waiting beyond this are refused at once.
    pub queue_capacity: usize,
    pub warmup_timeout: Duration,
    /// How long to wait for a lease at start before serving from the CPU.
    pub lease_wait: Duration,
    pub priority: Priority,
    /// A lease is idle (revocable) after this long without a batch.
    pub idle_after: Duration,
    /// One model call (a chunk of a batch, a warmup, a move) running longer than this
    /// means the model's thread is stuck: the engine reports it stopped.
    pub stall_timeout: Duration,
    /// Makes the model from its manifest: TorchScript unless a test brings its own.
    pub loader: ModelLoader,
    /// Measure the model's working memory at load (see [`memory_profile`]).
    pub memory_profile: bool,
    /// Most working memory one model call may take by the profile: larger batches are
    /// split, a row that alone needs more is refused (on a GPU, it asks the broker for
    /// a peak lease first). None: on the CPU batches split by rows only; on a GPU the
    /// work lease is the weights' estimate (see [`work_lease`]).
    pub work_memory: Option<u64>,
    /// Longest a request waits for working memory held by others.
    pub work_wait: Duration,
    /// When the GPU cannot take one input (its peak lease refused, or one row out of
    /// CUDA memory), run that input on the CPU instead of refusing it (see
    /// [`work_lease`]).
    pub cpu_fallback: bool,
    /// A model unused this long moves to the CPU and gives its lease back; the next
    /// request promotes it (served from the CPU meanwhile). None: never.
    pub idle_offload: Option<Duration>,
    /// With at least this many requests queued, the model asks the broker one
    /// priority step higher. 0: never.
    pub demand_boost_depth: usize,
    /// Which of the manifest's variants to run; the lease asks for its estimate.
    pub precision: Precision,
}

impl EngineSettings {
    /// These settings for one model of a service of several, at the precision it runs
    /// at ([`ModelManifest::runs_at`]); says so when that is not the one asked for.
    pub fn for_model(&self, manifest: &ModelManifest) -> Self {
        let precision = manifest.runs_at(self.precision);
        if precision != self.precision {
            tracing::warn!(
                model = %manifest.name,
                asked = %self.precision,
                runs = %precision,
                "the model has no variant of the precision asked for; it runs at fp32"
            );
        }
        Self {
            precision,
            ..self.clone()
        }
    }
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            device: DeviceChoice::Auto,
            max_batch: 16,
            max_queue_delay: Duration::from_millis(5),
            queue_capacity: 64,
            warmup_timeout: Duration::from_secs(30),
            lease_wait: Duration::from_secs(2),
            priority: Priority::Normal,
            idle_after: Duration::from_secs(2),
            stall_timeout: Duration::from_secs(300),
            loader: ModelLoader::default(),
            memory_profile: false,
            work_memory: None,
            work_wait: Duration::from_secs(10),
            cpu_fallback: true,
            idle_offload: None,
            demand_boost_depth: 0,
            precision: Precision::Fp32,
        }
    }
}

/// Flags for a model service's engine, flattened into its clap struct.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Where models run: auto, cpu, cuda, or sim-gpu (the lease protocol with CPU compute).
    #[arg(long, env = "PLENUM_DEVICE", value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Most rows (images or crops) per model call.
    #[arg(long, env = "PLENUM_MAX_BATCH", default_value_t = 16)]
    pub max_batch: usize,
    /// How long a request waits for others to batch with.
    #[arg(long, env = "PLENUM_MAX_QUEUE_DELAY", default_value = "5ms", value_parser = humantime::parse_duration)]
    pub max_queue_delay: Duration,
    /// Requests queued per model beyond this are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "PLENUM_QUEUE_CAPACITY", default_value_t = 64)]
    pub queue_capacity: usize,
    /// Warmup longer than this is abandoned (logged); the first request pays instead.
    #[arg(long, env = "PLENUM_WARMUP_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub warmup_timeout: Duration,
    /// How long to wait for a GPU lease at start before serving from the CPU.
    #[arg(long, env = "PLENUM_LEASE_WAIT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub lease_wait: Duration,
    /// One model call running longer than this means the model is stuck: the service
    /// turns NOT_SERVING and exits with 75 for its supervisor to restart it.
    #[arg(long, env = "PLENUM_STALL_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub stall_timeout: Duration,
    /// A model unused this long moves to the CPU and releases its GPU lease; the next
    /// request is served from the CPU while the model is promoted back. Off when unset.
    #[arg(long, env = "PLENUM_IDLE_OFFLOAD", value_parser = humantime::parse_duration)]
    pub idle_offload: Option<Duration>,
    /// With at least this many requests queued for a model, its lease requests go
    /// one priority step higher, so idle lower-priority models give way (0 = never).
    #[arg(long, env = "PLENUM_DEMAND_BOOST_DEPTH", default_value_t = 0)]
    pub demand_boost_depth: usize,
    /// Which variant of each model to run (its manifest must list it): fp32, fp16
    /// (half the VRAM; for GPUs) or int8 (CPU only: never asks for a GPU lease,
    /// whatever --device says). The lease asks for the variant's estimate.
    #[arg(long, env = "PLENUM_PRECISION", value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// libtorch intra-op threads (0 = libtorch's default, one per core).
    #[arg(long, env = "PLENUM_INTRA_OP_THREADS", default_value_t = 0)]
    pub intra_op_threads: i32,
    /// The service's working-memory budget (decoded pixels, model inputs, tiles,
    /// crops, and the models' activations on the CPU), e.g. `2GiB`. Requests are
    /// admitted against it before any pixel is decoded; default: enough for one
    /// largest admissible input. On a GPU each model also leases this much for its
    /// activations (default: its weights' estimate), and one input that needs more
    /// asks the broker for a short peak lease.
    #[arg(long, env = "PLENUM_WORK_MEMORY", value_parser = plenum_runtime::bytes::parse_bytes)]
    pub work_memory: Option<u64>,
    /// Longest a request waits for working memory others hold before
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "PLENUM_WORK_WAIT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub work_wait: Duration,
    /// When a model serving from a GPU cannot take one input (no peak lease for it
    /// within --work-wait, or a single row out of CUDA memory), run that input on the
    /// CPU, one row per call, instead of answering RESOURCE_EXHAUSTED.
    #[arg(long, env = "PLENUM_CPU_FALLBACK", default_value_t = true, action = clap::ArgAction::Set)]
    pub cpu_fallback: bool,
    /// Measure each model's working memory at load (a few passes at several sizes).
    #[arg(long, env = "PLENUM_MEMORY_PROFILE", default_value_t = true, action = clap::ArgAction::Set)]
    pub memory_profile: bool,
    /// What runs the model on the CPU: auto (the fastest runtime provisioning timed
    /// for this TorchScript file on this CPU: ONNX Runtime, the AOTInductor package,
    /// else TorchScript), package, onnx, or torchscript (always; for comparisons and as
    /// an escape hatch).
    #[arg(long, env = "PLENUM_MODEL_FORMAT", value_enum, default_value_t = ModelFormat::Auto)]
    pub model_format: ModelFormat,
}

impl EngineArgs {
    /// The most device memory these flags let `manifests` lease on one GPU: each
    /// model's weights estimate (of the precision it runs at, see
    /// [`ModelManifest::runs_at`]) and its work lease. `None` when none of
    /// them runs on CUDA (`--device cpu|sim-gpu`, all int8).
    pub fn gpu_plan(&self, manifests: &[ModelManifest]) -> Option<u64> {
        if matches!(self.device, DeviceChoice::Cpu | DeviceChoice::SimGpu) {
            return None;
        }
        let plan: u64 = manifests
            .iter()
            .filter_map(|manifest| {
                let precision = manifest.runs_at(self.precision);
                if precision == Precision::Int8 {
                    return None; // CPU only: never leased
                }
                let weights = manifest.with_precision(precision).ok()?.vram_estimate_bytes;
                Some(weights + self.work_memory.unwrap_or(weights))
            })
            .sum();
        (plan > 0).then_some(plan)
    }

    /// The engine settings these flags ask for. Also sets libtorch's intra-op thread
    /// count, which is process-wide, when `--intra-op-threads` is given.
    pub fn settings(&self) -> EngineSettings {
        if self.intra_op_threads > 0 {
            tch::set_num_threads(self.intra_op_threads);
        }
        EngineSettings {
            device: self.device,
            max_batch: self.max_batch.max(1),
            max_queue_delay: self.max_queue_delay,
            queue_capacity: self.queue_capacity.max(1),
            warmup_timeout: self.warmup_timeout,
            lease_wait: self.lease_wait,
            stall_timeout: self.stall_timeout,
            memory_profile: self.memory_profile,
            work_memory: self.work_memory,
            work_wait: self.work_wait,
            cpu_fallback: self.cpu_fallback,
            idle_offload: self.idle_offload,
            demand_boost_depth: self.demand_boost_depth,
            precision: self.precision,
            loader: ModelLoader::for_format(self.model_format),
            ..EngineSettings::default()
        }
    }
}

/// What the engine is doing, published for health checks and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineState {
    /// True once the model can answer (loaded; warmup done, failed or timed out).
    pub ready: bool,
    pub placement: Target,
    /// Why the model is where it is, for logs and status.
    pub reason: String,
    /// Why the model's thread stopped, once it has: a panic escaped the model, or a
    /// call ran past the stall timeout. The engine never answers again; its service
    /// should be restarted.
    pub stopped: Option<String>,
}

/// A handle to one loaded model; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    jobs: SyncSender<worker::Job>,
    capacity: usize,
    state: watch::Receiver<EngineState>,
    metrics: EngineMetrics,
    manifest: Arc<ModelManifest>,
    profile: memory_profile::SharedProfile,
    max_batch: usize,
    /// What the engine started with; peak leases are asked for with its priority and
    /// `work_wait`.
    settings: EngineSettings,
    /// Working memory one call may take on a GPU (the work lease).
    gpu_work_memory: u64,
    /// Peak leases come from the same broker session as the weights'.
    lease: Option<LeaseClient>,
    /// Wakes an offloaded model's placement to promote it.
    demand: offload::Demand,
    _placement: Arc<placement::PlacementTask>,
    _watchdog: Arc<health::Watchdog>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.manifest.name)
            .finish()
    }
}

impl Engine {
    /// Loads the model (with `settings.loader`: the TorchScript file, checksum first),
    /// places it (asking the broker when `lease` is given), warms it up, and returns
    /// once it can answer. Without a lease client the model runs on the CPU, and says so.
    pub async fn start(
        manifest: ModelManifest,
        settings: EngineSettings,
        lease: Option<LeaseClient>,
        metrics: EngineMetrics,
    ) -> Result<Self, EngineError> {
        let loader = settings.loader.clone();
        let manifest = manifest
            .with_precision(settings.precision)
            .map_err(|error| EngineError::Load(error.to_string()))?;
        let manifest = Arc::new(manifest);
        let to_load = Arc::clone(&manifest);
        let model = tokio::task::spawn_blocking(move || loader.load(&to_load))
            .await
            .map_err(|error| EngineError::Load(error.to_string()))??;

        let (state_tx, state) = watch::channel(EngineState {
            ready: false,
            placement: Target::Cpu,
            reason: "loading".into(),
            stopped: None,
        });
        let state_tx = Arc::new(state_tx);
        let (jobs, job_rx) = std::sync::mpsc::sync_channel(settings.queue_capacity);
        let (control, control_rx) = std::sync::mpsc::channel();
        let last_busy = Arc::new(AtomicU64::new(0));
        let call_started = Arc::new(AtomicU64::new(0));
        let watchdog = health::Watchdog::start(
            manifest.name.clone(),
            Arc::clone(&call_started),
            settings.stall_timeout,
            Arc::clone(&state_tx),
        );
        let profile = memory_profile::SharedProfile::default();
        let device_work_peak = worker::DeviceWorkPeak::default();
        let gpu_work_memory = work_lease::gpu_work_bytes(&manifest, &settings);
        let worker_settings = worker::WorkerSettings {
            max_batch: settings.max_batch,
            max_queue_delay: settings.max_queue_delay,
            work_memory: settings.work_memory,
            gpu_work_memory,
            cpu_fallback: settings.cpu_fallback,
            profile: Arc::clone(&profile),
            device_work_peak: Arc::clone(&device_work_peak),
        };
        let worker_metrics = metrics.clone();
        let worker_busy = Arc::clone(&last_busy);
        let worker_state = Arc::clone(&state_tx);
        let model_name = manifest.name.clone();
        std::thread::Builder::new()
            .name(format!("model-{}", manifest.name))
            .spawn(move || {
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    worker::run(
                        model,
                        job_rx,
                        control_rx,
                        worker_settings,
                        worker_metrics,
                        worker_busy,
                        call_started,
                    )
                }));
                let reason = match outcome {
                    Ok(Ok(())) => return, // every handle is gone: a normal end
                    Ok(Err(reason)) => reason,
                    Err(panic) => format!(
                        "the model's thread panicked: {}",
                        worker::panic_message(&panic)
                    ),
                };
                tracing::error!(model = %model_name, %reason, "the model's thread stopped");
                worker_state.send_modify(|state| state.stopped = Some(reason));
            })
            .map_err(|error| EngineError::Load(error.to_string()))?;

        let profile_control = control.clone();
        let demand = offload::Demand::new();
        let placing = placement::start(placement::PlacementContext {
            manifest: Arc::clone(&manifest),
            settings: settings.clone(),
            lease: lease.clone(),
            control,
            state: state_tx,
            last_busy,
            demand: demand.clone(),
            metrics: metrics.clone(),
            device_work_peak,
        });
        // Placement waits on the model's thread (moves, warmup): a thread that stops
        // or sticks meanwhile must end the start, not hang it.
        let placement = tokio::select! {
            placement = placing => placement?,
            stopped = health::stopped(manifest.name.clone(), state.clone()) => {
                return Err(stopped.into());
            }
        };
        if settings.memory_profile {
            tokio::select! {
                () = measure_profile(&manifest, &settings, &profile_control) => {}
                stopped = health::stopped(manifest.name.clone(), state.clone()) => {
                    return Err(stopped.into());
                }
            }
        }
        Ok(Self {
            jobs,
            capacity: settings.queue_capacity,
            state,
            metrics,
            manifest,
            profile,
            max_batch: settings.max_batch,
            settings,
            gpu_work_memory,
            lease,
            demand,
            _placement: Arc::new(placement),
            _watchdog: Arc::new(watchdog),
        })
    }

    /// Runs `input` (`[n, …]`, on the CPU) through the model with whatever else is
    /// queued; returns the `n` output rows, on the CPU. A full queue answers at once.
    pub async fn infer(&self, input: Tensor) -> Result<Tensor, EngineError> {
        // A stuck thread may still take jobs: refuse them rather than queue behind it.
        if let Some(reason) = &self.state.borrow().stopped {
            return Err(EngineError::NotReady(format!(
                "the model's thread has stopped: {reason}"
            )));
        }
        let row_elements = memory_profile::elements(input.size().get(1..).unwrap_or_default());
        let device_work = match self.peak_for(row_elements).await {
            Ok(peak) => worker::DeviceWork::Leased(peak),
            Err(refused) if self.settings.cpu_fallback => {
                tracing::warn!(model = %self.manifest.name, %refused, "running one input on the CPU");
                self.metrics.cpu_fallbacks.inc();
                worker::DeviceWork::CpuFallback
            }
            Err(refused) => return Err(refused.into()),
        };
        let (reply, answer) = oneshot::channel();
        let job = worker::Job {
            input,
            reply,
            enqueued: Instant::now(),
            // The worker thread enters a child of it, so the forward pass shows in
            // the caller's trace.
            span: tracing::Span::current(),
            device_work,
        };
        match self.jobs.try_send(job) {
            Ok(()) => {
                self.metrics.queue_depth.inc();
                self.demand.request();
            }
            Err(TrySendError::Full(_)) => {
                self.metrics.rejected.inc();
                return Err(EngineError::Overloaded {
                    capacity: self.capacity,
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(EngineError::NotReady(
                    "the model's thread has stopped".into(),
                ));
            }
        }
        answer
            .await
            .map_err(|_| EngineError::NotReady("the model's thread has stopped".into()))?
    }

    /// A peak lease for an input of rows of `row_elements` when the model serves from
    /// a GPU and, by its profile, one row needs more working memory than the work
    /// lease: the bytes above it, from the broker (see [`work_lease`]). Refused when
    /// the broker cannot grant them within `work_wait`.
    async fn peak_for(&self, row_elements: u64) -> Result<Option<worker::Peak>, AdmissionError> {
        let placement = self.state.borrow().placement;
        let device = match placement {
            Target::Cuda(index) | Target::SimulatedGpu(index) => index as u32,
            Target::Cpu => return Ok(None),
        };
        let (Some(profile), Some(client)) = (self.memory_profile(), &self.lease) else {
            return Ok(None);
        };
        let one_row = profile.bytes(row_elements);
        let budget = self.gpu_work_memory;
        let Some(above) = one_row.checked_sub(budget).filter(|&above| above > 0) else {
            return Ok(None);
        };
        match work_lease::acquire_peak(client, device, &self.manifest, &self.settings, above).await
        {
            Ok(lease) => {
                tracing::info!(model = %self.manifest.name, lease = %lease.id(), bytes = above, "peak lease for one large input");
                let cap = matches!(placement, Target::Cuda(_)).then(|| {
                    cuda_alloc::Hold::new(
                        format!("{}#peak-{}", self.manifest.model_key(), lease.id()),
                        device as usize,
                        above,
                    )
                });
                Ok(Some(worker::Peak {
                    bytes: above,
                    lease,
                    _cap: cap,
                }))
            }
            Err(reason) => Err(AdmissionError::PeakRefused {
                bytes: one_row,
                budget,
                reason,
            }),
        }
    }

    /// The engine's state now, and as it changes.
    pub fn state(&self) -> watch::Receiver<EngineState> {
        self.state.clone()
    }

    pub fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    pub fn metrics(&self) -> &EngineMetrics {
        &self.metrics
    }

    /// The model's measured working memory, once profiled.
    pub fn memory_profile(&self) -> Option<MemoryProfile> {
        self.profile
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Host memory the model's passes take for `rows` inputs of `row_elements` each:
    /// the largest call the worker would make for them (it runs one call at a time).
    /// Zero on a real GPU, where the passes allocate device memory, and without a
    /// profile.
    pub fn host_work_bytes(&self, rows: usize, row_elements: u64) -> u64 {
        let budget = match self.state.borrow().placement {
            Target::Cuda(_) => return 0,
            Target::SimulatedGpu(_) => Some(self.gpu_work_memory),
            Target::Cpu => self.settings.work_memory,
        };
        let Some(profile) = self.memory_profile() else {
            return 0;
        };
        let mut chunk = rows.clamp(1, self.max_batch.max(1));
        if let Some(budget) = budget {
            while chunk > 1 && profile.bytes(row_elements * chunk as u64) > budget {
                chunk -= 1;
            }
        }
        profile.bytes(row_elements * chunk as u64)
    }
}

/// Profiles the model's working memory (after warmup, on the device it was placed
/// on) and logs the fit; a failure is a warning and leaves the engine unprofiled.
async fn measure_profile(
    manifest: &ModelManifest,
    settings: &EngineSettings,
    control: &std::sync::mpsc::Sender<worker::Control>,
) {
    let warmup = manifest.warmup_shape();
    let dynamic: Vec<bool> = manifest.input.shape.iter().map(|&d| d == -1).collect();
    let shapes = memory_profile::profile_shapes(&warmup, &dynamic);
    let (done, measured) = oneshot::channel();
    if control
        .send(worker::Control::Profile { shapes, done })
        .is_err()
    {
        return;
    }
    let model = &manifest.name;
    match tokio::time::timeout(settings.warmup_timeout, measured).await {
        Ok(Ok(Ok(Some(profile)))) => tracing::info!(
            %model,
            fixed_bytes = profile.fixed as u64,
            per_element_bytes = profile.per_element,
            fit_error = profile.max_error(),
            samples = ?profile.samples,
            "measured the working memory of a forward pass"
        ),
        Ok(Ok(Ok(None))) => {
            tracing::info!(%model, "working memory not measured on this device")
        }
        Ok(Ok(Err(error))) => tracing::warn!(%model, %error, "memory profile failed"),
        Ok(Err(_)) => {}
        Err(_) => tracing::warn!(%model, "memory profile timed out"),
    }
}
