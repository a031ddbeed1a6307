//! What the CLI's process tests share: a real `plenum broker lease` child holding a
//! lease, and the broker's status over gRPC.

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

#[allow(dead_code)] // not every test binary asks for the status over gRPC
pub async fn status(url: &str) -> pb::StatusResponse {
    let mut client = BrokerClient::connect(url.to_owned()).await.unwrap();
    client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
}
