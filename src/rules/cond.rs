//! Conditions: how a rule tests an entry, and which literals a line must
//! contain for a condition to hold (for the prefilter).
//!
//! `in_watchlist` tests ([`WatchTest`]) compare values with the watch lists of
//! the audit device that wrote the entry; they are false until lists are bound
//! ([`Cond::bind_watchlists`]), and their literals are the listed hashes.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use regex::Regex;
use serde::Deserialize;

use super::field::Field;
use super::prefilter::{ARRAY_ELEMENT, VERBATIM};
use crate::parse::{array_any_str, object_get, path_string, walk_strings, AuditEntry, Value};
use crate::watchlist::{self, DeviceLists, WatchList};

/// A string or a list of strings in a rule file.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// A scalar to compare with.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

/// A condition as written in a rule file: exactly one of `all`, `any`,
/// `not`, or `field` with exactly one test.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CondDef {
    pub all: Option<Vec<CondDef>>,
    pub any: Option<Vec<CondDef>>,
    pub not: Option<Box<CondDef>>,
    pub field: Option<String>,
    pub equals: Option<Scalar>,
    pub prefix: Option<OneOrMany>,
    pub suffix: Option<OneOrMany>,
    pub glob: Option<OneOrMany>,
    pub regex: Option<String>,
    #[serde(rename = "in")]
    pub in_list: Option<Vec<String>>,
    pub contains: Option<OneOrMany>,
    pub exists: Option<bool>,
    pub gt: Option<f64>,
    pub gte: Option<f64>,
    pub lt: Option<f64>,
    pub lte: Option<f64>,
    /// Watch-list names (`"*"`: every list of the device, `"!name"`: except that one).
    pub in_watchlist: Option<OneOrMany>,
}

#[derive(Debug, Clone)]
pub enum Cond {
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
    Leaf {
        field: Field,
        test: Test,
    },
    /// `in_watchlist`: a string value equals a value of a watch list of the entry's device.
    Watch(Box<WatchTest>),
}

/// `{ field = "auth.accessor" | "*", in_watchlist = "name" | ["*", "!name", …] }`.
#[derive(Debug, Clone)]
pub struct WatchTest {
    /// The field as written: `*` for any string value anywhere in the entry.
    pub field_name: String,
    /// `None` for `*`. On an array or object field every string inside counts.
    pub field: Option<Field>,
    /// The lists named; `*` names every list of the device.
    pub names: Vec<String>,
    /// Lists left out of `*`.
    pub except: Vec<String>,
    /// The device's lists the names resolve to (empty until bound: the test is false).
    pub bound: Vec<Arc<WatchList>>,
    /// The device the lists belong to (for findings).
    pub device: Option<Arc<str>>,
}

/// A value that matched a watch list, for a finding's `detail.watchlist`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WatchHit {
    pub device: Option<String>,
    pub list: String,
    pub label: Option<String>,
    /// Where it matched: `request.data.policies[0]`, `auth.client_token`…
    pub field: String,
    /// The list file and line of the value.
    pub entry: String,
}

impl WatchTest {
    fn compile(name: &str, lists: Vec<String>) -> Result<WatchTest, String> {
        let field = if name == "*" {
            None
        } else {
            Some(Field::parse(name)?)
        };
        let mut names = Vec::new();
        let mut except = Vec::new();
        for l in lists {
            match l.strip_prefix('!') {
                Some(x) if watchlist::valid_name(x) => except.push(x.to_owned()),
                None if l == "*" || watchlist::valid_name(&l) => names.push(l),
                _ => {
                    return Err(format!(
                        "in_watchlist: {l:?} is not a list name (A-Z a-z 0-9 . _ -), `*` or `!name`"
                    ))
                }
            }
        }
        if !except.is_empty() && !names.iter().any(|n| n == "*") {
            return Err("in_watchlist: `!name` only narrows `*`".into());
        }
        if names.is_empty() {
            return Err("in_watchlist names no list (`*` is every list)".into());
        }
        Ok(WatchTest {
            field_name: name.to_owned(),
            field,
            names,
            except,
            bound: Vec::new(),
            device: None,
        })
    }

    /// Resolves the names against one device's lists; returns the names it lacks (`*` never
    /// lacks anything).
    fn bind(&mut self, device: Option<&str>, lists: &DeviceLists) -> Vec<String> {
        let mut missing = Vec::new();
        let mut bound: Vec<Arc<WatchList>> = Vec::new();
        for n in &self.names {
            if n == "*" {
                bound.extend(
                    lists
                        .values()
                        .filter(|l| !self.except.contains(&l.name))
                        .cloned(),
                );
            } else {
                match lists.get(n) {
                    Some(l) => bound.push(l.clone()),
                    None => missing.push(n.clone()),
                }
            }
        }
        bound.sort_by(|a, b| a.name.cmp(&b.name));
        bound.dedup_by(|a, b| a.name == b.name);
        self.bound = bound;
        self.device = device.map(Arc::from);
        missing
    }

    fn lookup(&self, s: &str) -> Option<(&WatchList, &watchlist::Entry)> {
        self.bound
            .iter()
            .find_map(|l| l.get(s).map(|e| (l.as_ref(), e)))
    }

    /// Calls `f` for each string of the field (or of the whole entry), with its path, until
    /// `f` returns true.
    fn each_string(&self, e: &AuditEntry<'_>, f: &mut dyn FnMut(&str, &str) -> bool) -> bool {
        let walk = |json: &str, base: &str, f: &mut dyn FnMut(&str, &str) -> bool| {
            walk_strings(json, &mut |p, s| {
                // Only a whole HMAC can match: build the path for those alone.
                s.len() == watchlist::HMAC_LEN && f(&path_string(base, p), s)
            })
        };
        match &self.field {
            None => walk(e.raw, "", f),
            Some(field) => match field.get(e) {
                Value::Str(s) => f(&self.field_name, &s),
                Value::Array(raw) | Value::Object(raw) => walk(raw.get(), &self.field_name, f),
                _ => false,
            },
        }
    }

    fn eval(&self, e: &AuditEntry<'_>) -> bool {
        !self.bound.is_empty() && self.each_string(e, &mut |_, s| self.lookup(s).is_some())
    }

    fn hits(&self, e: &AuditEntry<'_>, out: &mut BTreeSet<WatchHit>) {
        if self.bound.is_empty() {
            return;
        }
        self.each_string(e, &mut |path, s| {
            if let Some((l, entry)) = self.lookup(s) {
                out.insert(WatchHit {
                    device: self.device.as_deref().map(str::to_owned),
                    list: l.name.clone(),
                    label: entry.label.clone(),
                    field: path.to_owned(),
                    entry: format!("{}:{}", l.origin, entry.line),
                });
            }
            false
        });
    }

    fn literals(&self) -> Vec<String> {
        // The hex digits stand verbatim in the line (never JSON-escaped), unless a `\u`
        // escape spells them, which the prefilter's escape evidence covers.
        let mut out: Vec<String> = self
            .bound
            .iter()
            .flat_map(|l| l.values())
            .map(|v| format!("{VERBATIM}{}", &v[watchlist::HMAC_PREFIX.len()..]))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

#[derive(Debug, Clone)]
pub enum Test {
    Equals(Scalar),
    Prefix(Vec<String>),
    Suffix(Vec<String>),
    /// The patterns (for literals), one set matching any of them, and the
    /// literal prefixes every match must start with (`None` when a pattern
    /// starts with a wildcard): a cheap reject before globset.
    Glob(Vec<String>, GlobSet, Option<Vec<String>>),
    Regex(Regex),
    In(Vec<String>),
    Contains(Vec<String>),
    Exists(bool),
    Cmp(CmpOp, f64),
}

#[derive(Debug, Clone, Copy)]
pub enum CmpOp {
    Gt,
    Gte,
    Lt,
    Lte,
}

/// Regexes larger than this are refused (hostile rule files).
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Conditions nested deeper than this are refused.
const MAX_DEPTH: usize = 32;

impl Cond {
    pub fn compile(def: &CondDef) -> Result<Cond, String> {
        Self::compile_at(def, 0)
    }

    fn compile_at(def: &CondDef, depth: usize) -> Result<Cond, String> {
        if depth > MAX_DEPTH {
            return Err(format!("conditions nested deeper than {MAX_DEPTH}"));
        }
        let tests = [
            def.equals.is_some(),
            def.prefix.is_some(),
            def.suffix.is_some(),
            def.glob.is_some(),
            def.regex.is_some(),
            def.in_list.is_some(),
            def.contains.is_some(),
            def.exists.is_some(),
            def.gt.is_some(),
            def.gte.is_some(),
            def.lt.is_some(),
            def.lte.is_some(),
            def.in_watchlist.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        let groups = [
            def.all.is_some(),
            def.any.is_some(),
            def.not.is_some(),
            def.field.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if groups != 1 {
            return Err("a condition needs exactly one of `all`, `any`, `not` or `field`".into());
        }
        if let Some(list) = &def.all {
            if list.is_empty() {
                return Err("`all` is empty".into());
            }
            return Ok(Cond::All(
                list.iter()
                    .map(|c| Self::compile_at(c, depth + 1))
                    .collect::<Result<_, _>>()?,
            ));
        }
        if let Some(list) = &def.any {
            if list.is_empty() {
                return Err("`any` is empty".into());
            }
            return Ok(Cond::Any(
                list.iter()
                    .map(|c| Self::compile_at(c, depth + 1))
                    .collect::<Result<_, _>>()?,
            ));
        }
        if let Some(inner) = &def.not {
            return Ok(Cond::Not(Box::new(Self::compile_at(inner, depth + 1)?)));
        }
        let name = def.field.as_deref().unwrap_or_default();
        if tests != 1 {
            return Err(format!(
                "field {name:?} needs exactly one test (equals, prefix, suffix, glob, regex, in, contains, exists, gt, gte, lt, lte, in_watchlist)"
            ));
        }
        if let Some(lists) = &def.in_watchlist {
            return Ok(Cond::Watch(Box::new(WatchTest::compile(
                name,
                lists.clone().into_vec(),
            )?)));
        }
        if name == "*" {
            return Err("field \"*\" (any value in the entry) only takes `in_watchlist`".into());
        }
        let field = Field::parse(name)?;
        let test = if let Some(v) = &def.equals {
            Test::Equals(v.clone())
        } else if let Some(v) = &def.prefix {
            Test::Prefix(v.clone().into_vec())
        } else if let Some(v) = &def.suffix {
            Test::Suffix(v.clone().into_vec())
        } else if let Some(v) = &def.glob {
            let globs = v.clone().into_vec();
            let mut set = GlobSetBuilder::new();
            for g in &globs {
                set.add(
                    GlobBuilder::new(g)
                        .literal_separator(true)
                        .backslash_escape(true)
                        .build()
                        .map_err(|e| format!("glob {g:?}: {e}"))?,
                );
            }
            let prefixes: Option<Vec<String>> = globs
                .iter()
                .map(|g| {
                    let end = g.find(['*', '?', '[', '{', '\\']).unwrap_or(g.len());
                    (end > 0).then(|| g[..end].to_owned())
                })
                .collect();
            Test::Glob(
                globs.clone(),
                set.build().map_err(|e| format!("glob {globs:?}: {e}"))?,
                prefixes,
            )
        } else if let Some(r) = &def.regex {
            let re = regex::RegexBuilder::new(r)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| format!("regex {r:?}: {e}"))?;
            Test::Regex(re)
        } else if let Some(v) = &def.in_list {
            Test::In(v.clone())
        } else if let Some(v) = &def.contains {
            Test::Contains(v.clone().into_vec())
        } else if let Some(v) = def.exists {
            Test::Exists(v)
        } else if let Some(v) = def.gt {
            Test::Cmp(CmpOp::Gt, v)
        } else if let Some(v) = def.gte {
            Test::Cmp(CmpOp::Gte, v)
        } else if let Some(v) = def.lt {
            Test::Cmp(CmpOp::Lt, v)
        } else {
            Test::Cmp(CmpOp::Lte, def.lte.unwrap_or_default())
        };
        Ok(Cond::Leaf { field, test })
    }

    /// A test that only needs a rare key to be present: a key inside
    /// `request.data` / `response.data`, or the top-level `error` (exists, a
    /// number, a boolean), or any/all of such tests. The prefilter prefers
    /// these to path literals, whose stems are shared by busy paths.
    fn is_data_key(&self) -> bool {
        match self {
            Cond::Leaf { field, test } => {
                let keyed = match field {
                    Field::RequestData(p) | Field::ResponseData(p) => !p.is_empty(),
                    Field::Error => true,
                    _ => false,
                };
                keyed
                    && matches!(
                        test,
                        Test::Exists(true)
                            | Test::Cmp(..)
                            | Test::Equals(Scalar::Bool(_) | Scalar::Int(_) | Scalar::Float(_))
                    )
            }
            Cond::Any(list) | Cond::All(list) => list.iter().all(Cond::is_data_key),
            Cond::Not(_) => false,
            // Listed hashes are rarer than anything else.
            Cond::Watch(_) => true,
        }
    }

    pub fn eval(&self, e: &AuditEntry<'_>) -> bool {
        match self {
            Cond::All(list) => list.iter().all(|c| c.eval(e)),
            Cond::Any(list) => list.iter().any(|c| c.eval(e)),
            Cond::Not(c) => !c.eval(e),
            Cond::Leaf { field, test } => test.eval(&field.get(e)),
            Cond::Watch(w) => w.eval(e),
        }
    }

    /// Binds the watch lists of one device into every `in_watchlist` test (replacing what
    /// was bound before); returns the list names the tests refer to that the device lacks.
    pub fn bind_watchlists(&mut self, device: Option<&str>, lists: &DeviceLists) -> Vec<String> {
        match self {
            Cond::All(list) | Cond::Any(list) => list
                .iter_mut()
                .flat_map(|c| c.bind_watchlists(device, lists))
                .collect(),
            Cond::Not(c) => c.bind_watchlists(device, lists),
            Cond::Leaf { .. } => Vec::new(),
            Cond::Watch(w) => w.bind(device, lists),
        }
    }

    /// Whether the condition has an `in_watchlist` test.
    pub fn uses_watchlists(&self) -> bool {
        match self {
            Cond::All(list) | Cond::Any(list) => list.iter().any(Cond::uses_watchlists),
            Cond::Not(c) => c.uses_watchlists(),
            Cond::Leaf { .. } => false,
            Cond::Watch(_) => true,
        }
    }

    /// The watch-list values of an entry that the `in_watchlist` tests outside any `not`
    /// match (for the finding).
    pub fn watch_hits(&self, e: &AuditEntry<'_>) -> Vec<WatchHit> {
        fn collect(c: &Cond, e: &AuditEntry<'_>, out: &mut BTreeSet<WatchHit>) {
            match c {
                Cond::All(list) | Cond::Any(list) => list.iter().for_each(|c| collect(c, e, out)),
                Cond::Not(_) | Cond::Leaf { .. } => {}
                Cond::Watch(w) => w.hits(e, out),
            }
        }
        let mut out = BTreeSet::new();
        collect(self, e, &mut out);
        out.into_iter().collect()
    }

    /// Literals of which a line must contain at least one for this condition
    /// to hold; `None` when no such set is known (every line is a candidate).
    pub fn literals(&self) -> Option<Vec<String>> {
        match self {
            Cond::Not(_) => None,
            Cond::Any(list) => {
                let mut out = Vec::new();
                for c in list {
                    out.extend(c.literals()?);
                }
                Some(out)
            }
            // One child's set suffices: pick the most selective. A key of a
            // `data` field (`"period"`) is rarer than most paths, which share
            // common stems (`auth/token/lookup-self` stands everywhere). A
            // child with an empty set never holds (an `in_watchlist` with no
            // list bound, `in = []`), and neither does the whole.
            Cond::All(list) => {
                let sets: Vec<(bool, Vec<String>)> = list
                    .iter()
                    .filter_map(|c| c.literals().map(|l| (c.is_data_key(), l)))
                    .collect();
                if sets.iter().any(|(_, l)| l.is_empty()) {
                    return Some(Vec::new());
                }
                sets.into_iter()
                    .max_by_key(|(data_key, lits)| {
                        let shortest = lits.iter().map(String::len).min().unwrap_or(0);
                        (*data_key, shortest.min(12), usize::MAX - lits.len())
                    })
                    .map(|(_, l)| l)
            }
            Cond::Leaf { field, test } => leaf_literals(field, test),
            Cond::Watch(w) => Some(w.literals()),
        }
    }
}

fn leaf_literals(field: &Field, test: &Test) -> Option<Vec<String>> {
    if !field.selective() {
        return None;
    }
    // A value stands in the line JSON-escaped (`"` as `\"`, `\` as `\\`,
    // control characters as `\n`…); the `\u` and `\/` spellings Go may use
    // instead are caught by the prefilter's escape evidence.
    let esc = |v: &str| -> String {
        let j = serde_json::to_string(v).unwrap_or_default();
        j.get(1..j.len().saturating_sub(1))
            .unwrap_or_default()
            .to_owned()
    };
    // Where the value's text sits relative to the JSON quotes.
    enum Ctx {
        /// A string element of an array: `"v"` after `[` or `,`.
        Element,
        /// The whole string value: `"v"`.
        Quoted,
        /// Starts at the opening quote, may end otherwise (`path` drops a trailing `/`).
        StartQuoted,
        /// Anywhere (`login_user` follows `/login/`; `contains` on strings).
        Free,
    }
    let ctx = if field.is_array() {
        Ctx::Element
    } else if matches!(field, Field::Path) {
        Ctx::StartQuoted
    } else if field.is_verbatim() || matches!(field, Field::Error) {
        Ctx::Quoted
    } else {
        Ctx::Free
    };
    let whole = |v: &str| -> String {
        let e = esc(v);
        match ctx {
            Ctx::Element => format!("{ARRAY_ELEMENT}\"{e}\""),
            Ctx::Quoted => format!("\"{e}\""),
            Ctx::StartQuoted => format!("\"{e}"),
            Ctx::Free => e,
        }
    };
    let starts = |v: &str| -> String {
        match ctx {
            Ctx::Free => esc(v),
            _ => format!("\"{}", esc(v)),
        }
    };
    let ends = |v: &str| -> String {
        match ctx {
            Ctx::Quoted | Ctx::Element => format!("{}\"", esc(v)),
            _ => esc(v),
        }
    };
    // A key's literal: its name and closing quote. The opening quote is left
    // out, and `a_b` keeps only `_b"`: the SIMD search fingerprints a
    // pattern's first bytes, and `"po…`, `"no…` begin keys on every line.
    let key = || {
        field.json_key().map(|k| {
            let tail = k
                .find('_')
                .map(|i| &k[i..])
                .filter(|t| t.len() >= 5)
                .unwrap_or(&k);
            vec![format!("{tail}\"")]
        })
    };
    let usable = |lits: Vec<String>| -> Option<Vec<String>> {
        // Too short to narrow anything down (and an empty literal matches all).
        let body = |l: &String| l.trim_start_matches(ARRAY_ELEMENT).trim_matches('"').len();
        (lits.iter().all(|l| body(l) >= 3)).then_some(lits)
    };
    match test {
        Test::Equals(Scalar::Str(v)) => usable(vec![whole(v)]),
        Test::Equals(_) | Test::Cmp(..) | Test::Exists(true) => key(),
        Test::Exists(false) => None,
        Test::In(list) => usable(list.iter().map(|v| whole(v)).collect()),
        Test::Prefix(list) => usable(list.iter().map(|p| starts(p)).collect()),
        Test::Suffix(list) => usable(list.iter().map(|v| ends(v)).collect()),
        Test::Contains(list) => match ctx {
            // On an array, `contains` is element equality.
            Ctx::Element => usable(list.iter().map(|v| whole(v)).collect()),
            // On a string a substring, on an object a key: the plain text covers both.
            _ => usable(list.iter().map(|v| esc(v)).collect()),
        },
        Test::Glob(globs, _, _) => usable(
            globs
                .iter()
                .map(|g| glob_literal(g).map(|l| esc(&l)))
                .collect::<Option<Vec<_>>>()?,
        ),
        Test::Regex(_) => None,
    }
}

/// The longest run of plain characters in a glob (outside `*`, `?`,
/// `[…]` classes — where a `]` right after `[` or `[!` is a member — and
/// `{…}` alternations, and never across a `\` escape).
fn glob_literal(glob: &str) -> Option<String> {
    let chars: Vec<char> = glob.chars().collect();
    let mut best = String::new();
    let mut run = String::new();
    let mut i = 0;
    let mut braces = 0usize;
    let flush = |run: &mut String, best: &mut String| {
        if run.len() > best.len() {
            *best = run.clone();
        }
        run.clear();
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '[' => {
                flush(&mut run, &mut best);
                i += 1;
                if chars.get(i) == Some(&'!') {
                    i += 1;
                }
                if chars.get(i) == Some(&']') {
                    i += 1;
                }
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
            }
            '{' => {
                flush(&mut run, &mut best);
                braces += 1;
            }
            '}' if braces > 0 => braces -= 1,
            '*' | '?' | '\\' => flush(&mut run, &mut best),
            _ if braces > 0 => {}
            _ => run.push(c),
        }
        i += 1;
    }
    flush(&mut run, &mut best);
    (!best.is_empty()).then_some(best)
}

impl Test {
    fn eval(&self, v: &Value<'_>) -> bool {
        match (self, v) {
            (Test::Exists(want), v) => *want != v.is_missing(),
            (_, Value::Missing) => false,
            (Test::Equals(Scalar::Bool(b)), Value::Bool(x)) => b == x,
            (Test::Equals(Scalar::Int(i)), Value::Num(x)) => (*i as f64) == *x,
            (Test::Equals(Scalar::Float(f)), Value::Num(x)) => f == x,
            (Test::Cmp(op, n), Value::Num(x)) => match op {
                CmpOp::Gt => x > n,
                CmpOp::Gte => x >= n,
                CmpOp::Lt => x < n,
                CmpOp::Lte => x <= n,
            },
            (Test::Contains(keys), Value::Object(raw)) => {
                keys.iter().any(|k| object_get(raw, k).is_some())
            }
            (Test::Contains(subs), Value::Str(s)) => subs.iter().any(|x| s.contains(x.as_str())),
            (Test::Contains(items), Value::Array(raw)) => {
                array_any_str(raw, &mut |s| items.iter().any(|i| i == s))
            }
            (t, Value::Str(s)) => t.eval_str(s),
            (t, Value::Array(raw)) => array_any_str(raw, &mut |s| t.eval_str(s)),
            _ => false,
        }
    }

    fn eval_str(&self, s: &str) -> bool {
        match self {
            Test::Equals(Scalar::Str(v)) => s == v,
            Test::Prefix(list) => list.iter().any(|p| s.starts_with(p.as_str())),
            Test::Suffix(list) => list.iter().any(|p| s.ends_with(p.as_str())),
            Test::Glob(_, set, prefixes) => {
                prefixes
                    .as_ref()
                    .is_none_or(|p| p.iter().any(|p| s.starts_with(p.as_str())))
                    && set.is_match(s)
            }
            Test::Regex(re) => re.is_match(s),
            Test::In(list) => list.iter().any(|v| v == s),
            Test::Contains(list) => list.iter().any(|v| s.contains(v.as_str())),
            _ => false,
        }
    }
}

/// A string value of a field, if it has one (for throttle keys and details).
pub fn value_string(v: &Value<'_>) -> Option<String> {
    match v {
        Value::Str(Cow::Borrowed(s)) => Some((*s).to_owned()),
        Value::Str(Cow::Owned(s)) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Num(n) => Some(n.to_string()),
        Value::Array(raw) | Value::Object(raw) => Some(raw.get().to_owned()),
        Value::Missing => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(toml_src: &str) -> Cond {
        let def: CondDef = toml::from_str(toml_src).unwrap();
        Cond::compile(&def).unwrap()
    }

    #[test]
    fn glob_literals() {
        assert_eq!(glob_literal("sys/raw/*").as_deref(), Some("sys/raw/"));
        assert_eq!(glob_literal("auth/**/login").as_deref(), Some("/login"));
        assert_eq!(
            glob_literal("sys/{rekey,rekey-recovery-key}/*").as_deref(),
            Some("sys/")
        );
        assert_eq!(glob_literal("*").as_deref(), None);
        assert_eq!(glob_literal("[]abcdefgh]x").as_deref(), Some("x"));
        assert_eq!(glob_literal("[!]ab]cdef").as_deref(), Some("cdef"));
    }

    #[test]
    fn literal_sets() {
        let c = cond(
            r#"all = [{field="kind", equals="response"}, {field="response.auth.policies", contains="root"}]"#,
        );
        let lits = c.literals().unwrap();
        assert_eq!(lits, vec!["\u{1}\"root\"".to_owned()]);
        assert!(!lits.contains(&"\"root\"".to_owned()));
        let c =
            cond(r#"any = [{field="path", prefix="sys/raw"}, {not={field="kind", equals="x"}}]"#);
        assert!(c.literals().is_none());
        let c = cond(
            r#"field = "path"
glob = ["sys/rotate", "sys/rotate/**"]"#,
        );
        assert_eq!(c.literals().unwrap(), vec!["sys/rotate", "sys/rotate/"]);
    }

    #[test]
    fn bad_conditions_are_refused() {
        for src in [
            r#"field = "path""#,
            r#"field = "path"
prefix = "a"
glob = "b""#,
            r#"all = []"#,
            r#"field = "nope"
exists = true"#,
            r#"field = "path"
regex = "(""#,
        ] {
            let def: CondDef = toml::from_str(src).unwrap();
            assert!(Cond::compile(&def).is_err(), "{src}");
        }
        let huge = format!("field = \"path\"\nregex = \"{}\"", "a{1000}{1000}");
        let def: CondDef = toml::from_str(&huge).unwrap();
        assert!(Cond::compile(&def).is_err());
    }

    #[test]
    fn evaluates_entries() {
        let line = r#"{"type":"response","auth":{"policies":["default","root"]},"request":{"path":"sys/policies/acl/x/","operation":"list"},"response":{"data":{"complete":true,"keys":["a"]}},"error":""}"#;
        let e = crate::parse::parse_str(line).unwrap();
        assert!(cond(
            r#"field="auth.policies"
contains="root""#
        )
        .eval(&e));
        assert!(cond(
            r#"field="auth.policies"
prefix="de""#
        )
        .eval(&e));
        assert!(cond(
            r#"field="path"
equals="sys/policies/acl/x""#
        )
        .eval(&e));
        assert!(cond(
            r#"field="path"
glob="sys/policies/*/*""#
        )
        .eval(&e));
        assert!(
            !cond(
                r#"field="path"
glob="sys/*""#
            )
            .eval(&e),
            "* does not cross /"
        );
        assert!(cond(
            r#"field="response.data.complete"
equals=true"#
        )
        .eval(&e));
        assert!(cond(
            r#"field="response.data"
contains="keys""#
        )
        .eval(&e));
        assert!(
            cond(
                r#"field="error"
exists=false"#
            )
            .eval(&e),
            "empty error means none"
        );
        assert!(!cond(
            r#"field="write"
equals=true"#
        )
        .eval(&e));
    }
}
