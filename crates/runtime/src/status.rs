//! The shapes of the statuses every service gives: bad input (`INVALID_ARGUMENT`,
//! the message starting with the field, and a `BadRequest` detail naming it),
//! overload (`RESOURCE_EXHAUSTED` with a retry hint), and an internal failure
//! (logged in full, told to the caller in one line).

use std::fmt::Display;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `INVALID_ARGUMENT` for `field` (e.g. `images[1]`, `options.classes`).
pub fn invalid_field(field: impl Into<String>, reason: impl Into<String>) -> Status {
    let (field, reason) = (field.into(), reason.into());
    let mut details = ErrorDetails::new();
    details.add_bad_request_violation(field.clone(), reason.clone());
    Status::with_error_details(Code::InvalidArgument, format!("{field}: {reason}"), details)
}

/// `RESOURCE_EXHAUSTED` with a `RetryInfo` detail: try again after `retry_after`.
pub fn overloaded(message: impl Into<String>, retry_after: Duration) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(retry_after)),
    )
}

/// `INTERNAL` for `work` (e.g. `detection`) that failed with `error`: the error
/// goes to the log, where an operator can read it, not to the caller.
pub fn internal(work: &str, error: &dyn Display) -> Status {
    tracing::error!(%error, "{work} failed");
    Status::internal(format!(
        "{work} failed; the details are in the service's log"
    ))
}
