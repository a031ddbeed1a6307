//! The crash the old system died of, replayed: a simulated 8 GiB GTX 1070 (1 GiB
//! reserved), the detector and the OCR service as real child processes placing their
//! models on it through the broker (`--device sim-gpu`: the lease protocol, CPU
//! compute) with a working-memory budget each, and a burst of large pages from
//! several callers at once — more than the card could hold if each page's work were
//! unbounded. Asserted: the granted leases (weights and work) never exceed the card;
//! every call is answered or refused cleanly with RESOURCE_EXHAUSTED; no process dies;
//! each service's peak resident memory stays within its documented budget (at rest
//! plus `--work-memory`, with a stated tolerance); the card, which measures what the
//! services report their passes allocate on it, never sees a service past its leases.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use image::{ImageEncoder, Rgb, RgbImage};
use plenum_proto::broker::v1::{self as pb, broker_client::BrokerClient};
use plenum_proto::detector::v1::{self as det, detector_client::DetectorClient};
use plenum_proto::ocr::v1::{self as ocr, ocr_client::OcrClient};
use support::{bin_dir, free_port};
use tokio::process::{Child, Command};
use tonic::Code;

const MIB: u64 = 1 << 20;
/// Each service's working-memory budget, and each model engine's work lease.
const WORK_MEMORY: u64 = 1536 * MIB;
/// What a service may hold above its resting size: its budget plus this share of it
/// (allocator slack, gRPC buffers, the encoded pages in flight).
const RSS_TOLERANCE: f64 = 0.25;
/// Pages per service sent at once, each by its own caller.
const CALLERS: usize = 3;
/// A large page: 16 MP (4000×4000), tiled by the detector, resized by OCR.
const SIDE: u32 = 4000;

fn spawn(bin: &Path, name: &str, args: &[String]) -> Child {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    Command::new(bin.join(name))
        .args(args)
        .args(["--log", "warn"])
        .current_dir(repo)
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .env("PLENUM_INTRA_OP_THREADS", "2")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("spawn {name}: {error}"))
}

/// `kB` field of `/proc/PID/status`, in bytes.
fn proc_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .expect("field present")
        * 1024
}

fn large_page() -> Vec<u8> {
    let mut image = RgbImage::from_pixel(SIDE, SIDE, Rgb([255, 255, 255]));
    for i in (0..SIDE).step_by(150) {
        for j in 0..SIDE {
            image.put_pixel(j, i, Rgb([0, 0, 0]));
            image.put_pixel(i, j, Rgb([0, 0, 0]));
        }
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut png,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::NoFilter,
    )
    .write_image(image.as_raw(), SIDE, SIDE, image::ExtendedColorType::Rgb8)
    .unwrap();
    png
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_large_pages_stays_within_the_card_and_every_budget() {
    let bin = bin_dir(&["plenum-broker", "plenum-detector", "plenum-ocr"]);
    let broker_addr = format!("127.0.0.1:{}", free_port());
    let broker_url = format!("http://{broker_addr}");
    let mut broker = spawn(
        &bin,
        "plenum-broker",
        &[
            "--listen".into(),
            broker_addr.clone(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--simulate".into(),
            "GTX 1070:8GiB".into(),
            "--reserve".into(),
            "1GiB".into(),
        ],
    );
    let service_args = |addr: &str| -> Vec<String> {
        vec![
            "--listen".into(),
            addr.into(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--broker".into(),
            broker_url.clone(),
            "--device".into(),
            "sim-gpu".into(),
            "--work-memory".into(),
            format!("{}MiB", WORK_MEMORY / MIB),
            "--work-wait".into(),
            "120s".into(),
        ]
    };
    let det_addr = format!("127.0.0.1:{}", free_port());
    let ocr_addr = format!("127.0.0.1:{}", free_port());
    let mut detector = spawn(&bin, "plenum-detector", &service_args(&det_addr));
    let mut ocr_service = spawn(&bin, "plenum-ocr", &service_args(&ocr_addr));
    let endpoint = |addr: &str| {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy()
    };
    let det_client = DetectorClient::new(endpoint(&det_addr)).max_decoding_message_size(64 << 20);
    let ocr_client = OcrClient::new(endpoint(&ocr_addr)).max_decoding_message_size(64 << 20);
    // SERVING once each service has loaded, profiled and placed its models.
    for addr in [&det_addr, &ocr_addr] {
        let channel = endpoint(addr);
        plenum_runtime::health::wait_serving(channel, Duration::from_secs(300))
            .await
            .expect("the service serves");
    }
    let det_pid = detector.id().unwrap();
    let ocr_pid = ocr_service.id().unwrap();
    let det_rest = proc_bytes(det_pid, "VmRSS");
    let ocr_rest = proc_bytes(ocr_pid, "VmRSS");
    for pid in [det_pid, ocr_pid] {
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    }

    // The broker's books, sampled through the burst: every over-booking seen.
    let mut books = BrokerClient::connect(broker_url.clone()).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    let watching = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut purposes = std::collections::BTreeSet::new();
        let mut overruns = Vec::new();
        let mut most_work_used = 0;
        while !stopped.is_cancelled() {
            let status = books
                .status(pb::StatusRequest {})
                .await
                .unwrap()
                .into_inner();
            seen.extend(over_booked(&status));
            purposes.extend(status.leases.iter().map(|lease| lease.purpose));
            overruns.extend(status.overruns.iter().map(|overrun| format!("{overrun:?}")));
            most_work_used = most_work_used.max(work_used(&status));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (seen, purposes, overruns, most_work_used)
    });

    let page = large_page();
    let mut calls = Vec::new();
    for _ in 0..CALLERS {
        let mut client = det_client.clone();
        let det_page = page.clone();
        calls.push(tokio::spawn(async move {
            client
                .detect(det::DetectRequest {
                    images: vec![det_page],
                    options: None,
                })
                .await
                .map(|_| ())
        }));
        let mut client = ocr_client.clone();
        let page = page.clone();
        calls.push(tokio::spawn(async move {
            client
                .read_text(ocr::ReadTextRequest {
                    image: page,
                    ..Default::default()
                })
                .await
                .map(|_| ())
        }));
    }
    let mut answered = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(()) => answered += 1,
            Err(status) => assert_eq!(
                status.code(),
                Code::ResourceExhausted,
                "a clean refusal or an answer, never {status:?}"
            ),
        }
    }
    stop.cancel();
    let (over, purposes, overruns, most_work_used) = watching.await.unwrap();
    eprintln!(
        "most working memory reported on the card at once: {} MiB",
        most_work_used / MIB
    );
    assert!(over.is_empty(), "the card was over-booked: {over:?}");
    // The simulated card measures what the services report their passes allocate
    // there: the work showed on it, and never outside the leases.
    assert!(
        most_work_used > 0,
        "the passes' working memory never showed on the simulated card"
    );
    assert!(
        overruns.is_empty(),
        "a service used more of the card than its leases: {overruns:?}"
    );
    assert!(
        purposes.contains(&(pb::LeasePurpose::Work as i32)),
        "the work is leased beside the weights: {purposes:?}"
    );
    assert!(answered > 0, "the burst was refused entirely");

    for (name, child) in [
        ("broker", &mut broker),
        ("detector", &mut detector),
        ("ocr", &mut ocr_service),
    ] {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the {name} died in the burst"
        );
    }
    for (name, pid, rest) in [("detector", det_pid, det_rest), ("ocr", ocr_pid, ocr_rest)] {
        let peak = proc_bytes(pid, "VmHWM");
        let bound = rest + (WORK_MEMORY as f64 * (1.0 + RSS_TOLERANCE)) as u64;
        assert!(
            peak <= bound,
            "{name}: peak {} MiB above its budget: {} MiB at rest + {} MiB work (+{}%)",
            peak / MIB,
            rest / MIB,
            WORK_MEMORY / MIB,
            RSS_TOLERANCE * 100.0
        );
    }
}

/// The working memory the services last reported their passes taking on the card.
fn work_used(status: &pb::StatusResponse) -> u64 {
    status
        .leases
        .iter()
        .filter(|lease| lease.purpose == pb::LeasePurpose::Work as i32)
        .filter_map(|lease| lease.used_bytes)
        .sum()
}

/// Devices whose granted leases exceed what may be leased (total − reserve).
fn over_booked(status: &pb::StatusResponse) -> Vec<String> {
    status
        .devices
        .iter()
        .filter_map(|device| {
            let granted: u64 = status
                .leases
                .iter()
                .filter(|lease| lease.device_index == device.index)
                .map(|lease| lease.granted_bytes)
                .sum();
            (granted > device.total_bytes - device.reserve_bytes).then(|| {
                format!(
                    "{granted} bytes granted on GPU {} of {} ({} reserved)",
                    device.index, device.total_bytes, device.reserve_bytes
                )
            })
        })
        .collect()
}
