//! `plenum`: the operator's command line.
#![forbid(unsafe_code)]

mod analyze;
mod annotate;
mod broker;
mod health;
mod table;
mod up;

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
    /// Find the symbols on drawings and read their tags, through the gateway.
    Analyze(analyze::AnalyzeArgs),
    /// Start broker, detector, OCR and gateway on this machine; Ctrl-C stops them.
    Up(up::UpArgs),
}

/// `host:port` or a URL, as a URL.
pub fn url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
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
        Command::Analyze(args) => analyze::run(args).await,
        Command::Up(args) => up::run(args, plenum_runtime::shutdown::on_signal()).await,
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
