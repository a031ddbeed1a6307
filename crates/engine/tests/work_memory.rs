//! The engine's working memory, with a fake model whose passes allocate (and touch) a
//! known number of bytes per input element: the profile measured at load finds them,
//! a batch that would exceed `work_memory` is run in smaller calls, and a row that
//! alone would is refused naming its bytes, before the model sees it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plenum_engine::tch::{Device, Kind, Tensor};
use plenum_engine::{
    AdmissionError, DeviceChoice, Engine, EngineError, EngineMetrics, EngineSettings, Model,
    ModelLoader, ModelManifest,
};

/// Bytes the fake's pass takes per input element.
const BYTES_PER_ELEMENT: usize = 16;
const MIB: u64 = 1 << 20;

/// Allocates and touches `BYTES_PER_ELEMENT` per input element on every pass, and
/// records the rows of each call.
struct HungryModel {
    calls: Arc<Mutex<Vec<i64>>>,
}

impl Model for HungryModel {
    fn forward(&mut self, input: &Tensor) -> Result<Tensor, String> {
        let elements = input.numel();
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

/// One test at a time: another test's passes would show in this one's measured peak.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(work_memory: Option<u64>) -> (Engine, Arc<Mutex<Vec<i64>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let for_model = Arc::clone(&calls);
    let settings = EngineSettings {
        device: DeviceChoice::Cpu,
        max_batch: 16,
        max_queue_delay: Duration::from_millis(1),
        memory_profile: true,
        work_memory,
        loader: ModelLoader::new(move |_| {
            Ok(Box::new(HungryModel {
                calls: Arc::clone(&for_model),
            }))
        }),
        ..EngineSettings::default()
    };
    let engine = Engine::start(
        manifest(),
        settings,
        None,
        EngineMetrics::unregistered("hungry"),
    )
    .await
    .expect("the fake loads");
    calls.lock().unwrap().clear();
    (engine, calls)
}

fn pages(rows: i64, side: i64) -> Tensor {
    Tensor::zeros([rows, 3, side, side], (Kind::Float, Device::Cpu))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_profile_measured_at_load_finds_the_bytes_a_pass_takes() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (engine, _) = start(None).await;
    let profile = engine.memory_profile().expect("profiled at load");
    assert_eq!(profile.samples.len(), 4, "{profile:?}");
    let expected = BYTES_PER_ELEMENT as f64;
    assert!(
        (profile.per_element - expected).abs() / expected < 0.2,
        "measured {} bytes per element, the fake takes {expected}: {profile:?}",
        profile.per_element
    );
    assert!(profile.max_error() < 0.2, "{profile:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_work_memory_runs_in_smaller_calls() {
    let _alone = ONE_AT_A_TIME.lock().await;
    // One 640² row takes ~19 MiB here: two fit in 48 MiB, three do not.
    let (engine, calls) = start(Some(48 * MIB)).await;
    let output = engine.infer(pages(5, 640)).await.expect("answered");
    assert_eq!(output.size(), [5, 2]);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.iter().sum::<i64>(), 5, "{calls:?}");
    assert!(
        calls.iter().all(|&rows| rows <= 2),
        "calls of {calls:?} rows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_over_the_work_memory_is_refused_naming_its_bytes() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (engine, calls) = start(Some(48 * MIB)).await;
    // 2048² × 3 elements × 16 bytes ≈ 192 MiB for one row.
    let refused = engine.infer(pages(1, 2048)).await.unwrap_err();
    match &refused {
        EngineError::Admission(AdmissionError::TooLarge { bytes, budget }) => {
            assert!(*bytes > 150 * MIB, "{refused}");
            assert_eq!(*budget, 48 * MIB);
        }
        other => panic!("expected a refusal by bytes, got {other:?}"),
    }
    assert!(refused.to_string().contains("bytes"));
    assert!(calls.lock().unwrap().is_empty(), "the model never saw it");
    // Smaller work still goes through.
    let small = engine
        .infer(pages(1, 320))
        .await
        .expect("a small page fits");
    assert_eq!(small.size(), [1, 2]);
}
