#!/usr/bin/env bash
# benches/compare.sh: time `auditwatch replay` against wc -l, grep -cE and jq on the same
# synthetic audit log. See benches/README.md.
set -euo pipefail
export LC_ALL=C # fixed radix for EPOCHREALTIME/awk, and byte-wise grep

usage() {
    cat <<'EOF'
usage: benches/compare.sh [--size 1GiB] [--seed 42] [--profile realistic|all-candidates]
                          [--rounds 3] [--jq-size full|64MiB|0] [--keep]

  --size SIZE      corpus size (B, KB, MB, GB, KiB, MiB, GiB)        default 1GiB
  --seed N         generator seed                                   default 42
  --profile P      realistic | all-candidates                       default realistic
  --rounds N       interleaved rounds (A B C D, A B C D, ...)        default 3
  --jq-size SIZE   run jq on the first SIZE of the file only (cut at a line end) and
                   scale its time to the whole file; "full" = whole file; 0 = skip jq
                                                                    default full
  --keep           keep a corpus this run generated (otherwise it is deleted at exit;
                   a corpus that was already in bench-data/ is always kept and reused)

Tools, each timed best-of-N with wall seconds and peak RSS:
  A  target/release/auditwatch replay FILE --output /dev/null --stats-json bench-data/stats.json
  B  wc -l FILE
  C  LC_ALL=C grep -cE '"path":"sys/(generate-root|rekey|replication|audit|rotate|polic)' FILE
  D  jq -c 'select(.request.path // "" | test("^sys/(generate-root|rekey|replication|audit|rotate|polic)"))' FILE
Environment: AUDITWATCH_BIN=path times another auditwatch build instead of target/release/auditwatch.
Exit status: 0, or 1 if a timed tool failed (auditwatch exit 1 = findings, tolerated).
EOF
}

SIZE=1GiB
SEED=42
PROFILE=realistic
ROUNDS=3
JQ_SIZE=full
KEEP=0
while [[ $# -gt 0 ]]; do
    case "$1" in
    --size) SIZE=${2:?--size needs a value}; shift 2 ;;
    --size=*) SIZE=${1#*=}; shift ;;
    --seed) SEED=${2:?--seed needs a value}; shift 2 ;;
    --seed=*) SEED=${1#*=}; shift ;;
    --profile) PROFILE=${2:?--profile needs a value}; shift 2 ;;
    --profile=*) PROFILE=${1#*=}; shift ;;
    --rounds) ROUNDS=${2:?--rounds needs a value}; shift 2 ;;
    --rounds=*) ROUNDS=${1#*=}; shift ;;
    --jq-size) JQ_SIZE=${2:?--jq-size needs a value}; shift 2 ;;
    --jq-size=*) JQ_SIZE=${1#*=}; shift ;;
    --keep) KEEP=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "compare.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

die() { echo "compare.sh: $*" >&2; exit 2; }
[[ $SEED =~ ^[0-9]+$ ]] || die "--seed must be a non-negative integer"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
case "$PROFILE" in realistic | all-candidates) ;; *) die "--profile must be realistic or all-candidates" ;; esac

# SIZE string -> bytes (same units as gen_corpus)
size_to_bytes() {
    awk -v s="$1" 'BEGIN {
        if (match(s, /^[0-9]+(\.[0-9]+)?/) == 0) exit 1
        n = substr(s, 1, RLENGTH); u = tolower(substr(s, RLENGTH + 1))
        m[""] = 1; m["b"] = 1; m["k"] = 1e3; m["kb"] = 1e3; m["m"] = 1e6; m["mb"] = 1e6
        m["g"] = 1e9; m["gb"] = 1e9; m["ki"] = 1024; m["kib"] = 1024
        m["mi"] = 1048576; m["mib"] = 1048576; m["gi"] = 1073741824; m["gib"] = 1073741824
        if (!(u in m)) exit 1
        printf "%.0f\n", n * m[u] }'
}
SIZE_BYTES=$(size_to_bytes "$SIZE") || die "bad --size: $SIZE"
((SIZE_BYTES > 0)) || die "--size must be > 0"
JQ_BYTES=0
case "$JQ_SIZE" in
full) JQ_BYTES=-1 ;;
*) JQ_BYTES=$(size_to_bytes "$JQ_SIZE") || die "bad --jq-size: $JQ_SIZE" ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DATA=bench-data
mkdir -p "$DATA"
TMP=$(mktemp -d "$DATA/.compare.XXXXXX")
CORPUS="$DATA/corpus-$PROFILE-seed$SEED-$SIZE.log"
SUMMARY_JSON="${CORPUS%.log}.summary.json"
SUMMARY_TXT="${CORPUS%.log}.summary.txt"
PREFIX=""
GENERATED=0
cleanup() {
    rm -rf "$TMP"
    rm -f "$CORPUS.tmp" "$SUMMARY_JSON.tmp"
    [[ -n $PREFIX ]] && rm -f "$PREFIX"
    if ((GENERATED && !KEEP)); then
        rm -f "$CORPUS" "$SUMMARY_JSON" "$SUMMARY_TXT"
        echo "(removed the generated corpus; pass --keep to reuse it next time)" >&2
    fi
}
trap cleanup EXIT

now() { if [[ -n ${EPOCHREALTIME:-} ]]; then echo "$EPOCHREALTIME"; else date +%s.%N; fi; }
fsub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", b - a }'; }

echo "== auditwatch benchmark: profile=$PROFILE seed=$SEED size=$SIZE ($SIZE_BYTES bytes), rounds=$ROUNDS"
echo "   host: $(nproc) CPU(s), $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || echo unknown)"

# ---------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------
AW_SKIP=""
echo "== building (log: $DATA/build.log)"
: >"$DATA/build.log"
if ! cargo build --release >>"$DATA/build.log" 2>&1; then
    AW_SKIP="cargo build --release failed (tail of $DATA/build.log below)"
    tail -n 15 "$DATA/build.log" | sed 's/^/   | /'
fi
GEN=${CARGO_TARGET_DIR:-target}/release/examples/gen_corpus
if ! cargo build --release --example gen_corpus >>"$DATA/build.log" 2>&1; then
    # gen_corpus is std-only: build it without the crate when the library does not compile
    GEN="$DATA/.bin/gen_corpus"
    echo "   cargo could not build the gen_corpus example; building it directly with rustc -> $GEN"
    mkdir -p "$DATA/.bin"
    if [[ ! -x $GEN || benches/gen_corpus.rs -nt $GEN ]]; then
        rustc --edition 2021 -C opt-level=3 -o "$GEN" benches/gen_corpus.rs >>"$DATA/build.log" 2>&1 ||
            { tail -n 20 "$DATA/build.log" >&2; die "could not build gen_corpus"; }
    fi
fi

# ---------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------
if [[ -s $CORPUS && -s $SUMMARY_JSON ]]; then
    echo "== reusing $CORPUS"
    [[ -s $SUMMARY_TXT ]] && sed 's/^/   /' "$SUMMARY_TXT"
else
    avail_kib=$(df -Pk "$DATA" | awk 'NR == 2 { print $4 }')
    need_kib=$((SIZE_BYTES / 1024 * 105 / 100 + 2 * 1024 * 1024 + 65536))
    ((avail_kib > need_kib)) || die "not enough space in $DATA: need ~$((need_kib / 1024)) MiB, have $((avail_kib / 1024)) MiB"
    echo "== generating $CORPUS"
    "$GEN" --seed "$SEED" --size "$SIZE" --profile "$PROFILE" --out "$CORPUS.tmp" \
        --summary-json "$SUMMARY_JSON.tmp" 2>"$SUMMARY_TXT" || { cat "$SUMMARY_TXT" >&2; die "gen_corpus failed"; }
    mv "$CORPUS.tmp" "$CORPUS"
    mv "$SUMMARY_JSON.tmp" "$SUMMARY_JSON"
    GENERATED=1
    sed 's/^/   /' "$SUMMARY_TXT"
fi
FILE_BYTES=$(stat -c %s "$CORPUS")
jget() { grep -o "\"$1\":[0-9]*" "$SUMMARY_JSON" | head -n1 | cut -d: -f2; }
EXP_LINES=$(jget entries)
EXP_GREP=$(jget grep_pattern_lines)

# ---------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------
AW=${AUDITWATCH_BIN:-${CARGO_TARGET_DIR:-target}/release/auditwatch}
AW_ARGS=()
if [[ -z $AW_SKIP ]]; then
    if [[ ! -x $AW ]]; then
        AW_SKIP="$AW not found"
    else
        help=$(timeout 20 "$AW" replay --help </dev/null 2>&1 || true)
        if ! grep -qi 'usage' <<<"$help" || ! grep -q 'replay' <<<"$help"; then
            AW_SKIP="$AW has no 'replay' subcommand yet ('auditwatch replay --help' shows no usage)"
        else
            AW_ARGS=(replay "$CORPUS" --output /dev/null)
            if grep -q -- '--stats-json' <<<"$help"; then
                AW_ARGS+=(--stats-json "$DATA/stats.json")
            else
                echo "   note: 'auditwatch replay' has no --stats-json option; running without it"
            fi
        fi
    fi
fi
[[ -n $AW_SKIP ]] && echo "== SKIPPING auditwatch: $AW_SKIP"

JQ_SKIP=""
JQ_FILE=$CORPUS
JQ_FILE_BYTES=$FILE_BYTES
if ! command -v jq >/dev/null; then
    JQ_SKIP="jq is not installed"
elif ((JQ_BYTES == 0)); then
    JQ_SKIP="--jq-size 0"
elif ((JQ_BYTES > 0 && JQ_BYTES < FILE_BYTES)); then
    PREFIX="$TMP/jq-prefix.log"
    # cut at a line end: drop the (partial) last line
    head -c "$JQ_BYTES" "$CORPUS" | sed '$d' >"$PREFIX"
    JQ_FILE=$PREFIX
    JQ_FILE_BYTES=$(stat -c %s "$PREFIX")
    echo "== jq runs on the first $JQ_FILE_BYTES bytes ($JQ_SIZE, cut at a line end) of the corpus;"
    echo "   its seconds are scaled by $FILE_BYTES/$JQ_FILE_BYTES to the whole file"
fi
[[ -n $JQ_SKIP ]] && echo "== SKIPPING jq: $JQ_SKIP"

TIME_BIN=""
if [[ -x /usr/bin/time ]] && /usr/bin/time -f '%M' -o /dev/null true 2>/dev/null; then
    TIME_BIN=/usr/bin/time
else
    echo "   note: GNU /usr/bin/time not found: peak RSS is not measured"
fi

GREP_RE='"path":"sys/(generate-root|rekey|replication|audit|rotate|polic)'
JQ_PROG='select(.request.path // "" | test("^sys/(generate-root|rekey|replication|audit|rotate|polic)"))'

# tool ids: A auditwatch, B wc, C grep, D jq
declare -A NAME=([A]="auditwatch replay" [B]="wc -l" [C]="grep -cE" [D]="jq select/test")
declare -A BEST=() RSS=() RUNS=() RC_OK=() FAILED=() OUT=()
TOOLS=()
[[ -z $AW_SKIP ]] && TOOLS+=(A)
TOOLS+=(B C)
[[ -z $JQ_SKIP ]] && TOOLS+=(D)
STATUS=0

run_tool() { # $1 = tool id; runs it once, updates BEST/RSS/RUNS
    local t=$1 out="$TMP/out.$1" err="$TMP/err.$1" rc=0 t0 t1 secs rss=0
    local -a cmd
    case $t in
    A) cmd=("$AW" "${AW_ARGS[@]}") ;;
    B) cmd=(wc -l "$CORPUS") ;;
    C) cmd=(grep -cE "$GREP_RE" "$CORPUS") ;;
    D) cmd=(jq -c "$JQ_PROG" "$JQ_FILE") ;;
    esac
    if [[ $t == D ]]; then out=/dev/null; fi
    t0=$(now)
    if [[ -n $TIME_BIN ]]; then
        "$TIME_BIN" -f '%M' -o "$TMP/rss.$t" "${cmd[@]}" >"$out" 2>"$err" </dev/null || rc=$?
    else
        "${cmd[@]}" >"$out" 2>"$err" </dev/null || rc=$?
    fi
    t1=$(now)
    secs=$(fsub "$t0" "$t1")
    [[ -n $TIME_BIN ]] && rss=$(tail -n 1 "$TMP/rss.$t")
    [[ $rss =~ ^[0-9]+$ ]] || rss=0
    local ok=0
    case $t in
    A | C) ((rc == 0 || rc == 1)) && ok=1 ;; # auditwatch: 1 = findings; grep: 1 = no match
    *) ((rc == 0)) && ok=1 ;;
    esac
    if ((!ok)); then
        echo "!! ${NAME[$t]} failed with exit code $rc: ${cmd[*]}" >&2
        tail -n 20 "$err" | sed 's/^/   | /' >&2
        FAILED[$t]=1
        STATUS=1
        return 0
    fi
    if [[ $t == D && $JQ_FILE != "$CORPUS" ]]; then
        secs=$(awk -v s="$secs" -v a="$FILE_BYTES" -v b="$JQ_FILE_BYTES" 'BEGIN { printf "%.4f", s * a / b }')
    fi
    RUNS[$t]="${RUNS[$t]:-} $secs"
    if [[ -z ${BEST[$t]:-} ]] || awk -v a="$secs" -v b="${BEST[$t]}" 'BEGIN { exit !(a < b) }'; then
        BEST[$t]=$secs
    fi
    if ((rss > ${RSS[$t]:-0})); then RSS[$t]=$rss; fi
    [[ $t == A ]] && cp "$err" "$DATA/auditwatch-replay.stderr"
    OUT[$t]=$(head -c 200 "$out" 2>/dev/null | head -n 1 || true)
    return 0
}

echo "== warming the page cache"
cat "$CORPUS" >/dev/null
[[ $JQ_FILE != "$CORPUS" ]] && cat "$JQ_FILE" >/dev/null

for ((round = 1; round <= ROUNDS; round++)); do
    line="   round $round/$ROUNDS:"
    for t in "${TOOLS[@]}"; do
        [[ -n ${FAILED[$t]:-} ]] && continue
        run_tool "$t"
        [[ -z ${FAILED[$t]:-} ]] && line+=" ${t}=${RUNS[$t]##* }s"
    done
    echo "$line"
done

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
echo
printf '%-20s %10s %10s %11s %9s %9s  %s\n' "tool" "best s" "MB/s" "peak RSS" "x grep" "x wc-l" "all runs (s)"
printf '%-20s %10s %10s %11s %9s %9s  %s\n' "----" "------" "----" "--------" "------" "------" "------------"
for t in A B C D; do
    if [[ $t == A && -n $AW_SKIP ]]; then
        printf '%-20s %s\n' "${NAME[$t]}" "skipped: $AW_SKIP"
        continue
    fi
    if [[ $t == D && -n $JQ_SKIP ]]; then
        printf '%-20s %s\n' "${NAME[$t]}" "skipped: $JQ_SKIP"
        continue
    fi
    if [[ -z ${BEST[$t]:-} ]]; then
        printf '%-20s %s\n' "${NAME[$t]}" "FAILED"
        continue
    fi
    label=${NAME[$t]}
    [[ $t == D && $JQ_FILE != "$CORPUS" ]] && label+="*"
    awk -v name="$label" -v s="${BEST[$t]}" -v bytes="$FILE_BYTES" -v rss="${RSS[$t]:-0}" \
        -v grep_s="${BEST[C]:-0}" -v wc_s="${BEST[B]:-0}" -v runs="${RUNS[$t]# }" -v have_rss="${TIME_BIN:+1}" 'BEGIN {
        mbs = (s > 0) ? bytes / 1e6 / s : 0
        rs = have_rss ? sprintf("%.1f MiB", rss / 1024) : "n/a"
        xg = (grep_s > 0) ? sprintf("%.2f", s / grep_s) : "-"
        xw = (wc_s > 0) ? sprintf("%.2f", s / wc_s) : "-"
        printf "%-20s %10.3f %10.0f %11s %9s %9s  %s\n", name, s, mbs, rs, xg, xw, runs }'
done
echo
echo "MB/s = corpus bytes ($FILE_BYTES) / 1e6 / best seconds. 'x grep' / 'x wc-l' = best seconds"
echo "divided by grep's / wc -l's best seconds (>1 = slower than that tool)."
[[ $JQ_FILE != "$CORPUS" && -z $JQ_SKIP ]] &&
    echo "* jq ran on a $JQ_FILE_BYTES-byte prefix; its seconds are scaled to the whole file (RSS is the prefix run's)."

if [[ -z $AW_SKIP && -n ${BEST[A]:-} ]]; then
    echo
    echo "auditwatch peak RSS: $(awk -v r="${RSS[A]:-0}" 'BEGIN { printf "%.1f MiB (%d KiB)", r / 1024, r }')"
    if [[ -s $DATA/auditwatch-replay.stderr ]]; then
        echo "auditwatch replay summary (stderr, last run; full copy in $DATA/auditwatch-replay.stderr):"
        tail -n 15 "$DATA/auditwatch-replay.stderr" | sed 's/^/   | /'
    fi
    if [[ -s $DATA/stats.json ]]; then
        echo "auditwatch stats: $DATA/stats.json"
        if command -v jq >/dev/null; then
            # informational: rule names and dedup/throttle policy belong to auditwatch
            sum_rules() { jq -r --arg p "$1" '[(.findings_by_rule // {}) | to_entries[] | select(.key | startswith($p)) | .value] | add // 0' "$DATA/stats.json" 2>/dev/null || echo "?"; }
            echo "   side by side (auditwatch findings_by_rule | generator; the tool may count lines, dedupe pairs or throttle):"
            echo "     privileged.*   $(sum_rules privileged.) | $(jget privileged_events) events = $(jget privileged_lines) lines"
            echo "     root_token.*   $(sum_rules root_token.) | created $(jget root_created_events) events, used $(jget root_used_events) events ($(jget root_used_lines) lines)"
            echo "     login.failed   $(sum_rules login.failed) | $(jget failed_login_events) events (response lines)"
            echo "     acl.*          $(sum_rules acl.) | $(jget acl_denied_events) ACL-denied events; bad/missing token $(jget bad_token_events) (login.unresolved_token: $(sum_rules login.unresolved_token))"
        fi
    fi
fi

# sanity checks against the generator's summary
echo
echo "checks against the generator summary ($SUMMARY_JSON):"
if [[ -n ${OUT[B]:-} ]]; then
    got=${OUT[B]%% *}
    if [[ $got == "$EXP_LINES" ]]; then r=OK; else r=MISMATCH; fi
    echo "   wc -l:  $got lines, expected $EXP_LINES  $r"
fi
if [[ -n ${OUT[C]:-} ]]; then
    got=${OUT[C]}
    if [[ $got == "$EXP_GREP" ]]; then r=OK; else r=MISMATCH; fi
    echo "   grep:   $got lines match, expected $EXP_GREP  $r  (grep counts lines, not events, and" \
        "includes unprivileged reads such as sys/policies/acl/x; it cannot see sys/mounts, sys/auth, sys/raw)"
fi
echo "   expected from auditwatch (events; each is a request+response pair):" \
    "privileged=$(jget privileged_events) root_created=$(jget root_created_events)" \
    "root_used=$(jget root_used_events) failed_logins=$(jget failed_login_events) decoys_not_flagged=$(jget decoy_events)"

exit "$STATUS"
