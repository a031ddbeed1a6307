//! The one shape of a bad-input answer every service gives: `INVALID_ARGUMENT`,
//! the message starting with the field, and a `BadRequest` detail naming it.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `INVALID_ARGUMENT` for `field` (e.g. `images[1]`, `options.classes`).
pub fn invalid_field(field: impl Into<String>, reason: impl Into<String>) -> Status {
    let (field, reason) = (field.into(), reason.into());
    let mut details = ErrorDetails::new();
    details.add_bad_request_violation(field.clone(), reason.clone());
    Status::with_error_details(Code::InvalidArgument, format!("{field}: {reason}"), details)
}
