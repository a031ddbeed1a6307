//! `plenum health ADDR`: a standard gRPC health check with an exit code, for
//! compose healthchecks and scripts.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// Server address: host:port or a URL.
    addr: String,
    /// The service to ask about; empty means the whole server.
    #[arg(long, default_value = "")]
    service: String,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

pub async fn run(args: HealthArgs) -> anyhow::Result<ExitCode> {
    let status = check(&args.addr, &args.service, args.timeout).await?;
    println!("{}", status.as_str_name());
    Ok(if status == ServingStatus::Serving {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Whether the server at `addr` answers SERVING within `timeout`.
pub async fn is_serving(addr: &str, timeout: Duration) -> bool {
    matches!(check(addr, "", timeout).await, Ok(ServingStatus::Serving))
}

/// Asks the server at `addr` (host:port or URL) how `service` is doing.
pub async fn check(addr: &str, service: &str, timeout: Duration) -> anyhow::Result<ServingStatus> {
    let url = crate::url(addr);
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .with_context(|| format!("`{addr}` is not an address"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .with_context(|| format!("health check of {url} failed"))?
        .into_inner();
    Ok(ServingStatus::try_from(response.status).unwrap_or(ServingStatus::Unknown))
}
