//! `plenum-gpu-check burst`: the old system's crash replayed on a real GPU (issue 10).
//! The broker on NVML, the detector and the OCR service as child processes on `cuda`,
//! and a burst of large pages from several callers at once. NVML is sampled every
//! 100 ms: each service process's measured device memory against the sum of its
//! granted leases. Then one deliberate over-allocation: a detection with tiling off on
//! the largest page one pass accepts, which must be answered within the detector's
//! leases (measured by the sampler), from the CPU when it runs out of CUDA memory past
//! its allocator cap (the CPU fallback, counted in its metrics), or come back as
//! `RESOURCE_EXHAUSTED`, while the process serves on. Whether it runs past the cap
//! depends on the leases the detector holds: on the first H200 run it held 1.23 GiB
//! (its weights, the verifier's, byte-admitted work memory) and the pass fit.
//!
//! Fails when a process measured more than its leases plus `--tolerance` (the CUDA
//! context, which no lease books), when a call got anything but an answer or a clean
//! `RESOURCE_EXHAUSTED`, when the over-allocation failed otherwise or left the detector
//! unable to answer a small page, or when a process died. `--simulate SPEC` runs the same against a simulated card (services on
//! `sim-gpu`, "measured" being what they report), to try the check without a GPU.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::{ImageEncoder, Rgb, RgbImage};
use plenum_broker::inventory::{Inventory, Nvml};
use plenum_proto::broker::v1::{self as pb, broker_client::BrokerClient};
use plenum_proto::detector::v1::{self as det, detector_client::DetectorClient};
use plenum_proto::ocr::v1::{self as ocr, ocr_client::OcrClient};
use plenum_runtime::bytes::format_bytes;
use tokio::process::{Child, Command};
use tonic::Code;

#[derive(Debug, clap::Args)]
pub struct BurstArgs {
    /// Folder holding plenum-broker, plenum-detector and plenum-ocr.
    #[arg(long, default_value = "out/gpu-check")]
    bin: PathBuf,
    /// Callers per service, each sending one large page at once.
    #[arg(long, default_value_t = 3)]
    callers: usize,
    /// Side of the large square pages, in pixels.
    #[arg(long, default_value_t = 4000)]
    side: u32,
    /// How far a process may measure above its leases: the CUDA context and libraries'
    /// own buffers, which no lease books.
    #[arg(long, default_value = "512MiB", value_parser = plenum_runtime::bytes::parse_bytes)]
    tolerance: u64,
    /// A simulated card instead of NVML (e.g. "GTX 1070:8GiB"): services on sim-gpu.
    #[arg(long)]
    simulate: Option<String>,
}

/// The worst a service process was seen past its leases, over the whole run.
#[derive(Debug, Default, Clone, Copy)]
struct Worst {
    granted: u64,
    measured: u64,
    excess: u64,
}

pub async fn run(args: BurstArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    for name in ["plenum-broker", "plenum-detector", "plenum-ocr"] {
        anyhow::ensure!(
            args.bin.join(name).is_file(),
            "{name} is not in {} (scripts/gpu-check.sh --build puts it there)",
            args.bin.display()
        );
    }
    let nvml = match &args.simulate {
        Some(_) => None,
        None => Some(Arc::new(Nvml::open().map_err(|error| {
            anyhow::anyhow!("no NVML here ({error}): the burst needs an NVIDIA GPU, or --simulate")
        })?)),
    };
    let broker_addr = format!("127.0.0.1:{}", free_port()?);
    let broker_url = format!("http://{broker_addr}");
    let mut broker_args = vec![
        "--listen".to_owned(),
        broker_addr,
        "--metrics-listen".to_owned(),
        format!("127.0.0.1:{}", free_port()?),
        "--poll-interval".to_owned(),
        "100ms".to_owned(),
    ];
    if let Some(spec) = &args.simulate {
        broker_args.extend(["--simulate".to_owned(), spec.clone()]);
        broker_args.extend(["--reserve".to_owned(), "1GiB".to_owned()]);
    }
    let mut broker = spawn(&args.bin, "plenum-broker", &broker_args)?;
    let device = if args.simulate.is_some() {
        "sim-gpu"
    } else {
        "cuda"
    };
    let det_addr = format!("127.0.0.1:{}", free_port()?);
    let ocr_addr = format!("127.0.0.1:{}", free_port()?);
    let det_metrics = format!("127.0.0.1:{}", free_port()?);
    let ocr_metrics = format!("127.0.0.1:{}", free_port()?);
    let service_args = |addr: &str, metrics: &str| -> Vec<String> {
        vec![
            "--listen".into(),
            addr.into(),
            "--metrics-listen".into(),
            metrics.into(),
            "--broker".into(),
            broker_url.clone(),
            "--device".into(),
            device.into(),
            "--work-wait".into(),
            "60s".into(),
        ]
    };
    let mut detector = spawn(
        &args.bin,
        "plenum-detector",
        &service_args(&det_addr, &det_metrics),
    )?;
    let mut ocr_service = spawn(
        &args.bin,
        "plenum-ocr",
        &service_args(&ocr_addr, &ocr_metrics),
    )?;
    let endpoint = |addr: &str| {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("a valid address")
            .connect_lazy()
    };
    for addr in [&det_addr, &ocr_addr] {
        plenum_runtime::health::wait_serving(endpoint(addr), Duration::from_secs(180))
            .await
            .map_err(|error| anyhow::anyhow!("{addr} did not serve: {error}"))?;
    }
    let pids = HashMap::from([
        (child_pid(&detector)?, "detector"),
        (child_pid(&ocr_service)?, "ocr"),
    ]);
    println!(
        "services on {device}, serving after {:.0?}",
        started.elapsed()
    );

    let stop = tokio_util::sync::CancellationToken::new();
    let sampling = tokio::spawn(sample(
        BrokerClient::connect(broker_url.clone()).await?,
        nvml,
        pids.clone(),
        stop.clone(),
    ));

    let page = large_page(args.side)?;
    let det_client = DetectorClient::new(endpoint(&det_addr)).max_decoding_message_size(64 << 20);
    let ocr_client = OcrClient::new(endpoint(&ocr_addr)).max_decoding_message_size(64 << 20);
    let mut calls = Vec::new();
    for _ in 0..args.callers {
        let (mut client, det_page) = (det_client.clone(), page.clone());
        calls.push(tokio::spawn(async move {
            let request = det::DetectRequest {
                images: vec![det_page],
                options: None,
            };
            client.detect(request).await.map(|_| ())
        }));
        let (mut client, ocr_page) = (ocr_client.clone(), page.clone());
        calls.push(tokio::spawn(async move {
            let request = ocr::ReadTextRequest {
                image: ocr_page,
                ..Default::default()
            };
            client.read_text(request).await.map(|_| ())
        }));
    }
    let mut answers: HashMap<String, usize> = HashMap::new();
    let mut unclean = Vec::new();
    for call in calls {
        match call.await? {
            Ok(()) => *answers.entry("ok".into()).or_default() += 1,
            Err(status) if status.code() == Code::ResourceExhausted => {
                *answers.entry("RESOURCE_EXHAUSTED".into()).or_default() += 1
            }
            Err(status) => unclean.push(format!("{:?}: {}", status.code(), status.message())),
        }
    }
    println!(
        "burst: {} callers per service, {0}×2 pages of {}²: {answers:?}",
        args.callers, args.side
    );

    let over_allocation = over_allocate(det_client.clone(), &det_metrics).await?;
    println!("over-allocation (one {OVER_SIDE}² pass, tiling off): {over_allocation}");
    stop.cancel();
    let worst = sampling.await??;

    println!();
    println!(
        "{:<10} {:>14} {:>14} {:>14}",
        "service", "granted", "measured", "past leases"
    );
    for (name, worst) in &worst {
        println!(
            "{name:<10} {:>14} {:>14} {:>14}",
            format_bytes(worst.granted),
            format_bytes(worst.measured),
            format_bytes(worst.excess)
        );
    }
    let mut failures = unclean;
    for (name, worst) in &worst {
        if worst.excess > args.tolerance {
            failures.push(format!(
                "{name} measured {} past its leases (tolerance {})",
                format_bytes(worst.excess),
                format_bytes(args.tolerance)
            ));
        }
    }
    // Answered on the GPU is clean when it stayed within the leases, which the sampler
    // checked above (an earlier version required the pass to overrun the cap, assuming
    // 512 MiB of leases; the detector's leases grew and the premise no longer held).
    // On a simulated card the engine asks for a peak lease instead (CPU compute).
    let served_on = !over_allocation.contains(", but then a small page failed");
    let clean = served_on
        && (over_allocation.starts_with("refused") || over_allocation.starts_with("answered"));
    if !clean {
        failures.push(format!(
            "the over-allocation was not refused in-request: {over_allocation}"
        ));
    }
    for (name, child) in [
        ("broker", &mut broker),
        ("detector", &mut detector),
        ("ocr", &mut ocr_service),
    ] {
        if let Some(status) = child.try_wait()? {
            failures.push(format!("the {name} died: {status}"));
        }
    }
    println!("burst check done in {:.0?}", started.elapsed());
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("; "));
    Ok(())
}

/// Every 100 ms until `stop`: each service process's device memory (NVML, or on a
/// simulated card what it reports) against its granted leases; the worst excess each.
async fn sample(
    mut broker: BrokerClient<tonic::transport::Channel>,
    nvml: Option<Arc<Nvml>>,
    pids: HashMap<u32, &'static str>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<HashMap<&'static str, Worst>> {
    let mut worst: HashMap<&'static str, Worst> = HashMap::new();
    while !stop.is_cancelled() {
        let status = broker.status(pb::StatusRequest {}).await?.into_inner();
        let mut granted: HashMap<u32, u64> = HashMap::new();
        let mut reported: HashMap<u32, u64> = HashMap::new();
        for lease in &status.leases {
            let Some(pid) = lease.holder.as_ref().map(|holder| holder.pid) else {
                continue;
            };
            *granted.entry(pid).or_default() += lease.granted_bytes;
            *reported.entry(pid).or_default() += lease.used_bytes.unwrap_or(lease.granted_bytes);
        }
        let measured = match &nvml {
            Some(nvml) => {
                let nvml = Arc::clone(nvml);
                let usage = tokio::task::spawn_blocking(move || nvml.measure(&[])).await??;
                let mut per_pid: HashMap<u32, u64> = HashMap::new();
                for device in usage {
                    for (pid, bytes) in device.processes {
                        *per_pid.entry(pid).or_default() += bytes;
                    }
                }
                per_pid
            }
            None => reported,
        };
        for (&pid, &name) in &pids {
            let granted = granted.get(&pid).copied().unwrap_or(0);
            let measured = measured.get(&pid).copied().unwrap_or(0);
            let entry = worst.entry(name).or_default();
            let excess = measured.saturating_sub(granted);
            // The sample furthest past the leases; while none is, the largest.
            if (excess, measured) > (entry.excess, entry.measured) {
                *entry = Worst {
                    granted,
                    measured,
                    excess,
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(worst)
}

/// The largest single pass the detector accepts: input_size's upper bound.
const OVER_SIDE: u32 = 4096;

/// One detection of a 4096² page in one pass (tiling off). Its first two convolutions'
/// outputs and the input alone take ~600 MB in fp32 (arithmetic on the layer shapes, not
/// measured on a card): past the detector's allocator cap when its leases are smaller.
/// "refused: …" when it came back RESOURCE_EXHAUSTED, "answered on the CPU" when the
/// detector's metrics counted a CPU fallback for it, "answered" when on the GPU; then
/// whether the detector still answers a small page.
async fn over_allocate(
    mut client: DetectorClient<tonic::transport::Channel>,
    metrics: &str,
) -> anyhow::Result<String> {
    let fallbacks_before = cpu_fallbacks(metrics).await?;
    let request = det::DetectRequest {
        images: vec![large_page(OVER_SIDE)?],
        options: Some(det::DetectOptions {
            tiling: det::Tiling::Off as i32,
            input_size: OVER_SIDE,
            ..Default::default()
        }),
    };
    let outcome = match client.detect(request).await {
        Ok(_) if cpu_fallbacks(metrics).await? > fallbacks_before => {
            "answered on the CPU (a CPU fallback)".to_owned()
        }
        Ok(_) => "answered".to_owned(),
        Err(status) if status.code() == Code::ResourceExhausted => {
            format!("refused: {}", status.message())
        }
        Err(status) => return Ok(format!("{:?}: {}", status.code(), status.message())),
    };
    let small = det::DetectRequest {
        images: vec![large_page(640)?],
        options: None,
    };
    match client.detect(small).await {
        Ok(_) => Ok(outcome),
        Err(status) => Ok(format!(
            "{outcome}, but then a small page failed: {status:?}"
        )),
    }
}

/// The detector's `plenum_detector_cpu_fallbacks_total`, from its metrics endpoint.
async fn cpu_fallbacks(metrics: &str) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(metrics).await?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {metrics}\r\n\r\n").as_bytes())
        .await?;
    let mut page = String::new();
    stream.read_to_string(&mut page).await?;
    Ok(page
        .lines()
        .filter(|line| line.starts_with("plenum_detector_cpu_fallbacks_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

fn spawn(bin: &Path, name: &str, args: &[String]) -> anyhow::Result<Child> {
    Command::new(bin.join(name))
        .args(args)
        .args(["--log", "warn"])
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| anyhow::anyhow!("cannot start {name}: {error}"))
}

fn child_pid(child: &Child) -> anyhow::Result<u32> {
    child
        .id()
        .ok_or_else(|| anyhow::anyhow!("a service exited at start"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A white page with a grid of black lines: large to decode, small on the wire.
fn large_page(side: u32) -> anyhow::Result<Vec<u8>> {
    let mut image = RgbImage::from_pixel(side, side, Rgb([255, 255, 255]));
    for i in (0..side).step_by(150) {
        for j in 0..side {
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
    .write_image(image.as_raw(), side, side, image::ExtendedColorType::Rgb8)?;
    Ok(png)
}
