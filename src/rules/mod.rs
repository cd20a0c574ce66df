//! Rules: TOML files → a compiled [`RuleSet`] with a literal prefilter.
//!
//! The built-in pack (`patterns/*.toml`) is embedded in the binary;
//! `--patterns DIR` adds rules, and a rule whose `id` equals a built-in one
//! replaces it. The format (documented in the README):
//!
//! ```toml
//! [[rule]]
//! id = "privileged.raw_storage"          # unique, stable
//! title = "Raw storage access"
//! category = "privileged_endpoint"
//! severity = "critical"                   # info, low, medium, high, critical
//! description = "Why it matters and what to do."
//! references = ["https://openbao.org/api-docs/system/raw/"]
//! detail = ["response.auth.display_name"] # extra fields copied into the finding
//! when = { all = [
//!   { field = "path", glob = ["sys/raw", "sys/raw/**"] },
//! ] }
//! throttle = { key = ["auth.accessor"], window = "1h" }  # optional
//! # or a counter: [rule.window] group_by, count, within, distinct, trigger,
//! # max_keys and max_state (see `Window` and the state caps in `crate::engine`)
//!
//! [[rule.fixture]]
//! expect = "fire"                         # or "quiet"
//! source = "tests/data/openbao/scenarios.log:120"
//! line = '''{"time":…}'''
//! watchlist = { root = ["hmac-sha256:…"] } # only for `in_watchlist` rules: the lists of
//!                                         # the device that wrote the line
//! ```
//!
//! Watch lists ([`crate::watchlist`]) belong to one audit device: a loaded set
//! has none, and [`RuleSet::with_watchlists`] makes the set of one device (its
//! `in_watchlist` tests bound, its hashes in the prefilter).
//!
//! The prefilter: each rule's condition yields a set of literals of which a
//! line must contain at least one for the rule to match (see
//! [`cond::Cond::literals`]). One Aho-Corasick automaton over all of them,
//! plus `\u` and `\/` (the only JSON escapes that can spell a literal's
//! characters), finds the candidate lines; the rest are never parsed. It may
//! say "maybe" too often, never too rarely. A rule that yields no literal set
//! (a lone `not`, a regex) turns the prefilter off.

pub mod cond;
pub mod explain;
pub mod field;
pub mod prefilter;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::finding::Severity;
use crate::parse::{self, AuditEntry};
use cond::{Cond, CondDef};
use field::Field;
use prefilter::{Prefilter, Scanner, ARRAY_ELEMENT, VERBATIM};

/// The built-in rule pack, embedded at build time. A unit test checks that
/// every file of `patterns/` is listed here.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "patterns/privileged.toml",
        include_str!("../../patterns/privileged.toml"),
    ),
    (
        "patterns/root_token.toml",
        include_str!("../../patterns/root_token.toml"),
    ),
    (
        "patterns/login.toml",
        include_str!("../../patterns/login.toml"),
    ),
    (
        "patterns/windows.toml",
        include_str!("../../patterns/windows.toml"),
    ),
    (
        "patterns/signals.toml",
        include_str!("../../patterns/signals.toml"),
    ),
    (
        "patterns/watchlist.toml",
        include_str!("../../patterns/watchlist.toml"),
    ),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFileDef {
    #[serde(default, rename = "rule")]
    rules: Vec<RuleDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDef {
    id: toml::Spanned<String>,
    title: String,
    category: String,
    severity: String,
    description: String,
    #[serde(default)]
    references: Vec<String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    detail: Vec<String>,
    when: CondDef,
    #[serde(default)]
    throttle: Option<ThrottleDef>,
    #[serde(default)]
    window: Option<WindowDef>,
    #[serde(default, rename = "fixture")]
    fixtures: Vec<FixtureDef>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThrottleDef {
    key: Vec<String>,
    window: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowDef {
    group_by: Vec<String>,
    count: u32,
    within: String,
    #[serde(default)]
    distinct: Option<String>,
    #[serde(default)]
    trigger: Option<CondDef>,
    #[serde(default)]
    max_keys: Option<usize>,
    #[serde(default)]
    max_state: Option<String>,
}

/// A stateful rule: the entries its `when` matches are counted per key in a
/// sliding window of entry time (see the README's "Windows").
#[derive(Debug, Clone)]
pub struct Window {
    pub group_by: Vec<Field>,
    pub group_names: Vec<String>,
    /// Fire at this many events (or distinct values).
    pub count: u32,
    pub within: Duration,
    /// Count distinct values of this field instead of events.
    pub distinct: Option<(String, Field)>,
    /// Fire on an entry matching this, when the window already holds `count`.
    pub trigger: Option<Cond>,
    /// Keys kept at most; the less valuable half is dropped when full.
    pub max_keys: usize,
    /// Bytes of state kept at most (see [`crate::engine`] for what is counted); the less
    /// valuable half of the keys is dropped when full.
    pub max_state: usize,
    /// The JSON key of the one group field, when the trigger is judged
    /// lazily: lines only the trigger's literals select are not parsed by
    /// the analysis threads; the judge reads their group key from the raw
    /// bytes and parses them only when that key has window state (a
    /// successful login is only interesting from an address that failed).
    pub lazy_trigger_key: Option<String>,
}

/// Default cap of keys a window rule tracks.
pub const WINDOW_KEYS_MAX: usize = 65_536;
/// Default cap of the bytes of state a window rule keeps (`max_state`).
pub const WINDOW_STATE_MAX: usize = 8 << 20;
/// The smallest `max_state` a rule may set.
pub const WINDOW_STATE_MIN: usize = 64 << 10;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureDef {
    pub expect: Expect,
    pub line: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub note: String,
    /// The watch lists of the device that wrote `line` (list name → lines of a list file:
    /// `hmac-sha256:<hex>`, optionally a label), for rules with `in_watchlist`.
    #[serde(default)]
    pub watchlist: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Fire,
    Quiet,
}

/// How an entry concerns a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It matches the rule's `when` (a finding, or an event a window counts).
    Event,
    /// It matches a window rule's `trigger`.
    Trigger,
}

/// Suppress repeats: one finding per key per window of entry time.
#[derive(Debug, Clone)]
pub struct Throttle {
    pub key: Vec<Field>,
    pub key_names: Vec<String>,
    pub window: Duration,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub title: String,
    pub category: String,
    pub severity: Severity,
    pub description: String,
    pub references: Vec<String>,
    pub detail: Vec<(String, Field)>,
    pub when: Cond,
    pub throttle: Option<Throttle>,
    pub window: Option<Window>,
    pub fixtures: Vec<FixtureDef>,
    /// The file it came from (`patterns/x.toml` for built-ins) and the line of its id.
    pub origin: String,
    /// Literals a line needs for this rule (`None`: no set known).
    pub literals: Option<Vec<String>>,
}

/// A rule file could not be loaded. Says which file, which line or rule, and why.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct RuleError {
    pub origin: String,
    pub message: String,
}

/// All loaded rules and their prefilter.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    prefilter: Option<Prefilter>,
    literal_count: usize,
    /// Literals of the lazy triggers (see [`Window::lazy_trigger_key`]).
    gate: Option<Prefilter>,
    /// Rules whose trigger is lazy, with a finder of their group field's
    /// quoted JSON key.
    lazy_triggers: Vec<(usize, memchr::memmem::Finder<'static>)>,
}

impl std::fmt::Debug for Prefilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prefilter")
    }
}

/// Watch lists rules refer to that a device lacks: (list name, ids of the rules using it).
pub type MissingLists = Vec<(String, Vec<String>)>;

/// The most rules a set may hold (hostile rule directories).
const MAX_RULES: usize = 10_000;
/// The largest rule file read.
const MAX_RULE_FILE: u64 = 4 << 20;

impl RuleSet {
    /// The built-in pack alone.
    pub fn builtin() -> Result<RuleSet, RuleError> {
        Self::load(None)
    }

    /// The built-in pack plus every `*.toml` under `extra` (sorted, recursive).
    pub fn load(extra: Option<&Path>) -> Result<RuleSet, RuleError> {
        Self::load_selected(extra, &RuleSelection::default())
    }

    /// [`RuleSet::load`], then keeps the rules `selection` selects (`--only`, `--disable`).
    pub fn load_selected(
        extra: Option<&Path>,
        selection: &RuleSelection,
    ) -> Result<RuleSet, RuleError> {
        let mut rules = Vec::new();
        // Ids of rules that are off (`enabled = false`): known to the selection globs.
        let mut off = Vec::new();
        for (name, text) in BUILTIN {
            merge_layer(&mut rules, parse_file(name, text, &mut off)?, false);
        }
        if let Some(dir) = extra {
            let mut layer = Vec::new();
            for path in toml_files(dir)? {
                let origin = path.display().to_string();
                let meta = std::fs::metadata(&path).map_err(|e| err(&origin, e))?;
                if meta.len() > MAX_RULE_FILE {
                    return Err(err(&origin, format!("larger than {MAX_RULE_FILE} bytes")));
                }
                let text = std::fs::read_to_string(&path).map_err(|e| err(&origin, e))?;
                let parsed = parse_file(&origin, &text, &mut off)?;
                for r in parsed {
                    if let Some(prev) = layer.iter().find(|p: &&Rule| p.id == r.id) {
                        return Err(err(
                            &r.origin,
                            format!("duplicate rule id {:?} (first at {})", r.id, prev.origin),
                        ));
                    }
                    layer.push(r);
                }
            }
            merge_layer(&mut rules, layer, true);
        }
        let rules = selection.apply(rules, &off)?;
        Self::from_rules(rules)
    }

    /// A set from rule-file text (tests, fuzzing).
    pub fn from_toml(origin: &str, text: &str) -> Result<RuleSet, RuleError> {
        Self::from_rules(parse_file(origin, text, &mut Vec::new())?)
    }

    fn from_rules(mut rules: Vec<Rule>) -> Result<RuleSet, RuleError> {
        if rules.len() > MAX_RULES {
            return Err(err("rules", format!("more than {MAX_RULES} rules")));
        }
        let mut literals: Vec<String> = Vec::new();
        let mut verbatim: Vec<String> = Vec::new();
        let mut all_known = true;
        for r in &rules {
            match &r.literals {
                Some(l) => {
                    for x in l {
                        match x.strip_prefix(VERBATIM) {
                            Some(v) => verbatim.push(v.to_owned()),
                            None => literals.push(x.clone()),
                        }
                    }
                }
                None => all_known = false,
            }
        }
        let mut literals = minimize_literals(literals);
        verbatim.sort();
        verbatim.dedup();
        literals.extend(verbatim.into_iter().map(|text| prefilter::Pattern {
            text,
            members: Vec::new(),
        }));
        tracing::debug!(
            patterns = ?literals.iter().map(|p| &p.text).take(64).collect::<Vec<_>>(),
            count = literals.len(),
            "prefilter patterns"
        );
        let prefilter_on = all_known && !rules.is_empty();
        // Lazy triggers (see `Window::lazy_trigger_key`): only useful while
        // the prefilter is on (else every line is parsed anyway), and for
        // triggers whose lines are not candidates anyway (`sys/plugins/…`
        // holds the plain pattern `sys/`): those are judged at once.
        for r in &mut rules {
            let Some(w) = r.window.as_mut() else { continue };
            let covered = w.lazy_trigger_key.is_some()
                && w.trigger
                    .as_ref()
                    .and_then(Cond::literals)
                    .is_some_and(|lits| lits.iter().all(|l| passes_anyway(l, &literals)));
            if covered {
                w.lazy_trigger_key = None;
            }
        }
        let lazy: Vec<usize> = (0..rules.len())
            .filter(|&i| {
                rules[i]
                    .window
                    .as_ref()
                    .is_some_and(|w| w.lazy_trigger_key.is_some())
            })
            .collect();
        let gate_literals: Vec<String> = lazy
            .iter()
            .filter_map(|&i| rules[i].window.as_ref()?.trigger.as_ref()?.literals())
            .flatten()
            .collect();
        let gate_patterns = if prefilter_on && !gate_literals.is_empty() {
            let patterns = minimize_literals(gate_literals);
            tracing::debug!(
                patterns = ?patterns.iter().map(|p| &p.text).collect::<Vec<_>>(),
                "lazy trigger gate patterns"
            );
            patterns
        } else {
            Vec::new()
        };
        let gate = if gate_patterns.is_empty() {
            None
        } else {
            Some(Prefilter::new(&gate_patterns).map_err(|e| err("trigger gate", e))?)
        };
        // The gate patterns ride in the prefilter's own pass (see `Scanner::next_any`).
        let prefilter = if prefilter_on {
            Some(Prefilter::with_gate(&literals, &gate_patterns).map_err(|e| err("prefilter", e))?)
        } else {
            None
        };
        Ok(RuleSet {
            literal_count: literals.len(),
            prefilter,
            gate,
            lazy_triggers: lazy
                .iter()
                .filter_map(|&i| {
                    let key = rules[i].window.as_ref()?.lazy_trigger_key.as_ref()?;
                    let needle = format!("\"{key}\"");
                    Some((
                        i,
                        memchr::memmem::Finder::new(needle.as_bytes()).into_owned(),
                    ))
                })
                .collect(),
            rules,
        })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn get(&self, idx: usize) -> &Rule {
        &self.rules[idx]
    }

    pub fn find(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }

    /// The set for the stream of one audit device: every `in_watchlist` test bound to
    /// `lists` (the device's watch lists by name; what was bound before is replaced) and the
    /// listed hashes added to the prefilter. Also returns, per list name that rules refer to
    /// and the device lacks, the ids of those rules (their test stays false).
    pub fn with_watchlists(
        &self,
        device: Option<&str>,
        lists: &crate::watchlist::DeviceLists,
    ) -> Result<(RuleSet, MissingLists), RuleError> {
        let mut missing: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        let mut rules = self.rules.clone();
        for r in &mut rules {
            let mut lacks = r.when.bind_watchlists(device, lists);
            if let Some(t) = r.window.as_mut().and_then(|w| w.trigger.as_mut()) {
                lacks.extend(t.bind_watchlists(device, lists));
            }
            for name in lacks {
                let ids = missing.entry(name).or_default();
                if !ids.contains(&r.id) {
                    ids.push(r.id.clone());
                }
            }
            r.literals = rule_literals(&r.when, r.window.as_ref());
        }
        Ok((Self::from_rules(rules)?, missing.into_iter().collect()))
    }

    /// The set a fixture is judged with: bound to the fixture's watch lists when it has
    /// some (an unnamed device), else `None` (this set).
    pub fn fixture_set(&self, fx: &FixtureDef) -> Result<Option<RuleSet>, String> {
        if fx.watchlist.is_empty() {
            return Ok(None);
        }
        let mut lists = crate::watchlist::DeviceLists::new();
        for (name, values) in &fx.watchlist {
            let list = crate::watchlist::WatchList::parse(name, "fixture", &values.join("\n"))
                .map_err(|e| format!("watchlist: {e}"))?;
            crate::watchlist::insert(&mut lists, None, list).map_err(|e| e.to_string())?;
        }
        self.with_watchlists(None, &lists)
            .map(|(set, _)| Some(set))
            .map_err(|e| e.to_string())
    }

    /// Number of distinct prefilter literals, 0 when the prefilter is off.
    pub fn literal_count(&self) -> usize {
        if self.prefilter.is_some() {
            self.literal_count
        } else {
            0
        }
    }

    pub fn prefilter_enabled(&self) -> bool {
        self.prefilter.is_some()
    }

    /// A scanner of `hay` for prefilter hits (every position is one when
    /// the prefilter is off).
    pub fn scanner<'a>(&'a self, hay: &'a [u8]) -> Scanner<'a> {
        Scanner::new(self.prefilter.as_ref(), hay)
    }

    /// Whether a single line passes the prefilter.
    pub fn is_candidate(&self, line: &[u8]) -> bool {
        self.scanner(line).next(0).is_some()
    }

    /// A scanner of `hay` for the literals of lazy triggers; `None` when
    /// there are none (or the prefilter is off and every line is parsed).
    /// Escapes are not looked for: a line with `\u`/`\/` escapes is a
    /// candidate of the main prefilter (parsed, every trigger judged at once).
    /// Whether lazy triggers gate lines: then [`Scanner::next_any`] of [`RuleSet::scanner`]
    /// also reports gate hits.
    pub fn has_gate(&self) -> bool {
        self.gate.is_some()
    }

    pub fn gate_scanner<'a>(&'a self, hay: &'a [u8]) -> Option<Scanner<'a>> {
        self.gate.as_ref().map(|g| Scanner::literals_only(g, hay))
    }

    /// Whether a line that is not a candidate goes to the judge for a lazy
    /// trigger (a line matching any rule's `when` or trigger is one or the
    /// other).
    pub fn is_gate_candidate(&self, line: &[u8]) -> bool {
        self.gate_scanner(line)
            .is_some_and(|mut s| s.next(0).is_some())
    }

    /// Rules whose trigger is lazy.
    pub fn lazy_triggers(&self) -> impl Iterator<Item = usize> + '_ {
        self.lazy_triggers.iter().map(|(i, _)| *i)
    }

    /// Rules whose trigger is lazy, with a finder of their group field's
    /// quoted JSON key (`"remote_address"`).
    pub fn lazy_trigger_finders(
        &self,
    ) -> impl Iterator<Item = (usize, &memchr::memmem::Finder<'static>)> + '_ {
        self.lazy_triggers.iter().map(|(i, f)| (*i, f))
    }

    /// The rules an entry concerns (stateless part only): `(rule, Role)`.
    pub fn matches<'s>(
        &'s self,
        e: &'s AuditEntry<'_>,
    ) -> impl Iterator<Item = (usize, Role)> + 's {
        self.rules.iter().enumerate().filter_map(move |(i, r)| {
            if r.when.eval(e) {
                Some((i, Role::Event))
            } else if r
                .window
                .as_ref()
                .and_then(|w| w.trigger.as_ref())
                .is_some_and(|t| t.eval(e))
            {
                Some((i, Role::Trigger))
            } else {
                None
            }
        })
    }

    /// Runs every rule's fixtures: each `fire` line must pass the prefilter
    /// and match its rule; each `quiet` line must not match it.
    pub fn test_fixtures(&self) -> Vec<FixtureFailure> {
        let mut failures = Vec::new();
        for rule in &self.rules {
            if rule.fixtures.is_empty() {
                failures.push(FixtureFailure {
                    origin: rule.origin.clone(),
                    rule: rule.id.clone(),
                    index: 0,
                    problem: "has no fixtures (needs a line that fires and a near miss)".into(),
                });
                continue;
            }
            for expect in [Expect::Fire, Expect::Quiet] {
                if !rule.fixtures.iter().any(|f| f.expect == expect) {
                    failures.push(FixtureFailure {
                        origin: rule.origin.clone(),
                        rule: rule.id.clone(),
                        index: 0,
                        problem: format!(
                            "has no `{}` fixture",
                            if expect == Expect::Fire {
                                "fire"
                            } else {
                                "quiet"
                            }
                        ),
                    });
                }
            }
            for (i, fx) in rule.fixtures.iter().enumerate() {
                let fail = |problem: String| FixtureFailure {
                    origin: rule.origin.clone(),
                    rule: rule.id.clone(),
                    index: i + 1,
                    problem,
                };
                let line = fx.line.trim_end_matches(['\r', '\n']);
                let entry = match parse::parse_str(line) {
                    Ok(e) => e,
                    Err(e) => {
                        failures.push(fail(format!("fixture does not parse: {e}")));
                        continue;
                    }
                };
                let bound = match self.fixture_set(fx) {
                    Ok(b) => b,
                    Err(e) => {
                        failures.push(fail(e));
                        continue;
                    }
                };
                let (set, rule) = match &bound {
                    Some(b) => (b, b.find(&rule.id).unwrap_or(rule)),
                    None => (self, rule),
                };
                let fired = rule.when.eval(&entry);
                match fx.expect {
                    Expect::Fire if !fired => {
                        failures.push(fail("expected to fire, stayed quiet".into()))
                    }
                    Expect::Fire if !set.is_candidate(line.as_bytes()) => {
                        failures.push(fail("fires, but the prefilter skips the line".into()))
                    }
                    Expect::Quiet if fired => {
                        failures.push(fail("expected to stay quiet, fired".into()))
                    }
                    _ => {}
                }
            }
        }
        failures
    }
}

/// Fewer literals make the prefilter's SIMD search (Teddy) several times
/// faster, without losing precision:
/// 1. Literals sharing a stem of 4 bytes (after an opening quote), three
///    or more of them, are searched for as the stem (`sys/raw`, `"sys/rotate`,
///    `sys/generate-root/` → `sys/`), and a stem hit counts only when one of
///    the family's literals stands there (so `sys/internal/ui/mounts`, which
///    the CLI reads before every command, is not a candidate).
/// 2. A literal that contains another literal is dropped (any line holding
///    it holds the shorter one).
///
/// Both steps keep every line some literal matches, so the prefilter never
/// says "no" to a line a rule could match.
pub fn minimize_literals(literals: Vec<String>) -> Vec<prefilter::Pattern> {
    const STEM: usize = 4;
    let stem_of = |l: &str| -> Option<String> {
        if l.starts_with(ARRAY_ELEMENT) {
            return None;
        }
        let body = l.strip_prefix('"').unwrap_or(l);
        body.get(..STEM).map(str::to_owned)
    };
    let mut literals = literals;
    literals.sort();
    literals.dedup();
    // 2. first: drop literals that contain another one.
    let keep: Vec<bool> = literals
        .iter()
        .map(|l| {
            !literals
                .iter()
                .any(|other| other != l && l.contains(other.as_str()))
        })
        .collect();
    let literals: Vec<String> = literals
        .into_iter()
        .zip(keep)
        .filter_map(|(l, k)| k.then_some(l))
        .collect();
    let mut families: HashMap<String, Vec<String>> = HashMap::new();
    for l in &literals {
        if let Some(st) = stem_of(l) {
            families.entry(st).or_default().push(l.clone());
        }
    }
    let mut out: Vec<prefilter::Pattern> = Vec::new();
    for l in literals {
        match stem_of(&l) {
            Some(st) if families[&st].len() >= 3 => {
                // The family's whole common prefix (`auth/token/`, not
                // `auth`, which stands in every line) keeps the search rare.
                let members = &families[&st];
                let bodies: Vec<&str> = members
                    .iter()
                    .map(|m| m.strip_prefix('"').unwrap_or(m))
                    .collect();
                let mut common = bodies[0].len();
                for b in &bodies[1..] {
                    common = common.min(
                        bodies[0]
                            .bytes()
                            .zip(b.bytes())
                            .take_while(|(x, y)| x == y)
                            .count(),
                    );
                }
                while !bodies[0].is_char_boundary(common) {
                    common -= 1;
                }
                let text = bodies[0][..common.max(STEM)].to_owned();
                if !out.iter().any(|p| p.text == text) {
                    out.push(prefilter::Pattern {
                        members: members.clone(),
                        text,
                    });
                }
            }
            _ => out.push(prefilter::Pattern {
                text: l,
                members: Vec::new(),
            }),
        }
    }
    out.sort_by(|a, b| a.text.cmp(&b.text));
    out
}

/// Which of the loaded rules run: `--only GLOB` / `--disable GLOB` on the command line,
/// `only` / `disable` in the `[rules]` table of `auditwatch run`'s configuration.
///
/// The globs match whole rule ids (`brute_force.*`, `acl.denied_*`, `{login,acl}.*`). With
/// `only`, just the rules matching one of its globs are kept; `disable` then drops those
/// matching one of its globs. A glob that matches no rule id, enabled or off
/// (`enabled = false`), is an error naming it: a typo must not silently leave a rule on. So is
/// a selection that leaves no rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSelection {
    pub only: Vec<String>,
    pub disable: Vec<String>,
}

impl RuleSelection {
    pub fn is_empty(&self) -> bool {
        self.only.is_empty() && self.disable.is_empty()
    }

    /// Checks that every glob is a valid pattern (not whether it matches a rule).
    pub fn validate(&self) -> Result<(), String> {
        for g in self.only.iter().chain(&self.disable) {
            id_glob(g)?;
        }
        Ok(())
    }

    /// The rules the selection keeps, in order. `off` are the ids of rules that are off.
    fn apply(&self, rules: Vec<Rule>, off: &[String]) -> Result<Vec<Rule>, RuleError> {
        if self.is_empty() {
            return Ok(rules);
        }
        let compile = |what: &str, globs: &[String]| -> Result<Vec<_>, RuleError> {
            globs
                .iter()
                .map(|g| {
                    let m = id_glob(g).map_err(|e| err(what, e))?;
                    let known = rules.iter().any(|r| m.is_match(&r.id))
                        || off.iter().any(|id| m.is_match(id));
                    if !known {
                        return Err(err(
                            what,
                            format!(
                                "{g:?} matches no rule id (`auditwatch rules list` lists them)"
                            ),
                        ));
                    }
                    Ok(m)
                })
                .collect()
        };
        let only = compile("--only / rules.only", &self.only)?;
        let disable = compile("--disable / rules.disable", &self.disable)?;
        let kept: Vec<Rule> = rules
            .into_iter()
            .filter(|r| only.is_empty() || only.iter().any(|m| m.is_match(&r.id)))
            .filter(|r| !disable.iter().any(|m| m.is_match(&r.id)))
            .collect();
        if kept.is_empty() {
            return Err(err(
                "--only / --disable",
                "the rule selection leaves no rule to run",
            ));
        }
        Ok(kept)
    }
}

/// A rule-id glob: `*` and `?` match any characters (ids have no `/`), `{a,b}` alternates.
fn id_glob(g: &str) -> Result<globset::GlobMatcher, String> {
    if g.is_empty() {
        return Err("an empty rule glob".into());
    }
    globset::GlobBuilder::new(g)
        .literal_separator(false)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("bad rule glob {g:?}: {e}"))
}

/// A fixture that did not behave.
#[derive(Debug, Clone)]
pub struct FixtureFailure {
    pub origin: String,
    pub rule: String,
    /// 1-based fixture number in the rule (0: the rule as a whole).
    pub index: usize,
    pub problem: String,
}

impl std::fmt::Display for FixtureFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.index == 0 {
            write!(f, "{}: rule {}: {}", self.origin, self.rule, self.problem)
        } else {
            write!(
                f,
                "{}: rule {} fixture {}: {}",
                self.origin, self.rule, self.index, self.problem
            )
        }
    }
}

fn err(origin: &str, e: impl std::fmt::Display) -> RuleError {
    RuleError {
        origin: origin.to_owned(),
        message: e.to_string(),
    }
}

/// Later layers replace rules with the same id; new ids are appended.
fn merge_layer(rules: &mut Vec<Rule>, layer: Vec<Rule>, replace: bool) {
    for r in layer {
        match rules.iter_mut().find(|x| x.id == r.id) {
            Some(slot) if replace => *slot = r,
            _ => rules.push(r),
        }
    }
}

fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, RuleError> {
    let origin = dir.display().to_string();
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| err(&d.display().to_string(), e))?;
        for entry in rd {
            let entry = entry.map_err(|e| err(&origin, e))?;
            let p = entry.path();
            let ft = entry.file_type().map_err(|e| err(&origin, e))?;
            if ft.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Parses one rule file; the ids of its rules that are off (`enabled = false`) go to `off`.
fn parse_file(origin: &str, text: &str, off: &mut Vec<String>) -> Result<Vec<Rule>, RuleError> {
    let def: RuleFileDef = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| format!(":{}", line_of(text, s.start)))
            .unwrap_or_default();
        RuleError {
            origin: format!("{origin}{at}"),
            message: e.message().to_owned(),
        }
    })?;
    let mut out: Vec<Rule> = Vec::new();
    for d in def.rules {
        let at = format!("{origin}:{}", line_of(text, d.id.span().start));
        let id = d.id.into_inner();
        let fail = |m: String| RuleError {
            origin: at.clone(),
            message: format!("rule {id:?}: {m}"),
        };
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(fail(
                "id must be non-empty ASCII letters, digits, `.`, `_` or `-`".into(),
            ));
        }
        if let Some(prev) = out.iter().find(|r| r.id == id) {
            return Err(fail(format!(
                "duplicate rule id (first at {})",
                prev.origin
            )));
        }
        if d.category.is_empty()
            || !d
                .category
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_')
        {
            return Err(fail("category must be lower_snake_case".into()));
        }
        let severity: Severity = d.severity.parse().map_err(fail)?;
        let when = Cond::compile(&d.when).map_err(|m| fail(format!("when: {m}")))?;
        let mut detail = Vec::new();
        for name in &d.detail {
            let f = Field::parse(name).map_err(|m| fail(format!("detail: {m}")))?;
            if f.is_data_value() {
                return Err(fail(format!(
                    "detail: {name:?} would copy a value out of request/response data, which may be a secret"
                )));
            }
            detail.push((name.clone(), f));
        }
        let throttle = match d.throttle {
            None => None,
            Some(t) => {
                let window =
                    parse_duration(&t.window).map_err(|m| fail(format!("throttle.window: {m}")))?;
                let key = t
                    .key
                    .iter()
                    .map(|k| Field::parse(k))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|m| fail(format!("throttle.key: {m}")))?;
                if key.is_empty() {
                    return Err(fail("throttle.key is empty".into()));
                }
                Some(Throttle {
                    key,
                    key_names: t.key,
                    window,
                })
            }
        };
        let window = match d.window {
            None => None,
            Some(w) => {
                let within =
                    parse_duration(&w.within).map_err(|m| fail(format!("window.within: {m}")))?;
                if w.count == 0 || within.is_zero() {
                    return Err(fail(
                        "window.count and window.within must be positive".into(),
                    ));
                }
                let group_by = w
                    .group_by
                    .iter()
                    .map(|k| Field::parse(k))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|m| fail(format!("window.group_by: {m}")))?;
                if group_by.is_empty() {
                    return Err(fail("window.group_by is empty".into()));
                }
                let distinct = match w.distinct {
                    Some(name) => {
                        let f = Field::parse(&name)
                            .map_err(|m| fail(format!("window.distinct: {m}")))?;
                        Some((name, f))
                    }
                    None => None,
                };
                let trigger = match &w.trigger {
                    Some(c) => {
                        Some(Cond::compile(c).map_err(|m| fail(format!("window.trigger: {m}")))?)
                    }
                    None => None,
                };
                let max_state = match &w.max_state {
                    None => WINDOW_STATE_MAX,
                    Some(t) => crate::config::parse_size(t)
                        .ok()
                        .and_then(|v| usize::try_from(v).ok())
                        .filter(|&v| v >= WINDOW_STATE_MIN)
                        .ok_or_else(|| {
                            fail(format!(
                                "window.max_state {t:?}: a size of at least 64KiB (e.g. \"16MiB\")"
                            ))
                        })?,
                };
                let lazy_trigger_key = match (&trigger, group_by.as_slice()) {
                    (Some(t), [f])
                        if t.literals().is_some() && f.is_verbatim() && !f.is_array() =>
                    {
                        f.json_key()
                    }
                    _ => None,
                };
                Some(Window {
                    group_by,
                    group_names: w.group_by,
                    count: w.count,
                    within,
                    distinct,
                    trigger,
                    max_keys: w.max_keys.unwrap_or(WINDOW_KEYS_MAX).max(1),
                    max_state,
                    lazy_trigger_key,
                })
            }
        };
        if !d.enabled {
            off.push(id);
            continue;
        }
        let literals = rule_literals(&when, window.as_ref());
        out.push(Rule {
            literals,
            window,
            id,
            title: d.title,
            category: d.category,
            severity,
            description: d.description,
            references: d.references,
            detail,
            when,
            throttle,
            fixtures: d.fixtures,
            origin: at,
        });
    }
    Ok(out)
}

/// Whether every line holding literal `l` is a prefilter candidate anyway: it
/// holds a plain pattern, or a stem's member (where the stem counts).
fn passes_anyway(l: &str, patterns: &[prefilter::Pattern]) -> bool {
    let marked = |t: &str| t.starts_with([ARRAY_ELEMENT, VERBATIM]);
    !marked(l)
        && patterns.iter().any(|p| {
            !marked(&p.text)
                && if p.members.is_empty() {
                    l.contains(p.text.as_str())
                } else {
                    p.members.iter().any(|m| l.contains(m.as_str()))
                }
        })
}

/// The literals of a rule: its `when`'s, and a trigger's (whose entries must pass the
/// prefilter too) unless the trigger is lazy (its literals go to the trigger gate).
fn rule_literals(when: &Cond, window: Option<&Window>) -> Option<Vec<String>> {
    if window.is_some_and(|w| w.lazy_trigger_key.is_some()) {
        return when.literals();
    }
    match (when.literals(), window.and_then(|w| w.trigger.as_ref())) {
        (Some(mut a), Some(t)) => t.literals().map(|b| {
            a.extend(b);
            a
        }),
        (a, None) => a,
        (None, Some(_)) => None,
    }
}

/// `90s`, `15m`, `1h`, `2d`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 90s, 15m, 1h)"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h, d)")),
    };
    Ok(Duration::from_secs(secs))
}

/// Names of all categories in a set, with their rule counts.
pub fn categories(set: &RuleSet) -> HashMap<&str, usize> {
    let mut m = HashMap::new();
    for r in set.rules() {
        *m.entry(r.category.as_str()).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_file_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("patterns");
        let on_disk: Vec<String> = toml_files(&dir)
            .unwrap()
            .iter()
            .map(|p| format!("patterns/{}", p.strip_prefix(&dir).unwrap().display()))
            .collect();
        let embedded: Vec<String> = BUILTIN.iter().map(|(n, _)| n.to_string()).collect();
        let mut a = on_disk.clone();
        a.sort();
        let mut b = embedded.clone();
        b.sort();
        assert_eq!(a, b, "patterns/ and rules::BUILTIN disagree");
    }

    #[test]
    fn builtin_pack_loads_with_prefilter() {
        let set = RuleSet::builtin().unwrap();
        assert!(set.rules().len() >= 10);
        assert!(
            set.prefilter_enabled(),
            "every built-in rule must give the prefilter literals"
        );
    }

    #[test]
    fn builtin_fixtures_pass() {
        let set = RuleSet::builtin().unwrap();
        let failures = set.test_fixtures();
        assert!(
            failures.is_empty(),
            "{}",
            failures
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    const MINI: &str = r#"
[[rule]]
id = "t.raw"
title = "raw"
category = "privileged_endpoint"
severity = "critical"
description = "d"
when = { field = "path", glob = ["sys/raw", "sys/raw/**"] }
"#;

    #[test]
    fn rule_errors_name_file_and_line() {
        let e = RuleSet::from_toml("x.toml", &format!("{MINI}{MINI}")).unwrap_err();
        assert!(e.origin.starts_with("x.toml:"), "{e}");
        assert!(e.message.contains("duplicate"), "{e}");
        let e = RuleSet::from_toml("y.toml", &MINI.replace("description", "descr")).unwrap_err();
        assert!(e.to_string().contains("y.toml:"), "{e}");
        let e = RuleSet::from_toml("z.toml", &MINI.replace("critical", "urgent")).unwrap_err();
        assert!(e.to_string().contains("z.toml:3"), "{e}");
    }

    #[test]
    fn prefilter_sees_escaped_literals() {
        let set = RuleSet::from_toml("m.toml", MINI).unwrap();
        assert!(set.is_candidate(br#"{"request":{"path":"sys/raw/x"}}"#));
        assert!(set.is_candidate(br#"{"request":{"path":"sys\/raw\/x"}}"#));
        assert!(set.is_candidate(br#"{"request":{"path":"\u0073ys/raw/x"}}"#));
        assert!(!set.is_candidate(br#"{"request":{"path":"secret/data/x"}}"#));
    }

    /// JSON allows `\/` for `/` and `\uXXXX` for any character: every
    /// fixture that fires must still pass the prefilter when escaped so.
    #[test]
    fn escaped_fixtures_still_pass_the_prefilter() {
        let set = RuleSet::builtin().unwrap();
        let mut checked = 0;
        for rule in set.rules() {
            for fx in rule.fixtures.iter().filter(|f| f.expect == Expect::Fire) {
                let bound = set.fixture_set(fx).unwrap();
                let (set, rule) = match &bound {
                    Some(b) => (b, b.find(&rule.id).unwrap()),
                    None => (&set, rule),
                };
                let slashes = fx.line.replace('/', "\\/");
                // Escape every `s` and `r` inside string values as \u0073 / \u0072.
                let unicode = fx
                    .line
                    .replace("sys", "\\u0073ys")
                    .replace("root", "\\u0072oot");
                for variant in [slashes, unicode] {
                    let e = parse::parse_str(&variant).expect("escaped fixture parses");
                    assert!(
                        rule.when.eval(&e),
                        "{}: escaped fixture no longer fires",
                        rule.id
                    );
                    assert!(
                        set.is_candidate(variant.as_bytes()),
                        "{}: prefilter skips {variant}",
                        rule.id
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 60);
    }

    #[test]
    fn a_lazy_trigger_goes_through_the_gate_not_the_prefilter() {
        let set = RuleSet::builtin().unwrap();
        let i = set
            .rules()
            .iter()
            .position(|r| r.id == "brute_force.success_after_failures")
            .unwrap();
        assert!(set.lazy_triggers().any(|r| r == i));
        let w = set.get(i).window.as_ref().unwrap();
        assert_eq!(w.lazy_trigger_key.as_deref(), Some("remote_address"));
        // A real successful login (scenarios.log line 19) is the trigger.
        let ok = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/openbao/scenarios.log"),
        )
        .unwrap()
        .lines()
        .nth(18)
        .unwrap()
        .to_owned();
        let e = parse::parse_str(&ok).unwrap();
        assert!(set
            .matches(&e)
            .any(|(r, role)| r == i && role == Role::Trigger));
        assert!(!set.is_candidate(ok.as_bytes()), "no rule needs it parsed");
        assert!(set.is_gate_candidate(ok.as_bytes()));
        // A rule with two group fields keeps an eager trigger.
        let two = RuleSet::from_toml(
            "t.toml",
            r#"
[[rule]]
id = "t.two"
title = "t"
category = "c"
severity = "low"
description = "d"
[rule.window]
group_by = ["request.remote_address", "login_user"]
count = 2
within = "1m"
trigger = { field = "path", prefix = "auth/x/" }
[rule.when]
all = [{ field = "path", prefix = "sys/raw" }]
"#,
        )
        .unwrap();
        assert_eq!(two.lazy_triggers().count(), 0);
        assert!(two.is_candidate(br#"{"request":{"path":"auth/x/login"}}"#));
    }

    /// Rule files the fuzzer (and a read of the code) found where a rule
    /// matched a line the prefilter skipped: never again.
    #[test]
    fn fuzz_regressions_prefilter_never_skips_a_match() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/rules");
        let mut checked = 0;
        for path in toml_files(&dir).unwrap() {
            let text = std::fs::read_to_string(&path).unwrap();
            let set = RuleSet::from_toml(&path.display().to_string(), &text).unwrap();
            for rule in set.rules() {
                for fx in &rule.fixtures {
                    let line = fx.line.trim_end();
                    let e = parse::parse_str(line).unwrap();
                    if rule.when.eval(&e) {
                        assert!(
                            set.is_candidate(line.as_bytes()),
                            "{}: {line}",
                            path.display()
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked >= 6, "{checked}");
    }

    #[test]
    fn literal_minimization_only_widens() {
        let lits = vec![
            "sys/raw".to_owned(),
            "\"sys/rotate".to_owned(),
            "sys/generate-root/".to_owned(),
            "/login".to_owned(),
            "/login/".to_owned(),
            "[\"root\"".to_owned(),
        ];
        let min = minimize_literals(lits.clone());
        let texts: Vec<&str> = min.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(texts, vec!["/login", "[\"root\"", "sys/"]);
        assert_eq!(
            min[2].members.len(),
            3,
            "the stem is verified against its family"
        );
        for l in &lits {
            assert!(
                min.iter().any(|m| l.contains(m.text.as_str())),
                "{l} lost its cover"
            );
        }
        // The stem alone is not a hit; a family member is.
        let pf = Prefilter::new(&min).unwrap();
        assert!(pf_hit(&pf, br#"{"path":"sys/raw/x"}"#));
        assert!(pf_hit(&pf, br#"{"path":"sys/rotate"}"#));
        assert!(!pf_hit(&pf, br#"{"path":"sys/internal/ui/mounts/x"}"#));
    }

    fn pf_hit(pf: &Prefilter, line: &[u8]) -> bool {
        Scanner::new(Some(pf), line).next(0).is_some()
    }

    /// Nearly every line has an `"auth"` key: no built-in rule may lean on
    /// such a literal, or every line becomes a candidate.
    #[test]
    fn builtin_literals_are_selective() {
        let set = RuleSet::builtin().unwrap();
        for r in set.rules() {
            for l in r.literals.iter().flatten() {
                for common in [
                    "\"auth\"",
                    "\"request\"",
                    "\"response\"",
                    "\"type\"",
                    "\"time\"",
                    "\"path\"",
                ] {
                    assert_ne!(l, common, "{}: literal {l} stands in every line", r.id);
                }
            }
        }
    }

    #[test]
    fn builtin_prefilter_is_small() {
        // Teddy (the SIMD searcher) is fastest with few patterns.
        let set = RuleSet::builtin().unwrap();
        assert!(
            set.literal_count() <= 16,
            "{} literals",
            set.literal_count()
        );
    }

    fn capture_lines(log: &str) -> Vec<String> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/openbao")
            .join(log);
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The device's hash of `input`, from a capture's `*.hashes.json`.
    fn capture_hash(capture: &str, input: &str) -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/openbao")
            .join(format!("{capture}.hashes.json"));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        v["hashes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["input"] == input)
            .unwrap()["hash"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn lists(entries: &[(&str, &str)]) -> crate::watchlist::DeviceLists {
        let mut out = crate::watchlist::DeviceLists::new();
        for (name, text) in entries {
            let l = crate::watchlist::WatchList::parse(name, "t.list", text).unwrap();
            crate::watchlist::insert(&mut out, None, l).unwrap();
        }
        out
    }

    #[test]
    fn watch_rules_need_the_lists_of_the_device_that_wrote_the_line() {
        let set = RuleSet::builtin().unwrap();
        let lines = capture_lines("scenarios.log");
        let wrapped = &lines[120]; // line 121: the wrapped root-token creation
        let e = parse::parse_str(wrapped).unwrap();
        let fires = |s: &RuleSet| s.find("root_token.wrapped_created").unwrap().when.eval(&e);
        assert!(!fires(&set), "no lists bound: false");

        let root = capture_hash("scenarios", "root");
        let (bound, missing) = set
            .with_watchlists(Some("file-audit"), &lists(&[("root", &root)]))
            .unwrap();
        assert!(fires(&bound));
        assert!(bound.is_candidate(wrapped.as_bytes()));
        assert_eq!(bound.literal_count(), set.literal_count() + 1);
        assert_eq!(
            missing,
            vec![(
                "login-errors".to_owned(),
                vec!["login.failed_hashed_error".to_owned()]
            )]
        );
        // The finding names the list, the field and the device.
        let r = bound.find("root_token.wrapped_created").unwrap();
        let hits = r.when.watch_hits(&e);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].field, "request.data.policies[0]");
        assert_eq!(hits[0].list, "root");
        assert_eq!(hits[0].device.as_deref(), Some("file-audit"));
        assert_eq!(hits[0].entry, "t.list:1");

        // Another device's hash of `root` (another salt): quiet.
        let other = capture_hash("signals", "root");
        assert_ne!(other, root);
        let (elsewhere, _) = set
            .with_watchlists(Some("other"), &lists(&[("root", &other)]))
            .unwrap();
        assert!(!fires(&elsewhere));
        // Binding again replaces what was bound.
        let (rebound, _) = bound
            .with_watchlists(Some("other"), &lists(&[("root", &other)]))
            .unwrap();
        assert!(!fires(&rebound));
    }

    const WATCH_ANY: &str = r#"
[[rule]]
id = "t.watch"
title = "watched"
category = "watchlist"
severity = "high"
description = "d"
when = { field = "*", in_watchlist = ["*", "!skip"] }
"#;

    /// Over every line of both captures: a line the bound rule matches is a candidate, and
    /// without a listed hash in it, a line is not.
    #[test]
    fn watched_hashes_keep_the_prefilter_sound() {
        let set = RuleSet::from_toml("w.toml", WATCH_ANY).unwrap();
        assert!(set.prefilter_enabled());
        assert_eq!(set.literal_count(), 0, "no lists: no pattern");
        let bogus = capture_hash("scenarios", "bogus");
        let default = capture_hash("scenarios", "default");
        let root = capture_hash("scenarios", "root");
        let (bound, _) = set
            .with_watchlists(
                None,
                &lists(&[
                    ("leaked", &format!("{bogus} the bogus token")),
                    ("policies", &default),
                    ("skip", &root),
                ]),
            )
            .unwrap();
        assert_eq!(bound.literal_count(), 2, "the skipped list adds nothing");
        let rule = bound.find("t.watch").unwrap();
        let (mut matched, mut skipped) = (0, 0);
        for line in capture_lines("scenarios.log")
            .iter()
            .chain(&capture_lines("signals.log"))
        {
            let e = parse::parse_str(line).unwrap();
            let listed = line.contains(&bogus[12..]) || line.contains(&default[12..]);
            if rule.when.eval(&e) {
                matched += 1;
                assert!(bound.is_candidate(line.as_bytes()), "{line}");
                assert!(listed);
            } else {
                assert!(!listed || line.contains("\\u"), "{line}");
            }
            if !listed && !line.contains("\\u") && !line.contains("\\/") {
                assert!(!bound.is_candidate(line.as_bytes()), "{line}");
                skipped += 1;
            }
        }
        assert!(matched >= 10, "{matched}");
        assert!(skipped > 300, "{skipped}");
        // A JSON escape inside the value still matches, and passes.
        let escaped = format!(
            r#"{{"type":"request","auth":{{"client_token":"\u0068{}"}}}}"#,
            &bogus[1..]
        );
        let e = parse::parse_str(&escaped).unwrap();
        assert!(rule.when.eval(&e));
        assert!(bound.is_candidate(escaped.as_bytes()));
    }

    #[test]
    fn watchlist_tests_are_checked() {
        for (when, needle) in [
            (
                r#"{ field = "*", equals = "x" }"#,
                "only takes `in_watchlist`",
            ),
            (r#"{ field = "*", in_watchlist = [] }"#, "names no list"),
            (
                r#"{ field = "*", in_watchlist = ["!root"] }"#,
                "only narrows",
            ),
            (
                r#"{ field = "*", in_watchlist = "a b" }"#,
                "not a list name",
            ),
            (
                r#"{ field = "nope", in_watchlist = "root" }"#,
                "unknown field",
            ),
            (
                r#"{ field = "auth.accessor", in_watchlist = "a", exists = true }"#,
                "exactly one test",
            ),
        ] {
            let text = MINI.replace(
                r#"when = { field = "path", glob = ["sys/raw", "sys/raw/**"] }"#,
                &format!("when = {when}"),
            );
            let e = RuleSet::from_toml("m.toml", &text).unwrap_err();
            assert!(e.message.contains(needle), "{when}: {e}");
        }
    }

    #[test]
    fn selection_only_and_disable() {
        let ids = |sel: &RuleSelection| -> Vec<String> {
            RuleSet::load_selected(None, sel)
                .unwrap()
                .rules()
                .iter()
                .map(|r| r.id.clone())
                .collect()
        };
        let all = ids(&RuleSelection::default());
        let no_bf = ids(&RuleSelection {
            disable: vec!["brute_force.*".into()],
            ..Default::default()
        });
        assert!(all.iter().any(|i| i == "brute_force.address"));
        assert!(!no_bf.iter().any(|i| i.starts_with("brute_force.")));
        assert_eq!(
            no_bf.len(),
            all.len() - all.iter().filter(|i| i.starts_with("brute_force.")).count()
        );
        let only = ids(&RuleSelection {
            only: vec!["{brute_force,acl}.*".into()],
            disable: vec!["acl.denied_paths".into()],
        });
        assert!(only
            .iter()
            .all(|i| i.starts_with("brute_force.") || i.starts_with("acl.")));
        assert!(only.iter().any(|i| i == "acl.denied_burst"));
        assert!(!only.iter().any(|i| i == "acl.denied_paths"));
        // A rule that is off by default is a known id: disabling it again is fine.
        let same = ids(&RuleSelection {
            disable: vec!["kv.mass_secret_read".into()],
            ..Default::default()
        });
        assert_eq!(same, all);
    }

    #[test]
    fn selection_errors_name_the_glob() {
        for (sel, needle) in [
            (
                RuleSelection {
                    disable: vec!["brute_forse.*".into()],
                    ..Default::default()
                },
                "\"brute_forse.*\" matches no rule",
            ),
            (
                RuleSelection {
                    only: vec!["nope".into()],
                    ..Default::default()
                },
                "\"nope\" matches no rule",
            ),
            (
                RuleSelection {
                    disable: vec!["[".into()],
                    ..Default::default()
                },
                "bad rule glob",
            ),
            (
                RuleSelection {
                    disable: vec!["*".into()],
                    ..Default::default()
                },
                "leaves no rule",
            ),
            (
                RuleSelection {
                    only: vec!["kv.mass_secret_read".into()],
                    ..Default::default()
                },
                "leaves no rule",
            ),
        ] {
            let e = RuleSet::load_selected(None, &sel).unwrap_err().to_string();
            assert!(e.contains(needle), "{sel:?}: {e}");
        }
        assert!(RuleSelection {
            disable: vec!["a{".into()],
            ..Default::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
    }
}
