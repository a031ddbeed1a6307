"""The chart's wiring that schema validation cannot see, as pure checks over rendered
manifests: each function returns a list of problems, empty when the wiring holds.

`problems(docs, cli)` runs them all. `cli` says which flags and environment variables
each Plenum binary accepts (parsed from its `--help`), and which gRPC services exist
(from proto/).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# Image repository (last path segment) -> the binary it runs.
BINARIES = {
    "broker": "plenum-broker",
    "detector": "plenum-detector",
    "ocr": "plenum-ocr",
    "gateway": "plenum-gateway",
}
MODEL_COMPONENTS = ("detector", "ocr")

# Variables a container may carry that no Plenum binary reads, and who reads them.
FOREIGN_ENV = {
    "POD_NAME": "downward API, referenced by OTEL_RESOURCE_ATTRIBUTES",
    "POD_NAMESPACE": "downward API, referenced by OTEL_RESOURCE_ATTRIBUTES",
    "NODE_NAME": "downward API, referenced by OTEL_RESOURCE_ATTRIBUTES",
    "HOST_IP": "downward API, referenced by --broker in mode hostPort",
    "NVIDIA_VISIBLE_DEVICES": "the NVIDIA container runtime",
    "NVIDIA_DRIVER_CAPABILITIES": "the NVIDIA container runtime",
    "OTEL_RESOURCE_ATTRIBUTES": "the OpenTelemetry SDK's environment resource detector",
}
# Other OTEL_* variables (OTEL_BSP_*, OTEL_TRACES_SAMPLER, ...) are the SDK's own.
FOREIGN_ENV_PREFIXES = ("OTEL_",)
# Commands that are not Plenum binaries: the init containers' tools.
FOREIGN_COMMANDS = {"/bin/sh", "cp"}


@dataclass
class Cli:
    """What the binaries accept: flags and env vars per binary (and per CLI subcommand,
    keyed "plenum health"), and the fully qualified gRPC services in proto/."""

    flags: dict[str, set[str]] = field(default_factory=dict)
    env: dict[str, set[str]] = field(default_factory=dict)
    # binary -> flag -> the values it accepts, for flags that take one of a list.
    choices: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    grpc_services: set[str] = field(default_factory=set)


OPTION = re.compile(r"(?m)^\s+(?:-\w, )?--([a-z0-9][a-z0-9-]*)")


def parse_help(text: str) -> tuple[set[str], set[str], dict[str, set[str]]]:
    """The long flags, the env variables, and each enum flag's values that a clap
    `--help` lists."""
    flags = set(OPTION.findall(text))
    # `[env: NAME=VALUE]`, or `[env: NAME]` for a secret (hide_env_values).
    env = set(re.findall(r"\[env: ([A-Z0-9_]+)[=\]]", text))
    choices = {}
    starts = list(OPTION.finditer(text))
    for here, after in zip(starts, starts[1:] + [None]):
        block = text[here.start(): after.start() if after else len(text)]
        short = re.search(r"\[possible values: ([^\]]+)\]", block)
        values = {v.strip() for v in short.group(1).split(",")} if short else set(re.findall(r"(?m)^\s+- ([a-z0-9-]+):", block))
        if values:
            choices[here.group(1)] = values
    return flags, env, choices


def parse_protos(texts: list[str]) -> set[str]:
    """`package.Service` for every service declared in the given .proto sources."""
    services = set()
    for text in texts:
        package = re.search(r"(?m)^package\s+([\w.]+)\s*;", text)
        for name in re.findall(r"(?m)^service\s+(\w+)", text):
            services.add(f"{package.group(1)}.{name}" if package else name)
    return services


# ---------------------------------------------------------------------------------
# Reading the manifests


def workloads(docs):
    return [d for d in docs if d.get("kind") in ("Deployment", "DaemonSet")]


def component_of(doc) -> str | None:
    return doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def workload(docs, component):
    found = [w for w in workloads(docs) if component_of(w) == component]
    return found[0] if found else None


def pod_spec(w):
    return w["spec"]["template"]["spec"]


def containers(w, init=True):
    spec = pod_spec(w)
    return list(spec.get("containers", [])) + (list(spec.get("initContainers", [])) if init else [])


def main_container(w):
    return pod_spec(w)["containers"][0]


def args_of(container) -> dict[str, str]:
    """`--flag=value` arguments as a dict (the chart always writes them joined)."""
    parsed = {}
    for arg in container.get("args", []):
        if arg.startswith("--") and "=" in arg:
            name, value = arg[2:].split("=", 1)
            parsed[name] = value
    return parsed


def port_of(address: str) -> int | None:
    match = re.search(r":(\d+)$", address)
    return int(match.group(1)) if match else None


def named_port(container, name) -> dict | None:
    for port in container.get("ports", []):
        if port.get("name") == name:
            return port
    return None


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pods_selected(docs, selector):
    return [w for w in workloads(docs) if selects(selector, w["spec"]["template"]["metadata"].get("labels", {}))]


def service(docs, name):
    for d in docs:
        if d.get("kind") == "Service" and d["metadata"]["name"] == name:
            return d
    return None


def binary_of(container) -> str | None:
    repository = container["image"].split("@")[0].rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return BINARIES.get(repository)


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    if not match:
        return float("nan")
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[match.group(2)]


# ---------------------------------------------------------------------------------
# The checks


def check_selectors(docs) -> list[str]:
    """Workload selectors match their own pods; every Service, PDB and NetworkPolicy
    selects the pods of exactly one workload; the ServiceMonitor selects Services with a
    `metrics` port."""
    problems = []
    for w in workloads(docs):
        name = w["metadata"]["name"]
        labels = w["spec"]["template"]["metadata"].get("labels", {})
        if not selects(w["spec"]["selector"].get("matchLabels", {}), labels):
            problems.append(f"{w['kind']} {name}: selector does not match its pod labels")
    for d in docs:
        kind, name = d.get("kind"), d["metadata"]["name"]
        if kind == "Service":
            selector = d["spec"].get("selector", {})
        elif kind == "PodDisruptionBudget":
            selector = d["spec"]["selector"].get("matchLabels", {})
        elif kind == "NetworkPolicy":
            selector = d["spec"]["podSelector"].get("matchLabels", {})
        else:
            continue
        matched = pods_selected(docs, selector)
        if len(matched) != 1:
            problems.append(f"{kind} {name}: selects {len(matched)} workloads' pods, not 1")
        elif kind == "PodDisruptionBudget" and matched[0]["kind"] != "Deployment":
            problems.append(f"PodDisruptionBudget {name}: selects a {matched[0]['kind']}")
    for d in docs:
        if d.get("kind") != "ServiceMonitor":
            continue
        selector = d["spec"]["selector"].get("matchLabels", {})
        matched = [s for s in docs if s.get("kind") == "Service" and selects(selector, s["metadata"].get("labels", {}))]
        if not matched:
            problems.append(f"ServiceMonitor {d['metadata']['name']}: selects no Service")
        ports = {e.get("port") for e in d["spec"].get("endpoints", [])}
        for s in matched:
            names = {p.get("name") for p in s["spec"]["ports"]}
            if not ports <= names:
                problems.append(f"ServiceMonitor {d['metadata']['name']}: Service {s['metadata']['name']} has no port {sorted(ports - names)}")
    return problems


def check_ports_and_probes(docs, cli: Cli) -> list[str]:
    """Probes ask the port (or socket) the server listens on, readiness asks about the
    component's own gRPC service, and the named container ports are the listening ones."""
    problems = []
    for w in workloads(docs):
        component = component_of(w)
        for c in containers(w, init=False):
            where = f"{w['metadata']['name']}/{c['name']}"
            args = args_of(c)
            listen = args.get("listen")
            if listen is None:
                problems.append(f"{where}: no --listen")
                continue
            grpc_port = named_port(c, "grpc")
            if listen.startswith("unix://"):
                if grpc_port:
                    problems.append(f"{where}: a grpc port is declared but the server listens on {listen}")
            elif not grpc_port or grpc_port["containerPort"] != port_of(listen):
                problems.append(f"{where}: containerPort grpc is not the --listen port {port_of(listen)}")
            metrics = named_port(c, "metrics")
            if not metrics or metrics["containerPort"] != port_of(args.get("metrics-listen", "")):
                problems.append(f"{where}: containerPort metrics is not the --metrics-listen port")
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c.get(kind)
                if probe is None:
                    problems.append(f"{where}: no {kind}")
                    continue
                if "grpc" in probe:
                    if probe["grpc"]["port"] != port_of(listen) or listen.startswith("unix://"):
                        problems.append(f"{where}: {kind} asks port {probe['grpc']['port']}, the server listens on {listen}")
                    asked = probe["grpc"].get("service", "")
                elif "exec" in probe:
                    command = probe["exec"]["command"]
                    if command[:2] != ["plenum", "health"] or len(command) < 3 or command[2] != listen:
                        problems.append(f"{where}: {kind} runs {command}, which does not ask {listen}")
                    asked = command[command.index("--service") + 1] if "--service" in command else ""
                else:
                    problems.append(f"{where}: {kind} is neither grpc nor a `plenum health` exec")
                    continue
                if kind == "readinessProbe":
                    own = {s for s in cli.grpc_services if s.startswith(f"plenum.{component}.")}
                    if asked not in own:
                        problems.append(f"{where}: readiness asks about `{asked}`, not one of {sorted(own)}")
    for d in docs:
        if d.get("kind") != "Service":
            continue
        for w in pods_selected(docs, d["spec"].get("selector", {})):
            c = main_container(w)
            for port in d["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                if isinstance(target, str) and not named_port(c, target):
                    problems.append(f"Service {d['metadata']['name']}: targetPort {target} is no port of {w['metadata']['name']}")
                if isinstance(target, int) and target not in {p["containerPort"] for p in c.get("ports", [])}:
                    problems.append(f"Service {d['metadata']['name']}: targetPort {target} is no port of {w['metadata']['name']}")
    return problems


def check_flags_and_env(docs, cli: Cli) -> list[str]:
    """Every flag and PLENUM_* variable given to a container exists in its binary's
    `--help`, an enum flag's value is one it lists, and every $(VAR) is defined earlier
    in the same container (Kubernetes expands only those)."""
    problems = []
    for w in workloads(docs):
        for c in containers(w):
            where = f"{w['metadata']['name']}/{c['name']}"
            command = c.get("command", [])
            if command:
                if command[0] not in FOREIGN_COMMANDS:
                    problems.append(f"{where}: runs `{command[0]}`, which is neither a Plenum binary nor an allowed tool")
                continue
            binary = binary_of(c)
            if binary is None or binary not in cli.flags:
                problems.append(f"{where}: image {c['image']} runs no known Plenum binary")
                continue
            for arg in c.get("args", []):
                if not arg.startswith("--"):
                    problems.append(f"{where}: argument `{arg}` is not --flag=value")
                    continue
                name, _, value = arg[2:].partition("=")
                if name not in cli.flags[binary]:
                    problems.append(f"{where}: {binary} has no flag --{name}")
                allowed = cli.choices.get(binary, {}).get(name)
                if allowed and value not in allowed:
                    problems.append(f"{where}: --{name}={value} is not one of {sorted(allowed)}")
            defined = []
            for var in c.get("env", []):
                name = var["name"]
                if name not in cli.env[binary] and name not in FOREIGN_ENV and not name.startswith(FOREIGN_ENV_PREFIXES):
                    problems.append(f"{where}: {binary} reads no variable {name}")
                for ref in re.findall(r"\$\((\w+)\)", var.get("value", "")):
                    if ref not in defined:
                        problems.append(f"{where}: {name} refers to $({ref}), not defined before it")
                defined.append(name)
            for arg in c.get("args", []):
                for ref in re.findall(r"\$\((\w+)\)", arg):
                    if ref not in defined:
                        problems.append(f"{where}: `{arg}` refers to $({ref}), not defined in the container")
        for c in containers(w, init=False):
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                command = c.get(kind, {}).get("exec", {}).get("command")
                if not command:
                    continue
                key = " ".join(command[:2])
                if key not in cli.flags:
                    problems.append(f"{w['metadata']['name']}: {kind} runs `{key}`, unknown")
                    continue
                for arg in command[2:]:
                    if arg.startswith("--") and arg[2:].split("=", 1)[0] not in cli.flags[key]:
                        problems.append(f"{w['metadata']['name']}: {kind}: `{key}` has no flag {arg}")
    return problems


def _volume(w, name):
    for v in pod_spec(w).get("volumes", []):
        if v["name"] == name:
            return v
    return None


def _host_dir(w, container, directory) -> str | None:
    """The host folder mounted at `directory` in `container`, if it is a hostPath."""
    for mount in container.get("volumeMounts", []):
        if posixpath.normpath(mount["mountPath"]) == posixpath.normpath(directory):
            volume = _volume(w, mount["name"])
            if volume and "hostPath" in volume:
                return posixpath.normpath(volume["hostPath"]["path"])
    return None


def check_broker_is_node_local(docs) -> list[str]:
    """Each model service dials the broker of its own node: a Unix socket in the same
    host folder the node's broker listens in, a Service with internalTrafficPolicy
    Local in front of the brokers, or the host port of the node's broker at
    $(HOST_IP) from the downward API. And model pods run only where brokers run."""
    problems = []
    broker = workload(docs, "broker")
    if broker is None or broker["kind"] != "DaemonSet":
        return ["the broker is not a DaemonSet (one per node)"]
    broker_container = main_container(broker)
    broker_listen = args_of(broker_container).get("listen", "")
    broker_spec = pod_spec(broker)
    for component in MODEL_COMPONENTS:
        w = workload(docs, component)
        if w is None:
            problems.append(f"no {component} workload")
            continue
        c = main_container(w)
        where = f"{w['metadata']['name']}"
        url = args_of(c).get("broker")
        if url is None:
            problems.append(f"{where}: no --broker (it would run on the CPU)")
            continue
        if url.startswith("unix://"):
            path = url[len("unix://"):]
            folder = posixpath.dirname(path)
            host_folder = _host_dir(w, c, folder)
            broker_host_folder = _host_dir(broker, broker_container, posixpath.dirname(broker_listen[len("unix://"):])) if broker_listen.startswith("unix://") else None
            if host_folder is None:
                problems.append(f"{where}: --broker {url} is not in a hostPath mount (not the node's socket)")
            elif broker_host_folder != host_folder or posixpath.basename(broker_listen) != posixpath.basename(path):
                problems.append(f"{where}: --broker {url} (host {host_folder}) is not where the broker listens ({broker_listen}, host {broker_host_folder})")
            if not broker_spec.get("hostPID"):
                problems.append("broker: the socket's peer PIDs are host PIDs only with hostPID")
        else:
            if "$(HOST_IP)" in url:
                host, port = "$(HOST_IP)", port_of(url)
            else:
                parts = urlsplit(url)
                host, port = parts.hostname, parts.port
            if host == "$(HOST_IP)":
                field_path = next((v.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for v in c.get("env", []) if v["name"] == "HOST_IP"), None)
                grpc = named_port(broker_container, "grpc")
                if field_path != "status.hostIP":
                    problems.append(f"{where}: HOST_IP is not the downward API's status.hostIP")
                if not grpc or grpc.get("hostPort") != port or grpc["containerPort"] != port_of(broker_listen):
                    problems.append(f"{where}: --broker {url}: the broker has no hostPort {port} onto its --listen port")
            else:
                name = (host or "").split(".")[0]
                s = service(docs, name)
                if s is None:
                    problems.append(f"{where}: --broker {url} names no Service of the chart (not node-local)")
                    continue
                spec = s["spec"]
                if spec.get("internalTrafficPolicy") != "Local" or spec.get("clusterIP") == "None":
                    problems.append(f"{where}: --broker {url}: Service {name} is not internalTrafficPolicy Local (not node-local)")
                if broker not in pods_selected(docs, spec.get("selector", {})):
                    problems.append(f"{where}: --broker {url}: Service {name} does not select the brokers")
                ports = [p for p in spec["ports"] if p["port"] == port]
                grpc = named_port(broker_container, "grpc")
                if not ports or not grpc or ports[0].get("targetPort") not in ("grpc", grpc["containerPort"]) or grpc["containerPort"] != port_of(broker_listen):
                    problems.append(f"{where}: --broker {url}: port {port} does not reach the broker's --listen")
        # A model pod on a node without a broker could reach none (or, over TCP, another's).
        model_spec = pod_spec(w)
        for key, value in broker_spec.get("nodeSelector", {}).items():
            if model_spec.get("nodeSelector", {}).get(key) != value:
                problems.append(f"{where}: may run on nodes without a broker (nodeSelector lacks {key}={value})")
    return problems


def check_host_pid(docs) -> list[str]:
    """hostPID only where it is needed: the broker (NVML, peer credentials) and, when
    they reach the broker over TCP on GPUs, the model services (their PID must be NVML's)."""
    problems = []
    for w in workloads(docs):
        component = component_of(w)
        if not pod_spec(w).get("hostPID"):
            continue
        if component == "broker":
            continue
        url = args_of(main_container(w)).get("broker", "")
        if component not in MODEL_COMPONENTS or url.startswith("unix://"):
            problems.append(f"{w['metadata']['name']}: shares the host's PID namespace without need")
    return problems


def check_termination(docs) -> list[str]:
    """A pod gets time for its preStop pause and its whole drain before SIGKILL."""
    problems = []
    for w in workloads(docs):
        spec = pod_spec(w)
        c = main_container(w)
        pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        drain = seconds(args_of(c).get("drain-timeout", "10s"))
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if not grace > pause + drain:
            problems.append(f"{w['metadata']['name']}: terminationGracePeriodSeconds {grace} <= preStop {pause}s + drain {drain}s")
        if component_of(w) != "broker" and not pause:
            problems.append(f"{w['metadata']['name']}: no preStop pause (endpoints would still send to a draining pod)")
    return problems


def check_gateway_backends(docs) -> list[str]:
    """The gateway dials each backend through its headless Service (one address per
    ready replica), on the port that reaches the backend's --listen."""
    problems = []
    gateway = workload(docs, "gateway")
    if gateway is None:
        return ["no gateway"]
    args = args_of(main_container(gateway))
    for component in MODEL_COMPONENTS:
        url = args.get(component)
        if url is None:
            problems.append(f"gateway: no --{component}")
            continue
        parts = urlsplit(url)
        s = service(docs, (parts.hostname or "").split(".")[0])
        backend = workload(docs, component)
        if s is None or backend is None:
            problems.append(f"gateway: --{component} {url} names no Service of the chart")
            continue
        if s["spec"].get("clusterIP") != "None":
            problems.append(f"gateway: --{component} {url}: Service is not headless (one address for all replicas)")
        if backend not in pods_selected(docs, s["spec"].get("selector", {})):
            problems.append(f"gateway: --{component} {url}: Service does not select the {component} pods")
        listen_port = port_of(args_of(main_container(backend)).get("listen", ""))
        # A headless Service has no port mapping: the pod must listen on the port dialled.
        if parts.port != listen_port:
            problems.append(f"gateway: --{component} {url}: the {component} listens on {listen_port}")
    return problems


def problems(docs, cli: Cli) -> list[str]:
    found = []
    for check in (check_selectors, check_broker_is_node_local, check_host_pid, check_termination, check_gateway_backends):
        found += check(docs)
    found += check_ports_and_probes(docs, cli)
    found += check_flags_and_env(docs, cli)
    return found
