//! Hostile connections against a real gRPC server over TCP: sockets that never
//! finish the HTTP/2 handshake are closed, connections past the cap are closed at
//! once and counted, a well-behaved client is served once the flood is gone, and a
//! connection with no call in flight is closed after the idle timeout (one with a
//! long call in flight is not).

use std::net::SocketAddr;
use std::time::Duration;

use plenum_runtime::connections::{ConnectionLimits, stats};
use plenum_runtime::grpc::GrpcServer;
use plenum_runtime::listen::Listener;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::codegen::Bytes;
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

/// An HTTP/2 connection made by hand, so the test sees when the server closes it.
/// It pings the server every few milliseconds while it is open: pings are no calls.
struct H2Client {
    send: h2::client::SendRequest<Bytes>,
    closed: tokio::task::JoinHandle<()>,
    _pinging: tokio::task::JoinHandle<()>,
}

/// An empty `HealthCheckRequest` in gRPC's framing: not compressed, zero bytes.
const EMPTY_MESSAGE: [u8; 5] = [0; 5];

impl H2Client {
    async fn connect(addr: SocketAddr) -> Self {
        let socket = TcpStream::connect(addr).await.unwrap();
        let (send, mut connection) = h2::client::handshake(socket).await.unwrap();
        let mut pings = connection.ping_pong().expect("ping_pong is taken once");
        let closed = tokio::spawn(async move {
            let _ = connection.await;
        });
        let pinging = tokio::spawn(async move {
            while pings.ping(h2::Ping::opaque()).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self {
            send,
            closed,
            _pinging: pinging,
        }
    }

    /// Starts a health call: the response's body stays open as long as the call.
    async fn call(&mut self, method: &str) -> h2::RecvStream {
        let request =
            http::Request::post(format!("http://localhost/grpc.health.v1.Health/{method}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
        let send = self.send.clone().ready().await.unwrap();
        self.send = send;
        let (response, mut body) = self.send.send_request(request, false).unwrap();
        body.send_data(Bytes::from_static(&EMPTY_MESSAGE), true)
            .unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body()
    }

    /// A whole unary health check.
    async fn check(&mut self) {
        let mut body = self.call("Check").await;
        while let Some(data) = body.data().await {
            let data = data.unwrap();
            let _ = body.flow_control().release_capacity(data.len());
        }
        let trailers = body.trailers().await.unwrap().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
    }

    fn is_closed(&self) -> bool {
        self.closed.is_finished()
    }

    /// Waits (bounded) until the server has closed the connection.
    async fn wait_closed(self, what: &str) {
        tokio::time::timeout(PATIENCE, self.closed)
            .await
            .unwrap_or_else(|_| panic!("{what}"))
            .unwrap();
    }
}

/// Short idle timeout, and keepalive pings from the server far more often than it.
fn idle_limits() -> ConnectionLimits {
    ConnectionLimits {
        idle_timeout: Duration::from_millis(300),
        http2_keepalive_interval: Duration::from_millis(50),
        ..ConnectionLimits::default()
    }
}

#[tokio::test]
async fn a_connection_with_no_call_in_flight_is_closed_after_the_idle_timeout() {
    let (addr, shutdown) = serve(idle_limits()).await;
    let before = stats().idle_closed;
    let mut client = H2Client::connect(addr).await;
    client.check().await;
    // Pings both ways meanwhile: they keep nothing open.
    client
        .wait_closed("a connection idle past the timeout was left open")
        .await;
    assert!(stats().idle_closed > before);
    healthy(addr).await.expect("a new client is served");
    shutdown.cancel();
}

#[tokio::test]
async fn a_connection_with_a_long_call_in_flight_stays_open_until_it_ends() {
    let (addr, shutdown) = serve(idle_limits()).await;
    let mut client = H2Client::connect(addr).await;
    // Watch answers with the status at once and then stays open.
    let mut watch = client.call("Watch").await;
    let first = watch.data().await.expect("a first status").unwrap();
    assert!(first.len() > EMPTY_MESSAGE.len());
    tokio::time::sleep(idle_limits().idle_timeout * 4).await;
    assert!(
        !client.is_closed(),
        "the connection was closed with a call in flight"
    );
    // The call ends (the client resets its stream): the connection is idle now.
    drop(watch);
    client
        .wait_closed("the connection stayed open after its last call ended")
        .await;
    shutdown.cancel();
}
