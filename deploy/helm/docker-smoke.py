#!/usr/bin/env python3
"""The chart's pods as Docker containers, checked by hand: no cluster runs here, so this
does with the rendered manifests what a kubelet would, as far as Docker can. Per pod:
init containers first, then the main container with the pod spec's user, read-only root
filesystem, dropped and added capabilities, hostPID, volumes, the downward API and
$(VAR) expansion. Services become network aliases, an emptyDir a Docker volume made
group-writable for fsGroup, a hostPath a folder under $WORK, a hostPort a published
port on the Docker network's gateway (the "node" address HOST_IP). Then it asks each
probe as the kubelet would (`plenum health` on the probe's port and service, or the
exec command), prints the broker's books, runs Analyze through the gateway, and stops
gateway and OCR with SIGTERM, checking they exit within their grace period.

    make build && deploy/build-offline.sh
    docker build -f deploy/helm/models.Dockerfile --build-arg BASE_IMAGE=plenum/debian:bookworm \
        -t plenum/models:latest models/
    .venv-chart/bin/python deploy/helm/docker-smoke.py                 # localService, GPU off
    .venv-chart/bin/python deploy/helm/docker-smoke.py '{"brokerAccess": {"mode": "hostPort"}}'

Values always include gpu.enabled=false, gateway.backendScheme=http and the `latest`
tag, on top of the JSON given. Not part of `make test`: it needs Docker and the images.
"""

import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "helm"))
import test_chart  # noqa: E402  (renders the chart as the tests do)
import wiring  # noqa: E402

PLENUM = os.environ.get("PLENUM", os.path.join(ROOT, "target", "release", "plenum"))
WORK = os.environ.get("WORK", "/tmp/plenum-docker-smoke")
LABEL = "plenum-docker-smoke"
NAMESPACE = test_chart.NAMESPACE


def sh(*args, check=True):
    result = subprocess.run(list(args), capture_output=True, text=True)
    if check and result.returncode:
        raise SystemExit(f"{' '.join(args[:4])} ...: {result.stderr or result.stdout}")
    return result


def cleanup():
    containers = sh("docker", "ps", "-aq", "--filter", f"label={LABEL}", check=False).stdout.split()
    if containers:
        sh("docker", "rm", "-f", *containers, check=False)
    volumes = sh("docker", "volume", "ls", "-q", "--filter", f"label={LABEL}", check=False).stdout.split()
    if volumes:
        sh("docker", "volume", "rm", "-f", *volumes, check=False)
    sh("docker", "network", "rm", LABEL, check=False)


def expand(text, env):
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), text)


class Node:
    """One Docker network standing in for a node and its cluster network."""

    def __init__(self, docs):
        self.docs = docs
        sh("docker", "network", "create", "--label", LABEL, LABEL)
        self.host_ip = sh("docker", "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", LABEL).stdout.strip()

    def aliases(self, workload):
        names = []
        for s in (d for d in self.docs if d["kind"] == "Service"):
            if workload in wiring.pods_selected(self.docs, s["spec"].get("selector", {})):
                name = s["metadata"]["name"]
                names += [name, f"{name}.{NAMESPACE}.svc", f"{name}.{NAMESPACE}.svc.cluster.local"]
        return names

    def downward(self, field, pod):
        return {"metadata.name": pod, "metadata.namespace": NAMESPACE, "spec.nodeName": "node-1", "status.hostIP": self.host_ip}[field]

    def volumes(self, pod, spec):
        found = {}
        fs_group = spec.get("securityContext", {}).get("fsGroup", 0)
        for volume in spec.get("volumes", []):
            if "hostPath" in volume:
                path = WORK + "/host" + volume["hostPath"]["path"]
                os.makedirs(path, mode=0o755, exist_ok=True)
                found[volume["name"]] = path
            else:
                name = f"{LABEL}-{pod}-{volume['name']}"
                sh("docker", "volume", "create", "--label", LABEL, name)
                # The kubelet gives an emptyDir to the pod's fsGroup, group-writable.
                sh("docker", "run", "--rm", "--label", LABEL, "-v", f"{name}:/v", "plenum/debian:bookworm",
                   "sh", "-c", f"chgrp {fs_group} /v && chmod 2775 /v")
                found[volume["name"]] = name
        return found

    def start(self, workload):
        """Runs one pod: its init containers to completion, then its main container."""
        spec = wiring.pod_spec(workload)
        pod = f"{workload['metadata']['name']}-0"
        volumes = self.volumes(pod, spec)
        pod_security = spec.get("securityContext", {})
        for kind in ("initContainers", "containers"):
            for c in spec.get(kind, []):
                env = {}
                for var in c.get("env", []):
                    if "value" in var:
                        env[var["name"]] = expand(var["value"], env)
                    else:
                        env[var["name"]] = self.downward(var["valueFrom"]["fieldRef"]["fieldPath"], pod)
                security = dict(pod_security, **c.get("securityContext", {}))
                argv = ["docker", "run", "--label", LABEL, "--network", LABEL,
                        "--user", f"{security.get('runAsUser', 0)}:{security.get('runAsGroup', 0)}",
                        "--group-add", str(pod_security.get("fsGroup", 0))]
                if security.get("readOnlyRootFilesystem"):
                    argv.append("--read-only")
                if security.get("allowPrivilegeEscalation") is False:
                    argv += ["--security-opt", "no-new-privileges"]
                for cap in security.get("capabilities", {}).get("drop", []):
                    argv += ["--cap-drop", cap]
                for cap in security.get("capabilities", {}).get("add", []):
                    argv += ["--cap-add", cap]
                if spec.get("hostPID"):
                    argv += ["--pid", "host"]
                for port in c.get("ports", []):
                    if "hostPort" in port:
                        argv += ["-p", f"{self.host_ip}:{port['hostPort']}:{port['containerPort']}"]
                for name, value in env.items():
                    argv += ["-e", f"{name}={value}"]
                for mount in c.get("volumeMounts", []):
                    argv += ["-v", f"{volumes[mount['name']]}:{mount['mountPath']}{':ro' if mount.get('readOnly') else ''}"]
                args = [expand(a, env) for a in c.get("args", [])]
                command = c.get("command", [])
                image = ["--entrypoint", command[0], c["image"], *command[1:]] if command else [c["image"]]
                if kind == "initContainers":
                    result = sh(*argv, "--rm", *image, *args, check=False)
                    print(f"  init {c['name']}: exit {result.returncode} {result.stderr.strip()[:200]}")
                    if result.returncode:
                        raise SystemExit(f"{pod}: init container {c['name']} failed")
                else:
                    name = f"{LABEL}-{pod}"
                    for alias in self.aliases(workload):
                        argv += ["--network-alias", alias]
                    sh(*argv, "-d", "--name", name, *image, *args)
                    return name, c


def ip(container):
    return sh("docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container).stdout.strip()


def probe(container, c, kind):
    spec = c[kind]
    if "grpc" in spec:
        service = spec["grpc"].get("service")
        argv = [PLENUM, "health", f"{ip(container)}:{spec['grpc']['port']}", *(["--service", service] if service else [])]
    else:
        argv = ["docker", "exec", container, *spec["exec"]["command"]]
    return sh(*argv, check=False)


def wait_started(container, c):
    """The startup probe, as often and as long as the pod spec allows."""
    spec = c["startupProbe"]
    started = time.time()
    for _ in range(spec.get("failureThreshold", 3)):
        result = probe(container, c, "startupProbe")
        if result.returncode == 0:
            return time.time() - started
        time.sleep(spec.get("periodSeconds", 10))
    logs = sh("docker", "logs", "--tail", "20", container, check=False)
    raise SystemExit(f"{container}: the startup probe never passed ({result.stdout}{result.stderr})\n{logs.stdout}{logs.stderr}")


def main():
    values = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {"brokerAccess": {"mode": "localService"}}
    values.setdefault("gpu", {})["enabled"] = False
    values.setdefault("gateway", {})["backendScheme"] = "http"
    values.setdefault("imageDefaults", {})["tag"] = "latest"
    docs = test_chart.documents(test_chart.render(values, []))
    cleanup()
    node = Node(docs)
    pods = {}
    try:
        for component in ("broker", "detector", "ocr", "gateway"):
            workload = wiring.workload(docs, component)
            print(f"== {component}: {workload['kind']} {workload['metadata']['name']}")
            began = time.time()
            container, c = node.start(workload)
            took = wait_started(container, c)
            for kind in ("readinessProbe", "livenessProbe"):
                result = probe(container, c, kind)
                print(f"  {kind}: {result.stdout.strip()} {result.stderr.strip()[:160]}")
                if result.returncode:
                    raise SystemExit(f"{container}: {kind} failed")
            print(f"  ready {time.time() - began:.1f}s after start (startup probe passed after {took:.1f}s)")
            pods[component] = (container, c)

        broker_container, broker = pods["broker"]
        listen = wiring.args_of(broker)["listen"]
        address = listen if listen.startswith("unix://") else f"http://{ip(broker_container)}:{wiring.port_of(listen)}"
        print("== the broker's books")
        print(sh("docker", "exec", broker_container, "plenum", "broker", "--broker", address.replace(ip(broker_container), "127.0.0.1"), "status").stdout)

        print("== Analyze tests/pages/page_0000.png through the gateway")
        gateway = f"{ip(pods['gateway'][0])}:{wiring.port_of(wiring.args_of(pods['gateway'][1])['listen'])}"
        result = sh(PLENUM, "analyze", os.path.join(ROOT, "tests/pages/page_0000.png"), "--gateway", gateway, "--out", WORK + "/out", check=False)
        print("\n".join(result.stdout.splitlines()[:4]), result.stderr[-400:])
        if result.returncode:
            raise SystemExit("Analyze failed")

        print("== stop as the kubelet would: SIGTERM, then SIGKILL after the grace period")
        for component in ("gateway", "ocr"):
            container, _ = pods[component]
            grace = wiring.pod_spec(wiring.workload(docs, component))["terminationGracePeriodSeconds"]
            began = time.time()
            sh("docker", "stop", "-t", str(grace), container)
            code = sh("docker", "inspect", "-f", "{{.State.ExitCode}}", container).stdout.strip()
            print(f"  {component}: exited {code} after {time.time() - began:.1f}s of a {grace}s grace period")
            if code != "0":
                raise SystemExit(f"{component} did not drain cleanly")
        print("docker smoke: all passed")
    finally:
        if "KEEP" not in os.environ:
            cleanup()


if __name__ == "__main__":
    main()
