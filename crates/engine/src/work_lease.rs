//! The leases beside the weights. On a GPU a model's passes allocate activations the
//! weights lease does not cover, so an engine serving from a GPU also holds:
//! - a `LEASE_PURPOSE_WORK` lease on the same device, for as long as the model serves
//!   from it: `--work-memory` bytes, or by default as much again as the weights'
//!   estimate (the manifest's). Without it the model does not serve from the GPU: the
//!   broker's books must cover the work, not only the weights. Batches are split so
//!   that each model call fits it.
//! - a short-lived `LEASE_PURPOSE_PEAK` lease for one input that alone needs more than
//!   the work lease: the bytes above it, queued at the broker with the request's
//!   `--work-wait` like any acquire, held for that one call. A peak the broker cannot
//!   grant in time refuses the request with `RESOURCE_EXHAUSTED`, naming the bytes.

use plenum_lease::{AcquireError, LeaseClient, LeaseGuard, LeaseRequest, Purpose};

use crate::{EngineSettings, ModelManifest};

/// The working memory each model call may take on a GPU: `--work-memory`, else the
/// weights' estimate.
pub(crate) fn gpu_work_bytes(manifest: &ModelManifest, settings: &EngineSettings) -> u64 {
    settings.work_memory.unwrap_or(manifest.vram_estimate_bytes)
}

/// The work lease for a model whose weights hold `weights`.
pub(crate) async fn acquire(
    client: &LeaseClient,
    weights: &LeaseGuard,
    manifest: &ModelManifest,
    settings: &EngineSettings,
) -> Result<LeaseGuard, String> {
    let bytes = gpu_work_bytes(manifest, settings);
    let mut request = LeaseRequest::weights(format!("{}#work", manifest.model_key()), bytes)
        .priority(settings.priority)
        .wait(settings.lease_wait);
    request.purpose = Purpose::Work;
    request.device = Some(weights.device_index());
    client
        .acquire(request)
        .await
        .map_err(|error| format!("no work lease: {}", refusal(error)))
}

/// A peak lease of `bytes` on `device` for one call of `manifest`'s model, waiting at
/// most `settings.work_wait` in the broker's queue.
pub(crate) async fn acquire_peak(
    client: &LeaseClient,
    device: u32,
    manifest: &ModelManifest,
    settings: &EngineSettings,
    bytes: u64,
) -> Result<LeaseGuard, String> {
    let mut request = LeaseRequest::weights(format!("{}#peak", manifest.model_key()), bytes)
        .priority(settings.priority)
        .wait(settings.work_wait);
    request.purpose = Purpose::Peak;
    request.device = Some(device);
    client.acquire(request).await.map_err(refusal)
}

fn refusal(error: AcquireError) -> String {
    match error {
        AcquireError::Refused { message, .. } => message,
        error => error.to_string(),
    }
}
