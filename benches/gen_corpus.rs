//! Synthetic Vault / OpenBao audit-log generator for auditwatch benchmarks.
//!
//! ```text
//! cargo run --release --example gen_corpus -- --seed 42 --size 1GiB \
//!     --profile realistic|all-candidates|flood --out FILE [--summary-json FILE] \
//!     [--entries N] [--failed-login-share PERCENT]
//! ```
//!
//! `flood` writes failed userpass logins (response lines only, 10 µs apart), each from its own
//! remote address and for its own user: an attacker spraying random values at the window rules.
//! It ends with a real brute force (20 failures from 203.0.113.7 for `alice.smith`, one a
//! second), which the window rules must still report. `--entries N` stops after N lines (the
//! burst comes after them); `--failed-login-share P` makes P % of the `realistic` profile's
//! pairs failed logins (an incident), instead of its usual 0.66 %.
//!
//! Writes one compact JSON object per line, in OpenBao 2.x key order
//! (`time,type,auth,request,response,error`), as request+response pairs with
//! UUID request ids and strictly increasing RFC3339Nano times. Shapes are copied
//! from the real lines in `tests/data/` (OpenBao captures and public Vault samples)
//! (§2 schema, §8 detection shapes). Sizes follow the reliability plan: median
//! about 1.6 KB per line, 2 % about 27 KB (300-key KV writes and lists), 0.1 %
//! about 1 MB (huge list responses).
//!
//! Only `std` is used and the PRNG is xoshiro256** seeded through splitmix64, so
//! the same `--seed/--size/--profile` gives the same bytes on every machine.
//!
//! At the end a summary (entries, bytes, and the count of every injected kind)
//! goes to stderr, so a benchmark can check the tool's findings; `--summary-json`
//! also writes it as JSON.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Instant;

// ---------------------------------------------------------------------------
// PRNG
// ---------------------------------------------------------------------------

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256** (Blackman & Vigna).
struct Rng {
    s: [u64; 4],
}

impl Rng {
    fn new(seed: u64) -> Self {
        let mut sm = seed;
        let mut s = [0u64; 4];
        for x in &mut s {
            *x = splitmix64(&mut sm);
        }
        Rng { s }
    }

    #[inline(always)]
    fn next(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the tiny bias is irrelevant here).
    #[inline(always)]
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }

    #[inline(always)]
    fn range(&mut self, lo: u64, hi_incl: u64) -> u64 {
        lo + self.below(hi_incl - lo + 1)
    }

    #[inline(always)]
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64) * (1.0 / (1u64 << 53) as f64) < p
    }

    #[inline(always)]
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------
// Byte formatting helpers
// ---------------------------------------------------------------------------

const fn hex_lut() -> [[u8; 2]; 256] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    t
}
static HEX_LUT: [[u8; 2]; 256] = hex_lut();

#[inline(always)]
fn hex16(x: u64) -> [u8; 16] {
    let b = x.to_be_bytes();
    let mut o = [0u8; 16];
    let mut i = 0;
    while i < 8 {
        let h = HEX_LUT[b[i] as usize];
        o[2 * i] = h[0];
        o[2 * i + 1] = h[1];
        i += 1;
    }
    o
}

/// `"hmac-sha256:<64 hex>"` including the quotes.
#[inline(always)]
fn push_hmac(buf: &mut Vec<u8>, rng: &mut Rng) {
    let mut o = [0u8; 78];
    o[..13].copy_from_slice(b"\"hmac-sha256:");
    o[13..29].copy_from_slice(&hex16(rng.next()));
    o[29..45].copy_from_slice(&hex16(rng.next()));
    o[45..61].copy_from_slice(&hex16(rng.next()));
    o[61..77].copy_from_slice(&hex16(rng.next()));
    o[77] = b'"';
    buf.extend_from_slice(&o);
}

fn hmac_string(rng: &mut Rng) -> String {
    let mut v = Vec::with_capacity(78);
    push_hmac(&mut v, rng);
    String::from_utf8(v).unwrap()
}

/// go-uuid style: 8-4-4-4-12 lower hex of 16 random bytes (no version bits).
#[inline(always)]
fn push_uuid(buf: &mut Vec<u8>, rng: &mut Rng) {
    let a = hex16(rng.next());
    let b = hex16(rng.next());
    let mut o = [0u8; 36];
    o[0..8].copy_from_slice(&a[0..8]);
    o[8] = b'-';
    o[9..13].copy_from_slice(&a[8..12]);
    o[13] = b'-';
    o[14..18].copy_from_slice(&a[12..16]);
    o[18] = b'-';
    o[19..23].copy_from_slice(&b[0..4]);
    o[23] = b'-';
    o[24..36].copy_from_slice(&b[4..16]);
    buf.extend_from_slice(&o);
}

fn uuid_string(rng: &mut Rng) -> String {
    let mut v = Vec::with_capacity(36);
    push_uuid(&mut v, rng);
    String::from_utf8(v).unwrap()
}

#[inline(always)]
fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

#[inline(always)]
fn push_2d(buf: &mut Vec<u8>, n: u64) {
    buf.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]);
}

/// Days since 1970-01-01 to (y, m, d). Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u64, u64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// RFC3339Nano like Go's `time.RFC3339Nano`: fraction without trailing zeros,
/// no fraction at all when it is zero. No quotes.
fn push_time(buf: &mut Vec<u8>, ns: u64, with_frac: bool) {
    let secs = ns / 1_000_000_000;
    let frac = ns % 1_000_000_000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let sod = secs % 86_400;
    let y = y as u64;
    push_2d(buf, y / 100);
    push_2d(buf, y % 100);
    buf.push(b'-');
    push_2d(buf, m);
    buf.push(b'-');
    push_2d(buf, d);
    buf.push(b'T');
    push_2d(buf, sod / 3600);
    buf.push(b':');
    push_2d(buf, (sod / 60) % 60);
    buf.push(b':');
    push_2d(buf, sod % 60);
    if with_frac && frac != 0 {
        let mut digits = [0u8; 9];
        let mut f = frac;
        for i in (0..9).rev() {
            digits[i] = b'0' + (f % 10) as u8;
            f /= 10;
        }
        let mut n = 9;
        while digits[n - 1] == b'0' {
            n -= 1;
        }
        buf.push(b'.');
        buf.extend_from_slice(&digits[..n]);
    }
    buf.push(b'Z');
}

fn time_string(ns: u64, with_frac: bool) -> String {
    let mut v = Vec::new();
    push_time(&mut v, ns, with_frac);
    String::from_utf8(v).unwrap()
}

// ---------------------------------------------------------------------------
// Kinds counted in the summary
// ---------------------------------------------------------------------------

macro_rules! kinds {
    ($($n:ident),* $(,)?) => {
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        enum K { $($n),* }
        const KNAMES: &[&str] = &[$(stringify!($n)),*];
        const NK: usize = KNAMES.len();
    };
}

kinds!(
    // ordinary traffic
    kv_read,
    kv_write,
    kv_list,
    kv_metadata_read,
    kv_cas_failed,
    kv_big_write,
    kv_big_list,
    kv_huge_list,
    kv_in_namespace,
    ui_mounts_preflight,
    token_lookup_self,
    token_renew_self,
    login_userpass_ok,
    login_approle_ok,
    acl_denied,
    bad_token,
    sys_read_unprivileged,
    // §8(a) privileged sys/ access, by path family
    priv_policies,
    priv_audit,
    priv_generate_root,
    priv_rotate,
    priv_mounts,
    priv_auth,
    priv_raw,
    priv_by_root_token,
    priv_acl_denied,
    priv_in_namespace,
    // §8(b) root token created (response.auth.policies contains "root")
    root_created_token_create,
    root_created_create_orphan,
    root_created_inherited,
    // §8(d) root token used (auth.policies contains "root"), injected on its own
    root_use_kv_read,
    root_use_sys_read,
    root_use_lookup_self,
    // §8(c) failed logins, by shape
    failed_userpass_wrong_password,
    failed_userpass_unknown_user,
    failed_approle_bad_secret_id,
    failed_approle_bad_role_id,
    failed_userpass_lockout,
    // naive-grep decoys (not privileged)
    decoy_kv_sys_rotate_notes,
    decoy_kv_generate_root_doc,
    decoy_kv_sys_policies_backup,
    decoy_kv_rekey_runbook,
    decoy_kv_list_sys_raw_exports,
    decoy_ui_mounts_sys_audit,
);

// ---------------------------------------------------------------------------
// Static pools: identities, mounts, HMAC constants
// ---------------------------------------------------------------------------

const ROOT_CLIENT_ID: &str = "0DHqvq2D77kL2/JTPSZkTMJbkFVmUu0TzMi0jiXcFy8=";
const PD_MULTI: &[u8] = br#""1 error occurred:\n\t* permission denied\n\n""#;
const INVALID_REQ_MULTI: &[u8] = br#""1 error occurred:\n\t* invalid request\n\n""#;

const SERVICES: &[&str] = &[
    "billing",
    "payments",
    "checkout",
    "inventory",
    "search",
    "auth-gw",
    "notifications",
    "reporting",
    "catalog",
    "shipping",
    "ledger",
    "fraud",
    "pricing",
    "profile",
    "orders",
    "web",
    "mobile-api",
    "etl",
    "ml-features",
    "analytics",
    "gateway",
    "cart",
    "email",
    "media",
];
const SECRET_NAMES: &[&str] = &[
    "db",
    "redis",
    "stripe",
    "smtp",
    "tls",
    "oauth",
    "s3",
    "kafka",
    "config",
    "feature-flags",
    "postgres/primary",
    "postgres/replica",
    "rabbitmq",
    "sentry",
    "datadog",
    "jwt-signing",
    "github-app",
    "slack-webhook",
    "ldap-bind",
    "elasticsearch",
];
const KEY_NAMES: &[&str] = &[
    "username",
    "password",
    "api_key",
    "url",
    "host",
    "port",
    "token",
    "client_id",
    "client_secret",
    "private_key",
    "certificate",
    "webhook_url",
    "dsn",
    "region",
    "bucket",
    "access_key_id",
    "secret_access_key",
    "signing_key",
    "endpoint",
    "database",
];
/// Key names are never HMACed, so JSON escapes in them survive (Go HTML-escapes `<>&`).
const ESCAPED_KEY_NAMES: &[&str] = &[
    r"tmpl\u003cprod\u003e",
    r"ratio_a\u0026b",
    r#"note \"legacy\""#,
    r"win_path\\share",
    r"html\u003cb\u003e_banner",
    r"query?a=1\u0026b=2",
];
const FIRST: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "yolanda",
];
const LAST: &[&str] = &[
    "smith", "jones", "garcia", "kim", "nguyen", "patel", "mueller", "rossi",
];
const UNKNOWN_USERS: &[&str] = &[
    "admin",
    "test",
    "root",
    "guest",
    "jdoe",
    "alcie",
    "bob.smtih",
    "oracle",
    "ubuntu",
    "svc-ci",
];
const POLICY_NAMES: &[&str] = &[
    "app-billing",
    "ops",
    "admin",
    "ci-deploy",
    "readonly",
    "breakglass",
    "team-a-dev",
];
const AUDIT_NAMES: &[&str] = &["file2", "socket-siem", "syslog", "http-collector"];
const MOUNT_NAMES: &[&str] = &[
    "kv-legacy",
    "pki_int",
    "transit",
    "database",
    "team-x-kv",
    "ssh",
];
const AUTH_NAMES: &[&str] = &["oidc", "ldap", "kubernetes", "github", "approle2", "cert"];

struct Mount {
    /// Request-side fields, without surrounding commas.
    req: Vec<u8>,
    /// Response-side fields (`mount_running_plugin_version` quirk).
    resp: Vec<u8>,
}

impl Mount {
    fn new(point: &str, typ: &str, accessor: &str, class: &str) -> Self {
        let req = format!(
            r#""mount_point":"{point}","mount_type":"{typ}","mount_accessor":"{accessor}","mount_running_version":"v2.7.2+builtin.bao","mount_class":"{class}""#
        );
        let resp = format!(
            r#""mount_point":"{point}","mount_type":"{typ}","mount_accessor":"{accessor}","mount_running_plugin_version":"v2.7.2+builtin.bao","mount_class":"{class}""#
        );
        Mount {
            req: req.into_bytes(),
            resp: resp.into_bytes(),
        }
    }
}

struct Ident {
    /// Caller `auth` object (policy_results allowed:true).
    auth: Vec<u8>,
    /// Same caller denied by ACL (policy_results allowed:false).
    auth_denied: Vec<u8>,
    /// `"client_token":…,"client_token_accessor":…` for the request object.
    tok: Vec<u8>,
    /// `request.client_id` value (entity id, or the constant for root tokens).
    client_id: Vec<u8>,
    /// Token object fields after the token/accessor, for login responses.
    token_tail: Vec<u8>,
    /// `request.remote_address`.
    remote: Vec<u8>,
    root: bool,
    username: String,
}

struct Pools {
    apps: Vec<Ident>,
    users: Vec<Ident>,
    admins: Vec<Ident>,
    /// Root-policy tokens: a generated root (display_name "root") and created ones.
    roots: Vec<Ident>,
    kv: Mount,
    kv_ns: Mount,
    sys: Mount,
    sys_ns: Mount,
    token: Mount,
    userpass: Mount,
    approle: Mount,
    ns_root: Vec<u8>,
    ns_team: Vec<u8>,
    h_empty: Vec<u8>,
    h_zero_ttl: Vec<u8>,
    h_invalid_userpass: Vec<u8>,
    h_invalid_role: Vec<u8>,
    h_permission_denied: Vec<u8>,
    h_pd_multi: Vec<u8>,
    h_cas: Vec<u8>,
    h_root: Vec<u8>,
    h_service: Vec<u8>,
    big_keys: Vec<Vec<u8>>,
}

fn build_pools(rng: &mut Rng, base_ns: u64) -> Pools {
    let acc = |rng: &mut Rng, prefix: &str| format!("{prefix}_{:08x}", rng.next() as u32);
    let kv_acc = acc(rng, "kv");
    let kv = Mount::new("secret/", "kv", &kv_acc, "secret");
    let kv_ns = Mount::new("team-a/secret/", "kv", &acc(rng, "kv"), "secret");
    let sys_acc = acc(rng, "system");
    let sys = Mount::new("sys/", "system", &sys_acc, "secret");
    let sys_ns = Mount::new("team-a/sys/", "system", &acc(rng, "system"), "secret");
    let token = Mount::new("auth/token/", "token", &acc(rng, "auth_token"), "auth");
    let userpass = Mount::new(
        "auth/userpass/",
        "userpass",
        &acc(rng, "auth_userpass"),
        "auth",
    );
    let approle = Mount::new(
        "auth/approle/",
        "approle",
        &acc(rng, "auth_approle"),
        "auth",
    );
    let ns_id: String = (0..6)
        .map(|_| (b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.below(36) as usize]) as char)
        .collect();

    let mk_ident = |rng: &mut Rng,
                    display: &str,
                    policies: &[&str],
                    metadata: Option<(&str, &str)>,
                    root: bool,
                    ttl: Option<u64>,
                    remote: String,
                    username: &str| {
        let ct = hmac_string(rng);
        let ac = hmac_string(rng);
        let pol = policies
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(",");
        let granting = policies
            .iter()
            .filter(|p| **p != "default")
            .map(|p| format!(r#"{{"name":"{p}","namespace_id":"root","type":"acl"}}"#))
            .collect::<Vec<_>>()
            .join(",");
        let entity = if root { None } else { Some(uuid_string(rng)) };
        let meta = metadata
            .map(|(k, v)| format!(r#","metadata":{{"{k}":"{v}"}}"#))
            .unwrap_or_default();
        let ent = entity
            .as_ref()
            .map(|e| format!(r#","entity_id":"{e}""#))
            .unwrap_or_default();
        let ttl_s = ttl
            .map(|t| format!(r#","token_ttl":{t}"#))
            .unwrap_or_default();
        let issue = time_string(base_ns - rng.range(60, 20 * 86_400) * 1_000_000_000, false);
        let head = format!(
            r#"{{"client_token":{ct},"accessor":{ac},"display_name":"{display}","policies":[{pol}],"token_policies":[{pol}]"#
        );
        let auth = format!(
            r#"{head},"policy_results":{{"allowed":true,"granting_policies":[{granting}]}}{meta}{ent},"token_type":"service"{ttl_s},"token_issue_time":"{issue}"}}"#
        );
        let auth_denied = format!(
            r#"{head},"policy_results":{{"allowed":false}}{meta}{ent},"token_type":"service"{ttl_s},"token_issue_time":"{issue}"}}"#
        );
        let token_tail = format!(
            r#","display_name":"{display}","policies":[{pol}],"token_policies":[{pol}]{meta}{ent},"token_type":"service"{ttl_s}}}"#
        );
        let tok = format!(r#""client_token":{ct},"client_token_accessor":{ac}"#);
        let client_id = entity.unwrap_or_else(|| ROOT_CLIENT_ID.to_string());
        Ident {
            auth: auth.into_bytes(),
            auth_denied: auth_denied.into_bytes(),
            tok: tok.into_bytes(),
            client_id: client_id.into_bytes(),
            token_tail: token_tail.into_bytes(),
            remote: remote.into_bytes(),
            root,
            username: username.to_string(),
        }
    };

    let mut apps = Vec::new();
    for i in 0..240 {
        let svc = SERVICES[i % SERVICES.len()];
        let pol = format!("app-{svc}");
        let remote = format!(
            "10.{}.{}.{}",
            20 + (i % SERVICES.len()),
            rng.below(16),
            rng.range(2, 250)
        );
        let ttl = *rng.pick(&[1200u64, 3600, 14400]);
        apps.push(mk_ident(
            rng,
            "approle",
            &["default", &pol],
            Some(("role_name", svc)),
            false,
            Some(ttl),
            remote,
            svc,
        ));
    }
    let mut users = Vec::new();
    for i in 0..80 {
        let u = format!(
            "{}.{}",
            FIRST[i % FIRST.len()],
            LAST[(i / FIRST.len() + i) % LAST.len()]
        );
        let pol = if i % 3 == 0 { "ops" } else { "dev" };
        let remote = format!("172.16.{}.{}", rng.below(8), rng.range(2, 250));
        users.push(mk_ident(
            rng,
            &format!("userpass-{u}"),
            &["default", pol],
            Some(("username", &u)),
            false,
            Some(2_764_800),
            remote,
            &u,
        ));
    }
    let mut admins = Vec::new();
    for name in ["sre-alice", "sre-victor", "sre-grace", "sec-trent"] {
        let remote = format!("10.0.5.{}", rng.range(10, 40));
        admins.push(mk_ident(
            rng,
            &format!("userpass-{name}"),
            &["admin", "default"],
            Some(("username", name)),
            false,
            Some(28_800),
            remote,
            name,
        ));
    }
    let mut roots = Vec::new();
    for display in ["root", "token", "token-breakglass"] {
        let remote = format!("10.0.5.{}", rng.range(2, 9));
        roots.push(mk_ident(
            rng,
            display,
            &["root"],
            None,
            true,
            None,
            remote,
            display,
        ));
    }

    let mut big_keys = Vec::new();
    for i in 0..300 {
        big_keys.push(format!("\"KEY_{i:03}\":").into_bytes());
    }

    Pools {
        apps,
        users,
        admins,
        roots,
        kv,
        kv_ns,
        sys,
        sys_ns,
        token,
        userpass,
        approle,
        ns_root: br#"{"id":"root"}"#.to_vec(),
        ns_team: format!(r#"{{"id":"{ns_id}","path":"team-a/"}}"#).into_bytes(),
        h_empty: hmac_string(rng).into_bytes(),
        h_zero_ttl: hmac_string(rng).into_bytes(),
        h_invalid_userpass: hmac_string(rng).into_bytes(),
        h_invalid_role: hmac_string(rng).into_bytes(),
        h_permission_denied: hmac_string(rng).into_bytes(),
        h_pd_multi: hmac_string(rng).into_bytes(),
        h_cas: hmac_string(rng).into_bytes(),
        h_root: hmac_string(rng).into_bytes(),
        h_service: hmac_string(rng).into_bytes(),
        big_keys,
    }
}

// ---------------------------------------------------------------------------
// The generator
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Profile {
    Realistic,
    AllCandidates,
    Flood,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::Realistic => "realistic",
            Profile::AllCandidates => "all-candidates",
            Profile::Flood => "flood",
        }
    }
}

/// The flood's closing brute force: this many failures, one a second, from this address.
const FLOOD_BURST: u64 = 20;
const FLOOD_BURST_ADDRESS: &str = "203.0.113.7";
const FLOOD_BURST_USER: &str = "alice.smith";
/// Time between flood lines: 10 million lines span 100 s, inside every built-in window.
const FLOOD_STEP_NS: u64 = 10_000;

const FLUSH_AT: usize = 4 << 20;
/// Share of responses written after the next request (concurrent requests interleave).
const INTERLEAVE_P: f64 = 0.08;

struct Gen<W: Write> {
    rng: Rng,
    w: W,
    out: Vec<u8>,
    /// request object of the current pair (`"request":{…}`)
    r: Vec<u8>,
    /// response object of the current pair (`"response":{…}`), may be empty
    rs: Vec<u8>,
    rs_empty: bool,
    /// body of the response line (everything after `"type":"response"`)
    b: Vec<u8>,
    /// deferred response body
    pending: Vec<u8>,
    /// scratch: an auth object built on the fly (new tokens)
    t: Vec<u8>,
    flushed: u64,
    clock_ns: u64,
    path_start: usize,
    grep_hit: bool,
    esc_req_data: bool,
    esc_resp_data: bool,
    // stats
    counts: [u64; NK],
    lines: u64,
    events: u64,
    root_used_events: u64,
    root_used_lines: u64,
    grep_c_lines: u64,
    escape_lines: u64,
    interleaved: u64,
    failed_login_events: u64,
    lines_over_16k: u64,
    lines_over_512k: u64,
    max_line: u64,
    /// 32-byte buckets up to 8 KiB, for the median
    hist: Vec<u64>,
}

/// Does `path` match `^sys/(generate-root|rekey|replication|audit|rotate|polic)`
/// (the grep/jq patterns in benches/compare.sh)?
fn grep_c_match(path: &[u8]) -> bool {
    let Some(rest) = path.strip_prefix(b"sys/") else {
        return false;
    };
    [
        &b"generate-root"[..],
        b"rekey",
        b"replication",
        b"audit",
        b"rotate",
        b"polic",
    ]
    .iter()
    .any(|p| rest.starts_with(p))
}

impl<W: Write> Gen<W> {
    fn new(seed: u64, w: W, base_ns: u64) -> Self {
        Gen {
            rng: Rng::new(seed ^ 0x005E_ED0F_A0D1_7000),
            w,
            out: Vec::with_capacity(FLUSH_AT + (2 << 20)),
            r: Vec::with_capacity(1 << 16),
            rs: Vec::with_capacity(1 << 16),
            rs_empty: true,
            b: Vec::with_capacity(1 << 16),
            pending: Vec::with_capacity(1 << 16),
            t: Vec::with_capacity(1024),
            flushed: 0,
            clock_ns: base_ns,
            path_start: 0,
            grep_hit: false,
            esc_req_data: false,
            esc_resp_data: false,
            counts: [0; NK],
            lines: 0,
            events: 0,
            root_used_events: 0,
            root_used_lines: 0,
            grep_c_lines: 0,
            escape_lines: 0,
            interleaved: 0,
            failed_login_events: 0,
            lines_over_16k: 0,
            lines_over_512k: 0,
            max_line: 0,
            hist: vec![0; 257],
        }
    }

    #[inline]
    fn count(&mut self, k: K) {
        self.counts[k as usize] += 1;
    }

    fn bytes(&self) -> u64 {
        self.flushed + self.out.len() as u64
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.write_all(&self.out)?;
        self.flushed += self.out.len() as u64;
        self.out.clear();
        Ok(())
    }

    // ---- request object ---------------------------------------------------

    /// Starts `"request":{…"path":"`; the caller appends the path then calls `path_end`.
    fn req_open(&mut self, id: Option<&Ident>, op: &str, mount: Option<&Mount>, ns: &[u8]) {
        match id {
            Some(id) => self.req_open_raw(Some(&id.client_id), op, mount, Some(&id.tok), ns),
            None => self.req_open_raw(None, op, mount, None, ns),
        }
    }

    fn req_open_raw(
        &mut self,
        client_id: Option<&[u8]>,
        op: &str,
        mount: Option<&Mount>,
        tok: Option<&[u8]>,
        ns: &[u8],
    ) {
        let r = &mut self.r;
        r.clear();
        self.esc_req_data = false;
        self.esc_resp_data = false;
        r.extend_from_slice(b"\"request\":{\"id\":\"");
        push_uuid(r, &mut self.rng);
        r.push(b'"');
        if let Some(cid) = client_id {
            r.extend_from_slice(b",\"client_id\":\"");
            r.extend_from_slice(cid);
            r.push(b'"');
        }
        r.extend_from_slice(b",\"operation\":\"");
        r.extend_from_slice(op.as_bytes());
        r.push(b'"');
        if let Some(m) = mount {
            r.push(b',');
            r.extend_from_slice(&m.req);
        }
        if let Some(tok) = tok {
            r.push(b',');
            r.extend_from_slice(tok);
        }
        r.extend_from_slice(b",\"namespace\":");
        r.extend_from_slice(ns);
        r.extend_from_slice(b",\"path\":\"");
        self.path_start = r.len();
    }

    fn p(&mut self, s: &str) {
        self.r.extend_from_slice(s.as_bytes());
    }

    fn path_end(&mut self) {
        self.grep_hit = grep_c_match(&self.r[self.path_start..]);
        self.r.push(b'"');
    }

    fn req_close(&mut self, remote: &[u8]) {
        let r = &mut self.r;
        r.extend_from_slice(b",\"remote_address\":\"");
        r.extend_from_slice(remote);
        r.extend_from_slice(b"\",\"remote_port\":");
        push_u64(r, self.rng.range(20_000, 65_000));
        r.push(b'}');
    }

    // ---- response object --------------------------------------------------

    fn resp_open(&mut self, mount: Option<&Mount>) {
        self.rs.clear();
        self.rs.extend_from_slice(b"\"response\":{");
        self.rs_empty = true;
        if let Some(m) = mount {
            self.rs.extend_from_slice(&m.resp);
            self.rs_empty = false;
        }
    }

    /// Response with `response.auth` = the object in `self.t`.
    fn resp_open_auth(&mut self, mount: Option<&Mount>) {
        self.rs.clear();
        self.rs.extend_from_slice(b"\"response\":{\"auth\":");
        self.rs.extend_from_slice(&self.t);
        if let Some(m) = mount {
            self.rs.push(b',');
            self.rs.extend_from_slice(&m.resp);
        }
        self.rs_empty = false;
    }

    fn resp_data_open(&mut self) {
        if !self.rs_empty {
            self.rs.push(b',');
        }
        self.rs.extend_from_slice(b"\"data\":{");
        self.rs_empty = false;
    }

    fn resp_close(&mut self) {
        self.rs.push(b'}');
    }

    // ---- lines ------------------------------------------------------------

    #[inline]
    fn header(&mut self, typ: &[u8]) -> usize {
        self.clock_ns += 1 + self.rng.below(400_000);
        let start = self.out.len();
        self.out.extend_from_slice(b"{\"time\":\"");
        push_time(&mut self.out, self.clock_ns, true);
        self.out.extend_from_slice(b"\",\"type\":\"");
        self.out.extend_from_slice(typ);
        self.out.push(b'"');
        start
    }

    #[inline]
    fn line_done(&mut self, start: usize) {
        let len = (self.out.len() - start) as u64;
        self.lines += 1;
        self.hist[((len / 32) as usize).min(256)] += 1;
        if len > 16 * 1024 {
            self.lines_over_16k += 1;
        }
        if len > 512 * 1024 {
            self.lines_over_512k += 1;
        }
        self.max_line = self.max_line.max(len);
    }

    fn write_response_line(&mut self, body_is_pending: bool) {
        let start = self.header(b"response");
        if body_is_pending {
            self.out.extend_from_slice(&self.pending);
        } else {
            self.out.extend_from_slice(&self.b);
        }
        self.line_done(start);
    }

    /// Writes the pair. `auth_resp` None = same as `auth_req`.
    /// Error values are JSON string literals (with quotes) or empty.
    fn emit(
        &mut self,
        auth_req: &[u8],
        auth_resp: Option<&[u8]>,
        err_req: &[u8],
        err_resp: &[u8],
        root: bool,
    ) {
        self.events += 1;
        // request line
        let start = self.header(b"request");
        self.out.extend_from_slice(b",\"auth\":");
        self.out.extend_from_slice(auth_req);
        self.out.push(b',');
        self.out.extend_from_slice(&self.r);
        if !err_req.is_empty() {
            self.out.extend_from_slice(b",\"error\":");
            self.out.extend_from_slice(err_req);
        }
        self.out.extend_from_slice(b"}\n");
        self.line_done(start);

        // response body
        self.b.clear();
        self.b.extend_from_slice(b",\"auth\":");
        self.b.extend_from_slice(auth_resp.unwrap_or(auth_req));
        self.b.push(b',');
        self.b.extend_from_slice(&self.r);
        if !self.rs.is_empty() {
            self.b.push(b',');
            self.b.extend_from_slice(&self.rs);
        }
        if !err_resp.is_empty() {
            self.b.extend_from_slice(b",\"error\":");
            self.b.extend_from_slice(err_resp);
        }
        self.b.extend_from_slice(b"}\n");

        if !self.pending.is_empty() {
            self.write_response_line(true);
            self.pending.clear();
        }
        if self.rng.chance(INTERLEAVE_P) {
            std::mem::swap(&mut self.b, &mut self.pending);
            self.interleaved += 1;
        } else {
            self.write_response_line(false);
        }

        // bookkeeping
        if self.grep_hit {
            self.grep_c_lines += 2;
        }
        let esc_req = self.esc_req_data || err_req.contains(&b'\\');
        let esc_resp = self.esc_req_data || self.esc_resp_data || err_resp.contains(&b'\\');
        self.escape_lines += esc_req as u64 + esc_resp as u64;
        if root {
            self.root_used_events += 1;
            self.root_used_lines += 2;
        }
    }

    fn finish(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.write_response_line(true);
            self.pending.clear();
        }
        self.flush()?;
        self.w.flush()
    }

    // ---- data helpers -----------------------------------------------------

    /// `{"k":H,…}` with 1..=max keys; sometimes a key name carrying JSON escapes.
    fn kv_map(buf: &mut Vec<u8>, rng: &mut Rng, nkeys: u64, escaped: bool) {
        buf.push(b'{');
        let off = rng.below(KEY_NAMES.len() as u64) as usize;
        for i in 0..nkeys as usize {
            if i > 0 {
                buf.push(b',');
            }
            buf.push(b'"');
            if escaped && i == 0 {
                buf.extend_from_slice(rng.pick(ESCAPED_KEY_NAMES).as_bytes());
            } else {
                buf.extend_from_slice(KEY_NAMES[(off + i) % KEY_NAMES.len()].as_bytes());
                if i >= KEY_NAMES.len() {
                    buf.push(b'_');
                    push_u64(buf, i as u64);
                }
            }
            buf.extend_from_slice(b"\":");
            push_hmac(buf, rng);
        }
        buf.push(b'}');
    }

    fn big_map(buf: &mut Vec<u8>, rng: &mut Rng, p: &Pools) {
        buf.push(b'{');
        for (i, k) in p.big_keys.iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            buf.extend_from_slice(k);
            push_hmac(buf, rng);
        }
        buf.push(b'}');
    }

    fn hmac_list(buf: &mut Vec<u8>, rng: &mut Rng, n: u64) {
        buf.push(b'[');
        for i in 0..n {
            if i > 0 {
                buf.push(b',');
            }
            push_hmac(buf, rng);
        }
        buf.push(b']');
    }

    fn kv_version_meta(&mut self, p: &Pools) {
        let rs = &mut self.rs;
        rs.extend_from_slice(b"\"created_time\":\"");
        push_time(
            rs,
            self.clock_ns - self.rng.range(1, 90 * 86_400_000) * 1_000_000,
            true,
        );
        rs.extend_from_slice(b"\",\"custom_metadata\":null,\"deletion_time\":");
        rs.extend_from_slice(&p.h_empty);
        rs.extend_from_slice(b",\"destroyed\":false,\"version\":");
        push_u64(rs, self.rng.range(1, 40));
    }

    fn pick_caller<'a>(&mut self, p: &'a Pools) -> &'a Ident {
        if self.rng.chance(0.75) {
            self.rng.pick(&p.apps)
        } else {
            self.rng.pick(&p.users)
        }
    }

    fn kv_path(&mut self, id: &Ident) {
        let svc = if id.username.contains('.') {
            *self.rng.pick(SERVICES)
        } else {
            id.username.as_str()
        };
        self.p("secret/data/app/");
        self.p(svc);
        self.r.push(b'/');
        let name = *self.rng.pick(SECRET_NAMES);
        self.p(name);
    }

    fn ns_and_mount<'a>(&mut self, p: &'a Pools) -> (&'a [u8], &'a Mount) {
        if self.rng.chance(0.05) {
            self.count(K::kv_in_namespace);
            (&p.ns_team, &p.kv_ns)
        } else {
            (&p.ns_root, &p.kv)
        }
    }

    // ---- KV events ----------------------------------------------------------

    fn kv_read(&mut self, p: &Pools, id: &Ident, path: Option<&str>) {
        let (ns, m) = self.ns_and_mount(p);
        self.req_open(Some(id), "read", Some(m), ns);
        match path {
            Some(s) => self.p(s),
            None => self.kv_path(id),
        }
        self.path_end();
        self.req_close(&id.remote);
        self.resp_open(Some(m));
        self.resp_data_open();
        self.rs.extend_from_slice(b"\"data\":");
        let esc = self.rng.chance(0.06);
        self.esc_resp_data = esc;
        let n = self.rng.range(2, 9);
        Self::kv_map(&mut self.rs, &mut self.rng, n, esc);
        self.rs.extend_from_slice(b",\"metadata\":{");
        self.kv_version_meta(p);
        self.rs.extend_from_slice(b"}}");
        self.resp_close();
        self.emit(&id.auth, None, b"", b"", id.root);
    }

    fn kv_write(&mut self, p: &Pools, id: &Ident, path: Option<&str>, big: bool) {
        let (ns, m) = self.ns_and_mount(p);
        let op = if self.rng.chance(0.3) {
            "create"
        } else {
            "update"
        };
        self.req_open(Some(id), op, Some(m), ns);
        match path {
            Some(s) => self.p(s),
            None => self.kv_path(id),
        }
        self.path_end();
        self.r.extend_from_slice(b",\"data\":{\"data\":");
        let esc = !big && self.rng.chance(0.06);
        self.esc_req_data = esc;
        if big {
            Self::big_map(&mut self.r, &mut self.rng, p);
        } else {
            let n = self.rng.range(2, 9);
            Self::kv_map(&mut self.r, &mut self.rng, n, esc);
        }
        let cas = self.rng.chance(0.3);
        if cas {
            self.r.extend_from_slice(b",\"options\":{\"cas\":");
            let v = self.rng.range(0, 30);
            push_u64(&mut self.r, v);
            self.r.extend_from_slice(b"}}");
        } else {
            self.r.extend_from_slice(b",\"options\":{}}");
        }
        self.req_close(&id.remote);
        self.resp_open(Some(m));
        // check-and-set mismatch: backend error, HMACed message + multierror at top level
        if cas && !big && self.rng.chance(0.12) {
            self.resp_data_open();
            self.rs.extend_from_slice(b"\"error\":");
            self.rs.extend_from_slice(&p.h_cas);
            self.rs.push(b'}');
            self.resp_close();
            self.count(K::kv_cas_failed);
            self.emit(&id.auth, None, b"", INVALID_REQ_MULTI, id.root);
            return;
        }
        self.resp_data_open();
        self.kv_version_meta(p);
        self.rs.push(b'}');
        self.resp_close();
        self.emit(&id.auth, None, b"", b"", id.root);
    }

    fn kv_list(&mut self, p: &Pools, id: &Ident, path: Option<&str>, nkeys: u64) {
        let (ns, m) = self.ns_and_mount(p);
        self.req_open(Some(id), "list", Some(m), ns);
        match path {
            Some(s) => self.p(s),
            None => {
                self.p("secret/metadata/app/");
                let svc = *self.rng.pick(SERVICES);
                self.p(svc);
                self.p("/");
            }
        }
        self.path_end();
        self.req_close(&id.remote);
        self.resp_open(Some(m));
        self.resp_data_open();
        self.rs.extend_from_slice(b"\"keys\":");
        Self::hmac_list(&mut self.rs, &mut self.rng, nkeys);
        self.rs.push(b'}');
        self.resp_close();
        self.emit(&id.auth, None, b"", b"", id.root);
    }

    fn kv_metadata_read(&mut self, p: &Pools, id: &Ident) {
        let (ns, m) = self.ns_and_mount(p);
        self.req_open(Some(id), "read", Some(m), ns);
        self.p("secret/metadata/app/");
        let svc = *self.rng.pick(SERVICES);
        self.p(svc);
        self.p("/");
        let name = *self.rng.pick(SECRET_NAMES);
        self.p(name);
        self.path_end();
        self.req_close(&id.remote);
        self.resp_open(Some(m));
        self.resp_data_open();
        let versions = self.rng.range(1, 6);
        let rs = &mut self.rs;
        rs.extend_from_slice(b"\"cas_required\":false,\"created_time\":\"");
        push_time(rs, self.clock_ns - 200 * 86_400_000_000_000, true);
        rs.extend_from_slice(b"\",\"current_version\":");
        push_u64(rs, versions);
        rs.extend_from_slice(b",\"custom_metadata\":null,\"delete_version_after\":");
        rs.extend_from_slice(&p.h_zero_ttl);
        rs.extend_from_slice(b",\"max_versions\":0,\"oldest_version\":0,\"updated_time\":\"");
        push_time(rs, self.clock_ns - 86_400_000_000_000, true);
        rs.extend_from_slice(b"\",\"versions\":{");
        for v in 1..=versions {
            if v > 1 {
                rs.push(b',');
            }
            rs.push(b'"');
            push_u64(rs, v);
            rs.extend_from_slice(b"\":{\"created_time\":\"");
            push_time(
                rs,
                self.clock_ns - (200 - v) * 86_400_000_000_000 + v * 7_654_321,
                true,
            );
            rs.extend_from_slice(b"\",\"deletion_time\":");
            rs.extend_from_slice(&p.h_empty);
            rs.extend_from_slice(b",\"destroyed\":false}");
        }
        rs.extend_from_slice(b"}}");
        self.resp_close();
        self.emit(&id.auth, None, b"", b"", id.root);
    }

    /// CLI pre-flight `sys/internal/ui/mounts/<path>` (unprivileged sys/ read).
    fn ui_mounts(&mut self, p: &Pools, id: &Ident, path: Option<&str>) {
        self.req_open(Some(id), "read", Some(&p.sys), &p.ns_root);
        self.p("sys/internal/ui/mounts/");
        match path {
            Some(s) => self.p(s),
            None => {
                self.p("secret/app/");
                let svc = *self.rng.pick(SERVICES);
                self.p(svc);
            }
        }
        self.path_end();
        self.req_close(&id.remote);
        self.resp_open(Some(&p.sys));
        self.resp_data_open();
        let rs = &mut self.rs;
        rs.extend_from_slice(b"\"accessor\":");
        push_hmac(rs, &mut self.rng);
        rs.extend_from_slice(b",\"config\":{\"default_lease_ttl\":0,\"force_no_cache\":false,\"max_lease_ttl\":0},\"description\":");
        rs.extend_from_slice(&p.h_empty);
        rs.extend_from_slice(
            b",\"external_entropy_access\":false,\"local\":false,\"options\":{\"version\":",
        );
        push_hmac(rs, &mut self.rng);
        rs.extend_from_slice(b"},\"path\":");
        push_hmac(rs, &mut self.rng);
        rs.extend_from_slice(b",\"plugin_version\":");
        rs.extend_from_slice(&p.h_empty);
        rs.extend_from_slice(b",\"running_plugin_version\":");
        push_hmac(rs, &mut self.rng);
        rs.extend_from_slice(b",\"running_sha256\":");
        rs.extend_from_slice(&p.h_empty);
        rs.extend_from_slice(b",\"seal_wrap\":false,\"type\":");
        push_hmac(rs, &mut self.rng);
        rs.extend_from_slice(b",\"uuid\":");
        push_hmac(rs, &mut self.rng);
        rs.push(b'}');
        self.resp_close();
        self.emit(&id.auth, None, b"", b"", id.root);
    }

    // ---- token / login events -----------------------------------------------

    fn lookup_self(&mut self, p: &Pools, id: &Ident) {
        self.req_open(Some(id), "read", Some(&p.token), &p.ns_root);
        self.p("auth/token/lookup-self");
        self.path_end();
        self.req_close(&id.remote);
        self.resp_open(Some(&p.token));
        self.resp_data_open();
        let now_s = self.clock_ns / 1_000_000_000;
        let rs = &mut self.rs;
        let rng = &mut self.rng;
        rs.extend_from_slice(b"\"accessor\":");
        push_hmac(rs, rng);
        rs.extend_from_slice(b",\"creation_time\":");
        push_u64(rs, now_s - rng.range(60, 80_000));
        rs.extend_from_slice(b",\"creation_ttl\":2764800,\"display_name\":");
        push_hmac(rs, rng);
        rs.extend_from_slice(b",\"entity_id\":");
        push_hmac(rs, rng);
        rs.extend_from_slice(b",\"expire_time\":\"");
        push_time(
            rs,
            self.clock_ns + rng.range(3600, 2_764_800) * 1_000_000_000,
            true,
        );
        rs.extend_from_slice(b"\",\"explicit_max_ttl\":0,\"id\":");
        push_hmac(rs, rng);
        rs.extend_from_slice(b",\"issue_time\":\"");
        push_time(
            rs,
            self.clock_ns - rng.range(60, 80_000) * 1_000_000_000,
            true,
        );
        rs.extend_from_slice(b"\",\"meta\":");
        if id.root {
            rs.extend_from_slice(b"null");
        } else {
            rs.extend_from_slice(b"{\"username\":");
            push_hmac(rs, rng);
            rs.push(b'}');
        }
        rs.extend_from_slice(b",\"num_uses\":0,\"orphan\":true,\"path\":");
        push_hmac(rs, rng);
        rs.extend_from_slice(b",\"policies\":[");
        if id.root {
            rs.extend_from_slice(&p.h_root);
        } else {
            push_hmac(rs, rng);
            rs.push(b',');
            push_hmac(rs, rng);
        }
        rs.extend_from_slice(b"],\"renewable\":");
        rs.extend_from_slice(if id.root { b"false" } else { b"true" });
        rs.extend_from_slice(b",\"ttl\":");
        push_u64(
            rs,
            if id.root {
                0
            } else {
                rng.range(100, 2_764_800)
            },
        );
        rs.extend_from_slice(b",\"type\":");
        rs.extend_from_slice(&p.h_service);
        rs.push(b'}');
        self.resp_close();
        self.emit(&id.auth, None, b"", b"", id.root);
    }

    /// New token object for `id` into `self.t`.
    fn new_token_obj(&mut self, id: &Ident) {
        self.t.clear();
        self.t.extend_from_slice(b"{\"client_token\":");
        push_hmac(&mut self.t, &mut self.rng);
        self.t.extend_from_slice(b",\"accessor\":");
        push_hmac(&mut self.t, &mut self.rng);
        self.t.extend_from_slice(&id.token_tail);
    }

    fn renew_self(&mut self, p: &Pools, id: &Ident) {
        debug_assert!(
            !id.root,
            "a root renew-self would look like a root creation"
        );
        self.req_open(Some(id), "update", Some(&p.token), &p.ns_root);
        self.p("auth/token/renew-self");
        self.path_end();
        self.r.extend_from_slice(b",\"data\":{\"increment\":");
        push_hmac(&mut self.r, &mut self.rng);
        self.r.push(b'}');
        self.req_close(&id.remote);
        // response.auth is the caller's own token, renewed
        self.t.clear();
        let t_end = id.tok.len();
        // tok = "client_token":H,"client_token_accessor":H  -> rebuild as auth object
        self.t.extend_from_slice(b"{\"client_token\":");
        self.t.extend_from_slice(&id.tok[15..15 + 78]);
        self.t.extend_from_slice(b",\"accessor\":");
        self.t.extend_from_slice(&id.tok[t_end - 78..]);
        self.t.extend_from_slice(&id.token_tail);
        self.resp_open_auth(Some(&p.token));
        self.resp_close();
        self.emit(&id.auth, None, b"", b"", id.root);
    }

    const ANON_AUTH: &'static [u8] =
        br#"{"policy_results":{"allowed":true},"token_type":"default"}"#;
    const DEFAULT_AUTH: &'static [u8] = br#"{"token_type":"default"}"#;

    fn login_request(&mut self, p: &Pools, id: &Ident, userpass: bool, user: &str) {
        let m = if userpass { &p.userpass } else { &p.approle };
        self.req_open(None, "update", Some(m), &p.ns_root);
        if userpass {
            self.p("auth/userpass/login/");
            self.p(user);
            self.path_end();
            self.r.extend_from_slice(b",\"data\":{\"password\":");
            push_hmac(&mut self.r, &mut self.rng);
        } else {
            self.p("auth/approle/login");
            self.path_end();
            self.r.extend_from_slice(b",\"data\":{\"role_id\":");
            push_hmac(&mut self.r, &mut self.rng);
            self.r.extend_from_slice(b",\"secret_id\":");
            push_hmac(&mut self.r, &mut self.rng);
        }
        self.r.push(b'}');
        self.req_close(&id.remote);
    }

    fn login_ok(&mut self, p: &Pools, userpass: bool) {
        let id = if userpass {
            self.rng.pick(&p.users)
        } else {
            self.rng.pick(&p.apps)
        };
        self.login_request(p, id, userpass, &id.username);
        self.new_token_obj(id);
        let m = if userpass { &p.userpass } else { &p.approle };
        self.resp_open_auth(Some(m));
        self.resp_close();
        let t = std::mem::take(&mut self.t);
        self.emit(Self::ANON_AUTH, Some(&t), b"", b"", false);
        self.t = t;
        self.count(if userpass {
            K::login_userpass_ok
        } else {
            K::login_approle_ok
        });
    }

    fn login_failed(&mut self, p: &Pools, kind: K) {
        self.failed_login_events += 1;
        self.count(kind);
        let userpass = matches!(
            kind,
            K::failed_userpass_wrong_password
                | K::failed_userpass_unknown_user
                | K::failed_userpass_lockout
        );
        let id = if userpass {
            self.rng.pick(&p.users)
        } else {
            self.rng.pick(&p.apps)
        };
        let user = if kind == K::failed_userpass_unknown_user {
            *self.rng.pick(UNKNOWN_USERS)
        } else {
            id.username.as_str()
        };
        self.login_request(p, id, userpass, user);
        let m = if userpass { &p.userpass } else { &p.approle };
        self.resp_open(Some(m));
        let (h, auth_resp, err): (&[u8], &[u8], &[u8]) = match kind {
            K::failed_userpass_wrong_password => (
                &p.h_invalid_userpass,
                Self::DEFAULT_AUTH,
                b"\"invalid credentials\"",
            ),
            K::failed_userpass_unknown_user => (&p.h_invalid_userpass, Self::ANON_AUTH, b""),
            K::failed_approle_bad_secret_id => (
                &p.h_invalid_role,
                Self::DEFAULT_AUTH,
                b"\"invalid credentials\"",
            ),
            K::failed_approle_bad_role_id => (&p.h_invalid_role, Self::ANON_AUTH, b""),
            // locked out: mount fields only, plain permission denied
            _ => (b"", Self::DEFAULT_AUTH, b"\"permission denied\""),
        };
        if !h.is_empty() {
            self.resp_data_open();
            self.rs.extend_from_slice(b"\"error\":");
            self.rs.extend_from_slice(h);
            self.rs.push(b'}');
        }
        self.resp_close();
        self.emit(Self::ANON_AUTH, Some(auth_resp), b"", err, false);
    }

    // ---- denials --------------------------------------------------------------

    fn acl_denied_kv(&mut self, p: &Pools) {
        let id = self.pick_caller(p);
        self.req_open(Some(id), "read", Some(&p.kv), &p.ns_root);
        self.p("secret/data/app/");
        let svc = *self.rng.pick(SERVICES);
        self.p(svc);
        self.p("/db");
        self.path_end();
        self.req_close(&id.remote);
        self.resp_open(Some(&p.kv));
        self.resp_data_open();
        self.rs.extend_from_slice(b"\"error\":");
        self.rs.extend_from_slice(&p.h_pd_multi);
        self.rs.push(b'}');
        self.resp_close();
        self.emit(&id.auth_denied, None, PD_MULTI, PD_MULTI, false);
        self.count(K::acl_denied);
    }

    fn bad_token(&mut self, p: &Pools) {
        let id = self.pick_caller(p);
        // A bogus token: request.client_token is the HMAC of the bogus value, no accessor, no policies.
        self.t.clear();
        self.t.extend_from_slice(b"{\"client_token\":");
        let tok_start = self.t.len();
        push_hmac(&mut self.t, &mut self.rng);
        let tok: Vec<u8> = self.t[tok_start..].to_vec();
        self.t.extend_from_slice(b",\"token_type\":\"default\"}");
        let mut rtok = b"\"client_token\":".to_vec();
        rtok.extend_from_slice(&tok);
        self.req_open_raw(None, "read", Some(&p.kv), Some(&rtok), &p.ns_root);
        self.kv_path(id);
        self.path_end();
        self.req_close(&id.remote);
        self.resp_open(Some(&p.kv));
        self.resp_data_open();
        self.rs.extend_from_slice(b"\"error\":");
        self.rs.extend_from_slice(&p.h_permission_denied);
        self.rs.push(b'}');
        self.resp_close();
        let t = std::mem::take(&mut self.t);
        self.emit(&t, None, b"\"permission denied\"", PD_MULTI, false);
        self.t = t;
        self.count(K::bad_token);
    }

    // ---- sys/ -----------------------------------------------------------------

    /// Reads of sys/ endpoints that are not privileged per §8(a) (only writes are),
    /// several of which the grep pattern in compare.sh still matches.
    fn sys_read(&mut self, p: &Pools, id: &Ident, root_use: bool) {
        let which = self.rng.below(7);
        let op = if which == 1 { "list" } else { "read" };
        self.req_open(Some(id), op, Some(&p.sys), &p.ns_root);
        match which {
            0 => {
                self.p("sys/policies/acl/");
                let n = *self.rng.pick(POLICY_NAMES);
                self.p(n);
            }
            1 => self.p("sys/policies/acl/"),
            2 => self.p("sys/audit"),
            3 => self.p("sys/mounts"),
            4 => self.p("sys/auth"),
            5 => self.p("sys/generate-root-token/attempt"),
            _ => self.p("sys/rotate/config"),
        }
        self.path_end();
        self.req_close(&id.remote);
        self.resp_open(Some(&p.sys));
        self.resp_data_open();
        let rs = &mut self.rs;
        let rng = &mut self.rng;
        match which {
            0 => {
                rs.extend_from_slice(b"\"name\":");
                push_hmac(rs, rng);
                rs.extend_from_slice(b",\"policy\":");
                push_hmac(rs, rng);
            }
            1 => {
                rs.extend_from_slice(b"\"keys\":");
                let n = rng.range(4, 12);
                Self::hmac_list(rs, rng, n);
            }
            5 => {
                rs.extend_from_slice(b"\"complete\":false,\"encoded_root_token\":");
                rs.extend_from_slice(&p.h_empty);
                rs.extend_from_slice(b",\"encoded_token\":");
                rs.extend_from_slice(&p.h_empty);
                rs.extend_from_slice(b",\"nonce\":");
                rs.extend_from_slice(&p.h_empty);
                rs.extend_from_slice(b",\"otp_length\":26,\"pgp_fingerprint\":");
                rs.extend_from_slice(&p.h_empty);
                rs.extend_from_slice(b",\"progress\":0,\"required\":1,\"started\":false");
            }
            6 => {
                rs.extend_from_slice(b"\"enabled\":true,\"interval\":");
                rs.extend_from_slice(&p.h_zero_ttl);
                rs.extend_from_slice(b",\"max_operations\":3865470566");
            }
            _ => {
                // sys/audit, sys/mounts, sys/auth: a map of mounts -> HMACed config
                let names: &[&str] = match which {
                    2 => &["file/", "socket-siem/"],
                    3 => &[
                        "cubbyhole/",
                        "identity/",
                        "secret/",
                        "sys/",
                        "pki_int/",
                        "transit/",
                    ],
                    _ => &["approle/", "token/", "userpass/"],
                };
                for (i, n) in names.iter().enumerate() {
                    if i > 0 {
                        rs.push(b',');
                    }
                    rs.push(b'"');
                    rs.extend_from_slice(n.as_bytes());
                    rs.extend_from_slice(b"\":{\"accessor\":");
                    push_hmac(rs, rng);
                    rs.extend_from_slice(b",\"description\":");
                    push_hmac(rs, rng);
                    rs.extend_from_slice(b",\"local\":false,\"options\":null,\"type\":");
                    push_hmac(rs, rng);
                    rs.push(b'}');
                }
            }
        }
        rs.push(b'}');
        self.resp_close();
        self.emit(&id.auth, None, b"", b"", id.root);
        self.count(if root_use {
            K::root_use_sys_read
        } else {
            K::sys_read_unprivileged
        });
    }

    fn privileged(&mut self, p: &Pools) {
        // who: admin (most), root token, or a plain user denied by ACL
        let r = self.rng.below(100);
        let (id, denied) = if r < 10 {
            (self.pick_caller(p), true)
        } else if r < 30 {
            (&p.roots[self.rng.below(2) as usize], false)
        } else {
            (self.rng.pick(&p.admins), false)
        };
        let family = *self.rng.pick(&[
            K::priv_policies,
            K::priv_audit,
            K::priv_generate_root,
            K::priv_rotate,
            K::priv_mounts,
            K::priv_auth,
            K::priv_raw,
        ]);
        let in_ns = matches!(family, K::priv_policies | K::priv_mounts | K::priv_auth)
            && self.rng.chance(0.15);
        let (ns, sysm) = if in_ns {
            (&p.ns_team, &p.sys_ns)
        } else {
            (&p.ns_root, &p.sys)
        };
        let x = self.rng.below(10);
        let op = match family {
            K::priv_raw => {
                if x < 6 {
                    "read"
                } else {
                    "list"
                }
            }
            K::priv_generate_root if x < 2 => "delete",
            K::priv_rotate => "update",
            _ if x < 2 => "delete",
            _ if family == K::priv_policies && x < 5 => "create",
            _ => "update",
        };
        self.req_open(Some(id), op, Some(sysm), ns);
        match family {
            K::priv_policies => {
                self.p(if x == 9 {
                    "sys/policy/"
                } else {
                    "sys/policies/acl/"
                });
                let n = *self.rng.pick(POLICY_NAMES);
                self.p(n);
            }
            K::priv_audit => {
                self.p("sys/audit/");
                let n = *self.rng.pick(AUDIT_NAMES);
                self.p(n);
            }
            K::priv_generate_root => self.p(if x == 9 {
                "sys/generate-root-token/update"
            } else {
                "sys/generate-root-token/attempt"
            }),
            K::priv_rotate => self.p(match x {
                0..=4 => "sys/rotate",
                5..=6 => "sys/rotate/keyring",
                _ => "sys/rotate/root/init",
            }),
            K::priv_mounts => {
                self.p("sys/mounts/");
                let n = *self.rng.pick(MOUNT_NAMES);
                self.p(n);
                if x == 9 {
                    self.p("/tune");
                }
            }
            K::priv_auth => {
                self.p("sys/auth/");
                let n = *self.rng.pick(AUTH_NAMES);
                self.p(n);
                if x == 9 {
                    self.p("/tune");
                }
            }
            _ => {
                if op == "read" {
                    self.p("sys/raw/audit/");
                    let u = uuid_string(&mut self.rng);
                    self.p(&u);
                    self.p("/salt");
                } else {
                    self.p("sys/raw/sys/token/id/");
                }
            }
        }
        self.path_end();
        // request data
        let has_req_data =
            op != "delete" && op != "read" && op != "list" && !(family == K::priv_rotate && x < 7);
        if has_req_data {
            let r = &mut self.r;
            let rng = &mut self.rng;
            r.extend_from_slice(b",\"data\":{");
            match family {
                K::priv_policies => {
                    r.extend_from_slice(b"\"policy\":");
                    push_hmac(r, rng);
                }
                K::priv_audit => {
                    r.extend_from_slice(b"\"description\":");
                    r.extend_from_slice(&p.h_empty);
                    r.extend_from_slice(b",\"local\":false,\"options\":{\"file_path\":");
                    push_hmac(r, rng);
                    r.extend_from_slice(b"},\"type\":");
                    push_hmac(r, rng);
                }
                K::priv_generate_root => {
                    if x == 9 {
                        r.extend_from_slice(b"\"key\":");
                        push_hmac(r, rng);
                        r.extend_from_slice(b",\"nonce\":");
                        push_hmac(r, rng);
                    } else {
                        r.extend_from_slice(b"\"otp\":");
                        r.extend_from_slice(&p.h_empty);
                        r.extend_from_slice(b",\"pgp_key\":");
                        r.extend_from_slice(&p.h_empty);
                    }
                }
                K::priv_rotate => {
                    r.extend_from_slice(
                        b"\"pgp_keys\":null,\"secret_shares\":5,\"secret_threshold\":3",
                    );
                }
                _ => {
                    // mounts / auth enable or tune
                    r.extend_from_slice(b"\"config\":{\"default_lease_ttl\":");
                    r.extend_from_slice(&p.h_zero_ttl);
                    r.extend_from_slice(b",\"force_no_cache\":false,\"max_lease_ttl\":");
                    r.extend_from_slice(&p.h_zero_ttl);
                    r.extend_from_slice(b",\"options\":null},\"description\":");
                    r.extend_from_slice(&p.h_empty);
                    r.extend_from_slice(b",\"external_entropy_access\":false,\"local\":false,\"options\":null,\"seal_wrap\":false,\"type\":");
                    push_hmac(r, rng);
                }
            }
            r.push(b'}');
        }
        self.req_close(&id.remote);
        self.resp_open(Some(sysm));
        let rs_has_data = !denied
            && (family == K::priv_raw
                || family == K::priv_generate_root && op != "delete"
                || family == K::priv_rotate && x >= 7);
        if denied {
            self.resp_data_open();
            self.rs.extend_from_slice(b"\"error\":");
            self.rs.extend_from_slice(&p.h_pd_multi);
            self.rs.push(b'}');
        } else if rs_has_data {
            self.resp_data_open();
            let rs = &mut self.rs;
            let rng = &mut self.rng;
            match family {
                K::priv_raw => {
                    if op == "read" {
                        rs.extend_from_slice(b"\"value\":");
                        push_hmac(rs, rng);
                    } else {
                        rs.extend_from_slice(b"\"keys\":");
                        let n = rng.range(3, 20);
                        Self::hmac_list(rs, rng, n);
                    }
                }
                K::priv_generate_root => {
                    rs.extend_from_slice(b"\"complete\":false,\"nonce\":");
                    push_hmac(rs, rng);
                    rs.extend_from_slice(b",\"otp\":");
                    push_hmac(rs, rng);
                    rs.extend_from_slice(b",\"otp_length\":26,\"pgp_fingerprint\":");
                    rs.extend_from_slice(&p.h_empty);
                    rs.extend_from_slice(b",\"progress\":");
                    rs.extend_from_slice(if x == 9 { b"1" } else { b"0" });
                    rs.extend_from_slice(b",\"required\":3,\"started\":true");
                }
                _ => {
                    rs.extend_from_slice(b"\"complete\":false,\"nonce\":");
                    push_hmac(rs, rng);
                    rs.extend_from_slice(b",\"progress\":0,\"required\":3,\"started\":true");
                }
            }
            rs.push(b'}');
        }
        self.resp_close();
        if denied {
            self.emit(&id.auth_denied, None, PD_MULTI, PD_MULTI, false);
            self.count(K::priv_acl_denied);
        } else {
            self.emit(&id.auth, None, b"", b"", id.root);
        }
        if id.root && !denied {
            self.count(K::priv_by_root_token);
        }
        if in_ns {
            self.count(K::priv_in_namespace);
        }
        self.count(family);
    }

    fn root_created(&mut self, p: &Pools) {
        let id = &p.roots[self.rng.below(2) as usize];
        let kind = *self.rng.pick(&[
            K::root_created_token_create,
            K::root_created_token_create,
            K::root_created_token_create,
            K::root_created_create_orphan,
            K::root_created_inherited,
        ]);
        self.req_open(Some(id), "update", Some(&p.token), &p.ns_root);
        self.p(if kind == K::root_created_create_orphan {
            "auth/token/create-orphan"
        } else {
            "auth/token/create"
        });
        self.path_end();
        let breakglass = self.rng.chance(0.4);
        {
            let r = &mut self.r;
            let rng = &mut self.rng;
            if kind == K::root_created_inherited {
                // no policies: inherits the caller's root; only the ttl is visible
                r.extend_from_slice(b",\"data\":{\"ttl\":");
                push_hmac(r, rng);
                r.push(b'}');
            } else {
                r.extend_from_slice(b",\"data\":{\"display_name\":");
                if breakglass {
                    push_hmac(r, rng);
                } else {
                    r.extend_from_slice(&p.h_empty);
                }
                r.extend_from_slice(b",\"entity_alias\":");
                r.extend_from_slice(&p.h_empty);
                r.extend_from_slice(b",\"explicit_max_ttl\":");
                r.extend_from_slice(&p.h_zero_ttl);
                r.extend_from_slice(b",\"num_uses\":0,\"period\":");
                r.extend_from_slice(&p.h_zero_ttl);
                r.extend_from_slice(b",\"policies\":[");
                r.extend_from_slice(&p.h_root);
                r.extend_from_slice(b"],\"renewable\":true,\"ttl\":");
                r.extend_from_slice(&p.h_zero_ttl);
                r.extend_from_slice(b",\"type\":");
                r.extend_from_slice(&p.h_service);
                r.push(b'}');
            }
        }
        self.req_close(&id.remote);
        self.t.clear();
        self.t.extend_from_slice(b"{\"client_token\":");
        push_hmac(&mut self.t, &mut self.rng);
        self.t.extend_from_slice(b",\"accessor\":");
        push_hmac(&mut self.t, &mut self.rng);
        self.t
            .extend_from_slice(if breakglass && kind != K::root_created_inherited {
                b",\"display_name\":\"token-breakglass\"".as_slice()
            } else {
                b",\"display_name\":\"token\"".as_slice()
            });
        self.t.extend_from_slice(
            b",\"policies\":[\"root\"],\"token_policies\":[\"root\"],\"token_type\":\"service\"}",
        );
        self.resp_open_auth(Some(&p.token));
        self.resp_close();
        self.emit(&id.auth, None, b"", b"", true);
        self.count(kind);
    }

    fn root_use(&mut self, p: &Pools) {
        // mostly the generated root (display_name "root")
        let id = if self.rng.chance(0.7) {
            &p.roots[0]
        } else {
            &p.roots[1]
        };
        match self.rng.below(10) {
            0..=4 => {
                self.kv_read(p, id, None);
                self.count(K::root_use_kv_read);
            }
            5..=7 => self.sys_read(p, id, true),
            _ => {
                self.lookup_self(p, id);
                self.count(K::root_use_lookup_self);
            }
        }
    }

    fn decoy(&mut self, p: &Pools) {
        let id = if self.rng.chance(0.5) {
            self.rng.pick(&p.admins)
        } else {
            self.rng.pick(&p.users)
        };
        match self.rng.below(6) {
            0 => {
                self.kv_read(p, id, Some("secret/data/sys/rotate-notes"));
                self.count(K::decoy_kv_sys_rotate_notes);
            }
            1 => {
                self.kv_write(p, id, Some("secret/data/app/generate-root-doc"), false);
                self.count(K::decoy_kv_generate_root_doc);
            }
            2 => {
                self.kv_read(p, id, Some("secret/data/ops/sys/policies-backup"));
                self.count(K::decoy_kv_sys_policies_backup);
            }
            3 => {
                self.kv_read(p, id, Some("secret/data/runbooks/sys/rekey-procedure"));
                self.count(K::decoy_kv_rekey_runbook);
            }
            4 => {
                let n = self.rng.range(3, 30);
                self.kv_list(p, id, Some("secret/metadata/sys/raw-exports/"), n);
                self.count(K::decoy_kv_list_sys_raw_exports);
            }
            _ => {
                self.ui_mounts(p, id, Some("secret/sys/audit-review"));
                self.count(K::decoy_ui_mounts_sys_audit);
            }
        }
    }

    // ---- profiles -------------------------------------------------------------

    /// KV traffic with the realistic size mix, made by `id` (or a random app/user).
    fn kv_traffic(&mut self, p: &Pools, x: u64, root_id: Option<&Ident>) {
        let id = match root_id {
            Some(r) => r,
            None => self.pick_caller(p),
        };
        // x in 0..10_000 (per-ten-thousand of events)
        match x {
            // 2 % of lines ~27 KB: 300-key writes (two big lines) + 300-key lists (one)
            0..=119 => {
                self.kv_write(p, id, None, true);
                self.count(K::kv_big_write);
            }
            120..=279 => {
                self.kv_list(p, id, None, 300);
                self.count(K::kv_big_list);
            }
            // 0.1 % of lines ~1 MB: huge list responses
            280..=299 => {
                self.kv_list(p, id, None, 12_900);
                self.count(K::kv_huge_list);
            }
            300..=1899 => {
                self.kv_write(p, id, None, false);
                self.count(K::kv_write);
            }
            1900..=2399 => {
                let n = self.rng.range(2, 40);
                self.kv_list(p, id, None, n);
                self.count(K::kv_list);
            }
            2400..=2799 => {
                self.kv_metadata_read(p, id);
                self.count(K::kv_metadata_read);
            }
            _ => {
                self.kv_read(p, id, None);
                self.count(K::kv_read);
            }
        }
    }

    /// A failed login of a random shape, in the realistic profile's proportions.
    fn login_failed_any(&mut self, p: &Pools) {
        let kind = match self.rng.below(660) {
            0..=239 => K::failed_userpass_wrong_password,
            240..=359 => K::failed_userpass_unknown_user,
            360..=479 => K::failed_approle_bad_secret_id,
            480..=599 => K::failed_approle_bad_role_id,
            _ => K::failed_userpass_lockout,
        };
        self.login_failed(p, kind);
    }

    fn realistic_event(&mut self, p: &Pools, failed_login_share: f64) {
        // An incident: this share of the pairs are failed logins (off by default, so the
        // default corpus keeps its bytes).
        if failed_login_share > 0.0 && self.rng.chance(failed_login_share) {
            self.login_failed_any(p);
            return;
        }
        // per-100k of events
        let x = self.rng.below(100_000);
        match x {
            0..=199 => self.privileged(p),     // 0.2 %
            200..=219 => self.root_created(p), // 0.02 %
            220..=269 => self.root_use(p),     // 0.05 %
            270..=419 => self.decoy(p),        // 0.15 %
            420..=719 => {
                let id = self.rng.pick(&p.admins);
                self.sys_read(p, id, false) // 0.3 %
            }
            720..=1119 => self.acl_denied_kv(p), // 0.4 %
            1120..=1219 => self.bad_token(p),    // 0.1 %
            1220..=1459 => self.login_failed(p, K::failed_userpass_wrong_password),
            1460..=1579 => self.login_failed(p, K::failed_userpass_unknown_user),
            1580..=1699 => self.login_failed(p, K::failed_approle_bad_secret_id),
            1700..=1819 => self.login_failed(p, K::failed_approle_bad_role_id),
            1820..=1879 => self.login_failed(p, K::failed_userpass_lockout),
            1880..=6879 => self.login_ok(p, true),   // 5 %
            6880..=13879 => self.login_ok(p, false), // 7 %
            13880..=21879 => {
                let id = self.pick_caller(p);
                self.lookup_self(p, id);
                self.count(K::token_lookup_self);
            }
            21880..=27879 => {
                let id = self.pick_caller(p);
                self.renew_self(p, id);
                self.count(K::token_renew_self);
            }
            27880..=33879 => {
                let id = self.pick_caller(p);
                self.ui_mounts(p, id, None);
                self.count(K::ui_mounts_preflight);
            }
            _ => {
                // the remaining ~66 % is KV traffic; scale the KV mix so the size
                // targets hold over all events
                let y = self.rng.below(6_612);
                self.kv_traffic(p, y, None);
            }
        }
    }

    /// A failed userpass login (wrong password), response line only, from `addr` for `user`,
    /// `step_ns` after the previous line.
    fn flood_failure(&mut self, p: &Pools, addr: &[u8], user: &str, step_ns: u64) {
        self.failed_login_events += 1;
        self.count(K::failed_userpass_wrong_password);
        self.events += 1;
        self.req_open(None, "update", Some(&p.userpass), &p.ns_root);
        self.p("auth/userpass/login/");
        self.p(user);
        self.path_end();
        self.r.extend_from_slice(b",\"data\":{\"password\":");
        push_hmac(&mut self.r, &mut self.rng);
        self.r.push(b'}');
        self.req_close(addr);
        self.resp_open(Some(&p.userpass));
        self.resp_data_open();
        self.rs.extend_from_slice(b"\"error\":");
        self.rs.extend_from_slice(&p.h_invalid_userpass);
        self.rs.push(b'}');
        self.resp_close();
        self.clock_ns += step_ns;
        let start = self.out.len();
        self.out.extend_from_slice(b"{\"time\":\"");
        push_time(&mut self.out, self.clock_ns, true);
        self.out.extend_from_slice(b"\",\"type\":\"response\"");
        self.out.extend_from_slice(b",\"auth\":");
        self.out.extend_from_slice(Self::DEFAULT_AUTH);
        self.out.push(b',');
        self.out.extend_from_slice(&self.r);
        self.out.push(b',');
        self.out.extend_from_slice(&self.rs);
        self.out
            .extend_from_slice(b",\"error\":\"invalid credentials\"}\n");
        self.line_done(start);
    }

    /// Flood entry `n`: its own address (a bijection of `n` over 10.0.0.0/8, then
    /// 2001:db8::/64) and its own user.
    fn flood_event(&mut self, p: &Pools, n: u64) {
        let mut addr = Vec::with_capacity(40);
        if n < 1 << 24 {
            let x = (n.wrapping_mul(0x9E37_79B1) ^ 0x5A_5A5A) & 0xFF_FFFF;
            addr.extend_from_slice(b"10.");
            push_u64(&mut addr, x >> 16);
            addr.push(b'.');
            push_u64(&mut addr, (x >> 8) & 255);
            addr.push(b'.');
            push_u64(&mut addr, x & 255);
        } else {
            addr.extend_from_slice(format!("2001:db8::{:x}:{:x}", n >> 16, n & 0xFFFF).as_bytes());
        }
        let user = if n < 1 << 24 {
            format!("user-{:06x}", n.wrapping_mul(0xC2B2_AE35) & 0xFF_FFFF)
        } else {
            format!("user-{n:x}")
        };
        self.flood_failure(p, &addr, &user, FLOOD_STEP_NS);
    }

    fn flood_burst(&mut self, p: &Pools) {
        for _ in 0..FLOOD_BURST {
            self.flood_failure(
                p,
                FLOOD_BURST_ADDRESS.as_bytes(),
                FLOOD_BURST_USER,
                1_000_000_000,
            );
        }
    }

    fn candidate_event(&mut self, p: &Pools) {
        let y = self.rng.below(10_000) * 6_612 / 10_000;
        let id = &p.roots[self.rng.below(p.roots.len() as u64) as usize];
        self.kv_traffic(p, y, Some(id));
    }
}

// ---------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let idx = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(idx);
    let n: f64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "bad size unit {u:?} (use B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    Ok((n * mult) as u64)
}

struct Args {
    seed: u64,
    /// Stop at this many bytes (default 1 GiB, unless `--entries` is given).
    size: u64,
    /// Stop at this many lines.
    entries: Option<u64>,
    profile: Profile,
    /// Share (0..1) of realistic pairs that are failed logins, on top of the usual ones.
    failed_login_share: f64,
    out: String,
    summary_json: Option<String>,
}

const USAGE: &str = "usage: gen_corpus [--seed N] [--size 1GiB] [--entries N] [--profile realistic|all-candidates|flood] [--failed-login-share PERCENT] --out FILE|- [--summary-json FILE]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        seed: 42,
        size: 1 << 30,
        entries: None,
        profile: Profile::Realistic,
        failed_login_share: 0.0,
        out: String::new(),
        summary_json: None,
    };
    let mut size_given = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut val = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or(format!("{key} needs a value"))
        };
        match key.as_str() {
            "--seed" => a.seed = val()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--size" => {
                a.size = parse_size(&val()?)?;
                size_given = true;
            }
            "--entries" => a.entries = Some(val()?.parse().map_err(|e| format!("--entries: {e}"))?),
            "--failed-login-share" => {
                let v = val()?;
                let pct: f64 = v
                    .trim_end_matches('%')
                    .parse()
                    .map_err(|e| format!("--failed-login-share: {e}"))?;
                if !(0.0..=100.0).contains(&pct) {
                    return Err("--failed-login-share: a percentage, 0 to 100".into());
                }
                a.failed_login_share = pct / 100.0;
            }
            "--profile" => {
                a.profile = match val()?.as_str() {
                    "realistic" => Profile::Realistic,
                    "all-candidates" => Profile::AllCandidates,
                    "flood" => Profile::Flood,
                    other => return Err(format!("unknown profile {other:?}")),
                }
            }
            "--out" | "-o" => a.out = val()?,
            "--summary-json" => a.summary_json = Some(val()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if a.out.is_empty() {
        return Err(format!("--out is required\n{USAGE}"));
    }
    if a.entries.is_some() && !size_given {
        a.size = u64::MAX;
    }
    if a.failed_login_share > 0.0 && a.profile != Profile::Realistic {
        return Err("--failed-login-share applies to the realistic profile".into());
    }
    Ok(a)
}

fn summary<W: Write>(g: &Gen<W>, args: &Args, secs: f64) -> String {
    let c = |k: K| g.counts[k as usize];
    let sum = |ks: &[K]| ks.iter().map(|k| c(*k)).sum::<u64>();
    let priv_fams = [
        K::priv_policies,
        K::priv_audit,
        K::priv_generate_root,
        K::priv_rotate,
        K::priv_mounts,
        K::priv_auth,
        K::priv_raw,
    ];
    let root_created = sum(&[
        K::root_created_token_create,
        K::root_created_create_orphan,
        K::root_created_inherited,
    ]);
    let decoys = KNAMES
        .iter()
        .enumerate()
        .filter(|(_, n)| n.starts_with("decoy_"))
        .map(|(i, _)| g.counts[i])
        .sum::<u64>();
    let privileged = sum(&priv_fams);
    let median = {
        let half = g.lines.div_ceil(2);
        let mut acc = 0;
        let mut m = 0;
        for (i, h) in g.hist.iter().enumerate() {
            acc += h;
            if acc >= half {
                m = i * 32 + 16;
                break;
            }
        }
        m
    };
    let bytes = g.flushed;
    let profile = args.profile.name();

    let mut s = String::new();
    let _ = writeln!(
        s,
        "gen_corpus: profile={profile} seed={} out={}",
        args.seed, args.out
    );
    let _ = writeln!(
        s,
        "  entries (lines): {}   request/response pairs: {}   bytes: {} ({:.1} MiB)",
        g.lines,
        g.events,
        bytes,
        bytes as f64 / 1048576.0
    );
    let _ = writeln!(
        s,
        "  line size: median ~{median} B, >16 KiB: {}, >512 KiB: {}, max: {} B; responses interleaved: {}",
        g.lines_over_16k, g.lines_over_512k, g.max_line, g.interleaved
    );
    let _ = writeln!(
        s,
        "  generated in {secs:.2} s = {:.0} MB/s",
        bytes as f64 / 1e6 / secs.max(1e-9)
    );
    let _ = writeln!(
        s,
        "  expected detections (events = pairs; each pair is 2 lines):"
    );
    let _ = writeln!(
        s,
        "    privileged sys/ events:   {privileged:>9}  (lines {})",
        privileged * 2
    );
    for k in priv_fams {
        let _ = writeln!(s, "      {:<28}{:>9}", &KNAMES[k as usize][5..], c(k));
    }
    let _ = writeln!(
        s,
        "      (of which by root token {}, ACL-denied attempts {}, in namespace team-a/ {})",
        c(K::priv_by_root_token),
        c(K::priv_acl_denied),
        c(K::priv_in_namespace)
    );
    let _ = writeln!(s, "    root tokens created:      {root_created:>9}  (response line has response.auth.policies [\"root\"])");
    for k in [
        K::root_created_token_create,
        K::root_created_create_orphan,
        K::root_created_inherited,
    ] {
        let _ = writeln!(s, "      {:<28}{:>9}", &KNAMES[k as usize][13..], c(k));
    }
    let _ = writeln!(
        s,
        "    root token used (events): {:>9}  (lines {}; all events whose caller auth.policies has \"root\")",
        g.root_used_events, g.root_used_lines
    );
    let _ = writeln!(
        s,
        "      injected uses: kv_read {}, sys_read {}, lookup_self {}; plus privileged-by-root and root creations",
        c(K::root_use_kv_read),
        c(K::root_use_sys_read),
        c(K::root_use_lookup_self)
    );
    let _ = writeln!(
        s,
        "    failed logins:            {:>9}  (response line only)",
        g.failed_login_events
    );
    for k in [
        K::failed_userpass_wrong_password,
        K::failed_userpass_unknown_user,
        K::failed_approle_bad_secret_id,
        K::failed_approle_bad_role_id,
        K::failed_userpass_lockout,
    ] {
        let _ = writeln!(s, "      {:<28}{:>9}", &KNAMES[k as usize][7..], c(k));
    }
    let _ = writeln!(s, "    decoys (not privileged):  {decoys:>9}");
    let _ = writeln!(
        s,
        "    ACL-denied (valid token): {:>9}  (incl. {} denied privileged attempts); bad/missing token: {}",
        c(K::acl_denied) + c(K::priv_acl_denied),
        c(K::priv_acl_denied),
        c(K::bad_token)
    );
    let _ = writeln!(s, "  other kinds:");
    for (i, n) in KNAMES.iter().enumerate() {
        if n.starts_with("priv_") || n.starts_with("root_") || n.starts_with("failed_") {
            continue;
        }
        if g.counts[i] > 0 {
            let note = match *n {
                "kv_cas_failed" => "  (subset of the KV writes)",
                "kv_in_namespace" => "  (KV requests of any kind in namespace team-a/)",
                _ => "",
            };
            let _ = writeln!(s, "    {n:<30}{:>9}{note}", g.counts[i]);
        }
    }
    let _ = writeln!(
        s,
        "  lines matching compare.sh grep/jq pattern ^sys/(generate-root|rekey|replication|audit|rotate|polic): {}",
        g.grep_c_lines
    );
    let _ = writeln!(
        s,
        "  lines with JSON escapes: {} ({:.2} %)",
        g.escape_lines,
        100.0 * g.escape_lines as f64 / g.lines.max(1) as f64
    );
    if args.profile == Profile::Flood {
        let _ = writeln!(
            s,
            "  flood: {} failed logins, each from its own address and for its own user, {} µs apart; then {FLOOD_BURST} failures from {FLOOD_BURST_ADDRESS} for {FLOOD_BURST_USER}, one a second: expect brute_force.address and brute_force.user for it, and no other window finding",
            g.lines - FLOOD_BURST,
            FLOOD_STEP_NS / 1000
        );
    }
    if args.failed_login_share > 0.0 {
        let _ = writeln!(
            s,
            "  --failed-login-share {}: that share of the pairs are extra failed logins",
            args.failed_login_share * 100.0
        );
    }
    s
}

fn summary_json<W: Write>(g: &Gen<W>, args: &Args, secs: f64) -> String {
    let c = |k: K| g.counts[k as usize];
    let mut j = String::from("{");
    let profile = args.profile.name();
    let _ = write!(
        j,
        "\"profile\":\"{profile}\",\"seed\":{},\"size_requested\":{},\"bytes\":{},\"entries\":{},\"pairs\":{},\"gen_seconds\":{secs:.3}",
        args.seed, args.size, g.flushed, g.lines, g.events
    );
    let privileged: u64 = KNAMES
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            n.starts_with("priv_")
                && !["priv_by_root_token", "priv_acl_denied", "priv_in_namespace"].contains(n)
        })
        .map(|(i, _)| g.counts[i])
        .sum();
    let root_created = c(K::root_created_token_create)
        + c(K::root_created_create_orphan)
        + c(K::root_created_inherited);
    let decoys: u64 = KNAMES
        .iter()
        .enumerate()
        .filter(|(_, n)| n.starts_with("decoy_"))
        .map(|(i, _)| g.counts[i])
        .sum();
    let acl_denied = c(K::acl_denied) + c(K::priv_acl_denied);
    let _ = write!(
        j,
        ",\"privileged_lines\":{},\"acl_denied_events\":{acl_denied},\"bad_token_events\":{}",
        privileged * 2,
        c(K::bad_token)
    );
    let _ = write!(
        j,
        ",\"privileged_events\":{privileged},\"root_created_events\":{root_created},\"root_used_events\":{},\"root_used_lines\":{},\"failed_login_events\":{},\"decoy_events\":{decoys},\"grep_pattern_lines\":{},\"escape_lines\":{},\"interleaved_responses\":{},\"lines_over_16k\":{},\"lines_over_512k\":{}",
        g.root_used_events, g.root_used_lines, g.failed_login_events, g.grep_c_lines, g.escape_lines, g.interleaved, g.lines_over_16k, g.lines_over_512k
    );
    if args.profile == Profile::Flood {
        let _ = write!(
            j,
            ",\"flood_sprayed\":{},\"flood_burst\":{FLOOD_BURST},\"flood_burst_address\":\"{FLOOD_BURST_ADDRESS}\"",
            g.lines - FLOOD_BURST
        );
    }
    let _ = write!(j, ",\"failed_login_share\":{}", args.failed_login_share);
    j.push_str(",\"kinds\":{");
    for (i, n) in KNAMES.iter().enumerate() {
        if i > 0 {
            j.push(',');
        }
        let _ = write!(j, "\"{n}\":{}", g.counts[i]);
    }
    j.push_str("}}\n");
    j
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gen_corpus: {e}");
            return ExitCode::from(2);
        }
    };
    let res = if args.out == "-" {
        let stdout = io::stdout();
        run_with(&args, stdout.lock())
    } else {
        match File::create(&args.out) {
            Ok(f) => run_with(&args, f),
            Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", args.out))),
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen_corpus: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_with<W: Write>(args: &Args, w: W) -> io::Result<()> {
    // `run` returns the text summary; the JSON one needs the generator too, so
    // it is produced inside `run_json`.
    let (text, json) = run_json(args, w)?;
    eprint!("{text}");
    if let Some(path) = &args.summary_json {
        std::fs::write(path, json)?;
    }
    Ok(())
}

fn run_json<W: Write>(args: &Args, w: W) -> io::Result<(String, String)> {
    let base_ns = (days_from_civil(2026, 11, 26) as u64 * 86_400 + 8 * 3600) * 1_000_000_000
        + (splitmix64(&mut args.seed.clone()) % 86_400) * 1_000_000_000;
    let mut pool_rng = Rng::new(args.seed);
    let pools = build_pools(&mut pool_rng, base_ns);
    let mut g = Gen::new(args.seed, w, base_ns);
    let t0 = Instant::now();
    let mut n = 0u64;
    while g.bytes() < args.size && args.entries.is_none_or(|e| g.lines < e) {
        match args.profile {
            Profile::Realistic => g.realistic_event(&pools, args.failed_login_share),
            Profile::AllCandidates => g.candidate_event(&pools),
            Profile::Flood => g.flood_event(&pools, n),
        }
        n += 1;
        if g.out.len() >= FLUSH_AT {
            g.flush()?;
        }
    }
    if args.profile == Profile::Flood {
        g.flood_burst(&pools);
    }
    g.finish()?;
    let secs = t0.elapsed().as_secs_f64();
    Ok((summary(&g, args, secs), summary_json(&g, args, secs)))
}
