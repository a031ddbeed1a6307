//! What the engine does when its model fails, with a fake model (no model file): an
//! error fails one batch; a panic or a call that never returns stops the engine, and
//! the engine says so.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use plenum_engine::tch::{Device, Kind, Tensor};
use plenum_engine::{
    AdmissionError, DeviceChoice, Engine, EngineError, EngineMetrics, EngineSettings, Model,
    ModelLoader, ModelManifest, first_stopped,
};

/// Answers `[n, 2]`, each row's first input value twice; fails or panics on the next
/// forward, blocks while `hang` is set, or runs out of memory on calls of more than
/// `out_of_memory_from` rows or more, when told.
struct FakeModel {
    orders: Arc<Orders>,
}

#[derive(Default)]
struct Orders {
    fail_next: AtomicBool,
    panic_next: AtomicBool,
    hang: AtomicBool,
    /// 0: never.
    out_of_memory_from: AtomicI64,
    /// Rows of each call.
    calls: Mutex<Vec<i64>>,
}

impl Model for FakeModel {
    fn forward(&mut self, input: &Tensor) -> Result<Tensor, String> {
        if self.orders.panic_next.swap(false, Ordering::SeqCst) {
            panic!("the fake model was told to panic");
        }
        while self.orders.hang.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.orders.fail_next.swap(false, Ordering::SeqCst) {
            return Err("the fake model was told to fail".into());
        }
        let rows = input.size()[0];
        self.orders.calls.lock().unwrap().push(rows);
        let limit = self.orders.out_of_memory_from.load(Ordering::SeqCst);
        if limit > 0 && rows >= limit {
            // libtorch's words, with the C++ backtrace that follows them.
            return Err(
                "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.93 GiB \
                 total capacity)\nException raised from malloc at CUDACachingAllocator.cpp"
                    .into(),
            );
        }
        Ok(input.reshape([rows, -1]).narrow(1, 0, 1).repeat([1, 2]))
    }

    fn move_to(&mut self, _device: Device) -> Result<(), String> {
        Ok(())
    }
}

/// Any manifest will do: the fake ignores its file.
fn manifest() -> ModelManifest {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/detector/test-2class.toml");
    ModelManifest::load(&path).expect("committed manifest")
}

async fn start_fake(stall_timeout: Duration) -> (Engine, Arc<Orders>) {
    let orders = Arc::new(Orders::default());
    let for_model = Arc::clone(&orders);
    let settings = EngineSettings {
        device: DeviceChoice::Cpu,
        max_queue_delay: Duration::from_millis(1),
        stall_timeout,
        loader: ModelLoader::new(move |_| {
            Ok(Box::new(FakeModel {
                orders: Arc::clone(&for_model),
            }))
        }),
        ..EngineSettings::default()
    };
    let engine = Engine::start(
        manifest(),
        settings,
        None,
        EngineMetrics::unregistered("fake"),
    )
    .await
    .expect("the fake loads");
    (engine, orders)
}

fn input() -> Tensor {
    Tensor::zeros([3, 3, 32, 32], (Kind::Float, Device::Cpu))
}

#[tokio::test]
async fn a_model_error_fails_that_batch_and_the_engine_keeps_serving() {
    let (engine, orders) = start_fake(Duration::from_secs(300)).await;
    orders.fail_next.store(true, Ordering::SeqCst);
    match engine.infer(input()).await {
        Err(EngineError::Inference(message)) => assert!(message.contains("told to fail")),
        other => panic!("expected an inference error, got {other:?}"),
    }
    let output = engine.infer(input()).await.expect("the next batch runs");
    assert_eq!(output.size(), [3, 2]);
    assert_eq!(engine.state().borrow().stopped, None);
}

#[tokio::test]
async fn a_panic_in_the_model_stops_its_thread_and_the_engine_reports_it() {
    let (engine, orders) = start_fake(Duration::from_secs(300)).await;
    let before = engine
        .infer(input())
        .await
        .expect("serves before the panic");
    assert_eq!(before.size(), [3, 2]);
    assert_eq!(engine.state().borrow().stopped, None);

    orders.panic_next.store(true, Ordering::SeqCst);
    match engine.infer(input()).await {
        Err(EngineError::NotReady(message)) => assert!(message.contains("told to panic")),
        other => panic!("the batch that panicked should say why, got {other:?}"),
    }
    let stopped = tokio::time::timeout(
        Duration::from_secs(10),
        first_stopped(std::slice::from_ref(&engine)),
    )
    .await
    .expect("the engine reports that its thread stopped");
    assert_eq!(stopped.model, "test-2class");
    assert!(
        stopped.reason.contains("told to panic"),
        "{}",
        stopped.reason
    );
    assert!(engine.state().borrow().stopped.is_some());
    // Nothing answers any more, and nothing hangs.
    assert!(matches!(
        engine.infer(input()).await,
        Err(EngineError::NotReady(_))
    ));
}

#[tokio::test]
async fn a_model_call_that_never_returns_stops_the_engine_and_later_calls_are_refused() {
    let (engine, orders) = start_fake(Duration::from_millis(50)).await;
    let before = engine
        .infer(input())
        .await
        .expect("serves before the stall");
    assert_eq!(before.size(), [3, 2]);

    orders.hang.store(true, Ordering::SeqCst);
    let stuck = tokio::spawn({
        let engine = engine.clone();
        async move { engine.infer(input()).await }
    });
    let stopped = tokio::time::timeout(
        Duration::from_secs(10),
        first_stopped(std::slice::from_ref(&engine)),
    )
    .await
    .expect("the watchdog reports the stuck thread");
    assert!(stopped.reason.contains("stuck"), "{}", stopped.reason);
    // Refused at once, not queued behind the stuck call.
    match engine.infer(input()).await {
        Err(EngineError::NotReady(message)) => assert!(message.contains("stuck"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    orders.hang.store(false, Ordering::SeqCst);
    let _ = stuck.await;
}

/// `rows` rows of 3×4×4, row `i` filled with `i`.
fn numbered(rows: i64) -> Tensor {
    Tensor::arange(rows, (Kind::Float, Device::Cpu))
        .reshape([rows, 1, 1, 1])
        .repeat([1, 3, 4, 4])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_runs_out_of_memory_is_run_again_in_halves_in_order() {
    let (engine, orders) = start_fake(Duration::from_secs(60)).await;
    orders.calls.lock().unwrap().clear();
    orders.out_of_memory_from.store(3, Ordering::SeqCst);
    let output = engine.infer(numbered(5)).await.expect("answered in halves");
    let firsts: Vec<f64> = (0..5).map(|row| output.double_value(&[row, 0])).collect();
    assert_eq!(
        firsts,
        [0.0, 1.0, 2.0, 3.0, 4.0],
        "rows back in their order"
    );
    assert_eq!(
        *orders.calls.lock().unwrap(),
        [5, 2, 3, 1, 2],
        "5 failed, then 2 and 3; 3 failed, then 1 and 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_alone_runs_out_of_memory_is_refused_with_a_retry_hint_and_the_engine_serves_on()
{
    let (engine, orders) = start_fake(Duration::from_secs(60)).await;
    orders.calls.lock().unwrap().clear();
    orders.out_of_memory_from.store(1, Ordering::SeqCst);
    let refused = engine.infer(numbered(2)).await.unwrap_err();
    assert!(
        matches!(
            refused,
            EngineError::Admission(AdmissionError::OutOfMemory { .. })
        ),
        "{refused:?}"
    );
    assert_eq!(
        *orders.calls.lock().unwrap(),
        [2, 1],
        "halved once, then refused"
    );
    let message = refused.to_string();
    assert!(
        message.contains("CUDA out of memory") && !message.contains("Exception raised"),
        "names the error without its backtrace: {message}"
    );
    let status = refused.into_status("detection");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        !status.details().is_empty(),
        "memory others hold may free up: a retry hint"
    );

    orders.out_of_memory_from.store(0, Ordering::SeqCst);
    let output = engine
        .infer(numbered(2))
        .await
        .expect("the engine serves on");
    assert_eq!(output.size(), [2, 2]);
}
