#!/usr/bin/env bash
# Capture real OpenBao audit logs for auditwatch's tests.
#
# Starts `bao server -dev` on a free 127.0.0.1 port with a file audit device
# declared in an HCL config file, drives the scenarios described in
# tests/data/openbao/SCENARIOS.md with the `bao` CLI, stops the server and
# writes (overwriting previous outputs):
#
#   tests/data/openbao/scenarios.log            the audit log (one JSON entry a line)
#   tests/data/openbao/scenarios.scenarios.tsv  scenario<TAB>first_line<TAB>last_line
#   tests/data/openbao/scenarios.steps.tsv      scenario<TAB>step<TAB>first_line<TAB>last_line<TAB>description
#   tests/data/openbao/scenarios.hashes.json    the device salt and sys/audit-hash outputs
#
# Line numbers are 1-based and inclusive. A step that produced no audit entry
# has last_line = first_line - 1. The audit file is written synchronously
# (each entry is written before the HTTP reply goes out), so counting its lines
# right after each CLI command returns is exact.
#
# The set-up (work directory, clean CLI environment, dev server, bookkeeping
# and command wrappers) is shared with capture-openbao-signals.sh in
# scripts/lib/openbao.sh.
#
# Only 127.0.0.1 is used. Needs: bao (scripts/install-openbao.sh), jq, python3.
# Set KEEP_WORK=1 to keep the temporary directory (server output, CLI
# transcript with the ephemeral tokens) for debugging.
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/openbao.sh
. "$ROOT_DIR/scripts/lib/openbao.sh"
OUT_DIR="$ROOT_DIR/tests/data/openbao"
NAME=scenarios
DEVICE=file-audit

require_tools jq python3

START_SECONDS=$SECONDS
make_work auditwatch-capture
AUDIT="$WORK/$NAME.log"
SCEN_TSV="$WORK/$NAME.scenarios.tsv"
STEPS_TSV="$WORK/$NAME.steps.tsv"
HASHES_TSV="$WORK/hashes.tsv"   # input as JSON string <TAB> hash
TRANSCRIPT="$WORK/transcript.txt"

cat > "$WORK/server.hcl" <<EOF
# sys/raw is used by scenario 13 to read the audit device's salt.
raw_storage_endpoint = true

audit "file" "$DEVICE" {
  description = "auditwatch capture"
  options {
    file_path = "$AUDIT"
    mode      = "0600"
  }
}
EOF

start_server . -dev-root-token-id=root
# The dev server prints its single unseal key (shares=1, threshold=1) on stdout.
UNSEAL_KEY="$(server_says 'Unseal Key')"
[ -n "$UNSEAL_KEY" ] || { echo "capture: no unseal key in server output" >&2; exit 1; }
export BAO_TOKEN=root

# ---------------------------------------------------------------- bookkeeping
: > "$SCEN_TSV"
: > "$STEPS_TSV"
: > "$HASHES_TSV"
: > "$TRANSCRIPT"
printf 'scenario\tfirst_line\tlast_line\n' >> "$SCEN_TSV"
printf 'scenario\tstep\tfirst_line\tlast_line\tdescription\n' >> "$STEPS_TSV"

STEP_FIRST=0
close_step() {
    [ -n "$CUR_STEP" ] || return 0
    printf '%s\t%s\t%s\t%s\t%s\n' "$CUR_SCEN" "$CUR_STEP" "$STEP_FIRST" "$(log_lines)" "$STEP_DESC" >> "$STEPS_TSV"
    CUR_STEP=""
}
step() {
    close_step
    CUR_STEP="$1"; STEP_DESC="$2"
    STEP_FIRST=$(( $(log_lines) + 1 ))
    echo "#### step $CUR_SCEN/$1: $2" >> "$TRANSCRIPT"
}

cat > "$WORK/app-read.hcl" <<'EOF'
path "secret/data/app/*" { capabilities = ["read", "list"] }
EOF
cat > "$WORK/tokenmaker.hcl" <<'EOF'
path "auth/token/create" { capabilities = ["create", "update"] }
path "secret/data/tm/*" { capabilities = ["read"] }
EOF
cat > "$WORK/ops-admin.hcl" <<'EOF'
# everything, with sudo: an escalation-grade policy
path "*" { capabilities = ["create", "read", "update", "delete", "list", "sudo"] }
EOF
cat > "$WORK/team-a-dev.hcl" <<'EOF'
path "kv/data/dev/*" { capabilities = ["create", "read", "update"] }
EOF

# ================================================================ 00 bootstrap
# Lines written by the dev server itself before the first CLI command.
CUR_SCEN="00-bootstrap"; SCEN_FIRST=1
close_scenario

# ================================================================ 01 userpass
scenario 01-userpass
step setup "enable userpass; policy app-read; users alice, bob (app-read) and carol (token_policies=root)"
run bao auth enable userpass
run bao policy write app-read "$WORK/app-read.hcl"
run bao write auth/userpass/users/alice password=alice-pass-1 token_policies=app-read
run bao write auth/userpass/users/bob password=bob-pass-1 token_policies=app-read
run bao write auth/userpass/users/carol password=carol-pass-1 token_policies=root

step login_ok "alice logs in with the right password (bao login -method=userpass)"
ALICE_TOKEN="$(value bao login -no-store -method=userpass -field=token username=alice password=alice-pass-1)"

step alice_lookup_self "alice's new token looks itself up (auth/token/lookup-self)"
run as "$ALICE_TOKEN" bao token lookup

step wrong_password "alice, wrong password"
fails bao login -no-store -method=userpass username=alice password=wrong-password

step unknown_user "unknown user mallory"
fails bao login -no-store -method=userpass username=mallory password=whatever

step lockout_failures "bob: 6 wrong passwords (default lockout: threshold 5, 15m)"
for i in 1 2 3 4 5 6; do
    fails bao login -no-store -method=userpass username=bob password="bad-$i"
done

step lockout_right_password "bob, right password while locked out"
fails bao login -no-store -method=userpass username=bob password=bob-pass-1

step root_policy_user "carol (token_policies=root) logs in with the right password: auth methods cannot create root tokens"
fails bao login -no-store -method=userpass username=carol password=carol-pass-1

# ================================================================ 02 approle
scenario 02-approle
step setup "enable approle; role ci (token_policies=app-read); read role_id; generate secret_id"
run bao auth enable approle
run bao write auth/approle/role/ci token_policies=app-read secret_id_ttl=1h token_ttl=20m
ROLE_ID="$(value bao read -field=role_id auth/approle/role/ci/role-id)"
SECRET_ID="$(value bao write -f -field=secret_id auth/approle/role/ci/secret-id)"

step login_ok "approle login with the right role_id and secret_id (no client token sent, as a real AppRole client)"
run notoken bao write auth/approle/login role_id="$ROLE_ID" secret_id="$SECRET_ID"

step bad_secret_id "approle login, right role_id, wrong secret_id (no client token)"
fails notoken bao write auth/approle/login role_id="$ROLE_ID" secret_id=00000000-0000-0000-0000-000000000000

step bad_role_id "approle login, unknown role_id (no client token)"
fails notoken bao write auth/approle/login role_id=11111111-1111-1111-1111-111111111111 secret_id="$SECRET_ID"

step with_caller_token "the same two failures sent with BAO_TOKEN=root: the caller's root token shows in request auth (and in the bad-role_id response auth)"
fails bao write auth/approle/login role_id="$ROLE_ID" secret_id=00000000-0000-0000-0000-000000000000
fails bao write auth/approle/login role_id=11111111-1111-1111-1111-111111111111 secret_id="$SECRET_ID"

# ================================================================ 03 unmounted method
scenario 03-unmounted-method
step write_ldap_login "bao write auth/ldap/login/alice with no client token (no ldap mount)"
fails notoken bao write auth/ldap/login/alice password=x
step login_ldap_path "bao login -method=userpass -path=ldap username=alice (the CLI has no ldap handler; posts to auth/ldap/login/alice without a token)"
fails bao login -no-store -method=userpass -path=ldap username=alice password=x
step approle_unmounted "bao write auth/approle-prod/login role_id=... secret_id=... with no client token (no such mount)"
fails notoken bao write auth/approle-prod/login role_id=x secret_id=y
step with_root_token "bao write auth/ldap/login/alice sent with BAO_TOKEN=root: ACL passes, router says unsupported path"
fails bao write auth/ldap/login/alice password=x

# ================================================================ 04 bad / missing token
scenario 04-bad-token
step bad_token_kv_get "BAO_TOKEN=bogus bao kv get secret/x (CLI preflight sys/internal/ui/mounts/secret/x)"
fails as bogus bao kv get secret/x
step bad_token_read "BAO_TOKEN=bogus bao read secret/data/x"
fails as bogus bao read secret/data/x
step bad_token_lookup_self "BAO_TOKEN=bogus bao token lookup (auth/token/lookup-self)"
fails as bogus bao token lookup
step bad_token_realistic "token-shaped but unknown token reads secret/data/x"
fails as s.AAAAAAAAAAAAAAAAAAAAAAAA bao read secret/data/x
step missing_token_kv_get "no token at all: bao kv get secret/x"
fails notoken bao kv get secret/x
step missing_token_read "no token at all: bao read secret/data/x"
fails notoken bao read secret/data/x
step revoked_token_setup "create a default-policy token and revoke it"
REVOKED_TOKEN="$(value bao token create -policy=default -display-name=shortlived -field=token)"
run bao token revoke "$REVOKED_TOKEN"
step revoked_token_use "use the revoked token: bao read secret/data/x"
fails as "$REVOKED_TOKEN" bao read secret/data/x

# ================================================================ 05 ACL denial
scenario 05-acl-denied
step setup "create a token with only the default policy"
LIMITED_TOKEN="$(value bao token create -policy=default -display-name=limited -field=token)"
step limited_kv_get "default-policy token: bao kv get secret/prod/db, 3x"
for _ in 1 2 3; do fails as "$LIMITED_TOKEN" bao kv get secret/prod/db; done
step limited_read "default-policy token: bao read secret/data/prod/db, 2x"
for _ in 1 2; do fails as "$LIMITED_TOKEN" bao read secret/data/prod/db; done
step limited_write "default-policy token: bao kv put secret/prod/db (write denied)"
fails as "$LIMITED_TOKEN" bao kv put secret/prod/db password=x
step alice_denied "alice (userpass, entity) reads secret/data/prod/db 2x and lists sys/policies/acl"
for _ in 1 2; do fails as "$ALICE_TOKEN" bao read secret/data/prod/db; done
fails as "$ALICE_TOKEN" bao policy list

# ================================================================ 06 root tokens
scenario 06-root-tokens
step create_policy_root "bao token create -policy=root"
ROOT1="$(value bao token create -policy=root -field=token)"
step create_inherit_root "bao token create (no policy; root caller, inherits root)"
ROOT2="$(value bao token create -field=token)"
step create_orphan "bao token create -orphan -policy=root (the CLI sends auth/token/create with no_parent:true, a JSON boolean)"
run bao token create -orphan -policy=root
step create_no_parent "bao write auth/token/create no_parent=true policies=root (key=value args: strings, so no_parent and policies are HMACed)"
run bao write auth/token/create no_parent=true policies=root
step create_orphan_endpoint "bao write auth/token/create-orphan policies=root (the create-orphan endpoint)"
run bao write auth/token/create-orphan policies=root
step role_setup "token role breakglass with allowed_policies=root, orphan=true"
run bao write auth/token/roles/breakglass allowed_policies=root orphan=true
step role_create "bao token create -role=breakglass -policy=root -display-name=breakglass"
run bao token create -role=breakglass -policy=root -display-name=breakglass
step wrapped_create "bao token create -policy=root -wrap-ttl=5m (response wrapped, no response.auth)"
WRAPPED_ROOT="$(value bao token create -policy=root -wrap-ttl=5m -field=wrapping_token)"
step wrapped_unwrap "bao unwrap <wrapping token> (response.auth = the root token)"
run bao unwrap "$WRAPPED_ROOT"
step batch_root_denied "bao token create -type=batch -policy=root (batch tokens cannot be root tokens)"
fails bao token create -type=batch -policy=root
step nonroot_parent_setup "policy tokenmaker (may call auth/token/create); token with it"
run bao policy write tokenmaker "$WORK/tokenmaker.hcl"
TM_TOKEN="$(value bao token create -policy=tokenmaker -display-name=tokenmaker -field=token)"
step nonroot_parent_denied "tokenmaker token asks for a root child (child policies must be subset of parent)"
fails as "$TM_TOKEN" bao token create -policy=root
step nonroot_parent_denied_no_parent "tokenmaker token asks for an orphan root token via no_parent=true"
fails as "$TM_TOKEN" bao write auth/token/create no_parent=true policies=root
step root_token_use "requests made with the created root token ROOT1 (kv put, kv get, secrets list)"
run as "$ROOT1" bao kv put secret/rt/marker note=made-with-root1
run as "$ROOT1" bao kv get secret/rt/marker
run as "$ROOT1" bao secrets list
step root_token_lookup "bao token lookup ROOT1 (auth/token/lookup) and by accessor; ROOT1 looks itself up"
run bao token lookup "$ROOT1"
ROOT1_ACCESSOR="$(value bao token lookup -format=json "$ROOT1" | jq -r .data.accessor)"
run bao token lookup -accessor "$ROOT1_ACCESSOR"
run as "$ROOT1" bao token lookup
step root_token_revoke "revoke ROOT2 (auth/token/revoke)"
run bao token revoke "$ROOT2"

# ================================================================ 07 generate-root
scenario 07-generate-root
step generate_otp "bao operator generate-root -generate-otp (reads sys/generate-root-token/attempt)"
OTP="$(value bao operator generate-root -generate-otp)"
step init "bao operator generate-root -init -otp=... (PUT sys/generate-root-token/attempt)"
run bao operator generate-root -init -otp="$OTP"
step status "bao operator generate-root -status"
NONCE="$(value bao operator generate-root -status -format=json | jq -r .nonce)"
step bad_nonce "unseal key with a wrong nonce (error text carries the real nonce in clear)"
fails bao operator generate-root -nonce=00000000-0000-0000-0000-000000000000 "$UNSEAL_KEY"
step update_complete "bao operator generate-root -nonce=... <unseal key>: complete=true"
ENCODED="$(value bao operator generate-root -format=json -nonce="$NONCE" "$UNSEAL_KEY" | jq -r .encoded_token)"
step decode "bao operator generate-root -decode=... -otp=... (decoding is local, the CLI reads the status first)"
GEN_ROOT="$(value bao operator generate-root -decode="$ENCODED" -otp="$OTP")"
step generated_root_use "the generated root token: lookup-self and secrets list"
run as "$GEN_ROOT" bao token lookup
run as "$GEN_ROOT" bao secrets list
step wrong_key "second attempt: -init, then a wrong unseal key (root generation aborted)"
OTP2="$(value bao operator generate-root -generate-otp)"
run bao operator generate-root -init -otp="$OTP2"
NONCE2="$(value bao operator generate-root -status -format=json | jq -r .nonce)"
fails bao operator generate-root -nonce="$NONCE2" "$(head -c 32 /dev/urandom | base64)"
step cancel "bao operator generate-root -cancel (DELETE sys/generate-root-token/attempt)"
run bao operator generate-root -cancel

# ================================================================ 08 policies
scenario 08-policies
step policy_write "bao policy write ops-admin (path \"*\" with sudo)"
run bao policy write ops-admin "$WORK/ops-admin.hcl"
step policy_read_list "bao policy read ops-admin; bao policy list"
run bao policy read ops-admin
run bao policy list
step acl_write "bao write sys/policies/acl/x policy=..."
run bao write sys/policies/acl/x policy='path "secret/data/x/*" { capabilities = ["read"] }'
step acl_read "bao read sys/policies/acl/x"
run bao read sys/policies/acl/x
step acl_delete "bao delete sys/policies/acl/x"
run bao delete sys/policies/acl/x
step legacy_sys_policy "bao write sys/policy/legacy-x policy=...; bao delete sys/policy/legacy-x"
run bao write sys/policy/legacy-x policy='path "secret/data/legacy/*" { capabilities = ["read"] }'
run bao delete sys/policy/legacy-x
step policy_delete "bao policy delete ops-admin"
run bao policy delete ops-admin

# ================================================================ 09 mounts
scenario 09-mounts
step secrets_enable "bao secrets enable -path=kv2 kv-v2"
run bao secrets enable -path=kv2 kv-v2
step secrets_tune "bao secrets tune -max-lease-ttl=2h -description=tuned kv2"
run bao secrets tune -max-lease-ttl=2h -description=tuned kv2
step secrets_move "bao write sys/remount from=kv2 to=kv2-moved, then one read of sys/remount/status/<migration_id> (bao secrets move would poll a variable number of times)"
MIGRATION_ID="$(value bao write -format=json sys/remount from=kv2 to=kv2-moved | jq -r .data.migration_id)"
sleep 1
for _ in $(seq 1 20); do
    STATUS="$(value bao read -format=json "sys/remount/status/$MIGRATION_ID" | jq -r .data.migration_info.status)"
    [ "$STATUS" = success ] && break
    say "remount status: $STATUS (an extra status read shifts the line numbers)"
    sleep 1
done
step secrets_disable "bao secrets disable kv2-moved"
run bao secrets disable kv2-moved
step auth_enable "bao auth enable -path=up2 userpass"
run bao auth enable -path=up2 userpass
step auth_tune "bao auth tune -default-lease-ttl=30m up2"
run bao auth tune -default-lease-ttl=30m up2
step auth_disable "bao auth disable up2"
run bao auth disable up2

# ================================================================ 10 audit-hash
scenario 10-audit-hash
step hash_root "bao write sys/audit-hash/$DEVICE input=root"
run bao write "sys/audit-hash/$DEVICE" input=root
audit_hash root
step hash_invalid_credentials "bao write sys/audit-hash/$DEVICE input='invalid username or password'"
run bao write "sys/audit-hash/$DEVICE" input='invalid username or password'
audit_hash 'invalid username or password'
step hash_watch_list "sys/audit-hash of the other watch-list strings (JSON body via stdin)"
for s in \
    'invalid role or secret ID' \
    'permission denied' \
    $'1 error occurred:\n\t* permission denied\n\n' \
    'auth methods cannot create root tokens' \
    'batch tokens cannot be root tokens' \
    'child policies must be subset of parent' \
    'root tokens may not be created from a parent namespace' \
    'root tokens may not be created without parent token being root' \
    'wrapping token is not valid or does not exist' \
    'cannot enable audit device via API; use declarative, config-based audit device management instead' \
    'cannot disable configuration-managed audit device' \
    'bogus' \
    'default' ; do
    audit_hash "$s"
done

# ================================================================ 11 KV traffic
scenario 11-kv
step put_escapes "kv put secret/app/db with values holding < > & quotes newline unicode"
run bao kv put secret/app/db user=app 'password=p<a>&"q'"'"'s' "note=line1
line2" 'uni=héllo ☃ 日本 🔑'
step put_escaped_keys "kv put secret/app/escapes: key names (never HMACed) with < > & quote backslash newline tab U+2028 U+0001 and unicode"
jq -n '{"k<lt>":"1","amp&key":"2","quote\"key":"3","back\\slash":"4","nl\nkey":"5","tab\tkey":"6","ls\u2028key":"7","ctl\u0001key":"8","uni-héllo-☃-日本-🔑":"9"}' > "$WORK/escapes.json"
run bao kv put secret/app/escapes @"$WORK/escapes.json"
step put_odd_paths "kv put on paths with & < > and unicode (request.path is not HMACed)"
run bao kv put 'secret/app/a&b<c>' x=1
run bao kv put 'secret/app/ünï-☃' x=2
step put_wide "kv put secret/app/wide with 300 keys (long lines: map keys are not hashed)"
jq -n '[range(0;300)] | map({key: ("field_\(.)"), value: ("value-\(.)")}) | from_entries' > "$WORK/wide.json"
run bao kv put secret/app/wide @"$WORK/wide.json"
step put_v2 "kv put secret/app/db again (version 2), kv patch"
run bao kv put secret/app/db user=app password=rotated
run bao kv patch secret/app/db extra=1
step get "kv get secret/app/db, secret/app/escapes, secret/app/wide, a version"
run bao kv get secret/app/db
run bao kv get -version=1 secret/app/db
run bao kv get secret/app/escapes
run bao kv get secret/app/wide
step get_missing "kv get of a missing secret (404, no error entry field expected)"
fails bao kv get secret/app/missing
step list "kv list secret/app; kv metadata get"
run bao kv list secret/app
run bao kv metadata get secret/app/db
step alice_read "alice (app-read policy) reads secret/app/db"
run as "$ALICE_TOKEN" bao kv get secret/app/db
step delete "kv delete, undelete, destroy, metadata delete"
run bao kv delete secret/app/db
run bao kv undelete -versions=3 secret/app/db
run bao kv destroy -versions=1 secret/app/db
run bao kv metadata delete 'secret/app/a&b<c>'
run bao kv metadata delete secret/app/wide

# ================================================================ 12 namespace
scenario 12-namespace
step create "bao namespace create team-a"
run bao namespace create team-a
step auth_enable "in team-a: bao auth enable userpass; user dave"
run bao auth enable -namespace=team-a userpass
run bao policy write -namespace=team-a team-a-dev "$WORK/team-a-dev.hcl"
run bao write -namespace=team-a auth/userpass/users/dave password=dave-pass-1 token_policies=team-a-dev
step login_ok "in team-a: dave logs in"
DAVE_TOKEN="$(value bao login -namespace=team-a -no-store -method=userpass -field=token username=dave password=dave-pass-1)"
step login_wrong_password "in team-a: dave, wrong password"
fails bao login -namespace=team-a -no-store -method=userpass username=dave password=nope
step login_unknown_user "in team-a: unknown user"
fails bao login -namespace=team-a -no-store -method=userpass username=eve password=nope
step policy_write "in team-a: bao policy write ops (BAO_NAMESPACE=team-a)"
run env BAO_NAMESPACE=team-a bao policy write ops "$WORK/ops-admin.hcl"
step mount_change "in team-a: secrets enable -path=kv kv-v2, tune, kv put by dave"
run bao secrets enable -namespace=team-a -path=kv kv-v2
run bao secrets tune -namespace=team-a -max-lease-ttl=1h kv
run as "$DAVE_TOKEN" bao kv put -namespace=team-a kv/dev/app k=v
step dave_denied "in team-a: dave reads kv/data/prod/app (ACL denied)"
fails as "$DAVE_TOKEN" bao kv get -namespace=team-a kv/prod/app
step root_from_parent_denied "root (root namespace) creates a root token in team-a: root tokens may not be created from a parent namespace"
fails bao token create -namespace=team-a -policy=root
step token_in_ns "root creates a default token in team-a"
run bao token create -namespace=team-a -policy=default

# ================================================================ 13 privileged sys
scenario 13-sys-privileged
step rotate "bao operator rotate (the 2.7 CLI writes sys/rotate/keyring, then reads sys/key-status); bao write -f sys/rotate (legacy path)"
run bao operator rotate
run bao write -f sys/rotate
step rotate_reads "bao operator key-status; reads of sys/rotate/keyring/config and sys/rotate/config; GET sys/rotate/keyring (unsupported)"
run bao operator key-status
run bao read sys/rotate/keyring/config
run bao read sys/rotate/config
fails bao read sys/rotate/keyring
step raw_list "bao list sys/raw/audit/ (one entry per audit device UUID)"
DEVICE_UUID="$(value bao list -format=json sys/raw/audit/ | jq -r '.[0]' | tr -d /)"
step raw_read_salt "bao read sys/raw/audit/<uuid>/salt: the device's HMAC salt"
SALT="$(value bao read -field=value "sys/raw/audit/$DEVICE_UUID/salt")"
step audit_list "bao audit list -detailed (read sys/audit)"
run bao audit list -detailed
step audit_enable_refused "bao audit enable -path=other file (refused: API audit creation disabled)"
fails bao audit enable -path=other file file_path=/dev/null
step audit_disable_refused "bao audit disable $DEVICE (refused: config-managed device)"
fails bao audit disable "$DEVICE"
step request_headers "audit request headers: x-forwarded-for (hmac=false), user-agent (hmac=true); list them"
run bao write sys/config/auditing/request-headers/x-forwarded-for hmac=false
run bao write sys/config/auditing/request-headers/user-agent hmac=true
run bao read sys/config/auditing/request-headers
step forwarded_request "a request carrying X-Forwarded-For: 203.0.113.7 (audited in clear)"
run bao read -header=X-Forwarded-For=203.0.113.7 sys/mounts/secret/tune
step plugin_catalog "bao plugin list; bao plugin info secret kv; register attempt of a bogus plugin (fails)"
run bao plugin list
run bao plugin info secret kv
fails bao plugin register -sha256=0000000000000000000000000000000000000000000000000000000000000000 -command=evil secret evil
step leases_revoke_prefix "bao lease revoke -sync -prefix secret/; bao lease revoke -force -prefix auth/approle/login"
run bao lease revoke -sync -prefix secret/
run bao lease revoke -force -prefix auth/approle/login
step step_down "bao operator step-down (non-HA dev server: not audited)"
try bao operator step-down
step rekey_cancel "bao operator rotate-keys -init, then -cancel (sys/rotate/root/init PUT/DELETE)"
run bao operator rotate-keys -init -key-shares=1 -key-threshold=1
run bao operator rotate-keys -cancel
step rekey_complete "bao operator rotate-keys -init + unseal key: complete=true with new keys (new unseal key issued)"
RK_NONCE="$(value bao operator rotate-keys -init -key-shares=1 -key-threshold=1 -format=json | jq -r .nonce)"
NEW_UNSEAL_KEY="$(value bao operator rotate-keys -format=json -nonce="$RK_NONCE" "$UNSEAL_KEY" | jq -r '.keys_base64[0]')"
[ -n "$NEW_UNSEAL_KEY" ] && [ "$NEW_UNSEAL_KEY" != null ] && UNSEAL_KEY="$NEW_UNSEAL_KEY"

# ================================================================ 14 wrapping replay
scenario 14-wrapping-replay
step wrap "bao token create -policy=default -wrap-ttl=5m"
WRAP2="$(value bao token create -policy=default -display-name=wrapped -wrap-ttl=5m -field=wrapping_token)"
step unwrap_ok "bao unwrap <wrapping token>"
run bao unwrap "$WRAP2"
step unwrap_replay "bao unwrap <same wrapping token> again (request entry only)"
fails bao unwrap "$WRAP2"
step lookup_replay "bao write sys/wrapping/lookup token=<same wrapping token>"
fails bao write sys/wrapping/lookup token="$WRAP2"
step replay_as_client_token "BAO_TOKEN=<used wrapping token> bao unwrap (token no longer exists)"
fails as "$WRAP2" bao unwrap

# ================================================================ 15 seal / unseal
scenario 15-seal-unseal
step seal "bao operator seal (sys/seal: request entry only)"
run bao operator seal
step unseal "bao operator unseal <key> (never audited; the device is rebuilt)"
run bao operator unseal "$UNSEAL_KEY"
step after_unseal "first request after unseal: bao token lookup (root)"
for _ in $(seq 1 50); do bao status >/dev/null 2>&1 && break; sleep 0.1; done
run bao token lookup

close_scenario

# ---------------------------------------------------------------- stop, check, publish
say "stopping server"
stop_server

TOTAL="$(log_lines)"
say "captured $TOTAL audit entries"
check_log "$AUDIT"
LAST_SCEN_LINE="$(tail -n1 "$SCEN_TSV" | cut -f3)"
[ "$LAST_SCEN_LINE" = "$TOTAL" ] || { echo "capture: entries after the last scenario ($LAST_SCEN_LINE != $TOTAL)" >&2; exit 1; }

# Recompute every sys/audit-hash output offline from the salt: HMAC-SHA256(key = salt
# string, msg = input), hex, prefixed "hmac-sha256:". Also add hashes the endpoint
# cannot produce (it refuses an empty input) and check that they occur in the log.
[ -n "${SALT:-}" ] || { echo "capture: salt was not read" >&2; exit 1; }
SALT="$SALT" DEVICE="$DEVICE" DEVICE_UUID="$DEVICE_UUID" BAO_VERSION="$(bao version)" \
python3 - "$HASHES_TSV" "$AUDIT" "$WORK/$NAME.hashes.json" <<'EOF'
import hashlib, hmac, json, os, sys
tsv, audit, out = sys.argv[1:4]
salt = os.environ["SALT"]
def h(s):
    return "hmac-sha256:" + hmac.new(salt.encode(), s.encode(), hashlib.sha256).hexdigest()
bad = 0
hashes = []
for line in open(tsv, encoding="utf-8"):
    inp, got = line.rstrip("\n").split("\t")
    s = json.loads(inp)
    if h(s) != got:
        bad += 1
        print(f"capture: hash mismatch for {inp}: server {got}, offline {h(s)}", file=sys.stderr)
    hashes.append({"input": s, "hash": got, "source": "sys/audit-hash"})
log = open(audit, encoding="utf-8").read()
offline = [
    ("", "offline (sys/audit-hash refuses an empty input); every empty string value in the log"),
    ('no handler for route "auth/ldap/login/alice". route entry not found.',
     "offline; response.data.error of a login on an unmounted path sent with a valid token (scenario 03)"),
    ('preflight capability check returned 403, please ensure client\'s policies grant access to path "secret/prod/db/"',
     "offline; response.data.error of the CLI preflight sys/internal/ui/mounts/secret/prod/db (scenario 05)"),
    ("Go-http-client/1.1",
     "offline; request.headers.user-agent of the bao CLI's requests once scenario 13 enabled user-agent auditing"),
]
for s, source in offline:
    v = h(s)
    if v not in log:
        bad += 1
        print(f"capture: offline hash of {json.dumps(s)} not found in the log", file=sys.stderr)
    hashes.append({"input": s, "hash": v, "source": source})
if bad:
    sys.exit(1)
doc = {
    "comment": "Salt of the file audit device that wrote scenarios.log, read via sys/raw/audit/<device_uuid>/salt "
               "(scenario 13), and the hashes of watch-list strings (scenario 10, sys/audit-hash). "
               "hash = \"hmac-sha256:\" + lowercase hex(HMAC-SHA256(key = UTF-8 bytes of salt, msg = UTF-8 bytes of input)). "
               "Regenerated by scripts/capture-openbao.sh; every capture has a new salt.",
    "openbao_version": os.environ["BAO_VERSION"],
    "device": os.environ["DEVICE"],
    "device_uuid": os.environ["DEVICE_UUID"],
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
cp "$STEPS_TSV" "$OUT_DIR/$NAME.steps.tsv"
cp "$WORK/$NAME.hashes.json" "$OUT_DIR/$NAME.hashes.json"
chmod 0644 "$OUT_DIR/$NAME".*

say "wrote $OUT_DIR/$NAME.{log,scenarios.tsv,steps.tsv,hashes.json} ($(du -h "$OUT_DIR/$NAME.log" | cut -f1)) in $((SECONDS - START_SECONDS))s"
column -t -s $'\t' "$OUT_DIR/$NAME.scenarios.tsv" >&2 2>/dev/null || cat "$OUT_DIR/$NAME.scenarios.tsv" >&2
