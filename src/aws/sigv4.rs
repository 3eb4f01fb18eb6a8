//! AWS Signature Version 4 for JSON POST requests: the canonical request, the string to sign
//! and the derived signing key (HMAC-SHA256 from the hmac crate, via cryptocore). The server
//! recomputes a client's signature to check it; the remote key provider signs its requests.

use crate::cryptocore;
use crate::error::{ErrorKind, KmsError, Result};
use chrono::{DateTime, NaiveDateTime, Utc};

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far a request's X-Amz-Date may be from our clock (AWS allows 15 minutes).
pub const MAX_SKEW_SECS: i64 = 15 * 60;

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access_key_id: String,
    /// yyyymmdd
    pub date: String,
    pub region: String,
    pub service: String,
    /// Lower-case header names, in the order given (sorted, by the protocol).
    pub signed_headers: Vec<String>,
    pub signature: String,
}

fn denied(why: impl Into<String>) -> KmsError {
    KmsError::new(ErrorKind::AccessDenied, why.into())
}

impl Authorization {
    pub fn parse(header: &str) -> Result<Authorization> {
        let rest = header
            .trim()
            .strip_prefix(ALGORITHM)
            .ok_or_else(|| denied(format!("the Authorization header is not {ALGORITHM}")))?;
        let (mut cred, mut signed, mut sig) = (None, None, None);
        for part in rest.split(',') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("Credential=") {
                cred = Some(v);
            } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
                signed = Some(v);
            } else if let Some(v) = part.strip_prefix("Signature=") {
                sig = Some(v);
            }
        }
        let (Some(cred), Some(signed), Some(sig)) = (cred, signed, sig) else {
            return Err(denied(
                "the Authorization header lacks Credential, SignedHeaders or Signature",
            ));
        };
        let scope: Vec<&str> = cred.split('/').collect();
        if scope.len() != 5 || scope[4] != "aws4_request" || scope[0].is_empty() {
            return Err(denied(format!(
                "credential {cred:?} is not KEYID/DATE/REGION/SERVICE/aws4_request"
            )));
        }
        Ok(Authorization {
            access_key_id: scope[0].to_string(),
            date: scope[1].to_string(),
            region: scope[2].to_string(),
            service: scope[3].to_string(),
            signed_headers: signed.split(';').map(|h| h.to_ascii_lowercase()).collect(),
            signature: sig.to_string(),
        })
    }

    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

/// A request as signed: method, path, query, headers (any case), body.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// Percent-encodes everything but RFC 3986's unreserved characters (and `/` in paths).
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (query strings arrive encoded; they are re-encoded canonically).
fn uri_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&uri_decode(k), false),
                uri_encode(&uri_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A header's value as signed: trimmed, inner runs of spaces collapsed; repeats joined by ",".
fn header_value(headers: &[(String, String)], name: &str) -> Option<String> {
    let vals: Vec<String> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    (!vals.is_empty()).then(|| vals.join(","))
}

/// The canonical request for `signed` header names (lower case, sorted).
pub fn canonical_request(r: &Request, signed: &[String]) -> Result<String> {
    let mut lines = String::new();
    for h in signed {
        let v = header_value(r.headers, h)
            .ok_or_else(|| denied(format!("signed header {h:?} is missing from the request")))?;
        lines.push_str(&format!("{h}:{v}\n"));
    }
    // The body's hash, computed here: a client's x-amz-content-sha256 header is only accepted
    // when it says the same (see `verify`), never trusted in place of the body.
    let payload = hex::encode(cryptocore::sha256(r.body));
    let path = if r.path.is_empty() { "/" } else { r.path };
    Ok(format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        r.method,
        uri_encode(&uri_decode(path), true),
        canonical_query(r.query),
        lines,
        signed.join(";"),
        payload
    ))
}

pub fn string_to_sign(amz_date: &str, scope: &str, canonical: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(cryptocore::sha256(canonical.as_bytes()))
    )
}

/// kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_secret = zeroize::Zeroizing::new(format!("AWS4{secret}"));
    let k_date = cryptocore::hmac_sha256(k_secret.as_bytes(), &[date.as_bytes()]);
    let k_region = cryptocore::hmac_sha256(&k_date, &[region.as_bytes()]);
    let k_service = cryptocore::hmac_sha256(&k_region, &[service.as_bytes()]);
    cryptocore::hmac_sha256(&k_service, &[b"aws4_request"])
}

pub fn signature(key: &[u8; 32], string_to_sign: &str) -> String {
    hex::encode(cryptocore::hmac_sha256(key, &[string_to_sign.as_bytes()]))
}

pub fn parse_amz_date(s: &str) -> Result<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ")
        .map(|t| t.and_utc())
        .map_err(|_| denied(format!("X-Amz-Date {s:?} is not yyyymmddThhmmssZ")))
}

/// Checks a signed request against the secret key of its access key id.
pub fn verify(r: &Request, auth: &Authorization, secret: &str, now: DateTime<Utc>) -> Result<()> {
    let amz_date = header_value(r.headers, "x-amz-date")
        .ok_or_else(|| denied("the request has no X-Amz-Date header"))?;
    let when = parse_amz_date(&amz_date)?;
    if (now - when).num_seconds().abs() > MAX_SKEW_SECS {
        return Err(denied(format!(
            "X-Amz-Date {amz_date} is more than 15 minutes from the server's clock"
        )));
    }
    if !amz_date.starts_with(&auth.date) {
        return Err(denied(
            "the credential scope's date is not the request's date",
        ));
    }
    for required in ["host", "x-amz-date", "x-amz-target"] {
        if !auth.signed_headers.iter().any(|h| h == required) {
            return Err(denied(format!("the {required} header must be signed")));
        }
    }
    if auth.service != "kms" {
        return Err(denied(format!(
            "the request is signed for service {:?}, not kms",
            auth.service
        )));
    }
    if let Some(claimed) = header_value(r.headers, "x-amz-content-sha256") {
        if claimed != hex::encode(cryptocore::sha256(r.body)) {
            return Err(denied("x-amz-content-sha256 is not the hash of the body"));
        }
    }
    let canonical = canonical_request(r, &auth.signed_headers)?;
    let sts = string_to_sign(&amz_date, &auth.scope(), &canonical);
    let key = signing_key(secret, &auth.date, &auth.region, &auth.service);
    let want = signature(&key, &sts);
    if !cryptocore::ct_eq(
        want.as_bytes(),
        auth.signature.to_ascii_lowercase().as_bytes(),
    ) {
        return Err(denied(
            "the request signature does not match: check the secret access key",
        ));
    }
    Ok(())
}

/// Signs a request: returns the headers to add (X-Amz-Date, the session token if any, and
/// Authorization). `r.headers` must already hold Host and every other header to sign.
pub fn sign(
    r: &Request,
    creds: &Credentials,
    region: &str,
    service: &str,
    now: DateTime<Utc>,
) -> Result<Vec<(String, String)>> {
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let date = now.format("%Y%m%d").to_string();
    let mut extra = vec![("x-amz-date".to_string(), amz_date.clone())];
    if let Some(t) = &creds.session_token {
        extra.push(("x-amz-security-token".to_string(), t.clone()));
    }
    let mut all: Vec<(String, String)> = r.headers.to_vec();
    all.extend(extra.iter().cloned());
    let mut signed: Vec<String> = all.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
    signed.sort();
    signed.dedup();
    let full = Request {
        headers: &all,
        ..*r
    };
    let canonical = canonical_request(&full, &signed)?;
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let key = signing_key(&creds.secret_access_key, &date, region, service);
    let sig = signature(&key, &string_to_sign(&amz_date, &scope, &canonical));
    extra.push((
        "authorization".to_string(),
        format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={}, Signature={sig}",
            creds.access_key_id,
            signed.join(";")
        ),
    ));
    Ok(extra)
}

/// An access key pair (and session token, for temporary credentials).
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    #[test]
    fn signing_key_matches_the_aws_documentation_example() {
        // docs.aws.amazon.com, "Examples of how to derive a signing key for Signature Version 4".
        let k = signing_key(SECRET, "20120215", "us-east-1", "iam");
        assert_eq!(
            hex::encode(k),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    fn vanilla() -> Vec<(String, String)> {
        vec![
            ("Host".to_string(), "example.amazonaws.com".to_string()),
            ("X-Amz-Date".to_string(), "20150830T123600Z".to_string()),
        ]
    }

    #[test]
    fn get_vanilla_from_the_aws_test_suite() {
        let headers = vanilla();
        let r = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &headers,
            body: b"",
        };
        let signed = vec!["host".to_string(), "x-amz-date".to_string()];
        let c = canonical_request(&r, &signed).unwrap();
        let sts = string_to_sign(
            "20150830T123600Z",
            "20150830/us-east-1/service/aws4_request",
            &c,
        );
        let key = signing_key(SECRET, "20150830", "us-east-1", "service");
        assert_eq!(
            signature(&key, &sts),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn sign_then_verify_and_tampering_fails() {
        let creds = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SECRET.into(),
            session_token: None,
        };
        let now = parse_amz_date("20261128T120000Z").unwrap();
        let mut headers = vec![
            ("host".to_string(), "127.0.0.1:4000".to_string()),
            (
                "content-type".to_string(),
                "application/x-amz-json-1.1".to_string(),
            ),
            (
                "x-amz-target".to_string(),
                "TrentService.Encrypt".to_string(),
            ),
        ];
        let body = br#"{"KeyId":"alias/a"}"#;
        let r = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body,
        };
        let added = sign(&r, &creds, "us-east-1", "kms", now).unwrap();
        headers.extend(added);
        let auth_header = header_value(&headers, "authorization").unwrap();
        let auth = Authorization::parse(&auth_header).unwrap();
        assert_eq!(auth.access_key_id, "AKIDEXAMPLE");
        assert_eq!(auth.service, "kms");
        let r = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body,
        };
        verify(&r, &auth, SECRET, now).unwrap();
        // Another secret, another body, a stale clock: each refused as AccessDenied.
        let e = verify(&r, &auth, "other", now).unwrap_err();
        assert_eq!(e.kind, ErrorKind::AccessDenied);
        let r2 = Request {
            body: br#"{"KeyId":"alias/b"}"#,
            ..r
        };
        assert!(verify(&r2, &auth, SECRET, now).is_err());
        let later = now + chrono::Duration::minutes(16);
        assert!(verify(&r, &auth, SECRET, later).is_err());
        // A payload-hash header cannot stand in for another body.
        let mut forged = headers.clone();
        forged.push((
            "x-amz-content-sha256".to_string(),
            hex::encode(cryptocore::sha256(br#"{"KeyId":"alias/a"}"#)),
        ));
        let r3 = Request {
            headers: &forged,
            body: br#"{"KeyId":"alias/b"}"#,
            ..r
        };
        assert!(verify(&r3, &auth, SECRET, now).is_err());
    }

    #[test]
    fn authorization_headers_parse_or_are_refused() {
        let a = Authorization::parse(
            "AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/kms/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc",
        )
        .unwrap();
        assert_eq!(a.region, "us-east-1");
        assert_eq!(a.signed_headers, vec!["host", "x-amz-date"]);
        assert!(Authorization::parse("Basic dXNlcjpwYXNz").is_err());
        assert!(
            Authorization::parse(
                "AWS4-HMAC-SHA256 Credential=AK/x, SignedHeaders=host, Signature=a"
            )
            .is_err()
        );
        assert_eq!(canonical_query("b=2&a=1&c=x%20y"), "a=1&b=2&c=x%20y");
    }
}
