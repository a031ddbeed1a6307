//! Waiting for a server to say SERVING: what starts a service (a test, a benchmark,
//! a tool) waits here until its models are loaded, since calls made before are
//! refused with UNAVAILABLE.

use std::time::Duration;

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Why a server was not seen SERVING.
#[derive(Debug, thiserror::Error)]
pub enum NotServing {
    #[error("the health watch failed: {0}")]
    Watch(#[from] tonic::Status),
    #[error("the health watch ended before SERVING")]
    Ended,
    #[error("not SERVING within {0:?}")]
    TimedOut(Duration),
}

/// Watches the server's overall health (`""`) on `channel` until it says SERVING,
/// for at most `timeout`. A server not listening yet (a process just started) is
/// asked again every 100 ms.
pub async fn wait_serving(channel: Channel, timeout: Duration) -> Result<(), NotServing> {
    let watching = async {
        let mut client = HealthClient::new(channel);
        let request = || HealthCheckRequest {
            service: String::new(),
        };
        let mut updates = loop {
            match client.watch(request()).await {
                Ok(updates) => break updates.into_inner(),
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(status) => return Err(status.into()),
            }
        };
        while let Some(update) = updates.message().await? {
            if update.status == ServingStatus::Serving as i32 {
                return Ok(());
            }
        }
        Err(NotServing::Ended)
    };
    tokio::time::timeout(timeout, watching)
        .await
        .unwrap_or(Err(NotServing::TimedOut(timeout)))
}
