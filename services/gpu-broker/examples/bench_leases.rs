//! Benchmark: Acquire + Release round trips over loopback gRPC at 1, 16 and 64
//! concurrent holders (each its own session), and the ledger alone in process.
//!
//!   cargo run --release -p plenum-broker --example bench_leases [-- SECONDS_PER_LEVEL]
//!
//! Leases are `peak` leases (activation headroom), which are not single-flight: a
//! `weights` lease would make every holder wait for the previous one's load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use plenum_broker::inventory::{Inventory, Simulated};
use plenum_broker::ledger::{AcquireOutcome, AcquireSpec, Ledger, LedgerConfig, Priority, Purpose};
use plenum_broker::{Broker, BrokerSettings};
use plenum_lease::{LeaseClient, LeaseClientConfig, LeaseRequest};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let per_level = Duration::from_secs(seconds);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let broker = Broker::new(
        BrokerSettings {
            ledger: LedgerConfig::default(),
            inventory: Arc::new(Simulated::parse("Bench:1TiB").unwrap()),
            token: None,
            poll_interval: Duration::from_millis(250),
            drain_timeout: Duration::from_millis(100),
        },
        shutdown.clone(),
    );
    tokio::spawn(async move { broker.serve(listener).await.unwrap() });

    println!("Acquire + Release round trip over loopback gRPC ({seconds} s per level)");
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10}",
        "holders", "p50 µs", "p99 µs", "max µs", "ops/s"
    );
    for holders in [1usize, 16, 64] {
        let clients: Vec<LeaseClient> = (0..holders)
            .map(|i| {
                LeaseClient::connect(LeaseClientConfig::new(url.clone(), format!("bench-{i}")))
                    .unwrap()
            })
            .collect();
        for client in &clients {
            client
                .wait_for_session(Duration::from_secs(5))
                .await
                .unwrap();
        }
        let start = Instant::now();
        let tasks: Vec<_> = clients
            .iter()
            .cloned()
            .map(|client| {
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut request = LeaseRequest::weights("bench", 1 << 20);
                    request.purpose = plenum_lease::Purpose::Peak;
                    while start.elapsed() < per_level {
                        let began = Instant::now();
                        let lease = client.acquire(request.clone()).await.expect("fits");
                        lease.release().await.expect("released");
                        latencies.push(began.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.unwrap());
        }
        let elapsed = start.elapsed();
        latencies.sort();
        let pick = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize].as_micros();
        println!(
            "{:>8} {:>10} {:>10} {:>10} {:>10.0}",
            holders,
            pick(0.5),
            pick(0.99),
            latencies.last().unwrap().as_micros(),
            latencies.len() as f64 / elapsed.as_secs_f64()
        );
        for client in clients {
            client.close();
        }
    }
    shutdown.cancel();

    println!();
    println!("The ledger alone, in process (acquire, release, observe = 3 operations per cycle):");
    let sim = Simulated::parse("Bench:1TiB").unwrap();
    let now = Instant::now();
    let mut ledger = Ledger::new(LedgerConfig::default(), sim.devices(), now);
    let mut sessions = Vec::new();
    for i in 0..16 {
        let holder = plenum_broker::ledger::Holder {
            name: format!("h{i}"),
            instance_id: format!("i{i}"),
            pid: i,
            host: "bench".into(),
        };
        sessions.push(ledger.open_session(holder, vec![], now).unwrap().0);
    }
    let started = Instant::now();
    let mut cycles = 0u64;
    while started.elapsed() < per_level {
        for session in &sessions {
            let spec = AcquireSpec {
                session_id: session.clone(),
                bytes: 1 << 20,
                device: None,
                priority: Priority::Normal,
                purpose: Purpose::Peak,
                wait: Duration::ZERO,
                model_key: "bench".into(),
                use_measured_estimate: false,
            };
            let AcquireOutcome::Granted(lease) = ledger.acquire(spec, now).unwrap() else {
                panic!("fits")
            };
            ledger.release(session, &lease.lease_id, now).unwrap();
            let usage = sim.measure(&ledger.held_bytes()).unwrap();
            ledger.observe(usage, now);
            ledger.take_notices();
            ledger.take_outgoing();
            cycles += 1;
        }
    }
    let ops = cycles as f64 * 3.0 / started.elapsed().as_secs_f64();
    println!(
        "{ops:.0} operations/s ({:.0} acquire+release+confirm cycles/s)",
        ops / 3.0
    );
}
