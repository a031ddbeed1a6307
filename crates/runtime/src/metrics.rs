//! Prometheus text on `GET /metrics`, on its own HTTP port so scrapes never
//! compete with gRPC traffic for the server's concurrency limits.

use std::net::SocketAddr;

use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `registry` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move { render(&registry) }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Binds `addr` and serves metrics in the background; returns the bound address.
pub async fn spawn(
    addr: SocketAddr,
    registry: Registry,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = serve(listener, registry, shutdown).await {
            tracing::error!(%error, "metrics endpoint stopped");
        }
    });
    tracing::info!(addr = %local, "metrics on http://{local}/metrics");
    Ok(local)
}

/// The registry in Prometheus text exposition format, followed by the process-wide
/// default registry (the per-RPC series of `grpc_metrics`).
pub fn render(registry: &Registry) -> String {
    let mut families = registry.gather();
    families.extend(prometheus::gather());
    let mut buffer = Vec::new();
    if let Err(error) = TextEncoder::new().encode(&families, &mut buffer) {
        tracing::error!(%error, "cannot encode metrics");
    }
    String::from_utf8(buffer).unwrap_or_default()
}
