//! The inference thread: owns the [`Model`], groups queued requests into batches, and
//! changes placement only between batches, so a move never drops or fails a request.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};
use tokio::sync::oneshot;

use crate::EngineError;
use crate::admission::AdmissionError;
use crate::memory_profile::{self, MemoryProfile, Sample, SharedProfile};
use crate::metrics::EngineMetrics;
use crate::model::Model;

/// One request: an input of `[n, …]`, answered with the output rows for it.
pub(crate) struct Job {
    pub(crate) input: Tensor,
    pub(crate) reply: oneshot::Sender<Result<Tensor, EngineError>>,
    pub(crate) enqueued: Instant,
    /// The caller's span when it queued the job.
    pub(crate) span: tracing::Span,
    /// How the job's working memory on a GPU is covered.
    pub(crate) device_work: DeviceWork,
}

impl Job {
    /// A job with a peak lease or on the CPU fallback runs alone: the peak is its own,
    /// and only its rows leave the GPU.
    fn runs_alone(&self) -> bool {
        !matches!(self.device_work, DeviceWork::Leased(None))
    }
}

/// How a job's working memory is covered when the model serves from a GPU.
pub(crate) enum DeviceWork {
    /// By the work lease, plus a peak lease for an input that alone needs more (the
    /// job runs alone, allowed the work lease plus the peak; see [`crate::work_lease`]).
    Leased(Option<Peak>),
    /// The broker granted no peak for it: the job runs on the CPU, one row per call.
    CpuFallback,
}

/// Working memory above the work lease, leased from the broker for one job.
pub(crate) struct Peak {
    pub(crate) bytes: u64,
    pub(crate) lease: plenum_lease::LeaseGuard,
    /// On CUDA, the allocator's cap raised by the peak's bytes for the call.
    pub(crate) _cap: Option<crate::cuda_alloc::Hold>,
}

/// Where the module's weights live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Cpu,
    Cuda(usize),
    /// Computes on the CPU while holding a lease as if on GPU `index` (for tests and
    /// laptops with a simulated broker; see `--device sim-gpu`).
    SimulatedGpu(usize),
}

impl Target {
    fn device(self) -> Device {
        match self {
            Self::Cpu | Self::SimulatedGpu(_) => Device::Cpu,
            Self::Cuda(index) => Device::Cuda(index),
        }
    }

    pub fn is_gpu(self) -> bool {
        !matches!(self, Self::Cpu)
    }
}

pub(crate) enum Control {
    Move {
        to: Target,
        done: oneshot::Sender<Result<(), String>>,
    },
    Warmup {
        shape: Vec<i64>,
        done: oneshot::Sender<Result<Duration, String>>,
    },
    /// Measures the working memory of a pass at each shape (smallest first) and fits
    /// the engine's [`MemoryProfile`]; `Ok(None)` where it cannot be measured.
    Profile {
        shapes: Vec<Vec<i64>>,
        done: oneshot::Sender<Result<Option<MemoryProfile>, String>>,
    },
}

pub(crate) struct WorkerSettings {
    pub(crate) max_batch: usize,
    pub(crate) max_queue_delay: Duration,
    /// Most bytes one model call's working memory may take on the CPU (by the
    /// profile); a batch that would take more is run in smaller chunks, a row that
    /// alone would is refused. None: no limit.
    pub(crate) work_memory: Option<u64>,
    /// The same on a GPU: the work lease's bytes.
    pub(crate) gpu_work_memory: u64,
    /// A single row out of CUDA memory runs on the CPU instead of being refused.
    pub(crate) cpu_fallback: bool,
    pub(crate) profile: SharedProfile,
    /// The most working memory a pass on a simulated GPU took since placement last
    /// read it, by the profile: what the model would have allocated on the device.
    pub(crate) device_work_peak: DeviceWorkPeak,
}

impl WorkerSettings {
    /// The working memory one model call may take on `target`.
    pub(crate) fn work_budget(&self, target: Target) -> Option<u64> {
        match target {
            Target::Cpu => self.work_memory,
            Target::Cuda(_) | Target::SimulatedGpu(_) => Some(self.gpu_work_memory),
        }
    }
}

/// Bytes, reset by the reader (placement reports it to the broker).
pub(crate) type DeviceWorkPeak = Arc<AtomicU64>;

/// Unix millis of the last batch, read by placement to tell busy from idle.
pub(crate) type LastBusy = Arc<AtomicU64>;

/// [`monotonic_millis`] when the model call now running began, 0 while none runs:
/// the engine's watchdog reads it to tell a stuck model from a busy one.
pub(crate) type CallStarted = Arc<AtomicU64>;

/// Milliseconds on a clock that never jumps, from 1 (0 means "no call").
pub(crate) fn monotonic_millis() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Runs one call into the model with its start time published.
fn timed<T>(started: &AtomicU64, call: impl FnOnce() -> T) -> T {
    started.store(monotonic_millis(), Ordering::Relaxed);
    let result = call();
    started.store(0, Ordering::Relaxed);
    result
}

pub(crate) fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs until every engine handle is gone (`Ok`) or a panic escapes the model
/// (`Err` with its message): then the thread stops and the engine is dead.
pub(crate) fn run(
    mut model: Box<dyn Model>,
    jobs: Receiver<Job>,
    control: Receiver<Control>,
    settings: WorkerSettings,
    metrics: EngineMetrics,
    last_busy: LastBusy,
    call_started: CallStarted,
) -> Result<(), String> {
    let mut target = Target::Cpu;
    // Idle, the thread wakes this often to take placement commands.
    let idle_wake = Duration::from_millis(50);
    // Placement may finish with the thread (a CPU-only engine): then only jobs matter.
    let mut placement_gone = false;
    loop {
        while !placement_gone {
            match control.try_recv() {
                Ok(command) => handle_control(
                    model.as_mut(),
                    &mut target,
                    command,
                    &settings,
                    &metrics,
                    &call_started,
                )?,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => placement_gone = true,
            }
        }
        let first = match jobs.recv_timeout(idle_wake) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        let mut batch = vec![first];
        let mut rows = rows_of(&batch[0].input);
        let deadline = Instant::now() + settings.max_queue_delay;
        while rows < settings.max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match jobs.recv_timeout(left) {
                Ok(job) => {
                    rows += rows_of(&job.input);
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        metrics.queue_depth.sub(batch.len() as i64);
        last_busy.store(now_millis(), Ordering::Relaxed);
        let outcome = run_batch(
            model.as_mut(),
            target,
            batch,
            &settings,
            &metrics,
            &call_started,
        );
        last_busy.store(now_millis(), Ordering::Relaxed);
        outcome?;
    }
}

fn rows_of(input: &Tensor) -> usize {
    input.size().first().copied().unwrap_or(1).max(1) as usize
}

/// Calls into the model, turning a panic that escapes it into the reason the thread
/// stops.
fn guarded<T>(call: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(call))
        .map_err(|panic| format!("the model panicked: {}", panic_message(&panic)))
}

fn handle_control(
    model: &mut dyn Model,
    target: &mut Target,
    command: Control,
    settings: &WorkerSettings,
    metrics: &EngineMetrics,
    call_started: &AtomicU64,
) -> Result<(), String> {
    match command {
        Control::Move { to, done } => {
            let result = guarded(|| timed(call_started, || model.move_to(to.device())));
            if let Ok(Ok(())) = result {
                *target = to;
                metrics.set_placement(to);
            }
            let _ = done.send(result.clone().and_then(|moved| moved));
            result.map(|_| ())
        }
        Control::Warmup { shape, done } => {
            let started = Instant::now();
            let result = guarded(|| {
                let input = Tensor::f_zeros(shape.as_slice(), (Kind::Float, target.device()))
                    .map_err(|error| error.to_string())?;
                timed(call_started, || model.forward(&input)).map(|_| ())
            });
            let _ = done.send(match &result {
                Ok(Ok(())) => Ok(started.elapsed()),
                Ok(Err(error)) | Err(error) => Err(error.clone()),
            });
            result.map(|_| ())
        }
        Control::Profile { shapes, done } => {
            let result = guarded(|| profile(model, *target, &shapes, call_started));
            let answer = match &result {
                Ok(Ok(Some(profile))) => {
                    metrics.set_profile(profile);
                    *settings
                        .profile
                        .write()
                        .unwrap_or_else(|poison| poison.into_inner()) = Some(profile.clone());
                    Ok(Some(profile.clone()))
                }
                Ok(Ok(None)) => Ok(None),
                Ok(Err(error)) | Err(error) => Err(error.clone()),
            };
            let _ = done.send(answer);
            result.map(|_| ())
        }
    }
}

/// One pass per shape, its peak memory growth measured: on the CPU the process's
/// resident memory, on CUDA the caching allocator's peak (through
/// [`crate::cuda_alloc`]). `None` where the peak cannot be read.
fn profile(
    model: &mut dyn Model,
    target: Target,
    shapes: &[Vec<i64>],
    call_started: &AtomicU64,
) -> Result<Option<MemoryProfile>, String> {
    if let Target::Cuda(device) = target {
        return Ok(measure_on_cuda(model, device, shapes, call_started));
    }
    let measured = measure_samples(model, target, shapes, call_started);
    memory_profile::restore_mmap_threshold();
    measured
}

fn measure_samples(
    model: &mut dyn Model,
    target: Target,
    shapes: &[Vec<i64>],
    call_started: &AtomicU64,
) -> Result<Option<MemoryProfile>, String> {
    let mut samples = Vec::new();
    for shape in shapes {
        let input = Tensor::f_zeros(shape.as_slice(), (Kind::Float, target.device()))
            .map_err(|error| error.to_string())?;
        let grown = memory_profile::peak_growth(|| {
            timed(call_started, || model.forward(&input)).map(|_| ())
        })?;
        let Some(bytes) = grown else {
            return Ok(None);
        };
        samples.push(Sample {
            elements: memory_profile::elements(shape),
            bytes,
        });
    }
    Ok(MemoryProfile::fit(samples))
}

/// The same on CUDA from the allocator's statistics; `None` (with a warning) where
/// they cannot be read or a pass fails.
fn measure_on_cuda(
    model: &mut dyn Model,
    device: usize,
    shapes: &[Vec<i64>],
    call_started: &AtomicU64,
) -> Option<MemoryProfile> {
    let mut samples = Vec::new();
    for shape in shapes {
        let measured = Tensor::f_zeros(shape.as_slice(), (Kind::Float, Device::Cuda(device)))
            .map_err(|error| error.to_string())
            .and_then(|input| {
                crate::cuda_alloc::peak_growth(device, || {
                    timed(call_started, || model.forward(&input)).map(|_| ())
                })
            });
        match measured {
            Ok(bytes) => samples.push(Sample {
                elements: memory_profile::elements(shape),
                bytes,
            }),
            Err(error) => {
                tracing::warn!(%error, "no working-memory profile on CUDA");
                return None;
            }
        }
    }
    MemoryProfile::fit(samples)
}

/// Rows per model call for inputs of `row_elements` each: at most `max_batch`, and
/// as many as the profile says fit the work budget (plus `peak`, bytes leased for this
/// call alone). A row that alone does not fit is refused, naming its bytes. Without a
/// profile (CUDA without the allocator shim) a call that does not fit runs out of
/// memory and is halved.
pub(crate) fn chunk_rows(
    settings: &WorkerSettings,
    target: Target,
    row_elements: u64,
    peak: u64,
) -> Result<usize, EngineError> {
    let max_batch = settings.max_batch.max(1);
    let Some(budget) = settings.work_budget(target).map(|bytes| bytes + peak) else {
        return Ok(max_batch);
    };
    let profile = settings
        .profile
        .read()
        .unwrap_or_else(|poison| poison.into_inner());
    let Some(profile) = profile.as_ref() else {
        return Ok(max_batch);
    };
    let one = profile.bytes(row_elements);
    if one > budget {
        return Err(AdmissionError::TooLarge { bytes: one, budget }.into());
    }
    let fit = (1..=max_batch)
        .take_while(|&rows| profile.bytes(row_elements * rows as u64) <= budget)
        .last()
        .unwrap_or(1);
    Ok(fit)
}

/// Runs the requests of one batch: those of the same trailing shape go through the
/// model together, in chunks of at most `max_batch` rows; each caller gets its rows.
/// `Err` when the model panicked: this batch's callers are told, the rest of the queue
/// is left to the caller.
fn run_batch(
    model: &mut dyn Model,
    target: Target,
    batch: Vec<Job>,
    settings: &WorkerSettings,
    metrics: &EngineMetrics,
    call_started: &AtomicU64,
) -> Result<(), String> {
    let mut groups: Vec<(Vec<i64>, Vec<Job>)> = Vec::new();
    for job in batch {
        if job.reply.is_closed() {
            continue; // the caller left; spend nothing on it
        }
        let trailing = job.input.size().get(1..).unwrap_or_default().to_vec();
        let shared = groups
            .iter_mut()
            .find(|(shape, jobs)| *shape == trailing && !job.runs_alone() && !jobs[0].runs_alone());
        match shared {
            Some((_, jobs)) => jobs.push(job),
            None => groups.push((trailing, vec![job])),
        }
    }
    for (_, mut jobs) in groups {
        for job in &jobs {
            metrics
                .queue_wait
                .observe(job.enqueued.elapsed().as_secs_f64());
        }
        let sizes: Vec<i64> = jobs
            .iter()
            .map(|job| job.input.size().first().copied().unwrap_or(0))
            .collect();
        // One span per model call, a child of the first caller's span and linked to
        // the others batched with it: inference time shows in every caller's trace.
        let span = tracing::info_span!(
            parent: &jobs[0].span,
            "model.forward",
            rows = sizes.iter().sum::<i64>(),
            callers = jobs.len()
        );
        for job in &jobs[1..] {
            span.follows_from(&job.span);
        }
        let started = Instant::now();
        let pass = Pass {
            target,
            settings,
            metrics,
            call_started,
        };
        let outcome = span.in_scope(|| guarded(|| forward(model, &pass, &jobs)));
        metrics.inference.observe(started.elapsed().as_secs_f64());
        metrics.batch_rows.observe(sizes.iter().sum::<i64>() as f64);
        // The spans end before anyone is answered: a caller that shuts the service
        // down as soon as it has its answer must still find them in the flush on
        // the way out. Ended after the replies, they lost the race whenever this
        // thread was descheduled between the two (seen under CI load).
        drop(span);
        for job in &mut jobs {
            job.span = tracing::Span::none();
        }
        let outcome = match outcome {
            Ok(result) => result,
            Err(reason) => {
                reply_all(jobs, &EngineError::NotReady(reason.clone()));
                return Err(reason);
            }
        };
        match outcome {
            Ok(output) => match output.f_split_with_sizes(sizes.as_slice(), 0) {
                Ok(parts) => {
                    for (job, part) in jobs.into_iter().zip(parts) {
                        let _ = job.reply.send(Ok(part));
                    }
                }
                Err(error) => reply_all(jobs, &EngineError::Inference(error.to_string())),
            },
            Err(error) => reply_all(jobs, &error),
        }
    }
    Ok(())
}

/// What every model call of a batch shares.
struct Pass<'a> {
    target: Target,
    settings: &'a WorkerSettings,
    metrics: &'a EngineMetrics,
    call_started: &'a AtomicU64,
}

fn forward(model: &mut dyn Model, pass: &Pass, jobs: &[Job]) -> Result<Tensor, EngineError> {
    let Pass {
        target, settings, ..
    } = *pass;
    // One caller's input goes through as it is: a copy of a page's tiles would double
    // the request's memory.
    let input = match jobs {
        [job] => job.input.shallow_clone(),
        _ => {
            let inputs: Vec<&Tensor> = jobs.iter().map(|job| &job.input).collect();
            Tensor::f_cat(&inputs, 0).map_err(|e| EngineError::Inference(e.to_string()))?
        }
    };
    let shape = input.size();
    let rows = shape.first().copied().unwrap_or(0);
    // Only a job alone has its peak or falls back (see run_batch); a model moved off
    // the GPU since then needs neither.
    let peak = match jobs {
        [job] if target.is_gpu() => match &job.device_work {
            DeviceWork::Leased(peak) => peak.as_ref(),
            DeviceWork::CpuFallback => return on_the_cpu(model, pass, &input),
        },
        _ => None,
    };
    let max_batch = chunk_rows(
        settings,
        target,
        memory_profile::elements(shape.get(1..).unwrap_or_default()),
        peak.map_or(0, |peak| peak.bytes),
    )?;
    let mut outputs = Vec::new();
    let mut start = 0;
    while start < rows {
        let len = (max_batch as i64).min(rows - start);
        let chunk = input
            .f_narrow(0, start, len)
            .and_then(|chunk| chunk.f_to_device(target.device()))
            .map_err(|e| EngineError::Inference(e.to_string()))?;
        record_device_work(settings, target, &chunk, peak);
        outputs.push(forward_or_halve(model, pass, &chunk)?);
        start += len;
    }
    match outputs.len() {
        0 => Err(EngineError::Inference("an input without rows".into())),
        1 => Ok(outputs.pop().expect("one output")),
        _ => Tensor::f_cat(&outputs, 0).map_err(|e| EngineError::Inference(e.to_string())),
    }
}

/// One model call on `chunk`, its output on the CPU. A call that runs out of memory
/// (CUDA's caching allocator past what the device has, or the CPU allocator) is tried
/// again in two halves, down to single rows: the allocator frees its cache before it
/// reports out of memory, so smaller calls may fit where the whole did not. A single
/// row that still does not fit on a GPU runs on the CPU (with `cpu_fallback`), else
/// it is refused with `RESOURCE_EXHAUSTED`; the process, the model and the other
/// requests carry on.
fn forward_or_halve(
    model: &mut dyn Model,
    pass: &Pass,
    chunk: &Tensor,
) -> Result<Tensor, EngineError> {
    let outcome = timed(pass.call_started, || model.forward(chunk))
        .and_then(|output| output.f_to_device(Device::Cpu).map_err(|e| e.to_string()));
    let error = match outcome {
        Ok(output) => return Ok(output),
        Err(error) if is_out_of_memory(&error) => error,
        Err(error) => return Err(EngineError::Inference(error)),
    };
    if matches!(pass.target, Target::Cuda(_))
        && let Err(cache) = crate::cuda_alloc::empty_cache()
    {
        tracing::debug!(error = %cache, "could not empty the CUDA cache");
    }
    let rows = chunk.size().first().copied().unwrap_or(0);
    if rows <= 1 && pass.settings.cpu_fallback && matches!(pass.target, Target::Cuda(_)) {
        tracing::warn!(
            error = first_line(&error),
            "one row ran out of GPU memory; running it on the CPU"
        );
        pass.metrics.cpu_fallbacks.inc();
        return on_the_cpu(model, pass, chunk);
    }
    if rows <= 1 {
        return Err(AdmissionError::OutOfMemory {
            detail: first_line(&error).to_owned(),
        }
        .into());
    }
    tracing::warn!(
        rows,
        error = first_line(&error),
        "a model call ran out of memory; trying it in halves"
    );
    let half = rows / 2;
    let halves = [(0, half), (half, rows - half)]
        .into_iter()
        .map(|(start, len)| {
            let part = chunk
                .f_narrow(0, start, len)
                .map_err(|e| EngineError::Inference(e.to_string()))?;
            forward_or_halve(model, pass, &part)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Tensor::f_cat(&halves, 0).map_err(|e| EngineError::Inference(e.to_string()))
}

/// Runs `input` on the CPU one row per call (the fewest bytes at a time) for a model
/// placed on `pass.target`. A model on a real GPU moves to the CPU for it and back;
/// its leases stay held meanwhile, so its device bytes are still its own when it
/// returns. A model that cannot move back would serve no one correctly: that panics,
/// which stops the model's thread for its service to be restarted.
fn on_the_cpu(model: &mut dyn Model, pass: &Pass, input: &Tensor) -> Result<Tensor, EngineError> {
    let home = pass.target.device();
    let away = home != Device::Cpu;
    let moved = |model: &mut dyn Model, to: Device| {
        timed(pass.call_started, || model.move_to(to)).map_err(EngineError::Inference)
    };
    if away && let Err(error) = moved(model, Device::Cpu) {
        // A move may stop half way: all of the model goes back before the next batch.
        moved(model, home).unwrap_or_else(|back| {
            panic!("the model could not move back to {home:?} after a failed fallback: {back}")
        });
        return Err(error);
    }
    let rows = input.size().first().copied().unwrap_or(0);
    let outputs: Result<Vec<Tensor>, EngineError> = (0..rows)
        .map(|row| {
            let one = input
                .f_narrow(0, row, 1)
                .and_then(|one| one.f_to_device(Device::Cpu))
                .map_err(|e| EngineError::Inference(e.to_string()))?;
            timed(pass.call_started, || model.forward(&one)).map_err(EngineError::Inference)
        })
        .collect();
    if away {
        moved(model, home).unwrap_or_else(|back| {
            panic!("the model could not move back to {home:?} after a CPU fallback: {back}")
        });
    }
    let mut outputs = outputs?;
    match outputs.len() {
        0 => Err(EngineError::Inference("an input without rows".into())),
        1 => Ok(outputs.pop().expect("one output")),
        _ => Tensor::f_cat(&outputs, 0).map_err(|e| EngineError::Inference(e.to_string())),
    }
}

/// libtorch's out-of-memory errors: CUDA's ("CUDA out of memory. Tried to allocate
/// …", `OutOfMemoryError`) and the CPU allocator's ("can't allocate memory").
fn is_out_of_memory(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    error.contains("out of memory") || error.contains("can't allocate memory")
}

/// libtorch errors carry a C++ backtrace after their first line.
fn first_line(error: &str) -> &str {
    error.lines().next().unwrap_or(error)
}

/// On a simulated GPU, what the pass about to run would allocate there: the broker's
/// simulated device measures what holders report, so work outside the leases shows
/// as an overrun. Up to the work lease's bytes count on the work lease (placement
/// reports them), the rest on the call's peak lease. A real GPU is measured by NVML
/// instead.
fn record_device_work(
    settings: &WorkerSettings,
    target: Target,
    chunk: &Tensor,
    peak: Option<&Peak>,
) {
    if !matches!(target, Target::SimulatedGpu(_)) {
        return;
    }
    let profile = settings
        .profile
        .read()
        .unwrap_or_else(|poison| poison.into_inner());
    let Some(profile) = profile.as_ref() else {
        return;
    };
    let bytes = profile.bytes(memory_profile::elements(&chunk.size()));
    let on_work_lease = match peak {
        Some(peak) => {
            let above = bytes.saturating_sub(settings.gpu_work_memory);
            peak.lease.report_use(above);
            bytes - above
        }
        None => bytes,
    };
    settings
        .device_work_peak
        .fetch_max(on_work_lease, Ordering::Relaxed);
}

fn reply_all(jobs: Vec<Job>, error: &EngineError) {
    for job in jobs {
        let _ = job.reply.send(Err(error.clone()));
    }
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "the model panicked".into())
}
