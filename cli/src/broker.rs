//! `plenum broker …`: read the broker's books, watch them change, and take a lease
//! by hand (for demos and for testing what a holder's death does).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use plenum_lease::{LeaseClient, LeaseClientConfig, LeaseRequest, Priority};
use plenum_proto::broker::v1 as pb;
use plenum_proto::broker::v1::broker_client::BrokerClient;
use plenum_runtime::bytes::{format_bytes, parse_bytes};
use plenum_runtime::config::BrokerClientArgs;
use tokio_stream::StreamExt;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;

use crate::table;

const DEFAULT_BROKER: &str = "http://127.0.0.1:7001";

#[derive(Debug, clap::Subcommand)]
pub enum BrokerCommand {
    /// Devices, leases, queue and sessions, now.
    Status {
        /// Machine-readable JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// The status table, redrawn on every change (Ctrl-C to stop).
    Watch {
        /// One JSON document per line instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Take a lease, hold it, release it: what a model service does, by hand.
    Lease {
        /// Bytes to lease, e.g. 2GiB.
        #[arg(long, value_parser = parse_bytes)]
        bytes: u64,
        /// The model key the broker remembers measured sizes by.
        #[arg(long, default_value = "manual")]
        model: String,
        /// low, normal or high.
        #[arg(long, value_parser = parse_priority, default_value = "normal")]
        priority: Priority,
        /// How long to wait in the broker's queue.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        wait: Duration,
        /// Report this many bytes as measured after "loading".
        #[arg(long, value_parser = parse_bytes)]
        commit: Option<u64>,
        /// How long to hold the lease before releasing it; "forever" holds until killed.
        #[arg(long, default_value = "0s")]
        hold: String,
    },
}

fn parse_priority(text: &str) -> Result<Priority, String> {
    match text.to_ascii_lowercase().as_str() {
        "low" => Ok(Priority::Low),
        "normal" => Ok(Priority::Normal),
        "high" => Ok(Priority::High),
        other => Err(format!("unknown priority `{other}` (low, normal, high)")),
    }
}

pub async fn run(connection: BrokerClientArgs, command: BrokerCommand) -> anyhow::Result<ExitCode> {
    let url = connection
        .broker
        .clone()
        .unwrap_or_else(|| DEFAULT_BROKER.to_owned());
    let token = connection.token.as_ref().map(|token| token.shared());
    match command {
        BrokerCommand::Status { json } => {
            let status = client(&url, token)
                .await?
                .status(pb::StatusRequest {})
                .await?
                .into_inner();
            print_status(&status, json)?;
        }
        BrokerCommand::Watch { json } => {
            let mut updates = client(&url, token)
                .await?
                .watch_status(pb::WatchStatusRequest { interval_ms: 1000 })
                .await?
                .into_inner();
            while let Some(status) = updates.next().await {
                let status = status?;
                if !json {
                    print!("\x1b[2J\x1b[H"); // clear the screen for the next frame
                }
                print_status(&status, json)?;
            }
        }
        BrokerCommand::Lease {
            bytes,
            model,
            priority,
            wait,
            commit,
            hold,
        } => hold_lease(&url, token, bytes, model, priority, wait, commit, &hold).await?,
    }
    Ok(ExitCode::SUCCESS)
}

type Client = BrokerClient<InterceptedService<Channel, plenum_lease::Authorize>>;

async fn client(url: &str, token: Option<Arc<str>>) -> anyhow::Result<Client> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("`{url}` is not a URL"))?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("cannot reach the broker at {url}"))?;
    Ok(BrokerClient::with_interceptor(
        channel,
        plenum_lease::Authorize::new(token),
    ))
}

#[allow(clippy::too_many_arguments)]
async fn hold_lease(
    url: &str,
    token: Option<Arc<str>>,
    bytes: u64,
    model: String,
    priority: Priority,
    wait: Duration,
    commit: Option<u64>,
    hold: &str,
) -> anyhow::Result<()> {
    let hold = match hold {
        "forever" => None,
        text => Some(humantime::parse_duration(text).with_context(|| format!("--hold `{text}`"))?),
    };
    let mut config = LeaseClientConfig::new(url, "plenum-cli");
    config.token = token;
    let client = LeaseClient::connect(config)?;
    let mut lease = match client
        .acquire(
            LeaseRequest::weights(model, bytes)
                .priority(priority)
                .wait(wait),
        )
        .await
    {
        Ok(lease) => lease,
        Err(error) => bail!("{error}"),
    };
    println!(
        "holding lease {} on device {}: {}",
        lease.id(),
        lease.device_index(),
        format_bytes(lease.granted_bytes())
    );
    if let Some(measured) = commit {
        lease.commit(measured).await?;
        println!("committed {}", format_bytes(lease.granted_bytes()));
    }
    let mut events = client.events();
    let held = async {
        match hold {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = held => {}
        _ = tokio::signal::ctrl_c() => {}
        revoked = async {
            loop {
                if let Ok(plenum_lease::LeaseEvent::Revoked { lease_id, .. }) = events.recv().await
                    && lease_id == lease.id()
                {
                    return;
                }
            }
        } => {
            let () = revoked;
            println!("the broker revoked the lease; giving it back");
        }
    }
    let id = lease.id().to_owned();
    lease.release().await?;
    println!("released lease {id}");
    Ok(())
}

fn print_status(status: &pb::StatusResponse, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(&status_json(status))?);
        return Ok(());
    }
    println!(
        "broker {} · inventory: {}{}",
        short(&status.broker_instance_id),
        status.inventory,
        if status.recovery_window_left_ms > 0 {
            format!(
                " · recovering for {} ms more",
                status.recovery_window_left_ms
            )
        } else {
            String::new()
        }
    );
    println!();
    let devices: Vec<Vec<String>> = status
        .devices
        .iter()
        .map(|d| {
            vec![
                d.index.to_string(),
                d.name.clone(),
                format_bytes(d.total_bytes),
                format_bytes(d.used_bytes),
                format_bytes(d.reserve_bytes),
                format_bytes(d.leased_bytes),
                format_bytes(d.measured_bytes),
                format_bytes(d.external_bytes),
                format_bytes(d.free_for_lease_bytes),
            ]
        })
        .collect();
    if devices.is_empty() {
        println!("no GPU devices: every lease is refused and model services run on CPU");
    } else {
        print!(
            "{}",
            table::render(
                &[
                    "GPU", "NAME", "TOTAL", "USED", "RESERVE", "LEASED", "MEASURED", "EXTERNAL",
                    "FREE"
                ],
                &devices
            )
        );
    }
    println!();
    let leases: Vec<Vec<String>> = status
        .leases
        .iter()
        .map(|l| {
            let holder = l
                .holder
                .as_ref()
                .map(|h| format!("{} (pid {})", h.name, h.pid))
                .unwrap_or_default();
            let mut state = state_name(l.state).to_owned();
            if l.revoke_overdue {
                state.push_str(" OVERDUE");
            }
            vec![
                short(&l.lease_id),
                holder,
                l.device_index.to_string(),
                format_bytes(l.granted_bytes),
                if l.measured_bytes > 0 {
                    format_bytes(l.measured_bytes)
                } else {
                    "-".into()
                },
                l.used_bytes.map_or_else(|| "-".into(), format_bytes),
                purpose_name(l.purpose).to_owned(),
                state,
                priority_name(l.priority).to_owned(),
                l.model_key.clone(),
                format!("{:.1}s", l.age_ms as f64 / 1000.0),
            ]
        })
        .collect();
    if leases.is_empty() {
        println!("no leases");
    } else {
        print!(
            "{}",
            table::render(
                &[
                    "LEASE", "HOLDER", "GPU", "GRANTED", "MEASURED", "USED", "FOR", "STATE",
                    "PRIORITY", "MODEL", "AGE"
                ],
                &leases
            )
        );
    }
    if !status.queue.is_empty() {
        println!();
        let queue: Vec<Vec<String>> = status
            .queue
            .iter()
            .map(|q| {
                vec![
                    q.position.to_string(),
                    q.holder
                        .as_ref()
                        .map(|h| h.name.clone())
                        .unwrap_or_default(),
                    format_bytes(q.bytes),
                    priority_name(q.priority).to_owned(),
                    format!("{} ms", q.waited_ms),
                    format!("{} ms", q.wait_left_ms),
                ]
            })
            .collect();
        print!(
            "{}",
            table::render(
                &["QUEUE", "HOLDER", "BYTES", "PRIORITY", "WAITED", "LEFT"],
                &queue
            )
        );
    }
    if !status.overruns.is_empty() {
        println!();
        let overruns: Vec<Vec<String>> = status
            .overruns
            .iter()
            .map(|o| {
                vec![
                    o.holder
                        .as_ref()
                        .map(|h| format!("{} (pid {})", h.name, h.pid))
                        .unwrap_or_default(),
                    o.device_index.to_string(),
                    if o.lease_id.is_empty() {
                        "(process)".into()
                    } else {
                        short(&o.lease_id)
                    },
                    format_bytes(o.granted_bytes),
                    format_bytes(o.used_bytes),
                    format_bytes(o.used_bytes.saturating_sub(o.granted_bytes)),
                    o.model_keys.join(", "),
                    format!("{:.1}s", o.since_ms as f64 / 1000.0),
                ]
            })
            .collect();
        print!(
            "{}",
            table::render(
                &[
                    "OVERRUN", "GPU", "LEASE", "GRANTED", "USED", "OVER", "MODELS", "FOR"
                ],
                &overruns
            )
        );
    }
    println!();
    println!(
        "{} session(s); {} release(s) never confirmed by the inventory",
        status.sessions.len(),
        status.unconfirmed_releases
    );
    Ok(())
}

fn short(id: &str) -> String {
    id.chars().take(8).collect()
}

fn state_name(state: i32) -> &'static str {
    match pb::LeaseState::try_from(state).unwrap_or_default() {
        pb::LeaseState::Unspecified => "?",
        pb::LeaseState::Loading => "loading",
        pb::LeaseState::Active => "active",
        pb::LeaseState::Revoking => "revoking",
        pb::LeaseState::Releasing => "releasing",
        pb::LeaseState::Orphaned => "orphaned",
        pb::LeaseState::Unresponsive => "unresponsive",
    }
}

fn priority_name(priority: i32) -> &'static str {
    match pb::Priority::try_from(priority).unwrap_or_default() {
        pb::Priority::Low => "low",
        pb::Priority::Unspecified | pb::Priority::Normal => "normal",
        pb::Priority::High => "high",
    }
}

/// What a lease is for: the model's weights, its working memory, or a short peak.
fn purpose_name(purpose: i32) -> &'static str {
    match pb::LeasePurpose::try_from(purpose).unwrap_or_default() {
        pb::LeasePurpose::Unspecified | pb::LeasePurpose::Weights => "weights",
        pb::LeasePurpose::Work => "work",
        pb::LeasePurpose::Peak => "peak",
    }
}

/// The status as JSON with the same field names as the proto.
fn status_json(status: &pb::StatusResponse) -> serde_json::Value {
    use serde_json::json;
    let holder = |h: &Option<pb::Holder>| {
        h.as_ref().map(
            |h| json!({"name": h.name, "instance_id": h.instance_id, "pid": h.pid, "host": h.host}),
        )
    };
    json!({
        "broker_instance_id": status.broker_instance_id,
        "inventory": status.inventory,
        "recovery_window_left_ms": status.recovery_window_left_ms,
        "unconfirmed_releases": status.unconfirmed_releases,
        "measured_estimates": status.measured_estimates,
        "devices": status.devices.iter().map(|d| json!({
            "index": d.index, "uuid": d.uuid, "name": d.name,
            "total_bytes": d.total_bytes, "used_bytes": d.used_bytes,
            "reserve_bytes": d.reserve_bytes, "leased_bytes": d.leased_bytes,
            "measured_bytes": d.measured_bytes, "external_bytes": d.external_bytes,
            "free_for_lease_bytes": d.free_for_lease_bytes, "loading_lease_id": d.loading_lease_id,
        })).collect::<Vec<_>>(),
        "leases": status.leases.iter().map(|l| json!({
            "lease_id": l.lease_id, "session_id": l.session_id, "holder": holder(&l.holder),
            "device_index": l.device_index, "device_uuid": l.device_uuid,
            "granted_bytes": l.granted_bytes, "measured_bytes": l.measured_bytes,
            "used_bytes": l.used_bytes,
            "state": state_name(l.state), "priority": priority_name(l.priority),
            "purpose": purpose_name(l.purpose),
            "model_key": l.model_key, "age_ms": l.age_ms, "revoke_overdue": l.revoke_overdue,
        })).collect::<Vec<_>>(),
        "queue": status.queue.iter().map(|q| json!({
            "position": q.position, "holder": holder(&q.holder), "bytes": q.bytes,
            "priority": priority_name(q.priority), "model_key": q.model_key,
            "waited_ms": q.waited_ms, "wait_left_ms": q.wait_left_ms,
        })).collect::<Vec<_>>(),
        "sessions": status.sessions.iter().map(|s| json!({
            "session_id": s.session_id, "holder": holder(&s.holder),
            "last_heartbeat_ms_ago": s.last_heartbeat_ms_ago, "lease_count": s.lease_count,
        })).collect::<Vec<_>>(),
        "overruns": status.overruns.iter().map(|o| json!({
            "holder": holder(&o.holder), "device_index": o.device_index, "lease_id": o.lease_id,
            "granted_bytes": o.granted_bytes, "used_bytes": o.used_bytes,
            "model_keys": o.model_keys, "since_ms": o.since_ms,
        })).collect::<Vec<_>>(),
    })
}
