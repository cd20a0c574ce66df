//! Field names a rule can test, resolved once at load time.
//!
//! Raw fields use the entry's own JSON path (`request.path`,
//! `auth.policies`, `response.auth.display_name`, `request.data.no_parent`,
//! `response.data.complete`, …). Derived fields save every rule from
//! repeating the same normalisation:
//!
//! | field | meaning |
//! |---|---|
//! | `kind` | `request` or `response`, also for `<mount>-request` / `<mount>-response` types |
//! | `path` | `request.path` with one trailing `/` removed (LIST adds it) |
//! | `namespace` | `request.namespace.path` without its trailing `/`; `root` for the root namespace |
//! | `write` | true when `request.operation` is create, update, delete or patch |
//! | `error` | top-level `error`; an empty string counts as no error |
//! | `login_user` | the user named in a `auth/<mount>/login/<user>` path |

use std::borrow::Cow;

use crate::parse::{object_get, AuditEntry, Auth, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthField {
    Present,
    ClientToken,
    Accessor,
    DisplayName,
    Policies,
    TokenPolicies,
    IdentityPolicies,
    Metadata(Option<String>),
    EntityId,
    TokenType,
    TokenTtl,
    NumUses,
    PolicyAllowed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Time,
    Type,
    Kind,
    Error,
    Path,
    LoginUser,
    Namespace,
    Write,
    RequestPresent,
    RequestId,
    Operation,
    RawPath,
    NamespaceId,
    NamespacePath,
    MountType,
    MountPoint,
    MountClass,
    RemoteAddress,
    ClientToken,
    ClientTokenAccessor,
    ClientId,
    PolicyOverride,
    WrapTtl,
    /// `request.data` itself, or a key path inside it.
    RequestData(Vec<String>),
    ResponsePresent,
    ResponseMountType,
    /// `response.data` itself, or a key path inside it.
    ResponseData(Vec<String>),
    WrapInfo(&'static str),
    Auth(AuthField),
    ResponseAuth(AuthField),
}

impl Field {
    pub fn parse(name: &str) -> Result<Field, String> {
        let f = match name {
            "time" => Field::Time,
            "type" => Field::Type,
            "kind" => Field::Kind,
            "error" => Field::Error,
            "path" => Field::Path,
            "login_user" => Field::LoginUser,
            "namespace" => Field::Namespace,
            "write" => Field::Write,
            "request" => Field::RequestPresent,
            "request.id" => Field::RequestId,
            "request.operation" => Field::Operation,
            "request.path" => Field::RawPath,
            "request.namespace.id" => Field::NamespaceId,
            "request.namespace.path" => Field::NamespacePath,
            "request.mount_type" => Field::MountType,
            "request.mount_point" => Field::MountPoint,
            "request.mount_class" => Field::MountClass,
            "request.remote_address" => Field::RemoteAddress,
            "request.client_token" => Field::ClientToken,
            "request.client_token_accessor" => Field::ClientTokenAccessor,
            "request.client_id" => Field::ClientId,
            "request.policy_override" => Field::PolicyOverride,
            "request.wrap_ttl" => Field::WrapTtl,
            "response" => Field::ResponsePresent,
            "response.mount_type" => Field::ResponseMountType,
            "response.wrap_info.ttl" => Field::WrapInfo("ttl"),
            "response.wrap_info.token" => Field::WrapInfo("token"),
            "response.wrap_info.accessor" => Field::WrapInfo("accessor"),
            "response.wrap_info.creation_time" => Field::WrapInfo("creation_time"),
            "response.wrap_info.creation_path" => Field::WrapInfo("creation_path"),
            "response.wrap_info.wrapped_accessor" => Field::WrapInfo("wrapped_accessor"),
            _ => {
                if let Some(rest) = name.strip_prefix("request.data") {
                    Field::RequestData(data_path(rest, name)?)
                } else if let Some(rest) = name.strip_prefix("response.data") {
                    Field::ResponseData(data_path(rest, name)?)
                } else if let Some(rest) = name.strip_prefix("response.auth") {
                    Field::ResponseAuth(auth_field(rest, name)?)
                } else if let Some(rest) = name.strip_prefix("auth") {
                    Field::Auth(auth_field(rest, name)?)
                } else {
                    return Err(unknown(name));
                }
            }
        };
        Ok(f)
    }

    /// The JSON key whose presence in a line this field's value needs, for
    /// the prefilter; `None` for derived fields.
    pub fn json_key(&self) -> Option<String> {
        let key = match self {
            Field::Time => "time",
            Field::Type => "type",
            Field::Error => "error",
            Field::RequestId => "id",
            Field::Operation => "operation",
            Field::RawPath => "path",
            Field::NamespaceId => "id",
            Field::NamespacePath => "path",
            Field::MountType | Field::ResponseMountType => "mount_type",
            Field::MountPoint => "mount_point",
            Field::MountClass => "mount_class",
            Field::RemoteAddress => "remote_address",
            Field::ClientToken => "client_token",
            Field::ClientTokenAccessor => "client_token_accessor",
            Field::ClientId => "client_id",
            Field::PolicyOverride => "policy_override",
            Field::WrapTtl => "wrap_ttl",
            Field::RequestPresent => "request",
            Field::ResponsePresent => "response",
            Field::RequestData(p) | Field::ResponseData(p) => {
                return Some(p.last().map(String::as_str).unwrap_or("data").to_owned())
            }
            Field::WrapInfo(k) => k,
            Field::Auth(a) | Field::ResponseAuth(a) => match a {
                AuthField::Present => "auth",
                AuthField::ClientToken => "client_token",
                AuthField::Accessor => "accessor",
                AuthField::DisplayName => "display_name",
                AuthField::Policies => "policies",
                AuthField::TokenPolicies => "token_policies",
                AuthField::IdentityPolicies => "identity_policies",
                AuthField::Metadata(Some(k)) => return Some(k.clone()),
                AuthField::Metadata(None) => "metadata",
                AuthField::EntityId => "entity_id",
                AuthField::TokenType => "token_type",
                AuthField::TokenTtl => "token_ttl",
                AuthField::NumUses => "num_uses",
                AuthField::PolicyAllowed => "allowed",
            },
            Field::Kind | Field::Path | Field::LoginUser | Field::Namespace | Field::Write => {
                return None
            }
        };
        Some(key.to_owned())
    }

    /// Whether a value test on this field narrows down lines at all. Tests on
    /// fields nearly every line shares (type, operation, …) are useless to
    /// the prefilter.
    pub fn selective(&self) -> bool {
        !matches!(
            self,
            Field::Type
                | Field::Kind
                | Field::Operation
                | Field::Write
                | Field::Namespace
                | Field::NamespaceId
                | Field::MountClass
                | Field::MountType
                | Field::ResponseMountType
                | Field::Time
                | Field::RequestPresent
                | Field::ResponsePresent
                | Field::Auth(AuthField::Present)
                | Field::ResponseAuth(AuthField::Present)
                | Field::Auth(AuthField::TokenType)
                | Field::ResponseAuth(AuthField::TokenType)
        )
    }

    /// Whether the raw JSON value is a string array (policies…).
    pub fn is_array(&self) -> bool {
        matches!(
            self,
            Field::Auth(
                AuthField::Policies | AuthField::TokenPolicies | AuthField::IdentityPolicies
            ) | Field::ResponseAuth(
                AuthField::Policies | AuthField::TokenPolicies | AuthField::IdentityPolicies
            )
        )
    }

    /// Whether the value's text is exactly the JSON string in the line (so a
    /// quoted literal can be looked for). Derived fields are not.
    pub fn is_verbatim(&self) -> bool {
        !matches!(
            self,
            Field::Kind
                | Field::Path
                | Field::LoginUser
                | Field::Namespace
                | Field::Write
                | Field::Error
        )
    }

    /// Whether reading this field would copy a value out of `data`
    /// (forbidden in finding details: with `log_raw` those are secrets).
    pub fn is_data_value(&self) -> bool {
        matches!(self, Field::RequestData(_) | Field::ResponseData(_))
    }

    pub fn get<'a>(&self, e: &'a AuditEntry<'a>) -> Value<'a> {
        let req = e.request.as_ref();
        let resp = e.response.as_ref();
        let s = |v: Option<&'a Option<Cow<'a, str>>>| match v {
            Some(v) => Value::from_str_opt(v),
            None => Value::Missing,
        };
        match self {
            Field::Time => Value::from_str_opt(&e.time),
            Field::Type => Value::from_str_opt(&e.kind),
            Field::Kind => match e.kind.as_deref() {
                Some(t) if t == "request" || t.ends_with("-request") => {
                    Value::Str("request".into())
                }
                Some(t) if t == "response" || t.ends_with("-response") => {
                    Value::Str("response".into())
                }
                Some(t) => Value::Str(Cow::Borrowed(t)),
                None => Value::Missing,
            },
            Field::Error => match e.error.as_deref() {
                None | Some("") => Value::Missing,
                Some(v) => Value::Str(Cow::Borrowed(v)),
            },
            Field::Path => match req.and_then(|r| r.path.as_deref()) {
                Some(p) => Value::Str(Cow::Borrowed(normalize_path(p))),
                None => Value::Missing,
            },
            Field::LoginUser => match req.and_then(|r| r.path.as_deref()).and_then(login_user) {
                Some(u) => Value::Str(Cow::Borrowed(u)),
                None => Value::Missing,
            },
            Field::Namespace => Value::Str(Cow::Borrowed(namespace_of(e))),
            Field::Write => match req.and_then(|r| r.operation.as_deref()) {
                Some(op) => Value::Bool(is_write(op)),
                None => Value::Missing,
            },
            Field::RequestPresent => present(req.is_some()),
            Field::RequestId => s(req.map(|r| &r.id)),
            Field::Operation => s(req.map(|r| &r.operation)),
            Field::RawPath => s(req.map(|r| &r.path)),
            Field::NamespaceId => s(req.and_then(|r| r.namespace.as_ref()).map(|n| &n.id)),
            Field::NamespacePath => s(req.and_then(|r| r.namespace.as_ref()).map(|n| &n.path)),
            Field::MountType => s(req.map(|r| &r.mount_type)),
            Field::MountPoint => s(req.map(|r| &r.mount_point)),
            Field::MountClass => s(req.map(|r| &r.mount_class)),
            Field::RemoteAddress => s(req.map(|r| &r.remote_address)),
            Field::ClientToken => s(req.map(|r| &r.client_token)),
            Field::ClientTokenAccessor => s(req.map(|r| &r.client_token_accessor)),
            Field::ClientId => s(req.map(|r| &r.client_id)),
            Field::PolicyOverride => opt_bool(req.and_then(|r| r.policy_override)),
            Field::WrapTtl => opt_num(req.and_then(|r| r.wrap_ttl)),
            Field::RequestData(p) => data_get(req.and_then(|r| r.data), p),
            Field::ResponsePresent => present(resp.is_some()),
            Field::ResponseMountType => s(resp.map(|r| &r.mount_type)),
            Field::ResponseData(p) => data_get(resp.and_then(|r| r.data), p),
            Field::WrapInfo(k) => match resp.and_then(|r| r.wrap_info.as_ref()) {
                None => Value::Missing,
                Some(w) => match *k {
                    "ttl" => opt_num(w.ttl),
                    "token" => Value::from_str_opt(&w.token),
                    "accessor" => Value::from_str_opt(&w.accessor),
                    "creation_time" => Value::from_str_opt(&w.creation_time),
                    "creation_path" => Value::from_str_opt(&w.creation_path),
                    _ => Value::from_str_opt(&w.wrapped_accessor),
                },
            },
            Field::Auth(a) => auth_get(e.auth.as_ref(), a),
            Field::ResponseAuth(a) => auth_get(resp.and_then(|r| r.auth.as_ref()), a),
        }
    }
}

fn present(yes: bool) -> Value<'static> {
    if yes {
        Value::Bool(true)
    } else {
        Value::Missing
    }
}

fn opt_bool(v: Option<bool>) -> Value<'static> {
    v.map(Value::Bool).unwrap_or(Value::Missing)
}

fn opt_num(v: Option<i64>) -> Value<'static> {
    v.map(|n| Value::Num(n as f64)).unwrap_or(Value::Missing)
}

fn auth_get<'a>(auth: Option<&'a Auth<'a>>, f: &AuthField) -> Value<'a> {
    let Some(a) = auth else {
        return Value::Missing;
    };
    let raw = |r: Option<&'a serde_json::value::RawValue>| {
        r.map(Value::from_raw).unwrap_or(Value::Missing)
    };
    match f {
        AuthField::Present => Value::Bool(true),
        AuthField::ClientToken => Value::from_str_opt(&a.client_token),
        AuthField::Accessor => Value::from_str_opt(&a.accessor),
        AuthField::DisplayName => Value::from_str_opt(&a.display_name),
        // Policy lists are arrays; anything else (tampered input) is no list.
        AuthField::Policies => array(raw(a.policies)),
        AuthField::TokenPolicies => array(raw(a.token_policies)),
        AuthField::IdentityPolicies => array(raw(a.identity_policies)),
        AuthField::Metadata(None) => raw(a.metadata),
        AuthField::Metadata(Some(k)) => raw(a.metadata.and_then(|m| object_get(m, k))),
        AuthField::EntityId => Value::from_str_opt(&a.entity_id),
        AuthField::TokenType => Value::from_str_opt(&a.token_type),
        AuthField::TokenTtl => opt_num(a.token_ttl),
        AuthField::NumUses => opt_num(a.num_uses),
        AuthField::PolicyAllowed => opt_bool(a.policy_results.as_ref().and_then(|p| p.allowed)),
    }
}

fn array(v: Value<'_>) -> Value<'_> {
    match v {
        Value::Array(_) => v,
        _ => Value::Missing,
    }
}

fn data_get<'a>(data: Option<&'a serde_json::value::RawValue>, path: &[String]) -> Value<'a> {
    let Some(mut raw) = data else {
        return Value::Missing;
    };
    for key in path {
        match object_get(raw, key) {
            Some(r) => raw = r,
            None => return Value::Missing,
        }
    }
    Value::from_raw(raw)
}

fn data_path(rest: &str, full: &str) -> Result<Vec<String>, String> {
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let rest = rest.strip_prefix('.').ok_or_else(|| unknown(full))?;
    let parts: Vec<String> = rest.split('.').map(str::to_owned).collect();
    if parts.iter().any(String::is_empty) {
        return Err(unknown(full));
    }
    Ok(parts)
}

fn auth_field(rest: &str, full: &str) -> Result<AuthField, String> {
    Ok(match rest {
        "" => AuthField::Present,
        ".client_token" => AuthField::ClientToken,
        ".accessor" => AuthField::Accessor,
        ".display_name" => AuthField::DisplayName,
        ".policies" => AuthField::Policies,
        ".token_policies" => AuthField::TokenPolicies,
        ".identity_policies" => AuthField::IdentityPolicies,
        ".metadata" => AuthField::Metadata(None),
        ".entity_id" => AuthField::EntityId,
        ".token_type" => AuthField::TokenType,
        ".token_ttl" => AuthField::TokenTtl,
        ".num_uses" => AuthField::NumUses,
        ".policy_results.allowed" => AuthField::PolicyAllowed,
        _ => match rest.strip_prefix(".metadata.") {
            Some(k) if !k.is_empty() && !k.contains('.') => AuthField::Metadata(Some(k.to_owned())),
            _ => return Err(unknown(full)),
        },
    })
}

fn unknown(name: &str) -> String {
    format!("unknown field {name:?} (see the field list in the README)")
}

/// `request.path` without the trailing `/` a LIST adds.
pub fn normalize_path(p: &str) -> &str {
    p.strip_suffix('/').unwrap_or(p)
}

/// The namespace path without its trailing `/`, `root` for the root namespace.
pub fn namespace_of<'a>(e: &'a AuditEntry<'a>) -> &'a str {
    match e
        .request
        .as_ref()
        .and_then(|r| r.namespace.as_ref())
        .and_then(|n| n.path.as_deref())
    {
        Some(p) if !p.is_empty() && p != "/" => p.strip_suffix('/').unwrap_or(p),
        _ => "root",
    }
}

pub fn is_write(op: &str) -> bool {
    matches!(op, "create" | "update" | "delete" | "patch")
}

/// The user in `auth/<mount…>/login/<user>`.
pub fn login_user(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("auth/")?;
    let idx = rest.rfind("/login/")?;
    let user = &rest[idx + "/login/".len()..];
    (!user.is_empty() && !user.contains('/')).then_some(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_resolve() {
        assert_eq!(
            Field::parse("auth.policies").unwrap(),
            Field::Auth(AuthField::Policies)
        );
        assert_eq!(
            Field::parse("response.auth.token_policies").unwrap(),
            Field::ResponseAuth(AuthField::TokenPolicies)
        );
        assert_eq!(
            Field::parse("response.data.complete").unwrap(),
            Field::ResponseData(vec!["complete".into()])
        );
        assert_eq!(
            Field::parse("request.data").unwrap(),
            Field::RequestData(vec![])
        );
        assert_eq!(
            Field::parse("auth.metadata.username").unwrap(),
            Field::Auth(AuthField::Metadata(Some("username".into())))
        );
        for bad in [
            "request.pathx",
            "auth.nope",
            "request.data.",
            "requestdata",
            "x",
        ] {
            assert!(Field::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn login_user_from_path() {
        assert_eq!(login_user("auth/userpass/login/alice"), Some("alice"));
        assert_eq!(login_user("auth/team/ldap/login/bob"), Some("bob"));
        assert_eq!(login_user("auth/approle/login"), None);
        assert_eq!(login_user("secret/login/alice"), None);
    }
}
