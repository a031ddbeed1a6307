//! `plenum up`: the whole stack on one machine as child processes, in dependency
//! order (broker, then the model services, then the gateway), each waited on until
//! its health check says SERVING. Ctrl-C stops them all, gateway first so no call is
//! cut off in the middle; if one dies, the others are stopped too rather than left
//! serving a stack with a hole in it.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::health;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where the service binaries are (default: beside this `plenum` binary).
    #[arg(long, env = "PLENUM_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// The gateway's address: the one port callers need.
    #[arg(long, default_value = "127.0.0.1:7000")]
    gateway: String,
    #[arg(long, default_value = "127.0.0.1:7001")]
    broker: String,
    #[arg(long, default_value = "127.0.0.1:7002")]
    detector: String,
    #[arg(long, default_value = "127.0.0.1:7003")]
    ocr: String,
    /// Metrics ports: gateway on this one, broker, detector and OCR on the next three
    /// (0: each service picks a free port).
    #[arg(long, default_value_t = 9100)]
    metrics_port_base: u16,
    /// Pretend the machine has this GPU (e.g. "GTX 1070:8GiB"): leases are real,
    /// compute stays on the CPU. Without it the broker asks NVML, and with no GPU
    /// every model runs on the CPU.
    #[arg(long)]
    simulate_gpu: Option<String>,
    /// Folder holding the models (default: the services find `models/` themselves).
    #[arg(long, env = "PLENUM_MODELS")]
    models: Option<PathBuf>,
    /// Log level for the services.
    #[arg(long, default_value = "info")]
    log: String,
    /// Where each service's log goes (`<name>.log`); default: a new temporary folder.
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// How long a service may take to become SERVING (models load and warm up).
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    ready_timeout: Duration,
    /// How long stopping services may take before they are killed.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    stop_timeout: Duration,
}

/// One running service.
struct Service {
    name: &'static str,
    listen: String,
    metrics: String,
    child: Child,
    log: PathBuf,
}

impl Service {
    fn pid(&self) -> Option<i32> {
        self.child.id().and_then(|id| i32::try_from(id).ok())
    }
}

pub async fn run(args: UpArgs, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the plenum binary has no folder")?
            .to_path_buf(),
    };
    let log_dir = match &args.log_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("plenum-up-{}", std::process::id())),
    };
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;

    let mut stack = Stack {
        services: Vec::new(),
        stop_timeout: args.stop_timeout,
    };
    let outcome = start_and_watch(&args, &bin_dir, &log_dir, &mut stack, &shutdown).await;
    stack.stop_all().await;
    match outcome {
        Ok(()) => {
            println!("all services stopped");
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => Err(error),
    }
}

async fn start_and_watch(
    args: &UpArgs,
    bin_dir: &Path,
    log_dir: &Path,
    stack: &mut Stack,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let broker_url = format!("http://{}", args.broker);
    let mut broker_args = vec![];
    if let Some(gpu) = &args.simulate_gpu {
        broker_args.extend(["--simulate".to_owned(), gpu.clone()]);
    }
    let mut model_args = vec!["--broker".to_owned(), broker_url];
    if args.simulate_gpu.is_some() {
        // A simulated GPU has no CUDA behind it: leases are real, compute stays on the CPU.
        model_args.extend(["--device".to_owned(), "sim-gpu".to_owned()]);
    }
    if let Some(models) = &args.models {
        model_args.extend(["--models".to_owned(), models.display().to_string()]);
    }
    let gateway_args = vec![
        "--detector".to_owned(),
        format!("http://{}", args.detector),
        "--ocr".to_owned(),
        format!("http://{}", args.ocr),
    ];

    let metrics = |offset: u16| match args.metrics_port_base {
        0 => "127.0.0.1:0".to_owned(),
        base => format!("127.0.0.1:{}", base.saturating_add(offset)),
    };
    // Each wave starts together and must be SERVING before the next one starts.
    let waves = [
        vec![Plan::new(
            "plenum-broker",
            &args.broker,
            metrics(1),
            broker_args,
        )],
        vec![
            Plan::new(
                "plenum-detector",
                &args.detector,
                metrics(2),
                model_args.clone(),
            ),
            Plan::new("plenum-ocr", &args.ocr, metrics(3), model_args),
        ],
        vec![Plan::new(
            "plenum-gateway",
            &args.gateway,
            metrics(0),
            gateway_args,
        )],
    ];
    for wave in waves {
        let first = stack.services.len();
        for plan in wave {
            let service = spawn(bin_dir, log_dir, &plan, &args.log)
                .with_context(|| format!("cannot start {}", plan.name))?;
            println!(
                "starting {} on {} (log: {})",
                plan.name,
                plan.listen,
                service.log.display()
            );
            stack.services.push(service);
        }
        tokio::select! {
            ready = stack.wait_ready(first, args.ready_timeout) => ready?,
            () = shutdown.cancelled() => return Ok(()),
        }
    }

    println!();
    println!(
        "{:<16} {:<22} {:<22} {:>8}",
        "SERVICE", "GRPC", "METRICS", "PID"
    );
    for service in &stack.services {
        println!(
            "{:<16} {:<22} {:<22} {:>8}",
            service.name,
            service.listen,
            format!("http://{}/metrics", service.metrics),
            service.pid().unwrap_or_default()
        );
    }
    println!();
    println!(
        "ready: try `plenum analyze tests/pages/page_0000.png --gateway {}`; Ctrl-C stops everything",
        args.gateway
    );

    tokio::select! {
        () = shutdown.cancelled() => {
            println!("stopping (Ctrl-C)");
            Ok(())
        }
        died = stack.first_exit() => {
            let (name, how, log) = died;
            bail!(
                "{name} exited ({how}); stopping the rest. Last lines of {}:\n{}",
                log.display(),
                tail(&log, 15)
            )
        }
    }
}

/// What to start: a binary, its two ports and its own flags.
struct Plan {
    name: &'static str,
    listen: String,
    metrics: String,
    args: Vec<String>,
}

impl Plan {
    fn new(name: &'static str, listen: &str, metrics: String, args: Vec<String>) -> Self {
        Self {
            name,
            listen: listen.to_owned(),
            metrics,
            args,
        }
    }
}

fn spawn(bin_dir: &Path, log_dir: &Path, plan: &Plan, log_level: &str) -> anyhow::Result<Service> {
    let Plan {
        name,
        listen,
        metrics,
        args,
    } = plan;
    let program = bin_dir.join(name);
    if !program.exists() {
        bail!(
            "{} not found (build with `cargo build --release --workspace --bins`, or pass --bin-dir)",
            program.display()
        );
    }
    let log = log_dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log)?;
    let child = Command::new(&program)
        .args([
            "--listen",
            listen,
            "--metrics-listen",
            metrics,
            "--log",
            log_level,
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        // A panic or an early return here must not leave orphans behind.
        .kill_on_drop(true)
        .spawn()?;
    Ok(Service {
        name,
        listen: listen.clone(),
        metrics: metrics.clone(),
        child,
        log,
    })
}

struct Stack {
    services: Vec<Service>,
    stop_timeout: Duration,
}

impl Stack {
    /// Waits until services from `first` on are SERVING; fails at once if one exits.
    async fn wait_ready(&mut self, first: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for index in first..self.services.len() {
            loop {
                let service = &mut self.services[index];
                if let Some(status) = service.child.try_wait()? {
                    bail!(
                        "{} exited while starting ({status}). Last lines of {}:\n{}",
                        service.name,
                        service.log.display(),
                        tail(&service.log, 15)
                    );
                }
                if health::is_serving(&service.listen, Duration::from_secs(1)).await {
                    println!("{} is SERVING", service.name);
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{} is not SERVING after {timeout:?}; see {}",
                        service.name,
                        service.log.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// The first service to exit, with how and where its log is.
    async fn first_exit(&mut self) -> (&'static str, String, PathBuf) {
        let waits = self.services.iter_mut().map(|service| {
            Box::pin(async move {
                let how = match service.child.wait().await {
                    Ok(status) => status.to_string(),
                    Err(error) => format!("cannot be waited on: {error}"),
                };
                (service.name, how, service.log.clone())
            })
        });
        let (died, _, _) = futures::future::select_all(waits).await;
        died
    }

    /// SIGTERM in reverse start order (each drains its calls), SIGKILL after the timeout.
    async fn stop_all(&mut self) {
        for service in self.services.iter_mut().rev() {
            let Some(pid) = service.pid() else { continue };
            if kill(Pid::from_raw(pid), Signal::SIGTERM).is_err() {
                continue;
            }
            match tokio::time::timeout(self.stop_timeout, service.child.wait()).await {
                Ok(_) => println!("{} stopped", service.name),
                Err(_) => {
                    eprintln!(
                        "{} did not stop within {:?}; killing it",
                        service.name, self.stop_timeout
                    );
                    let _ = service.child.kill().await;
                }
            }
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
