//! Connection hygiene for every gRPC server: how many connections it holds, how
//! long a socket may take to speak HTTP/2, how long it may sit idle (see
//! [`crate::idle`]), how dead peers are found, and what the accept loop does when
//! the process runs out of file descriptors.
//!
//! tonic's own accept loop retries a failed `accept` at once, so EMFILE (the
//! pending connection stays in the backlog) would spin a core; and hyper waits
//! forever for a client preface. [`Incoming`] replaces `TcpIncoming` to fix both,
//! and to refuse connections past the cap before hyper spends anything on them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::time::Sleep;
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use crate::idle::{Calls, IdleTimer, Tracked};

/// How long the accept loop pauses when the process or system is out of file
/// descriptors (or socket buffers): long enough not to spin, short enough to
/// resume soon after connections close.
const EXHAUSTED_BACKOFF: Duration = Duration::from_millis(100);
/// At most one warning per this long for refusals and for fd exhaustion.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Connections refused in one poll of the accept loop before it yields, so a flood
/// cannot hold a runtime thread.
const REFUSALS_PER_POLL: usize = 128;

/// Connection limits of one server; the defaults are the flags' defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct ConnectionLimits {
    /// Most connections held open at once; past it a new connection is accepted and
    /// closed at once (counted in plenum_grpc_server_connections_refused_total).
    #[arg(long, env = "PLENUM_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Time a new connection has to send the HTTP/2 preface and its SETTINGS frame
    /// before it is closed.
    #[arg(long, env = "PLENUM_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// Most concurrent calls (HTTP/2 streams) one connection may carry.
    #[arg(long, env = "PLENUM_MAX_CONCURRENT_STREAMS", default_value_t = DEFAULT_MAX_CONCURRENT_STREAMS)]
    pub max_concurrent_streams: u32,
    /// How often the server pings each connection to find dead peers.
    #[arg(long, env = "PLENUM_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    #[arg(long, env = "PLENUM_HTTP2_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_timeout: Duration,
    /// How long a connection may go with no call in flight before it is closed
    /// (keepalive pings do not count as calls); 0 keeps idle connections open.
    #[arg(long, env = "PLENUM_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
}

const DEFAULT_MAX_CONNECTIONS: usize = 1024;
const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(5 * 60),
        }
    }
}

struct Series {
    open: IntGauge,
    refused: IntCounter,
    handshake_timeouts: IntCounter,
    idle_closed: IntCounter,
    accept_backoffs: IntCounter,
}

static SERIES: LazyLock<Series> = LazyLock::new(|| {
    let open = IntGauge::new(
        "plenum_grpc_server_connections",
        "gRPC connections open now",
    )
    .expect("valid metric");
    let refused = IntCounter::new(
        "plenum_grpc_server_connections_refused_total",
        "Connections closed on accept because --max-connections were open",
    )
    .expect("valid metric");
    let handshake_timeouts = IntCounter::new(
        "plenum_grpc_server_handshake_timeouts_total",
        "Connections closed because they sent no HTTP/2 preface and SETTINGS within --handshake-timeout",
    )
    .expect("valid metric");
    let idle_closed = IntCounter::new(
        "plenum_grpc_server_idle_closed_total",
        "Connections closed because no call was in flight on them for --idle-timeout",
    )
    .expect("valid metric");
    let accept_backoffs = IntCounter::new(
        "plenum_grpc_server_accept_backoffs_total",
        "Times accepting paused because file descriptors or socket buffers ran out",
    )
    .expect("valid metric");
    let registry = prometheus::default_registry();
    for metric in [
        Box::new(open.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(refused.clone()),
        Box::new(handshake_timeouts.clone()),
        Box::new(idle_closed.clone()),
        Box::new(accept_backoffs.clone()),
    ] {
        // Registering twice only fails when another copy already did it; ignore that.
        let _ = registry.register(metric);
    }
    Series {
        open,
        refused,
        handshake_timeouts,
        idle_closed,
        accept_backoffs,
    }
});

/// Process-wide connection counts, as `/metrics` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionStats {
    pub open: i64,
    pub refused: u64,
    pub handshake_timeouts: u64,
    pub idle_closed: u64,
    pub accept_backoffs: u64,
}

/// The counters of every server in this process.
pub fn stats() -> ConnectionStats {
    ConnectionStats {
        open: SERIES.open.get(),
        refused: SERIES.refused.get(),
        handshake_timeouts: SERIES.handshake_timeouts.get(),
        idle_closed: SERIES.idle_closed.get(),
        accept_backoffs: SERIES.accept_backoffs.get(),
    }
}

/// A listening socket whose connections [`Incoming`] can guard.
pub(crate) trait Accept: Unpin {
    type Io: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>>;
}

impl Accept for TcpListener {
    type Io = TcpStream;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<TcpStream>> {
        let (stream, _) = ready!(TcpListener::poll_accept(self, cx))?;
        // Nagle off: small gRPC replies must not wait ~40 ms for a delayed ACK.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot turn Nagle off on an accepted connection");
        }
        Poll::Ready(Ok(stream))
    }
}

impl Accept for UnixListener {
    type Io = UnixStream;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<UnixStream>> {
        UnixListener::poll_accept(self, cx).map_ok(|(stream, _)| stream)
    }
}

/// Accepted connections under [`ConnectionLimits`], for tonic's
/// `serve_with_incoming_shutdown`.
pub(crate) struct Incoming<L> {
    listener: L,
    limits: ConnectionLimits,
    open: Arc<AtomicUsize>,
    backoff: Option<Pin<Box<Sleep>>>,
    refusal_warning: Throttle,
    exhaustion_warning: Throttle,
}

impl<L: Accept> Incoming<L> {
    pub(crate) fn new(listener: L, limits: ConnectionLimits) -> Self {
        Self {
            listener,
            limits,
            open: Arc::default(),
            backoff: None,
            refusal_warning: Throttle::default(),
            exhaustion_warning: Throttle::default(),
        }
    }
}

impl<L: Accept> Stream for Incoming<L> {
    type Item = io::Result<Guarded<L::Io>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(backoff) = &mut this.backoff {
            ready!(backoff.as_mut().poll(cx));
            this.backoff = None;
        }
        for _ in 0..REFUSALS_PER_POLL {
            let io = match ready!(this.listener.poll_accept(cx)) {
                Ok(io) => io,
                Err(error) if out_of_resources(&error) => {
                    SERIES.accept_backoffs.inc();
                    if this.exhaustion_warning.ready() {
                        tracing::warn!(%error, backoff = ?EXHAUSTED_BACKOFF, "cannot accept connections: out of file descriptors or socket buffers; pausing accepts");
                    }
                    let mut backoff = Box::pin(tokio::time::sleep(EXHAUSTED_BACKOFF));
                    // Registers the wake-up; the sleep has only just started.
                    let _ = backoff.as_mut().poll(cx);
                    this.backoff = Some(backoff);
                    return Poll::Pending;
                }
                // tonic logs it and asks again (a peer that reset before accept).
                Err(error) => return Poll::Ready(Some(Err(error))),
            };
            if this.open.load(Ordering::Relaxed) >= this.limits.max_connections {
                // Closing at once costs the peer one round trip and us nothing more.
                drop(io);
                SERIES.refused.inc();
                if this.refusal_warning.ready() {
                    tracing::warn!(
                        max_connections = this.limits.max_connections,
                        "connection limit reached; refusing new connections"
                    );
                }
                continue;
            }
            let guarded = Guarded::new(io, &this.open, &this.limits);
            return Poll::Ready(Some(Ok(guarded)));
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Resource exhaustion on accept: retrying at once would fail the same way.
fn out_of_resources(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Lets a warning through at most once per [`WARN_EVERY`].
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
}

impl Throttle {
    fn ready(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARN_EVERY)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// An accepted connection: counts as open until dropped, fails its reads once
/// the handshake deadline passes without a complete client preface, and ends
/// them (EOF) once it has been idle for the idle timeout.
pub(crate) struct Guarded<IO> {
    io: IO,
    handshake: Option<Handshake>,
    calls: Arc<Calls>,
    idle: Option<IdleTimer>,
    /// The idle timeout ended this connection: every later read is EOF too.
    closed_idle: bool,
    _slot: Slot,
}

impl<IO> Guarded<IO> {
    fn new(io: IO, open: &Arc<AtomicUsize>, limits: &ConnectionLimits) -> Self {
        Self {
            io,
            handshake: Some(Handshake::new(limits.handshake_timeout)),
            calls: Calls::new(),
            idle: IdleTimer::new(limits.idle_timeout),
            closed_idle: false,
            _slot: Slot::take(open),
        }
    }
}

/// One place under the connection cap, given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        SERIES.open.inc();
        Self(Arc::clone(open))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        SERIES.open.dec();
    }
}

/// The client's side of the HTTP/2 handshake: the 24-byte preface, then a frame
/// (SETTINGS) whose length is in its 9-byte header.
struct Handshake {
    deadline: Pin<Box<Sleep>>,
    seen: usize,
    needed: usize,
    frame_header: [u8; FRAME_HEADER_LEN],
}

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;

impl Handshake {
    fn new(timeout: Duration) -> Self {
        Self {
            deadline: Box::pin(tokio::time::sleep(timeout)),
            seen: 0,
            needed: PREFACE_LEN + FRAME_HEADER_LEN,
            frame_header: [0; FRAME_HEADER_LEN],
        }
    }

    /// Counts bytes the client sent; true once preface and first frame are in.
    /// The bytes are not checked: hyper rejects a wrong preface itself.
    fn observe(&mut self, bytes: &[u8]) -> bool {
        for &byte in bytes {
            if self.seen >= self.needed {
                break;
            }
            if let Some(slot) = self
                .seen
                .checked_sub(PREFACE_LEN)
                .and_then(|at| self.frame_header.get_mut(at))
            {
                *slot = byte;
            }
            self.seen += 1;
            if self.seen == PREFACE_LEN + FRAME_HEADER_LEN {
                let [a, b, c, ..] = self.frame_header;
                self.needed += u32::from_be_bytes([0, a, b, c]) as usize;
            }
        }
        self.seen >= self.needed
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed_idle {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if let Some(handshake) = &mut this.handshake
                    && handshake.observe(&buf.filled()[before..])
                {
                    this.handshake = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            // Nothing to read: the timers below are polled with hyper's waker, so
            // its pending read wakes when one of them expires.
            Poll::Pending => {
                if let Some(handshake) = &mut this.handshake {
                    ready!(handshake.deadline.as_mut().poll(cx));
                    SERIES.handshake_timeouts.inc();
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no HTTP/2 preface and SETTINGS within the handshake timeout",
                    )));
                }
                if let Some(idle) = &mut this.idle
                    && idle.expired(&this.calls, cx)
                {
                    // EOF (nothing read): hyper ends the connection and closes it.
                    this.closed_idle = true;
                    SERIES.idle_closed.inc();
                    tracing::debug!(
                        "closing a connection with no call in flight for the idle timeout"
                    );
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Calls still see the socket's own peer info (`TcpConnectInfo`, `UdsConnectInfo`):
/// [`crate::idle::CallTrackingLayer`] unwraps it as it counts the call.
impl<IO: Connected> Connected for Guarded<IO> {
    type ConnectInfo = Tracked<IO::ConnectInfo>;
    fn connect_info(&self) -> Self::ConnectInfo {
        Tracked::new(self.io.connect_info(), Arc::clone(&self.calls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_frame(payload: usize) -> Vec<u8> {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let len = (payload as u32).to_be_bytes();
        bytes.extend_from_slice(&[len[1], len[2], len[3], 0x4, 0, 0, 0, 0, 0]);
        bytes.extend(std::iter::repeat_n(0u8, payload));
        bytes
    }

    #[tokio::test]
    async fn a_handshake_completes_with_preface_and_whole_settings_frame() {
        let bytes = settings_frame(12);
        let mut handshake = Handshake::new(Duration::from_secs(1));
        assert!(!handshake.observe(&bytes[..PREFACE_LEN]));
        assert!(!handshake.observe(&bytes[PREFACE_LEN..bytes.len() - 1]));
        assert!(handshake.observe(&bytes[bytes.len() - 1..]));
    }

    #[tokio::test]
    async fn a_handshake_completes_in_one_read_with_more_behind_it() {
        let mut bytes = settings_frame(0);
        bytes.extend_from_slice(&[0xAB; 100]);
        assert!(Handshake::new(Duration::from_secs(1)).observe(&bytes));
    }

    #[test]
    fn the_defaults_are_the_flags_defaults() {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            limits: ConnectionLimits,
        }
        let flags = <Flags as clap::Parser>::try_parse_from(["server"]).unwrap();
        assert_eq!(flags.limits, ConnectionLimits::default());
    }

    #[tokio::test]
    async fn a_preface_alone_is_no_handshake() {
        let bytes = settings_frame(6);
        assert!(!Handshake::new(Duration::from_secs(1)).observe(&bytes[..PREFACE_LEN + 4]));
    }
}
