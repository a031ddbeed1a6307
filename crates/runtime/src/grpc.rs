//! Every Plenum gRPC server the same way: `grpc.health.v1`, server reflection v1
//! and v1alpha listing the services that server answers (grpcurl of any age can
//! `list` and `describe`), a server span per call continuing the caller's trace,
//! and a drain with a deadline on shutdown.

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
use crate::idle::{CallTrackingLayer, Tracked};
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
    /// A server that already carries health; reflection is added when it serves, for
    /// exactly the services it was given.
    pub fn new() -> Self {
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service);
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

    /// The routes with server reflection v1 and v1alpha added (grpcurl of any age can
    /// `list` and `describe`).
    fn into_routes(mut self) -> tonic::service::Routes {
        let v1 = reflection(&self.services)
            .build_v1()
            .expect("the compiled-in descriptor sets are valid");
        let v1alpha = reflection(&self.services)
            .build_v1alpha()
            .expect("the compiled-in descriptor sets are valid");
        self.routes.add_service(v1).add_service(v1alpha);
        self.routes.routes()
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

    async fn serve_incoming<I, IO, IE, CI>(
        self,
        incoming: I,
        limits: ConnectionLimits,
        shutdown: CancellationToken,
        drain: Duration,
    ) -> Result<(), tonic::transport::Error>
    where
        I: Stream<Item = Result<IO, IE>>,
        IO: AsyncRead + AsyncWrite + Connected<ConnectInfo = Tracked<CI>> + Unpin + Send + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>>,
        CI: Clone + Send + Sync + 'static,
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
            // Calls in flight per connection, for the idle timeout.
            .layer(CallTrackingLayer::<CI>::new())
            // Requests and latency per RPC and code, for every service alike.
            .layer(GrpcMetricsLayer)
            .add_routes(self.into_routes())
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

/// Reflection that lists only what a server answers (`services`, health and reflection
/// itself) while it can describe every Plenum type: `grpcurl list` on the gateway must
/// not offer the Broker API, which would answer UNIMPLEMENTED.
fn reflection(services: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    let listed = services
        .iter()
        .copied()
        .filter(|name| !name.is_empty())
        .chain([
            tonic_health::pb::health_server::SERVICE_NAME,
            tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
            tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME,
        ]);
    let builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(plenum_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // Both versions are listed, so both descriptors are registered (the builder's
        // own option would register only the version being built).
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .include_reflection_service(false);
    listed.fold(builder, |builder, name| builder.with_service_name(name))
}
