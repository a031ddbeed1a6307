//! The broker's errors, and the one place they become gRPC statuses.

use std::time::Duration;

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// Why an Acquire could not be granted, with what the caller needs to decide what
/// to do next (fall back to CPU, retry later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub requested_bytes: u64,
    /// The most any candidate device could lease right now.
    pub free_bytes: u64,
    /// What each candidate device could lease right now, by device index.
    pub free_per_device: Vec<(u32, u64)>,
    /// 1-based position the request had in the queue (0 when it never queued).
    pub queue_position: u32,
    pub retry_after: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{}", .0.reason)]
    Exhausted(Refusal),
    #[error("{0}")]
    Unauthenticated(&'static str),
}

impl BrokerError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

impl From<BrokerError> for tonic::Status {
    fn from(error: BrokerError) -> Self {
        let message = error.to_string();
        match error {
            BrokerError::InvalidArgument { field, reason } => {
                let mut details = ErrorDetails::new();
                details.add_bad_request_violation(field, reason);
                tonic::Status::with_error_details(Code::InvalidArgument, message, details)
            }
            BrokerError::NotFound(_) => tonic::Status::not_found(message),
            BrokerError::PermissionDenied(_) => tonic::Status::permission_denied(message),
            BrokerError::Unauthenticated(_) => tonic::Status::unauthenticated(message),
            BrokerError::Exhausted(refusal) => {
                let mut details = ErrorDetails::with_retry_info(Some(refusal.retry_after));
                let per_device = refusal.free_per_device.iter().map(|(device, free)| {
                    (format!("free_bytes_device_{device}"), free.to_string())
                });
                let metadata: std::collections::HashMap<String, String> = [
                    (
                        "requested_bytes".to_owned(),
                        refusal.requested_bytes.to_string(),
                    ),
                    ("free_bytes".to_owned(), refusal.free_bytes.to_string()),
                    (
                        "queue_position".to_owned(),
                        refusal.queue_position.to_string(),
                    ),
                    (
                        "retry_after_ms".to_owned(),
                        refusal.retry_after.as_millis().to_string(),
                    ),
                ]
                .into_iter()
                .chain(per_device)
                .collect();
                details.set_error_info("NOT_ENOUGH_VRAM", "plenum.broker", metadata);
                tonic::Status::with_error_details(Code::ResourceExhausted, message, details)
            }
        }
    }
}
