//! What a replica says of its own health: a `grpc.health.v1.Health/Watch` stream
//! on the replica's channel, for the backend's service name, kept open for as
//! long as the replica is in the pool.

use std::time::Duration;

use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The first pause before watching again after a failed watch; doubled up to
/// [`RETRY_MAX`] while it keeps failing.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// A replica's health as the gateway last heard it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Nothing heard yet: trusted, so a fresh replica is used at once.
    Unknown,
    /// The replica serves no health service: trusted, as before health was watched.
    Unwatched,
    Serving,
    /// The replica said it takes no work (loading, or draining before it stops).
    NotServing,
    /// The watch failed: the replica cannot be reached.
    Unreachable,
}

impl Health {
    pub const ALL: [Health; 5] = [
        Health::Unknown,
        Health::Unwatched,
        Health::Serving,
        Health::NotServing,
        Health::Unreachable,
    ];

    /// Whether the balancer may choose the replica (while others are available).
    pub fn takes_calls(self) -> bool {
        matches!(self, Health::Unknown | Health::Unwatched | Health::Serving)
    }

    /// Its metric label.
    pub fn label(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Unwatched => "unwatched",
            Health::Serving => "serving",
            Health::NotServing => "not_serving",
            Health::Unreachable => "unreachable",
        }
    }

    fn from_response(response: &HealthCheckResponse) -> Self {
        match response.status() {
            ServingStatus::Serving => Health::Serving,
            ServingStatus::NotServing | ServingStatus::ServiceUnknown => Health::NotServing,
            ServingStatus::Unknown => Health::Unknown,
        }
    }
}

/// Watches `service` on `channel` until dropped, calling `report` with every
/// change of health. A failed watch is opened again after a growing pause.
pub async fn watch(channel: Channel, service: &'static str, report: impl Fn(Health)) {
    let mut client = HealthClient::new(channel);
    let mut pause = RETRY_FIRST;
    loop {
        let request = HealthCheckRequest {
            service: service.to_owned(),
        };
        match client.watch(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                while let Ok(Some(message)) = stream.message().await {
                    report(Health::from_response(&message));
                    pause = RETRY_FIRST;
                }
                // The stream ended or broke: the replica went away or is stopping.
                report(Health::Unreachable);
            }
            Err(status) if status.code() == Code::Unimplemented => {
                report(Health::Unwatched);
                return;
            }
            // The health service does not know the backend's service yet: it has
            // not started serving it.
            Err(status) if status.code() == Code::NotFound => report(Health::NotServing),
            Err(_) => report(Health::Unreachable),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_MAX);
    }
}
