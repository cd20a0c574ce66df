//! A borrowed, zero-copy view of one audit entry.
//!
//! [`AuditEntry`] holds only the fields rules need. Strings borrow from the
//! line (`Cow::Borrowed`) unless a JSON escape forces a copy (about 3% of real
//! lines carry one). Arrays, maps and `data` objects stay raw JSON
//! (`&RawValue`) and are only walked when a rule asks, so a typical parse
//! allocates nothing. Every field is optional: Vault's KMIP entries have no
//! `auth`, dev bootstrap entries have no `request.id`.
//!
//! Hostile input: serde_json skips unknown values iteratively (a 1,000,000-deep
//! array inside `request.data` parses; one in a typed field is an error, never
//! a stack overflow), and a field given twice is rejected, which closes off
//! parser-differential tricks such as `{"path":"sys/audit","path":"kv/x"}`.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

type Str<'a> = Option<Cow<'a, str>>;
type Raw<'a> = Option<&'a RawValue>;

#[derive(Debug, Default, Deserialize)]
pub struct AuditEntry<'a> {
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub time: Str<'a>,
    #[serde(borrow, default, rename = "type", deserialize_with = "opt_cow")]
    pub kind: Str<'a>,
    #[serde(borrow, default)]
    pub auth: Option<Auth<'a>>,
    #[serde(borrow, default)]
    pub request: Option<Request<'a>>,
    #[serde(borrow, default)]
    pub response: Option<Response<'a>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub error: Str<'a>,
    /// The whole line (set by [`parse_str`]), for tests that look at every value
    /// (`in_watchlist` on field `*`, see [`walk_strings`]).
    #[serde(skip)]
    pub raw: &'a str,
}

#[derive(Debug, Default, Deserialize)]
pub struct Auth<'a> {
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub client_token: Str<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub accessor: Str<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub display_name: Str<'a>,
    #[serde(borrow, default)]
    pub policies: Raw<'a>,
    #[serde(borrow, default)]
    pub token_policies: Raw<'a>,
    #[serde(borrow, default)]
    pub identity_policies: Raw<'a>,
    #[serde(borrow, default)]
    pub metadata: Raw<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub entity_id: Str<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub token_type: Str<'a>,
    #[serde(default)]
    pub token_ttl: Option<i64>,
    #[serde(default)]
    pub num_uses: Option<i64>,
    #[serde(default)]
    pub policy_results: Option<PolicyResults>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PolicyResults {
    #[serde(default)]
    pub allowed: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Namespace<'a> {
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub id: Str<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub path: Str<'a>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Request<'a> {
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub id: Str<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub operation: Str<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub path: Str<'a>,
    #[serde(borrow, default)]
    pub namespace: Option<Namespace<'a>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub mount_type: Str<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub mount_point: Str<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub mount_class: Str<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub remote_address: Str<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub client_token: Str<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub client_token_accessor: Str<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub client_id: Str<'a>,
    #[serde(default)]
    pub policy_override: Option<bool>,
    #[serde(default)]
    pub wrap_ttl: Option<i64>,
    #[serde(borrow, default)]
    pub data: Raw<'a>,
}

#[derive(Debug, Default, Deserialize)]
pub struct WrapInfo<'a> {
    #[serde(default)]
    pub ttl: Option<i64>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub token: Str<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub accessor: Str<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub creation_time: Str<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub creation_path: Str<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub wrapped_accessor: Str<'a>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Response<'a> {
    #[serde(borrow, default)]
    pub auth: Option<Auth<'a>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    pub mount_type: Str<'a>,
    #[serde(borrow, default)]
    pub data: Raw<'a>,
    #[serde(borrow, default)]
    pub wrap_info: Option<WrapInfo<'a>>,
}

/// `Option<Cow<str>>` that borrows when it can: serde's derive only borrows
/// a bare `Cow<str>` field, and would copy every string inside an `Option`.
fn opt_cow<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or null")
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_str(self)
        }
    }
    d.deserialize_option(V)
}

/// Why a line could not become an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParseErrorKind {
    /// Not valid UTF-8 (Vault's encoder never writes that: corruption or tampering).
    InvalidUtf8,
    /// Not a JSON object of the audit shape.
    InvalidJson,
}

impl ParseErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ParseErrorKind::InvalidUtf8 => "invalid_utf8",
            ParseErrorKind::InvalidJson => "invalid_json",
        }
    }
}

/// A parse failure: what, and where inside the line.
#[derive(Debug, Clone)]
pub struct ParseError {
    pub kind: ParseErrorKind,
    /// Byte offset inside the line where the problem was found.
    pub at: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at byte {} of the line: {}",
            self.kind.as_str(),
            self.at,
            self.message
        )
    }
}

/// Parses one line (without its newline) whose UTF-8 was already checked.
pub fn parse_str(line: &str) -> Result<AuditEntry<'_>, ParseError> {
    let mut e: AuditEntry<'_> = serde_json::from_str(line).map_err(|e| ParseError {
        kind: ParseErrorKind::InvalidJson,
        at: byte_of(line, e.line(), e.column()),
        message: e.to_string(),
    })?;
    e.raw = line;
    Ok(e)
}

/// Parses one line (without its newline).
pub fn parse_line(line: &[u8]) -> Result<AuditEntry<'_>, ParseError> {
    match simdutf8::compat::from_utf8(line) {
        Ok(s) => parse_str(s),
        Err(e) => Err(ParseError {
            kind: ParseErrorKind::InvalidUtf8,
            at: e.valid_up_to(),
            message: format!("invalid UTF-8 sequence at byte {}", e.valid_up_to()),
        }),
    }
}

/// serde_json reports 1-based line and column; lines hold no raw newline,
/// but stay correct if one does.
fn byte_of(s: &str, line: usize, column: usize) -> usize {
    let mut start = 0;
    for _ in 1..line {
        match memchr::memchr(b'\n', &s.as_bytes()[start..]) {
            Some(p) => start += p + 1,
            None => break,
        }
    }
    (start + column).saturating_sub(1).min(s.len())
}

// ----- raw JSON helpers: walk arrays and objects without allocating -----

/// Calls `f` on every string element of a JSON array; stops early when `f`
/// returns true. Returns whether it did. Non-string elements are skipped.
pub fn array_any_str(raw: &RawValue, f: &mut dyn FnMut(&str) -> bool) -> bool {
    struct Seed<'f> {
        f: &'f mut dyn FnMut(&str) -> bool,
    }
    impl<'de> Visitor<'de> for Seed<'_> {
        type Value = bool;
        fn expecting(&self, fm: &mut fmt::Formatter) -> fmt::Result {
            fm.write_str("an array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
            let mut found = false;
            while let Some(el) = seq.next_element::<MaybeStr<'de>>()? {
                if !found {
                    if let MaybeStr(Some(s)) = el {
                        found = (self.f)(&s);
                    }
                }
            }
            Ok(found)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
            // A plain string where an array was expected: treat as one element.
            Ok((self.f)(v))
        }
        fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(false)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
            Ok(false)
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    de.deserialize_any(Seed { f }).unwrap_or(false)
}

/// One step of a path inside a JSON value: an object key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg<'a> {
    Key(Cow<'a, str>),
    Index(usize),
}

/// `request.data.policies[0]`: a path as findings name it, after `base`.
pub fn path_string(base: &str, path: &[Seg<'_>]) -> String {
    let mut out = base.to_owned();
    for s in path {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Calls `f` with the path and text of every string value in the JSON text `json` (object
/// keys are not values), in document order, until `f` returns true. Returns whether it did.
/// Nesting deeper than serde_json's limit (128) ends the walk (Vault writes nothing that deep).
pub fn walk_strings<'de>(json: &'de str, f: &mut dyn FnMut(&[Seg<'de>], &str) -> bool) -> bool {
    struct Walk<'a, 'f, 'de> {
        path: &'a mut Vec<Seg<'de>>,
        f: &'a mut (dyn FnMut(&[Seg<'de>], &str) -> bool + 'f),
        done: &'a mut bool,
    }
    impl<'de> de::DeserializeSeed<'de> for Walk<'_, '_, 'de> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Walk<'_, '_, 'de> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any value")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
            if !*self.done {
                *self.done = (self.f)(self.path, v);
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let Walk { path, f, done } = self;
            for i in 0.. {
                path.push(Seg::Index(i));
                let next = seq.next_element_seed(Walk {
                    path: &mut *path,
                    f: &mut *f,
                    done: &mut *done,
                });
                path.pop();
                if next?.is_none() {
                    break;
                }
            }
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let Walk { path, f, done } = self;
            while let Some(k) = map.next_key::<MaybeStr<'de>>()? {
                path.push(Seg::Key(k.0.unwrap_or_default()));
                let r = map.next_value_seed(Walk {
                    path: &mut *path,
                    f: &mut *f,
                    done: &mut *done,
                });
                path.pop();
                r?;
            }
            Ok(())
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            Ok(())
        }
    }
    let mut path = Vec::new();
    let mut done = false;
    let mut de = serde_json::Deserializer::from_str(json);
    let _ = de::DeserializeSeed::deserialize(
        Walk {
            path: &mut path,
            f,
            done: &mut done,
        },
        &mut de,
    );
    done
}

/// The string elements of a JSON array, copied (for findings).
pub fn array_strings(raw: &RawValue) -> Vec<String> {
    let mut out = Vec::new();
    array_any_str(raw, &mut |s| {
        out.push(s.to_owned());
        false
    });
    out
}

/// A string, or any other JSON value (skipped).
struct MaybeStr<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for MaybeStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// The value of `key` in a JSON object, without parsing the other values.
pub fn object_get<'a>(raw: &'a RawValue, key: &str) -> Option<&'a RawValue> {
    struct Find<'k>(&'k str);
    impl<'de, 'k> Visitor<'de> for Find<'k> {
        type Value = Option<&'de RawValue>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(k) = map.next_key::<MaybeStr<'de>>()? {
                if found.is_none() && k.0.as_deref() == Some(self.0) {
                    found = Some(map.next_value::<&'de RawValue>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    de.deserialize_any(Find(key)).ok().flatten()
}

/// The keys of a JSON object, copied (findings name fields, never values).
pub fn object_keys(raw: &RawValue) -> Vec<String> {
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut keys = Vec::new();
            while let Some(k) = map.next_key::<MaybeStr<'de>>()? {
                map.next_value::<IgnoredAny>()?;
                if let Some(k) = k.0 {
                    keys.push(k.into_owned());
                }
            }
            Ok(keys)
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    de.deserialize_map(Keys).unwrap_or_default()
}

/// A JSON value seen through a rule's eyes.
#[derive(Debug, Clone)]
pub enum Value<'a> {
    Missing,
    Str(Cow<'a, str>),
    Bool(bool),
    Num(f64),
    /// An array (of strings, usually).
    Array(&'a RawValue),
    /// An object.
    Object(&'a RawValue),
}

impl<'a> Value<'a> {
    pub fn from_raw(raw: &'a RawValue) -> Value<'a> {
        let s = raw.get();
        match s.as_bytes().first() {
            Some(b'"') => match serde_json::from_str::<Cow<'a, str>>(s) {
                Ok(v) => Value::Str(v),
                Err(_) => Value::Missing,
            },
            Some(b't') => Value::Bool(true),
            Some(b'f') => Value::Bool(false),
            Some(b'[') => Value::Array(raw),
            Some(b'{') => Value::Object(raw),
            Some(b'n') | None => Value::Missing,
            Some(_) => s.parse::<f64>().map(Value::Num).unwrap_or(Value::Missing),
        }
    }

    pub fn from_str_opt(s: &'a Option<Cow<'a, str>>) -> Value<'a> {
        match s {
            Some(v) => Value::Str(Cow::Borrowed(v.as_ref())),
            None => Value::Missing,
        }
    }

    pub fn is_missing(&self) -> bool {
        matches!(self, Value::Missing)
    }
}

/// Unix time in nanoseconds of an RFC 3339 timestamp as Vault writes it
/// (`2026-11-25T22:47:06.681947058Z`, or with a `+hh:mm` offset).
pub fn parse_time_nanos(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in &b[r] {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let mut digits = 0;
        while i < b.len() && b[i].is_ascii_digit() {
            if digits < 9 {
                nanos = nanos * 10 + i64::from(b[i] - b'0');
                digits += 1;
            }
            i += 1;
        }
        for _ in digits..9 {
            nanos *= 10;
        }
    }
    let offset_secs = match b.get(i) {
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let v = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            if sign == b'+' {
                v
            } else {
                -v
            }
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_secs;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"time":"2026-11-25T22:47:06.681947058Z","type":"response","auth":{"client_token":"hmac-sha256:aa","accessor":"hmac-sha256:bb","display_name":"root","policies":["root"],"token_policies":["root"],"token_type":"service"},"request":{"id":"6e3c","operation":"update","mount_type":"system","client_token":"hmac-sha256:cc","namespace":{"id":"root"},"path":"sys\/policies\/acl\/ops","data":{"policy":"hmac-sha256:dd","deep":[[[1]]]},"remote_address":"127.0.0.1"},"response":{"data":{"complete":true,"error":"hmac-sha256:ee"}}}"#;

    #[test]
    fn parses_fields_and_unescapes() {
        let e = parse_str(LINE).unwrap();
        assert_eq!(e.kind.as_deref(), Some("response"));
        let req = e.request.as_ref().unwrap();
        assert_eq!(req.path.as_deref(), Some("sys/policies/acl/ops"));
        assert!(
            matches!(req.path, Some(Cow::Owned(_))),
            "escaped path is owned"
        );
        assert!(matches!(req.operation, Some(Cow::Borrowed(_))));
        let auth = e.auth.as_ref().unwrap();
        assert!(array_any_str(auth.policies.unwrap(), &mut |p| p == "root"));
        assert!(!array_any_str(auth.policies.unwrap(), &mut |p| p == "default"));
        let data = e.response.as_ref().unwrap().data.unwrap();
        assert!(matches!(
            Value::from_raw(object_get(data, "complete").unwrap()),
            Value::Bool(true)
        ));
        assert!(object_get(data, "missing").is_none());
        assert_eq!(object_keys(req.data.unwrap()), vec!["policy", "deep"]);
    }

    #[test]
    fn walks_every_string_with_its_path() {
        let e = parse_str(LINE).unwrap();
        assert_eq!(e.raw, LINE);
        let mut seen = Vec::new();
        walk_strings(e.raw, &mut |p, s| {
            seen.push((path_string("", p), s.to_owned()));
            false
        });
        assert!(seen.contains(&("auth.policies[0]".into(), "root".into())));
        assert!(seen.contains(&("request.data.policy".into(), "hmac-sha256:dd".into())));
        assert!(seen.contains(&("request.path".into(), "sys/policies/acl/ops".into())));
        assert!(seen.contains(&("response.data.error".into(), "hmac-sha256:ee".into())));
        assert!(
            !seen.iter().any(|(_, s)| s == "complete"),
            "keys are not values"
        );
        // Stops at the first `true`.
        let mut n = 0;
        assert!(walk_strings(LINE, &mut |_, s| {
            n += 1;
            s == "response"
        }));
        assert_eq!(n, 2);
        // Escaped keys and deep nesting end cleanly.
        let mut got = Vec::new();
        walk_strings(r#"{"a\u002eb":[{"c":"x"}]}"#, &mut |p, s| {
            got.push((path_string("top", p), s.to_owned()));
            false
        });
        assert_eq!(got, vec![("top.a.b[0].c".to_owned(), "x".to_owned())]);
        let deep = format!("{}\"x\"{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(!walk_strings(&deep, &mut |_, _| true));
    }

    #[test]
    fn duplicate_fields_are_rejected() {
        let err = parse_str(r#"{"request":{"path":"sys/audit/x","path":"secret/x"}}"#).unwrap_err();
        assert_eq!(err.kind, ParseErrorKind::InvalidJson);
        assert!(err.message.contains("duplicate"), "{}", err.message);
    }

    #[test]
    fn deep_nesting_never_overflows_the_stack() {
        let depth = 1_000_000;
        let mut line =
            String::from(r#"{"type":"request","request":{"path":"sys/raw/x","data":{"x":"#);
        line.push_str(&"[".repeat(depth));
        line.push_str(&"]".repeat(depth));
        line.push_str("}}}");
        // Inside an ignored/raw value: fine.
        let e = parse_str(&line).unwrap();
        assert_eq!(e.request.unwrap().path.as_deref(), Some("sys/raw/x"));
        // In a typed position: a clean error.
        let mut bad = String::from(r#"{"auth":{"display_name":"#);
        bad.push_str(&"[".repeat(depth));
        assert!(parse_str(&bad).is_err());
        // Unclosed at top level.
        assert!(parse_str(&"[".repeat(depth)).is_err());
        let mut obj = String::new();
        for _ in 0..depth {
            obj.push_str(r#"{"a":"#);
        }
        assert!(parse_str(&obj).is_err());
    }

    #[test]
    fn errors_locate_the_byte() {
        let err = parse_str(r#"{"type":"request","request":{"path":}"#).unwrap_err();
        assert_eq!(err.at, 36);
        let err = parse_line(b"{\"type\":\"re\xffquest\"}").unwrap_err();
        assert_eq!(err.kind, ParseErrorKind::InvalidUtf8);
        assert_eq!(err.at, 11);
    }

    #[test]
    fn time_parsing() {
        assert_eq!(parse_time_nanos("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_time_nanos("2026-11-25T22:47:06.681947058Z"),
            Some(1_795_646_826_681_947_058)
        );
        assert_eq!(
            parse_time_nanos("2020-02-29T01:00:00.5+01:00"),
            Some(1_582_934_400_500_000_000)
        );
        assert_eq!(parse_time_nanos("2020-13-01T00:00:00Z"), None);
        assert_eq!(parse_time_nanos("yesterday"), None);
    }
}
