#!/usr/bin/env bash
# benches/flood.sh: memory of the window rules under a flood of distinct addresses and users.
#
#   benches/flood.sh [--entries 10000000] [--seed 1] [--threads N] [--no-baseline]
#
# Streams `gen_corpus --profile flood --entries N --out -` (N failed userpass logins, response
# lines only, 10 µs apart, each from its own remote address and for its own user; then a real
# brute force of 20 failures from 203.0.113.7) into `auditwatch replay - -o /dev/null -q
# --stats-json …` with the whole built-in pack, timed with /usr/bin/time (peak RSS = VmHWM).
# Nothing is written to disk but the stats. Unless --no-baseline, the same stream is replayed
# again with every window rule disabled, to show the RSS the pipeline needs without them.
#
# Prints the entries, bytes, seconds, peak RSS, and the window counters (keys, accounted bytes,
# their peak, the cap = the sum of the window rules' max_state, evictions, keys evicted), then
# checks: the accounted peak is within the cap, the brute force after the flood was reported
# (brute_force.address and brute_force.user, once each) and no sprayed key fired
# (brute_force.password_spray, brute_force.distributed: none).
# AUDITWATCH_BIN=path measures another build. Exit status: 0; 1 if a run or a check failed.
set -euo pipefail
export LC_ALL=C

ENTRIES=10000000
SEED=1
THREADS=""
BASELINE=1
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
    --entries) ENTRIES=${2:?--entries needs a value}; shift 2 ;;
    --seed) SEED=${2:?--seed needs a value}; shift 2 ;;
    --threads) THREADS=${2:?--threads needs a value}; shift 2 ;;
    --no-baseline) BASELINE=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "flood.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ $ENTRIES =~ ^[1-9][0-9]*$ ]] || { echo "flood.sh: --entries must be a positive integer" >&2; exit 2; }
[[ $SEED =~ ^[0-9]+$ ]] || { echo "flood.sh: --seed must be a non-negative integer" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DATA=bench-data
mkdir -p "$DATA"
TARGET=${CARGO_TARGET_DIR:-target}
TMP=$(mktemp -d "$DATA/.flood.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

echo "== window state under a flood: $ENTRIES distinct addresses and users, seed $SEED"
echo "   host: $(nproc) CPU(s), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo); load average before: $(loadavg)"
echo "== building (log: $DATA/build.log)"
: >"$DATA/build.log"
cargo build --release >>"$DATA/build.log" 2>&1 || { tail -n 20 "$DATA/build.log" >&2; exit 1; }
cargo build --release --example gen_corpus >>"$DATA/build.log" 2>&1 ||
    { tail -n 20 "$DATA/build.log" >&2; exit 1; }
AW=${AUDITWATCH_BIN:-$TARGET/release/auditwatch}
GEN=$TARGET/release/examples/gen_corpus

mapfile -t WINDOW_RULES < <("$AW" rules list --format json |
    grep '"window":{' | grep -o '"id":"[^"]*"' | cut -d'"' -f4)
DISABLE=()
for id in "${WINDOW_RULES[@]}"; do DISABLE+=(--disable "$id"); done

STATUS=0
flood() { # $1 = label, rest = extra replay arguments; sets SECS, RSS_KIB
    local label=$1 t0 t1 rc=0
    shift
    local -a cmd=("$AW" replay - -o /dev/null -q --stats-json "$TMP/stats.$label.json" "$@")
    [[ -n $THREADS ]] && cmd+=(--threads "$THREADS")
    echo "== $label: $GEN --profile flood --entries $ENTRIES --seed $SEED --out - | ${cmd[*]}"
    t0=$EPOCHREALTIME
    "$GEN" --profile flood --entries "$ENTRIES" --seed "$SEED" --out - 2>"$TMP/gen.txt" |
        /usr/bin/time -f '%M %U %S' -o "$TMP/time.$label" "${cmd[@]}" 2>"$TMP/err.$label" || rc=$?
    t1=$EPOCHREALTIME
    if ((rc != 0 && rc != 1)); then
        echo "!! replay failed with exit code $rc" >&2
        tail -n 20 "$TMP/err.$label" >&2
        STATUS=1
        return 1
    fi
    SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    read -r RSS_KIB U S <"$TMP/time.$label"
    echo "   $SECS s wall, $(awk -v u="$U" -v s="$S" 'BEGIN { printf "%.1f", u + s }') s CPU, peak RSS $(awk -v k="$RSS_KIB" 'BEGIN { printf "%.1f MiB", k / 1024 }'); load average: $(loadavg)"
}

jnum() { grep -o "\"$1\": *[0-9]*" "$2" | head -n 1 | grep -o '[0-9]*$' || echo 0; }
flood stateful || exit 1
STATS=$TMP/stats.stateful.json
FULL_RSS=$RSS_KIB
BYTES=$(jnum bytes "$STATS")
ENT=$(jnum entries "$STATS")
echo
echo "entries $ENT, $(awk -v b="$BYTES" 'BEGIN { printf "%.2f GB", b / 1e9 }'), $(awk -v b="$BYTES" -v s="$SECS" 'BEGIN { printf "%.0f MB/s", b / 1e6 / s }') (gen_corpus: $(grep -o 'generated in .*' "$TMP/gen.txt" || echo '?'))"
echo "window state (accounted; see src/engine.rs):"
for k in window_keys window_state_bytes window_state_bytes_peak window_state_cap window_evictions \
    window_keys_evicted window_events_dropped window_late_events; do
    v=$(jnum "$k" "$STATS")
    case $k in *bytes* | *cap) extra=$(awk -v v="$v" 'BEGIN { printf " (%.1f MiB)", v / 1048576 }') ;; *) extra="" ;; esac
    printf '   %-26s %12s%s\n' "$k" "$v" "$extra"
done
echo "findings by rule:"
sed -n '/"findings_by_rule"/,/}/p' "$STATS" | grep ':' | grep -v findings_by_rule | sed 's/^ */   /'

if ((BASELINE)); then
    echo
    flood stateless "${DISABLE[@]}" || true
    echo "   peak RSS with the window rules: $(awk -v k="$FULL_RSS" 'BEGIN { printf "%.1f MiB", k / 1024 }'), without: $(awk -v k="$RSS_KIB" 'BEGIN { printf "%.1f MiB", k / 1024 }')"
fi

echo
echo "checks:"
check() { if eval "$2"; then echo "   OK    $1"; else echo "   FAIL  $1"; STATUS=1; fi; }
PEAK=$(jnum window_state_bytes_peak "$STATS")
CAP=$(jnum window_state_cap "$STATS")
rule() { grep -o "\"$1\": *[0-9]*" "$STATS" | grep -o '[0-9]*$' || echo 0; }
check "accounted window state peak $PEAK <= cap $CAP" "((PEAK <= CAP))"
check "entries read: $ENT = $ENTRIES + 20" "((ENT == ENTRIES + 20))"
check "brute_force.address reported once (the burst)" "[[ $(rule brute_force.address) == 1 ]]"
check "brute_force.user reported once (the burst)" "[[ $(rule brute_force.user) == 1 ]]"
check "no spray key fired (password_spray, distributed)" \
    "[[ $(rule brute_force.password_spray) == 0 && $(rule brute_force.distributed) == 0 ]]"
exit "$STATUS"
