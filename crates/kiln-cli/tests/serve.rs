//! `kiln serve` as an operator runs it, and `kiln sync` through it over HTTP on loopback.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn kiln(root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.arg("--root").arg(root).env_remove("KILN_ROOT");
    c
}

fn ok(root: &Path, args: &[&str]) -> String {
    let o: Output = kiln(root).args(args).stdin(Stdio::null()).output().unwrap();
    assert!(
        o.status.success(),
        "kiln {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

mod common;
use common::Serve;

/// Starts `kiln serve` over folder `storage` on a free port: the process and its URL.
fn serve(storage: &Path) -> (Serve, String) {
    serve_with(storage, &[])
}

fn serve_with(storage: &Path, more: &[&str]) -> (Serve, String) {
    let s = Serve::start(storage, more);
    let url = s.url.clone();
    (s, url)
}

#[test]
fn stores_sync_through_kiln_serve() {
    let d = tempfile::tempdir().unwrap();
    let (mut server, url) = serve(&d.path().join("storage"));
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    ok(&a, &["db", "create", "notes"]);
    ok(&a, &["put", "notes", r#"{"_id":"x","v":1}"#]);
    ok(&a, &["remote", "add", "notes", "origin", &url]);
    ok(&a, &["sync", "notes"]);
    let key = ok(&a, &["key", "export", "notes", "--raw"]);
    ok(&b, &["key", "import", "notes", key.trim()]);
    ok(&b, &["remote", "add", "notes", "origin", &url]);
    ok(&b, &["sync", "notes"]);
    assert!(ok(&b, &["get", "notes", "x"]).contains("\"v\": 1"));
    ok(&b, &["put", "notes", r#"{"_id":"y","by":"b"}"#]);
    ok(&b, &["sync", "notes"]);
    ok(&a, &["sync", "notes"]);
    assert!(ok(&a, &["get", "notes", "y"]).contains("\"by\": \"b\""));
    // The server holds ciphertext only: no document value in its storage.
    let grep = Command::new("grep")
        .args(["-r", "-a", "-l", "\"by\""])
        .arg(d.path().join("storage"))
        .output()
        .unwrap();
    assert!(grep.stdout.is_empty(), "{grep:?}");
    // SIGTERM: it stops, cleanly.
    let pid = server.child().id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = server.child().wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn serve_refuses_bad_storage() {
    let d = tempfile::tempdir().unwrap();
    let o = kiln(d.path())
        .args(["serve", "--storage", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let o = kiln(d.path())
        .args(["serve", "--storage", "ftp://x"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}

#[test]
fn tokens_are_asked_for_and_read_again_on_sighup() {
    let d = tempfile::tempdir().unwrap();
    let tokens = d.path().join("tokens");
    let (first, second) = ("first-token-0123456789", "second-token-012345678");
    std::fs::write(&tokens, format!("# who may write\n{first} write notes\n")).unwrap();
    let (mut server, url) = serve_with(
        &d.path().join("storage"),
        &["--tokens", tokens.to_str().unwrap()],
    );
    let a = d.path().join("a");
    ok(&a, &["db", "create", "notes"]);
    ok(&a, &["remote", "add", "notes", "origin", &url]);
    let sync = |token: Option<&str>| {
        let mut c = kiln(&a);
        c.args(["sync", "notes"]).env_remove("KILN_TOKEN");
        if let Some(t) = token {
            c.env("KILN_TOKEN", t);
        }
        c.stdin(Stdio::null()).output().unwrap()
    };
    // No token: refused, and told how to give one.
    let o = sync(None);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("401") && err.contains("KILN_TOKEN"), "{err}");
    assert!(sync(Some(first)).status.success());
    // The file replaced and read again on SIGHUP: the first token no longer works.
    std::fs::write(&tokens, format!("{second} write *\n")).unwrap();
    let pid = server.child().id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let mut refused = false;
    for _ in 0..100 {
        ok(&a, &["put", "notes", r#"{"_id":"again"}"#]);
        if !sync(Some(first)).status.success() {
            refused = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(refused, "the first token still works after SIGHUP");
    let o = kiln(&a)
        .args(["--token", second, "sync", "notes"])
        .env_remove("KILN_TOKEN")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A tokens file that does not read keeps the server from starting.
    std::fs::write(&tokens, "short write *\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--addr", "127.0.0.1:0", "--storage"])
        .arg(d.path().join("storage"))
        .arg("--tokens")
        .arg(&tokens)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("line 1"),
        "{o:?}"
    );
}

#[test]
fn serve_over_tls() {
    let d = tempfile::tempdir().unwrap();
    let tls = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tls");
    let (cert, key) = (tls.join("cert.pem"), tls.join("key.pem"));
    let (_server, url) = serve_with(
        &d.path().join("storage"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let a = d.path().join("a");
    ok(&a, &["db", "create", "notes"]);
    ok(&a, &["put", "notes", r#"{"_id":"x"}"#]);
    let sync = |trust: &Path| {
        kiln(&a)
            .args(["sync", "notes", &url])
            .env("SSL_CERT_FILE", trust)
            .env_remove("SSL_CERT_DIR")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // A client that does not trust the certificate refuses the server.
    let o = sync(Path::new("/etc/ssl/certs/ca-certificates.crt"));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(err.contains("certificate") || err.contains("tls"), "{err}");
    // One that trusts it syncs.
    let o = sync(&cert);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A certificate that does not read: exit 2, said why.
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--addr", "127.0.0.1:0", "--storage"])
        .arg(d.path().join("storage"))
        .arg("--tls-cert")
        .arg(&key)
        .arg("--tls-key")
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}

#[test]
fn logs_are_structured_and_hold_no_secrets() {
    let d = tempfile::tempdir().unwrap();
    let tokens = d.path().join("tokens");
    let token = "secret-token-0123456789";
    std::fs::write(&tokens, format!("{token} write notes\n")).unwrap();
    let mut server = Serve::with_logs(
        &d.path().join("storage"),
        &["--log-format", "json", "--tokens", tokens.to_str().unwrap()],
    );
    let url = server.url.clone();
    let a = d.path().join("a");
    ok(&a, &["db", "create", "notes"]);
    ok(
        &a,
        &[
            "put",
            "notes",
            r#"{"_id":"x","secret":"marker-in-a-value"}"#,
        ],
    );
    let o = kiln(&a)
        .args(["sync", "notes", &url])
        .env("KILN_TOKEN", token)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A request without a token: logged with its 401.
    let _ = kiln(&a)
        .args(["sync", "notes", &url])
        .env_remove("KILN_TOKEN")
        .output();
    let pid = server.child().id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut err = String::new();
    std::io::Read::read_to_string(server.child().stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(server.child().wait().unwrap().success());
    let events: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let msg = |e: &serde_json::Value| e["fields"]["message"].as_str().unwrap_or("").to_owned();
    assert!(
        events
            .iter()
            .any(|e| msg(e) == "serving" && e["level"] == "INFO"),
        "{err}"
    );
    assert!(events.iter().any(|e| msg(e) == "stopped"), "{err}");
    let requests: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["target"] == "kiln_server::request")
        .collect();
    assert!(
        requests
            .iter()
            .any(|e| e["fields"]["route"] == "/v1/heads/{name}"
                && e["fields"]["method"] == "PUT"
                && e["fields"]["status"] == 200
                && e["fields"]["peer"]
                    .as_str()
                    .unwrap()
                    .starts_with("127.0.0.1:")
                && e["fields"]["ms"].as_f64().is_some()),
        "{err}"
    );
    assert!(
        requests.iter().any(|e| e["fields"]["status"] == 401),
        "{err}"
    );
    assert!(
        !err.contains(token) && !err.contains("marker-in-a-value"),
        "{err}"
    );
}

/// Attached files' bytes stay on the server until first read: `kiln sync` (on demand) moves
/// documents only, and `kiln file` then fetches the bytes through the remote the database
/// remembers.
#[test]
fn attached_files_come_through_the_server_on_first_read() {
    let d = tempfile::tempdir().unwrap();
    let (_server, url) = serve(&d.path().join("storage"));
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    let photo = d.path().join("photo.bin");
    let bytes: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&photo, &bytes).unwrap();
    ok(&a, &["db", "create", "notes"]);
    ok(&a, &["put", "notes", r#"{"_id":"x"}"#]);
    ok(
        &a,
        &[
            "attach",
            "notes",
            "x",
            &format!("photo.bin={}", photo.display()),
        ],
    );
    ok(&a, &["remote", "add", "notes", "origin", &url]);
    ok(&a, &["sync", "notes"]);
    let key = ok(&a, &["key", "export", "notes", "--raw"]);
    ok(&b, &["key", "import", "notes", key.trim()]);
    ok(&b, &["remote", "add", "notes", "origin", &url]);
    let s: serde_json::Value = serde_json::from_str(&ok(&b, &["--json", "sync", "notes"])).unwrap();
    assert_eq!(s[0]["pulled"]["filesets"], 0, "on demand: {s}");
    let out = d.path().join("got.bin");
    ok(
        &b,
        &[
            "file",
            "notes",
            "x",
            "photo.bin",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(std::fs::read(&out).unwrap() == bytes, "the bytes differ");
    // Kept now: read again with the server gone.
    drop(_server);
    std::fs::remove_file(&out).unwrap();
    ok(
        &b,
        &[
            "file",
            "notes",
            "x",
            "photo.bin",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(std::fs::read(&out).unwrap() == bytes);
}

/// Two `kiln serve` processes over one S3-compatible bucket (s3s-fs on loopback): replicas
/// writing through each converge, and `kiln sync --watch` through one (its own poll a minute)
/// takes in, within seconds, what another replica pushes through the other (the watcher's
/// server polls the bucket every 0.2 s for the databases watched).
#[test]
fn two_servers_over_one_bucket_converge_and_watchers_hear_across_them() {
    let s3 = kiln_sync::testing::S3sFs::start();
    let d = tempfile::tempdir().unwrap();
    let secret = d.path().join("secret");
    std::fs::write(&secret, &s3.secret).unwrap();
    let bucket = format!("s3://{}/two-servers", kiln_sync::testing::BUCKET);
    let s3_flags = [
        "--s3-endpoint",
        &s3.endpoint,
        "--s3-access-key",
        &s3.key,
        "--s3-secret-key-file",
        secret.to_str().unwrap(),
        "--poll",
        "0.2",
    ];
    let (_one, url1) = serve_with(Path::new(&bucket), &s3_flags);
    let (_two, url2) = serve_with(Path::new(&bucket), &s3_flags);
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    ok(&a, &["db", "create", "notes"]);
    ok(&a, &["put", "notes", r#"{"_id":"x","by":"a"}"#]);
    ok(&a, &["sync", "notes", &url1]);
    let key = ok(&a, &["key", "export", "notes", "--raw"]);
    ok(&b, &["key", "import", "notes", key.trim()]);
    ok(&b, &["sync", "notes", &url2]);
    assert!(ok(&b, &["get", "notes", "x"]).contains("\"by\": \"a\""));
    ok(&b, &["put", "notes", r#"{"_id":"y","by":"b"}"#]);
    ok(&b, &["sync", "notes", &url2]);
    ok(&a, &["sync", "notes", &url1]);
    assert!(ok(&a, &["get", "notes", "y"]).contains("\"by\": \"b\""));

    // B watches through server two; A pushes through server one.
    let mut w = kiln(&b)
        .args(["--json", "sync", "notes", &url2, "--watch", "--poll", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = common::json_lines(w.stdout.take().unwrap());
    // Once it listens on server two's live channel (and its first sync, at start, is done).
    let t = std::time::Instant::now();
    while subscriptions(&url2) == 0 {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "never subscribed"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    ok(&a, &["put", "notes", r#"{"_id":"z","by":"a"}"#]);
    let pushed = std::time::Instant::now();
    ok(&a, &["sync", "notes", &url1]);
    let deadline = pushed + std::time::Duration::from_secs(20);
    let mut arrived = false;
    while let Ok(v) = rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        if v["adopted"] == true || v["merged"].is_object() {
            arrived = true;
            break;
        }
    }
    w.kill().unwrap();
    w.wait().unwrap();
    assert!(arrived, "the watcher never took A's push in");
    assert!(ok(&b, &["get", "notes", "z"]).contains("\"by\": \"a\""));
}

/// The `kiln_server_subscriptions` gauge of the server at `url`.
fn subscriptions(url: &str) -> u64 {
    common::metrics(url)
        .lines()
        .find_map(|l| l.strip_prefix("kiln_server_subscriptions "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}
