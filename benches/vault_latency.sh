#!/usr/bin/env bash
# benches/vault_latency.sh: how much does the socket audit target slow Vault down?
#
# Runs a real OpenBao dev server (`bao server -dev`) with two config-declared audit devices, a
# file device and a socket device aimed at a target, drives it with an HTTP load generator
# (Python, keep-alive connections, one timestamp pair per request) and reports request latency.
# Two cases in the same run, each on a fresh server:
#   A  target = a bare read-and-discard TCP reader (Python)
#   B  target = `auditwatch listen`, its findings on stdout going into a pipe nobody reads
#      (`sleep`), while the load contains root-token requests and unknown-token requests that make
#      findings: the findings output is blocked for most of the run.
# Prints p50/p90/p99/p99.9/max for both, the p99 ratio B/A, the requests slower than 100 ms
# and 1 s, and auditwatch's counters (analysis shed, archive…). See benches/README.md.
# Loopback only; every process it starts is stopped at exit.
set -euo pipefail
export LC_ALL=C

usage() {
    cat <<'EOF'
usage: benches/vault_latency.sh [--requests N] [--concurrency N] [--seed N] [--warmup N]
                                [--write-timeout DURATION] [--cases AB] [--stop-blocked]
                                [--no-build] [--keep]

  --requests N        measured requests per case                       default 3000
  --concurrency N     parallel keep-alive HTTP connections (closed loop) default 8
  --seed N            seed of the request mix                          default 1
  --warmup N          unmeasured kv reads before the measured ones      default 200
  --write-timeout D   the socket device's write_timeout                default 2s
  --cases AB          run only A, only B, or both                      default AB
  --stop-blocked      case B: send SIGTERM while stdout is still blocked (tests the drain
                      timeout; there may be no stats then). By default a second reader
                      drains the FIFO first, so auditwatch can exit cleanly with its stats
  --no-build          do not run cargo build --release
  --keep              keep the work directory (bench-data/vault-latency.*)

Request mix (seeded): 45% KV v2 reads, 35% KV v2 writes (app token), 10% KV reads with the
root token, 5% auth/token/create policies=[root] (a root_token.created finding each),
5% KV reads with an unknown token (a login.unresolved_token finding each). (Failed userpass
logins are left out: OpenBao spends ~0.1-0.6 s of bcrypt on each, which would swamp the
measurement.)
Environment: AUDITWATCH_BIN (default target/release/auditwatch), AUDITWATCH_BAO (bao binary).
Exit status: 0 when both cases ran, 1 on a failure (with a message), 2 on a usage error.
EOF
}

REQUESTS=3000
CONCURRENCY=8
SEED=1
WARMUP=200
WRITE_TIMEOUT=2s
CASES=AB
STOP_BLOCKED=0
BUILD=1
KEEP=0
while [[ $# -gt 0 ]]; do
    case "$1" in
    --requests) REQUESTS=${2:?}; shift 2 ;;
    --concurrency) CONCURRENCY=${2:?}; shift 2 ;;
    --seed) SEED=${2:?}; shift 2 ;;
    --warmup) WARMUP=${2:?}; shift 2 ;;
    --write-timeout) WRITE_TIMEOUT=${2:?}; shift 2 ;;
    --cases) CASES=${2:?}; shift 2 ;;
    --stop-blocked) STOP_BLOCKED=1; shift ;;
    --no-build) BUILD=0; shift ;;
    --keep) KEEP=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "vault_latency.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
die() { echo "vault_latency.sh: $*" >&2; exit 1; }
for v in REQUESTS CONCURRENCY SEED WARMUP; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "vault_latency.sh: --${v,,} must be a number" >&2; exit 2; }
done
((REQUESTS > 0 && CONCURRENCY > 0)) || { echo "vault_latency.sh: --requests and --concurrency must be > 0" >&2; exit 2; }
[[ $CASES =~ ^(A|B|AB|BA)$ ]] || { echo "vault_latency.sh: --cases must be A, B or AB" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
mkdir -p bench-data
say() { echo "vault_latency: $*" >&2; }

# ------------------------------------------------------------------ tools
find_bao() {
    if [[ -n ${AUDITWATCH_BAO:-} ]]; then echo "$AUDITWATCH_BAO"; return; fi
    local d
    if command -v bao >/dev/null 2>&1; then command -v bao; return; fi
    for d in "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)" \
        "$HOME/.local/bin"; do
        if [[ -n $d && -x $d/bao ]]; then echo "$d/bao"; return; fi
    done
    return 1
}
command -v python3 >/dev/null 2>&1 || die "python3 is required"
BAO=$(find_bao) || die "bao not found (install it: scripts/install-openbao.sh)"
AW=${AUDITWATCH_BIN:-${CARGO_TARGET_DIR:-target}/release/auditwatch}
if [[ $BUILD == 1 ]]; then
    say "cargo build --release (log: bench-data/build.log)"
    cargo build --release >bench-data/build.log 2>&1 || { tail -20 bench-data/build.log >&2; die "build failed"; }
fi
if [[ $CASES == *B* ]]; then
    [[ -x $AW ]] || die "$AW not found"
    "$AW" listen --help >/dev/null 2>&1 || die "$AW has no working 'listen' subcommand"
fi

# ------------------------------------------------------------------ work dir, cleanup
WORK=$(mktemp -d "$ROOT/bench-data/vault-latency.XXXXXX")
PIDS=()
STOP_RC=0
stop_pid() { # stop_pid PID SIGNAL SECONDS: signal, wait up to SECONDS, then SIGKILL; exit code in STOP_RC
    local pid=$1 sig=$2 secs=$3 i
    STOP_RC=0
    if kill -0 "$pid" 2>/dev/null; then
        kill "-$sig" "$pid" 2>/dev/null || true
        for ((i = 0; i < secs * 20; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    wait "$pid" 2>/dev/null || STOP_RC=$?
}
cleanup() {
    local rc=$? i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[$i]}" TERM 5
    done
    if [[ $KEEP == 1 || $rc != 0 ]]; then say "work directory kept: $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ the Python helper
cat >"$WORK/vl.py" <<'PYEOF'
"""vault_latency helper: discard reader, readiness wait, HTTP load generator, report."""
import http.client, json, math, os, random, signal, socket, sys, threading, time


def discard(port_file, stats_file):
    """Accept connections on 127.0.0.1:0, read and discard; on SIGTERM write counters."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(srv.getsockname()[1]))
    os.rename(port_file + ".tmp", port_file)
    c = {"connections": 0, "bytes": 0, "lines": 0}
    lock = threading.Lock()

    def handle(conn):
        buf = bytearray(1 << 20)
        while True:
            try:
                n = conn.recv_into(buf)
            except OSError:
                break
            if n == 0:
                break
            nl = buf.count(b"\n", 0, n)
            with lock:
                c["bytes"] += n
                c["lines"] += nl
        conn.close()

    def stop(*_):
        with lock:
            with open(stats_file, "w") as f:
                json.dump(c, f)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    while True:
        conn, _ = srv.accept()
        with lock:
            c["connections"] += 1
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def request(conn, method, path, token=None, body=None):
    headers = {}
    if token:
        headers["X-Vault-Token"] = token
    data = None
    if body is not None:
        data = json.dumps(body)
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    r = conn.getresponse()
    return r.status, r.read()


def wait_ready(addr, timeout):
    host, port = addr.rsplit(":", 1)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection(host, int(port), timeout=2)
            st, _ = request(c, "GET", "/v1/sys/health")
            c.close()
            if st == 200:
                return 0
        except OSError:
            pass
        time.sleep(0.1)
    print("server not ready", file=sys.stderr)
    return 1


# kind: (weight, method, expected status)
MIX = [
    ("kv_get", 45, 200),
    ("kv_put", 35, 200),
    ("root_kv_get", 10, 200),
    ("root_token_create", 5, 200),
    ("bad_token", 5, 403),
]
KEYS = 50


def load(addr, requests, concurrency, seed, warmup, out):
    host, port = addr.rsplit(":", 1)
    port = int(port)
    c = http.client.HTTPConnection(host, port, timeout=30)

    def must(st, body, what, ok=(200, 204)):
        if st not in ok:
            raise SystemExit(f"setup: {what}: HTTP {st}: {body[:300]!r}")

    pol = 'path "secret/data/bench/*" { capabilities = ["create", "read", "update"] }'
    must(*request(c, "PUT", "/v1/sys/policies/acl/bench-app", "root", {"policy": pol}), "policy")
    st, body = request(c, "POST", "/v1/auth/token/create", "root", {"policies": ["bench-app"], "ttl": "2h"})
    must(st, body, "app token")
    app = json.loads(body)["auth"]["client_token"]
    for k in range(KEYS):
        must(*request(c, "POST", f"/v1/secret/data/bench/k{k}", app, {"data": {"v": "x" * 64}}), "seed keys")
    c.close()

    rng = random.Random(seed)
    kinds = [k for k, _, _ in MIX]
    weights = [w for _, w, _ in MIX]
    expected = {k: e for k, _, e in MIX}
    plan = [("kv_get", 0)] * warmup + [(k, i) for i, k in enumerate(rng.choices(kinds, weights, k=requests))]
    keys = [rng.randrange(KEYS) for _ in range(len(plan))]

    def op(conn, kind, i, k):
        if kind == "kv_get":
            return request(conn, "GET", f"/v1/secret/data/bench/k{k}", app)
        if kind == "kv_put":
            return request(conn, "POST", f"/v1/secret/data/bench/k{k}", app, {"data": {"v": f"value-{i}"}})
        if kind == "root_kv_get":
            return request(conn, "GET", f"/v1/secret/data/bench/k{k}", "root")
        if kind == "root_token_create":
            return request(conn, "POST", "/v1/auth/token/create", "root", {"policies": ["root"], "ttl": "10m"})
        if kind == "bad_token":
            return request(conn, "GET", f"/v1/secret/data/bench/k{k}", f"s.bogus{seed}x{i}")
        raise ValueError(kind)

    nxt = [0]
    lock = threading.Lock()
    results = [None] * len(plan)
    t_start = [None]

    def worker():
        conn = http.client.HTTPConnection(host, port, timeout=30)
        while True:
            with lock:
                j = nxt[0]
                nxt[0] += 1
                if j == warmup and t_start[0] is None:
                    t_start[0] = time.perf_counter()
            if j >= len(plan):
                break
            kind, i = plan[j]
            t0 = time.perf_counter()
            try:
                st, _ = op(conn, kind, i, keys[j])
                err = None
            except (OSError, http.client.HTTPException) as e:
                st, err = None, repr(e)
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30)
            t1 = time.perf_counter()
            results[j] = (kind, st, (t1 - t0) * 1000.0, t0, err)
        conn.close()

    ts = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    t_end = time.perf_counter()
    measured = results[warmup:]
    lat = [r[2] for r in measured]
    bad = [r for r in measured if r[1] != expected[r[0]]]
    by_kind = {}
    for r in measured:
        by_kind[r[0]] = by_kind.get(r[0], 0) + 1
    slow = sorted(((r[2], r[0], r[3] - t_start[0]) for r in measured), reverse=True)[:5]
    doc = {
        "requests": len(measured),
        "elapsed_s": t_end - t_start[0],
        "by_kind": by_kind,
        "unexpected_status": len(bad),
        "unexpected_examples": [[r[0], r[1], r[4]] for r in bad[:5]],
        "slowest": [[round(ms, 2), k, round(at, 3)] for ms, k, at in slow],
        "latency_ms": lat,
    }
    with open(out, "w") as f:
        json.dump(doc, f)
    return 0


def pct(sorted_ms, p):
    if not sorted_ms:
        return float("nan")
    return sorted_ms[max(0, math.ceil(p / 100.0 * len(sorted_ms)) - 1)]


def report(*files):
    rows = {}
    print(f"{'case':<4} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'p99.9 ms':>9} {'max ms':>9} {'>100ms':>7} {'>1s':>5} {'bad':>4}")
    for f in files:
        name = os.path.basename(os.path.dirname(f))
        d = json.load(open(f))
        lat = sorted(d["latency_ms"])
        row = {
            "p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99), "p999": pct(lat, 99.9),
            "max": lat[-1], "slow100": sum(1 for x in lat if x > 100), "slow1s": sum(1 for x in lat if x > 1000),
        }
        rows[name] = row
        print(f"{name:<4} {d['requests']:>8} {d['requests'] / d['elapsed_s']:>8.0f} {row['p50']:>8.2f} "
              f"{row['p90']:>8.2f} {row['p99']:>8.2f} {row['p999']:>9.2f} {row['max']:>9.2f} "
              f"{row['slow100']:>7} {row['slow1s']:>5} {d['unexpected_status']:>4}")
    for f in files:
        name = os.path.basename(os.path.dirname(f))
        d = json.load(open(f))
        print(f"  {name}: mix {d['by_kind']}; slowest (ms, kind, s into run): {d['slowest']}")
        if d["unexpected_status"]:
            print(f"  {name}: {d['unexpected_status']} unexpected statuses, e.g. {d['unexpected_examples']}")
    if "A" in rows and "B" in rows:
        a, b = rows["A"], rows["B"]
        print(f"p99 ratio B/A: {b['p99'] / a['p99']:.2f}   p50 ratio B/A: {b['p50'] / a['p50']:.2f}   "
              f"max B/A: {b['max'] / a['max']:.2f}   requests > 100 ms: A {a['slow100']}, B {b['slow100']}")
    return 0


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "discard":
        discard(*args)
    elif cmd == "wait-ready":
        sys.exit(wait_ready(args[0], float(args[1])))
    elif cmd == "load":
        sys.exit(load(args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4]), args[5]))
    elif cmd == "report":
        sys.exit(report(*args))
    else:
        raise SystemExit(f"unknown command {cmd}")
PYEOF

free_port_pair() { # p such that p and p+1 (the dev cluster port) are free on 127.0.0.1
    python3 - <<'EOF'
import random, socket
for _ in range(500):
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
    raise SystemExit("no free port pair")
EOF
}

wait_file() { # wait_file FILE SECONDS PID: until FILE exists (non-empty); fails if PID dies
    local i
    for ((i = 0; i < $2 * 20; i++)); do
        [[ -s $1 ]] && return 0
        kill -0 "$3" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# ------------------------------------------------------------------ one case
run_case() {
    local name=$1 dir="$WORK/$1" target_port target_pid sleep_pid="" i
    mkdir -p "$dir/home"
    say "case $name: starting the target"
    if [[ $name == A ]]; then
        python3 "$WORK/vl.py" discard "$dir/port" "$dir/reader.json" 2>"$dir/reader.err" &
        target_pid=$!
        PIDS+=("$target_pid")
        wait_file "$dir/port" 10 "$target_pid" || die "case A: the discard reader did not start"
        target_port=$(cat "$dir/port")
    else
        mkfifo "$dir/findings.fifo"
        # a reader that never reads: the findings output blocks once the pipe (64 KiB) is full
        sleep 100000 <"$dir/findings.fifo" &
        sleep_pid=$!
        PIDS+=("$sleep_pid")
        "$AW" listen --tcp 127.0.0.1:0 --archive "$dir/arch" --stats-json "$dir/stats.json" \
            >"$dir/findings.fifo" 2>"$dir/listen.err" &
        target_pid=$!
        PIDS+=("$target_pid")
        for ((i = 0; i < 600; i++)); do
            grep -q '^auditwatch listen: ready' "$dir/listen.err" 2>/dev/null && break
            kill -0 "$target_pid" 2>/dev/null || { cat "$dir/listen.err" >&2; die "case B: auditwatch listen exited"; }
            sleep 0.05
        done
        grep -q '^auditwatch listen: ready' "$dir/listen.err" || die "case B: auditwatch listen not ready in 30 s"
        target_port=$(sed -n 's/^auditwatch listen: listening on tcp 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$dir/listen.err" | head -n1)
        [[ -n $target_port ]] || die "case B: no 'listening on tcp' line"
    fi

    local bao_port
    bao_port=$(free_port_pair)
    cat >"$dir/bao.hcl" <<EOF
audit "file" "file-audit" {
  options {
    file_path = "$dir/file.log"
  }
}
audit "socket" "sock-audit" {
  options {
    address       = "127.0.0.1:$target_port"
    socket_type   = "tcp"
    write_timeout = "$WRITE_TIMEOUT"
  }
}
EOF
    say "case $name: bao server -dev on 127.0.0.1:$bao_port, socket device -> 127.0.0.1:$target_port"
    (
        for v in $(env | sed -n 's/^\(\(BAO\|VAULT\)_[A-Z_]*\)=.*/\1/p'); do unset "$v"; done
        export HOME="$dir/home"
        exec "$BAO" server -dev -dev-root-token-id=root -dev-no-store-token \
            -dev-listen-address="127.0.0.1:$bao_port" -config="$dir/bao.hcl" </dev/null
    ) >"$dir/bao.out" 2>&1 &
    local bao_pid=$!
    PIDS+=("$bao_pid")
    python3 "$WORK/vl.py" wait-ready "127.0.0.1:$bao_port" 60 || { tail -30 "$dir/bao.out" >&2; die "case $name: bao did not start"; }

    say "case $name: $WARMUP warm-up + $REQUESTS measured requests, $CONCURRENCY connections"
    local t0=$EPOCHREALTIME
    timeout 900 python3 "$WORK/vl.py" load "127.0.0.1:$bao_port" "$REQUESTS" "$CONCURRENCY" "$SEED" "$WARMUP" \
        "$dir/load.json" || die "case $name: load generator failed"
    say "case $name: load done in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}') s"

    stop_pid "$bao_pid" INT 30
    say "case $name: bao stopped (exit $STOP_RC); audit backend errors in its log: $(grep -c 'failed to log' "$dir/bao.out" || true)"
    echo "$(grep -c 'failed to log' "$dir/bao.out" || true)" >"$dir/bao_audit_errors"
    wc -l <"$dir/file.log" | tr -d ' ' >"$dir/file_lines"

    if [[ $name == A ]]; then
        stop_pid "$target_pid" TERM 10
        [[ $STOP_RC == 0 ]] || say "case A: the discard reader exited $STOP_RC"
    else
        local cat_pid=""
        if [[ $STOP_BLOCKED == 0 ]]; then
            # a second reader on the FIFO drains the blocked findings, so that the listener can
            # finish cleanly and write its stats
            cat "$dir/findings.fifo" >"$dir/findings.jsonl" &
            cat_pid=$!
            PIDS+=("$cat_pid")
        fi
        local t1=$EPOCHREALTIME
        kill -TERM "$target_pid" 2>/dev/null || true
        for ((i = 0; i < 600; i++)); do kill -0 "$target_pid" 2>/dev/null || break; sleep 0.05; done
        if kill -0 "$target_pid" 2>/dev/null; then
            say "case B: auditwatch still running 30 s after SIGTERM; killing the findings reader"
            echo "still running 30 s after SIGTERM" >"$dir/stop_note"
        fi
        stop_pid "$sleep_pid" TERM 2
        stop_pid "$target_pid" TERM 10
        echo "$STOP_RC" >"$dir/exit_code"
        awk -v a="$t1" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.2f\n", b-a}' >"$dir/stop_seconds"
        if [[ -n $cat_pid ]]; then
            stop_pid "$cat_pid" TERM 5
            echo "$(wc -l <"$dir/findings.jsonl" | tr -d ' ') findings ($(wc -c <"$dir/findings.jsonl" | tr -d ' ') bytes; a pipe holds 65536)" >"$dir/findings_read"
        fi
        say "case B: auditwatch exited $STOP_RC, $(cat "$dir/stop_seconds") s after SIGTERM"
    fi
}

for ((c = 0; c < ${#CASES}; c++)); do run_case "${CASES:$c:1}"; done

# ------------------------------------------------------------------ report
echo
echo "== Vault latency, socket audit target A (read-and-discard) vs B (auditwatch listen, stdout blocked)"
echo "   $REQUESTS requests per case, $CONCURRENCY keep-alive connections, write_timeout=$WRITE_TIMEOUT, OpenBao: $("$BAO" version | head -n1)"
files=()
for ((c = 0; c < ${#CASES}; c++)); do files+=("$WORK/${CASES:$c:1}/load.json"); done
python3 "$WORK/vl.py" report "${files[@]}"
echo
for ((c = 0; c < ${#CASES}; c++)); do
    n=${CASES:$c:1}
    d="$WORK/$n"
    echo "case $n: file device wrote $(cat "$d/file_lines") entries; bao logged $(cat "$d/bao_audit_errors") audit backend failures"
    if [[ $n == A ]]; then
        [[ -s $d/reader.json ]] && echo "case A: discard reader: $(cat "$d/reader.json")"
    else
        echo "case B: auditwatch exit code $(cat "$d/exit_code") after $(cat "$d/stop_seconds") s$( [[ -s $d/stop_note ]] && echo " ($(cat "$d/stop_note"))")"
        [[ -s $d/findings_read ]] && echo "case B: $(cat "$d/findings_read") findings read from stdout at the end (blocked until then)"
        { grep '^auditwatch listen: ' "$d/listen.err" || true; } | { grep -v 'listening on\|ready' || true; } | sed 's/^/  /'
        echo "  stderr: $(wc -l <"$d/listen.err" | tr -d ' ') lines, $(grep -c 'WARN' "$d/listen.err" || true) of them WARN; first other lines:"
        { grep -v '^auditwatch listen: ' "$d/listen.err" || true; } | head -n 3 | cut -c1-220 | sed 's/^/    /'
        if [[ -s $d/stats.json ]]; then
            python3 - "$d/stats.json" "$(cat "$d/file_lines")" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
file_lines = int(sys.argv[2])
lst = s.get("listener", {})
arc = s.get("archive") or {}
keys = ["entries", "findings", "suppressed", "parse_errors", "truncated"]
print("  stats: " + ", ".join(f"{k}={s.get(k)}" for k in keys if k in s))
print("  listener: " + ", ".join(f"{k}={v}" for k, v in lst.items()))
print("  archive: " + ", ".join(f"{k}={v}" for k, v in arc.items()))
print(f"  findings by rule: {s.get('findings_by_rule')}")
got = arc.get("lines_written")
print(f"  archive lines {got} vs file device entries {file_lines} (each device writes its own probe)")
EOF
        else
            echo "  (no stats.json written)"
        fi
    fi
done
exit 0
