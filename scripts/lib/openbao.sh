# Shared by the capture scripts (scripts/capture-openbao.sh and
# scripts/capture-openbao-signals.sh): a work directory cleaned up on exit, a
# clean `bao` CLI environment, an OpenBao dev server on a free 127.0.0.1 port,
# and the scenario/step bookkeeping and command wrappers that record every
# command in a transcript.
#
# Sourced (never run) by a bash script under `set -euo pipefail`, which sets
# ROOT_DIR (the repository) before. Defining the functions has no effect; the
# script calls, in this order:
#
#   require_tools TOOL...  bao (installed by scripts/install-openbao.sh if
#                          missing), then each TOOL, or exit 1
#   make_work NAME         WORK (a new temporary directory, removed on exit
#                          unless KEEP_WORK=1 or the script failed), SERVER_OUT,
#                          SERVER_PID, a private HOME, no BAO_*/VAULT_* settings
#   start_server DIR ARG...  `bao server -dev ARG...` with $WORK/server.hcl (the
#                          script writes it first), run in DIR; sets PORT and
#                          BAO_ADDR and waits until the server answers
#
# and then uses scenario/run/fails/try/value/as/notoken/audit_hash, which need
# TRANSCRIPT, SCEN_TSV, AUDIT and (audit_hash) DEVICE and HASHES_TSV, and a
# close_step function of its own; at the end, stop_server and check_log.

say() { echo "capture: $*" >&2; }

require_tools() {
    command -v bao >/dev/null 2>&1 || bash "$ROOT_DIR/scripts/install-openbao.sh" >&2
    command -v bao >/dev/null 2>&1 || { echo "capture: bao not on PATH" >&2; exit 1; }
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || { echo "capture: $tool is required" >&2; exit 1; }
    done
}

stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -INT "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "capture: server did not stop on SIGINT, sending SIGKILL" >&2
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}

cleanup() {
    local rc=$?
    stop_server
    if [ "${KEEP_WORK:-0}" = 1 ] || [ "$rc" != 0 ]; then
        echo "capture: work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}

# make_work NAME: the work directory ${TMPDIR:-/tmp}/NAME.XXXXXX and a clean
# CLI environment: no inherited token/address/namespace, an empty HOME (so no
# ~/.vault-token or CLI config is read), no colours.
make_work() {
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")"
    SERVER_OUT="$WORK/server.out"
    SERVER_PID=""
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    local v
    for v in $(env | sed -n 's/^\(\(BAO\|VAULT\)_[A-Z_]*\)=.*/\1/p'); do unset "$v"; done
    export HOME="$WORK/home"
    mkdir -p "$HOME"
    export NO_COLOR=1
}

free_port() {
    # A port p such that p and p+1 (the dev cluster listener) are both free on 127.0.0.1.
    python3 - <<'EOF'
import random, socket
for _ in range(200):
    p = random.randint(20000, 60000)
    ok = True
    for q in (p, p + 1):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", q))
        except OSError:
            ok = False
        finally:
            s.close()
    if ok:
        print(p)
        break
else:
    raise SystemExit("no free port pair found")
EOF
}

# start_server DIR ARG...: `bao server -dev ARG... -dev-no-store-token` on
# 127.0.0.1:$PORT (a free port) with the config $WORK/server.hcl, in DIR, its
# output in $SERVER_OUT; waits (30 s at most) until it has started and answers
# `bao status`.
start_server() {
    local dir="$1" i
    shift
    PORT="$(free_port)"
    export BAO_ADDR="http://127.0.0.1:$PORT"
    say "starting bao server -dev on 127.0.0.1:$PORT ($(bao version))"
    (cd "$dir" && exec bao server -dev "$@" -dev-no-store-token \
        -dev-listen-address="127.0.0.1:$PORT" -config="$WORK/server.hcl") \
        >"$SERVER_OUT" 2>&1 </dev/null &
    SERVER_PID=$!

    for i in $(seq 1 300); do
        if grep -q 'OpenBao server started' "$SERVER_OUT" 2>/dev/null && bao status >/dev/null 2>&1; then
            break
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            cat "$SERVER_OUT" >&2
            echo "capture: server exited during startup" >&2
            exit 1
        fi
        [ "$i" = 300 ] && { cat "$SERVER_OUT" >&2; echo "capture: server did not start" >&2; exit 1; }
        sleep 0.1
    done
}

# server_says LABEL: the value of the dev server's first "LABEL: value" line
# (Unseal Key, Root Token).
server_says() {
    sed -n "s/^$1: *//p" "$SERVER_OUT" | head -n1
}

# check_log FILE: FILE (an audit log) holds JSON objects, one a line, and does
# not name the work directory; exit 1 if not.
check_log() {
    local bad
    if ! jq -c . "$1" > /dev/null; then
        echo "capture: $1 is not valid JSON lines" >&2
        exit 1
    fi
    bad="$(jq -c 'select(type != "object")' "$1" | wc -l)"
    [ "$bad" = 0 ] || { echo "capture: $bad lines of $1 are not JSON objects" >&2; exit 1; }
    if grep -q "$WORK" "$1"; then
        echo "capture: $1 mentions the work directory" >&2
        exit 1
    fi
}

# ---------------------------------------------------------------- bookkeeping

lines_of() {
    if [ -f "$1" ]; then wc -l < "$1" | tr -d ' '; else echo 0; fi
}
log_lines() { lines_of "$AUDIT"; }

CUR_SCEN=""; SCEN_FIRST=0
CUR_STEP=""; STEP_DESC=""
close_scenario() {
    close_step
    [ -n "$CUR_SCEN" ] || return 0
    printf '%s\t%s\t%s\n' "$CUR_SCEN" "$SCEN_FIRST" "$(log_lines)" >> "$SCEN_TSV"
    CUR_SCEN=""
}
scenario() {
    close_scenario
    CUR_SCEN="$1"
    SCEN_FIRST=$(( $(log_lines) + 1 ))
    say "scenario $1"
    echo "######## scenario $1" >> "$TRANSCRIPT"
}

# run CMD...: must succeed. fails CMD...: must fail (warns if it does not).
# try CMD...: either. All record the command and its output in the transcript.
run() {
    echo "+ $*" >> "$TRANSCRIPT"
    "$@" >> "$TRANSCRIPT" 2>&1
}
fails() {
    echo "+ (expected to fail) $*" >> "$TRANSCRIPT"
    if "$@" >> "$TRANSCRIPT" 2>&1; then
        say "WARNING: expected failure succeeded in $CUR_SCEN/$CUR_STEP: $*"
        echo "!! unexpectedly succeeded" >> "$TRANSCRIPT"
    else
        echo "-> exit $?" >> "$TRANSCRIPT"
    fi
    return 0
}
try() {
    echo "+ (may fail) $*" >> "$TRANSCRIPT"
    "$@" >> "$TRANSCRIPT" 2>&1 || echo "-> exit $?" >> "$TRANSCRIPT"
    return 0
}
# value CMD...: run CMD, print its stdout (for $(...)), keep a copy in the transcript.
value() {
    local out
    echo "+ (captured) $*" >> "$TRANSCRIPT"
    out="$("$@" 2>> "$TRANSCRIPT")"
    echo "$out" >> "$TRANSCRIPT"
    printf '%s' "$out"
}
as() { local tok="$1"; shift; BAO_TOKEN="$tok" "$@"; }
notoken() { env -u BAO_TOKEN "$@"; }

# audit_hash STRING: POST sys/audit-hash/$DEVICE {"input": STRING} (a JSON body,
# so newlines and tabs survive) and record the hash in $HASHES_TSV.
audit_hash() {
    local input="$1" h
    echo "+ audit-hash $(jq -cn --arg i "$input" '$i')" >> "$TRANSCRIPT"
    h="$(jq -cn --arg i "$input" '{input:$i}' | bao write -format=json "sys/audit-hash/$DEVICE" - | jq -r .data.hash)"
    echo "$h" >> "$TRANSCRIPT"
    printf '%s\t%s\n' "$(jq -cn --arg i "$input" '$i')" "$h" >> "$HASHES_TSV"
}
