//! The idle-connection timeout: a connection with no call in flight for
//! `--idle-timeout` is closed, so clients that connect and go quiet do not hold
//! file descriptors and connection places for ever.
//!
//! Idleness is about calls, not bytes: keepalive PINGs and their ACKs keep a dead
//! peer from looking alive, and a long call that sends nothing for minutes is not
//! idle. So each connection shares a [`Calls`] count between its socket (the
//! connection's `connect_info` carries it into every request) and the
//! [`CallTrackingLayer`], which counts a call from its arrival until its response
//! body ends or is dropped. The socket's read side then ends (EOF) once the count
//! has stayed at zero for the timeout and hyper asks for more bytes with none
//! waiting; hyper closes the connection. tonic owns hyper's connection, so no
//! GOAWAY can be sent first: a request the client writes in that same instant
//! fails as UNAVAILABLE, as it would on any connection the server closes.

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http_body::{Body, Frame};
use tokio::time::Sleep;

/// Calls in flight on one connection, and since when there has been none.
#[derive(Debug)]
pub(crate) struct Calls(Mutex<CallsState>);

#[derive(Debug)]
struct CallsState {
    in_flight: usize,
    /// `Some` while no call is in flight: when the last one ended (or the
    /// connection opened).
    idle_since: Option<Instant>,
    /// The connection's reader, woken when the last call ends so it arms its timer.
    reader: Option<Waker>,
}

impl Calls {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self(Mutex::new(CallsState {
            in_flight: 0,
            idle_since: Some(Instant::now()),
            reader: None,
        })))
    }

    fn state(&self) -> MutexGuard<'_, CallsState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A call arrived; it counts until the returned guard is dropped.
    fn begin(self: &Arc<Self>) -> CallGuard {
        let mut state = self.state();
        state.in_flight += 1;
        state.idle_since = None;
        CallGuard(Arc::clone(self))
    }

    fn end(&self) {
        let mut state = self.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.idle_since = Some(Instant::now());
            if let Some(reader) = state.reader.take() {
                reader.wake();
            }
        }
    }

    /// Since when no call has been in flight; `None` while one is. Registers
    /// `waker` to hear when the last call in flight ends.
    fn idle_since(&self, waker: &Waker) -> Option<Instant> {
        let mut state = self.state();
        if state.idle_since.is_none() {
            state.reader = Some(waker.clone());
        }
        state.idle_since
    }
}

/// One call in flight on a connection.
struct CallGuard(Arc<Calls>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// The read side's timer: expires once no call has been in flight for `timeout`.
pub(crate) struct IdleTimer {
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl IdleTimer {
    /// A timer for `timeout`; none when it is zero (the timeout is off).
    pub(crate) fn new(timeout: Duration) -> Option<Self> {
        (!timeout.is_zero()).then(|| Self {
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
        })
    }

    /// Whether the connection has been idle for the timeout; if not, `cx` is woken
    /// when it may have been (the timer) or when the last call ends.
    pub(crate) fn expired(&mut self, calls: &Calls, cx: &mut Context<'_>) -> bool {
        let Some(since) = calls.idle_since(cx.waker()) else {
            return false;
        };
        let at = tokio::time::Instant::from_std(since + self.timeout);
        if self.sleep.deadline() != at {
            self.sleep.as_mut().reset(at);
        }
        self.sleep.as_mut().poll(cx).is_ready()
    }
}

/// What a connection's `connect_info` is: the socket's own (`TcpConnectInfo`,
/// `UdsConnectInfo`), which [`CallTrackingLayer`] puts back in the request's
/// extensions, and the connection's [`Calls`].
#[derive(Debug, Clone)]
pub(crate) struct Tracked<T> {
    info: T,
    calls: Arc<Calls>,
}

impl<T> Tracked<T> {
    pub(crate) fn new(info: T, calls: Arc<Calls>) -> Self {
        Self { info, calls }
    }
}

/// Counts every call on its connection's [`Calls`], and gives the services the
/// socket's own connect info (`T`) as if nothing stood between.
pub(crate) struct CallTrackingLayer<T>(PhantomData<fn() -> T>);

impl<T> CallTrackingLayer<T> {
    pub(crate) fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> Clone for CallTrackingLayer<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<S, T> tower::Layer<S> for CallTrackingLayer<T> {
    type Service = CallTracking<S, T>;
    fn layer(&self, inner: S) -> Self::Service {
        CallTracking {
            inner,
            _info: PhantomData,
        }
    }
}

pub(crate) struct CallTracking<S, T> {
    inner: S,
    _info: PhantomData<fn() -> T>,
}

impl<S: Clone, T> Clone for CallTracking<S, T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            _info: PhantomData,
        }
    }
}

impl<S, T, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for CallTracking<S, T>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    type Response = http::Response<TrackedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let call = request
            .extensions_mut()
            .remove::<Tracked<T>>()
            .map(|tracked| {
                request.extensions_mut().insert(tracked.info);
                tracked.calls.begin()
            });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| TrackedBody { inner, call }))
        })
    }
}

/// A response body that keeps its call counted until it ends or is dropped.
pub(crate) struct TrackedBody<B> {
    inner: B,
    call: Option<CallGuard>,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.call = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_idle_only_while_no_call_is_in_flight() {
        let calls = Calls::new();
        let waker = Waker::noop();
        assert!(
            calls.idle_since(waker).is_some(),
            "a new connection is idle"
        );
        let first = calls.begin();
        let second = calls.begin();
        assert_eq!(calls.idle_since(waker), None);
        drop(first);
        assert_eq!(calls.idle_since(waker), None, "one call is still in flight");
        let before = Instant::now();
        drop(second);
        assert!(calls.idle_since(waker).is_some_and(|since| since >= before));
    }
}
