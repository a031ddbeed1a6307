//! `plenum up` with the real service binaries as real child processes: it waits
//! until every service is SERVING, stops them all on Ctrl-C, and when one dies it
//! stops the rest instead of leaving a stack with a hole in it.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{bin_dir, free_port};

const READY_TIMEOUT: Duration = Duration::from_secs(400);

struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Up {
    fn start() -> Self {
        let log_dir = tempfile::tempdir().unwrap().keep();
        let mut child = Command::new(env!("CARGO_BIN_EXE_plenum"))
            .arg("up")
            .arg("--bin-dir")
            .arg(bin_dir(&[
                "plenum-broker",
                "plenum-detector",
                "plenum-ocr",
                "plenum-gateway",
            ]))
            .args(["--gateway", &format!("127.0.0.1:{}", free_port())])
            .args(["--broker", &format!("127.0.0.1:{}", free_port())])
            .args(["--detector", &format!("127.0.0.1:{}", free_port())])
            .args(["--ocr", &format!("127.0.0.1:{}", free_port())])
            .args(["--metrics-port-base", "0", "--log", "warn"])
            .arg("--log-dir")
            .arg(log_dir)
            .env("OMP_WAIT_POLICY", "PASSIVE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads output until a line starts with `prefix`.
    fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line starting with {prefix:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Service name → pid, from the table printed when the stack is ready.
    fn pids(&self) -> Vec<(String, i32)> {
        self.seen
            .iter()
            .skip_while(|line| !line.starts_with("SERVICE"))
            .skip(1)
            .take_while(|line| !line.is_empty())
            .map(|line| {
                let cells: Vec<&str> = line.split_whitespace().collect();
                (cells[0].to_owned(), cells[3].parse().unwrap())
            })
            .collect()
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "plenum up did not exit; output:\n{}",
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn alive(pid: i32) -> bool {
    // A reaped process has no /proc entry; a zombie would still be "alive" here,
    // but `plenum up` waits on every child it stops.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.split_whitespace().nth(2).is_none_or(|s| s != "Z"))
}

fn signal(pid: i32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn ready_stack() -> (Up, Vec<(String, i32)>) {
    let mut up = Up::start();
    up.wait_for_line("ready:", READY_TIMEOUT);
    let pids = up.pids();
    let names: Vec<&str> = pids.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "plenum-broker",
            "plenum-detector",
            "plenum-ocr",
            "plenum-gateway"
        ]
    );
    for (name, pid) in &pids {
        assert!(alive(*pid), "{name} should be running");
    }
    (up, pids)
}

#[test]
fn ctrl_c_stops_every_service_and_exits_cleanly() {
    let (mut up, pids) = ready_stack();
    signal(up.child.id() as i32, "INT");
    let status = up.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "output:\n{}", up.seen.join("\n"));
    for (name, pid) in &pids {
        assert!(!alive(*pid), "{name} ({pid}) still runs after Ctrl-C");
    }
    assert!(up.seen.iter().any(|l| l == "all services stopped"));
}

#[test]
fn when_one_service_dies_the_rest_are_stopped_and_the_failure_is_named() {
    let (mut up, pids) = ready_stack();
    let (_, detector) = pids
        .iter()
        .find(|(name, _)| name == "plenum-detector")
        .unwrap();
    signal(*detector, "KILL");
    let status = up.wait_exit(Duration::from_secs(60));
    assert!(!status.success());
    assert!(
        up.seen
            .iter()
            .any(|l| l.contains("plenum-detector exited") && l.contains("signal: 9")),
        "output:\n{}",
        up.seen.join("\n")
    );
    for (name, pid) in &pids {
        assert!(!alive(*pid), "{name} ({pid}) was left running");
    }
}
