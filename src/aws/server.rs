//! `kmsfs serve`: the AWS KMS JSON 1.1 protocol over HTTP (hyper through axum), on TCP and/or a
//! Unix socket. Each request: the SigV4 access key names a local principal (its signature is
//! checked with --verify-signatures), the body goes to `operations::dispatch` on a blocking
//! thread, and the answer or `{"__type", "message"}` error goes back. Key policies and the audit
//! log apply exactly as for the CLI, because the same `Kms` calls serve both.

use crate::aws::credentials::CredentialMap;
use crate::aws::operations::{self, OPERATIONS};
use crate::aws::sigv4;
use crate::error::{KmsError, Result};
use crate::kms::{Caller, Kms};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// The largest request body taken (a 32 KiB policy is the largest legitimate field).
const MAX_BODY: usize = 256 * 1024;
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
const TARGET_PREFIX: &str = "TrentService.";

pub struct ServeOptions {
    pub listen: Vec<SocketAddr>,
    pub unix: Option<PathBuf>,
    pub credentials: CredentialMap,
    pub verify_signatures: bool,
    /// Host header values accepted besides the listeners' own addresses (for a proxy's name).
    pub hosts: Vec<String>,
}

struct AppState {
    kms: Kms,
    credentials: CredentialMap,
    verify_signatures: bool,
}

/// One listener's view: the shared state and the Host header values requests to it may carry
/// (lower case), so a request signed for another server is not accepted here.
struct Listener {
    app: Arc<AppState>,
    hosts: Vec<String>,
}

/// The names a client may use for a TCP listener: its address, and for loopback or wildcard
/// addresses the loopback names with its port; plus the operator's `--host` names.
fn tcp_hosts(local: SocketAddr, extra: &[String]) -> Vec<String> {
    let port = local.port();
    let mut hosts = vec![local.to_string()];
    if local.ip().is_loopback() || local.ip().is_unspecified() {
        hosts.extend([
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ]);
    }
    hosts.extend(extra.iter().map(|h| h.to_ascii_lowercase()));
    hosts.dedup();
    hosts
}

/// An error the protocol layer answers before any KMS operation runs.
struct WireError {
    status: u16,
    name: &'static str,
    message: String,
}

impl WireError {
    fn new(status: u16, name: &'static str, message: impl Into<String>) -> WireError {
        WireError {
            status,
            name,
            message: message.into(),
        }
    }
}

impl From<KmsError> for WireError {
    fn from(e: KmsError) -> WireError {
        let message = if operations::status_of(e.kind) == 500 {
            // Our own failures are logged here, not detailed to clients.
            log::error!("request failed: {e}");
            "the key management service failed; see its log".to_string()
        } else {
            e.message
        };
        WireError::new(
            operations::status_of(e.kind),
            operations::wire_name(e.kind),
            message,
        )
    }
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Who is calling: the access key id of the Authorization header, mapped to a principal.
fn authenticate(
    l: &Listener,
    method: &Method,
    uri: &Uri,
    h: &HeaderMap,
    body: &[u8],
) -> Result<Caller, WireError> {
    let Some(auth) = header_str(h, "authorization") else {
        return Err(WireError::new(
            400,
            "MissingAuthenticationTokenException",
            "the request is not signed (no Authorization header)",
        ));
    };
    let auth = sigv4::Authorization::parse(auth)?;
    let Some(cred) = l.app.credentials.get(&auth.access_key_id) else {
        return Err(WireError::new(
            400,
            "UnrecognizedClientException",
            format!(
                "access key {} is not in the credentials file",
                auth.access_key_id
            ),
        ));
    };
    if l.app.verify_signatures {
        let host = header_str(h, "host")
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !l.hosts.contains(&host) {
            return Err(WireError::new(
                400,
                "AccessDeniedException",
                format!("Host {host:?} is not this server's name (see kmsfs serve --host)"),
            ));
        }
        let headers: Vec<(String, String)> = h
            .iter()
            .filter_map(|(n, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (n.as_str().to_string(), v.to_string()))
            })
            .collect();
        let req = sigv4::Request {
            method: method.as_str(),
            path: uri.path(),
            query: uri.query().unwrap_or(""),
            headers: &headers,
            body,
        };
        // Freshness is judged by the real clock, not KMSFS_NOW (a test clock for key dates):
        // clients sign with the real time.
        sigv4::verify(&req, &auth, &cred.secret_access_key, chrono::Utc::now())?;
    }
    Caller::for_principal(&cred.principal).map_err(WireError::from)
}

fn answer(
    l: &Listener,
    method: &Method,
    uri: &Uri,
    h: &HeaderMap,
    body: &[u8],
) -> Result<Value, WireError> {
    if method != Method::POST || uri.path() != "/" {
        return Err(WireError::new(
            404,
            "UnknownOperationException",
            "requests are POST / with an X-Amz-Target header",
        ));
    }
    let op = header_str(h, "x-amz-target")
        .and_then(|t| t.strip_prefix(TARGET_PREFIX))
        .ok_or_else(|| {
            WireError::new(
                400,
                "UnknownOperationException",
                "no X-Amz-Target: TrentService.<Operation>",
            )
        })?;
    if !OPERATIONS.contains(&op) {
        return Err(WireError::new(
            400,
            "UnknownOperationException",
            format!("operation {op} is not supported by kmsfs"),
        ));
    }
    let caller = authenticate(l, method, uri, h, body)?;
    let parsed: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| {
            WireError::new(
                400,
                "SerializationException",
                format!("the body is not JSON: {e}"),
            )
        })?
    };
    let Value::Object(map) = parsed else {
        return Err(WireError::new(
            400,
            "SerializationException",
            "the body is not a JSON object",
        ));
    };
    let out = operations::dispatch(&l.app.kms, &caller, op, &map);
    match &out {
        Ok(_) => log::debug!("{op} by {}: ok", caller.uid),
        Err(e) => log::info!("{op} by uid {}: {}", caller.uid, e.kind.name()),
    }
    Ok(out?)
}

fn respond(result: Result<Value, WireError>) -> Response {
    let (status, body) = match result {
        Ok(v) => (200, v),
        Err(e) => (e.status, json!({ "__type": e.name, "message": e.message })),
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        Body::from(body.to_string()),
    )
        .into_response()
}

async fn handle(
    State(st): State<Arc<Listener>>,
    method: Method,
    uri: Uri,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    // Key store work blocks (file lock, fsync): keep it off the async workers.
    let done = tokio::task::spawn_blocking(move || answer(&st, &method, &uri, &h, &body)).await;
    respond(done.unwrap_or_else(|_| {
        Err(WireError::new(
            500,
            "KMSInternalException",
            "the request handler failed",
        ))
    }))
}

fn router(st: Arc<Listener>) -> axum::Router {
    axum::Router::new()
        .fallback(handle)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(st)
}

/// Catches SIGTERM and SIGINT from now on; the future ends at the first. Made before readiness
/// is announced: a signal that follows it at once must stop the server, not kill it unclean.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let catch =
        |kind| signal(kind).map_err(|e| KmsError::internal(format!("catching signals: {e}")));
    let (mut term, mut int) = (
        catch(SignalKind::terminate())?,
        catch(SignalKind::interrupt())?,
    );
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Serves until SIGINT or SIGTERM. Prints one `listening on URL` line per listener first.
pub fn serve(kms: Kms, opts: ServeOptions) -> Result<()> {
    if opts.listen.is_empty() && opts.unix.is_none() {
        return Err(KmsError::validation(
            "give --listen ADDR:PORT and/or --unix PATH",
        ));
    }
    if opts.credentials.is_empty() {
        return Err(KmsError::validation(
            "the credentials file lists no access keys: nobody could call the API",
        ));
    }
    let st = Arc::new(AppState {
        kms,
        credentials: opts.credentials,
        verify_signatures: opts.verify_signatures,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .build()
        .map_err(|e| KmsError::internal(format!("starting the server runtime: {e}")))?;
    rt.block_on(async move {
        let signalled = shutdown_signal()?;
        let mut tasks = tokio::task::JoinSet::new();
        let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
        for addr in &opts.listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| KmsError::validation(format!("listening on {addr}: {e}")))?;
            let local = l
                .local_addr()
                .map_err(|e| KmsError::internal(e.to_string()))?;
            println!("listening on http://{local}");
            let mut stop = stop_tx.subscribe();
            let app = router(Arc::new(Listener {
                app: st.clone(),
                hosts: tcp_hosts(local, &opts.hosts),
            }));
            tasks.spawn(async move {
                axum::serve(l, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.recv().await;
                    })
                    .await
            });
        }
        if let Some(path) = &opts.unix {
            remove_stale_socket(path)?;
            let l = tokio::net::UnixListener::bind(path).map_err(|e| {
                KmsError::validation(format!("listening on {}: {e}", path.display()))
            })?;
            println!("listening on unix:{}", path.display());
            let mut stop = stop_tx.subscribe();
            // Clients of a Unix socket name no host; "localhost" is the usual Host they send.
            let mut hosts = vec!["localhost".to_string()];
            hosts.extend(opts.hosts.iter().map(|h| h.to_ascii_lowercase()));
            let app = router(Arc::new(Listener {
                app: st.clone(),
                hosts,
            }));
            tasks.spawn(async move {
                axum::serve(l, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.recv().await;
                    })
                    .await
            });
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        crate::fs::notify::ready();
        signalled.await;
        crate::fs::notify::stopping();
        let _ = stop_tx.send(());
        while let Some(r) = tasks.join_next().await {
            if let Ok(Err(e)) = r {
                log::warn!("server stopped with: {e}");
            }
        }
        if let Some(path) = &opts.unix {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    })
}

/// A socket left by a server that died is replaced; any other file is not.
fn remove_stale_socket(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .map_err(|e| KmsError::validation(format!("{}: {e}", path.display()))),
        Ok(_) => Err(KmsError::validation(format!(
            "{} exists and is not a socket",
            path.display()
        ))),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn listeners_accept_their_own_names_only() {
        let h = tcp_hosts("127.0.0.1:4599".parse().unwrap(), &[]);
        assert!(h.contains(&"127.0.0.1:4599".to_string()));
        assert!(h.contains(&"localhost:4599".to_string()));
        assert!(
            !h.contains(&"localhost".to_string()),
            "port 80 is another server"
        );
        let h = tcp_hosts("0.0.0.0:4599".parse().unwrap(), &["KMS.example.com".into()]);
        assert!(h.contains(&"localhost:4599".to_string()));
        assert!(h.contains(&"kms.example.com".to_string()));
        let h = tcp_hosts("192.0.2.7:443".parse().unwrap(), &[]);
        assert_eq!(h, vec!["192.0.2.7:443".to_string()]);
    }

    #[test]
    fn errors_carry_aws_names_and_statuses() {
        let w = WireError::from(KmsError::new(ErrorKind::Disabled, "key x is disabled"));
        assert_eq!((w.status, w.name), (400, "DisabledException"));
        let w = WireError::from(KmsError::keystore("/var/lib/kmsfs/keys.db: EIO"));
        assert_eq!((w.status, w.name), (500, "KMSInternalException"));
        assert!(
            !w.message.contains("keys.db"),
            "internal details stay in the log"
        );
    }
}
