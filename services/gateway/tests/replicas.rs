//! The real gateway on loopback against fake detectors: replicas found by DNS
//! join and leave the balancer without a restart, a failed resolution keeps the
//! pool, a replica whose health says NOT_SERVING gets no calls, and one that
//! leaves calls unanswered until their deadline is ejected.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use plenum_gateway::GatewaySettings;
use plenum_gateway::backend::{BackendSettings, Ejection};
use plenum_gateway::discovery::{Discovery, Resolver};
use plenum_proto::detector::v1 as det;
use plenum_proto::gateway::v1::{self as pb, TagMissingReason};
use plenum_proto::ocr::v1 as ocr;
use plenum_vision::decode::Limits;
use support::{Behaviour, FakeDns, FakeServer, Gateway, bx, png, start_gateway};
use tonic::Code;

/// Short, so replicas move within a test; every wait on it is bounded.
const INTERVAL: Duration = Duration::from_millis(20);

/// The real gateway over the fake backends, its detector replicas found through
/// `discovery`.
struct TestGateway(Gateway);

impl TestGateway {
    async fn start(detector: Vec<String>, discovery: Discovery, ocr: &FakeServer) -> Self {
        Self::start_with(detector, vec![ocr.url()], discovery, Ejection::default()).await
    }

    async fn start_with(
        detector: Vec<String>,
        ocr: Vec<String>,
        discovery: Discovery,
        ejection: Ejection,
    ) -> Self {
        let backend = |urls: Vec<String>| BackendSettings {
            urls,
            concurrency: 5,
            timeout: Duration::from_secs(10),
            discovery: discovery.clone(),
            ejection,
        };
        let settings = GatewaySettings {
            detector: backend(detector),
            ocr: backend(ocr),
            limits: Limits {
                max_bytes: 1 << 20,
                max_pixels: 4_000_000,
            },
            max_request_bytes: 4 << 20,
            max_concurrent_analyze: 64,
            stream_in_flight: 3,
            drain_timeout: Duration::from_millis(100),
        };
        Self(start_gateway(settings).await)
    }

    async fn analyze(&self) -> Result<pb::AnalyzeResponse, tonic::Status> {
        self.analyze_request(Self::request()).await
    }

    /// One call the client gives `deadline`.
    async fn analyze_within(
        &self,
        deadline: Duration,
    ) -> Result<pb::AnalyzeResponse, tonic::Status> {
        let mut request = Self::request();
        request.set_timeout(deadline);
        self.analyze_request(request).await
    }

    fn request() -> tonic::Request<pb::AnalyzeRequest> {
        tonic::Request::new(pb::AnalyzeRequest {
            image: png(32, 32),
            options: Some(Default::default()),
            request_id: "r".into(),
        })
    }

    async fn analyze_request(
        &self,
        request: tonic::Request<pb::AnalyzeRequest>,
    ) -> Result<pb::AnalyzeResponse, tonic::Status> {
        self.0
            .client
            .clone()
            .analyze(request)
            .await
            .map(|r| r.into_inner())
    }

    /// `n` calls one after the other; all must succeed.
    async fn analyze_n(&self, n: usize) {
        for _ in 0..n {
            self.analyze().await.unwrap();
        }
    }

    /// The detector's replicas the gateway balances over, with `health` or any.
    fn detectors(&self, health: Option<&str>) -> i64 {
        self.replicas("detector", health)
    }

    /// `backend`'s replicas the gateway balances over, with `health` or any.
    fn replicas(&self, backend: &str, health: Option<&str>) -> i64 {
        plenum_runtime::metrics::render(&self.0.registry)
            .lines()
            .filter(|line| line.starts_with("plenum_gateway_backend_replicas{"))
            .filter(|line| line.contains(&format!("backend=\"{backend}\"")))
            .filter(|line| health.is_none_or(|h| line.contains(&format!("health=\"{h}\""))))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<i64>().ok())
            .sum()
    }

    /// Waits (bounded) until the gateway has `n` detector replicas with `health`.
    async fn wait_detectors(&self, health: Option<&str>, n: i64) {
        until(&format!("{n} detector replicas ({health:?})"), || {
            self.detectors(health) == n
        })
        .await;
    }
}

/// Polls `done` until it holds; fails the test after 10 s.
async fn until(what: &str, done: impl Fn() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

fn detector() -> (Arc<Behaviour>, FakeServer) {
    let behaviour = Behaviour::new();
    let server = FakeServer::detector(behaviour.clone(), vec![]);
    (behaviour, server)
}

fn ocr() -> FakeServer {
    FakeServer::ocr(Behaviour::new(), vec![])
}

fn addrs(servers: &[&FakeServer]) -> Vec<SocketAddr> {
    servers.iter().map(|server| server.addr).collect()
}

#[tokio::test]
async fn replicas_found_by_dns_join_and_leave_without_a_restart() {
    let (a_calls, a) = detector();
    let (b_calls, b) = detector();
    let ocr = ocr();
    let dns = FakeDns::new(&addrs(&[&a]));
    let discovery = Discovery {
        resolver: Resolver::from(dns.clone()),
        interval: INTERVAL,
    };
    let gw = TestGateway::start(
        vec!["dns://detector.plenum.svc:7002".into()],
        discovery,
        &ocr,
    )
    .await;

    gw.wait_detectors(None, 1).await;
    gw.analyze_n(10).await;
    assert_eq!(a_calls.calls(), 10);

    // B appears in DNS: it gets calls, with no restart.
    dns.answer(&addrs(&[&a, &b]));
    gw.wait_detectors(None, 2).await;
    for _ in 0..200 {
        if b_calls.calls() > 0 {
            break;
        }
        gw.analyze().await.unwrap();
    }
    assert!(b_calls.calls() > 0, "B never got a call");

    // DNS fails: the pool stays as it was, both still get calls.
    dns.fail("SERVFAIL");
    let asked = dns.asked();
    dns.wait_asked(asked + 2).await;
    assert_eq!(gw.detectors(None), 2, "a failed lookup changed the pool");
    let (a_before, b_before) = (a_calls.calls(), b_calls.calls());
    gw.analyze_n(40).await;
    assert!(a_calls.calls() > a_before, "A left on a failed lookup");
    assert!(b_calls.calls() > b_before, "B left on a failed lookup");

    // A leaves DNS: it gets no more calls.
    dns.answer(&addrs(&[&b]));
    gw.wait_detectors(None, 1).await;
    let (a_before, b_before) = (a_calls.calls(), b_calls.calls());
    gw.analyze_n(20).await;
    assert_eq!(a_calls.calls(), a_before, "A got calls after it left DNS");
    assert_eq!(b_calls.calls(), b_before + 20);
}

#[tokio::test]
async fn a_name_with_no_address_is_unavailable_at_once_until_one_returns() {
    let (b_calls, b) = detector();
    let ocr = ocr();
    let dns = FakeDns::new(&[]);
    let discovery = Discovery {
        resolver: Resolver::from(dns.clone()),
        interval: INTERVAL,
    };
    let gw = TestGateway::start(vec!["dns://detector:7002".into()], discovery, &ocr).await;
    dns.wait_asked(1).await;

    // Not DEADLINE_EXCEEDED: the call does not wait out the 10 s backend timeout.
    let status = gw.analyze().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    dns.answer(&addrs(&[&b]));
    gw.wait_detectors(None, 1).await;
    gw.analyze_n(3).await;
    assert_eq!(b_calls.calls(), 3);

    // The name empties again: unavailable again, the gateway still serving.
    dns.answer(&[]);
    gw.wait_detectors(None, 0).await;
    let status = gw.analyze().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn a_replica_that_reports_not_serving_gets_no_calls_until_it_serves_again() {
    let (a_calls, a) = detector();
    let (b_calls, b) = detector();
    let ocr = ocr();
    let gw = TestGateway::start(vec![a.url(), b.url()], Discovery::default(), &ocr).await;
    gw.wait_detectors(Some("serving"), 2).await;

    a.set_serving(false).await;
    gw.wait_detectors(Some("not_serving"), 1).await;
    let (a_before, b_before) = (a_calls.calls(), b_calls.calls());
    gw.analyze_n(20).await;
    assert_eq!(a_calls.calls(), a_before, "A got calls while NOT_SERVING");
    assert_eq!(b_calls.calls(), b_before + 20);

    a.set_serving(true).await;
    gw.wait_detectors(Some("serving"), 2).await;
    let a_before = a_calls.calls();
    gw.analyze_n(40).await;
    assert!(
        a_calls.calls() > a_before,
        "A got no calls once SERVING again"
    );
}

#[tokio::test]
async fn when_every_replica_is_not_serving_calls_fail_fast_and_reach_none() {
    let (a_calls, a) = detector();
    let (b_calls, b) = detector();
    let ocr = ocr();
    let gw = TestGateway::start(vec![a.url(), b.url()], Discovery::default(), &ocr).await;
    gw.wait_detectors(Some("serving"), 2).await;

    a.set_serving(false).await;
    b.set_serving(false).await;
    gw.wait_detectors(Some("not_serving"), 2).await;
    // UNAVAILABLE, not the backend timeout's DEADLINE_EXCEEDED.
    let status = gw.analyze().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(a_calls.calls() + b_calls.calls(), 0);

    b.set_serving(true).await;
    gw.wait_detectors(Some("serving"), 1).await;
    gw.analyze_n(5).await;
    assert_eq!(b_calls.calls(), 5);
}

#[tokio::test]
async fn a_replica_without_a_health_service_is_trusted() {
    let a_calls = Behaviour::new();
    let a = FakeServer::detector_without_health(a_calls.clone(), vec![]);
    let (b_calls, b) = detector();
    let ocr = ocr();
    let gw = TestGateway::start(vec![a.url(), b.url()], Discovery::default(), &ocr).await;
    gw.wait_detectors(Some("unwatched"), 1).await;
    gw.wait_detectors(Some("serving"), 1).await;
    gw.analyze_n(40).await;
    assert!(a_calls.calls() > 0, "A, without health, got no calls");
    assert!(b_calls.calls() > 0);
}

#[tokio::test]
async fn the_system_resolver_finds_a_replica_by_name() {
    let (a_calls, a) = detector();
    let ocr = ocr();
    // `localhost` is in every hosts file; an address it also names (::1) where
    // nothing listens is unreachable and out of the balancer.
    let target = format!("dns://localhost:{}", a.addr.port());
    let gw = TestGateway::start(vec![target], Discovery::default(), &ocr).await;
    until("localhost resolved", || gw.detectors(None) >= 1).await;
    gw.analyze_n(3).await;
    assert_eq!(a_calls.calls(), 3);
}

/// A symbol and its tag beside it: a call that OCR answered carries the tag.
fn symbol_and_tag() -> (det::Detection, ocr::TextLine) {
    (
        det::Detection {
            r#box: bx(100.0, 100.0, 122.0, 140.0),
            class_name: "vav_box".into(),
            score: 0.9,
        },
        ocr::TextLine {
            quad: None,
            r#box: bx(127.0, 115.0, 175.0, 125.0),
            text: "VAV-203".into(),
            score: 0.95,
            direction: ocr::ReadingDirection::LeftToRight as i32,
        },
    )
}

/// A hung OCR replica (a stopped process) keeps its connection and its health
/// stays SERVING: only its silence gives it away. The calls go one at a time, so
/// the balancer never sees the hung replica busier than its sibling and keeps
/// sending it about half of them, unless silence ejects it.
#[tokio::test]
async fn an_ocr_replica_that_leaves_calls_unanswered_is_ejected_after_a_few() {
    let (symbol, tag) = symbol_and_tag();
    let detector = FakeServer::detector(Behaviour::new(), vec![symbol]);
    let (hung_calls, healthy_calls) = (Behaviour::new(), Behaviour::new());
    hung_calls.set_delay(Duration::from_secs(3600));
    let hung = FakeServer::ocr(hung_calls.clone(), vec![tag.clone()]);
    let healthy = FakeServer::ocr(healthy_calls.clone(), vec![tag]);
    // Out for longer than the test runs, so what follows does not depend on speed.
    let ejection = Ejection {
        duration: Duration::from_secs(3600),
        after_timeouts: 3,
    };
    let gw = TestGateway::start_with(
        vec![detector.url()],
        vec![hung.url(), healthy.url()],
        Discovery::default(),
        ejection,
    )
    .await;
    until("both OCR replicas serving", || {
        gw.replicas("ocr", Some("serving")) == 2
    })
    .await;
    let deadline = Duration::from_secs(1);

    // Until the hung replica has had its three calls, each of those comes back
    // without its tag, timed out, and every other call with it.
    let mut timed_out = 0;
    for _ in 0..200 {
        if hung_calls.calls() == 3 {
            break;
        }
        let [symbol] =
            <[_; 1]>::try_from(gw.analyze_within(deadline).await.unwrap().symbols).unwrap();
        if symbol.tag.is_empty() {
            assert_eq!(symbol.tag_missing_reason(), TagMissingReason::OcrTimedOut);
            timed_out += 1;
        } else {
            assert_eq!(symbol.tag, "VAV-203");
        }
    }
    assert_eq!(hung_calls.calls(), 3, "the hung replica got too few calls");
    assert_eq!(timed_out, 3);

    // Ejected: every later call is read by the healthy replica and has its tag.
    let healthy_before = healthy_calls.calls();
    for call in 0..40 {
        let response = gw.analyze_within(deadline).await.unwrap();
        assert_eq!(
            response.symbols[0].tag, "VAV-203",
            "call {call} after the ejection: {:?}",
            response.symbols[0]
        );
    }
    assert_eq!(hung_calls.calls(), 3, "the ejected replica got calls");
    assert_eq!(healthy_calls.calls(), healthy_before + 40);
}
