#!/usr/bin/env bash
# The compose stack end to end, offline: up, healthy, Analyze through the published
# gateway port, grpcurl against every service, the OCR container killed (the broker
# drops its lease, the restart policy brings it back, it takes a new lease), Analyze
# again, down. Prints how long each step took.
#
#   deploy/build-offline.sh && deploy/smoke.sh
#
# Needs: the images (deploy/build-offline.sh or `docker-compose build`), the provisioned
# models (scripts/provision-models.sh), docker-compose (1.29 or `docker compose`),
# target/release/plenum (the CLI, for analyze and broker status) and grpcurl
# (.venv/bin/grpcurl, or GRPCURL=...). Root (or the docker host's PID namespace) for the
# crash: see the kill step.
set -euo pipefail
cd "$(dirname "$0")/.."
PLENUM="${PLENUM:-target/release/plenum}"
GRPCURL="${GRPCURL:-.venv/bin/grpcurl}"
PROJECT="${PROJECT:-plenum-smoke}"
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
COMPOSE+=(-f deploy/compose.yaml -p "$PROJECT")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export PLENUM_GATEWAY_PORT=$port
gateway="127.0.0.1:$port"

[[ -x $PLENUM ]] || { echo "$PLENUM is not built (make build)" >&2; exit 2; }
[[ -x $GRPCURL ]] || { echo "no grpcurl at $GRPCURL" >&2; exit 2; }
[[ -d models/ocr/generated ]] || { echo "models/ocr/generated missing: scripts/provision-models.sh" >&2; exit 2; }
for image in broker detector ocr gateway; do
    docker image inspect "plenum/$image:latest" >/dev/null 2>&1 ||
        { echo "no image plenum/$image:latest: deploy/build-offline.sh" >&2; exit 2; }
done

t0=$(date +%s.%N)
step_started=$t0
step() { # step NAME: prints the time since the previous step, then the new step's name
    local now; now=$(date +%s.%N)
    printf '   (%.1fs)\n== %s\n' "$(echo "$now - $step_started" | bc)" "$1"
    step_started=$now
}
fail() { echo "SMOKE FAILED: $*" >&2; "${COMPOSE[@]}" ps >&2 || true; "${COMPOSE[@]}" logs --tail 30 >&2 || true; exit 1; }
down() { "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true; }
trap down EXIT
container() { "${COMPOSE[@]}" ps -q "$1"; }
ip() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(container "$1")"; }
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$(container "$1")" 2>/dev/null || echo gone; }
wait_healthy() { # wait_healthy SECONDS SERVICE...
    local limit=$1; shift
    local deadline=$(( $(date +%s) + limit ))
    for service in "$@"; do
        until [[ $(health "$service") == healthy ]]; do
            (( $(date +%s) < deadline )) || fail "$service not healthy after ${limit}s ($(health "$service"))"
            sleep 1
        done
    done
}
# shellcheck source=deploy/smoke-checks.sh
. deploy/smoke-checks.sh
leases() { # the broker's leases as "holder pid lease-id" lines
    "$PLENUM" broker --broker "http://$(ip broker):7001" status --json |
        python3 -c 'import json,sys; [print(l["holder"]["name"], l["holder"]["pid"], l["lease_id"]) for l in json.load(sys.stdin).get("leases", [])]'
}

echo "== up (project $PROJECT, gateway published on $gateway)"
down
"${COMPOSE[@]}" up -d --no-build
step "waiting for every service to be healthy (plenum health in each container)"
wait_healthy 300 broker detector ocr gateway
"${COMPOSE[@]}" ps

step "Analyze tests/pages/page_0000.png through the published gateway port"
out=$("$PLENUM" analyze tests/pages/page_0000.png --gateway "$gateway" --out "$(mktemp -d)") || fail "analyze: $out"
echo "$out" | head -8
check_contains "Analyze found no symbols" "vav_box\|damper\|diffuser\|thermostat" "$out"

step "grpcurl against each service (reflection, health, a real call)"
for service in broker:7001 detector:7002 ocr:7003 gateway:7000; do
    name=${service%%:*}
    addr="$(ip "$name"):${service#*:}"
    [[ $name == gateway ]] && addr=$gateway
    listed=$("$GRPCURL" -plaintext "$addr" list) || fail "grpcurl list on $name: $listed"
    check_listed "$name" "$listed"
    status=$("$GRPCURL" -plaintext -d '{}' "$addr" grpc.health.v1.Health/Check) || fail "health of $name: $status"
    check_serving "$name" "$status"
    echo "ok - $name ($addr): $(grep -c . <<<"$listed") services listed, SERVING"
done
out=$("$GRPCURL" -plaintext -d '{}' "$(ip broker):7001" plenum.broker.v1.Broker/Status) || fail "broker Status: $out"
check_contains "broker Status shows no leases" '"leases"' "$out"
out=$(printf '{"images": ["%s"]}' "$(base64 -w0 tests/pages/page_0000.png)" |
    "$GRPCURL" -plaintext -max-msg-sz 67108864 -d @ "$(ip detector):7002" plenum.detector.v1.Detector/Detect) ||
    fail "Detect through grpcurl: $out"
check_contains "Detect through grpcurl found nothing" '"className"' "$out"
echo "ok - Detect and broker Status through grpcurl"

step "the broker's books before the crash"
"$PLENUM" broker --broker "http://$(ip broker):7001" status
before=$(leases) || fail "could not read the broker's leases: $before"
# OCR holds one lease per model (text detection, angle, recognition).
ocr_leases=$(awk '$1 == "ocr" {print $3}' <<<"$before")
[[ -n $ocr_leases ]] || fail "no OCR lease before the crash: $before"
short=$(cut -c1-8 <<<"$ocr_leases" | paste -sd' ')

# `docker kill` counts as a manual stop, and Docker never restarts a container that was
# stopped by hand. A crash is the process dying under it: SIGKILL from the host, as the
# OOM killer would do it. Then the restart policy (unless-stopped) brings it back.
step "crash: SIGKILL to the OCR container's process (leases $short)"
pid=$(docker inspect -f '{{.State.Pid}}' "$(container ocr)")
restarts=$(docker inspect -f '{{.RestartCount}}' "$(container ocr)")
kill -9 "$pid"
wait_leases_gone 60 "$ocr_leases"
echo "ok - the broker dropped the dead OCR's leases $short; holders now:"
leases | awk '{print "   ", $1, "pid", $2, substr($3, 1, 8)}'
step "the restart policy brings OCR back; it takes a new lease"
wait_healthy 300 ocr
[[ $(docker inspect -f '{{.RestartCount}}' "$(container ocr)") -gt $restarts ]] || fail "OCR was not restarted by Docker"
wait_new_lease 60 ocr "$ocr_leases"
"$PLENUM" broker --broker "http://$(ip broker):7001" status

step "Analyze again after the restart"
wait_healthy 60 gateway
out=$("$PLENUM" analyze tests/pages/page_0000.png --gateway "$gateway" --out "$(mktemp -d)") || fail "analyze after restart: $out"
check_contains "Analyze after restart found no symbols" "vav_box\|damper\|diffuser\|thermostat" "$out"
echo "ok - Analyze works again"

step "down"
down
trap - EXIT
now=$(date +%s.%N)
printf '   (%.1fs)\nsmoke: all passed in %.0fs\n' "$(echo "$now - $step_started" | bc)" "$(echo "$now - $t0" | bc)"
