#!/usr/bin/env bash
# benches/tail_latency.sh: latency from append to finding on stdout for `auditwatch tail`.
#
#   benches/tail_latency.sh [--rate 2000] [--seconds 30] [--rotate-every 0] [--archive]
#
# A writer (python3, one O_APPEND write per entry, like Vault's file device) appends real
# OpenBao entries (tests/data/openbao/scenarios.log round robin; each round gets fresh request
# ids, a request and its response sharing one, as Vault writes them) at --rate entries per second
# for --seconds to bench-data/.tail-latency.*/audit.log, which `auditwatch tail` (release build)
# follows with its findings on stdout. Every finding is matched by (rule, request id, type) to
# what replay reports for the same entries; latency = time the finding line was read from
# auditwatch's stdout minus the time the write() of the entry that completes it returned (the
# response, for a request finding reported with its response's outcome; same clock, same
# process). Requests the capture has without a response are reported after --correlate-wait by
# design and counted apart. With --rotate-every S the file is also renamed and recreated every S
# seconds (the writer reopens at once). --archive turns the fallback archive on (fsync every 1 s).
# --correlate-wait D is passed to auditwatch (default 2s, its default).
# Prints entries written, findings matched, p50/p90/p99/p99.9/max in ms. Exit 1 if a finding is
# missing, p99 >= 250 ms, or a request without response took longer than the wait + 500 ms.
set -euo pipefail
RATE=2000
SECONDS_=30
ROTATE=0
ARCHIVE=0
WAIT=2s
while [[ $# -gt 0 ]]; do
    case "$1" in
    --rate) RATE=${2:?}; shift 2 ;;
    --seconds) SECONDS_=${2:?}; shift 2 ;;
    --rotate-every) ROTATE=${2:?}; shift 2 ;;
    --archive) ARCHIVE=1; shift ;;
    --correlate-wait) WAIT=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "tail_latency.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
mkdir -p bench-data
echo "== building (log: bench-data/build.log)"
cargo build --release >bench-data/build.log 2>&1 || { tail -20 bench-data/build.log; exit 1; }
WORK=$(mktemp -d bench-data/.tail-latency.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
AW=${AUDITWATCH_BIN:-${CARGO_TARGET_DIR:-target}/release/auditwatch} RATE=$RATE SECS=$SECONDS_ ROTATE=$ROTATE \
    ARCHIVE=$ARCHIVE WORK=$WORK WAIT=$WAIT python3 - <<'EOF'
import json, os, re, subprocess, sys, threading, time

aw, work = os.environ["AW"], os.environ["WORK"]
rate, secs = int(os.environ["RATE"]), float(os.environ["SECS"])
rotate, archive = float(os.environ["ROTATE"]), os.environ["ARCHIVE"] == "1"
path = os.path.join(work, "audit.log")

templates = []
ids = {}
for line in open("tests/data/openbao/scenarios.log", "rb"):
    v = json.loads(line)
    rid = (v.get("request") or {}).get("id")
    if rid and line.startswith(b'{"time":"'):
        ids.setdefault(rid, len(ids))
        templates.append((line, rid.encode(), ids[rid], v.get("type", "")))

# Each round of the capture gets fresh request ids; a request and its
# response keep one id between them, as Vault writes them.
def entry(seq):
    line, rid, pair, kind = templates[seq % len(templates)]
    end = line.index(b'"', 9)
    line = b'{"time":"2030-01-01T00:00:00.%09dZ' % seq + line[end:]
    new_id = b"lat-%06d-%05d" % (seq // len(templates), pair)
    return line.replace(b'"' + rid + b'"', b'"' + new_id + b'"'), new_id.decode(), kind

open(path, "wb").close()
cmd = [aw, "tail", path, "--state", os.path.join(work, "state"), "--from", "beginning",
       "--rotated", path + ".*", "--correlate-wait", os.environ["WAIT"]]
if archive:
    cmd += ["--archive", os.path.join(work, "arch")]
proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(os.path.join(work, "err"), "wb"))
while b"ready" not in open(os.path.join(work, "err"), "rb").read():
    time.sleep(0.01)

written = {}
seen = {}
def key(f):
    return (f.get("rule"), f.get("request_id") or "", f.get("type"))
def reader():
    for line in proc.stdout:
        t = time.monotonic()
        f = json.loads(line)
        if (f.get("request_id") or "").startswith("lat-"):
            seen.setdefault(key(f), (t, f))
th = threading.Thread(target=reader, daemon=True)
th.start()

fd = os.open(path, os.O_WRONLY | os.O_APPEND)
start = time.monotonic()
next_rot = start + rotate if rotate > 0 else None
seq = 0
rotations = 0
while True:
    now = time.monotonic()
    if now - start >= secs:
        break
    due = int((now - start) * rate)
    while seq < due:
        data, rid, kind = entry(seq)
        os.write(fd, data)
        written.setdefault((rid, kind), time.monotonic())
        seq += 1
    if next_rot and now >= next_rot:
        next_rot += rotate
        os.rename(path, path + ".1")
        os.close(fd)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        rotations += 1
    time.sleep(0.0005)
os.close(fd)

# The findings expected: what replay reports for the same entries.
with open(os.path.join(work, "all.log"), "wb") as f:
    for s in range(seq):
        f.write(entry(s)[0])
out = subprocess.run([aw, "replay", "-q", "--correlate-wait", os.environ["WAIT"],
                      os.path.join(work, "all.log")], capture_output=True)
expected = set()
for line in out.stdout.splitlines():
    f = json.loads(line)
    if (f.get("request_id") or "").startswith("lat-"):
        expected.add(key(f))
deadline = time.monotonic() + 30
while len(set(seen) & expected) < len(expected) and time.monotonic() < deadline:
    time.sleep(0.05)
proc.terminate()
proc.wait(timeout=30)

# Latency is measured from the append of the entry that completes the
# finding: the response, for a request finding reported with its response's
# outcome (correlation); else the entry itself. A request whose response
# never comes (Vault writes some: the device's probe, rejected wrapping
# tokens, sys/seal) is reported after --correlate-wait by design: counted
# apart, with its own bound.
lat, orphan = [], []
for k in expected:
    if k not in seen:
        continue
    t, f = seen[k]
    rid, kind = f["request_id"], f.get("type")
    resp = (f.get("detail") or {}).get("response", "absent")
    if kind == "request" and isinstance(resp, dict):
        done = written.get((rid, "response"))
    else:
        done = written.get((rid, kind))
    if done is None:
        continue
    (orphan if resp is None else lat).append((t - done) * 1000)
lat.sort()
orphan.sort()
missing = len(expected) - len(lat) - len(orphan)
def pct(p):
    return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else float("nan")
print(f"entries written: {seq} in {secs:.0f} s ({seq / secs:.0f}/s), rotations: {rotations}, "
      f"archive: {'on' if archive else 'off'}")
print(f"findings expected: {len(expected)}, matched: {len(lat) + len(orphan)}, missing: {missing}")
print("latency append -> finding on stdout (ms): p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f"
      % (pct(50), pct(90), pct(99), pct(99.9), lat[-1] if lat else float("nan")))
w = os.environ["WAIT"]
wait_ms = float(re.match(r"[0-9.]+", w).group()) * (1 if w.endswith("ms") else 1000)
if orphan:
    print("requests without a response (held for the wait, %.0f ms): %d, latency max %.1f ms"
          % (wait_ms, len(orphan), orphan[-1]))
ok = missing == 0 and lat and pct(99) < 250 and (not orphan or orphan[-1] < wait_ms + 500)
print("PASS (p99 < 250 ms, requests without response within the wait + 500 ms, nothing missing)"
      if ok else "FAIL")
sys.exit(0 if ok else 1)
EOF
