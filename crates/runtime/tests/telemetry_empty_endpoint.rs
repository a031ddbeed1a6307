//! An `OTEL_EXPORTER_OTLP_ENDPOINT` that is set but empty (compose files and shells
//! leave it so) means "no export"; it once stopped every service with "invalid URI".
//! Its own test binary: telemetry installs the process-wide subscriber once.

use plenum_runtime::config::{LogFormat, TelemetryArgs};

#[test]
fn an_empty_otlp_endpoint_starts_without_export() {
    let args = TelemetryArgs {
        log_filter: "warn".into(),
        log_format: LogFormat::Text,
        otlp_endpoint: Some("  ".into()),
    };
    let telemetry = plenum_runtime::telemetry::init("empty-endpoint-test", &args)
        .expect("an empty endpoint is no endpoint");
    drop(telemetry);
}
