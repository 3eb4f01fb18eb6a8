//! `kmsfs serve` against real AWS clients from PyPI: the boto3 suite (tests/api/boto3_suite.py:
//! every operation, its errors, a concurrency run) and the `aws` CLI. `.ci/run` installs boto3,
//! awscli and cryptography; a missing client fails the test rather than skipping it.

mod common;
use common::*;
use std::process::{Child, Command, Stdio};

const ROOT_KEY: &str = "AKIAKMSFSROOT";
const ROOT_SECRET: &str = "root-secret-for-tests";
const USER_KEY: &str = "AKIAKMSFSUSER";
const USER_SECRET: &str = "user-secret-for-tests";

/// A running `kmsfs serve`, killed when dropped.
struct Server {
    child: Child,
    endpoint: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_credentials(e: &Env) -> String {
    write_api_credentials(
        e,
        "api-credentials.toml",
        &[
            (ROOT_KEY, ROOT_SECRET, "uid:0"),
            (USER_KEY, USER_SECRET, "uid:4242"),
        ],
    )
}

fn serve(e: &Env, extra: &[&str]) -> Server {
    let creds = write_credentials(e);
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--credentials", &creds];
    args.extend(extra);
    let mut c = e.command(&args);
    c.stderr(Stdio::inherit());
    let (child, endpoint) = spawn_serve(c);
    Server { child, endpoint }
}

fn python_suite(server: &Server) -> std::process::Output {
    Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/api/boto3_suite.py"
        ))
        .env("KMSFS_ENDPOINT", &server.endpoint)
        .env("KMSFS_ROOT_KEY_ID", ROOT_KEY)
        .env("KMSFS_ROOT_SECRET", ROOT_SECRET)
        .env("KMSFS_USER_KEY_ID", USER_KEY)
        .env("KMSFS_USER_SECRET", USER_SECRET)
        .output()
        .expect("python3 runs")
}

#[test]
fn boto3_covers_every_operation_with_signatures_checked() {
    let e = Env::new();
    let server = serve(&e, &["--verify-signatures"]);
    let out = python_suite(&server);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "boto3 suite failed:\n{err}");
    // Every operation the server answers was called by the suite (so none goes untested).
    let ops: std::collections::BTreeSet<String> = e
        .audit_lines()
        .iter()
        .filter_map(|l| l["operation"].as_str().map(str::to_string))
        .collect();
    for op in kmsfs::aws::operations::OPERATIONS {
        assert!(ops.contains(*op), "no audit record of {op}: {ops:?}");
    }
    // API callers are audited as their principals: uid 4242's denied Decrypt is there.
    let denied = e.audit_lines().into_iter().any(|l| {
        l["operation"] == "Decrypt"
            && l["caller"]["uid"] == 4242
            && l["result"] == "AccessDeniedException"
    });
    assert!(denied, "the policy denial of uid 4242 was not audited");
    e.ok(&["audit", "verify"]);
}

fn aws(server: &Server, args: &[&str]) -> std::process::Output {
    Command::new("aws")
        .args([
            "--endpoint-url",
            &server.endpoint,
            "--output",
            "json",
            "kms",
        ])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", ROOT_KEY)
        .env("AWS_SECRET_ACCESS_KEY", ROOT_SECRET)
        .env("AWS_DEFAULT_REGION", "eu-west-1")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("the aws CLI runs")
}

fn aws_ok(server: &Server, args: &[&str]) -> serde_json::Value {
    let out = aws(server, args);
    assert!(
        out.status.success(),
        "aws kms {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(&out.stdout).expect("aws prints JSON")
}

fn aws_fails(server: &Server, args: &[&str], code: &str) {
    let out = aws(server, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "aws kms {args:?} succeeded");
    assert!(
        err.contains(code),
        "aws kms {args:?}: want {code}, got {err}"
    );
}

#[test]
fn the_aws_cli_works_against_kmsfs_serve() {
    let e = Env::new();
    let s = serve(&e, &["--verify-signatures"]);
    let kid = key_id(&aws_ok(
        &s,
        &["create-key", "--description", "from the aws cli"],
    ));
    aws_ok(
        &s,
        &[
            "create-alias",
            "--alias-name",
            "alias/cli",
            "--target-key-id",
            &kid,
        ],
    );
    let listed = aws_ok(&s, &["list-aliases"]);
    assert_eq!(listed["Aliases"][0]["AliasName"], "alias/cli");
    let keys = aws_ok(&s, &["list-keys"]);
    assert_eq!(keys["Keys"][0]["KeyId"], kid.as_str());
    let plain = e.path("plain.txt");
    std::fs::write(&plain, b"from the aws cli").unwrap();
    let enc = aws_ok(
        &s,
        &[
            "encrypt",
            "--key-id",
            "alias/cli",
            "--plaintext",
            &format!("fileb://{}", plain.display()),
            "--encryption-context",
            "purpose=test",
        ],
    );
    let fileb = to_file(&e, "blob", &enc["CiphertextBlob"]);
    let d = aws_ok(
        &s,
        &[
            "decrypt",
            "--ciphertext-blob",
            &fileb,
            "--encryption-context",
            "purpose=test",
        ],
    );
    let pt = to_file(&e, "decrypted", &d["Plaintext"]);
    assert_eq!(
        std::fs::read(pt.strip_prefix("fileb://").unwrap()).unwrap(),
        b"from the aws cli"
    );
    aws_fails(
        &s,
        &[
            "decrypt",
            "--ciphertext-blob",
            &fileb,
            "--encryption-context",
            "purpose=other",
        ],
        "InvalidCiphertextException",
    );
    let dk = aws_ok(
        &s,
        &[
            "generate-data-key",
            "--key-id",
            &kid,
            "--key-spec",
            "AES_256",
        ],
    );
    assert!(dk["Plaintext"].is_string());
    aws_ok(&s, &["generate-random", "--number-of-bytes", "16"]);
    aws_ok(&s, &["enable-key-rotation", "--key-id", &kid]);
    assert_eq!(
        aws_ok(&s, &["get-key-rotation-status", "--key-id", &kid])["KeyRotationEnabled"],
        true
    );
    aws_ok(&s, &["rotate-key-on-demand", "--key-id", &kid]);
    aws_ok(
        &s,
        &[
            "tag-resource",
            "--key-id",
            &kid,
            "--tags",
            "TagKey=env,TagValue=ci",
        ],
    );
    assert_eq!(
        aws_ok(&s, &["list-resource-tags", "--key-id", &kid])["Tags"][0]["TagValue"],
        "ci"
    );
    let signer = key_id(&aws_ok(
        &s,
        &[
            "create-key",
            "--key-spec",
            "ECC_NIST_P256",
            "--key-usage",
            "SIGN_VERIFY",
        ],
    ));
    let signed = aws_ok(
        &s,
        &[
            "sign",
            "--key-id",
            &signer,
            "--message",
            &format!("fileb://{}", plain.display()),
            "--signing-algorithm",
            "ECDSA_SHA_256",
        ],
    );
    let sigf = to_file(&e, "sig", &signed["Signature"]);
    let v = aws_ok(
        &s,
        &[
            "verify",
            "--key-id",
            &signer,
            "--message",
            &format!("fileb://{}", plain.display()),
            "--signature",
            &sigf,
            "--signing-algorithm",
            "ECDSA_SHA_256",
        ],
    );
    assert_eq!(v["SignatureValid"], true);
    assert!(aws_ok(&s, &["get-public-key", "--key-id", &signer])["PublicKey"].is_string());
    aws_ok(&s, &["disable-key", "--key-id", &kid]);
    aws_fails(
        &s,
        &[
            "encrypt",
            "--key-id",
            &kid,
            "--plaintext",
            &format!("fileb://{}", plain.display()),
        ],
        "DisabledException",
    );
    aws_ok(&s, &["enable-key", "--key-id", &kid]);
    aws_ok(
        &s,
        &[
            "schedule-key-deletion",
            "--key-id",
            &kid,
            "--pending-window-in-days",
            "7",
        ],
    );
    aws_fails(
        &s,
        &[
            "encrypt",
            "--key-id",
            &kid,
            "--plaintext",
            &format!("fileb://{}", plain.display()),
        ],
        "KMSInvalidStateException",
    );
    aws_ok(&s, &["cancel-key-deletion", "--key-id", &kid]);
    let policy = aws_ok(
        &s,
        &[
            "get-key-policy",
            "--key-id",
            &kid,
            "--policy-name",
            "default",
        ],
    );
    assert!(policy["Policy"].as_str().unwrap().contains("kms:*"));
}

/// Base64 text from an aws CLI answer, decoded and written to a file; returns `fileb://PATH`.
fn to_file(e: &Env, name: &str, b64: &serde_json::Value) -> String {
    use base64::Engine;
    let p = e.path(name);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().expect("a base64 field"))
        .unwrap();
    std::fs::write(&p, bytes).unwrap();
    format!("fileb://{}", p.display())
}

fn key_id(v: &serde_json::Value) -> String {
    v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string()
}

/// The operations the first aws CLI test does not call, so that the aws CLI covers them all.
#[test]
fn the_aws_cli_covers_the_remaining_operations() {
    let e = Env::new();
    let s = serve(&e, &[]);
    let kid = key_id(&aws_ok(&s, &["create-key"]));
    let other = key_id(&aws_ok(&s, &["create-key"]));
    assert_eq!(
        key_id(&aws_ok(&s, &["describe-key", "--key-id", &kid])),
        kid
    );
    aws_ok(
        &s,
        &[
            "create-alias",
            "--alias-name",
            "alias/gone",
            "--target-key-id",
            &kid,
        ],
    );
    aws_ok(&s, &["delete-alias", "--alias-name", "alias/gone"]);
    aws_fails(
        &s,
        &["describe-key", "--key-id", "alias/gone"],
        "NotFoundException",
    );
    // ReEncrypt between keys, from a data key made without plaintext.
    let dk = aws_ok(
        &s,
        &[
            "generate-data-key-without-plaintext",
            "--key-id",
            &kid,
            "--number-of-bytes",
            "32",
        ],
    );
    assert!(dk.get("Plaintext").is_none());
    let blob = to_file(&e, "dk.blob", &dk["CiphertextBlob"]);
    let re = aws_ok(
        &s,
        &[
            "re-encrypt",
            "--ciphertext-blob",
            &blob,
            "--destination-key-id",
            &other,
        ],
    );
    assert!(re["KeyId"].as_str().unwrap().ends_with(&other));
    assert!(re["SourceKeyId"].as_str().unwrap().ends_with(&kid));
    let moved = to_file(&e, "moved.blob", &re["CiphertextBlob"]);
    let d = aws_ok(&s, &["decrypt", "--ciphertext-blob", &moved]);
    assert!(d["KeyId"].as_str().unwrap().ends_with(&other));
    let kp = aws_ok(
        &s,
        &[
            "generate-data-key-pair",
            "--key-id",
            &kid,
            "--key-pair-spec",
            "ECC_NIST_P384",
        ],
    );
    assert!(kp["PrivateKeyPlaintext"].is_string() && kp["PublicKey"].is_string());
    let kpw = aws_ok(
        &s,
        &[
            "generate-data-key-pair-without-plaintext",
            "--key-id",
            &kid,
            "--key-pair-spec",
            "RSA_2048",
        ],
    );
    assert!(kpw.get("PrivateKeyPlaintext").is_none());
    // Rotation settings and history.
    aws_ok(
        &s,
        &[
            "enable-key-rotation",
            "--key-id",
            &kid,
            "--rotation-period-in-days",
            "100",
        ],
    );
    aws_ok(&s, &["disable-key-rotation", "--key-id", &kid]);
    assert_eq!(
        aws_ok(&s, &["get-key-rotation-status", "--key-id", &kid])["KeyRotationEnabled"],
        false
    );
    aws_ok(&s, &["rotate-key-on-demand", "--key-id", &kid]);
    let rot = aws_ok(&s, &["list-key-rotations", "--key-id", &kid]);
    assert_eq!(rot["Rotations"][0]["RotationType"], "ON_DEMAND");
    // Policies: names, and a put that denies root encryption (but keeps PutKeyPolicy).
    let names = aws_ok(&s, &["list-key-policies", "--key-id", &kid]);
    assert_eq!(names["PolicyNames"], serde_json::json!(["default"]));
    let policy = r#"{"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Local": "uid:0"}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "no-encrypt", "Effect": "Deny", "Principal": {"Local": "uid:0"}, "Action": "kms:Encrypt", "Resource": "*"}]}"#;
    aws_ok(
        &s,
        &[
            "put-key-policy",
            "--key-id",
            &kid,
            "--policy-name",
            "default",
            "--policy",
            policy,
        ],
    );
    let plain = e.path("plain");
    std::fs::write(&plain, b"x").unwrap();
    let plainf = format!("fileb://{}", plain.display());
    aws_fails(
        &s,
        &["encrypt", "--key-id", &kid, "--plaintext", &plainf],
        "AccessDeniedException",
    );
    // Tags off again.
    aws_ok(
        &s,
        &[
            "tag-resource",
            "--key-id",
            &other,
            "--tags",
            "TagKey=a,TagValue=1",
            "TagKey=b,TagValue=2",
        ],
    );
    aws_ok(
        &s,
        &["untag-resource", "--key-id", &other, "--tag-keys", "a"],
    );
    let tags = aws_ok(&s, &["list-resource-tags", "--key-id", &other]);
    assert_eq!(
        tags["Tags"],
        serde_json::json!([{"TagKey": "b", "TagValue": "2"}])
    );
    // MACs.
    let hmac = key_id(&aws_ok(
        &s,
        &[
            "create-key",
            "--key-spec",
            "HMAC_384",
            "--key-usage",
            "GENERATE_VERIFY_MAC",
        ],
    ));
    let msg = e.path("msg");
    std::fs::write(&msg, b"message").unwrap();
    let msgf = format!("fileb://{}", msg.display());
    let mac = aws_ok(
        &s,
        &[
            "generate-mac",
            "--key-id",
            &hmac,
            "--mac-algorithm",
            "HMAC_SHA_384",
            "--message",
            &msgf,
        ],
    );
    let macf = to_file(&e, "mac", &mac["Mac"]);
    let v = aws_ok(
        &s,
        &[
            "verify-mac",
            "--key-id",
            &hmac,
            "--mac-algorithm",
            "HMAC_SHA_384",
            "--message",
            &msgf,
            "--mac",
            &macf,
        ],
    );
    assert_eq!(v["MacValid"], true);
    // Import: wrap 32 bytes with openssl to the public key GetParametersForImport returns.
    let ext = key_id(&aws_ok(&s, &["create-key", "--origin", "EXTERNAL"]));
    let p = aws_ok(
        &s,
        &[
            "get-parameters-for-import",
            "--key-id",
            &ext,
            "--wrapping-algorithm",
            "RSAES_OAEP_SHA_256",
            "--wrapping-key-spec",
            "RSA_2048",
        ],
    );
    let public = to_file(&e, "wrap.der", &p["PublicKey"]);
    let token = to_file(&e, "token", &p["ImportToken"]);
    let material = e.path("material");
    std::fs::write(&material, [7u8; 32]).unwrap();
    let wrapped = e.path("wrapped");
    let out = Command::new("openssl")
        .args(["pkeyutl", "-encrypt", "-pubin", "-keyform", "DER", "-inkey"])
        .arg(public.strip_prefix("fileb://").unwrap())
        .arg("-in")
        .arg(&material)
        .arg("-out")
        .arg(&wrapped)
        .args([
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha256",
            "-pkeyopt",
            "rsa_mgf1_md:sha256",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    aws_ok(
        &s,
        &[
            "import-key-material",
            "--key-id",
            &ext,
            "--import-token",
            &token,
            "--encrypted-key-material",
            &format!("fileb://{}", wrapped.display()),
            "--expiration-model",
            "KEY_MATERIAL_DOES_NOT_EXPIRE",
        ],
    );
    let st = aws_ok(&s, &["describe-key", "--key-id", &ext]);
    assert_eq!(st["KeyMetadata"]["KeyState"], "Enabled");
}

#[test]
fn unsigned_and_malformed_requests_get_aws_errors() {
    let e = Env::new();
    let s = serve(&e, &["--no-verify-signatures"]);
    let url = s.endpoint.clone();
    let post = |target: Option<&str>, auth: Option<&str>, body: &str| -> (u16, serde_json::Value) {
        let mut r = ureq::post(&url).header("Content-Type", "application/x-amz-json-1.1");
        if let Some(t) = target {
            r = r.header("X-Amz-Target", t);
        }
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        let resp = r
            .config()
            .http_status_as_error(false)
            .build()
            .send(body)
            .expect("the server answers");
        let status = resp.status().as_u16();
        let v = resp.into_body().read_json().expect("JSON body");
        (status, v)
    };
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={ROOT_KEY}/20261128/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=00"
    );
    // With --no-verify-signatures the access key id alone names the caller.
    let (st, v) = post(Some("TrentService.ListKeys"), Some(&auth), "{}");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["Truncated"], false);
    let (st, v) = post(Some("TrentService.ListKeys"), None, "{}");
    assert_eq!(
        (st, v["__type"].as_str()),
        (400, Some("MissingAuthenticationTokenException"))
    );
    let (st, v) = post(Some("TrentService.Frobnicate"), Some(&auth), "{}");
    assert_eq!(
        (st, v["__type"].as_str()),
        (400, Some("UnknownOperationException"))
    );
    let (st, v) = post(Some("TrentService.Encrypt"), Some(&auth), "{not json");
    assert_eq!(
        (st, v["__type"].as_str()),
        (400, Some("SerializationException"))
    );
    let (st, v) = post(
        Some("TrentService.Encrypt"),
        Some(&auth),
        "{\"Plaintext\": \"eA==\"}",
    );
    assert_eq!(
        (st, v["__type"].as_str()),
        (400, Some("ValidationException"))
    );
    assert!(v["message"].as_str().unwrap().contains("KeyId"));
    let (st, v) = post(Some("TrentService.ListKeys"), Some("Basic eDp5"), "{}");
    assert_eq!(
        (st, v["__type"].as_str()),
        (400, Some("AccessDeniedException"))
    );
}

/// systemd's side of sd_notify: a datagram socket the server is told about in $NOTIFY_SOCKET.
struct Notify {
    path: std::path::PathBuf,
    sock: std::os::unix::net::UnixDatagram,
}

impl Notify {
    fn new(e: &Env) -> Notify {
        let path = e.path("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        Notify { path, sock }
    }

    /// Runs `kmsfs ARGS` as systemd would and waits for its READY=1.
    fn start(&self, e: &Env, args: &[&str]) -> Server {
        let child = e
            .command(args)
            .env("NOTIFY_SOCKET", &self.path)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // Killed by the guard if an assertion fails.
        let server = Server {
            child,
            endpoint: String::new(),
        };
        self.expect("READY=1");
        server
    }

    fn expect(&self, state: &str) {
        let mut buf = [0u8; 256];
        let n = self
            .sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("{state} within 20 s: {e}"));
        assert!(String::from_utf8_lossy(&buf[..n]).contains(state));
    }

    /// SIGTERM: the server says STOPPING=1 and exits 0.
    fn stop(&self, mut server: Server) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(server.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        self.expect("STOPPING=1");
        assert!(server.child.wait().unwrap().success());
    }
}

/// The ExecStart line of config/systemd/kmsfs-serve.service, run as systemd would: READY=1
/// once both listeners are up, the Unix socket answers the protocol, SIGTERM stops it cleanly
/// (STOPPING=1) and removes the socket.
#[test]
fn the_serve_unit_command_signals_readiness_and_serves_its_unix_socket() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let e = Env::new();
    let creds = write_credentials(&e);
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/systemd/kmsfs-serve.service"
    ))
    .unwrap();
    assert!(unit.contains("Type=notify"));
    let sock = e.path("kms.sock");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap()
        .replace("127.0.0.1:4599", "127.0.0.1:0")
        .replace("/run/kmsfs/kms.sock", sock.to_str().unwrap())
        .replace("/etc/kmsfs/api-credentials.toml", &creds);
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/kmsfs"));
    let notify = Notify::new(&e);
    let server = notify.start(&e, &words.collect::<Vec<_>>());
    // The unit verifies signatures; an unsigned request is refused, which still shows the
    // protocol answering on the socket.
    let mut s = UnixStream::connect(&sock).expect("the unit's Unix socket is listening");
    let body = "{}";
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-amz-json-1.1\r\n\
         X-Amz-Target: TrentService.ListKeys\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("MissingAuthenticationTokenException"),
        "{answer}"
    );
    notify.stop(server);
    assert!(!sock.exists(), "the socket is removed on exit");
}

/// A SIGTERM sent the moment READY=1 arrives stops the server cleanly too: its signal handlers
/// are in place before it announces readiness.
#[test]
fn a_sigterm_right_after_readiness_stops_the_server_cleanly() {
    let e = Env::new();
    let creds = write_credentials(&e);
    let notify = Notify::new(&e);
    for round in 0..10 {
        let sock = e.path(&format!("kms{round}.sock"));
        let args = [
            "serve",
            "--unix",
            sock.to_str().unwrap(),
            "--credentials",
            &creds,
        ];
        notify.stop(notify.start(&e, &args));
        assert!(
            !sock.exists(),
            "round {round}: the socket is removed on exit"
        );
    }
}

/// Sends a request signed with the root key for `host` (Host header too) over TCP to `server`;
/// returns the status line and body.
fn signed_raw(server: &Server, host: &str, body: &str, extra: &[(&str, &str)]) -> String {
    use kmsfs::aws::sigv4;
    use std::io::{Read, Write};
    let mut headers = vec![
        ("host".to_string(), host.to_string()),
        (
            "content-type".to_string(),
            "application/x-amz-json-1.1".to_string(),
        ),
        (
            "x-amz-target".to_string(),
            "TrentService.ListKeys".to_string(),
        ),
    ];
    let req = sigv4::Request {
        method: "POST",
        path: "/",
        query: "",
        headers: &headers,
        body: body.as_bytes(),
    };
    let creds = sigv4::Credentials {
        access_key_id: ROOT_KEY.into(),
        secret_access_key: ROOT_SECRET.into(),
        session_token: None,
    };
    let added = sigv4::sign(&req, &creds, "us-east-1", "kms", chrono::Utc::now()).unwrap();
    headers.extend(added);
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let addr = server.endpoint.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut text = String::from("POST / HTTP/1.1\r\n");
    for (k, v) in &headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(text.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

/// A request signed for another server, or whose payload-hash header stands in for another
/// body, is refused; the same request signed for this server is answered.
#[test]
fn signatures_bind_host_and_body() {
    let e = Env::new();
    let s = serve(&e, &[]);
    let ours = s.endpoint.strip_prefix("http://").unwrap().to_string();
    let ok = signed_raw(&s, &ours, "{}", &[]);
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let elsewhere = signed_raw(&s, "kms.example.com", "{}", &[]);
    assert!(elsewhere.starts_with("HTTP/1.1 400"), "{elsewhere}");
    assert!(
        elsewhere.contains("AccessDeniedException") && elsewhere.contains("Host"),
        "{elsewhere}"
    );
    // The hash of "{}" claimed for a different body.
    let forged = signed_raw(
        &s,
        &ours,
        "{\"Limit\": 1}",
        &[(
            "x-amz-content-sha256",
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        )],
    );
    assert!(forged.contains("AccessDeniedException"), "{forged}");
}

/// KMSFS_NOW (the test clock for key dates) moves the KMS's dates but not the signature
/// freshness check, which clients sign against with the real time.
#[test]
fn the_test_clock_moves_key_dates_not_signature_freshness() {
    let mut e = Env::new();
    e.now = Some("2026-01-01T00:00:00Z".to_string());
    let s = serve(&e, &[]);
    let md = aws_ok(&s, &["create-key"]);
    // 2026-01-01T00:00:00Z in epoch seconds, as the JSON protocol carries it.
    assert_eq!(
        md["KeyMetadata"]["CreationDate"].as_f64(),
        Some(1767225600.0)
    );
}
