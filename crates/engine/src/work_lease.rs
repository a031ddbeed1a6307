//! The working-memory lease beside the weights: on a GPU a model's passes allocate
//! activations the weights lease does not cover, so an engine with a work budget
//! (`--work-memory`) also holds a `LEASE_PURPOSE_WORK` lease of that size on the same
//! device, for as long as the model serves from it. Without one the model does not
//! serve from the GPU: the broker's books must cover the work, not only the weights.

use plenum_lease::{AcquireError, LeaseClient, LeaseGuard, LeaseRequest, Purpose};

use crate::{EngineSettings, ModelManifest};

/// The work lease for a model whose weights hold `weights`; `Ok(None)` when the
/// engine has no work budget to lease.
pub(crate) async fn acquire(
    client: &LeaseClient,
    weights: &LeaseGuard,
    manifest: &ModelManifest,
    settings: &EngineSettings,
) -> Result<Option<LeaseGuard>, String> {
    let Some(bytes) = settings.work_memory else {
        return Ok(None);
    };
    let mut request = LeaseRequest::weights(format!("{}#work", manifest.model_key()), bytes)
        .priority(settings.priority)
        .wait(settings.lease_wait);
    request.purpose = Purpose::Work;
    request.device = Some(weights.device_index());
    match client.acquire(request).await {
        Ok(guard) => Ok(Some(guard)),
        Err(AcquireError::Refused { message, .. }) => Err(format!("no work lease: {message}")),
        Err(error) => Err(format!("no work lease: {error}")),
    }
}
