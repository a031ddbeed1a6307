"""The chaos suite: the real release binaries on loopback, faults injected under load,
and every call's fate counted.

  make chaos                       # builds the release binaries first
  .venv/bin/python tests/chaos/chaos.py [--only CASE ...] [--table FILE]

Each case runs a bounded load (callers x seconds, every call with a deadline) while it
injects its faults, then checks what the design promises: every call answered within
its deadline (+ a small slack for the client's own scheduling), degradation where it is
promised, fast refusals, the broker's books balanced with no lease of a dead process,
resident memory bounded, and every service SERVING again afterwards.

A call is one of:
  answered  OK, every symbol that wanted a tag had OCR's answer
  degraded  OK with tags missing because OCR failed, timed out or was shed; or a fast
            UNAVAILABLE while no detector replica was alive
  refused   RESOURCE_EXHAUSTED (the client is told to retry)
  lost      anything else: DEADLINE_EXCEEDED, another error, or an answer later than
            the deadline + slack

The table of figures goes to stdout and to --table (RELIABILITY.md quotes it). A check
marked as a known gap is printed and tabled but does not fail the run; when it starts
passing the suite says so, so the mark can go.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
from grpc_tools import protoc

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("PLENUM_BIN", REPO / "target" / "release"))
PAGES = sorted((REPO / "tests" / "pages").glob("page_00[0-3]?.png"))[:8]
PROTOS = [
    "plenum/common/v1/common.proto",
    "plenum/gateway/v1/gateway.proto",
    "plenum/broker/v1/broker.proto",
]
# A client's own thread may see the answer a little after the deadline it set.
SLACK_S = 0.25
# The gateway's file-descriptor limit: low, so a connection flood reaches it.
GATEWAY_NOFILE = 256
GIB = 1 << 30


def stubs():
    """grpcio stubs compiled from proto/ into a temporary folder."""
    out = tempfile.mkdtemp(prefix="plenum-chaos-stubs-")
    include = str(Path(protoc.__file__).parent / "_proto")
    args = ["protoc", f"-I{REPO / 'proto'}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + PROTOS) != 0:
        raise RuntimeError("grpcio-tools could not compile the protos")
    sys.path.insert(0, out)
    names = {
        "gw": "plenum.gateway.v1.gateway_pb2",
        "gw_grpc": "plenum.gateway.v1.gateway_pb2_grpc",
        "broker": "plenum.broker.v1.broker_pb2",
        "broker_grpc": "plenum.broker.v1.broker_pb2_grpc",
    }
    return {key: importlib.import_module(name) for key, name in names.items()}


PB = stubs()
OCR_REASONS = {
    PB["gw"].TAG_MISSING_REASON_OCR_UNAVAILABLE,
    PB["gw"].TAG_MISSING_REASON_OCR_OVERLOADED,
    PB["gw"].TAG_MISSING_REASON_OCR_TIMED_OUT,
    PB["gw"].TAG_MISSING_REASON_OCR_FAILED,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# ---------------------------------------------------------------- the stack


class Service:
    """One binary as a child process, which the suite kills, stops and restarts."""

    def __init__(self, name: str, binary: str, args: list[str], logs: Path, nofile: int | None = None):
        self.name, self.binary, self.args, self.logs, self.nofile = name, binary, args, logs, nofile
        self.port = free_port()
        self.metrics_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.peak_rss = 0

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> None:
        self.starts += 1
        log = open(self.logs / f"{self.name}.{self.starts}.log", "wb")
        # The fd limit through prlimit(1), which execs the binary (same PID), and never a
        # preexec_fn: that forks this process, whose grpcio threads then abort the child.
        limit = ["prlimit", f"--nofile={self.nofile}:{self.nofile}"] if self.nofile else []
        self.proc = subprocess.Popen(
            [*limit, str(BIN / self.binary), "--listen", self.addr,
             "--metrics-listen", f"127.0.0.1:{self.metrics_port}", "--log", "warn", *self.args],
            stdout=log, stderr=subprocess.STDOUT, close_fds=True,
            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(timeout=10)

    def wait_serving(self, timeout: float = 90) -> float:
        """Seconds until `plenum health` says SERVING; raises past `timeout`."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.logs}")
            probe = subprocess.run([str(BIN / "plenum"), "health", self.addr], capture_output=True, timeout=10)
            if probe.returncode == 0:
                return time.monotonic() - started
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not SERVING after {timeout}s")

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Stack:
    """Broker (a simulated 8 GiB GTX 1070), detector, OCR and gateway."""

    def __init__(self, logs: Path):
        self.broker = Service("broker", "plenum-broker", [
            "--simulate", "GTX 1070:8GiB",
            # Short, so a dead holder's leases must be gone within the case.
            "--session-ttl", "3s", "--orphan-grace", "1s",
        ], logs)
        model_args = ["--broker", f"http://{self.broker.addr}", "--device", "sim-gpu"]
        self.detector = Service("detector", "plenum-detector", model_args, logs)
        self.ocr = Service("ocr", "plenum-ocr", model_args, logs)
        self.gateway = Service("gateway", "plenum-gateway", [
            "--detector", f"http://{self.detector.addr}", "--ocr", f"http://{self.ocr.addr}",
            # Shorter than the default 10 s, so the flood case needs less time.
            "--handshake-timeout", "5s",
        ], logs, nofile=GATEWAY_NOFILE)
        self.services = [self.broker, self.detector, self.ocr, self.gateway]
        self._sampling = True
        self._sampler = threading.Thread(target=self._sample_memory, daemon=True)

    def start(self) -> None:
        for service in self.services:
            service.start()
            service.wait_serving()
        self._sampler.start()

    def _sample_memory(self) -> None:
        while self._sampling:
            for service in self.services:
                if service.alive():
                    service.peak_rss = max(service.peak_rss, rss_bytes(service.pid))
            time.sleep(0.1)

    def reset_peaks(self) -> None:
        for service in self.services:
            service.peak_rss = rss_bytes(service.pid) if service.alive() else 0

    def peaks(self) -> dict[str, int]:
        return {service.name: service.peak_rss for service in self.services}

    def stop(self) -> None:
        self._sampling = False
        for service in reversed(self.services):
            service.stop()

    def analyze_stub(self):
        channel = grpc.insecure_channel(self.gateway.addr, options=[("grpc.max_send_message_length", 64 << 20)])
        return channel, PB["gw_grpc"].GatewayStub(channel)

    def broker_status(self):
        with grpc.insecure_channel(self.broker.addr) as channel:
            return PB["broker_grpc"].BrokerStub(channel).Status(PB["broker"].StatusRequest(), timeout=5)


# ---------------------------------------------------------------- load


@dataclass
class Call:
    started: float
    latency: float
    deadline: float
    outcome: str
    detail: str = ""


@dataclass
class Load:
    callers: int
    seconds: float
    deadline: float
    pages: list[bytes]
    calls: list[Call] = field(default_factory=list)

    def label(self) -> str:
        return f"{self.callers} callers x {self.seconds:.0f} s, deadline {self.deadline:g} s"


def classify(response=None, error: grpc.RpcError | None = None, latency: float = 0, deadline: float = 0) -> tuple[str, str]:
    if latency > deadline + SLACK_S:
        code = "OK" if error is None else error.code().name
        return "lost", f"answered {code} after {latency:.2f} s"
    if error is not None:
        code = error.code()
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return "refused", error.details()
        if code == grpc.StatusCode.UNAVAILABLE:
            return "unavailable", error.details()
        return "lost", f"{code.name}: {error.details()}"
    missing = [s for s in response.symbols if s.tag_missing_reason in OCR_REASONS]
    if missing:
        return "degraded", PB["gw"].TagMissingReason.Name(missing[0].tag_missing_reason)
    return "answered", f"{len(response.symbols)} symbols"


def caller(stack: Stack, load: Load, stop_at: float, index: int, lock: threading.Lock) -> None:
    channel, stub = stack.analyze_stub()
    n = index
    with channel:
        while time.monotonic() < stop_at:
            page = load.pages[n % len(load.pages)]
            n += load.callers
            started = time.monotonic()
            try:
                response = stub.Analyze(PB["gw"].AnalyzeRequest(image=page), timeout=load.deadline)
                outcome = classify(response=response, latency=time.monotonic() - started, deadline=load.deadline)
            except grpc.RpcError as error:
                outcome = classify(error=error, latency=time.monotonic() - started, deadline=load.deadline)
            with lock:
                load.calls.append(Call(started, time.monotonic() - started, load.deadline, *outcome))
            if outcome[0] in ("refused", "unavailable"):
                time.sleep(0.05)  # the RetryInfo hint


def run_load(stack: Stack, load: Load, faults: Callable[[float], None] | None = None) -> None:
    """Runs `load`; `faults(t0)` runs alongside in this thread and injects faults."""
    lock = threading.Lock()
    t0 = time.monotonic()
    stop_at = t0 + load.seconds
    threads = [threading.Thread(target=caller, args=(stack, load, stop_at, i, lock)) for i in range(load.callers)]
    for thread in threads:
        thread.start()
    if faults:
        faults(t0)
    for thread in threads:
        thread.join(timeout=load.seconds + load.deadline + 30)


def at(t0: float, seconds: float) -> None:
    time.sleep(max(0.0, t0 + seconds - time.monotonic()))


# ---------------------------------------------------------------- checks


@dataclass
class Check:
    what: str
    ok: bool
    detail: str
    known_gap: str = ""


@dataclass
class Result:
    case: str
    load: str
    faults: str
    counts: dict[str, int]
    worst_latency: float
    peaks: dict[str, int]
    checks: list[Check]
    extra: str = ""


def counts(calls: list[Call], unavailable_is: str = "lost") -> dict[str, int]:
    out = {"answered": 0, "degraded": 0, "refused": 0, "lost": 0}
    for call in calls:
        outcome = call.outcome
        if outcome == "unavailable":
            outcome = unavailable_is
        out[outcome] += 1
    return out


def lost_check(calls: list[Call], unavailable_is: str = "lost", known_gap: str = "") -> Check:
    lost = [c for c in calls if (unavailable_is if c.outcome == "unavailable" else c.outcome) == "lost"]
    detail = f"{len(lost)} of {len(calls)} lost" + (f"; first: {lost[0].detail}" if lost else "")
    return Check("every call answered within its deadline", not lost and bool(calls), detail, known_gap)


def books_check(stack: Stack, dead_pids: set[int], wait: float = 15) -> Check:
    """No lease of a dead process (after TTL + grace), and granted bytes within capacity."""
    deadline = time.monotonic() + wait
    while True:
        status = stack.broker_status()
        stale = [l for l in status.leases if l.holder.pid in dead_pids]
        over = [d for d in status.devices if d.leased_bytes > d.total_bytes - d.reserve_bytes]
        if (not stale and not over) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    live = {stack.detector.pid, stack.ocr.pid}
    holders = sorted({l.holder.pid for l in status.leases})
    ok = not stale and not over and set(holders) <= live
    return Check(
        "broker books: no dead holder's lease, granted <= capacity",
        ok,
        f"holders {holders} (live {sorted(live)}), stale {len(stale)}, over capacity {len(over)}",
    )


def serving_check(stack: Stack) -> Check:
    waited = {}
    try:
        for service in stack.services:
            waited[service.name] = service.wait_serving(timeout=90)
        return Check("every service SERVING again", True, ", ".join(f"{k} {v:.1f}s" for k, v in waited.items()))
    except RuntimeError as error:
        return Check("every service SERVING again", False, str(error))


def tags_back_check(stack: Stack, page: bytes) -> Check:
    channel, stub = stack.analyze_stub()
    with channel:
        for _ in range(20):
            try:
                response = stub.Analyze(PB["gw"].AnalyzeRequest(image=page), timeout=30)
                if not any(s.tag_missing_reason in OCR_REASONS for s in response.symbols):
                    tagged = sum(1 for s in response.symbols if s.tag)
                    return Check("a page after recovery has its tags", tagged > 0, f"{tagged}/{len(response.symbols)} tagged")
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    return Check("a page after recovery has its tags", False, "tags still missing after 20 tries")


# Resident memory each service must stay under in every case (the model services hold
# libtorch, their models and a few pages in flight; see BENCHMARKS.md's memory section).
RSS_BOUNDS = {"broker": 64 << 20, "detector": 3 * GIB, "ocr": 3 * GIB, "gateway": 256 << 20}


def memory_check(stack: Stack) -> Check:
    over = {name: peak for name, peak in stack.peaks().items() if peak > RSS_BOUNDS[name]}
    detail = ", ".join(f"{name} {peak >> 20} MiB" for name, peak in stack.peaks().items())
    return Check("resident memory within bounds (broker 64 MiB, models 3 GiB, gateway 256 MiB)", not over, detail)


def result(case: str, load: Load, faults: str, stack: Stack, checks: list[Check], unavailable_is="lost", extra="") -> Result:
    worst = max((c.latency for c in load.calls), default=0.0)
    checks = [*checks, memory_check(stack)]
    return Result(case, load.label(), faults, counts(load.calls, unavailable_is), worst, stack.peaks(), checks, extra)


# ---------------------------------------------------------------- cases


def case_baseline(stack: Stack, pages: list[bytes]) -> Result:
    load = Load(callers=2, seconds=12, deadline=10, pages=pages)
    run_load(stack, load)
    checks = [
        lost_check(load.calls),
        Check("no call degraded or refused", counts(load.calls)["answered"] == len(load.calls), str(counts(load.calls))),
    ]
    return result("steady load", load, "none", stack, checks)


def case_kill(stack: Stack, pages: list[bytes], victim: Service, unavailable_is: str) -> Result:
    load = Load(callers=2, seconds=20, deadline=10, pages=pages)
    dead = set()
    killed = {}

    def faults(t0):
        at(t0, 3)
        dead.add(victim.pid)
        killed["at"] = time.monotonic()
        victim.signal(signal.SIGKILL)
        at(t0, 8)
        victim.start()  # what the supervisor (compose, Kubernetes) does

    run_load(stack, load, faults)
    checks = [lost_check(load.calls, unavailable_is), serving_check(stack), books_check(stack, dead), tags_back_check(stack, pages[0])]
    if victim is stack.detector:
        # Calls made while it is down; one already inside the detector at the kill
        # took as long as the detector had worked on it.
        down = [c for c in load.calls if c.outcome == "unavailable" and c.started >= killed["at"]]
        slow = [c for c in down if c.latency > 1.0]
        checks.append(Check("UNAVAILABLE while the detector is down comes fast (< 1 s)", not slow,
                            f"{len(down)} UNAVAILABLE, slowest {max((c.latency for c in down), default=0):.3f} s"))
    return result(f"SIGKILL {victim.name}", load, f"SIGKILL {victim.name} at 3 s, restarted at 8 s", stack, checks, unavailable_is)


def case_kill_broker(stack: Stack, pages: list[bytes]) -> Result:
    load = Load(callers=2, seconds=16, deadline=10, pages=pages)
    old = {}

    def faults(t0):
        at(t0, 3)
        old["pid"] = stack.broker.pid
        stack.broker.signal(signal.SIGKILL)
        at(t0, 5)
        stack.broker.start()

    run_load(stack, load, faults)
    checks = [lost_check(load.calls), Check("no call degraded (the models keep serving)",
                                            counts(load.calls)["answered"] == len(load.calls), str(counts(load.calls))),
              serving_check(stack)]
    # The restarted broker learns the leases back from the holders' reclaims.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        holders = {l.holder.pid for l in stack.broker_status().leases}
        if holders >= {stack.detector.pid, stack.ocr.pid}:
            break
        time.sleep(0.5)
    checks.append(Check("both model services reclaimed their leases", holders >= {stack.detector.pid, stack.ocr.pid},
                        f"holders {sorted(holders)}"))
    checks.append(books_check(stack, set()))
    return result("SIGKILL broker", load, "SIGKILL broker at 3 s, restarted at 5 s", stack, checks)


def case_stop_ocr(stack: Stack, pages: list[bytes]) -> Result:
    # As many callers as the detector alone answers well inside the deadline on a
    # 2-vCPU machine: what is measured is the stopped OCR, not a queue at the detector.
    load = Load(callers=2, seconds=14, deadline=5, pages=pages)

    def faults(t0):
        at(t0, 2)
        stack.ocr.signal(signal.SIGSTOP)
        at(t0, 11)
        stack.ocr.signal(signal.SIGCONT)

    run_load(stack, load, faults)
    stopped = [c for c in load.calls if 2 <= c.started - load.calls[0].started <= 9]
    checks = [
        lost_check(load.calls),
        Check("while OCR is stopped, answers carry symbols with OCR_TIMED_OUT",
              any(c.outcome == "degraded" for c in stopped), f"{counts(stopped)} while stopped"),
        serving_check(stack),
        tags_back_check(stack, pages[0]),
    ]
    return result("SIGSTOP ocr", load, "SIGSTOP ocr for 9 s (callers' deadline 5 s)", stack, checks)


def case_flood(stack: Stack, pages: list[bytes]) -> Result:
    """More idle connections than the gateway has file descriptors, then a normal client."""
    load = Load(callers=1, seconds=0, deadline=10, pages=pages)
    pid = stack.gateway.pid
    sockets = []
    cpu_before = cpu_seconds(pid)
    flood_started = time.monotonic()
    for i in range(2 * GATEWAY_NOFILE):
        s = socket.socket()
        s.settimeout(1)
        try:
            s.connect(("127.0.0.1", stack.gateway.port))
            if i % 2:
                s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # the preface, then nothing
            sockets.append(s)
        except OSError:
            s.close()
    time.sleep(3)
    cpu_during = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - flood_started)
    # The server must close sockets that never finish the HTTP/2 handshake by itself.
    closed = 0
    give_up = time.monotonic() + 25
    pending = list(sockets)
    while pending and time.monotonic() < give_up:
        still = []
        for s in pending:
            s.setblocking(False)
            try:
                data = s.recv(65536)
                if data == b"":
                    closed += 1
                    continue
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
                continue
            still.append(s)
        pending = still
        time.sleep(0.5)
    for s in sockets:
        s.close()
    # A normal client, once the flood is gone.
    channel, stub = stack.analyze_stub()
    started = time.monotonic()
    with channel:
        try:
            stub.Analyze(PB["gw"].AnalyzeRequest(image=pages[0]), timeout=load.deadline)
            outcome = ("answered", "")
        except grpc.RpcError as error:
            outcome = ("lost", f"{error.code().name}: {error.details()}")
    load.calls.append(Call(started, time.monotonic() - started, load.deadline, *outcome))
    checks = [
        Check("the gateway does not spin while flooded (< 0.5 core)", cpu_during < 0.5, f"{cpu_during:.2f} core"),
        Check("idle or preface-only connections closed by the server within 25 s", closed >= 0.9 * len(sockets),
              f"{closed} of {len(sockets)} closed"),
        Check("a normal client is served after the flood", outcome[0] == "answered", outcome[1] or "served"),
        serving_check(stack),
    ]
    load_label = f"{len(sockets)} idle connections (gateway fd limit {GATEWAY_NOFILE}), then 1 caller"
    r = result("connection flood", load, "flood", stack, checks)
    r.load = load_label
    r.faults = "half send nothing, half only the HTTP/2 preface"
    return r


def gateway_refusals(stack: Stack, within: str = "0.008") -> tuple[int, int]:
    """The gateway's own clock (its gRPC handling histogram): Analyze calls it answered
    RESOURCE_EXHAUSTED within `within` seconds (a bucket bound), and in all."""
    url = f"http://127.0.0.1:{stack.gateway.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    fast = total = 0
    for line in text.splitlines():
        if (line.startswith("plenum_grpc_server_handling_seconds_bucket{")
                and 'grpc_method="Analyze"' in line and 'grpc_code="ResourceExhausted"' in line):
            le = re.search(r'le="([^"]+)"', line).group(1)
            value = int(float(line.rsplit(" ", 1)[1]))
            fast = value if le == within else fast
            total = value if le == "+Inf" else total
    return fast, total


def case_overload(stack: Stack, pages: list[bytes]) -> Result:
    load = Load(callers=50, seconds=15, deadline=10, pages=pages)
    fast_before, refused_before = gateway_refusals(stack)
    run_load(stack, load)
    fast_after, refused_after = gateway_refusals(stack)
    fast, refused_by_gateway = fast_after - fast_before, refused_after - refused_before
    c = counts(load.calls)
    ok = c["answered"] + c["degraded"]
    overloaded = sum(1 for call in load.calls if call.outcome == "degraded" and "OVERLOADED" in call.detail)
    refused = sorted(call.latency for call in load.calls if call.outcome == "refused")
    p99 = refused[int(0.99 * (len(refused) - 1))] if refused else 0.0
    checks = [
        lost_check(load.calls),
        # The product's own figure: the gateway's clock, arrival to the last frame.
        Check("the gateway refuses in < 8 ms (99%, its own clock)",
              refused_by_gateway > 0 and fast >= 0.99 * refused_by_gateway,
              f"{fast} of {refused_by_gateway} refusals within 8 ms"),
        # What a caller sees, through a 50-thread Python client on the same 2 cores as the
        # models (GIL and scheduling included): far below a page's ~2 s, never queued.
        Check("refusals reach the caller fast (p99 < 100 ms)", p99 < 0.100,
              f"{len(refused)} refused, p99 {p99 * 1000:.1f} ms"),
        Check(">= 95% of OK answers carry their tags", ok > 0 and overloaded <= 0.05 * ok,
              f"{ok - overloaded} of {ok} OK answers with tags ({overloaded} OCR_OVERLOADED)"),
    ]
    # Recovery: one caller at normal load gets full answers again.
    checks.append(tags_back_check(stack, pages[0]))
    return result("10x overload", load, "none (50 callers against a limit of 5 per backend)", stack, checks)


def png_bomb(width: int, height: int) -> bytes:
    """A valid greyscale PNG of `width` x `height` zero pixels: tiny on disk, huge decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (width + 1)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def case_bad_input(stack: Stack, pages: list[bytes]) -> Result:
    load = Load(callers=1, seconds=0, deadline=10, pages=pages)
    channel, stub = stack.analyze_stub()
    checks = []
    with channel:
        for name, image, want in [
            ("20000x20000 PNG bomb", png_bomb(20_000, 20_000), grpc.StatusCode.INVALID_ARGUMENT),
            ("truncated PNG", pages[0][: len(pages[0]) // 3], grpc.StatusCode.INVALID_ARGUMENT),
            ("not an image", b"GIF89a" + b"\x00" * 100, grpc.StatusCode.INVALID_ARGUMENT),
        ]:
            started = time.monotonic()
            try:
                stub.Analyze(PB["gw"].AnalyzeRequest(image=image), timeout=load.deadline)
                code, detail = grpc.StatusCode.OK, "accepted"
            except grpc.RpcError as error:
                code, detail = error.code(), error.details()
            latency = time.monotonic() - started
            load.calls.append(Call(started, latency, load.deadline, "refused" if code == want else "lost", detail))
            checks.append(Check(f"{name} ({len(image) // 1024} KiB) refused with {want.name} in < 1 s",
                                code == want and latency < 1.0, f"{code.name} in {latency * 1000:.0f} ms: {detail[:80]}"))
    checks.append(serving_check(stack))
    r = result("bad input", load, "decompression bomb, truncated and foreign files", stack, checks)
    r.counts = {"answered": 0, "degraded": 0, "refused": sum(c.outcome == "refused" for c in load.calls),
                "lost": sum(c.outcome == "lost" for c in load.calls)}
    r.load = "3 calls, one at a time"
    return r


CASES = {
    "baseline": case_baseline,
    "kill-ocr": lambda s, p: case_kill(s, p, s.ocr, unavailable_is="lost"),
    "kill-detector": lambda s, p: case_kill(s, p, s.detector, unavailable_is="degraded"),
    "kill-broker": case_kill_broker,
    "stop-ocr": case_stop_ocr,
    "flood": case_flood,
    "overload": case_overload,
    "bad-input": case_bad_input,
}


# ---------------------------------------------------------------- report


def mib(n: int) -> str:
    return f"{n / (1 << 20):.0f}"


def table(results: list[Result]) -> str:
    lines = [
        "| case | load | faults | answered | degraded | refused | lost | worst latency | peak RSS MiB (broker / detector / ocr / gateway) |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        c = r.counts
        peaks = " / ".join(mib(r.peaks.get(n, 0)) for n in ("broker", "detector", "ocr", "gateway"))
        lines.append(f"| {r.case} | {r.load} | {r.faults} | {c['answered']} | {c['degraded']} | {c['refused']} | "
                     f"{c['lost']} | {r.worst_latency * 1000:.0f} ms | {peaks} |")
    lines.append("")
    lines.append("| case | check | result | detail |")
    lines.append("|---|---|---|---|")
    for r in results:
        for check in r.checks:
            verdict = "pass" if check.ok else ("KNOWN GAP" if check.known_gap else "FAIL")
            if check.ok and check.known_gap:
                verdict = "pass (was a known gap: drop the mark)"
            lines.append(f"| {r.case} | {check.what} | {verdict} | {check.detail} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=list(CASES), help="run these cases only")
    parser.add_argument("--table", type=Path, help="also write the figures (markdown) here")
    args = parser.parse_args()
    for binary in ("plenum-broker", "plenum-detector", "plenum-ocr", "plenum-gateway", "plenum"):
        if not (BIN / binary).exists():
            sys.exit(f"{BIN / binary} is missing: run `make build` (or `make chaos`)")
    pages = [p.read_bytes() for p in PAGES]
    logs = Path(tempfile.mkdtemp(prefix="plenum-chaos-logs-"))
    stack = Stack(logs)
    results = []
    started = time.monotonic()
    try:
        stack.start()
        for name in args.only or list(CASES):
            stack.reset_peaks()
            case_started = time.monotonic()
            r = CASES[name](stack, pages)
            results.append(r)
            failed = [c for c in r.checks if not c.ok]
            print(f"-- {r.case}: {r.counts}, worst {r.worst_latency * 1000:.0f} ms, "
                  f"{len(r.checks) - len(failed)}/{len(r.checks)} checks pass ({time.monotonic() - case_started:.0f} s)",
                  flush=True)
            for check in failed:
                print(f"   {'KNOWN GAP' if check.known_gap else 'FAIL'}: {check.what}: {check.detail}", flush=True)
    finally:
        stack.stop()
    report = table(results)
    print()
    print(report)
    print(f"\n{len(results)} cases in {time.monotonic() - started:.0f} s; service logs in {logs}")
    if args.table:
        args.table.write_text(report + "\n")
    failures = [(r.case, c) for r in results for c in r.checks if not c.ok and not c.known_gap]
    for case, check in failures:
        print(f"FAIL {case}: {check.what}: {check.detail}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
