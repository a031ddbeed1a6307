//! `plenum`: the operator's command line.
#![forbid(unsafe_code)]

mod broker;
mod health;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use plenum_runtime::config::BrokerClientArgs;

/// plenum: talk to a running Plenum stack.
#[derive(Debug, Parser)]
#[command(name = "plenum", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The GPU broker: status, live view, leases by hand.
    Broker {
        #[command(flatten)]
        connection: BrokerClientArgs,
        #[command(subcommand)]
        command: broker::BrokerCommand,
    },
    /// Exit 0 when the gRPC server at ADDR reports SERVING (for healthchecks).
    Health(health::HealthArgs),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Broker {
            connection,
            command,
        } => broker::run(connection, command).await,
        Command::Health(args) => health::run(args).await,
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
