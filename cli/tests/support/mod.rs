//! What the CLI's process tests share: a real `plenum broker lease` child holding a
//! lease, the broker's status over gRPC, free ports and the built service binaries.

// Each test binary uses part of this module.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;

use plenum_proto::broker::v1::broker_client::BrokerClient;
use plenum_proto::broker::v1::{self as pb};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

/// Starts `plenum broker --broker URL lease ARGS…` and returns it with its PID once
/// it prints a line starting with `ready` (`committed`, or `holding` without
/// `--commit`): the child says when it holds the lease, so no sleeping on a guess.
/// Its later output is drained, so the child never blocks on a full pipe.
pub async fn lease_holder(url: &str, args: &[&str], ready: &str) -> (Child, u32) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_plenum"))
        .args(["broker", "--broker", url, "lease"])
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn plenum");
    let pid = child.id().expect("running");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("child exited before holding the lease");
        if line.starts_with(ready) {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, pid)
}

pub async fn status(url: &str) -> pb::StatusResponse {
    let mut client = BrokerClient::connect(url.to_owned()).await.unwrap();
    client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The folder with the workspace binaries (`cargo test --workspace` builds them all),
/// checked to hold `names`.
pub fn bin_dir(names: &[&str]) -> PathBuf {
    let plenum = PathBuf::from(env!("CARGO_BIN_EXE_plenum"));
    let dir = plenum.parent().unwrap().to_path_buf();
    for name in names {
        assert!(
            dir.join(name).exists(),
            "{name} is not built in {}: run `cargo build --workspace --bins` first",
            dir.display()
        );
    }
    dir
}
