//! Logs and traces, set up once per process: an EnvFilter, text or JSON lines, and
//! an OTLP trace exporter when an endpoint is configured. The W3C trace-context
//! propagator is always installed so `traceparent` crosses every gRPC hop.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetryArgs};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter `{filter}`: {source}")]
    Filter {
        filter: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("cannot build the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("a global tracing subscriber is already set: {0}")]
    AlreadySet(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps the trace pipeline alive; call [`Telemetry::shutdown`] last to flush spans.
#[must_use = "dropping the guard without shutdown() may lose the last spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the trace exporter, if any.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("trace exporter shutdown: {error}");
        }
    }
}

/// Installs the global subscriber for `service` (the OpenTelemetry `service.name`).
pub fn init(service: &'static str, args: &TelemetryArgs) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_new(&args.log_filter).map_err(|source| TelemetryError::Filter {
        filter: args.log_filter.clone(),
        source,
    })?;
    let fmt_layer = match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_target(true).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
    };

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // `OTEL_EXPORTER_OTLP_ENDPOINT=` (set but empty, as compose files and shells
    // often leave it) means no export, not an invalid URI that stops the service.
    let endpoint = args
        .otlp_endpoint
        .as_deref()
        .map(str::trim)
        .filter(|endpoint| !endpoint.is_empty());
    let provider = match endpoint {
        Some(endpoint) => Some(otlp_provider(service, endpoint)?),
        None => None,
    };
    let otel_layer = provider.as_ref().map(|provider| {
        opentelemetry::global::set_tracer_provider(provider.clone());
        tracing_opentelemetry::layer().with_tracer(provider.tracer(service))
    });

    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()?;
    if let Some(endpoint) = endpoint {
        tracing::info!(%endpoint, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}

fn otlp_provider(
    service: &'static str,
    endpoint: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|source| TelemetryError::Exporter {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}
