//! The finding: what auditwatch reports, in a stable JSON shape.
//!
//! ```json
//! {"id":"…sha256 hex…","rule":"privileged.policy_write","category":"privileged_endpoint",
//!  "severity":"high","title":"…","time":"2026-11-25T22:47:06.681947058Z","type":"request",
//!  "request_id":"…","operation":"update","path":"sys/policies/acl/ops","namespace":"root",
//!  "actor":{"display_name":"token","entity_id":null,"remote_address":"127.0.0.1",
//!           "accessor":"hmac-sha256:…","policies":["root"]},
//!  "source":{"kind":"file","name":"audit.log","line":12,"offset":4096},
//!  "detail":{"error":null}}
//! ```
//! Every key is always present (`null` when the entry lacks it), so receivers
//! can rely on the shape. `id` is the SHA-256 of the rule id, a NUL byte and
//! the entry's bytes: the same entry judged by the same rule always has the
//! same id, so receivers can drop duplicates. Findings never copy values out
//! of `request.data` / `response.data` (with `log_raw` they are secrets):
//! `detail` holds field names, HMACs and plain metadata only.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How urgent a finding is, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown severity {s:?} (info, low, medium, high, critical)"))
    }
}

/// Where an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    File,
    Stdin,
    Tcp,
    Unix,
    Udp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRef {
    pub kind: SourceKind,
    /// File path, `-` for stdin, or the peer address.
    pub name: String,
    /// 1-based line of the entry in its file or connection.
    pub line: u64,
    /// Byte offset of the entry's first byte (decompressed stream for .gz/.zst).
    pub offset: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Actor {
    pub display_name: Option<String>,
    pub entity_id: Option<String>,
    pub remote_address: Option<String>,
    pub accessor: Option<String>,
    pub policies: Option<Vec<String>>,
}

/// One finding. See the module docs for the JSON shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub id: String,
    pub rule: String,
    pub category: String,
    pub severity: Severity,
    pub title: String,
    pub time: Option<String>,
    #[serde(rename = "type")]
    pub entry_type: Option<String>,
    pub request_id: Option<String>,
    pub operation: Option<String>,
    pub path: Option<String>,
    pub namespace: String,
    pub actor: Actor,
    pub source: SourceRef,
    pub detail: serde_json::Map<String, serde_json::Value>,
}

/// The stable id of a finding: hex SHA-256 of `rule id, NUL, entry bytes`.
pub fn finding_id(rule: &str, entry: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(rule.as_bytes());
    h.update([0u8]);
    h.update(entry);
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_orders_and_parses() {
        assert!(Severity::Critical > Severity::High);
        assert_eq!("HIGH".parse::<Severity>().unwrap(), Severity::High);
        assert!("urgent".parse::<Severity>().is_err());
    }

    #[test]
    fn id_depends_on_rule_and_bytes() {
        let a = finding_id("r1", b"{}");
        assert_eq!(a.len(), 64);
        assert_eq!(a, finding_id("r1", b"{}"));
        assert_ne!(a, finding_id("r2", b"{}"));
        assert_ne!(a, finding_id("r1", b"{ }"));
    }
}
