//! Key policies: the AWS policy grammar subset kmsfs understands, and its evaluation.
//!
//! Principals are local: `"*"`, or `{"Local": ["uid:1000", "user:alice", "gid:50", "group:staff", "*"]}`.
//! Evaluation: an explicit Deny wins, else an Allow, else the request is (implicitly) denied.

use crate::error::{KmsError, Result};
use crate::kms::caller::Caller;
use crate::kms::context::EncryptionContext;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const POLICY_VERSION: &str = "2012-10-17";
/// AWS's key policy size limit.
pub const MAX_POLICY_BYTES: usize = 32 * 1024;
const CONTEXT_KEY_PREFIX: &str = "kms:encryptioncontext:";

/// Every action a key policy can name.
pub const ACTIONS: &[&str] = &[
    "kms:CancelKeyDeletion",
    "kms:CreateAlias",
    "kms:Decrypt",
    "kms:DeleteAlias",
    "kms:DescribeKey",
    "kms:DisableKey",
    "kms:DisableKeyRotation",
    "kms:EnableKey",
    "kms:EnableKeyRotation",
    "kms:Encrypt",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair",
    "kms:GenerateDataKeyPairWithoutPlaintext",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:GenerateMac",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:GetParametersForImport",
    "kms:GetPublicKey",
    "kms:ImportKeyMaterial",
    "kms:ListKeyPolicies",
    "kms:ListKeyRotations",
    "kms:ListResourceTags",
    "kms:PutKeyPolicy",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:RetireKeyVersion",
    "kms:RotateKeyOnDemand",
    "kms:ScheduleKeyDeletion",
    "kms:Sign",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:Verify",
    "kms:VerifyMac",
];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
enum OneOrMany {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDoc {
    #[serde(rename = "Version")]
    version: String,
    #[serde(rename = "Id")]
    _id: Option<String>,
    #[serde(rename = "Statement")]
    statement: StatementList,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StatementList {
    One(Box<StatementDoc>),
    Many(Vec<StatementDoc>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatementDoc {
    #[serde(rename = "Sid")]
    sid: Option<String>,
    #[serde(rename = "Effect")]
    effect: Effect,
    #[serde(rename = "Principal")]
    principal: PrincipalDoc,
    #[serde(rename = "Action")]
    action: OneOrMany,
    #[serde(rename = "Resource")]
    resource: OneOrMany,
    #[serde(rename = "Condition")]
    condition: Option<BTreeMap<String, BTreeMap<String, OneOrMany>>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PrincipalDoc {
    Any(String),
    Local {
        #[serde(rename = "Local")]
        local: OneOrMany,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Any,
    Uid(u32),
    Gid(u32),
    User(String),
    Group(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    StringEquals,
    StringNotEquals,
    StringEqualsIgnoreCase,
    StringNotEqualsIgnoreCase,
    StringLike,
    StringNotLike,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub operator: Operator,
    /// The encryption context key the condition reads.
    pub context_key: String,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sid: Option<String>,
    pub effect: Effect,
    pub principals: Vec<Principal>,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub statements: Vec<Statement>,
}

impl Policy {
    /// Whether any decision may depend on the encryption context (every condition reads it).
    pub fn reads_context(&self) -> bool {
        self.statements.iter().any(|s| !s.conditions.is_empty())
    }
}

/// Which requests an authorization also answers for: those with the same caller, key and
/// action and this encryption context only, or with any context (no statement reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    ThisContext,
    AnyContext,
}

/// One request to authorize.
pub struct Request<'a> {
    pub caller: &'a Caller,
    pub action: &'a str,
    pub resource: &'a str,
    pub context: &'a EncryptionContext,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow { statement: String },
    ExplicitDeny { statement: String },
    ImplicitDeny,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

fn parse_principal(s: &str) -> Result<Principal> {
    let bad = || {
        KmsError::validation(format!(
            "principal {s:?}: use \"*\", uid:N, gid:N, user:NAME or group:NAME"
        ))
    };
    if s == "*" {
        return Ok(Principal::Any);
    }
    let (kind, v) = s.split_once(':').ok_or_else(bad)?;
    if v.is_empty() {
        return Err(bad());
    }
    match kind {
        "uid" => v.parse().map(Principal::Uid).map_err(|_| bad()),
        "gid" => v.parse().map(Principal::Gid).map_err(|_| bad()),
        "user" => Ok(Principal::User(v.to_string())),
        "group" => Ok(Principal::Group(v.to_string())),
        _ => Err(bad()),
    }
}

fn parse_action(a: &str) -> Result<String> {
    let lower = a.to_ascii_lowercase();
    if !lower.starts_with("kms:") {
        return Err(KmsError::validation(format!(
            "action {a:?}: actions start with kms:"
        )));
    }
    if !ACTIONS
        .iter()
        .any(|known| wildcard_match(&known.to_ascii_lowercase(), &lower))
    {
        return Err(KmsError::validation(format!(
            "action {a:?} matches no kms action"
        )));
    }
    Ok(lower)
}

fn parse_operator(s: &str) -> Result<Operator> {
    Ok(match s {
        "StringEquals" => Operator::StringEquals,
        "StringNotEquals" => Operator::StringNotEquals,
        "StringEqualsIgnoreCase" => Operator::StringEqualsIgnoreCase,
        "StringNotEqualsIgnoreCase" => Operator::StringNotEqualsIgnoreCase,
        "StringLike" => Operator::StringLike,
        "StringNotLike" => Operator::StringNotLike,
        _ => {
            return Err(KmsError::validation(format!(
                "condition operator {s:?} is not supported (String[Not]Equals[IgnoreCase], String[Not]Like)"
            )));
        }
    })
}

/// Parsed policies by their text: a key's policy is parsed on every authorization otherwise
/// (a JSON parse costs more than the rest of a decision). Bounded; texts are compared whole.
#[derive(Default)]
pub struct ParsedPolicies {
    map: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<Policy>>>,
}

/// Distinct policy texts kept; past this the cache starts over (a store holds few policies).
const PARSED_MAX: usize = 256;

impl ParsedPolicies {
    /// `parse(text)`, from the cache when this text was parsed before. Errors are not cached.
    pub fn get(&self, text: &str) -> Result<std::sync::Arc<Policy>> {
        let lock = || self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = lock().get(text) {
            return Ok(p.clone());
        }
        let p = std::sync::Arc::new(parse(text)?);
        let mut map = lock();
        if map.len() >= PARSED_MAX {
            map.clear();
        }
        map.insert(text.to_string(), p.clone());
        Ok(p)
    }
}

/// Parses and validates a policy document. Unknown fields are refused, so that nothing a user
/// writes (NotAction, say) is silently ignored.
pub fn parse(text: &str) -> Result<Policy> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(KmsError::validation(format!(
            "policy is {} bytes; the limit is {MAX_POLICY_BYTES}",
            text.len()
        )));
    }
    let doc: PolicyDoc = serde_json::from_str(text)
        .map_err(|e| KmsError::validation(format!("malformed key policy: {e}")))?;
    if doc.version != POLICY_VERSION {
        return Err(KmsError::validation(format!(
            "policy Version must be \"{POLICY_VERSION}\""
        )));
    }
    let docs = match doc.statement {
        StatementList::One(s) => vec![*s],
        StatementList::Many(v) => v,
    };
    if docs.is_empty() {
        return Err(KmsError::validation("policy has no statements"));
    }
    let mut statements = Vec::with_capacity(docs.len());
    for s in docs {
        let principals = match s.principal {
            PrincipalDoc::Any(a) if a == "*" => vec![Principal::Any],
            PrincipalDoc::Any(a) => {
                return Err(KmsError::validation(format!(
                    "Principal {a:?}: use \"*\" or {{\"Local\": [...]}}"
                )));
            }
            PrincipalDoc::Local { local } => local
                .into_vec()
                .iter()
                .map(|p| parse_principal(p))
                .collect::<Result<_>>()?,
        };
        let actions = s
            .action
            .into_vec()
            .iter()
            .map(|a| parse_action(a))
            .collect::<Result<Vec<_>>>()?;
        let resources = s.resource.into_vec();
        let mut conditions = Vec::new();
        for (op, keys) in s.condition.unwrap_or_default() {
            let operator = parse_operator(&op)?;
            for (key, values) in keys {
                let lower = key.to_ascii_lowercase();
                let context_key = match lower.strip_prefix(CONTEXT_KEY_PREFIX) {
                    // The prefix is case-insensitive; the context key itself is not.
                    Some(_) if key.len() > CONTEXT_KEY_PREFIX.len() => {
                        key[CONTEXT_KEY_PREFIX.len()..].to_string()
                    }
                    _ => {
                        return Err(KmsError::validation(format!(
                            "condition key {key:?}: only kms:EncryptionContext:<key> is supported"
                        )));
                    }
                };
                conditions.push(Condition {
                    operator,
                    context_key,
                    values: values.into_vec(),
                });
            }
        }
        if principals.is_empty() || actions.is_empty() || resources.is_empty() {
            return Err(KmsError::validation(
                "each statement needs a Principal, an Action and a Resource",
            ));
        }
        statements.push(Statement {
            sid: s.sid,
            effect: s.effect,
            principals,
            actions,
            resources,
            conditions,
        });
    }
    Ok(Policy { statements })
}

/// The policy a key gets when none is given: root and the creating user may do everything.
pub fn default_policy(creator_uid: u32) -> String {
    let mut principals = vec!["uid:0".to_string()];
    if creator_uid != 0 {
        principals.push(format!("uid:{creator_uid}"));
    }
    let doc = serde_json::json!({
        "Version": POLICY_VERSION,
        "Statement": [{
            "Sid": "Allow root and the key creator everything",
            "Effect": "Allow",
            "Principal": {"Local": principals},
            "Action": "kms:*",
            "Resource": "*"
        }]
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// Glob match with `*` (any run) and `?` (one character), over chars.
pub fn wildcard_match(text: &str, pattern: &str) -> bool {
    let t: Vec<char> = text.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    let (mut ti, mut pi) = (0usize, 0usize);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            ti += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if let Some((bp, bt)) = backtrack {
            pi = bp + 1;
            ti = bt + 1;
            backtrack = Some((bp, bt + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn principal_matches(p: &Principal, c: &Caller) -> bool {
    match p {
        Principal::Any => true,
        Principal::Uid(u) => *u == c.uid,
        Principal::Gid(g) => c.gids.contains(g),
        Principal::User(n) => c.user.as_deref() == Some(n.as_str()),
        Principal::Group(n) => c.groups.iter().any(|g| g == n),
    }
}

fn condition_holds(cond: &Condition, ctx: &EncryptionContext) -> bool {
    let Some(actual) = ctx.get(&cond.context_key) else {
        // As in AWS: a missing key satisfies only the negated operators.
        return matches!(
            cond.operator,
            Operator::StringNotEquals
                | Operator::StringNotEqualsIgnoreCase
                | Operator::StringNotLike
        );
    };
    let any = |f: &dyn Fn(&str) -> bool| cond.values.iter().any(|v| f(v));
    match cond.operator {
        Operator::StringEquals => any(&|v| v == actual),
        Operator::StringNotEquals => !any(&|v| v == actual),
        Operator::StringEqualsIgnoreCase => any(&|v| v.eq_ignore_ascii_case(actual)),
        Operator::StringNotEqualsIgnoreCase => !any(&|v| v.eq_ignore_ascii_case(actual)),
        Operator::StringLike => any(&|v| wildcard_match(actual, v)),
        Operator::StringNotLike => !any(&|v| wildcard_match(actual, v)),
    }
}

fn statement_matches(s: &Statement, r: &Request) -> bool {
    let action = r.action.to_ascii_lowercase();
    s.principals.iter().any(|p| principal_matches(p, r.caller))
        && s.actions.iter().any(|a| wildcard_match(&action, a))
        && s.resources
            .iter()
            .any(|res| wildcard_match(r.resource, res))
        && s.conditions.iter().all(|c| condition_holds(c, r.context))
}

fn label(i: usize, s: &Statement) -> String {
    s.sid.clone().unwrap_or_else(|| format!("#{}", i + 1))
}

/// Explicit Deny beats Allow; with neither, the request is denied.
pub fn evaluate(policy: &Policy, req: &Request) -> Decision {
    let mut allow = None;
    for (i, s) in policy.statements.iter().enumerate() {
        if !statement_matches(s, req) {
            continue;
        }
        match s.effect {
            Effect::Deny => {
                return Decision::ExplicitDeny {
                    statement: label(i, s),
                };
            }
            Effect::Allow => {
                if allow.is_none() {
                    allow = Some(label(i, s));
                }
            }
        }
    }
    match allow {
        Some(statement) => Decision::Allow { statement },
        None => Decision::ImplicitDeny,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn caller(uid: u32, gids: &[u32], user: Option<&str>, groups: &[&str]) -> Caller {
        Caller {
            uid,
            gids: gids.to_vec(),
            user: user.map(String::from),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            pid: 1,
        }
    }

    fn decide(policy: &str, c: &Caller, action: &str, ctx: &[(&str, &str)]) -> Decision {
        let p = parse(policy).unwrap();
        let ctx = EncryptionContext(
            ctx.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        evaluate(
            &p,
            &Request {
                caller: c,
                action,
                resource: "kmsfs:key/x",
                context: &ctx,
            },
        )
    }

    const ALLOW_1000_DENY_DECRYPT_STAFF: &str = r#"{
        "Version": "2012-10-17",
        "Statement": [
          {"Sid": "users", "Effect": "Allow", "Principal": {"Local": ["uid:1000", "user:alice"]},
           "Action": ["kms:Encrypt", "kms:Decrypt", "kms:Generate*"], "Resource": "*"},
          {"Sid": "nostaff", "Effect": "Deny", "Principal": {"Local": "group:staff"},
           "Action": "kms:Decrypt", "Resource": "*"}
        ]}"#;

    #[test]
    fn allow_deny_and_implicit_deny() {
        let p = ALLOW_1000_DENY_DECRYPT_STAFF;
        let u1000 = caller(1000, &[1000], None, &[]);
        assert_eq!(
            decide(p, &u1000, "kms:Decrypt", &[]),
            Decision::Allow {
                statement: "users".into()
            }
        );
        assert!(decide(p, &u1000, "kms:GenerateDataKeyWithoutPlaintext", &[]).allowed());
        assert!(
            decide(p, &u1000, "KMS:DECRYPT", &[]).allowed(),
            "actions are case-insensitive"
        );
        assert_eq!(
            decide(p, &u1000, "kms:DisableKey", &[]),
            Decision::ImplicitDeny
        );
        let alice_staff = caller(1001, &[50], Some("alice"), &["staff"]);
        assert!(decide(p, &alice_staff, "kms:Encrypt", &[]).allowed());
        assert_eq!(
            decide(p, &alice_staff, "kms:Decrypt", &[]),
            Decision::ExplicitDeny {
                statement: "nostaff".into()
            }
        );
        let other = caller(2000, &[2000], Some("bob"), &[]);
        assert_eq!(
            decide(p, &other, "kms:Encrypt", &[]),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn conditions_on_context() {
        let p = r#"{"Version":"2012-10-17","Statement":[
            {"Sid":"a","Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*",
             "Condition":{"StringEquals":{"kms:EncryptionContext:dept":["fin","hr"]},
                          "StringLike":{"KMS:encryptioncontext:path":"/data/*"}}},
            {"Sid":"d","Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*",
             "Condition":{"StringNotEquals":{"kms:EncryptionContext:env":"prod"}}}]}"#;
        assert!(parse(p).unwrap().reads_context());
        let c = caller(5, &[], None, &[]);
        assert!(
            decide(
                p,
                &c,
                "kms:Encrypt",
                &[("dept", "fin"), ("path", "/data/x")]
            )
            .allowed()
        );
        assert!(
            !decide(
                p,
                &c,
                "kms:Encrypt",
                &[("dept", "ops"), ("path", "/data/x")]
            )
            .allowed()
        );
        assert!(!decide(p, &c, "kms:Encrypt", &[("dept", "fin"), ("path", "/etc")]).allowed());
        assert!(!decide(p, &c, "kms:Encrypt", &[("path", "/data/x")]).allowed());
        // Missing "env" satisfies StringNotEquals, so the Deny applies.
        assert!(matches!(
            decide(
                p,
                &c,
                "kms:Decrypt",
                &[("dept", "fin"), ("path", "/data/x")]
            ),
            Decision::ExplicitDeny { .. }
        ));
        assert!(
            decide(
                p,
                &c,
                "kms:Decrypt",
                &[("dept", "fin"), ("path", "/data/x"), ("env", "prod")]
            )
            .allowed()
        );
    }

    #[test]
    fn rejects_what_it_does_not_understand() {
        let bad = [
            r#"{"Version":"2008-10-17","Statement":[]}"#,
            r#"{"Version":"2012-10-17","Statement":[]}"#,
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","NotAction":"kms:*","Resource":"*"}]}"#,
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:*","Resource":"*"}]}"#,
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:Frobnicate","Resource":"*"}]}"#,
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"x"},"Action":"kms:*","Resource":"*"}]}"#,
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Local":["uid:abc"]},"Action":"kms:*","Resource":"*"}]}"#,
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Maybe","Principal":"*","Action":"kms:*","Resource":"*"}]}"#,
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"NumericEquals":{"kms:EncryptionContext:a":"1"}}}]}"#,
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"StringEquals":{"aws:SourceIp":"1"}}}]}"#,
            "not json",
        ];
        for b in bad {
            assert!(parse(b).is_err(), "accepted: {b}");
        }
    }

    #[test]
    fn default_policy_allows_root_and_creator_only() {
        let p = default_policy(1000);
        let root = caller(0, &[0], Some("root"), &["root"]);
        let creator = caller(1000, &[1000], None, &[]);
        let other = caller(1001, &[1001], None, &[]);
        assert!(decide(&p, &root, "kms:PutKeyPolicy", &[]).allowed());
        assert!(decide(&p, &creator, "kms:ScheduleKeyDeletion", &[]).allowed());
        assert!(!decide(&p, &other, "kms:Decrypt", &[]).allowed());
        assert!(!parse(&p).unwrap().reads_context());
    }

    #[test]
    fn every_operation_can_be_named_in_a_policy() {
        // Each action the KMS checks must parse, or no policy could grant it but kms:*.
        for op in crate::aws::operations::OPERATIONS {
            let action = match *op {
                "ReEncrypt" => "kms:ReEncryptFrom".to_string(),
                "ListKeys" | "ListAliases" | "CreateKey" | "GenerateRandom" => continue,
                o => format!("kms:{o}"),
            };
            let text = format!(
                r#"{{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow",
                   "Principal": "*", "Action": "{action}", "Resource": "*"}}]}}"#
            );
            assert!(parse(&text).is_ok(), "{action} is refused in a policy");
        }
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("kms:generatedatakey", "kms:generate*"));
        assert!(wildcard_match("abc", "a?c"));
        assert!(wildcard_match("", "*"));
        assert!(!wildcard_match("abc", "a?"));
        assert!(wildcard_match("a/b/c", "a*c"));
        assert!(!wildcard_match("acb", "a*c"));
        assert!(wildcard_match("aXbYc", "a*b*c"));
    }

    proptest! {
        #[test]
        fn literal_pattern_matches_only_itself(a in "[a-z:]{0,12}", b in "[a-z:]{0,12}") {
            prop_assert_eq!(wildcard_match(&a, &b), a == b);
            prop_assert!(wildcard_match(&a, "*"));
        }

        /// A Deny statement for the same request always wins over any Allow.
        #[test]
        fn deny_always_wins(uid in 0u32..5, action in proptest::sample::select(ACTIONS)) {
            let p = format!(r#"{{"Version":"2012-10-17","Statement":[
                {{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}},
                {{"Effect":"Deny","Principal":{{"Local":"uid:{uid}"}},"Action":"{action}","Resource":"*"}}]}}"#);
            let c = caller(uid, &[], None, &[]);
            prop_assert!(matches!(decide(&p, &c, action, &[]), Decision::ExplicitDeny { .. }), "deny beats allow");
        }

        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = parse(&s);
        }
    }

    #[test]
    fn parsed_policies_answer_as_parse_and_stay_bounded() {
        let cache = ParsedPolicies::default();
        let text = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}]}"#;
        let a = cache.get(text).unwrap();
        assert_eq!(*a, parse(text).unwrap());
        assert!(std::sync::Arc::ptr_eq(&a, &cache.get(text).unwrap()));
        assert!(cache.get("{not json").is_err());
        for uid in 1..PARSED_MAX as u32 + 5 {
            let t = default_policy(uid);
            assert_eq!(*cache.get(&t).unwrap(), parse(&t).unwrap());
        }
        assert!(cache.map.lock().unwrap().len() <= PARSED_MAX);
    }
}
