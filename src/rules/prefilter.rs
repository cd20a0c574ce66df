//! The literal prefilter: which lines can any rule match?
//!
//! Three kinds of evidence make a line a candidate:
//! * a plain literal (`sys/`, `/login`, `permission denied`…), found with one
//!   Aho-Corasick automaton (Teddy, SIMD, when the set is small);
//! * an *array element* literal such as `"root"` that only counts when the
//!   nearest non-blank byte before it is `[` or `,` (in an array, never after
//!   the `:` of an object member like `"namespace_id":"root"`, which stands in
//!   nearly every OpenBao line);
//! * a `\u` or `\/` escape, the only JSON escapes that can spell a literal's
//!   characters, found with `memchr`.
//!
//! Watch-list hashes (the hex digits of each listed `hmac-sha256:` value, see
//! [`crate::watchlist`]) are plain literals of the automaton, added when the
//! lists of a device are bound into the rule set; they skip the minimisation
//! ([`VERBATIM`]). A few hundred keep the search fast; many thousands turn
//! Teddy off and slow the scan down.
//!
//! It may say "maybe" too often, never too rarely. Patterns are kept at 3
//! bytes or more so Teddy fingerprints three bytes: two-byte fingerprints such
//! as `,"` match everywhere in JSON and made the scan several times slower.

use aho_corasick::{AhoCorasick, Input, MatchKind};

/// Marks a literal that only counts as an array element (see the module docs).
pub const ARRAY_ELEMENT: char = '\u{1}';

/// Marks a literal searched as it is, outside the minimisation (watch-list hashes: many,
/// long and random, so neither stems nor containment would shrink them).
pub const VERBATIM: char = '\u{2}';

/// One searched pattern. When `members` is not empty the pattern is a
/// shared stem, and a hit counts only where one of the members stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub text: String,
    pub members: Vec<String>,
}

pub struct Prefilter {
    ac: AhoCorasick,
    /// The one pattern, when there is only one: memmem beats the automaton
    /// (a single `/login` made it fall back to a slow rare-byte search).
    single: Option<memchr::memmem::Finder<'static>>,
    array_element: Vec<bool>,
    /// Per pattern: (member bytes, offset of the stem inside the member).
    members: Vec<Vec<(Vec<u8>, usize)>>,
    /// Per pattern: a gate pattern (lazy window triggers), not candidate evidence. Searched in
    /// the same pass as the candidate patterns, so gating costs no second scan of the data.
    gate: Vec<bool>,
}

/// What a hit of [`Scanner::next_any`] is evidence of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// The line is a candidate (a pattern, an array element or an escape).
    Candidate,
    /// Only a gate pattern: the line goes to the lazy triggers unless it is a candidate.
    Gate,
}

impl Prefilter {
    pub fn new(literals: &[Pattern]) -> Result<Prefilter, aho_corasick::BuildError> {
        Self::with_gate(literals, &[])
    }

    /// Candidate patterns and gate patterns in one automaton (candidates first: at one
    /// position a candidate pattern wins). Gate patterns must not start with `\`.
    pub fn with_gate(
        literals: &[Pattern],
        gate_literals: &[Pattern],
    ) -> Result<Prefilter, aho_corasick::BuildError> {
        let mut patterns = Vec::with_capacity(literals.len() + gate_literals.len());
        let mut array_element = Vec::with_capacity(patterns.capacity());
        let mut members = Vec::with_capacity(patterns.capacity());
        let mut gate = Vec::with_capacity(patterns.capacity());
        for (p, is_gate) in literals
            .iter()
            .map(|p| (p, false))
            .chain(gate_literals.iter().map(|p| (p, true)))
        {
            gate.push(is_gate);
            let mut verify = Vec::new();
            for m in &p.members {
                for (off, _) in m.match_indices(p.text.as_str()) {
                    verify.push((m.as_bytes().to_vec(), off));
                }
            }
            members.push(verify);
            let l = &p.text;
            match l.strip_prefix(ARRAY_ELEMENT) {
                Some(rest) => {
                    patterns.push(rest.to_owned());
                    array_element.push(true);
                }
                None => {
                    patterns.push(l.clone());
                    array_element.push(false);
                }
            }
        }
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .build(&patterns)?;
        let single = match patterns.as_slice() {
            [one] => Some(memchr::memmem::Finder::new(one.as_bytes()).into_owned()),
            _ => None,
        };
        Ok(Prefilter {
            ac,
            single,
            array_element,
            members,
            gate,
        })
    }

    /// Start of the first verified literal at or after `from`, and whether it is a gate
    /// pattern.
    fn next_literal(&self, hay: &[u8], mut from: usize) -> Option<(usize, bool)> {
        while from < hay.len() {
            let (start, i) = match &self.single {
                Some(f) => (from + f.find(&hay[from..])?, 0),
                None => {
                    let m = self.ac.find(Input::new(hay).range(from..))?;
                    (m.start(), m.pattern().as_usize())
                }
            };
            let members = &self.members[i];
            let member_ok = members.is_empty()
                || members
                    .iter()
                    .any(|(lit, off)| start >= *off && hay[start - off..].starts_with(lit));
            if member_ok && (!self.array_element[i] || in_array(hay, start)) {
                return Some((start, self.gate[i]));
            }
            from = start + 1;
        }
        None
    }
}

/// Whether the value starting at `at` follows `[` or `,` (blanks skipped).
fn in_array(hay: &[u8], at: usize) -> bool {
    hay[..at]
        .iter()
        .rev()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .is_some_and(|b| matches!(b, b'[' | b','))
}

/// Start of the first `\u` or `\/` at or after `from`.
fn next_escape(hay: &[u8], from: usize) -> Option<usize> {
    let mut pos = from;
    while let Some(p) = memchr::memchr(b'\\', &hay[pos.min(hay.len())..]) {
        let at = pos + p;
        match hay.get(at + 1) {
            Some(b'u') | Some(b'/') => return Some(at),
            // `\\` is one escaped backslash: skip both bytes.
            Some(_) => pos = at + 2,
            None => return None,
        }
    }
    None
}

/// Walks one buffer forward, remembering the next hit of each kind so no
/// byte is searched twice.
pub struct Scanner<'a> {
    pf: Option<&'a Prefilter>,
    hay: &'a [u8],
    /// (searched from, next hit) for literals (with their gate flag) and escapes.
    lit: Option<(usize, Option<(usize, bool)>)>,
    esc: Option<(usize, Option<usize>)>,
    /// Whether `\u`/`\/` escapes count as hits.
    escapes: bool,
}

impl<'a> Scanner<'a> {
    /// With no prefilter every position is a candidate.
    pub fn new(pf: Option<&'a Prefilter>, hay: &'a [u8]) -> Self {
        Scanner {
            pf,
            hay,
            lit: None,
            esc: None,
            escapes: true,
        }
    }

    /// A scanner of literals only: for a second pass over lines whose
    /// escapes the first scanner already made candidates.
    pub fn literals_only(pf: &'a Prefilter, hay: &'a [u8]) -> Self {
        Scanner {
            escapes: false,
            ..Scanner::new(Some(pf), hay)
        }
    }

    /// Position of the next candidate evidence at or after `from`, which
    /// must be a line start (never inside an escape sequence). Gate hits are passed over.
    pub fn next(&mut self, from: usize) -> Option<usize> {
        let mut from = from;
        loop {
            match self.next_any(from)? {
                (at, Evidence::Candidate) => return Some(at),
                (at, Evidence::Gate) => from = at + 1,
            }
        }
    }

    /// The next evidence of either kind at or after `from`, which must be a line start or
    /// just after a gate hit (never inside an escape sequence).
    pub fn next_any(&mut self, from: usize) -> Option<(usize, Evidence)> {
        if from >= self.hay.len() {
            return None;
        }
        let Some(pf) = self.pf else {
            return Some((from, Evidence::Candidate));
        };
        let hay = self.hay;
        let lit =
            cached(&mut self.lit, from, |h| h.0, |f| pf.next_literal(hay, f)).map(|(at, gate)| {
                (
                    at,
                    if gate {
                        Evidence::Gate
                    } else {
                        Evidence::Candidate
                    },
                )
            });
        if !self.escapes {
            return lit;
        }
        let esc = cached(&mut self.esc, from, |h| *h, |f| next_escape(hay, f));
        match (lit, esc) {
            (Some(l), Some(e)) if e <= l.0 => Some((e, Evidence::Candidate)),
            (Some(l), _) => Some(l),
            (None, e) => e.map(|e| (e, Evidence::Candidate)),
        }
    }
}

/// A cached "next hit" stays valid while it lies at or after `from`: nothing
/// was found between where the search began and the hit.
fn cached<T: Copy>(
    slot: &mut Option<(usize, Option<T>)>,
    from: usize,
    at: impl Fn(&T) -> usize,
    search: impl FnOnce(usize) -> Option<T>,
) -> Option<T> {
    match *slot {
        Some((start, hit)) if start <= from && hit.as_ref().is_none_or(|h| at(h) >= from) => hit,
        _ => {
            let hit = search(from);
            *slot = Some((from, hit));
            hit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf(lits: &[&str]) -> Prefilter {
        let pats: Vec<Pattern> = lits
            .iter()
            .map(|s| Pattern {
                text: s.to_string(),
                members: Vec::new(),
            })
            .collect();
        Prefilter::new(&pats).unwrap()
    }

    #[test]
    fn array_elements_need_an_array() {
        let p = pf(&["\u{1}\"root\""]);
        let hit = |s: &str| Scanner::new(Some(&p), s.as_bytes()).next(0).is_some();
        assert!(hit(r#"{"policies":["root"]}"#));
        assert!(hit(r#"{"policies":["default","root"]}"#));
        assert!(hit(r#"{"policies": [ "default" , "root" ]}"#));
        assert!(!hit(
            r#"{"namespace":{"id":"root"},"namespace_id":"root","x":1}"#
        ));
        // The first occurrence fails the check, a later one passes.
        assert!(hit(r#"{"namespace_id":"root","policies":["root"]}"#));
    }

    #[test]
    fn escapes_are_candidates_but_escaped_backslashes_are_not() {
        let p = pf(&["sys/"]);
        let hit = |s: &str| Scanner::new(Some(&p), s.as_bytes()).next(0);
        assert_eq!(hit(r#"{"p":"\u0073ys"}"#), Some(6));
        assert_eq!(hit(r#"{"p":"a\/b"}"#), Some(7));
        assert_eq!(hit(r#"{"p":"a\\ub"}"#), None);
        assert_eq!(hit(r#"{"p":"a\\\u0062"}"#), Some(9));
        assert_eq!(hit(r#"{"p":"a\n"}"#), None);
    }

    #[test]
    fn gate_patterns_share_the_pass_and_are_not_candidates() {
        let pat = |s: &str| Pattern {
            text: s.to_string(),
            members: Vec::new(),
        };
        let p = Prefilter::with_gate(&[pat("sys/")], &[pat("/login")]).unwrap();
        let hay = br#"{"path":"auth/up/login/x"}
{"path":"sys/raw","x":"auth/up/login"}
{"p":"a\/login"}
"#;
        let mut s = Scanner::new(Some(&p), hay);
        let mut hits = Vec::new();
        let mut from = 0;
        while let Some(h) = s.next_any(from) {
            hits.push(h);
            from = h.0 + 1;
        }
        let l2 = hay.iter().position(|&b| b == b'\n').unwrap() + 1;
        let l3 = l2 + hay[l2..].iter().position(|&b| b == b'\n').unwrap() + 1;
        assert_eq!(hits[0], (16, Evidence::Gate));
        assert_eq!(hits[1], (l2 + 9, Evidence::Candidate));
        assert_eq!(hits[2], (l2 + 30, Evidence::Gate));
        assert_eq!(hits[3], (l3 + 7, Evidence::Candidate), "the escape");
        assert_eq!(hits[4], (l3 + 8, Evidence::Gate));
        assert_eq!(hits.len(), 5);
        // `next` reports candidates only.
        let mut s = Scanner::new(Some(&p), hay);
        assert_eq!(s.next(0), Some(l2 + 9));
        assert_eq!(s.next(l3), Some(l3 + 7));
        assert_eq!(Scanner::new(Some(&p), &hay[..l2]).next(0), None);
    }

    #[test]
    fn scanner_finds_every_hit_in_order() {
        let p = pf(&["abc", "\u{1}\"x\""]);
        let hay = br#"abc..\u..["x"]..abc..{"k":"x"}..\/"#;
        let mut s = Scanner::new(Some(&p), hay);
        let mut hits = Vec::new();
        let mut from = 0;
        while let Some(h) = s.next(from) {
            hits.push(h);
            from = h + 1;
        }
        assert_eq!(hits, vec![0, 5, 10, 16, 32]);
    }
}
