"""The Helm chart (deploy/helm/plenum), checked offline: rendered by Helm's own Go engine
(helm-python-sdk, no helm binary), in several values combinations; every manifest
validated with kubernetes-validate --strict against Kubernetes' schemas, linted with
yamllint and checkov's Kubernetes policies; and the wiring that schemas cannot see
(tests/helm/wiring.py) checked against the real binaries' --help.

Each external tool also gets a canary, a manifest broken on purpose that it must
reject, so a tool that silently checks nothing fails the test.

    make test-chart      # or: .venv-chart/bin/python -m unittest discover -s tests/helm -v

Needs the tools of python/requirements-chart.txt (make test-chart installs them into
.venv-chart) and the release binaries (make build; PLENUM_BIN=target/debug for a debug
build). Fails, never skips, when either is missing.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import helm_python
import yaml
from helm_python import _native

import wiring

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "plenum"
CHECKOV_CONFIG = ROOT / "deploy" / "helm" / "checkov.yaml"
YAMLLINT_CONFIG = ROOT / "deploy" / "helm" / "yamllint.yaml"
BIN = Path(os.environ.get("PLENUM_BIN", ROOT / "target" / "release"))
TOOLS = Path(sys.executable).parent
# The newest Kubernetes whose schemas kubernetes-validate bundles, and the oldest the
# chart claims (Chart.yaml kubeVersion).
KUBERNETES_VERSIONS = ("1.37.0", "1.30.0")
RELEASE, NAMESPACE = "demo", "plenum"
SERVICE_MONITOR_API = "monitoring.coreos.com/v1"

# name -> (values, extra API versions the cluster has)
VARIANTS = {
    "defaults": ({}, []),
    "gpu-off": ({"gpu": {"enabled": False}}, []),
    "service-monitor": ({}, [SERVICE_MONITOR_API]),
    "otlp": (
        {
            "otlp": {
                "enabled": True,
                "resourceAttributes": "deployment.environment=test",
                "extraEnv": [{"name": "OTEL_BSP_SCHEDULE_DELAY", "value": "2000"}],
            },
            "broker": {"token": {"value": "s3cret"}},
        },
        [],
    ),
    "local-service": ({"brokerAccess": {"mode": "localService"}}, [SERVICE_MONITOR_API]),
    "host-port": (
        {
            "brokerAccess": {"mode": "hostPort"},
            "vramScheduling": {"enabled": True},
            "gpu": {"modelAccess": "resource"},
        },
        [],
    ),
    "models-pvc": (
        {
            "models": {"source": "persistentVolumeClaim", "existingClaim": "plenum-models"},
            "gateway": {"backendScheme": "http"},
            "broker": {"token": {"existingSecret": "plenum-broker-token"}},
            "imageDefaults": {"registry": "registry.example/plenum"},
        },
        [],
    ),
}


def render(values: dict, api_versions: list[str]) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` makes it. The SDK's Python
    wrapper does not pass API versions, so this calls its C entry point the same way
    Chart.render does, with `api_versions` added (what `helm template --api-versions` sets)."""
    chart = helm_python.Chart.load(CHART)
    options = {"name": RELEASE, "namespace": NAMESPACE, "is_install": True, "api_versions": api_versions}
    rendered = _native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(options))
    return json.loads(rendered)


def documents(rendered: dict[str, str]) -> list[dict]:
    docs = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(rendered[path]) if d]
    return docs


def load_cli() -> wiring.Cli:
    cli = wiring.Cli()
    # No PLENUM_* variables: --help would print their values.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLENUM_", "OTEL_"))}
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    commands = {binary: [binary] for binary in wiring.BINARIES.values()}
    commands["plenum health"] = ["plenum", "health"]
    for key, argv in commands.items():
        exe = BIN / argv[0]
        if not os.access(exe, os.X_OK):
            raise AssertionError(f"{exe} is not built: run `make build` (or set PLENUM_BIN)")
        text = subprocess.run([exe, *argv[1:], "--help"], capture_output=True, text=True, env=env, check=True).stdout
        cli.flags[key], cli.env[key], cli.choices[key] = wiring.parse_help(text)
    cli.grpc_services = wiring.parse_protos([p.read_text() for p in (ROOT / "proto").rglob("*.proto")])
    return cli


def tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        raise AssertionError(f"{path} missing: run `make test-chart`, which installs python/requirements-chart.txt")
    return str(path)


class Chart(unittest.TestCase):
    """Renders every variant once and writes each manifest to its own file."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory(prefix="plenum-chart-")
        cls.root = Path(cls.dir.name)
        cls.docs = {}
        cls.files = {}
        cls.helm_output = {}
        for name, (values, apis) in VARIANTS.items():
            rendered = render(values, apis)
            cls.docs[name] = documents(rendered)
            cls.files[name] = write(cls.root / "variants" / name, cls.docs[name])
            # What `helm template` prints, for yamllint to see the templates' own text.
            cls.helm_output[name] = cls.root / f"helm-template-{name}.yaml"
            cls.helm_output[name].write_text("".join(
                f"---\n# Source: {path}\n{text}" for path, text in sorted(rendered.items())
                if text.strip() and not path.endswith("NOTES.txt")
            ))
        cls.cli = load_cli()

    @classmethod
    def tearDownClass(cls):
        cls.dir.cleanup()

    # -- rendering -------------------------------------------------------------------

    def test_every_variant_renders_the_objects_it_promises(self):
        def kinds(variant):
            return sorted(d["kind"] for d in self.docs[variant])

        base = kinds("defaults")
        for kind in ("DaemonSet", "Deployment", "Service", "PodDisruptionBudget", "PriorityClass", "NetworkPolicy"):
            self.assertIn(kind, base)
        self.assertEqual(base.count("Deployment"), 3)
        self.assertNotIn("ServiceMonitor", base, "no ServiceMonitor without its API")
        self.assertIn("ServiceMonitor", kinds("service-monitor"))
        self.assertIn("Secret", kinds("otlp"))
        self.assertNotIn("Secret", kinds("models-pvc"), "an existing Secret is not created again")

    def test_values_follow_the_schema(self):
        chart = helm_python.Chart.load(CHART)
        for name, (values, _) in VARIANTS.items():
            chart.validate_schema(values)
        for bad, field in [
            ({"brokerAccess": {"mode": "tcp"}}, "/brokerAccess/mode"),
            ({"detector": {"replcas": 2}}, "replcas"),
            ({"models": {"source": "s3"}}, "/models/source"),
            ({"gateway": {"backendScheme": "grpc"}}, "/gateway/backendScheme"),
        ]:
            with self.subTest(bad=bad):
                with self.assertRaises(helm_python.HelmError) as caught:
                    render(bad, [])
                self.assertIn(field, str(caught.exception))

    def test_helm_lint(self):
        for name, (values, _) in VARIANTS.items():
            with self.subTest(variant=name):
                report = helm_python.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version="v1.37.0")
                findings = [m for m in report.get("messages") or [] if m["severity"] >= 2] + (report.get("errors") or [])
                self.assertEqual(findings, [])

    # -- schemas and linters, each with a canary -------------------------------------------

    def test_kubernetes_validate_strict(self):
        files = [f for name in VARIANTS for f in self.files[name]]
        canary = self.root / "canary-kubernetes-validate.yaml"
        broken = copy.deepcopy(wiring.workload(self.docs["defaults"], "detector"))
        broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["prot"] = 7002
        canary.write_text(yaml.safe_dump(broken))
        for version in KUBERNETES_VERSIONS:
            with self.subTest(kubernetes=version):
                run = subprocess.run(
                    [tool("kubernetes-validate"), "--strict", "-k", version, *map(str, files), str(canary)],
                    capture_output=True, text=True,
                )
                lines = run.stdout.splitlines() + run.stderr.splitlines()
                verdicts = {}
                for line in lines:
                    parts = line.split(" ", 2)
                    if len(parts) == 3 and parts[0] in ("INFO", "WARN", "ERROR", "WARNING"):
                        verdicts.setdefault(parts[1], []).append(line)
                canary_lines = verdicts.pop(str(canary), [])
                self.assertTrue(any("prot" in line for line in canary_lines), f"the canary passed: {canary_lines}")
                for path in files:
                    said = verdicts.get(str(path), [])
                    self.assertTrue(said, f"kubernetes-validate said nothing about {path}")
                    if path.name.endswith("-ServiceMonitor.yaml"):
                        # A custom resource: no schema bundled (checked by wiring.check_selectors).
                        self.assertTrue(all("Couldn't find schema" in line for line in said), said)
                    else:
                        self.assertTrue(all(" passed " in line for line in said), "\n".join(said))

    def test_yamllint(self):
        canary = self.root / "canary-yamllint.yaml"
        canary.write_text("a: 1\na: 2   \n")
        targets = [CHART / "Chart.yaml", CHART / "values.yaml", CHECKOV_CONFIG, YAMLLINT_CONFIG]
        targets += list(self.helm_output.values())
        run = subprocess.run(
            [tool("yamllint"), "-f", "parsable", "-c", str(YAMLLINT_CONFIG), *map(str, targets), str(canary)],
            capture_output=True, text=True,
        )
        findings = run.stdout.splitlines()
        self.assertTrue(any(line.startswith(str(canary)) for line in findings), "the canary passed yamllint")
        self.assertEqual([line for line in findings if not line.startswith(str(canary))], [])

    def test_checkov_kubernetes_policies(self):
        canary = self.root / "variants" / "canary" / "privileged.yaml"
        canary.parent.mkdir(parents=True)
        broken = copy.deepcopy(wiring.workload(self.docs["defaults"], "gateway"))
        broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = True
        canary.write_text(yaml.safe_dump(broken))
        run = subprocess.run(
            [tool("checkov"), "--config-file", str(CHECKOV_CONFIG), "-d", str(self.root / "variants"), "-o", "json"],
            capture_output=True, text=True, env=dict(os.environ, LOG_LEVEL="ERROR"),
        )
        report = json.loads(run.stdout)
        reports = report if isinstance(report, list) else [report]
        failed = [check for r in reports for check in r["results"]["failed_checks"]]
        passed = sum(r["summary"]["passed"] for r in reports)
        self.assertGreater(passed, 100, "checkov checked (almost) nothing")
        canary_failures = {c["check_id"] for c in failed if c["file_path"].startswith("/canary/")}
        self.assertIn("CKV_K8S_16", canary_failures, "the privileged canary passed checkov")
        findings = [f"{c['check_id']} {c['check_name']}: {c['file_path']} {c['resource']}" for c in failed if not c["file_path"].startswith("/canary/")]
        self.assertEqual(findings, [], "fix each finding or skip it with a reason in deploy/helm/checkov.yaml")

    # -- the wiring --------------------------------------------------------------------

    def test_wiring_holds_in_every_variant(self):
        for name in VARIANTS:
            with self.subTest(variant=name):
                self.assertEqual(wiring.problems(self.docs[name], self.cli), [])

    def test_broker_access_per_mode(self):
        def broker_url(variant, component="ocr"):
            return wiring.args_of(wiring.main_container(wiring.workload(self.docs[variant], component)))["broker"]

        self.assertEqual(broker_url("defaults"), "unix:///run/plenum/broker.sock")
        self.assertEqual(broker_url("local-service"), f"http://{RELEASE}-plenum-broker-local.{NAMESPACE}.svc:7001")
        self.assertEqual(broker_url("host-port", "detector"), "http://$(HOST_IP):7001")
        # With GPUs over TCP, the holders' PIDs must be NVML's; over the socket they need not.
        self.assertTrue(wiring.pod_spec(wiring.workload(self.docs["local-service"], "ocr")).get("hostPID"))
        self.assertFalse(wiring.pod_spec(wiring.workload(self.docs["defaults"], "ocr")).get("hostPID"))

    def test_gpu_settings(self):
        gpu = wiring.workload(self.docs["defaults"], "detector")
        cpu = wiring.workload(self.docs["gpu-off"], "detector")
        self.assertEqual(wiring.pod_spec(gpu)["runtimeClassName"], "nvidia")
        self.assertNotIn("runtimeClassName", wiring.pod_spec(cpu))
        self.assertEqual(wiring.args_of(wiring.main_container(gpu))["device"], "cuda")
        self.assertEqual(wiring.args_of(wiring.main_container(cpu))["device"], "sim-gpu")
        broker = wiring.main_container(wiring.workload(self.docs["gpu-off"], "broker"))
        self.assertEqual(wiring.args_of(broker)["simulate"], "GTX 1070:8GiB")
        self.assertIsNotNone(wiring.pod_spec(wiring.workload(self.docs["defaults"], "broker")).get("priorityClassName"))
        resources = wiring.main_container(wiring.workload(self.docs["host-port"], "ocr"))["resources"]
        for kind in ("requests", "limits"):
            self.assertEqual(resources[kind]["plenum.dev/vram-mib"], "1664")
            self.assertEqual(resources[kind]["nvidia.com/gpu"], "1")
        self.assertNotIn("plenum.dev/vram-mib", wiring.main_container(gpu)["resources"].get("requests", {}))

    def test_otlp_settings(self):
        env = {v["name"]: v.get("value") for v in wiring.main_container(wiring.workload(self.docs["otlp"], "ocr"))["env"]}
        self.assertEqual(env["OTEL_EXPORTER_OTLP_ENDPOINT"], "http://otel-collector.observability.svc:4317")
        self.assertIn("k8s.node.name=$(NODE_NAME)", env["OTEL_RESOURCE_ATTRIBUTES"])
        self.assertIn("deployment.environment=test", env["OTEL_RESOURCE_ATTRIBUTES"])
        self.assertIn("PLENUM_BROKER_TOKEN", env)
        plain = {v["name"] for v in wiring.main_container(wiring.workload(self.docs["defaults"], "ocr"))["env"]}
        self.assertNotIn("OTEL_EXPORTER_OTLP_ENDPOINT", plain)


class WiringCatchesBreakage(unittest.TestCase):
    """Each wiring check, shown to fail: break one thing in a rendered variant and the
    checker must name it."""

    @classmethod
    def setUpClass(cls):
        cls.cli = load_cli()
        cls.rendered = {name: documents(render(*VARIANTS[name])) for name in ("defaults", "local-service", "host-port", "service-monitor")}

    def broken(self, variant, breakage, expected):
        docs = copy.deepcopy(self.rendered[variant])
        breakage(docs)
        found = wiring.problems(docs, self.cli)
        self.assertTrue(any(expected in p for p in found), f"expected a problem with `{expected}`, got {found}")

    def container(self, docs, component):
        return wiring.main_container(wiring.workload(docs, component))

    def set_arg(self, docs, component, flag, value):
        c = self.container(docs, component)
        c["args"] = [a for a in c["args"] if not a.startswith(f"--{flag}=")] + [f"--{flag}={value}"]

    def test_probe_on_another_port(self):
        self.broken("defaults", lambda d: self.container(d, "ocr")["readinessProbe"]["grpc"].update(port=7002), "readinessProbe asks port 7002")

    def test_readiness_on_another_service(self):
        self.broken("defaults", lambda d: self.container(d, "detector")["readinessProbe"]["grpc"].update(service="plenum.ocr.v1.Ocr"), "readiness asks about `plenum.ocr.v1.Ocr`")

    def test_broker_exec_probe_on_another_socket(self):
        self.broken("defaults", lambda d: self.container(d, "broker")["livenessProbe"]["exec"]["command"].__setitem__(2, "unix:///tmp/x.sock"), "does not ask unix:///run/plenum/broker.sock")

    def test_listen_port_moved_without_container_port(self):
        self.broken("defaults", lambda d: self.set_arg(d, "gateway", "listen", "0.0.0.0:7100"), "containerPort grpc is not the --listen port 7100")

    def test_service_target_port_missing(self):
        def breakage(docs):
            s = wiring.service(docs, f"{RELEASE}-plenum-detector")
            s["spec"]["ports"][0]["targetPort"] = "rpc"
        self.broken("defaults", breakage, "targetPort rpc is no port")

    def test_selector_not_matching_pods(self):
        def breakage(docs):
            wiring.workload(docs, "ocr")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] = "ocr-v2"
        self.broken("defaults", breakage, "selector does not match its pod labels")

    def test_service_selecting_nothing(self):
        def breakage(docs):
            wiring.service(docs, f"{RELEASE}-plenum-ocr")["spec"]["selector"]["app.kubernetes.io/instance"] = "other"
        self.broken("defaults", breakage, "selects 0 workloads' pods")

    def test_service_monitor_selecting_nothing(self):
        def breakage(docs):
            monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
            monitor["spec"]["selector"]["matchLabels"]["plenum.dev/metrics"] = "yes"
        self.broken("service-monitor", breakage, "selects no Service")

    def test_unknown_flag(self):
        self.broken("defaults", lambda d: self.container(d, "detector")["args"].append("--max-batch-size=8"), "plenum-detector has no flag --max-batch-size")

    def test_flag_of_another_binary(self):
        self.broken("defaults", lambda d: self.container(d, "gateway")["args"].append("--broker=http://x:7001"), "plenum-gateway has no flag --broker")

    def test_value_outside_an_enum_flag(self):
        self.broken("defaults", lambda d: self.set_arg(d, "ocr", "device", "gpu"), "--device=gpu is not one of")

    def test_parsed_choices(self):
        # The enum flags the chart sets, as --help lists them (guards the parser itself).
        self.assertEqual(self.cli.choices["plenum-detector"]["device"], {"auto", "cpu", "cuda", "sim-gpu"})
        self.assertEqual(self.cli.choices["plenum-gateway"]["log-format"], {"text", "json"})

    def test_unknown_env(self):
        self.broken("defaults", lambda d: self.container(d, "ocr")["env"].append({"name": "PLENUM_MAX_CROP", "value": "9"}), "reads no variable PLENUM_MAX_CROP")

    def test_undefined_reference(self):
        def breakage(docs):
            c = self.container(docs, "detector")
            c["env"] = [v for v in c["env"] if v["name"] != "HOST_IP"]
        self.broken("host-port", breakage, "refers to $(HOST_IP)")

    def test_broker_through_a_cluster_wide_service(self):
        # The headless broker Service spreads over every node's broker: not node-local.
        self.broken("local-service", lambda d: self.set_arg(d, "ocr", "broker", f"http://{RELEASE}-plenum-broker.{NAMESPACE}.svc:7001"), "is not internalTrafficPolicy Local")

    def test_local_service_without_local_policy(self):
        def breakage(docs):
            del wiring.service(docs, f"{RELEASE}-plenum-broker-local")["spec"]["internalTrafficPolicy"]
        self.broken("local-service", breakage, "is not internalTrafficPolicy Local")

    def test_socket_outside_the_shared_host_folder(self):
        def breakage(docs):
            w = wiring.workload(docs, "detector")
            volume = next(v for v in wiring.pod_spec(w)["volumes"] if v["name"] == "broker-socket")
            volume["hostPath"]["path"] = "/run/plenum-detector"
        self.broken("defaults", breakage, "is not where the broker listens")

    def test_socket_in_a_pod_local_folder(self):
        def breakage(docs):
            w = wiring.workload(docs, "ocr")
            volume = next(v for v in wiring.pod_spec(w)["volumes"] if v["name"] == "broker-socket")
            del volume["hostPath"]
            volume["emptyDir"] = {}
        self.broken("defaults", breakage, "is not in a hostPath mount")

    def test_host_port_missing(self):
        def breakage(docs):
            del wiring.named_port(self.container(docs, "broker"), "grpc")["hostPort"]
        self.broken("host-port", breakage, "the broker has no hostPort 7001")

    def test_model_pods_off_the_broker_nodes(self):
        self.broken("defaults", lambda d: wiring.pod_spec(wiring.workload(d, "ocr")).pop("nodeSelector"), "may run on nodes without a broker")

    def test_host_pid_without_need(self):
        self.broken("defaults", lambda d: wiring.pod_spec(wiring.workload(d, "gateway")).update(hostPID=True), "shares the host's PID namespace without need")

    def test_grace_shorter_than_the_drain(self):
        self.broken("defaults", lambda d: wiring.pod_spec(wiring.workload(d, "ocr")).update(terminationGracePeriodSeconds=30), "terminationGracePeriodSeconds 30 <= preStop 15s + drain 30")

    def test_gateway_through_a_cluster_ip(self):
        def breakage(docs):
            wiring.service(docs, f"{RELEASE}-plenum-detector")["spec"]["clusterIP"] = "10.0.0.10"
        self.broken("defaults", breakage, "Service is not headless")


def write(folder: Path, docs: list[dict]) -> list[Path]:
    folder.mkdir(parents=True)
    files = []
    for index, doc in enumerate(docs):
        path = folder / f"{index:02d}-{doc['metadata']['name']}-{doc['kind']}.yaml"
        path.write_text("---\n" + yaml.safe_dump(doc, sort_keys=False))
        files.append(path)
    return files


if __name__ == "__main__":
    unittest.main()
