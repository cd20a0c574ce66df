//! Conditions: how a rule tests an entry, and which literals a line must
//! contain for a condition to hold (for the prefilter).

use std::borrow::Cow;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use regex::Regex;
use serde::Deserialize;

use super::field::Field;
use super::prefilter::ARRAY_ELEMENT;
use crate::parse::{array_any_str, object_get, AuditEntry, Value};

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
}

#[derive(Debug)]
pub enum Cond {
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
    Leaf { field: Field, test: Test },
}

#[derive(Debug)]
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
        let field = Field::parse(name)?;
        if tests != 1 {
            return Err(format!(
                "field {name:?} needs exactly one test (equals, prefix, suffix, glob, regex, in, contains, exists, gt, gte, lt, lte)"
            ));
        }
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
        }
    }

    pub fn eval(&self, e: &AuditEntry<'_>) -> bool {
        match self {
            Cond::All(list) => list.iter().all(|c| c.eval(e)),
            Cond::Any(list) => list.iter().any(|c| c.eval(e)),
            Cond::Not(c) => !c.eval(e),
            Cond::Leaf { field, test } => test.eval(&field.get(e)),
        }
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
            // common stems (`auth/token/lookup-self` stands everywhere).
            Cond::All(list) => list
                .iter()
                .filter_map(|c| c.literals().map(|l| (c.is_data_key(), l)))
                .max_by_key(|(data_key, lits)| {
                    let shortest = lits.iter().map(String::len).min().unwrap_or(0);
                    (*data_key, shortest.min(12), usize::MAX - lits.len())
                })
                .map(|(_, l)| l),
            Cond::Leaf { field, test } => leaf_literals(field, test),
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
