//! Watch lists: known HMACs of one audit device, matched by rules with `in_watchlist`.
//!
//! Vault and OpenBao write every secret value of an audit entry as
//! `hmac-sha256:<lowercase hex of HMAC-SHA256(key = the device's salt, msg = value)>`
//! ([`hmac_sha256`]). Each audit device has a salt of its own and entries do not say which
//! device wrote them, so a watch list belongs to **one device**: the hashes of `root`, of
//! `invalid username or password`, or of a leaked token, as that device writes them (from
//! `sys/audit-hash/<device>`, or `auditwatch hash` with the device's salt).
//!
//! A list file holds one `hmac-sha256:<64 hex>` per line, optionally followed by blanks and a
//! label naming what it is (`hmac-sha256:… leaked token of ci-runner`); blank lines and lines
//! starting with `#` are ignored. Each stream auditwatch reads names its device (`--device`,
//! or `device` on a source of `auditwatch run`); the lists of that device are bound into the
//! rule set ([`crate::rules::RuleSet::with_watchlists`]), which also adds the listed hashes to
//! the prefilter.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What every HMAC in an audit entry starts with.
pub const HMAC_PREFIX: &str = "hmac-sha256:";
/// Length of a whole HMAC value: the prefix and 64 hex digits.
pub const HMAC_LEN: usize = HMAC_PREFIX.len() + 64;
/// The largest list file read.
pub const MAX_LIST_FILE: u64 = 16 << 20;
/// The most values the lists of one device may hold (they all go into the prefilter).
pub const MAX_DEVICE_VALUES: usize = 100_000;

/// `hmac-sha256:<hex>` as an audit device with `salt` writes `value`.
pub fn hmac_sha256(salt: &str, value: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(salt.as_bytes()).expect("HMAC takes any key");
    mac.update(value.as_bytes());
    format!("{HMAC_PREFIX}{}", hex::encode(mac.finalize().into_bytes()))
}

/// A list name, device name: 1-64 of `A-Z a-z 0-9 . _ -`, not starting with `.`.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// One listed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The label written after the hash, if any.
    pub label: Option<String>,
    /// 1-based line in the list file.
    pub line: usize,
}

/// A named set of HMACs of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchList {
    pub name: String,
    /// Where it came from (a file path, or `fixture`).
    pub origin: String,
    /// `hmac-sha256:<lowercase hex>` → its entry.
    values: HashMap<String, Entry>,
}

/// A list file could not be used. Says which file, which line, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct WatchError {
    pub origin: String,
    pub message: String,
}

fn werr(origin: impl Into<String>, message: impl fmt::Display) -> WatchError {
    WatchError {
        origin: origin.into(),
        message: message.to_string(),
    }
}

/// One line of a list: `None` for blanks and comments, else the normalised hash and label.
pub fn parse_line(line: &str) -> Result<Option<(String, Option<String>)>, String> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return Ok(None);
    }
    let (value, label) = match t.find(char::is_whitespace) {
        Some(i) => (&t[..i], Some(t[i..].trim().to_owned())),
        None => (t, None),
    };
    let Some(hex) = value.strip_prefix(HMAC_PREFIX) else {
        return Err(format!(
            "{value:?} is not an audit-log HMAC (`{HMAC_PREFIX}<64 hex digits>`): list the \
             hash the device writes (`bao write sys/audit-hash/<device> input=…`, or \
             `auditwatch hash --salt-file …`), never the value itself"
        ));
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{value:?}: an HMAC has 64 hex digits after `{HMAC_PREFIX}`"
        ));
    }
    let label = label.filter(|l| !l.is_empty());
    Ok(Some((
        format!("{HMAC_PREFIX}{}", hex.to_ascii_lowercase()),
        label,
    )))
}

impl WatchList {
    /// A list from its text. A value listed twice keeps its first label.
    pub fn parse(name: &str, origin: &str, text: &str) -> Result<WatchList, WatchError> {
        if !valid_name(name) {
            return Err(werr(
                origin,
                format!("watch list name {name:?}: use 1-64 of A-Z a-z 0-9 . _ - (not starting with '.')"),
            ));
        }
        let mut values = HashMap::new();
        for (i, l) in text.lines().enumerate() {
            match parse_line(l) {
                Ok(None) => {}
                Ok(Some((v, label))) => {
                    values.entry(v).or_insert(Entry { label, line: i + 1 });
                }
                Err(m) => return Err(werr(format!("{origin}:{}", i + 1), m)),
            }
        }
        Ok(WatchList {
            name: name.to_owned(),
            origin: origin.to_owned(),
            values,
        })
    }

    /// Reads a list file.
    pub fn load(name: &str, path: &Path) -> Result<WatchList, WatchError> {
        let origin = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|e| werr(&origin, e))?;
        if meta.len() > MAX_LIST_FILE {
            return Err(werr(&origin, format!("larger than {MAX_LIST_FILE} bytes")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| werr(&origin, e))?;
        Self::parse(name, &origin, &text)
    }

    /// The entry of `value`, when it is listed (exact: a whole lowercase HMAC).
    pub fn get(&self, value: &str) -> Option<&Entry> {
        if value.len() != HMAC_LEN || !value.starts_with(HMAC_PREFIX) {
            return None;
        }
        self.values.get(value)
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The listed values (`hmac-sha256:<hex>`).
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }
}

/// The lists of one device, by name.
pub type DeviceLists = BTreeMap<String, Arc<WatchList>>;

/// Adds `list` to a device's lists; a name may be used once per device.
pub fn insert(
    lists: &mut DeviceLists,
    device: Option<&str>,
    list: WatchList,
) -> Result<(), WatchError> {
    if let Some(prev) = lists.get(&list.name) {
        return Err(werr(
            &list.origin,
            format!(
                "device {} already has a watch list {:?} (from {})",
                device.map_or_else(|| "(unnamed)".to_owned(), |d| format!("{d:?}")),
                list.name,
                prev.origin
            ),
        ));
    }
    let total: usize = lists.values().map(|l| l.len()).sum::<usize>() + list.len();
    if total > MAX_DEVICE_VALUES {
        return Err(werr(
            &list.origin,
            format!("a device's watch lists hold at most {MAX_DEVICE_VALUES} values"),
        ));
    }
    lists.insert(list.name.clone(), Arc::new(list));
    Ok(())
}

/// `--watchlist [DEVICE=]NAME=FILE` on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    /// The device the list belongs to; `None`: the device of the stream being read.
    pub device: Option<String>,
    pub name: String,
    pub file: PathBuf,
}

impl FromStr for WatchSpec {
    type Err = String;

    /// `NAME=FILE` or `DEVICE=NAME=FILE`. A FILE holding `=` needs the `DEVICE=` form.
    fn from_str(s: &str) -> Result<WatchSpec, String> {
        let usage = || format!("{s:?}: expected NAME=FILE or DEVICE=NAME=FILE");
        let parts: Vec<&str> = s.splitn(3, '=').collect();
        let (device, name, file) = match parts.as_slice() {
            [d, n, f] if valid_name(n) => (Some(*d), *n, *f),
            // `NAME=FILE` whose FILE holds a `=`.
            [n, _, _] => (None, *n, &s[n.len() + 1..]),
            [n, f] => (None, *n, *f),
            _ => return Err(usage()),
        };
        if let Some(d) = device {
            if !valid_name(d) {
                return Err(format!(
                    "{s:?}: device {d:?}: use 1-64 of A-Z a-z 0-9 . _ -"
                ));
            }
        }
        if !valid_name(name) {
            return Err(format!(
                "{s:?}: list name {name:?}: use 1-64 of A-Z a-z 0-9 . _ -"
            ));
        }
        if file.is_empty() {
            return Err(usage());
        }
        Ok(WatchSpec {
            device: device.map(str::to_owned),
            name: name.to_owned(),
            file: PathBuf::from(file),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The salt and server-computed hashes of the committed capture.
    fn capture() -> (String, Vec<(String, String, String)>) {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/openbao/scenarios.hashes.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let hashes = v["hashes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["input"].as_str().unwrap().to_owned(),
                    h["hash"].as_str().unwrap().to_owned(),
                    h["source"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        (v["salt"].as_str().unwrap().to_owned(), hashes)
    }

    #[test]
    fn hashes_equal_what_the_server_computed() {
        let (salt, hashes) = capture();
        let from_server = hashes
            .iter()
            .filter(|(_, _, src)| src == "sys/audit-hash")
            .count();
        assert!(from_server >= 10, "{from_server}");
        for (input, hash, _) in &hashes {
            assert_eq!(&hmac_sha256(&salt, input), hash, "input {input:?}");
        }
        assert_ne!(hmac_sha256("other-salt", "root"), hashes[0].1);
    }

    #[test]
    fn list_files() {
        let (salt, _) = capture();
        let root = hmac_sha256(&salt, "root");
        // Upper-case hex digits are read as the lowercase the log writes.
        let bogus_upper = format!(
            "{HMAC_PREFIX}{}",
            hmac_sha256(&salt, "bogus")[HMAC_PREFIX.len()..].to_ascii_uppercase()
        );
        let text = format!(
            "# the root policy\n\n{root}\n  {bogus_upper}   leaked token of ci-runner  \n{root} again\n"
        );
        let l = WatchList::parse("root", "r.list", &text).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(
            l.get(&root),
            Some(&Entry {
                label: None,
                line: 3
            }),
            "first label kept"
        );
        let bogus = l.get(&hmac_sha256(&salt, "bogus")).unwrap();
        assert_eq!(bogus.label.as_deref(), Some("leaked token of ci-runner"));
        assert_eq!(bogus.line, 4);
        assert!(l.get("root").is_none());
        assert!(
            l.get(&root.to_ascii_uppercase()).is_none(),
            "the log writes lowercase"
        );

        let e = WatchList::parse("root", "r.list", "# ok\nroot\n").unwrap_err();
        assert_eq!(e.origin, "r.list:2");
        assert!(e.message.contains("never the value itself"), "{e}");
        let e = WatchList::parse("root", "r.list", "hmac-sha256:abc\n").unwrap_err();
        assert!(e.message.contains("64 hex digits"), "{e}");
        assert!(WatchList::parse("a b", "r.list", "").is_err());
        assert!(WatchList::parse("empty", "e.list", "# nothing yet\n")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_device_has_each_list_once() {
        let mut lists = DeviceLists::new();
        let l = WatchList::parse("root", "a.list", "").unwrap();
        insert(&mut lists, Some("file-audit"), l.clone()).unwrap();
        let e = insert(&mut lists, Some("file-audit"), l).unwrap_err();
        assert!(
            e.message.contains("already has a watch list \"root\""),
            "{e}"
        );
    }

    #[test]
    fn command_line_specs() {
        let s: WatchSpec = "root=lists/root.list".parse().unwrap();
        assert_eq!(
            s,
            WatchSpec {
                device: None,
                name: "root".into(),
                file: "lists/root.list".into()
            }
        );
        let s: WatchSpec = "file-audit=root=root.list".parse().unwrap();
        assert_eq!(s.device.as_deref(), Some("file-audit"));
        assert_eq!(s.name, "root");
        // A FILE holding `=` after NAME= (its middle part is no name).
        let s: WatchSpec = "root=./a=b/root.list".parse().unwrap();
        assert_eq!((s.device, s.file), (None, PathBuf::from("./a=b/root.list")));
        for bad in ["root", "root=", "a b=x", "dev ice=root=x", "=x"] {
            assert!(bad.parse::<WatchSpec>().is_err(), "{bad}");
        }
    }
}
