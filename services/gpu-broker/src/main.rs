use anyhow::Context;
use plenum_broker::config::{Config, DEFAULT_LISTEN, DEFAULT_METRICS_LISTEN};
use plenum_broker::{Broker, BrokerSettings, open_inventory};
use plenum_runtime::config::parse_with_defaults;
use plenum_runtime::{metrics, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: Config = parse_with_defaults(&[
        ("listen", DEFAULT_LISTEN),
        ("metrics_listen", DEFAULT_METRICS_LISTEN),
    ]);
    let telemetry = telemetry::init("plenum-broker", &config.telemetry)?;
    tracing::info!(?config, "starting plenum-broker");

    let shutdown = shutdown::on_signal();
    let inventory = open_inventory(config.simulate.as_deref())?;
    let broker = Broker::new(
        BrokerSettings {
            ledger: config.ledger(),
            inventory,
            token: config.token.as_ref().map(|token| token.shared()),
            poll_interval: config.poll_interval,
            drain_timeout: config.server.drain_timeout,
        },
        shutdown.clone(),
    );
    if let Some(addr) = config.server.metrics_listen {
        metrics::spawn(addr, broker.metrics_registry(), shutdown.clone())
            .await
            .with_context(|| format!("cannot bind metrics on {addr}"))?;
    }
    let listener = config.server.bind().await?;
    tracing::info!(addr = %listener.local_addr()?, "broker listening");
    broker.serve(listener).await?;
    telemetry.shutdown();
    Ok(())
}
