//! `auditwatch rules explain RULE`: a rule's definition as written, what a
//! line needs before the rule can match it, its state, and its fixtures
//! with their result now.

use serde::Serialize;

use super::prefilter::{ARRAY_ELEMENT, VERBATIM};
use super::{Expect, Rule, RuleSet, BUILTIN};

/// Everything `rules explain` shows about one rule.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub id: String,
    pub title: String,
    pub category: String,
    pub severity: String,
    pub origin: String,
    pub description: String,
    pub references: Vec<String>,
    /// The rule's `[[rule]]` block as written in its file (fixtures included).
    pub definition: Option<String>,
    pub needs: Needs,
    pub fixtures: Vec<FixtureResult>,
}

/// What a line must have, and what the rule keeps, to fire.
#[derive(Debug, Serialize)]
pub struct Needs {
    /// The line is parsed for this rule only if it contains one of these
    /// (as JSON text); `None`: every line is parsed for it.
    pub literals: Option<Vec<String>>,
    /// Literals that count only as an element of a JSON array.
    pub array_literals: Vec<String>,
    /// Watch lists the rule reads (per audit device: `--device`, `--watchlist`).
    pub watchlists: bool,
    /// `{group_by, count, within_seconds, distinct, max_keys}` for window rules.
    pub window: Option<serde_json::Value>,
    /// `{key, window_seconds}` for throttled rules.
    pub throttle: Option<serde_json::Value>,
    /// Whether a finding on a request waits for its response (no window, no throttle).
    pub correlated: bool,
    /// For a lazy trigger: the JSON key read from raw lines to decide whether to parse them.
    pub lazy_trigger_key: Option<String>,
    /// Fields copied into the finding's `detail`.
    pub detail: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct FixtureResult {
    pub expect: &'static str,
    pub source: String,
    pub note: String,
    pub line: String,
    /// `None` when it behaves as expected, else what went wrong.
    pub failure: Option<String>,
}

/// Explains rule `id` of `set`; `None` when there is no such rule.
pub fn explain(set: &RuleSet, id: &str) -> Option<Explanation> {
    let rule = set.find(id)?;
    let failures = set.test_fixtures();
    let fixtures = rule
        .fixtures
        .iter()
        .enumerate()
        .map(|(i, fx)| FixtureResult {
            expect: match fx.expect {
                Expect::Fire => "fire",
                Expect::Quiet => "quiet",
            },
            source: fx.source.clone(),
            note: fx.note.clone(),
            line: fx.line.clone(),
            failure: failures
                .iter()
                .find(|f| f.rule == rule.id && f.index == i + 1)
                .map(|f| f.problem.clone()),
        })
        .collect();
    let (literals, array_literals) = match &rule.literals {
        None => (None, Vec::new()),
        Some(all) => {
            let mut plain = Vec::new();
            let mut arrays = Vec::new();
            for l in all {
                let (list, text) = match l.strip_prefix(ARRAY_ELEMENT) {
                    Some(a) => (&mut arrays, a),
                    None => (&mut plain, l.trim_start_matches(VERBATIM)),
                };
                if !list.iter().any(|x: &String| x == text) {
                    list.push(text.to_owned());
                }
            }
            (Some(plain), arrays)
        }
    };
    Some(Explanation {
        id: rule.id.clone(),
        title: rule.title.clone(),
        category: rule.category.clone(),
        severity: rule.severity.as_str().to_owned(),
        origin: rule.origin.clone(),
        description: rule.description.trim().to_owned(),
        references: rule.references.clone(),
        definition: definition(rule),
        needs: Needs {
            literals,
            array_literals,
            watchlists: rule.when.uses_watchlists(),
            window: rule.window.as_ref().map(|w| {
                serde_json::json!({
                    "group_by": w.group_names,
                    "count": w.count,
                    "within_seconds": w.within.as_secs_f64(),
                    "distinct": w.distinct.as_ref().map(|(name, _)| name),
                    "max_keys": w.max_keys,
                })
            }),
            throttle: rule.throttle.as_ref().map(
                |t| serde_json::json!({ "key": t.key_names, "window_seconds": t.window.as_secs() }),
            ),
            correlated: rule.window.is_none() && rule.throttle.is_none(),
            lazy_trigger_key: rule
                .window
                .as_ref()
                .and_then(|w| w.lazy_trigger_key.clone()),
            detail: rule.detail.iter().map(|(name, _)| name.clone()).collect(),
        },
        fixtures,
    })
}

/// The rule's `[[rule]]` block, from its file (built-ins from the binary).
fn definition(rule: &Rule) -> Option<String> {
    let (file, line) = rule.origin.rsplit_once(':')?;
    let line: usize = line.parse().ok()?;
    let text = match BUILTIN.iter().find(|(name, _)| *name == file) {
        Some((_, text)) => (*text).to_owned(),
        None => std::fs::read_to_string(file).ok()?,
    };
    let lines: Vec<&str> = text.lines().collect();
    let is_header = |l: &str| l.trim_start().starts_with("[[rule]]");
    let start = (0..line.min(lines.len()))
        .rev()
        .find(|&i| is_header(lines[i]))?;
    let end = (start + 1..lines.len())
        .find(|&i| is_header(lines[i]))
        .unwrap_or(lines.len());
    let block = lines[start..end].join("\n");
    Some(block.trim_end().to_owned())
}

/// The explanation as readable text.
pub fn render_text(e: &Explanation) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "{} ({}, {})", e.id, e.severity, e.category);
    let _ = writeln!(s, "  {}", e.title);
    let _ = writeln!(s, "  defined at {}", e.origin);
    let _ = writeln!(
        s,
        "\nWhy it matters:\n  {}",
        e.description.replace('\n', "\n  ")
    );
    for r in &e.references {
        let _ = writeln!(s, "  see {r}");
    }
    let _ = writeln!(s, "\nWhat it needs:");
    match &e.needs.literals {
        None => {
            let _ = writeln!(
                s,
                "  every line is parsed for it (no literal a line must hold)"
            );
        }
        Some(l) => {
            let _ = writeln!(
                s,
                "  a line is parsed for it only if it contains one of: {}",
                l.iter()
                    .map(|x| format!("{x:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if !e.needs.array_literals.is_empty() {
        let _ = writeln!(
            s,
            "  or, as an element of a JSON array: {}",
            e.needs
                .array_literals
                .iter()
                .map(|x| format!("{x:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if e.needs.watchlists {
        let _ = writeln!(
            s,
            "  watch lists of the device that wrote the entry (--device, --watchlist; [[watchlist]] in run)"
        );
    }
    if let Some(w) = &e.needs.window {
        let _ = writeln!(s, "  a window: {w}");
    }
    if let Some(k) = &e.needs.lazy_trigger_key {
        let _ = writeln!(
            s,
            "  a lazy trigger: a line only it selects is parsed when its {k:?} value has a full window"
        );
    }
    if let Some(t) = &e.needs.throttle {
        let _ = writeln!(s, "  a throttle (one finding per key per window): {t}");
    }
    if e.needs.correlated {
        let _ = writeln!(
            s,
            "  a finding on a request waits for its response (--correlate-wait)"
        );
    }
    if !e.needs.detail.is_empty() {
        let _ = writeln!(s, "  detail fields: {}", e.needs.detail.join(", "));
    }
    let _ = writeln!(s, "\nFixtures:");
    for (i, f) in e.fixtures.iter().enumerate() {
        let verdict = match &f.failure {
            None => "ok".to_owned(),
            Some(p) => format!("FAIL: {p}"),
        };
        let _ = writeln!(
            s,
            "  {}. expect {} [{}] {} {}",
            i + 1,
            f.expect,
            verdict,
            f.source,
            if f.note.is_empty() {
                String::new()
            } else {
                format!("({})", f.note)
            }
        );
        let _ = writeln!(s, "     {}", f.line);
    }
    if let Some(d) = &e.definition {
        let _ = writeln!(s, "\nDefinition:\n{d}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_a_builtin_rule_with_its_definition_needs_and_fixtures() {
        let set = RuleSet::builtin().unwrap();
        let e = explain(&set, "privileged.policy_change").unwrap();
        let def = e.definition.as_deref().unwrap();
        assert!(def.starts_with("[[rule]]"), "{def}");
        assert!(def.contains("id = \"privileged.policy_change\""));
        assert_eq!(def.matches("[[rule]]").count(), 1, "one rule only");
        assert!(e.needs.literals.as_ref().is_some_and(|l| !l.is_empty()));
        assert!(e.needs.correlated);
        assert!(e.fixtures.iter().any(|f| f.expect == "fire"));
        assert!(e.fixtures.iter().any(|f| f.expect == "quiet"));
        assert!(e.fixtures.iter().all(|f| f.failure.is_none()));
        let text = render_text(&e);
        assert!(text.contains("What it needs:") && text.contains("Fixtures:"));

        let w = explain(&set, "brute_force.address").unwrap();
        assert!(w.needs.window.is_some() && !w.needs.correlated);
        assert!(explain(&set, "no.such.rule").is_none());
    }

    #[test]
    fn a_broken_fixture_is_shown_failing() {
        let toml = r#"
[[rule]]
id = "t.kv"
title = "t"
category = "c"
severity = "low"
description = "d"
[rule.when]
all = [{ field = "path", prefix = "kv/" }]
[[rule.fixture]]
expect = "fire"
line = '{"type":"request","request":{"path":"other/x"}}'
[[rule.fixture]]
expect = "quiet"
line = '{"type":"request","request":{"path":"other/y"}}'
"#;
        let set = RuleSet::from_toml("t.toml", toml).unwrap();
        let e = explain(&set, "t.kv").unwrap();
        assert!(e.fixtures[0].failure.is_some());
        assert!(e.fixtures[1].failure.is_none());
        assert!(render_text(&e).contains("FAIL"));
    }
}
