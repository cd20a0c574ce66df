#!/usr/bin/env bash
# benches/stateful.sh: what the stateful (window) rules cost in `auditwatch replay`.
#
#   benches/stateful.sh [--size 1GiB] [--seed 1] [--failed-login-share PERCENT] [--rounds 20]
#                       [--threads N] [--keep]
#
# On one generated corpus (gen_corpus --profile realistic; with --failed-login-share P, that
# share of the pairs are extra failed logins: an incident), each round runs, interleaved, on the
# warm page cache:
#   S  auditwatch replay FILE -o /dev/null -q --stats-json …            (the whole built-in pack)
#   L  the same with --disable ID for every window rule                 (stateless)
# The window rules are the ones `auditwatch rules list --format json` shows with a "window".
# Prints, per mode, the best and median wall seconds, the best CPU seconds (user + sys: steadier
# than wall time on a shared machine), MB/s and peak RSS, then the ratios S/L and whether the
# stateful replay stays within 20 % of the stateless one, the window counters of the last S run,
# and the load average before and after.
#
# The corpus is bench-data/corpus-realistic-seed<seed>-<size>[-fl<P>].log, the name
# compare.sh uses; generated if missing, and then deleted at exit unless --keep is given.
# AUDITWATCH_BIN=path times another build. Exit status: 0; 1 if a run failed; 2 on bad usage.
set -euo pipefail
export LC_ALL=C

SIZE=1GiB
SEED=1
SHARE=""
ROUNDS=20
THREADS=""
KEEP=0
usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
    --size) SIZE=${2:?--size needs a value}; shift 2 ;;
    --seed) SEED=${2:?--seed needs a value}; shift 2 ;;
    --failed-login-share) SHARE=${2:?--failed-login-share needs a value}; shift 2 ;;
    --rounds) ROUNDS=${2:?--rounds needs a value}; shift 2 ;;
    --threads) THREADS=${2:?--threads needs a value}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "stateful.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
die() { echo "stateful.sh: $*" >&2; exit 2; }
[[ $SEED =~ ^[0-9]+$ ]] || die "--seed must be a non-negative integer"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ -z $SHARE || $SHARE =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--failed-login-share must be a percentage"
[[ -z $THREADS || $THREADS =~ ^[1-9][0-9]*$ ]] || die "--threads must be a positive integer"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DATA=bench-data
mkdir -p "$DATA"
TARGET=${CARGO_TARGET_DIR:-target}
CORPUS="$DATA/corpus-realistic-seed$SEED-$SIZE${SHARE:+-fl$SHARE}.log"
TMP=$(mktemp -d "$DATA/.stateful.XXXXXX")
GENERATED=0
cleanup() {
    rm -rf "$TMP"
    rm -f "$CORPUS.tmp"
    if ((GENERATED && !KEEP)); then
        rm -f "$CORPUS" "${CORPUS%.log}.summary.json" "${CORPUS%.log}.summary.txt"
        echo "(removed the generated corpus; pass --keep to reuse it next time)" >&2
    fi
}
trap cleanup EXIT
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

echo "== stateful vs stateless replay: seed=$SEED size=$SIZE${SHARE:+ failed-login-share=$SHARE%} rounds=$ROUNDS"
echo "   host: $(nproc) CPU(s); load average before: $(loadavg)"

echo "== building (log: $DATA/build.log)"
: >"$DATA/build.log"
cargo build --release >>"$DATA/build.log" 2>&1 || { tail -n 20 "$DATA/build.log" >&2; exit 1; }
cargo build --release --example gen_corpus >>"$DATA/build.log" 2>&1 ||
    { tail -n 20 "$DATA/build.log" >&2; exit 1; }
AW=${AUDITWATCH_BIN:-$TARGET/release/auditwatch}
GEN=$TARGET/release/examples/gen_corpus
[[ -x $AW ]] || die "$AW not found"

if [[ -s $CORPUS ]]; then
    echo "== reusing $CORPUS"
else
    echo "== generating $CORPUS"
    "$GEN" --seed "$SEED" --size "$SIZE" --profile realistic ${SHARE:+--failed-login-share "$SHARE"} \
        --out "$CORPUS.tmp" --summary-json "${CORPUS%.log}.summary.json" \
        2>"${CORPUS%.log}.summary.txt" || { cat "${CORPUS%.log}.summary.txt" >&2; exit 1; }
    mv "$CORPUS.tmp" "$CORPUS"
    GENERATED=1
fi
grep -E 'entries|failed logins:' "${CORPUS%.log}.summary.txt" 2>/dev/null | sed 's/^ */   /' || true
FILE_BYTES=$(stat -c %s "$CORPUS")

# The window rules, from the rule list (JSON lines; "window" is null for the others).
mapfile -t WINDOW_RULES < <("$AW" rules list --format json |
    grep '"window":{' | grep -o '"id":"[^"]*"' | cut -d'"' -f4)
((${#WINDOW_RULES[@]} > 0)) || die "no window rule in the loaded pack"
DISABLE=()
for id in "${WINDOW_RULES[@]}"; do DISABLE+=(--disable "$id"); done
echo "== window rules (${#WINDOW_RULES[@]}): ${WINDOW_RULES[*]}"

COMMON=(replay "$CORPUS" -o /dev/null -q)
[[ -n $THREADS ]] && COMMON+=(--threads "$THREADS")
declare -A WALL=() CPU=() RSS=()
STATUS=0
run() { # $1 = S or L
    local mode=$1 rc=0 t0 t1
    local -a cmd=("$AW" "${COMMON[@]}" --stats-json "$TMP/stats.$mode.json")
    [[ $mode == L ]] && cmd+=("${DISABLE[@]}")
    t0=$EPOCHREALTIME
    /usr/bin/time -f '%U %S %M' -o "$TMP/time.$mode" "${cmd[@]}" </dev/null 2>"$TMP/err.$mode" || rc=$?
    t1=$EPOCHREALTIME
    if ((rc != 0 && rc != 1)); then
        echo "!! $mode failed with exit code $rc: ${cmd[*]}" >&2
        tail -n 20 "$TMP/err.$mode" >&2
        STATUS=1
        return
    fi
    WALL[$mode]+=" $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')"
    read -r u s m <"$TMP/time.$mode"
    CPU[$mode]+=" $(awk -v u="$u" -v s="$s" 'BEGIN { printf "%.2f", u + s }')"
    RSS[$mode]+=" $m"
}

echo "== warming the page cache"
cat "$CORPUS" >/dev/null
for ((r = 1; r <= ROUNDS; r++)); do
    run S
    run L
    echo "   round $r/$ROUNDS: S=${WALL[S]##* }s L=${WALL[L]##* }s  (cpu S=${CPU[S]##* }s L=${CPU[L]##* }s; load $(loadavg))"
done
((STATUS == 0)) || exit 1

# best / median of a list of numbers; max of a list
bestmed() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END {
    printf "%s %s", v[1], (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
maxof() { tr ' ' '\n' <<<"$1" | grep . | sort -g | tail -n 1; }

echo
printf '%-28s %8s %8s %8s %8s %10s  %s\n' "mode" "best s" "median" "cpu s" "MB/s" "peak RSS" "all runs (s)"
for mode in S L; do
    read -r best med <<<"$(bestmed "${WALL[$mode]}")"
    read -r cbest _ <<<"$(bestmed "${CPU[$mode]}")"
    name="stateful (whole pack)"
    [[ $mode == L ]] && name="stateless (windows off)"
    awk -v n="$name" -v b="$best" -v m="$med" -v c="$cbest" -v bytes="$FILE_BYTES" \
        -v rss="$(maxof "${RSS[$mode]}")" -v runs="${WALL[$mode]# }" 'BEGIN {
        printf "%-28s %8.3f %8.3f %8.2f %8.0f %7.1f MiB  %s\n", n, b, m, c, bytes / 1e6 / b, rss / 1024, runs }'
done
read -r sb sm <<<"$(bestmed "${WALL[S]}")"
read -r lb lm <<<"$(bestmed "${WALL[L]}")"
read -r sc _ <<<"$(bestmed "${CPU[S]}")"
read -r lc _ <<<"$(bestmed "${CPU[L]}")"
echo
awk -v sb="$sb" -v lb="$lb" -v sm="$sm" -v lm="$lm" -v sc="$sc" -v lc="$lc" 'BEGIN {
    r = sb / lb
    printf "stateful / stateless: best wall %.3f, median wall %.3f, best cpu %.3f\n", r, sm / lm, sc / lc
    printf "target (stateful within 20%% of stateless, best wall): %s\n", (r <= 1.2) ? "MET" : "MISSED" }'
echo "load average after: $(loadavg)"
cp "$TMP/stats.S.json" "$DATA/stateful-stats.json"
cp "$TMP/stats.L.json" "$DATA/stateless-stats.json"
echo
echo "window findings and state of the last stateful run ($DATA/stateful-stats.json):"
for id in "${WINDOW_RULES[@]}"; do
    printf '   %-32s %s\n' "$id" "$(grep -o "\"$id\": *[0-9]*" "$DATA/stateful-stats.json" | grep -o '[0-9]*$' || echo 0)"
done
grep -E '"window_' "$DATA/stateful-stats.json" | sed 's/^ */   /'
echo "findings: stateful $(grep -o '"findings": *[0-9]*' "$DATA/stateful-stats.json" | grep -o '[0-9]*$')," \
    "stateless $(grep -o '"findings": *[0-9]*' "$DATA/stateless-stats.json" | grep -o '[0-9]*$')"
