//! Contributions across machines (the seed's public content management system), played end
//! to end over real HTTP on loopback: a moderator's main shared with three contributors
//! through `kiln serve` with tokens; each contributor forks main, writes, and files a proposal
//! on the server; the moderator reviews, accepts two (one with a conflict) and rejects one;
//! contributors learn the decisions on their next sync, and every replica converges.

use serde_json::Value;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;
use common::Serve;

/// One person's machine: a store and the token they hold.
struct Person {
    root: PathBuf,
    token: &'static str,
}

impl Person {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .env_remove("KILN_ROOT")
            .env("KILN_TOKEN", self.token)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "kiln {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// Runs a command that must be refused; its stderr.
    fn refused(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(!o.status.success(), "kiln {args:?} went through");
        String::from_utf8_lossy(&o.stderr).into_owned()
    }
}

/// How many file downloads (`GET /v1/files/…`, answered 200) the server has served, from its
/// `/metrics`.
fn downloads(url: &str) -> u64 {
    common::metrics(url)
        .lines()
        .filter(|l| {
            l.starts_with("kiln_server_requests_total{route=\"/v1/files/{kind}/{name}\",method=\"GET\",status=\"200\"}")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Diff files the server's folder storage holds.
fn stored_files(storage: &Path) -> usize {
    let mut n = 0;
    for shard in std::fs::read_dir(storage.join("files")).unwrap() {
        n += std::fs::read_dir(shard.unwrap().path()).unwrap().count();
    }
    n
}

#[test]
fn three_contributors_and_a_moderator_through_the_server() {
    let d = tempfile::tempdir().unwrap();
    let tokens = d.path().join("tokens");
    std::fs::write(
        &tokens,
        "moderator-token-0123456 write *\n\
         alice-token-0123456789 write alice-*\n\
         alice-token-0123456789 propose main\n\
         bob-token-012345678901 write bob-*\n\
         bob-token-012345678901 propose main\n\
         carol-token-0123456789 write carol-*\n\
         carol-token-0123456789 propose main\n",
    )
    .unwrap();
    let storage = d.path().join("storage");
    let server = Serve::start(&storage, &["--tokens", tokens.to_str().unwrap()]);
    let url = server.url.clone();
    let person = |name: &str, token| Person {
        root: d.path().join(name),
        token,
    };
    let moderator = person("moderator", "moderator-token-0123456");
    let alice = person("alice", "alice-token-0123456789");
    let bob = person("bob", "bob-token-012345678901");
    let carol = person("carol", "carol-token-0123456789");

    // The moderator publishes main.
    moderator.ok(&["db", "create", "main"]);
    for (id, v) in [("intro", "hello"), ("faq", "none yet"), ("about", "kiln")] {
        moderator.ok(&["put", "main", &format!(r#"{{"_id":"{id}","text":"{v}"}}"#)]);
    }
    moderator.ok(&["remote", "add", "main", "origin", &url]);
    moderator.ok(&["sync", "main"]);
    let key = moderator.ok(&["key", "export", "main", "--raw"]);

    // Each contributor takes main from the server and forks it.
    for (who, name) in [(&alice, "alice"), (&bob, "bob"), (&carol, "carol")] {
        who.ok(&["key", "import", "main", key.trim()]);
        who.ok(&["remote", "add", "main", "origin", &url]);
        who.ok(&["sync", "main"]);
        who.ok(&["fork", "main", &format!("{name}-edits")]);
    }
    alice.ok(&[
        "put",
        "alice-edits",
        r#"{"_id":"faq","text":"see the docs"}"#,
    ]);
    alice.ok(&[
        "put",
        "alice-edits",
        r#"{"_id":"alice-page","text":"by alice"}"#,
    ]);
    bob.ok(&["put", "bob-edits", r#"{"_id":"faq","text":"ask bob"}"#]);
    carol.ok(&["put", "carol-edits", r#"{"_id":"intro","text":"spam"}"#]);

    // Roles: a contributor writes their own fork and proposes, but writes neither main nor
    // another's fork, and decides nothing.
    // (From another machine of alice's, with her token: her own replicas stay as they are.)
    let laptop = person("alice-laptop", "alice-token-0123456789");
    laptop.ok(&["key", "import", "main", key.trim()]);
    laptop.ok(&["sync", "main", &url]);
    laptop.ok(&["put", "main", r#"{"_id":"intro","text":"hijacked"}"#]);
    let err = laptop.refused(&["sync", "main", &url, "--push"]);
    assert!(err.contains("403"), "{err}");
    alice.ok(&["fork", "alice-edits", "bob-edits"]);
    let err = alice.refused(&["sync", "bob-edits", &url]);
    assert!(err.contains("403"), "{err}");
    alice.ok(&["db", "drop", "bob-edits"]);

    // Proposals filed through the server: each fork adds only its own diffs there.
    let mut ids = Vec::new();
    for (who, fork, commits) in [
        (&alice, "alice-edits", 2),
        (&bob, "bob-edits", 1),
        (&carol, "carol-edits", 1),
    ] {
        let before = stored_files(&storage);
        let p = who.json(&[
            "propose",
            fork,
            "--to",
            "main",
            "--remote",
            &url,
            "-m",
            &format!("from {fork}"),
        ]);
        assert_eq!(p["status"]["state"], "open", "{p}");
        assert_eq!(p["files_pushed"], commits, "{p}");
        assert_eq!(stored_files(&storage), before + commits, "{fork}");
        ids.push(p["id"].as_str().unwrap().to_owned());
    }
    let (alice_id, bob_id, carol_id) = (&ids[0], &ids[1], &ids[2]);
    // A contributor cannot decide, not even their own.
    let err = carol.refused(&["accept", carol_id, "--remote", &url]);
    assert!(err.contains("may not write 'main'"), "{err}");
    let p = carol.json(&["proposals", "main"]);
    assert_eq!(
        p[0]["status"]["state"], "open",
        "refused before anything changed: {p}"
    );

    // The moderator lists, reviews (pulling only what a fork adds) and decides.
    let listed = moderator.json(&["proposals", "main", "--remote", "origin"]);
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    let pulled = downloads(&url);
    let r = moderator.json(&["review", alice_id, "--remote", "origin"]);
    assert_eq!(downloads(&url) - pulled, 2, "only alice's two diffs travel");
    assert_eq!(r["changed"].as_array().unwrap().len(), 2, "{r}");
    assert!(r["conflicts"].as_array().unwrap().is_empty(), "{r}");
    let a = moderator.json(&["accept", alice_id, "--remote", "origin", "--by", "mod"]);
    assert_eq!(a["conflicts"], 0, "{a}");
    // Bob changed what alice changed: the conflict is the moderator's to see.
    let r = moderator.json(&["review", bob_id, "--remote", "origin"]);
    assert_eq!(r["conflicts"][0]["id"], "faq", "{r}");
    let a = moderator.json(&["accept", bob_id, "--remote", "origin", "--by", "mod"]);
    assert_eq!(a["conflicts"], 1, "{a}");
    moderator.ok(&[
        "reject",
        carol_id,
        "--remote",
        "origin",
        "--by",
        "mod",
        "-m",
        "off topic",
    ]);
    // Decided once.
    let err = moderator.refused(&["reject", alice_id, "--remote", "origin", "-m", "no"]);
    assert!(err.contains("already accepted"), "{err}");
    let all = moderator.json(&["proposals", "main", "--remote", "origin", "--all"]);
    assert_eq!(all.as_array().unwrap().len(), 3, "{all}");
    assert!(moderator
        .json(&["proposals", "main", "--remote", "origin"])
        .as_array()
        .unwrap()
        .is_empty());

    // Contributors learn the decisions on their next sync.
    let out = carol.ok(&["sync", "carol-edits", &url]);
    assert!(
        out.contains(&format!("proposal {carol_id}")) && out.contains("rejected by mod: off topic"),
        "{out}"
    );
    let out = alice.ok(&["sync", "alice-edits", &url]);
    assert!(out.contains("accepted by mod"), "{out}");
    // Told once.
    let out = alice.ok(&["sync", "alice-edits", &url]);
    assert!(!out.contains("accepted by mod"), "{out}");
    let p = carol.json(&["proposals", "main", "--all"]);
    assert_eq!(p[0]["status"]["reason"], "off topic", "{p}");

    // Every replica converges on the new main: the same documents, the same heads, each
    // verified.
    let want = moderator.ok(&["docs", "main"]);
    assert!(want.contains("by alice") && !want.contains("spam") && !want.contains("hijacked"));
    let heads = moderator.json(&["db", "info", "main"])["heads"].clone();
    for who in [&alice, &bob, &carol] {
        who.ok(&["sync", "main", &url]);
        assert_eq!(who.ok(&["docs", "main"]), want);
        assert_eq!(who.json(&["db", "info", "main"])["heads"], heads);
    }
    for who in [&moderator, &alice, &bob, &carol] {
        who.ok(&["verify", "main"]);
    }
    // The server's storage holds no document value in the clear, decrypted or not, but sealed.
    drop(server);
    let keys = kiln::audit::keys_of(&moderator.root).unwrap();
    for marker in [&b"by alice"[..], b"off topic", b"hijacked"] {
        let hits = kiln::audit::find(&storage, &keys, marker).unwrap();
        assert!(hits.iter().all(|f| f.how != "raw"), "{marker:?}: {hits:?}");
        if marker != b"hijacked" {
            assert!(!hits.is_empty(), "{marker:?} is there, sealed");
        }
    }
}
