//! The caller's deadline as gRPC carries it: the `grpc-timeout` header
//! (`<at most 8 digits><H|M|S|m|u|n>`), read the same way by every service.

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// How long the caller gave this call, from its `grpc-timeout` header; `None` when
/// there is none or it is malformed (the call then has no deadline of its own).
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    grpc_timeout_of(metadata.as_ref())
}

/// [`grpc_timeout`] on the raw headers of an HTTP request (inside a tower stack).
pub fn grpc_timeout_of(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    // The spec allows 8 digits; more is a malformed header, not a longer deadline.
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(value: &str) -> Option<Duration> {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", value.parse().unwrap());
        grpc_timeout(&metadata)
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parsed("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parsed("1M"), Some(Duration::from_secs(60)));
        assert_eq!(parsed("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parsed("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parsed("999999u"), Some(Duration::from_micros(999_999)));
        assert_eq!(parsed("5n"), Some(Duration::from_nanos(5)));
    }

    #[test]
    fn a_malformed_grpc_timeout_is_no_deadline() {
        for value in ["12x", "soon", "m", "123456789S", "-1S"] {
            assert_eq!(parsed(value), None, "{value}");
        }
        assert_eq!(grpc_timeout(&MetadataMap::new()), None);
    }
}
