//! When a model's thread stops, its service cannot answer again: it says NOT_SERVING
//! and exits with [`ModelStopped::EXIT_CODE`] so that its supervisor (compose
//! `restart:`, Kubernetes) starts a fresh process. Restarting the thread in place
//! would reload the model beside a possibly broken CUDA context; a new process is
//! the one recovery that is always clean.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::worker::monotonic_millis;
use crate::{Engine, EngineState};

/// A model's thread stopped for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the model `{model}` stopped: {reason}")]
pub struct ModelStopped {
    pub model: String,
    pub reason: String,
}

impl ModelStopped {
    /// What a model service exits with after a model stopped: `EX_TEMPFAIL` of
    /// sysexits.h, "try again later", so a supervisor restarts it.
    pub const EXIT_CODE: i32 = 75;
}

/// What a model service's `main` returns: a model that stopped ends the process with
/// [`ModelStopped::EXIT_CODE`] (after the service drained and said NOT_SERVING), so its
/// supervisor restarts it; any other outcome is returned as is.
pub fn exit_if_stopped(outcome: anyhow::Result<()>) -> anyhow::Result<()> {
    match outcome {
        Err(error) => match error.downcast_ref::<ModelStopped>() {
            Some(stopped) => {
                tracing::error!(%stopped, code = ModelStopped::EXIT_CODE, "exiting for a restart");
                eprintln!(
                    "{stopped}; exiting with {} for a restart",
                    ModelStopped::EXIT_CODE
                );
                exit_now(ModelStopped::EXIT_CODE)
            }
            None => Err(error),
        },
        ok => ok,
    }
}

/// Ends the process at once, without running atexit handlers or static destructors:
/// the stopped model's thread may still be inside libtorch, and `exit()` tearing down
/// libtorch's statics under it crashes the process (SIGSEGV instead of the code).
#[allow(unsafe_code)]
fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` takes no pointers and is async-signal-safe; it only ends the
    // process, which is what every caller wants.
    unsafe { libc::_exit(code) }
}

/// The first of `engines` whose thread has stopped already, if any.
pub fn stopped_now(engines: &[Engine]) -> Option<ModelStopped> {
    engines.iter().find_map(|engine| {
        let reason = engine.state().borrow().stopped.clone()?;
        Some(ModelStopped {
            model: engine.manifest().name.clone(),
            reason,
        })
    })
}

/// Resolves with the first of `engines` whose thread stops; never, while none does.
pub async fn first_stopped(engines: &[Engine]) -> ModelStopped {
    let mut waiting = JoinSet::new();
    for engine in engines {
        // Receivers only: these tasks must not keep a dropped engine's thread alive.
        waiting.spawn(stopped(engine.manifest().name.clone(), engine.state()));
    }
    match waiting.join_next().await {
        Some(Ok(stopped)) => stopped,
        // No engines, or a task cancelled by the runtime's shutdown.
        _ => std::future::pending().await,
    }
}

/// Resolves when the engine whose state this is has stopped; never, if it ends
/// (its handles dropped) without stopping.
pub(crate) async fn stopped(
    model: String,
    mut state: watch::Receiver<EngineState>,
) -> ModelStopped {
    let reason = state
        .wait_for(|state| state.stopped.is_some())
        .await
        .map(|state| state.stopped.clone().unwrap_or_default());
    match reason {
        Ok(reason) => ModelStopped { model, reason },
        Err(_) => std::future::pending().await,
    }
}

/// Marks the engine stopped when one model call runs past the stall timeout: a stuck
/// CUDA kernel or a deadlock would otherwise hold every request while health said
/// SERVING. Its task ends with the engine.
pub(crate) struct Watchdog {
    task: JoinHandle<()>,
}

impl Watchdog {
    pub(crate) fn start(
        model: String,
        call_started: Arc<AtomicU64>,
        stall_timeout: Duration,
        state: Arc<watch::Sender<EngineState>>,
    ) -> Self {
        let every = (stall_timeout / 4).clamp(Duration::from_millis(1), Duration::from_secs(1));
        let limit = stall_timeout.as_millis() as u64;
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if state.borrow().stopped.is_some() {
                    return;
                }
                let started = call_started.load(Ordering::Relaxed);
                if started != 0 && monotonic_millis().saturating_sub(started) > limit {
                    let reason = format!(
                        "a model call has run for longer than the stall timeout ({stall_timeout:?}): the model's thread is stuck"
                    );
                    tracing::error!(%model, %reason, "the model's thread stopped");
                    state.send_modify(|state| state.stopped = Some(reason));
                    return;
                }
            }
        });
        Self { task }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.task.abort();
    }
}
