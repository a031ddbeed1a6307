#!/usr/bin/env bash
# deploy/smoke.sh needs the images and a Docker host; its pass/fail checks
# (deploy/smoke-checks.sh) do not. This runs each against fake output, once where its
# condition holds (it must pass) and once where it does not (it must fail), including
# a `leases` that prints the dead holder's lease among thousands of lines: the output
# that made the old `until ! leases | grep -q` loop pass at once.
#
#   deploy/smoke-checks-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/smoke-checks.sh
. deploy/smoke-checks.sh
fail() { echo "check failed: $*" >&2; exit 1; }

failures=0
# expect pass|fail NAME COMMAND...: runs COMMAND in a subshell (a failing check exits it).
expect() {
    local want=$1 name=$2; shift 2
    local got=pass
    ("$@") >/dev/null 2>&1 || got=fail
    if [[ $got == "$want" ]]; then
        echo "ok - $name: it ${want}ed as it should"
    else
        echo "NOT OK - $name: expected it to $want, it ${got}ed" >&2
        failures=$((failures + 1))
    fi
}

many_leases() { # many_leases HOLDER LEASE: LEASE, then 20000 other holders' leases
    python3 -c 'import sys
print(sys.argv[1], 42, sys.argv[2])
for i in range(20000): print("detector", 7, "other-%05d" % i)' "$@"
}

# The broker still books the dead OCR's lease: the wait must time out and fail.
still_booked() { leases() { many_leases ocr dead-lease; }; wait_leases_gone 1 dead-lease; }
expect fail "wait_leases_gone while the lease is still booked" still_booked
gone() { leases() { many_leases detector live-lease; }; wait_leases_gone 1 dead-lease; }
expect pass "wait_leases_gone once the lease is gone" gone
# A broker that does not answer proves nothing: fail, do not pass.
unreadable() { leases() { echo "connection refused" >&2; return 1; }; wait_leases_gone 1 dead-lease; }
expect fail "wait_leases_gone when the broker does not answer" unreadable
gone_two() { leases() { printf 'ocr 42 dead-b\n'; }; wait_leases_gone 1 $'dead-a\ndead-b'; }
expect fail "wait_leases_gone while one of several leases is still booked" gone_two

only_old() { leases() { many_leases ocr old-lease; }; wait_new_lease 1 ocr old-lease; }
expect fail "wait_new_lease while the holder has only its old lease" only_old
none() { leases() { many_leases detector fresh; }; wait_new_lease 1 ocr old-lease; }
expect fail "wait_new_lease while the holder has no lease at all" none
fresh() { leases() { many_leases ocr fresh-lease; }; wait_new_lease 1 ocr old-lease; }
expect pass "wait_new_lease once the holder has a new lease" fresh

gateway_list=$'grpc.health.v1.Health\ngrpc.reflection.v1.ServerReflection\nplenum.gateway.v1.Gateway'
expect pass "check_listed on a server offering its own API" check_listed gateway "$gateway_list"
expect fail "check_listed on a server also offering the Broker API" \
    check_listed gateway "$gateway_list"$'\nplenum.broker.v1.Broker'
expect fail "check_listed on a server offering another API only" \
    check_listed gateway $'grpc.health.v1.Health\nplenum.broker.v1.Broker'

expect pass "check_serving on SERVING" check_serving gateway $'{\n  "status": "SERVING"\n}'
expect fail "check_serving on NOT_SERVING" check_serving gateway $'{\n  "status": "NOT_SERVING"\n}'

expect pass "check_contains on a match" check_contains "no symbols" "damper\|vav_box" "1 damper"
expect fail "check_contains without one" check_contains "no symbols" "damper\|vav_box" "0 symbols"

if ((failures)); then
    echo "smoke checks: $failures wrong" >&2
    exit 1
fi
echo "smoke checks: all behave"
