//! Engine metrics, registered under the owning service's prefix
//! (`plenum_<service>_…`) with the model's name as a label.

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::memory_profile::MemoryProfile;

use crate::worker::Target;

#[derive(Clone)]
pub struct EngineMetrics {
    pub(crate) queue_depth: IntGauge,
    pub(crate) rejected: IntCounter,
    pub(crate) batch_rows: Histogram,
    pub(crate) inference: Histogram,
    pub(crate) queue_wait: Histogram,
    /// Inputs a model on a GPU ran on the CPU instead (see `EngineSettings::cpu_fallback`).
    pub(crate) cpu_fallbacks: IntCounter,
    placement: IntGaugeVec,
    profile_fixed: Gauge,
    profile_per_element: Gauge,
    profile_error: Gauge,
    /// Idle offloads (move to the CPU and release) and promotions (a request to the
    /// model back on the GPU), by `move`.
    moves: HistogramVec,
}

impl EngineMetrics {
    /// Registers the metrics of model `model` of service `service` in `registry`.
    pub fn register(
        registry: &Registry,
        service: &str,
        model: &str,
    ) -> Result<Self, prometheus::Error> {
        let labelled = |name: &str, help: &str| {
            Opts::new(format!("plenum_{service}_{name}"), help).const_label("model", model)
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(
                HistogramOpts::new(format!("plenum_{service}_{name}"), help)
                    .const_label("model", model)
                    .buckets(buckets),
            )
        };
        let metrics = Self {
            queue_depth: IntGauge::with_opts(labelled(
                "queue_depth",
                "Requests waiting for the model",
            ))?,
            rejected: IntCounter::with_opts(labelled(
                "queue_rejected_total",
                "Requests refused because the queue was full",
            ))?,
            batch_rows: histogram(
                "batch_rows",
                "Rows (images or crops) per model call",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
            )?,
            inference: histogram(
                "inference_seconds",
                "Time in the model per batch",
                prometheus::exponential_buckets(0.001, 2.0, 14)?,
            )?,
            queue_wait: histogram(
                "queue_wait_seconds",
                "Time a request waited for its batch",
                prometheus::exponential_buckets(0.0005, 2.0, 14)?,
            )?,
            cpu_fallbacks: IntCounter::with_opts(labelled(
                "cpu_fallbacks_total",
                "Inputs the GPU could not take (no peak lease, out of memory) run on the CPU",
            ))?,
            placement: IntGaugeVec::new(
                labelled("placement", "1 for where the model runs now"),
                &["placement"],
            )?,
            profile_fixed: Gauge::with_opts(labelled(
                "work_memory_fixed_bytes",
                "Measured working memory of a forward pass: the part every pass takes",
            ))?,
            profile_per_element: Gauge::with_opts(labelled(
                "work_memory_per_element_bytes",
                "Measured working memory of a forward pass: bytes per input element",
            ))?,
            profile_error: Gauge::with_opts(labelled(
                "work_memory_fit_error_ratio",
                "Largest relative error of the working-memory fit at the measured sizes",
            ))?,
            moves: HistogramVec::new(
                HistogramOpts::new(
                    format!("plenum_{service}_offload_move_seconds"),
                    "Idle offloads to the CPU and promotions back to the GPU, by move",
                )
                .const_label("model", model)
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 16)?),
                &["move"],
            )?,
        };
        registry.register(Box::new(metrics.queue_depth.clone()))?;
        registry.register(Box::new(metrics.rejected.clone()))?;
        registry.register(Box::new(metrics.batch_rows.clone()))?;
        registry.register(Box::new(metrics.inference.clone()))?;
        registry.register(Box::new(metrics.queue_wait.clone()))?;
        registry.register(Box::new(metrics.cpu_fallbacks.clone()))?;
        registry.register(Box::new(metrics.placement.clone()))?;
        registry.register(Box::new(metrics.profile_fixed.clone()))?;
        registry.register(Box::new(metrics.profile_per_element.clone()))?;
        registry.register(Box::new(metrics.profile_error.clone()))?;
        registry.register(Box::new(metrics.moves.clone()))?;
        metrics.set_placement(Target::Cpu);
        Ok(metrics)
    }

    /// Metrics that go nowhere, for engines nobody scrapes (tests, tools).
    pub fn unregistered(model: &str) -> Self {
        Self::register(&Registry::new(), "engine", model).expect("fresh registry")
    }

    pub(crate) fn set_placement(&self, target: Target) {
        let (now, other) = if target.is_gpu() {
            ("gpu", "cpu")
        } else {
            ("cpu", "gpu")
        };
        self.placement.with_label_values(&[now]).set(1);
        self.placement.with_label_values(&[other]).set(0);
    }

    pub(crate) fn set_profile(&self, profile: &MemoryProfile) {
        self.profile_fixed.set(profile.fixed);
        self.profile_per_element.set(profile.per_element);
        self.profile_error.set(profile.max_error());
    }

    pub(crate) fn observe_move(&self, kind: Move, took: std::time::Duration) {
        self.moves
            .with_label_values(&[kind.label()])
            .observe(took.as_secs_f64());
    }

    /// How many moves of `kind` so far, and their total seconds (for benchmarks).
    pub fn moves(&self, kind: Move) -> (u64, f64) {
        let histogram = self.moves.with_label_values(&[kind.label()]);
        (histogram.get_sample_count(), histogram.get_sample_sum())
    }

    /// Inputs run on the CPU because the GPU could not take them.
    pub fn cpu_fallbacks(&self) -> u64 {
        self.cpu_fallbacks.get()
    }

    /// Model calls so far, and rows through them (for tests and benchmarks).
    pub fn batches(&self) -> (u64, f64) {
        (
            self.batch_rows.get_sample_count(),
            self.batch_rows.get_sample_sum(),
        )
    }
}

/// A move the engine makes on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// Idle: to the CPU, then the lease released.
    Offload,
    /// From the request that asked for an offloaded model to the model on the GPU.
    Promotion,
}

impl Move {
    fn label(self) -> &'static str {
        match self {
            Self::Offload => "offload",
            Self::Promotion => "promotion",
        }
    }
}
