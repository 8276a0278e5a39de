//! Helpers the CLI's tests share: a `kiln serve` process.
#![allow(dead_code)] // each test file uses some

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A `kiln serve` process over a storage (killed when dropped: a failed test leaves none
/// behind), restartable on the address it first took.
pub struct Serve {
    child: Option<Child>,
    storage: PathBuf,
    more: Vec<String>,
    /// Its logs on a pipe (`child().stderr`), from `KILN_LOG` or info up; else errors only,
    /// on the test's stderr.
    logs: bool,
    addr: String,
    /// Its URL (`http://ADDR`, or `https://` with `--tls-cert`).
    pub url: String,
}

impl Serve {
    /// `kiln serve --storage STORAGE MORE…` on a free loopback port, logging errors only
    /// (a line per request, and warnings, otherwise).
    pub fn start(storage: &Path, more: &[&str]) -> Serve {
        Serve::new(storage, more, false)
    }

    /// [`Serve::start`], its logs (info up) on a pipe: `child().stderr`.
    pub fn with_logs(storage: &Path, more: &[&str]) -> Serve {
        Serve::new(storage, more, true)
    }

    fn new(storage: &Path, more: &[&str], logs: bool) -> Serve {
        let mut s = Serve {
            child: None,
            storage: storage.to_owned(),
            more: more.iter().map(|m| m.to_string()).collect(),
            logs,
            addr: "127.0.0.1:0".into(),
            url: String::new(),
        };
        s.run();
        s
    }

    fn run(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(["serve", "--addr", &self.addr, "--storage"])
            .arg(&self.storage)
            .args(&self.more)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if self.logs {
            cmd.env_remove("KILN_LOG").stderr(Stdio::piped());
        } else {
            cmd.env("KILN_LOG", "error");
        }
        let mut c = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(c.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        self.url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{line:?}"))
            .to_owned();
        self.addr = self.url.split_once("://").unwrap().1.to_owned();
        self.child = Some(c);
    }

    /// Starts it again (after [`Serve::kill`]) on the same address.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }

    /// SIGKILL, and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// The process (while up).
    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills processes after a random delay drawn from a window that follows how long the
/// processes take: a run that finishes before its kill shrinks the window to its own
/// duration, so most runs are cut somewhere inside (however fast the machine), and a kill
/// widens it again a little.
pub struct RandomKiller {
    window: std::time::Duration,
    seed: u64,
    pub runs: u32,
    pub kills: u32,
}

impl RandomKiller {
    pub fn new(window: std::time::Duration, seed: u64) -> RandomKiller {
        RandomKiller {
            window: window.max(std::time::Duration::from_millis(1)),
            seed: seed | 1,
            runs: 0,
            kills: 0,
        }
    }

    fn next(&mut self) -> u64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }

    /// Waits for `child` until a random delay inside the window has passed, then kills it;
    /// says whether it was killed.
    pub fn run(&mut self, mut child: Child) -> bool {
        use std::time::{Duration, Instant};
        let micros = self.window.as_micros().max(1) as u64;
        let delay = Duration::from_micros(self.next() % micros);
        let start = Instant::now();
        self.runs += 1;
        loop {
            if child.try_wait().unwrap().is_some() {
                self.window = start.elapsed().max(Duration::from_millis(1));
                return false;
            }
            if start.elapsed() >= delay {
                child.kill().unwrap();
                child.wait().unwrap();
                self.kills += 1;
                self.window += self.window / 8;
                return true;
            }
            std::thread::sleep(Duration::from_micros(300));
        }
    }
}

/// Runs `kiln --root ROOT --durability buffered ARGS…` with `stdin` (if any) and waits.
pub fn run_kiln(root: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--root")
        .arg(root)
        .args(["--durability", "buffered"])
        .args(args)
        .env_remove("KILN_ROOT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut i = c.stdin.take().unwrap();
    if let Some(s) = stdin {
        i.write_all(s.as_bytes()).unwrap();
    }
    drop(i);
    c.wait_with_output().unwrap()
}

/// [`run_kiln`], which must succeed: its standard output.
pub fn kiln_ok(root: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let o = run_kiln(root, args, stdin);
    assert!(
        o.status.success(),
        "kiln {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The `/metrics` text of the server at `url` (`http://…`).
pub fn metrics(url: &str) -> String {
    use std::io::{Read, Write};
    let addr = url.strip_prefix("http://").expect("an http:// URL");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(
        c,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    text
}

/// A process's stdout read as JSON lines on a thread of its own: each line as it comes.
pub fn json_lines(out: std::process::ChildStdout) -> std::sync::mpsc::Receiver<serde_json::Value> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                return;
            }
        }
    });
    rx
}
