//! A real `plenum-broker` process allowed only 64 file descriptors, flooded with
//! more connections than it can accept: it pauses accepting instead of retrying
//! EMFILE in a busy loop, and serves a client again once the flood is gone.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::net::UnixStream;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const PATIENCE: Duration = Duration::from_secs(20);

async fn healthy(socket: &Path) -> bool {
    let Ok(endpoint) =
        tonic::transport::Endpoint::from_shared(format!("unix://{}", socket.display()))
    else {
        return false;
    };
    let Ok(channel) = endpoint.timeout(Duration::from_secs(2)).connect().await else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .is_ok()
}

async fn until_healthy(socket: &Path) {
    tokio::time::timeout(PATIENCE, async {
        while !healthy(socket).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the broker serves");
}

/// User plus system CPU time of `pid`, in clock ticks (fields 14 and 15 of
/// /proc/PID/stat, counted after the parenthesised command name).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state), so utime (14) is index 11.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> u64 {
    let output = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn an_fd_starved_broker_backs_off_and_recovers() {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: needs prlimit (util-linux) to start the broker with few fds");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("broker.sock");
    let mut broker = tokio::process::Command::new("prlimit")
        .arg("--nofile=64:64")
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_plenum-broker"))
        .args([
            "--simulate",
            "GTX 1070:8GiB",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .arg("--listen")
        .arg(format!("unix://{}", socket.display()))
        .env("PLENUM_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start plenum-broker under prlimit");
    // prlimit execs the broker, so the child's PID is the broker's.
    let pid = broker.id().expect("running");
    until_healthy(&socket).await;

    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(UnixStream::connect(&socket).await.expect("connect"));
    }
    // Let the broker reach EMFILE, then measure it there.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - start;
    eprintln!("broker CPU while out of file descriptors: {used} ticks in 2 s");
    assert!(
        used < clock_ticks_per_second() / 5,
        "the broker burned {used} ticks of CPU in 2 s while out of file descriptors"
    );

    drop(flood);
    until_healthy(&socket).await;
    assert!(
        broker.try_wait().unwrap().is_none(),
        "the broker exited under the flood"
    );
    broker.start_kill().unwrap();
    broker.wait().await.unwrap();
}
