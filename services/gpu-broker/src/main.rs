use plenum_broker::config::{Config, SERVICE};
use plenum_broker::{Broker, BrokerSettings, open_inventory};
use plenum_runtime::service::{self, Started};

fn main() -> anyhow::Result<()> {
    service::main(&SERVICE, |started: Started<Config>| async move {
        let config = &started.config;
        let inventory = open_inventory(config.simulate.as_deref())?;
        let broker = Broker::with_registry(
            BrokerSettings {
                ledger: config.ledger(),
                inventory,
                token: config.token.as_ref().map(|token| token.shared()),
                poll_interval: config.poll_interval,
                drain_timeout: config.server.drain_timeout,
            },
            started.shutdown,
            &started.registry,
        );
        broker.serve(started.listener).await?;
        Ok(())
    })
}
