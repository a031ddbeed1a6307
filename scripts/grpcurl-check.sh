#!/usr/bin/env bash
# grpcurl (a real client nobody here wrote, reflection v1alpha only) against a
# running broker with no proto files: list, describe, a Status call, the health check.
set -euo pipefail
cd "$(dirname "$0")/.."
GRPCURL="${GRPCURL:-.venv/bin/grpcurl}"
# The release binaries `make test-grpcurl` builds first (built here only when missing: a
# build of two binaries alone resolves dependency features differently and recompiles).
[[ -x target/release/plenum-broker && -x target/release/plenum ]] ||
    cargo build --release --quiet --bin plenum-broker --bin plenum
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
addr="127.0.0.1:$port"
target/release/plenum-broker --listen "$addr" --simulate "GTX 1070:8GiB" --reserve 1GiB --log warn &
broker=$!
trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null || true' EXIT
fail() { echo "grpcurl check FAILED: $*" >&2; exit 1; }
serving=false
for _ in $(seq 100); do
    target/release/plenum health "$addr" >/dev/null 2>&1 && { serving=true; break; }
    sleep 0.1
done
$serving || fail "the broker did not become SERVING in 10 s"
expect() { # expect NAME PATTERN OUTPUT
    grep -q -- "$2" <<<"$3" || fail "$1: expected '$2' in: $3"
    echo "ok - $1"
}

out=$("$GRPCURL" -plaintext "$addr" list)
expect "list shows the broker" "plenum.broker.v1.Broker" "$out"
expect "list shows health" "grpc.health.v1.Health" "$out"
others=$(grep '^plenum\.' <<<"$out" | grep -v '^plenum\.broker\.v1\.' || true)
[[ -z $others ]] || fail "list offers APIs the broker does not serve: $others"
echo "ok - list offers no other Plenum API"

out=$("$GRPCURL" -plaintext "$addr" describe plenum.broker.v1.Broker)
expect "describe shows Acquire" "rpc Acquire" "$out"
expect "describe shows OpenSession as a bidi stream" "rpc OpenSession ( stream" "$out"

out=$("$GRPCURL" -plaintext "$addr" describe plenum.broker.v1.AcquireRequest)
expect "describe shows message fields" "max_wait_ms" "$out"

out=$("$GRPCURL" -plaintext -d '{}' "$addr" plenum.broker.v1.Broker/Status)
expect "Status names the device" '"name": "GTX 1070"' "$out"
expect "Status shows free bytes (8 GiB - 1 GiB reserve)" '"freeForLeaseBytes": "7516192768"' "$out"

out=$("$GRPCURL" -plaintext -d '{"service": "plenum.broker.v1.Broker"}' "$addr" grpc.health.v1.Health/Check)
expect "health check says SERVING" '"status": "SERVING"' "$out"

out=$("$GRPCURL" -plaintext -d '{"session_id": "nope", "bytes": -1}' "$addr" plenum.broker.v1.Broker/Acquire 2>&1 || true)
expect "bad input names the field" "InvalidArgument" "$out"
expect "bad input names the field" "bytes" "$out"
echo "grpcurl check: all passed"
