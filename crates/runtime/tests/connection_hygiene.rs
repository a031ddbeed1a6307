//! Hostile connections against a real gRPC server over TCP: sockets that never
//! finish the HTTP/2 handshake are closed, connections past the cap are closed at
//! once and counted, and a well-behaved client is served once the flood is gone.

use std::net::SocketAddr;
use std::time::Duration;

use plenum_runtime::connections::{ConnectionLimits, stats};
use plenum_runtime::grpc::GrpcServer;
use plenum_runtime::listen::Listener;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Generous bound on how long any one wait in these tests may take; a hang fails.
const PATIENCE: Duration = Duration::from_secs(20);

async fn serve(limits: ConnectionLimits) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        GrpcServer::new()
            .serve(
                Listener::from(listener).with_limits(limits),
                stop,
                Duration::from_secs(1),
            )
            .await
            .expect("serves");
    });
    (addr, shutdown)
}

async fn healthy(addr: SocketAddr) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .map_err(|error| format!("connect: {error}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(drop)
        .map_err(|status| format!("check: {status}"))
}

/// Reads (and discards what the server sends, e.g. its SETTINGS) until the server
/// closes the connection.
async fn read_until_closed(mut socket: TcpStream) {
    let mut buffer = [0u8; 1024];
    loop {
        match socket.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn sockets_that_never_finish_the_handshake_are_closed() {
    let (addr, shutdown) = serve(ConnectionLimits {
        handshake_timeout: Duration::from_millis(300),
        ..ConnectionLimits::default()
    })
    .await;
    let before = stats().handshake_timeouts;

    let mut silent = Vec::new();
    for i in 0..50 {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            socket.write_all(PREFACE).await.unwrap();
        }
        silent.push(tokio::spawn(read_until_closed(socket)));
    }
    for socket in silent {
        tokio::time::timeout(PATIENCE, socket)
            .await
            .expect("the server left a silent socket open")
            .unwrap();
    }

    assert!(stats().handshake_timeouts - before >= 50);
    healthy(addr).await.expect("a real client is still served");
    shutdown.cancel();
}

#[tokio::test]
async fn past_max_connections_new_sockets_are_closed_then_clients_are_served_again() {
    let (addr, shutdown) = serve(ConnectionLimits {
        max_connections: 4,
        handshake_timeout: Duration::from_secs(600),
        ..ConnectionLimits::default()
    })
    .await;
    let before = stats().refused;

    // The first four take every place (the server accepts in connect order)...
    let mut holding = Vec::new();
    for _ in 0..4 {
        holding.push(TcpStream::connect(addr).await.unwrap());
    }
    // ...so each one after them is closed at once.
    for _ in 0..10 {
        let socket = TcpStream::connect(addr).await.unwrap();
        tokio::time::timeout(PATIENCE, read_until_closed(socket))
            .await
            .expect("a connection past the cap was kept open");
    }
    assert!(stats().refused - before >= 10);
    assert!(
        healthy(addr).await.is_err(),
        "a client was served past the cap"
    );

    drop(holding);
    // The places come back as the server notices the closes; a client then gets in.
    let served = tokio::time::timeout(PATIENCE, async {
        while healthy(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "no client served after the flood closed");
    shutdown.cancel();
}
