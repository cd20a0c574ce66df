#!/usr/bin/env bash
# Capture real OpenBao audit logs for auditwatch's "signals" rules
# (patterns/signals.toml, from scripts/fixtures/signals.toml.in).
#
# Adapted from scripts/capture-openbao.sh (their set-up is shared in
# scripts/lib/openbao.sh). Starts `bao server -dev` on a free
# 127.0.0.1 port with two file audit devices declared in an HCL config file:
#
#   file-audit   a normal device (HMACs on)                 -> signals.log
#   raw-audit    log_raw = true: tokens, accessors and data
#                in clear                                   -> signals-raw.log
#
# and, for scenario 02 only, a third file device enabled over the API with
# hmac_accessor=false (then disabled again)                 -> signals-accessor.log
#
# drives the scenarios described in tests/data/openbao/SIGNALS.md with the
# `bao` CLI (and curl for sys/pprof), stops the server and writes
# (overwriting previous outputs):
#
#   tests/data/openbao/signals.log                 the normal device's audit log
#   tests/data/openbao/signals.scenarios.tsv       scenario<TAB>first_line<TAB>last_line (signals.log)
#   tests/data/openbao/signals.steps.tsv           scenario<TAB>step<TAB>first_line<TAB>last_line<TAB>description
#   tests/data/openbao/signals.hashes.json         file-audit's salt and sys/audit-hash outputs
#   tests/data/openbao/signals-raw.log             the log_raw device's log (same events, nothing hashed)
#   tests/data/openbao/signals-raw.steps.tsv       the same steps, line numbers in signals-raw.log
#   tests/data/openbao/signals-accessor.log        the hmac_accessor=false device's log
#   tests/data/openbao/signals-accessor.steps.tsv  the same steps, line numbers in signals-accessor.log
#
# Line numbers are 1-based and inclusive. A step that produced no entry in a
# log has last_line = first_line - 1 there. Every file device is written
# synchronously (each entry is written before the HTTP reply goes out), so
# counting each file's lines right after each CLI command returns is exact.
#
# signals-raw.log holds the dev server's root token, user passwords, a transit
# key and PKI private keys in clear: all belong to an in-memory dev server that
# no longer exists when the script ends. Never point this script at a real server.
#
# Only 127.0.0.1 is used. Needs: bao (scripts/install-openbao.sh), jq, curl, python3.
# Set KEEP_WORK=1 to keep the temporary directory (server output, CLI
# transcript with the ephemeral tokens) for debugging.
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/openbao.sh
. "$ROOT_DIR/scripts/lib/openbao.sh"
OUT_DIR="$ROOT_DIR/tests/data/openbao"
NAME=signals
DEVICE=file-audit
RAW_DEVICE=raw-audit
ACC_DEVICE=accessor-audit

require_tools jq curl python3

START_SECONDS=$SECONDS
make_work auditwatch-capture-signals
AUDIT="$WORK/$NAME.log"
RAW_AUDIT="$WORK/$NAME-raw.log"
ACC_AUDIT="$WORK/$NAME-accessor.log"
SCEN_TSV="$WORK/$NAME.scenarios.tsv"
HASHES_TSV="$WORK/hashes.tsv"   # input as JSON string <TAB> hash
TRANSCRIPT="$WORK/transcript.txt"
# The logs whose line ranges are recorded per step: name and file.
LOG_NAMES=("$NAME" "$NAME-raw" "$NAME-accessor")
LOG_FILES=("$AUDIT" "$RAW_AUDIT" "$ACC_AUDIT")

cat > "$WORK/server.hcl" <<EOF
# sys/raw is used by scenario 13 to read file-audit's salt.
raw_storage_endpoint = true
# Scenario 02 enables (and disables) a device over the API.
unsafe_allow_api_audit_creation = true

audit "file" "$DEVICE" {
  description = "auditwatch signals capture"
  options {
    file_path = "$NAME.log"
    mode      = "0600"
  }
}
audit "file" "$RAW_DEVICE" {
  description = "auditwatch signals capture, unhashed"
  options {
    file_path = "$NAME-raw.log"
    mode      = "0600"
    log_raw   = "true"
  }
}
EOF

# No -dev-root-token-id: the root token has the real format (s.<24 chars>),
# which is what signals-raw.log should show. The server runs in $WORK and the
# devices' file paths are relative: the raw log shows them (device options,
# sys/audit listings) and must not name the temporary directory.
start_server "$WORK"
ROOT_TOKEN="$(server_says 'Root Token')"
[ -n "$ROOT_TOKEN" ] || { echo "capture: no root token in server output" >&2; exit 1; }
export BAO_TOKEN="$ROOT_TOKEN"

# ---------------------------------------------------------------- bookkeeping
: > "$SCEN_TSV"
: > "$HASHES_TSV"
: > "$TRANSCRIPT"
printf 'scenario\tfirst_line\tlast_line\n' >> "$SCEN_TSV"
for n in "${LOG_NAMES[@]}"; do
    printf 'scenario\tstep\tfirst_line\tlast_line\tdescription\n' > "$WORK/$n.steps.tsv"
done

STEP_FIRST=()   # per log
close_step() {
    [ -n "$CUR_STEP" ] || return 0
    local i
    for i in "${!LOG_NAMES[@]}"; do
        printf '%s\t%s\t%s\t%s\t%s\n' "$CUR_SCEN" "$CUR_STEP" "${STEP_FIRST[$i]}" \
            "$(lines_of "${LOG_FILES[$i]}")" "$STEP_DESC" >> "$WORK/${LOG_NAMES[$i]}.steps.tsv"
    done
    CUR_STEP=""
}
step() {
    close_step
    CUR_STEP="$1"; STEP_DESC="$2"
    local i
    for i in "${!LOG_NAMES[@]}"; do
        STEP_FIRST[$i]=$(( $(lines_of "${LOG_FILES[$i]}") + 1 ))
    done
    echo "#### step $CUR_SCEN/$1: $2" >> "$TRANSCRIPT"
}

# GET /v1/<path> with the root token, as a plain HTTP client would (sys/pprof
# answers with non-JSON bodies the CLI cannot print).
http_get() {
    echo "+ curl GET /v1/$1" >> "$TRANSCRIPT"
    curl -sS -o /dev/null -w '%{http_code}\n' -H "X-Vault-Token: $BAO_TOKEN" "$BAO_ADDR/v1/$1" >> "$TRANSCRIPT" 2>&1
}

cat > "$WORK/ops-admin.hcl" <<'EOF'
# everything, with sudo: an escalation-grade policy
path "*" { capabilities = ["create", "read", "update", "delete", "list", "sudo"] }
EOF

# ================================================================ 00 bootstrap
# Lines written by the dev server itself before the first CLI command.
CUR_SCEN="00-bootstrap"; SCEN_FIRST=1
step bootstrap "written by the dev server before the first CLI command (test probes, secret/ mount)"
STEP_FIRST=(1 1 1)
close_scenario

# ================================================================ 01 raw tokens
scenario 01-raw-tokens
step setup "enable userpass; user alice (token_policies=default)"
run bao auth enable userpass
run bao write auth/userpass/users/alice password=alice-pass-1 token_policies=default
step login_ok "alice logs in (bao login -method=userpass): the response carries her new token"
ALICE_TOKEN="$(value bao login -no-store -method=userpass -field=token username=alice password=alice-pass-1)"
step alice_lookup_self "alice's token looks itself up (auth/token/lookup-self)"
run as "$ALICE_TOKEN" bao token lookup
step token_create "root creates a default-policy token (auth/token/create)"
run bao token create -policy=default -display-name=plain
step renew_self "alice renews her token (auth/token/renew-self)"
run as "$ALICE_TOKEN" bao token renew

# ================================================================ 02 audit devices
scenario 02-audit-devices
step enable_accessor_device "bao audit enable -path=$ACC_DEVICE file hmac_accessor=false (allowed: unsafe_allow_api_audit_creation)"
run bao audit enable -path="$ACC_DEVICE" file file_path="$NAME-accessor.log" hmac_accessor=false
step accessor_device_use "root looks itself up, alice logs in again, root creates a token (accessors in clear in $ACC_DEVICE, tokens still HMACed)"
run bao token lookup
run bao login -no-store -method=userpass -field=token username=alice password=alice-pass-1
run bao token create -policy=default -display-name=seen-by-accessor-device
step disable_accessor_device "bao audit disable $ACC_DEVICE (DELETE sys/audit/$ACC_DEVICE, succeeds)"
run bao audit disable "$ACC_DEVICE"
step disable_config_device_refused "bao audit disable $DEVICE (refused: config-managed device)"
fails bao audit disable "$DEVICE"
step audit_list "bao audit list -detailed (read sys/audit)"
run bao audit list -detailed

# ================================================================ 03 token accessors
scenario 03-token-accessors
step list_accessors "bao list auth/token/accessors (every token's accessor)"
ACCESSOR="$(value bao list -format=json auth/token/accessors | jq -r '.[0]')"
step lookup_accessor "bao token lookup -accessor <one accessor> (auth/token/lookup-accessor)"
run bao token lookup -accessor "$ACCESSOR"

# ================================================================ 04 token types
scenario 04-token-types
step default_token "bao token create -policy=default (default TTL: 768h)"
DEFAULT_TOKEN="$(value bao token create -policy=default -field=token)"
step orphan_cli "bao token create -orphan -policy=default (auth/token/create with no_parent:true, a JSON boolean)"
run bao token create -orphan -policy=default
step orphan_endpoint "bao write auth/token/create-orphan policies=default"
run bao write auth/token/create-orphan policies=default
step orphan_string "bao write auth/token/create no_parent=true policies=default (no_parent sent as a string: HMACed)"
run bao write auth/token/create no_parent=true policies=default
step periodic_cli "bao token create -period=1h -policy=default (period sent as a string: HMACed)"
PERIODIC_TOKEN="$(value bao token create -period=1h -policy=default -field=token)"
step periodic_api "auth/token/create with a JSON body {\"period\":3600} (a number: in clear)"
run bao write auth/token/create - <<<'{"policies":["default"],"period":3600}'
step periodic_lookup "bao token lookup <periodic token>: response.data.period in clear"
run bao token lookup "$PERIODIC_TOKEN"
step plain_lookup "bao token lookup <default token>: no period"
run bao token lookup "$DEFAULT_TOKEN"
step ttl_capped "bao token create -ttl=2000h -policy=default before any tuning: capped at 768h"
run bao token create -ttl=2000h -policy=default
step tune_max_ttl "bao auth tune -max-lease-ttl=87600h token (sys/mounts/auth/token/tune)"
run bao auth tune -max-lease-ttl=87600h token
step ttl_long "bao token create -ttl=2000h -policy=default after the tune: token_ttl 7200000"
run bao token create -ttl=2000h -policy=default
step root_no_ttl "bao token create -policy=root (no token_ttl at all)"
run bao token create -policy=root

# ================================================================ 05 token roles
scenario 05-token-roles
step role_write "bao write auth/token/roles/ops allowed_policies=default orphan=true period=24h"
run bao write auth/token/roles/ops allowed_policies=default orphan=true period=24h
step role_read "bao read auth/token/roles/ops; bao list auth/token/roles"
run bao read auth/token/roles/ops
run bao list auth/token/roles
step role_create "bao token create -role=ops (auth/token/create/ops: orphan and periodic by the role)"
run bao token create -role=ops
step role_delete "bao delete auth/token/roles/ops"
run bao delete auth/token/roles/ops

# ================================================================ 06 identity
scenario 06-identity
step policy_setup "bao policy write ops-admin (path \"*\" with sudo)"
run bao policy write ops-admin "$WORK/ops-admin.hcl"
step group_root_refused "bao write identity/group name=g policies=root (refused: policies cannot contain root)"
fails bao write identity/group name=g policies=root
step group_policies "bao write identity/group name=admins policies=ops-admin"
run bao write identity/group name=admins policies=ops-admin
step entity_policies "bao write identity/entity name=eve policies=ops-admin"
EVE_ID="$(value bao write -format=json identity/entity name=eve policies=ops-admin | jq -r .data.id)"
step entity_metadata "bao write identity/entity name=frank metadata=team=dev (no policies)"
run bao write identity/entity name=frank metadata=team=dev
step group_add_member "bao write identity/group/name/admins member_entity_ids=<eve> (joins the admin group)"
run bao write identity/group/name/admins member_entity_ids="$EVE_ID"
step entity_by_name "bao write identity/entity/name/frank policies=ops-admin"
run bao write identity/entity/name/frank policies=ops-admin
step reads "bao read identity/group/name/admins; bao list identity/entity/name"
run bao read identity/group/name/admins
run bao list identity/entity/name

# ================================================================ 07 mfa
scenario 07-mfa
step totp_method "bao write identity/mfa/method/totp issuer=auditwatch"
MFA_ID="$(value bao write -format=json identity/mfa/method/totp issuer=auditwatch | jq -r .data.method_id)"
step enforcement "bao write identity/mfa/login-enforcement/ops mfa_method_ids=<id> auth_method_types=userpass"
run bao write identity/mfa/login-enforcement/ops mfa_method_ids="$MFA_ID" auth_method_types=userpass
step enforcement_delete "bao delete identity/mfa/login-enforcement/ops (MFA no longer enforced)"
run bao delete identity/mfa/login-enforcement/ops
step legacy_sys_mfa "bao write sys/mfa/method/totp/legacy issuer=x (Vault Enterprise path; unsupported in OpenBao)"
fails bao write sys/mfa/method/totp/legacy issuer=x
step reads "bao list identity/mfa/method/totp; bao read identity/mfa/method/totp/<id>"
run bao list identity/mfa/method/totp
run bao read "identity/mfa/method/totp/$MFA_ID"

# ================================================================ 08 transit
scenario 08-transit
step enable "bao secrets enable transit"
run bao secrets enable transit
step key_exportable "bao write -f transit/keys/k exportable=true"
run bao write -f transit/keys/k exportable=true
step key_plain "bao write -f transit/keys/plain (not exportable)"
run bao write -f transit/keys/plain
step export "bao read transit/export/encryption-key/k"
run bao read transit/export/encryption-key/k
step export_version "bao read transit/export/hmac-key/k/1"
run bao read transit/export/hmac-key/k/1
step config_exportable "bao write transit/keys/plain/config exportable=true"
run bao write transit/keys/plain/config exportable=true
step config_other "bao write transit/keys/k/config deletion_allowed=true"
run bao write transit/keys/k/config deletion_allowed=true
step key_read "bao read transit/keys/k"
run bao read transit/keys/k
step other_mount "bao secrets enable -path=crypto transit; exportable key c; bao read crypto/export/encryption-key/c"
run bao secrets enable -path=crypto transit
run bao write -f crypto/keys/c exportable=true
run bao read crypto/export/encryption-key/c

# ================================================================ 09 pki
scenario 09-pki
step enable "bao secrets enable pki; bao secrets enable -path=pki-int pki"
run bao secrets enable pki
run bao secrets enable -path=pki-int pki
step root_exported "bao write pki/root/generate/exported common_name=root.example key_type=ec"
run bao write pki/root/generate/exported common_name=root.example key_type=ec
step root_internal "bao write pki/root/generate/internal common_name=root2.example key_type=ec (key stays inside)"
run bao write pki/root/generate/internal common_name=root2.example key_type=ec
step intermediate_exported "bao write pki-int/intermediate/generate/exported common_name=int.example key_type=ec"
run bao write pki-int/intermediate/generate/exported common_name=int.example key_type=ec
step keys_exported "bao write pki/keys/generate/exported key_type=ec"
run bao write pki/keys/generate/exported key_type=ec
step keys_internal "bao write pki/keys/generate/internal key_type=ec"
run bao write pki/keys/generate/internal key_type=ec
step issuers_root_exported "bao write pki/issuers/generate/root/exported common_name=root3.example key_type=ec"
run bao write pki/issuers/generate/root/exported common_name=root3.example key_type=ec
step kv_named_exported "bao kv put secret/reports/exported x=1 (a KV path ending in /exported)"
run bao kv put secret/reports/exported x=1

# ================================================================ 10 wrapping replay
scenario 10-wrapping-replay
step wrap "bao token create -policy=default -wrap-ttl=5m (twice)"
WRAP="$(value bao token create -policy=default -display-name=wrapped -wrap-ttl=5m -field=wrapping_token)"
WRAP2="$(value bao token create -policy=default -display-name=wrapped2 -wrap-ttl=5m -field=wrapping_token)"
step lookup_valid "bao write sys/wrapping/lookup token=<second wrapping token> (valid)"
run bao write sys/wrapping/lookup token="$WRAP2"
step unwrap_ok "bao unwrap <wrapping token>"
run bao unwrap "$WRAP"
step unwrap_replay "bao unwrap <same wrapping token> again (request entry only)"
fails bao unwrap "$WRAP"
step lookup_replay "bao write sys/wrapping/lookup token=<same wrapping token>"
fails bao write sys/wrapping/lookup token="$WRAP"
step rewrap_replay "bao write sys/wrapping/rewrap token=<same wrapping token>"
fails bao write sys/wrapping/rewrap token="$WRAP"
step replay_as_client_token "BAO_TOKEN=<used wrapping token> bao unwrap"
fails as "$WRAP" bao unwrap

# ================================================================ 11 recon
scenario 11-recon
step host_info "bao read sys/host-info"
run bao read sys/host-info
step config_state "bao read sys/config/state/sanitized"
run bao read sys/config/state/sanitized
step pprof "curl GET sys/pprof/cmdline and sys/pprof/goroutine?debug=1 with the root token"
http_get sys/pprof/cmdline
http_get 'sys/pprof/goroutine?debug=1'
step in_flight "bao read sys/in-flight-req"
run bao read sys/in-flight-req
step counters "bao read sys/internal/counters/tokens, .../entities, .../activity (unsupported in OpenBao)"
run bao read sys/internal/counters/tokens
run bao read sys/internal/counters/entities
try bao read sys/internal/counters/activity
step config_cors "bao read sys/config/cors (a sys/config read that is not the server state)"
run bao read sys/config/cors

# ================================================================ 12 policy override
scenario 12-policy-override
step kv_put_override "bao kv put -policy-override secret/app/cfg x=1 (OpenBao has no Sentinel: the flag is not logged)"
run bao kv put -policy-override secret/app/cfg x=1

# ================================================================ 13 hashes
scenario 13-hashes
step hash_watch_list "sys/audit-hash/$DEVICE of strings seen HMACed in this capture (JSON body via stdin)"
for s in \
    'root' 'default' 'ops-admin' 'true' '0s' '1h0m0s' '2000h0m0s' \
    'policies cannot contain root' \
    'wrapping token is not valid or does not exist' ; do
    audit_hash "$s"
done
step raw_salts "bao list sys/raw/audit/; bao read sys/raw/audit/<uuid>/salt for each device"
UUIDS="$(value bao list -format=json sys/raw/audit/ | jq -r '.[]' | tr -d /)"
: > "$WORK/salts.tsv"
for u in $UUIDS; do
    s="$(value bao read -field=value "sys/raw/audit/$u/salt")"
    printf '%s\t%s\n' "$u" "$s" >> "$WORK/salts.tsv"
done

close_scenario

# ---------------------------------------------------------------- stop, check, publish
say "stopping server"
stop_server

TOTAL="$(log_lines)"
say "captured $TOTAL audit entries ($(lines_of "$RAW_AUDIT") raw, $(lines_of "$ACC_AUDIT") accessor)"
for f in "${LOG_FILES[@]}"; do
    check_log "$f"
done
for i in "${!LOG_NAMES[@]}"; do
    last="$(tail -n1 "$WORK/${LOG_NAMES[$i]}.steps.tsv" | cut -f4)"
    [ "$last" = "$(lines_of "${LOG_FILES[$i]}")" ] || {
        echo "capture: entries after the last step in ${LOG_NAMES[$i]} ($last)" >&2; exit 1; }
done
# The normal device never writes a token or an accessor in clear; the raw device never HMACs them.
if jq -e 'select((.auth.client_token // "hmac-sha256:" | startswith("hmac-sha256:") | not)
                 or (.auth.accessor // "hmac-sha256:" | startswith("hmac-sha256:") | not))' "$AUDIT" > /dev/null; then
    echo "capture: $DEVICE logged a token or accessor in clear" >&2
    exit 1
fi
if jq -e 'select((.auth.client_token // "" | startswith("hmac-sha256:"))
                 or (.auth.accessor // "" | startswith("hmac-sha256:")))' "$RAW_AUDIT" > /dev/null; then
    echo "capture: $RAW_DEVICE logged a token or accessor as an HMAC" >&2
    exit 1
fi

# Which salt is file-audit's: the one that reproduces sys/audit-hash's answers.
# Recompute every sys/audit-hash output offline from it, and check that the
# root token as signals-raw.log shows it hashes to what signals.log shows.
SALTS="$WORK/salts.tsv" DEVICE="$DEVICE" BAO_VERSION="$(bao version)" ROOT_TOKEN="$ROOT_TOKEN" \
python3 - "$HASHES_TSV" "$AUDIT" "$WORK/$NAME.hashes.json" <<'EOF'
import hashlib, hmac, json, os, sys
tsv, audit, out = sys.argv[1:4]
rows = [l.rstrip("\n").split("\t") for l in open(tsv, encoding="utf-8")]
salts = [l.rstrip("\n").split("\t") for l in open(os.environ["SALTS"], encoding="utf-8")]
def h(salt, s):
    return "hmac-sha256:" + hmac.new(salt.encode(), s.encode(), hashlib.sha256).hexdigest()
match = [(u, s) for u, s in salts if all(h(s, json.loads(i)) == got for i, got in rows)]
if len(match) != 1:
    sys.exit(f"capture: {len(match)} salts reproduce the sys/audit-hash outputs (want 1)")
uuid, salt = match[0]
hashes = [{"input": json.loads(i), "hash": got, "source": "sys/audit-hash"} for i, got in rows]
log = open(audit, encoding="utf-8").read()
offline = [
    ("", "offline (sys/audit-hash refuses an empty input); every empty string value in the log"),
    (os.environ["ROOT_TOKEN"],
     "offline; the dev server's root token, in clear in signals-raw.log: auth.client_token of every root request"),
]
bad = 0
for s, source in offline:
    v = h(salt, s)
    if v not in log:
        bad += 1
        print(f"capture: offline hash of {json.dumps(s)} not found in the log", file=sys.stderr)
    hashes.append({"input": s, "hash": v, "source": source})
if bad:
    sys.exit(1)
doc = {
    "comment": "Salt of the file audit device that wrote signals.log, read via sys/raw/audit/<device_uuid>/salt "
               "(scenario 13), and the hashes of strings seen HMACed in it (scenario 13, sys/audit-hash). "
               "hash = \"hmac-sha256:\" + lowercase hex(HMAC-SHA256(key = UTF-8 bytes of salt, msg = UTF-8 bytes of input)). "
               "signals-raw.log shows every value in clear. "
               "Regenerated by scripts/capture-openbao-signals.sh; every capture has a new salt.",
    "openbao_version": os.environ["BAO_VERSION"],
    "device": os.environ["DEVICE"],
    "device_uuid": uuid,
    "salt": salt,
    "hashes": hashes,
}
with open(out, "w", encoding="utf-8") as f:
    json.dump(doc, f, indent=2, ensure_ascii=False)
    f.write("\n")
EOF

mkdir -p "$OUT_DIR"
cp "$AUDIT" "$OUT_DIR/$NAME.log"
cp "$SCEN_TSV" "$OUT_DIR/$NAME.scenarios.tsv"
cp "$WORK/$NAME.hashes.json" "$OUT_DIR/$NAME.hashes.json"
for i in "${!LOG_NAMES[@]}"; do
    cp "${LOG_FILES[$i]}" "$OUT_DIR/${LOG_NAMES[$i]}.log"
    cp "$WORK/${LOG_NAMES[$i]}.steps.tsv" "$OUT_DIR/${LOG_NAMES[$i]}.steps.tsv"
done
chmod 0644 "$OUT_DIR/$NAME".* "$OUT_DIR/$NAME"-raw.* "$OUT_DIR/$NAME"-accessor.*

say "wrote $OUT_DIR/$NAME{,-raw,-accessor}.log and their steps, $NAME.{scenarios.tsv,hashes.json} in $((SECONDS - START_SECONDS))s"
column -t -s $'\t' "$OUT_DIR/$NAME.scenarios.tsv" >&2 2>/dev/null || cat "$OUT_DIR/$NAME.scenarios.tsv" >&2
