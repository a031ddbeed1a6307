//! Load generator for a running plenum-ocr (scripts/bench-ocr.sh starts the service and
//! sets these figures beside RapidOCR's on the same inputs).
//!
//!   cargo run --release -p plenum-ocr --example bench_ocr -- ADDR read|recognize CALLERS SECONDS
//!
//! `read`: ReadText on tests/ocr/read/sheet.png (1280x960 drawing sheet), angle
//! classifier on. `recognize`: Recognize on the first 32 crops of tests/ocr (one call,
//! 32 crops), angle classifier on. CALLERS run closed loops for SECONDS after 2 warm-up
//! calls each; prints one JSON line: calls/s, p50/p99 latency, calls made.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use plenum_proto::ocr::v1::{self as pb, ocr_client::OcrClient};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3
}

#[derive(Clone)]
enum Call {
    Read(pb::ReadTextRequest),
    Recognize(pb::RecognizeRequest),
}

async fn call(client: &mut OcrClient<tonic::transport::Channel>, call: &Call) {
    match call {
        Call::Read(request) => {
            client.read_text(request.clone()).await.expect("ReadText");
        }
        Call::Recognize(request) => {
            client.recognize(request.clone()).await.expect("Recognize");
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (addr, mode) = (args[1].clone(), args[2].clone());
    let callers: usize = args[3].parse().unwrap();
    let seconds: f64 = args[4].parse().unwrap();
    let request = if mode == "read" {
        Call::Read(pb::ReadTextRequest {
            image: std::fs::read(repo().join("tests/ocr/read/sheet.png")).unwrap(),
            classify_angle: true,
            ignore_regions: vec![],
            read_within: vec![],
            join_broken_lines: false,
            read_turned: vec![],
        })
    } else {
        let mut names: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/ocr/crops"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        names.sort();
        Call::Recognize(pb::RecognizeRequest {
            crops: names[..32]
                .iter()
                .map(|p| std::fs::read(p).unwrap())
                .collect(),
            classify_angle: true,
        })
    };
    // The service may still be loading its models: wait for the port.
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    let channel = loop {
        match endpoint.connect().await {
            Ok(channel) => break channel,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let client = OcrClient::new(channel).max_decoding_message_size(64 << 20);
    let deadline = Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let mut client = client.clone();
            let request = request.clone();
            tokio::spawn(async move {
                for _ in 0..2 {
                    call(&mut client, &request).await;
                }
                let started = Instant::now();
                let mut latencies = Vec::new();
                while started.elapsed() < deadline {
                    let t = Instant::now();
                    call(&mut client, &request).await;
                    latencies.push(t.elapsed());
                }
                (latencies, started.elapsed())
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut rate = 0.0;
    for task in tasks {
        let (l, elapsed) = task.await.unwrap();
        rate += l.len() as f64 / elapsed.as_secs_f64();
        latencies.extend(l);
    }
    latencies.sort();
    println!(
        "{{\"side\":\"plenum-ocr\",\"mode\":\"{mode}\",\"callers\":{callers},\"calls_per_s\":{rate:.3},\"p50_ms\":{:.1},\"p99_ms\":{:.1},\"calls\":{}}}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.len()
    );
}
