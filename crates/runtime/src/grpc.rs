//! Every Plenum gRPC server the same way: `grpc.health.v1`, server reflection v1
//! and v1alpha (grpcurl of any age can `list` and `describe`), a server span per
//! call continuing the caller's trace, and a drain with a deadline on shutdown.

use std::convert::Infallible;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::transport::server::Connected;
use tonic_health::server::HealthReporter;

use crate::connections::{ConnectionLimits, Incoming};
use crate::grpc_metrics::GrpcMetricsLayer;
use crate::listen::{Listener, Socket};
use crate::propagation;

/// A gRPC server under construction: add services, then [`GrpcServer::serve`].
pub struct GrpcServer {
    routes: RoutesBuilder,
    health: HealthReporter,
    /// Names of the services added, whose health turns NOT_SERVING on drain.
    services: Vec<&'static str>,
}

impl Default for GrpcServer {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcServer {
    /// A server that already carries health and reflection for every Plenum API.
    pub fn new() -> Self {
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(plenum_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("the compiled-in descriptor sets are valid");
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(plenum_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .expect("the compiled-in descriptor sets are valid");
        let mut routes = RoutesBuilder::default();
        routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        Self {
            routes,
            health,
            services: vec![""],
        }
    }

    /// The reporter that sets this server's health (per service and overall "").
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Adds a service to the server.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.services.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Serves on `listener` until `shutdown` is cancelled, then gives in-flight calls
    /// up to `drain` to finish. Health turns NOT_SERVING as soon as draining starts,
    /// so load balancers stop sending new work.
    pub async fn serve(
        self,
        listener: impl Into<Listener>,
        shutdown: CancellationToken,
        drain: Duration,
    ) -> Result<(), tonic::transport::Error> {
        let Listener { socket, limits } = listener.into();
        match socket {
            Socket::Tcp(listener) => {
                let incoming = Incoming::new(listener, limits);
                self.serve_incoming(incoming, limits, shutdown, drain).await
            }
            Socket::Unix(listener, socket_file) => {
                let incoming = Incoming::new(listener, limits);
                let result = self.serve_incoming(incoming, limits, shutdown, drain).await;
                drop(socket_file);
                result
            }
        }
    }

    async fn serve_incoming<I, IO, IE>(
        self,
        incoming: I,
        limits: ConnectionLimits,
        shutdown: CancellationToken,
        drain: Duration,
    ) -> Result<(), tonic::transport::Error>
    where
        I: Stream<Item = Result<IO, IE>>,
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let health = self.health.clone();
        let services = self.services.clone();
        let stop_accepting = shutdown.clone();
        let server = tonic::transport::Server::builder()
            // Pings find peers that vanished without a FIN (a killed pod, a cut cable).
            .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
            .max_concurrent_streams(limits.max_concurrent_streams)
            .trace_fn(propagation::server_span)
            // Requests and latency per RPC and code, for every service alike.
            .layer(GrpcMetricsLayer)
            .add_routes(self.routes.routes())
            .serve_with_incoming_shutdown(incoming, async move {
                stop_accepting.cancelled().await;
                for service in services {
                    health
                        .set_service_status(service, tonic_health::ServingStatus::NotServing)
                        .await;
                }
            });
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => return result,
            () = shutdown.cancelled() => {}
        }
        match tokio::time::timeout(drain, server).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    ?drain,
                    "drain timeout passed with calls still open; stopping anyway"
                );
                Ok(())
            }
        }
    }
}
