# Shell functions every guest script has (it is sourced before the script, by bash).
# They print the `MNVM {json}` lines the host test parses; see console.rs for the events.

# Quotes $1 as a JSON string: backslashes and quotes escaped, control characters dropped.
mnvm_json() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=$(printf '%s' "$s" | tr -d '\000-\037')
    printf '"%s"' "$s"
}

mnvm_emit() {
    printf 'MNVM %s\n' "$1"
}

# mnvm_check NAME COMMAND [ARG...]: runs the command, its output becomes the check's output,
# and reports ok (exit 0) or not. Returns the command's status, so `set -e` scripts stop at the
# first failed check.
mnvm_check() {
    local name=$1 rc ok=false
    shift
    mnvm_emit "{\"event\":\"begin\",\"name\":$(mnvm_json "$name")}"
    "$@" 2>&1
    rc=$?
    [ "$rc" -eq 0 ] && ok=true
    mnvm_emit "{\"event\":\"check\",\"name\":$(mnvm_json "$name"),\"ok\":$ok,\"exit\":$rc}"
    return "$rc"
}

# mnvm_value NAME VALUE: a measurement or fact for the test (boot time, RTT, a version).
mnvm_value() {
    mnvm_emit "{\"event\":\"value\",\"name\":$(mnvm_json "$1"),\"value\":$(mnvm_json "$2")}"
}

# mnvm_barrier NAME: waits until every guest of the cluster has reached NAME (a lone guest goes
# on at once). Every guest must pass the same barriers in the same order; NAME has no spaces.
mnvm_barrier() {
    local word name
    mnvm_emit "{\"event\":\"barrier\",\"name\":$(mnvm_json "$1")}"
    while read -r word name </dev/console; do
        [ "$word" = go ] && [ "$name" = "$1" ] && return 0
    done
    return 1
}

# mnvm_until SECONDS COMMAND [ARG...]: retries the command every 0.1 s until it succeeds or the
# deadline passes (status 1). For waiting on a peer VM: a condition with a deadline, not a sleep.
mnvm_until() {
    local deadline=$(( $(date +%s%N) / 1000000 + $1 * 1000 ))
    shift
    until "$@" >/dev/null 2>&1; do
        [ $(( $(date +%s%N) / 1000000 )) -ge "$deadline" ] && return 1
        sleep 0.1
    done
}
