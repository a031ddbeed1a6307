//! What a model service's caller hears when the engine cannot serve a call: one
//! mapping for every model service.

use std::time::Duration;

use plenum_runtime::status::{internal, overloaded};
use tonic::Status;

use crate::{AdmissionError, EngineError};

/// The retry hint sent with a full queue: about one batch's time.
const RETRY_AFTER: Duration = Duration::from_millis(100);

/// `UNAVAILABLE` while the models load: the service answers, but not yet.
pub fn models_loading() -> Status {
    Status::unavailable("models loading; retry shortly")
}

impl EngineError {
    /// The status for `work` (e.g. `detection`) that failed with this error: a full
    /// queue or a working-memory budget busy past the wait is `RESOURCE_EXHAUSTED` with
    /// a retry hint, as are a row that ran out of memory inside the model and one
    /// whose peak lease was not granted (work larger
    /// than the whole budget gets none), a model not (or no longer)
    /// running `UNAVAILABLE`, and a failure inside the model `INTERNAL`.
    pub fn into_status(self, work: &str) -> Status {
        match self {
            Self::Overloaded { .. }
            | Self::Admission(AdmissionError::Busy { .. })
            | Self::Admission(AdmissionError::OutOfMemory { .. })
            | Self::Admission(AdmissionError::PeakRefused { .. }) => {
                overloaded(self.to_string(), RETRY_AFTER)
            }
            // Retrying cannot help work that alone exceeds the budget: no RetryInfo.
            Self::Admission(AdmissionError::TooLarge { .. }) => {
                Status::resource_exhausted(self.to_string())
            }
            Self::NotReady(_) | Self::Stopped(_) => Status::unavailable(self.to_string()),
            Self::Inference(_) | Self::Load(_) => internal(work, &self),
        }
    }
}
