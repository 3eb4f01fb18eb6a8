//! A small AWS KMS JSON 1.1 client for the remote key provider: SigV4-signed POSTs (ureq),
//! bounded retries with exponential backoff on throttling, 5xx and unreachable endpoints, and
//! AWS errors mapped back to our error kinds.

use crate::aws::sigv4::{self, Credentials};
use crate::error::{ErrorKind, KmsError, Result};
use serde_json::Value;
use std::time::Duration;

/// Attempts per call (the first and three retries).
pub const MAX_ATTEMPTS: u32 = 4;
/// The first retry waits this long; each next one twice as long (plus jitter).
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);

pub struct KmsClient {
    endpoint: String,
    host: String,
    region: String,
    credentials: Credentials,
    agent: ureq::Agent,
}

/// The AWS exception names we map onto our kinds; anything else from a 4xx is Validation.
fn kind_of(aws_type: &str) -> ErrorKind {
    // AWS may prefix the name with a namespace and '#'.
    let name = aws_type.rsplit('#').next().unwrap_or(aws_type);
    ErrorKind::ALL
        .iter()
        .copied()
        .find(|k| k.name() == name)
        .unwrap_or(match name {
            "InvalidKeyUsageException" => ErrorKind::InvalidKeyUsage,
            "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "MissingAuthenticationTokenException"
            | "ExpiredTokenException" => ErrorKind::AccessDenied,
            "KMSInternalException" | "InternalFailure" => ErrorKind::Internal,
            "DependencyTimeoutException" | "ServiceUnavailable" => ErrorKind::Unavailable,
            _ => ErrorKind::Validation,
        })
}

/// Whether an answer is worth retrying: throttling or a server-side failure.
fn retryable(status: u16, aws_type: &str) -> bool {
    status >= 500
        || status == 429
        || matches!(
            aws_type.rsplit('#').next().unwrap_or(aws_type),
            "ThrottlingException" | "LimitExceededException" | "KMSInternalException"
        )
}

/// Host (and port) of a URL, for the signed Host header.
fn host_of(endpoint: &str) -> Result<String> {
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .ok_or_else(|| {
            KmsError::validation(format!(
                "endpoint {endpoint:?} is not http(s)://HOST[:PORT]"
            ))
        })?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        return Err(KmsError::validation(format!(
            "endpoint {endpoint:?} has no host"
        )));
    }
    // Requests are signed and sent for path "/": a service under a path is not supported.
    if !path.is_empty() {
        return Err(KmsError::validation(format!(
            "endpoint {endpoint:?}: give scheme, host and port only (no path)"
        )));
    }
    Ok(host.to_string())
}

impl KmsClient {
    pub fn new(endpoint: &str, region: &str, credentials: Credentials) -> Result<KmsClient> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let host = host_of(&endpoint)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Ok(KmsClient {
            endpoint,
            host,
            region: region.to_string(),
            credentials,
            agent,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn attempt(&self, op: &str, body: &[u8]) -> std::result::Result<(u16, Value), String> {
        let target = format!("TrentService.{op}");
        let headers = vec![
            ("host".to_string(), self.host.clone()),
            (
                "content-type".to_string(),
                "application/x-amz-json-1.1".to_string(),
            ),
            ("x-amz-target".to_string(), target.clone()),
        ];
        let req = sigv4::Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body,
        };
        let signed = sigv4::sign(
            &req,
            &self.credentials,
            &self.region,
            "kms",
            chrono::Utc::now(),
        )
        .map_err(|e| e.message)?;
        let mut r = self
            .agent
            .post(format!("{}/", self.endpoint))
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", &target);
        for (k, v) in &signed {
            r = r.header(k, v);
        }
        let resp = r.send(body).map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp
            .into_body()
            .read_to_string()
            .map_err(|e| format!("reading the answer: {e}"))?;
        let v = if text.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_str(&text)
                .map_err(|_| format!("HTTP {status}: the answer is not JSON"))?
        };
        Ok((status, v))
    }

    /// Calls `op` with a JSON body; retries throttling, 5xx and transport failures.
    pub fn call(&self, op: &str, body: &Value) -> Result<Value> {
        let bytes = body.to_string().into_bytes();
        let mut wait = FIRST_BACKOFF;
        let mut last = String::new();
        for attempt in 1..=MAX_ATTEMPTS {
            match self.attempt(op, &bytes) {
                Ok((200..=299, v)) => return Ok(v),
                Ok((status, v)) => {
                    let ty = v
                        .get("__type")
                        .and_then(Value::as_str)
                        .unwrap_or("UnknownError")
                        .to_string();
                    let msg = v
                        .get("message")
                        .or_else(|| v.get("Message"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    if !retryable(status, &ty) {
                        let kind = kind_of(&ty);
                        return Err(KmsError::new(
                            kind,
                            format!("{} ({op}): {ty}: {msg}", self.endpoint),
                        ));
                    }
                    last = format!("HTTP {status} {ty}: {msg}");
                }
                Err(e) => last = e,
            }
            if attempt < MAX_ATTEMPTS {
                log::info!("{op} at {}: {last}; retrying in {wait:?}", self.endpoint);
                std::thread::sleep(wait + jitter(wait));
                wait *= 2;
            }
        }
        Err(KmsError::new(
            ErrorKind::Unavailable,
            format!(
                "the key service at {} did not answer {op} after {MAX_ATTEMPTS} attempts: {last}",
                self.endpoint
            ),
        ))
    }
}

/// Up to half of `d` at random, so many clients backing off do not retry in step.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    if crate::cryptocore::fill_random(&mut b).is_err() {
        return Duration::ZERO;
    }
    d.mul_f64(f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_errors_map_to_kinds() {
        assert_eq!(kind_of("DisabledException"), ErrorKind::Disabled);
        assert_eq!(
            kind_of("com.amazonaws.kms#NotFoundException"),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind_of("KMSInvalidStateException"),
            ErrorKind::KmsInvalidState
        );
        assert_eq!(
            kind_of("UnrecognizedClientException"),
            ErrorKind::AccessDenied
        );
        assert_eq!(kind_of("SomethingNew"), ErrorKind::Validation);
        assert!(retryable(503, "ServiceUnavailable"));
        assert!(retryable(400, "ThrottlingException"));
        assert!(!retryable(400, "DisabledException"));
    }

    #[test]
    fn endpoints_need_a_scheme_and_host() {
        assert_eq!(host_of("http://127.0.0.1:4599").unwrap(), "127.0.0.1:4599");
        assert_eq!(
            host_of("https://kms.eu-west-1.amazonaws.com/").unwrap(),
            "kms.eu-west-1.amazonaws.com"
        );
        assert!(host_of("kms.example.com").is_err());
        assert!(host_of("http:///").is_err());
        assert!(host_of("https://proxy.example/kms").is_err());
    }

    /// A one-shot HTTP server on loopback answering each connection with the next of `answers`
    /// (status, body); returns its URL and a counter of requests served.
    fn scripted(
        answers: Vec<(u16, &'static str)>,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = served.clone();
        std::thread::spawn(move || {
            for (status, body) in answers {
                let Ok((mut c, _)) = l.accept() else { return };
                let mut buf = [0u8; 8192];
                let mut req = Vec::new();
                // Headers, then the body its Content-Length announces.
                loop {
                    let n = c.read(&mut buf).unwrap_or(0);
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if req.len() >= end + 4 + len || n == 0 {
                            break;
                        }
                    }
                    if n == 0 {
                        break;
                    }
                }
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = write!(
                    c,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, served)
    }

    fn client(url: &str) -> KmsClient {
        KmsClient::new(
            url,
            "us-east-1",
            Credentials {
                access_key_id: "AK".into(),
                secret_access_key: "s".into(),
                session_token: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn throttling_and_5xx_are_retried_then_succeed() {
        let (url, served) = scripted(vec![
            (
                400,
                r#"{"__type":"ThrottlingException","message":"slow down"}"#,
            ),
            (503, r#"{"__type":"ServiceUnavailable"}"#),
            (200, r#"{"Keys":[],"Truncated":false}"#),
        ]);
        let v = client(&url)
            .call("ListKeys", &serde_json::json!({}))
            .unwrap();
        assert_eq!(v["Truncated"], false);
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn client_errors_are_not_retried() {
        let (url, served) = scripted(vec![
            (
                400,
                r#"{"__type":"DisabledException","message":"key is disabled"}"#,
            ),
            (200, r#"{}"#),
        ]);
        let e = client(&url)
            .call("Decrypt", &serde_json::json!({}))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Disabled);
        assert!(e.message.contains("key is disabled"), "{}", e.message);
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn an_unreachable_endpoint_is_unavailable_after_bounded_retries() {
        // Port 9 on loopback: nothing listens, the connection is refused at once.
        let c = KmsClient::new(
            "http://127.0.0.1:9",
            "us-east-1",
            Credentials {
                access_key_id: "AK".into(),
                secret_access_key: "s".into(),
                session_token: None,
            },
        )
        .unwrap();
        let t = std::time::Instant::now();
        let e = c.call("ListKeys", &serde_json::json!({})).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.message.contains("127.0.0.1:9"), "{}", e.message);
        // Three backoffs of 100, 200 and 400 ms (+ at most half again), not an endless loop.
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(700) && took < Duration::from_secs(20),
            "{took:?}"
        );
    }
}
