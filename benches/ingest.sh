#!/usr/bin/env bash
# benches/ingest.sh: how fast can `auditwatch listen` take in audit entries over TCP?
#
# 4 loopback TCP connections send a realistic generated corpus (median entry ~1.6 KB) as fast
# as the kernel allows (sendfile), one quarter of the corpus each, to three receivers, in the
# same run and interleaved over --rounds rounds:
#   A  a bare read-and-discard reader (Python, recv_into, no parsing)
#   B  `auditwatch listen` with its archive on (default fsync policy, 1 s) and analysis on
#   C  a plain append of the same bytes to one disk file (whole lines only), fsync every 1 s
#      and once at the end (Python)
# Reports entries/s and MB/s per receiver, the ratios B/A and B/C, and auditwatch's counters
# (archive bytes written and dropped, analysis shed, ...). See benches/README.md.
# Loopback only; every process it starts is stopped at exit.
set -euo pipefail
export LC_ALL=C

usage() {
    cat <<'EOF'
usage: benches/ingest.sh [--size 512MiB] [--seed 7] [--profile realistic|all-candidates]
                         [--rounds 3] [--cases ABC] [--fsync 1s] [--threads N]
                         [--aw-arg ARG]... [--no-build] [--keep]

  --size SIZE      corpus size (gen_corpus units)                           default 512MiB
  --seed N         generator seed                                           default 7
  --profile P      realistic | all-candidates                               default realistic
  --rounds N       rounds; each runs the cases in order, the best is kept   default 3
  --cases ABC      which receivers to run (any of A, B, C)                  default ABC
  --fsync D        fsync policy for B (--archive-fsync) and C: an interval
                   (1s, 500ms), always or never (C still fsyncs once at the end) default 1s
  --threads N      auditwatch's --threads                                   default: its own
  --aw-arg ARG     one more argument for `auditwatch listen` (repeatable), e.g.
                   --aw-arg --no-archive
  --no-build       do not run cargo build --release (binary and example)
  --keep           keep the work directory (bench-data/ingest.*); the corpus and its four
                   parts (bench-data/ingest-<profile>-seed<seed>-<size>.log*) are always kept

Environment: AUDITWATCH_BIN (default target/release/auditwatch).
Timing: from the moment the 4 senders start until
  A  the reader has seen EOF on all 4 connections;
  B  the archive (live file + segments) holds every byte sent ("archived"), and separately
     until the process has exited after SIGTERM (drain + final fsync + stats; "exit");
  C  all bytes are written and the final fsync has returned.
Exit status: 0 when every case ran, 1 on a failure, 2 on a usage error.
EOF
}

SIZE=512MiB
SEED=7
PROFILE=realistic
ROUNDS=3
CASES=ABC
FSYNC=1s
THREADS=""
AW_EXTRA=()
BUILD=1
KEEP=0
while [[ $# -gt 0 ]]; do
    case "$1" in
    --size) SIZE=${2:?}; shift 2 ;;
    --seed) SEED=${2:?}; shift 2 ;;
    --profile) PROFILE=${2:?}; shift 2 ;;
    --rounds) ROUNDS=${2:?}; shift 2 ;;
    --cases) CASES=${2:?}; shift 2 ;;
    --fsync) FSYNC=${2:?}; shift 2 ;;
    --threads) THREADS=${2:?}; shift 2 ;;
    --aw-arg) AW_EXTRA+=("${2:?}"); shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --keep) KEEP=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "ingest.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
bad() { echo "ingest.sh: $*" >&2; exit 2; }
[[ $SEED =~ ^[0-9]+$ ]] || bad "--seed must be a number"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || bad "--rounds must be a positive number"
[[ $CASES =~ ^[ABC]+$ ]] || bad "--cases takes letters A, B, C"
[[ -z $THREADS || $THREADS =~ ^[1-9][0-9]*$ ]] || bad "--threads must be a positive number"
case "$PROFILE" in realistic | all-candidates) ;; *) bad "--profile must be realistic or all-candidates" ;; esac
FSYNC_S=$(awk -v s="$FSYNC" 'BEGIN {
    if (s == "never") { print "1e12"; exit 0 }
    if (s == "always") { print "0"; exit 0 }
    if (match(s, /^[0-9]+(\.[0-9]+)?/) == 0) exit 1
    n = substr(s, 1, RLENGTH); u = substr(s, RLENGTH + 1)
    if (u == "ms") n /= 1000; else if (u == "m") n *= 60; else if (u != "s" && u != "") exit 1
    printf "%.3f", n }') || bad "--fsync takes a duration such as 1s or 500ms"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
mkdir -p bench-data
die() { echo "ingest.sh: $*" >&2; exit 1; }
say() { echo "ingest: $*" >&2; }
command -v python3 >/dev/null 2>&1 || die "python3 is required"
command -v split >/dev/null 2>&1 || die "split (coreutils) is required"

AW=${AUDITWATCH_BIN:-${CARGO_TARGET_DIR:-target}/release/auditwatch}
if [[ $BUILD == 1 ]]; then
    say "cargo build --release, and the gen_corpus example (log: bench-data/build.log)"
    { cargo build --release && cargo build --release --example gen_corpus; } >bench-data/build.log 2>&1 ||
        { tail -20 bench-data/build.log >&2; die "build failed"; }
fi
if [[ $CASES == *B* ]]; then
    [[ -x $AW ]] || die "$AW not found"
    "$AW" listen --help >/dev/null 2>&1 || die "$AW has no working 'listen' subcommand"
fi

# ------------------------------------------------------------------ corpus and parts
CORPUS="bench-data/ingest-$PROFILE-seed$SEED-$SIZE.log"
if [[ ! -s $CORPUS ]]; then
    GEN=${CARGO_TARGET_DIR:-target}/release/examples/gen_corpus
    [[ -x $GEN ]] || die "$GEN not built (run without --no-build)"
    say "generating $CORPUS"
    "$GEN" --seed "$SEED" --size "$SIZE" --profile "$PROFILE" --out "$CORPUS.tmp" 2>"$CORPUS.summary.txt"
    mv "$CORPUS.tmp" "$CORPUS"
    rm -f "$CORPUS".part-*
fi
PARTS=("$CORPUS".part-0{0,1,2,3})
if [[ ! -s ${PARTS[3]} || ${PARTS[0]} -ot $CORPUS ]]; then
    say "splitting $CORPUS into 4 parts at line ends"
    rm -f "$CORPUS".part-*
    split -n l/4 -d -a 2 "$CORPUS" "$CORPUS.part-"
fi
TOTAL_BYTES=$(stat -c %s "$CORPUS")
TOTAL_LINES=$(wc -l <"$CORPUS" | tr -d ' ')
PART_BYTES=$(cat "${PARTS[@]}" | wc -c | tr -d ' ')
[[ $PART_BYTES == "$TOTAL_BYTES" ]] || die "the parts hold $PART_BYTES bytes, the corpus $TOTAL_BYTES"
say "corpus $CORPUS: $TOTAL_LINES entries, $TOTAL_BYTES bytes ($(awk -v b="$TOTAL_BYTES" -v l="$TOTAL_LINES" 'BEGIN{printf "%.0f", b/l}') B mean)"
cat "${PARTS[@]}" >/dev/null # warm the page cache

# ------------------------------------------------------------------ work dir, cleanup
WORK=$(mktemp -d "$ROOT/bench-data/ingest.XXXXXX")
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
wait_pid() { # wait_pid PID SECONDS: wait for it to exit by itself, SIGKILL after SECONDS; code in STOP_RC
    local i
    for ((i = 0; i < $2 * 20; i++)); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done
    stop_pid "$1" KILL 1
}
cleanup() {
    local rc=$? i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[$i]}" TERM 5; done
    if [[ $KEEP == 1 || $rc != 0 ]]; then
        say "work directory kept: $WORK (archives and append files removed)"
        rm -rf "$WORK"/*/arch "$WORK"/*/append.log
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ the Python helper
cat >"$WORK/ing.py" <<'PYEOF'
"""ingest helper: the discard and append receivers, the 4-connection sender, the report."""
import json, os, socket, sys, threading, time

BUF = 4 << 20


def serve(mode, port_file, result_file, conns, out=None, fsync_s=1.0):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(srv.getsockname()[1]))
    os.rename(port_file + ".tmp", port_file)
    lock = threading.Lock()
    st = {"bytes": 0, "written": 0, "fsyncs": 0, "done": 0, "t_first": None, "t_end": None}
    fd = None
    last_sync = [time.time()]
    if mode == "append":
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600)
    finished = threading.Event()

    def write_all(data):
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]

    def handle(conn):
        buf = bytearray(BUF)
        tail = b""
        got = 0
        while True:
            n = conn.recv_into(buf)
            if n == 0:
                break
            if st["t_first"] is None:
                st["t_first"] = time.time()
            got += n
            if fd is not None:
                data = tail + buf[:n] if tail else bytes(buf[:n])
                i = data.rfind(b"\n")
                if i >= 0:
                    with lock:
                        write_all(memoryview(data)[: i + 1])
                        st["written"] += i + 1
                        now = time.time()
                        if now - last_sync[0] >= fsync_s:
                            os.fdatasync(fd)
                            st["fsyncs"] += 1
                            last_sync[0] = now
                    tail = data[i + 1:]
                else:
                    tail = data
        with lock:
            st["bytes"] += got
            st["done"] += 1
            last = st["done"] == conns
            if last:
                if fd is not None:
                    os.fdatasync(fd)
                    st["fsyncs"] += 1
                st["t_end"] = time.time()
                st["unterminated_tail_bytes"] = len(tail)
        conn.close()
        if last:
            finished.set()

    threads = []
    for _ in range(conns):
        c, _ = srv.accept()
        t = threading.Thread(target=handle, args=(c,))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    if fd is not None:
        os.close(fd)
    with open(result_file, "w") as f:
        json.dump(st, f)


def archived_bytes(d):
    total = 0
    try:
        for e in os.scandir(d):
            if e.name.startswith(".") or e.name == "manifest.jsonl" or not e.is_file(follow_symlinks=False):
                continue
            total += e.stat(follow_symlinks=False).st_size
    except FileNotFoundError:
        pass
    return total


def send(port, result_file, archive_dir, total, timeout, *parts):
    port, total, timeout = int(port), int(total), float(timeout)
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in parts]
    barrier = threading.Barrier(len(parts) + 1)
    t_sent = [None] * len(parts)
    t_eof = [None] * len(parts)
    errors = []

    def go(i, s, path):
        try:
            with open(path, "rb") as f:
                barrier.wait()
                s.sendfile(f)
                t_sent[i] = time.time()
                s.shutdown(socket.SHUT_WR)
                # the receiver closes its side once it has read everything (B: the archive
                # poll below is the measure, so do not wait long for auditwatch to close)
                s.settimeout(timeout if archive_dir == "-" else 30)
                while s.recv(65536):
                    pass
                t_eof[i] = time.time()
        except Exception as e:  # noqa: BLE001 - reported in the result
            errors.append(f"connection {i}: {e!r}")
        finally:
            s.close()

    ts = [threading.Thread(target=go, args=(i, s, p)) for i, (s, p) in enumerate(zip(socks, parts))]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.time()
    res = {"t0": t0}
    if archive_dir != "-":
        # B: poll the archive (live file + segments) while the senders run. Done when it holds
        # every byte sent, or, if it never will (auditwatch shed some), when auditwatch has read
        # everything (closed all 4 connections) and the archive has not grown for 0.5 s; the
        # time is then that of its last growth. Gives up 10 s after the senders finished if
        # auditwatch never closes the connections.
        last, last_change, deadline = -1, time.time(), t0 + timeout
        while time.time() < deadline:
            n = archived_bytes(archive_dir)
            now = time.time()
            if n >= total:
                res["t_archived"] = now
                break
            if n != last:
                last, last_change = n, now
            elif None not in t_eof and now - last_change > 0.5:
                if n == 0:  # no archive (--aw-arg --no-archive): until all connections closed
                    res["t_archived"] = max(t_eof)
                    res["no_archive"] = True
                else:
                    res["t_archived"] = last_change
                break
            elif (None not in t_sent or errors) and now - last_change > 10:
                res["t_archived"] = last_change
                res["no_close"] = True
                break
            time.sleep(0.005)
        res["archived_bytes"] = archived_bytes(archive_dir)
    for t in ts:
        t.join()
    res.update({"t_sent": max(filter(None, t_sent), default=None),
                "t_eof": None if None in t_eof else max(t_eof), "errors": errors})
    with open(result_file, "w") as f:
        json.dump(res, f)
    return 1 if errors else 0


def fmt_rate(entries, nbytes, secs):
    if not secs or secs <= 0:
        return "         -          -"
    return f"{entries / secs:>10.0f} {nbytes / secs / 1e6:>10.1f}"


def report(work, rounds, cases, entries, nbytes):
    entries, nbytes, rounds = int(entries), int(nbytes), int(rounds)
    rows = []  # (round, case, seconds, seconds incl. shutdown, entries done, bytes done, ok, note)
    for r in range(1, rounds + 1):
        for c in cases:
            d = os.path.join(work, f"r{r}{c}")
            try:
                snd = json.load(open(os.path.join(d, "send.json")))
            except (OSError, ValueError):
                continue
            t0 = snd["t0"]
            if c in "AC":
                rcv = json.load(open(os.path.join(d, "recv.json")))
                secs = rcv["t_end"] - t0 if rcv.get("t_end") else None
                ok = rcv["bytes"] == nbytes and (c == "A" or rcv["written"] == nbytes)
                rows.append((r, c, secs, None, entries, nbytes, ok, "" if ok else "INCOMPLETE"))
                continue
            secs = snd["t_archived"] - t0 if snd.get("t_archived") else None
            ex = None
            try:
                ex = float(open(os.path.join(d, "t_exit")).read()) - t0
            except (OSError, ValueError):
                pass
            got = snd.get("archived_bytes", 0)
            done, st = entries, {}
            try:
                st = json.load(open(os.path.join(d, "stats.json")))
                done = (st.get("archive") or {}).get("lines_written", entries)
            except (OSError, ValueError):
                pass
            if snd.get("no_archive"):
                got = (st.get("listener") or {}).get("bytes_received", 0)
                done = (st.get("listener") or {}).get("lines_received", 0)
            ok = secs is not None and got == nbytes
            note = "no archive: until auditwatch closed all 4 connections" if snd.get("no_archive") else ""
            if got != nbytes:
                note = (f"LOSSY: archive holds {done} of {entries} entries, {got} of {nbytes} bytes "
                        f"({100.0 * (nbytes - got) / nbytes:.1f}% of bytes missing); rate = what was archived")
            if snd.get("no_close"):
                note += " (auditwatch did not close the connections after EOF)"
            rows.append((r, c, secs, ex, done, got, ok, note))
    names = {"A": "A read-and-discard", "B": "B auditwatch (archived)", "C": "C append + fsync"}
    print(f"{'round':>5} {'case':<30} {'seconds':>8} {'entries/s':>10} {'MB/s':>10}   notes")
    for r, c, secs, ex, done, got, ok, note in rows:
        s = f"{secs:8.2f}" if secs else "       -"
        print(f"{r:>5} {names[c]:<30} {s} {fmt_rate(done, got, secs)}   {note}")
        if c == "B":
            s = f"{ex:8.2f}" if ex else "       -"
            print(f"{r:>5} {'B ... incl. SIGTERM to exit':<30} {s} {fmt_rate(done, got, ex)}")
    best = {}
    for row in rows:
        r, c, secs, ex, done, got, ok, note = row
        if not secs:
            continue
        rate = done / secs
        cur = best.get(c)
        # a lossless round always beats a lossy one
        if cur is None or (ok, rate) > (cur[6], cur[4] / cur[2]):
            best[c] = row
    print()
    print("best of each (entries/s, MB/s):")
    for c in sorted(best):
        r, _, secs, ex, done, got, ok, note = best[c]
        line = f"  {names[c]:<28} {fmt_rate(done, got, secs)}  (round {r})"
        if c == "B" and ex:
            line += f"; incl. shutdown {done / ex:,.0f} entries/s"
        if not ok:
            line += "  LOSSY"
        print(line)
    if "B" in best:
        b = best["B"]
        brate = b[4] / b[2]
        for o in "AC":
            if o in best:
                orate = best[o][4] / best[o][2]
                print(f"  ratio B/{o} (entries/s): {brate / orate:.2f}")
        verdict = "met" if brate >= 250000 and b[6] else "NOT met"
        print(f"  target >= 250,000 entries/s for B (lossless): {verdict} ({brate:,.0f}{'' if b[6] else ', lossy'})")
    if "C" in best:
        c = best["C"]
        print(f"  (C, a plain append with the same fsync policy, is the disk's ceiling for B: {c[4] / c[2]:,.0f} entries/s)")
    return 0


if __name__ == "__main__":
    cmd, a = sys.argv[1], sys.argv[2:]
    if cmd == "serve":
        serve(a[0], a[1], a[2], int(a[3]), a[4] if len(a) > 4 else None, float(a[5]) if len(a) > 5 else 1.0)
    elif cmd == "send":
        sys.exit(send(*a))
    elif cmd == "report":
        sys.exit(report(a[0], a[1], a[2], a[3], a[4]))
    else:
        raise SystemExit(f"unknown command {cmd}")
PYEOF

wait_file() { # wait_file FILE SECONDS PID
    local i
    for ((i = 0; i < $2 * 20; i++)); do
        [[ -s $1 ]] && return 0
        kill -0 "$3" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

SEND_TIMEOUT=600

run_case() { # run_case ROUND CASE
    local d="$WORK/r$1$2" pid port i
    mkdir -p "$d"
    sync # settle the previous case's dirty pages
    case $2 in
    A | C)
        if [[ $2 == A ]]; then
            python3 "$WORK/ing.py" serve discard "$d/port" "$d/recv.json" 4 2>"$d/recv.err" &
        else
            python3 "$WORK/ing.py" serve append "$d/port" "$d/recv.json" 4 "$d/append.log" "$FSYNC_S" 2>"$d/recv.err" &
        fi
        pid=$!
        PIDS+=("$pid")
        wait_file "$d/port" 10 "$pid" || { cat "$d/recv.err" >&2; die "receiver $2 did not start"; }
        port=$(cat "$d/port")
        python3 "$WORK/ing.py" send "$port" "$d/send.json" - "$TOTAL_BYTES" "$SEND_TIMEOUT" "${PARTS[@]}" ||
            say "round $1 case $2: sender reported errors: $(cat "$d/send.json")"
        wait_pid "$pid" 30
        [[ $STOP_RC == 0 ]] || { cat "$d/recv.err" >&2; die "receiver $2 exited $STOP_RC"; }
        rm -f "$d/append.log"
        ;;
    B)
        local args=(listen --tcp 127.0.0.1:0 --archive "$d/arch" --archive-fsync "$FSYNC" --stats-json "$d/stats.json")
        [[ -n $THREADS ]] && args+=(--threads "$THREADS")
        args+=(${AW_EXTRA[@]+"${AW_EXTRA[@]}"})
        "$AW" "${args[@]}" >"$d/findings.jsonl" 2>"$d/listen.err" &
        pid=$!
        PIDS+=("$pid")
        for ((i = 0; i < 600; i++)); do
            grep -q '^auditwatch listen: ready' "$d/listen.err" 2>/dev/null && break
            kill -0 "$pid" 2>/dev/null || { cat "$d/listen.err" >&2; die "auditwatch listen exited"; }
            sleep 0.05
        done
        grep -q '^auditwatch listen: ready' "$d/listen.err" || die "auditwatch listen not ready in 30 s"
        port=$(sed -n 's/^auditwatch listen: listening on tcp 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$d/listen.err" | head -n1)
        [[ -n $port ]] || die "no 'listening on tcp' line from auditwatch"
        python3 "$WORK/ing.py" send "$port" "$d/send.json" "$d/arch" "$TOTAL_BYTES" "$SEND_TIMEOUT" "${PARTS[@]}" ||
            say "round $1 case B: sender reported errors: $(cat "$d/send.json")"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 1200; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.005; done
        echo "$EPOCHREALTIME" >"$d/t_exit"
        kill -0 "$pid" 2>/dev/null && say "round $1 case B: auditwatch still running 6 s after SIGTERM"
        stop_pid "$pid" TERM 30
        echo "$STOP_RC" >"$d/exit_code"
        [[ $STOP_RC == 0 ]] || say "round $1 case B: auditwatch exited $STOP_RC"
        { du -sb "$d/arch" 2>/dev/null || echo 0; } | cut -f1 >"$d/arch_du"
        rm -rf "$d/arch"
        ;;
    esac
}

for ((r = 1; r <= ROUNDS; r++)); do
    for ((c = 0; c < ${#CASES}; c++)); do
        say "round $r/$ROUNDS: case ${CASES:$c:1}"
        run_case "$r" "${CASES:$c:1}"
    done
done

# ------------------------------------------------------------------ report
echo
echo "== ingest: $TOTAL_LINES entries, $(awk -v b="$TOTAL_BYTES" 'BEGIN{printf "%.1f", b/1e6}') MB ($CORPUS), 4 loopback TCP connections, fsync every $FSYNC"
python3 "$WORK/ing.py" report "$WORK" "$ROUNDS" "$CASES" "$TOTAL_LINES" "$TOTAL_BYTES"
if [[ $CASES == *B* ]]; then
    echo
    echo "auditwatch counters (per round):"
    for ((r = 1; r <= ROUNDS; r++)); do
        d="$WORK/r${r}B"
        if [[ ! -s $d/stats.json ]]; then
            echo "  round $r: no stats.json (exit code $(cat "$d/exit_code" 2>/dev/null))"
            continue
        fi
        python3 - "$d/stats.json" "$r" "$(cat "$d/exit_code")" "$TOTAL_LINES" "$TOTAL_BYTES" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
r, code, lines, nbytes = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
l = s.get("listener", {})
a = s.get("archive") or {}
print(f"  round {r}: exit {code}; entries analysed {s.get('entries')}, findings {s.get('findings')}, "
      f"elapsed {s.get('elapsed_seconds', 0):.2f} s")
print(f"    listener: connections {l.get('connections_total')}, lines received {l.get('lines_received')} "
      f"(sent {lines}), bytes received {l.get('bytes_received')} (sent {nbytes}), fragments {l.get('fragments')}")
print(f"    shed: analysis {l.get('analysis_shed_lines')} lines / {l.get('analysis_shed_bytes')} bytes, "
      f"ingest {l.get('ingest_shed_lines')} lines / {l.get('ingest_shed_bytes')} bytes, "
      f"archive spool dropped {l.get('archive_spool_dropped_bytes')} bytes, duplicates dropped {l.get('duplicates_dropped')}")
print(f"    archive: written {a.get('lines_written')} lines / {a.get('bytes_written')} bytes, dropped "
      f"{a.get('dropped_lines')} lines / {a.get('dropped_bytes')} bytes, rotations {a.get('rotations')}, "
      f"write errors {a.get('write_errors')}")
EOF
        warns=$(grep -c 'WARN' "$d/listen.err" || true)
        echo "    stderr: $(wc -l <"$d/listen.err" | tr -d ' ') lines, $warns of them WARN; the first lines other than listening/ready:"
        { grep -v '^auditwatch listen: \(listening\|ready\)' "$d/listen.err" || true; } | head -n 4 | cut -c1-220 | sed 's/^/      /'
    done
fi
exit 0
