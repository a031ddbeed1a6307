//! Placement follows the lease: on the GPU while the broker grants one, on the CPU
//! otherwise, asking again with backoff; a revocation moves the model to the CPU
//! first and releases after, so the GPU memory is free when the broker counts it.
//! With `--idle-offload` an unused model does the same on its own, and comes back
//! when a request asks for it (`offload`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use plenum_lease::{AcquireError, LeaseClient, LeaseEvent, LeaseGuard, LeaseRequest};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;

use crate::metrics::Move;
use crate::offload::{self, Demand};
use crate::worker::{Control, LastBusy, Target};
use crate::{
    DeviceChoice, EngineError, EngineMetrics, EngineSettings, EngineState, ModelManifest, Precision,
};

pub(crate) struct PlacementContext {
    pub(crate) manifest: Arc<ModelManifest>,
    pub(crate) settings: EngineSettings,
    pub(crate) lease: Option<LeaseClient>,
    pub(crate) control: std::sync::mpsc::Sender<Control>,
    /// Shared with the model's thread, which reports its own end.
    pub(crate) state: Arc<watch::Sender<EngineState>>,
    pub(crate) last_busy: LastBusy,
    /// Requests as they arrive: an offloaded model waits for the next one.
    pub(crate) demand: Demand,
    /// The queue depth, for asking with a higher priority under load.
    pub(crate) metrics: EngineMetrics,
    /// The working memory passes took on a simulated GPU, reported to the broker.
    pub(crate) device_work_peak: crate::worker::DeviceWorkPeak,
}

/// Why a held lease was given up.
enum LetGo {
    /// The broker revoked it, or no longer honours it.
    Revoked,
    /// Idle past `--idle-offload`; wakes on the requests `demand` sees from now on.
    Offloaded { demand: watch::Receiver<u64> },
}

/// The background task; stops when the engine's last handle goes.
pub(crate) struct PlacementTask {
    task: Option<JoinHandle<()>>,
}

impl Drop for PlacementTask {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accelerator {
    Cuda,
    Simulated,
}

/// Whether this engine may use a GPU at all, or why not.
fn accelerator(
    device: DeviceChoice,
    has_broker: bool,
    precision: Precision,
) -> Result<Result<Accelerator, String>, EngineError> {
    let cuda = tch::Cuda::is_available();
    Ok(match (device, has_broker) {
        (DeviceChoice::Cpu, _) => Err("--device cpu".into()),
        // Whatever --device says: a quantized model cannot move to a GPU, so it never
        // holds a lease (and VRAM) it could not use.
        _ if !precision.runs_on_gpu() => Err(format!(
            "--precision {precision}: quantized kernels run on the CPU only; no GPU lease"
        )),
        (DeviceChoice::Cuda, _) if !cuda => {
            return Err(EngineError::Load(
                "--device cuda, but libtorch sees no CUDA device".into(),
            ));
        }
        (_, false) => Err("no --broker: without a lease the model stays on the CPU".into()),
        (DeviceChoice::SimGpu, true) => Ok(Accelerator::Simulated),
        (DeviceChoice::Cuda, true) => Ok(Accelerator::Cuda),
        (DeviceChoice::Auto, true) if cuda => Ok(Accelerator::Cuda),
        (DeviceChoice::Auto, true) => Err("libtorch sees no CUDA device".into()),
    })
}

struct Placer {
    ctx: PlacementContext,
    accelerator: Accelerator,
    lease: LeaseClient,
    events: broadcast::Receiver<LeaseEvent>,
    /// This process's VRAM before the current move to the GPU.
    baseline: u64,
    /// The working-memory lease held beside the weights (see [`crate::work_lease`]).
    work: Option<LeaseGuard>,
    /// When the model last arrived on the GPU: idle time counts from here at most.
    placed_at: Instant,
}

pub(crate) async fn start(ctx: PlacementContext) -> Result<PlacementTask, EngineError> {
    let choice = accelerator(
        ctx.settings.device,
        ctx.lease.is_some(),
        ctx.manifest.precision,
    )?;
    let (accelerator, lease) = match (choice, ctx.lease.clone()) {
        (Ok(accelerator), Some(lease)) => (accelerator, lease),
        (Err(reason), _) => return Ok(cpu_only(&ctx, &reason).await),
        (Ok(_), None) => return Ok(cpu_only(&ctx, "no broker").await),
    };
    let events = lease.events();
    let mut placer = Placer {
        ctx,
        accelerator,
        lease,
        events,
        baseline: 0,
        work: None,
        placed_at: Instant::now(),
    };
    let wait = placer.ctx.settings.lease_wait;
    let first = placer.try_gpu(wait).await;
    warmup(&placer.ctx).await;
    let guard = match first {
        Ok(guard) => placer.commit(guard).await,
        Err(reason) => {
            publish(&placer.ctx, Target::Cpu, &reason, false);
            None
        }
    };
    placer.ctx.state.send_modify(|state| state.ready = true);
    Ok(PlacementTask {
        task: Some(tokio::spawn(placer.run(guard))),
    })
}

/// No GPU for this engine: warm up on the CPU and serve from there.
async fn cpu_only(ctx: &PlacementContext, reason: &str) -> PlacementTask {
    tracing::info!(model = %ctx.manifest.name, %reason, "running on the CPU");
    warmup(ctx).await;
    publish(ctx, Target::Cpu, reason, true);
    PlacementTask { task: None }
}

impl Placer {
    async fn run(mut self, mut guard: Option<LeaseGuard>) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match guard.take() {
                Some(held) => match self.hold(held).await {
                    LetGo::Revoked => {
                        // Just gave memory back: let whoever needed it load first.
                        backoff = Duration::from_secs(2);
                        tokio::time::sleep(backoff).await;
                    }
                    LetGo::Offloaded { demand } => {
                        guard = self.promote_on_demand(demand).await;
                        backoff = Duration::from_millis(200);
                    }
                },
                None => match self.try_gpu(Duration::ZERO).await {
                    Ok(held) => {
                        guard = self.commit(held).await;
                        backoff = Duration::from_millis(200);
                    }
                    Err(reason) => {
                        publish(&self.ctx, Target::Cpu, &reason, true);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                },
            }
        }
    }

    /// Waits for the next request, then asks for a lease (up to `--lease-wait`) and
    /// moves the model back up. The requests are served from the CPU meanwhile. None
    /// when the broker refused: the caller keeps asking with backoff.
    async fn promote_on_demand(&mut self, mut demand: watch::Receiver<u64>) -> Option<LeaseGuard> {
        if demand.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        // The clock starts with the request that asked for the model.
        let started = Instant::now();
        let model = self.ctx.manifest.name.clone();
        match self.try_gpu(self.ctx.settings.lease_wait).await {
            Ok(held) => {
                let guard = self.commit(held).await;
                if guard.is_some() {
                    let took = started.elapsed();
                    self.ctx.metrics.observe_move(Move::Promotion, took);
                    tracing::info!(%model, ?took, "promoted back to the GPU on demand");
                }
                guard
            }
            Err(reason) => {
                tracing::info!(%model, %reason, "promotion refused; serving from the CPU");
                publish(
                    &self.ctx,
                    Target::Cpu,
                    &format!("promotion refused: {reason}"),
                    true,
                );
                None
            }
        }
    }

    /// Asks for a lease and moves the model onto its device; the lease is returned
    /// uncommitted (the caller measures after warmup).
    async fn try_gpu(&mut self, wait: Duration) -> Result<LeaseGuard, String> {
        let manifest = &self.ctx.manifest;
        let priority = offload::demand_priority(
            self.ctx.settings.priority,
            self.ctx.metrics.queue_depth.get(),
            self.ctx.settings.demand_boost_depth,
        );
        let mut request = LeaseRequest::weights(manifest.model_key(), manifest.vram_estimate_bytes)
            .priority(priority)
            .wait(wait);
        request.use_measured_estimate = true;
        let guard = match self.lease.acquire(request).await {
            Ok(guard) => guard,
            Err(AcquireError::Refused { message, .. }) => {
                return Err(format!("no lease: {message}"));
            }
            Err(error) => return Err(error.to_string()),
        };
        let target = match self.accelerator {
            Accelerator::Cuda => Target::Cuda(guard.device_index() as usize),
            Accelerator::Simulated => Target::SimulatedGpu(guard.device_index() as usize),
        };
        // What this process used on the device before the model arrived: the commit
        // reports the difference (CUDA context, other models of this process excluded).
        self.baseline = match self.accelerator {
            Accelerator::Cuda => measure_own_vram(guard.device_uuid()).unwrap_or(0),
            Accelerator::Simulated => 0,
        };
        // Until the commit, the allocator may take the weights' grant and the work
        // lease the commit asks for: the warmup, and requests served meanwhile, run
        // passes on the device before the work lease exists.
        if let Target::Cuda(device) = target {
            let work = crate::work_lease::gpu_work_bytes(&self.ctx.manifest, &self.ctx.settings);
            crate::cuda_alloc::held(
                &self.ctx.manifest.model_key(),
                device,
                guard.granted_bytes() + work,
            );
        }
        move_to(&self.ctx, target).await.map_err(|error| {
            format!("moving to {target:?} failed ({error}); staying on the CPU")
        })?;
        self.placed_at = Instant::now();
        Ok(guard)
    }

    /// Measures what the model really uses and commits it; on refusal moves back.
    async fn commit(&mut self, mut guard: LeaseGuard) -> Option<LeaseGuard> {
        let target = match self.accelerator {
            Accelerator::Cuda => Target::Cuda(guard.device_index() as usize),
            Accelerator::Simulated => Target::SimulatedGpu(guard.device_index() as usize),
        };
        let measured = match self.accelerator {
            Accelerator::Cuda => measure_own_vram(guard.device_uuid())
                .map(|used| used.saturating_sub(self.baseline).max(1))
                .unwrap_or(guard.granted_bytes()),
            // Nothing to measure: the estimate is the truth of a simulation.
            Accelerator::Simulated => guard.granted_bytes(),
        };
        let committed = guard.commit(measured).await;
        let committed = match committed {
            Ok(()) => {
                match crate::work_lease::acquire(
                    &self.lease,
                    &guard,
                    &self.ctx.manifest,
                    &self.ctx.settings,
                )
                .await
                {
                    Ok(work) => {
                        if let Target::Cuda(device) = target {
                            crate::cuda_alloc::held(
                                &self.ctx.manifest.model_key(),
                                device,
                                guard.granted_bytes() + work.granted_bytes(),
                            );
                        }
                        self.work = Some(work);
                        Ok(())
                    }
                    Err(reason) => Err(tonic::Status::resource_exhausted(reason)),
                }
            }
            Err(status) => Err(status),
        };
        match committed {
            Ok(()) => {
                publish(&self.ctx, target, "lease granted", true);
                tracing::info!(model = %self.ctx.manifest.name, lease = %guard.id(), ?target, measured, "model on the GPU");
                Some(guard)
            }
            Err(status) => {
                tracing::warn!(model = %self.ctx.manifest.name, %status, "commit or work lease refused; back to the CPU");
                let _ = move_to(&self.ctx, Target::Cpu).await;
                publish(
                    &self.ctx,
                    Target::Cpu,
                    &format!("commit refused: {}", status.message()),
                    true,
                );
                None
            }
        }
    }

    /// On a simulated GPU, tells the broker what the model's allocations there reach:
    /// its weights on the weights lease, the passes' working memory on the work lease
    /// (or on the weights lease when there is none: work no lease covers, which the
    /// broker reports as an overrun). On CUDA NVML measures the process itself.
    fn report_use(&self, weights: &LeaseGuard) {
        if self.accelerator != Accelerator::Simulated {
            return;
        }
        let work = self.ctx.device_work_peak.swap(0, Ordering::Relaxed);
        match &self.work {
            Some(work_lease) => {
                weights.report_use(weights.granted_bytes());
                work_lease.report_use(work);
            }
            None => weights.report_use(weights.granted_bytes() + work),
        }
    }

    /// Holds the lease until the broker wants it back, or until the model has been
    /// idle for `--idle-offload`; then moves to the CPU and releases.
    async fn hold(&mut self, guard: LeaseGuard) -> LetGo {
        let mut busy_check = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = busy_check.tick() => {
                    let idle = offload::idle_for(&self.ctx.last_busy, self.placed_at);
                    guard.set_busy(idle < self.ctx.settings.idle_after);
                    guard.set_last_used(Instant::now().checked_sub(idle).unwrap_or(self.placed_at));
                    self.report_use(&guard);
                    if self.ctx.settings.idle_offload.is_some_and(|limit| idle >= limit) {
                        // Requests from here on wake the promotion, even one that
                        // arrives during the move.
                        let demand = self.ctx.demand.watch();
                        let started = Instant::now();
                        match move_to(&self.ctx, Target::Cpu).await {
                            Ok(()) => return self.offloaded(guard, idle, demand, started).await,
                            Err(error) => {
                                tracing::warn!(model = %self.ctx.manifest.name, %error, "offload to the CPU failed; keeping the lease");
                                self.placed_at = Instant::now();
                            }
                        }
                    }
                }
                event = self.events.recv() => match event {
                    Ok(LeaseEvent::Revoked { lease_id, reason, .. }) if lease_id == guard.id() => {
                        tracing::info!(model = %self.ctx.manifest.name, %reason, "lease revoked: moving to the CPU, then releasing");
                        let _ = move_to(&self.ctx, Target::Cpu).await;
                        self.work = None;
                        publish(&self.ctx, Target::Cpu, "the broker revoked the lease", true);
                        if let Err(status) = guard.release().await {
                            tracing::warn!(%status, "release after revocation failed; the broker will reclaim it");
                        }
                        return LetGo::Revoked;
                    }
                    Ok(LeaseEvent::Lost { lease_id, reason }) if lease_id == guard.id() => {
                        tracing::warn!(model = %self.ctx.manifest.name, %reason, "lease lost: moving to the CPU");
                        let _ = move_to(&self.ctx, Target::Cpu).await;
                        self.work = None;
                        publish(&self.ctx, Target::Cpu, "the broker no longer honours the lease", true);
                        drop(guard);
                        return LetGo::Revoked;
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
                },
            }
        }
    }

    /// An idle model is on the CPU now: says so and gives the lease back.
    async fn offloaded(
        &mut self,
        guard: LeaseGuard,
        idle: Duration,
        demand: watch::Receiver<u64>,
        started: Instant,
    ) -> LetGo {
        let model = self.ctx.manifest.name.clone();
        if let Err(status) = guard.release().await {
            tracing::warn!(%model, %status, "release after offload failed; the broker will reclaim it");
        }
        // The working-memory lease goes with the weights: the model works on the CPU now.
        if let Some(work) = self.work.take()
            && let Err(status) = work.release().await
        {
            tracing::warn!(%model, %status, "work lease release after offload failed; the broker will reclaim it");
        }
        // Said once the lease is given back, so whoever sees it can count on the memory.
        let reason = format!("offloaded to the CPU after {idle:.1?} idle");
        publish(&self.ctx, Target::Cpu, &reason, true);
        let took = started.elapsed();
        self.ctx.metrics.observe_move(Move::Offload, took);
        tracing::info!(%model, ?idle, ?took, "idle: offloaded to the CPU and released the lease");
        LetGo::Offloaded { demand }
    }
}

async fn move_to(ctx: &PlacementContext, to: Target) -> Result<(), String> {
    let (done, moved) = oneshot::channel();
    ctx.control
        .send(Control::Move { to, done })
        .map_err(|_| "the model's thread has stopped".to_owned())?;
    let moved = moved
        .await
        .map_err(|_| "the model's thread has stopped".to_owned())?;
    if to == Target::Cpu && moved.is_ok() {
        // Off the GPU: the allocator's cap there is what the process's others hold.
        crate::cuda_alloc::released(&ctx.manifest.model_key());
    }
    moved
}

/// Runs one input through the model so the first request does not pay for lazy
/// initialisation. A failure or a timeout is a warning: the model still serves.
async fn warmup(ctx: &PlacementContext) {
    let (done, finished) = oneshot::channel();
    let shape = ctx.manifest.warmup_shape();
    if ctx
        .control
        .send(Control::Warmup {
            shape: shape.clone(),
            done,
        })
        .is_err()
    {
        return;
    }
    let model = &ctx.manifest.name;
    match tokio::time::timeout(ctx.settings.warmup_timeout, finished).await {
        Ok(Ok(Ok(took))) => tracing::info!(%model, ?shape, ?took, "warmed up"),
        Ok(Ok(Err(error))) => {
            tracing::warn!(%model, ?shape, %error, "warmup failed; serving anyway, the first request warms up");
        }
        Ok(Err(_)) => tracing::warn!(%model, "warmup abandoned: the model's thread stopped"),
        Err(_) => {
            tracing::warn!(%model, timeout = ?ctx.settings.warmup_timeout, "warmup timed out; serving anyway")
        }
    }
}

fn publish(ctx: &PlacementContext, placement: Target, reason: &str, ready: bool) {
    ctx.state.send_if_modified(|state| {
        let next = EngineState {
            ready: state.ready || ready,
            placement,
            reason: reason.to_owned(),
            stopped: state.stopped.clone(),
        };
        let changed = *state != next;
        *state = next;
        changed
    });
}

/// This process's memory on the GPU with `uuid`, as NVML sees it.
fn measure_own_vram(uuid: &str) -> Option<u64> {
    use nvml_wrapper::enums::device::UsedGpuMemory;
    let nvml = nvml_wrapper::Nvml::init().ok()?;
    let device = nvml.device_by_uuid(uuid).ok()?;
    let pid = std::process::id();
    device
        .running_compute_processes()
        .ok()?
        .into_iter()
        .find(|process| process.pid == pid)
        .and_then(|process| match process.used_gpu_memory {
            UsedGpuMemory::Used(bytes) => Some(bytes),
            UsedGpuMemory::Unavailable => None,
        })
}
