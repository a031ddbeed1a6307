# The checks of deploy/smoke.sh that decide pass or fail, sourced by it and by
# deploy/smoke-checks-test.sh, which runs each against fake output to show it fails
# when its condition is false. They call `leases` (the broker's leases as "holder pid
# lease-id" lines) and `fail` (report and exit), which the caller defines.
#
# Every check captures a command's output first and then tests it. A pipeline into
# `grep -q` passes by accident under `set -o pipefail`: grep exits at the first match,
# the writer dies of SIGPIPE, the pipeline fails, and a negated pipeline (`! cmd | grep
# -q`) "succeeds" whatever the output said; a writer that failed outright negates to
# success the same way.

# wait_leases_gone SECONDS LEASE_IDS: until the broker books none of LEASE_IDS (one a line).
wait_leases_gone() {
    local seconds=$1 ids=$2 now deadline
    deadline=$(($(date +%s) + seconds))
    while true; do
        now=$(leases) || fail "could not read the broker's leases: $now"
        grep -qF -- "$ids" <<<"$now" || return 0
        (($(date +%s) < deadline)) ||
            fail "the broker still books the dead holder's leases ${seconds} s after the crash: $now"
        sleep 0.2
    done
}

# wait_new_lease SECONDS HOLDER OLD_LEASE_IDS: until HOLDER holds a lease not among
# OLD_LEASE_IDS.
wait_new_lease() {
    local seconds=$1 holder=$2 old=$3 now mine deadline
    deadline=$(($(date +%s) + seconds))
    while true; do
        now=$(leases) || fail "could not read the broker's leases: $now"
        mine=$(awk -v holder="$holder" '$1 == holder' <<<"$now")
        [[ -n $mine ]] && grep -qvF -- "$old" <<<"$mine" && return 0
        (($(date +%s) < deadline)) || fail "the restarted $holder holds no new lease: $now"
        sleep 0.5
    done
}

# check_listed NAME LISTED: `grpcurl list` output offers plenum.NAME.v1 and no other
# Plenum API (each server answers only its own).
check_listed() {
    local name=$1 listed=$2 others
    grep -q "^plenum\.$name\.v1\." <<<"$listed" || fail "grpcurl list on $name does not offer plenum.$name.v1: $listed"
    others=$(grep '^plenum\.' <<<"$listed" | grep -v "^plenum\.$name\.v1\." || true)
    [[ -z $others ]] || fail "grpcurl list on $name offers APIs it does not serve: $others"
}

# check_serving NAME HEALTH_CHECK_OUTPUT: the health check answered SERVING (NOT_SERVING
# contains the word too, so the JSON value is matched whole).
check_serving() {
    grep -q '"status": "SERVING"' <<<"$2" || fail "health of $1: $2"
}

# check_contains WHAT PATTERN OUTPUT: OUTPUT matches PATTERN (grep -i), or fail saying WHAT.
check_contains() {
    grep -qi -- "$2" <<<"$3" || fail "$1: $3"
}
