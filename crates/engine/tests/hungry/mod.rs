//! A fake model whose passes allocate (and touch) a known number of bytes per input
//! element, for the working-memory tests.
//!
//! Each of those tests is its own test binary, so its own process: the profile
//! measures the whole process's resident memory, and an engine from another test
//! (its model thread is detached and winds down on its own time) freeing a page batch
//! mid-pass would hide the growth being measured.

// Each binary uses part of this module.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use plenum_lease::{LeaseClient, LeaseClientConfig};

use plenum_engine::tch::{Device, Kind, Tensor};
use plenum_engine::{
    DeviceChoice, Engine, EngineMetrics, EngineSettings, Model, ModelLoader, ModelManifest, Target,
};

/// Bytes the fake's pass takes per input element. Large enough that the smallest
/// profiled pass takes megabytes: the kernel updates a process's RSS counters in
/// per-thread batches, so a figure read from /proc may lag by a few hundred KiB.
pub const BYTES_PER_ELEMENT: usize = 64;
pub const MIB: u64 = 1 << 20;

/// Holds passes over more than `over_elements` input elements until the test lets
/// them go: one `()` on `entered` as such a pass starts, then it waits for one on
/// `release`.
pub struct Gate {
    pub over_elements: usize,
    pub entered: mpsc::Sender<()>,
    pub release: Mutex<mpsc::Receiver<()>>,
}

/// Allocates and touches `BYTES_PER_ELEMENT` per input element on every pass, and
/// records the rows of each call.
struct HungryModel {
    calls: Arc<Mutex<Vec<i64>>>,
    gate: Option<Arc<Gate>>,
}

impl Model for HungryModel {
    fn forward(&mut self, input: &Tensor) -> Result<Tensor, String> {
        let elements = input.numel();
        if let Some(gate) = self
            .gate
            .as_ref()
            .filter(|gate| elements > gate.over_elements)
        {
            let _ = gate.entered.send(());
            let _ = gate.release.lock().unwrap().recv();
        }
        let scratch = vec![1u8; elements * BYTES_PER_ELEMENT];
        std::hint::black_box(&scratch);
        let rows = input.size()[0];
        self.calls.lock().unwrap().push(rows);
        Ok(Tensor::zeros([rows, 2], (Kind::Float, Device::Cpu)))
    }

    fn move_to(&mut self, _device: Device) -> Result<(), String> {
        Ok(())
    }
}

/// A 640-px model with dynamic sides; the fake ignores its file.
fn manifest() -> ModelManifest {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/detector/test-2class.toml");
    ModelManifest::load(&path).expect("committed manifest")
}

/// An engine over the fake on the CPU, profiled at load, and the rows of each model
/// call after the profile's passes.
pub async fn start(work_memory: Option<u64>) -> (Engine, Arc<Mutex<Vec<i64>>>) {
    launch(DeviceChoice::Cpu, work_memory, None, None, true).await
}

/// The work lease the engine on a simulated GPU asks for.
pub const GPU_WORK: u64 = 192 * MIB;

/// The same on the simulated GPU of the broker at `broker_url`, with a [`GPU_WORK`]
/// work lease, its passes held by `gate`, and an input the GPU cannot take run on the
/// CPU or not (`cpu_fallback`). Panics unless the engine was placed on that GPU.
pub async fn on_the_simulated_gpu(
    broker_url: &str,
    gate: Option<Arc<Gate>>,
    cpu_fallback: bool,
) -> (Engine, Arc<Mutex<Vec<i64>>>) {
    let lease = LeaseClient::connect(LeaseClientConfig::new(broker_url.to_owned(), "hungry"))
        .expect("a lease client");
    let (engine, calls) = launch(
        DeviceChoice::SimGpu,
        Some(GPU_WORK),
        Some(lease),
        gate,
        cpu_fallback,
    )
    .await;
    let state = engine.state().borrow().clone();
    assert_eq!(state.placement, Target::SimulatedGpu(0), "{}", state.reason);
    (engine, calls)
}

async fn launch(
    device: DeviceChoice,
    work_memory: Option<u64>,
    lease: Option<LeaseClient>,
    gate: Option<Arc<Gate>>,
    cpu_fallback: bool,
) -> (Engine, Arc<Mutex<Vec<i64>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let for_model = Arc::clone(&calls);
    let settings = EngineSettings {
        device,
        max_batch: 16,
        max_queue_delay: Duration::from_millis(1),
        memory_profile: true,
        work_memory,
        work_wait: Duration::from_millis(300),
        cpu_fallback,
        loader: ModelLoader::new(move |_| {
            Ok(Box::new(HungryModel {
                calls: Arc::clone(&for_model),
                gate: gate.clone(),
            }))
        }),
        ..EngineSettings::default()
    };
    let engine = Engine::start(
        manifest(),
        settings,
        lease,
        EngineMetrics::unregistered("hungry"),
    )
    .await
    .expect("the fake loads");
    calls.lock().unwrap().clear();
    (engine, calls)
}

/// `rows` blank pages of `side`² pixels.
pub fn pages(rows: i64, side: i64) -> Tensor {
    Tensor::zeros([rows, 3, side, side], (Kind::Float, Device::Cpu))
}
