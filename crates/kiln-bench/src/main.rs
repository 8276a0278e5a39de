//! kiln-bench: the Rust counterpart of the shared JS harness's `node bench.mjs` CLI
//! (`/work/shared/bench`). Same arguments, same workloads, same JSON result line.
//!
//! ```text
//! kiln-bench <system> <workload> <N> <datadir> [options]
//! ```
//! See [`USAGE`].

mod docs;
mod out;
mod systems;

use docs::{doc_id, make_blob, make_doc, to_uint32, Mulberry32};
use out::{disk_stats, fixed, iso_now, num, peak_rss_mb, Obj};
use serde_json::Value;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use systems::{BoxErr, Res, SYSTEMS};

const USAGE: &str = "\
Usage: kiln-bench <system> <workload> <N> <datadir> [options]
  system   : kiln | kiln-sync | sqlite | sqlite-sync
             (kiln: no fsync per commit; kiln-sync: fsync per commit;
              sqlite: WAL + synchronous=NORMAL; sqlite-sync: WAL + synchronous=FULL)
  workload : put-seq | put-bulk | get | reopen | alldocs | query | update | attach
  N        : number of docs
  datadir  : must not exist, be empty, or be a previous bench dir (has .bench-data);
             it is wiped at start.
Options:
  --load=bulk|seq     how read/update/reopen workloads pre-load N docs (default bulk)
  --timeout-s=300     stop the timed loop after this many seconds and report timed_out
  --seed=42           PRNG seed for random ids
  --batch=1000        batch size for put-bulk and bulk pre-loading
  --grace-s=60        watchdog: exit with a partial result this long after the timeout
  --att-size=102400   attachment size in bytes for the attach workload
  --queries=20        range queries (each ~1% of the documents, with bodies) for query
  (any other --x=y is accepted and ignored)
Environment (kiln only, for experiments; defaults are kiln's own):
  KILN_TH=N           compaction threshold (default 100)
  KILN_INLINE=1       compact inside the commits, not in kiln's background thread
  KILN_RESERVE=N      empty files kept ready in the pool (default 160)
  KILN_JSON_TEXT=1    hand kiln JSON text (as SQLite gets) instead of the documents as values
Prints one JSON result line on stdout, starting with {\"system\":.";

const WORKLOADS: &[&str] = &[
    "put-seq", "put-bulk", "get", "reopen", "alldocs", "query", "update", "attach",
];
const UNSUPPORTED: &[&str] = &[];
const MARKER: &str = ".bench-data";

fn usage(msg: &str) -> ! {
    eprintln!("{msg}");
    eprintln!("{USAGE}");
    std::process::exit(2);
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn secs(x: f64) -> Duration {
    Duration::from_secs_f64(x.clamp(0.0, 1e9))
}

// ------------------------------------------------------------------ options

/// Parsed options. `raw` keeps every `--k=v` (defaults first, in bench.mjs's order) so that
/// child phases get exactly the same options, unknown ones included.
#[derive(Clone, Debug)]
struct Opts {
    raw: Vec<(String, String)>,
    load: String,
    timeout_s: f64,
    grace_s: f64,
    seed: u32,
    batch: u64,
}

impl Opts {
    fn get(&self, k: &str) -> &str {
        self.raw
            .iter()
            .rev()
            .find(|(x, _)| x == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    fn as_args(&self) -> Vec<String> {
        self.raw.iter().map(|(k, v)| format!("--{k}={v}")).collect()
    }
}

/// JS `Number(s)` for the strings that matter here (decimal numbers; empty is 0).
fn js_number(s: &str) -> f64 {
    let t = s.trim();
    if t.is_empty() {
        return 0.0;
    }
    t.parse::<f64>().unwrap_or(f64::NAN)
}

fn parse_args(argv: &[String]) -> (Vec<String>, Opts) {
    let mut pos = Vec::new();
    let mut raw: Vec<(String, String)> = [
        ("load", "bulk"),
        ("timeout-s", "300"),
        ("grace-s", "60"),
        ("seed", "42"),
        ("queries", "20"),
        ("att-size", "102400"),
        ("batch", "1000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for a in argv {
        if let Some(rest) = a.strip_prefix("--") {
            // like `const [k, v] = a.slice(2).split("=")`
            let mut parts = rest.split('=');
            let k = parts.next().unwrap_or("").to_owned();
            let v = parts.next().unwrap_or("true").to_owned();
            match raw.iter_mut().find(|(x, _)| *x == k) {
                Some(slot) => slot.1 = v,
                None => raw.push((k, v)),
            }
        } else {
            pos.push(a.clone());
        }
    }
    let mut o = Opts {
        raw,
        load: String::new(),
        timeout_s: 0.0,
        grace_s: 0.0,
        seed: 0,
        batch: 0,
    };
    o.load = o.get("load").to_owned();
    if o.load != "bulk" && o.load != "seq" {
        usage(&format!("bad --load={} (bulk or seq)", o.load));
    }
    o.timeout_s = js_number(o.get("timeout-s"));
    if !(o.timeout_s.is_finite() && o.timeout_s >= 0.0) {
        usage(&format!("bad --timeout-s={}", o.get("timeout-s")));
    }
    o.grace_s = js_number(o.get("grace-s"));
    if !(o.grace_s.is_finite() && o.grace_s >= 0.0) {
        usage(&format!("bad --grace-s={}", o.get("grace-s")));
    }
    let seed = js_number(o.get("seed"));
    if !seed.is_finite() {
        usage(&format!("bad --seed={}", o.get("seed")));
    }
    o.seed = to_uint32(seed);
    let batch = js_number(o.get("batch"));
    if !(batch.is_finite() && batch >= 1.0 && batch.fract() == 0.0) {
        usage(&format!("bad --batch={}", o.get("batch")));
    }
    o.batch = batch as u64;
    (pos, o)
}

// ------------------------------------------------------------------ helpers

/// Wipes `dir` (refusing a non-empty dir without the marker) and creates it with the marker.
fn prep_dir(dir: &Path) -> Res<()> {
    if dir.exists() {
        let mut names = Vec::new();
        for e in std::fs::read_dir(dir)? {
            names.push(e?.file_name());
        }
        if !names.is_empty() && !names.iter().any(|n| n == MARKER) {
            return Err(format!(
                "refusing to wipe {}: not empty and not a bench dir (no {MARKER} marker)",
                dir.display()
            )
            .into());
        }
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(MARKER), "created by kiln-bench; safe to delete\n")?;
    Ok(())
}

/// Runs `f` and exits the process with status 0 after `after`, unless the returned sender is
/// used or dropped first.
fn watchdog(after: Duration, f: impl FnOnce() + Send + 'static) -> mpsc::Sender<()> {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(after) {
            f();
            let _ = std::io::stdout().flush();
            std::process::exit(0);
        }
    });
    tx
}

fn print_line(o: &Obj) {
    let mut so = std::io::stdout().lock();
    let _ = writeln!(so, "{}", o.to_json());
    let _ = so.flush();
}

fn f64_of(v: Option<&Value>) -> f64 {
    v.and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// Runs a phase (`_load`, `_reopen`) of this program in a child process, so the measured
/// process starts cold; returns its `{"phase":…}` line plus `child_wall_ms`.
fn child_phase(system: &str, phase: &str, n: u64, dir: &Path, opt: &Opts) -> Res<Obj> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg(system)
        .arg(phase)
        .arg(n.to_string())
        .arg(dir)
        .args(opt.as_args());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let limit = secs(opt.timeout_s + 2.0 * opt.grace_s);
    let t0 = Instant::now();
    let child = cmd.spawn()?;
    let pid = child.id();
    // Kill the child with SIGKILL if it outlives the limit (spawnSync's timeout).
    let (tx, rx) = mpsc::channel::<()>();
    let killer = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    });
    let output = child.wait_with_output()?;
    let wall = ms_since(t0);
    drop(tx);
    let _ = killer.join();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail = |s: &str, n: usize| -> String {
        let start = s.len().saturating_sub(n);
        let start = (start..=s.len())
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(s.len());
        s[start..].to_owned()
    };
    if !output.status.success() {
        let code = output
            .status
            .code()
            .map(|c| c.to_string())
            .unwrap_or_else(|| format!("{}", output.status));
        return Err(format!("{phase} child failed ({code}): {}", tail(&stderr, 2000)).into());
    }
    if !stderr.is_empty() {
        eprint!("{stderr}");
    }
    let line = stdout
        .trim()
        .lines()
        .rfind(|l| l.starts_with("{\"phase\":"))
        .ok_or_else(|| {
            format!(
                "{phase} child printed no result: {} {}",
                tail(&stdout, 1000),
                tail(&stderr, 1000)
            )
        })?;
    let v: Value = serde_json::from_str(line)?;
    let mut o = Obj::new();
    if let Value::Object(m) = v {
        for (k, x) in m {
            o.set(&k, x);
        }
    }
    o.set("child_wall_ms", num(wall));
    Ok(o)
}

// ------------------------------------------------------------------ phases

/// Pre-loads N docs (bulk batches or one put each).
fn phase_load(system: &str, n: u64, dir: &Path, opt: &Opts) -> Res<Obj> {
    prep_dir(dir)?;
    let mut a = systems::open(system, dir)?;
    let deadline = Duration::from_secs_f64(opt.timeout_s.min(1e9));
    let t0 = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let mut timed_out = false;
    let _wd = {
        let done = done.clone();
        let mode = opt.load.clone();
        watchdog(secs(opt.timeout_s + opt.grace_s), move || {
            let mut o = Obj::new();
            o.set("phase", "load");
            o.set("load_mode", mode);
            o.set("load_ms", num(ms_since(t0)));
            o.set("loaded", done.load(Ordering::SeqCst));
            o.set("load_timed_out", true);
            o.set("load_hung", true);
            o.set("peak_rss_mb", num(peak_rss_mb()));
            print_line(&o);
        })
    };
    if opt.load == "seq" {
        for i in 0..n {
            a.put_one(&make_doc(i, n))?;
            done.fetch_add(1, Ordering::SeqCst);
            if t0.elapsed() > deadline {
                timed_out = true;
                break;
            }
        }
    } else {
        let mut i = 0;
        while i < n {
            let docs: Vec<_> = (i..n.min(i + opt.batch)).map(|k| make_doc(k, n)).collect();
            a.put_batch(&docs)?;
            done.fetch_add(docs.len() as u64, Ordering::SeqCst);
            if t0.elapsed() > deadline {
                timed_out = true;
                break;
            }
            i += opt.batch;
        }
    }
    let ms = ms_since(t0);
    a.close()?;
    let mut o = Obj::new();
    o.set("phase", "load");
    o.set("load_mode", opt.load.clone());
    o.set("load_ms", num(ms));
    o.set("loaded", done.load(Ordering::SeqCst));
    o.set("load_timed_out", timed_out);
    Ok(o)
}

/// In a fresh process: open the store and read one (seeded random) doc.
fn phase_reopen(system: &str, n: u64, dir: &Path, opt: &Opts) -> Res<Obj> {
    let t0 = Instant::now();
    let mut a = systems::open(system, dir)?;
    let open_ms = ms_since(t0);
    let t1 = Instant::now();
    let mut r = Mulberry32::new(opt.seed);
    let id = doc_id(r.below(n));
    let d = a.get(&id)?;
    let first_get_ms = ms_since(t1);
    let total = ms_since(t0);
    if d.get("_id").and_then(Value::as_str) != Some(id.as_str()) {
        return Err("reopen read wrong doc".into());
    }
    a.close()?;
    let mut o = Obj::new();
    o.set("phase", "reopen");
    o.set("import_ms", 0u64);
    o.set("open_ms", num(open_ms));
    o.set("first_get_ms", num(first_get_ms));
    o.set("open_read_ms", num(total));
    o.set("total_ms", num(total));
    Ok(o)
}

// ------------------------------------------------------------------ workloads

fn needs_load(w: &str) -> bool {
    ["get", "reopen", "alldocs", "query", "update"].contains(&w)
}

fn run(system: &str, workload: &str, n: u64, dir: &Path, opt: &Opts) -> Res<Obj> {
    let timeout = Duration::from_secs_f64(opt.timeout_s.min(1e9));
    let mut rnd = Mulberry32::new(opt.seed);
    let mut res = Obj::new();
    res.set("system", system);
    res.set("version", systems::version(system));
    res.set("workload", workload);
    res.set("n", n);
    res.set("bench", "kiln-bench");
    res.set("durability", systems::durability(system));
    let (ops, mut completed, mut timed_out, wall): (u64, u64, bool, f64);

    if needs_load(workload) {
        let l = child_phase(system, "_load", n, dir, opt)?;
        res.set(
            "load_mode",
            l.get("load_mode").cloned().unwrap_or(Value::Null),
        );
        res.set("load_ms", l.get("load_ms").cloned().unwrap_or(Value::Null));
        res.set("loaded", l.get("loaded").cloned().unwrap_or(Value::Null));
        res.set(
            "load_timed_out",
            l.get("load_timed_out").cloned().unwrap_or(Value::Null),
        );
        res.set("load_peak_rss_mb", fixed(f64_of(l.get("peak_rss_mb")), 1));
        if l.get("load_timed_out") == Some(&Value::Bool(true)) {
            let hung = l.get("load_hung") == Some(&Value::Bool(true));
            res.set(
                "load_note",
                format!(
                    "pre-load timed out at {} of {n} docs{}",
                    l.get("loaded").map(Value::to_string).unwrap_or_default(),
                    if hung { " (a call hung)" } else { "" }
                ),
            );
        }
    } else {
        prep_dir(dir)?;
    }
    let loaded = if needs_load(workload) {
        res.get("loaded").and_then(Value::as_u64).unwrap_or(0)
    } else {
        n
    };

    if workload == "reopen" {
        if loaded == 0 {
            return Err("reopen: nothing was pre-loaded".into());
        }
        let c = child_phase(system, "_reopen", loaded, dir, opt)?;
        for k in ["import_ms", "open_ms", "first_get_ms", "open_read_ms"] {
            res.set(k, c.get(k).cloned().unwrap_or(Value::Null));
        }
        res.set(
            "child_process_ms",
            c.get("child_wall_ms").cloned().unwrap_or(Value::Null),
        );
        res.set("child_peak_rss_mb", fixed(f64_of(c.get("peak_rss_mb")), 1));
        wall = f64_of(c.get("open_read_ms"));
        ops = 1;
        completed = 1;
        timed_out = false;
    } else {
        let t_open = Instant::now();
        let mut a = systems::open(system, dir)?;
        res.set("import_ms", 0u64);
        res.set("open_ms", num(ms_since(t_open)));
        let t0 = Instant::now();
        // Watchdog: if a single call stalls past timeout + grace, print a partial result.
        let done = Arc::new(AtomicU64::new(0));
        let wd = {
            let done = done.clone();
            let snapshot = res.clone();
            let dir: PathBuf = dir.to_path_buf();
            let (timeout_s, grace_s) = (opt.timeout_s, opt.grace_s);
            watchdog(secs(opt.timeout_s + opt.grace_s), move || {
                let mut r = snapshot;
                let w = ms_since(t0);
                let c = done.load(Ordering::SeqCst);
                set_rate(&mut r, w, c);
                r.set("completed", c);
                r.set("timed_out", true);
                r.set("hung", true);
                r.set(
                    "note",
                    format!(
                        "watchdog: a call did not return within {grace_s} s after the {timeout_s} s timeout; timed out at {c} of {n}"
                    ),
                );
                r.extend(&disk_stats(&dir));
                r.set("peak_rss_mb", fixed(peak_rss_mb(), 1));
                r.set("ts", iso_now());
                print_line(&r);
            })
        };
        // Counts finished operations; true once the time budget is spent.
        let tick = |completed: &mut u64, k: u64| {
            *completed += k;
            done.store(*completed, Ordering::Relaxed);
            t0.elapsed() > timeout
        };
        completed = 0;
        timed_out = false;
        match workload {
            "put-seq" => {
                for i in 0..n {
                    a.put_one(&make_doc(i, n))?;
                    if tick(&mut completed, 1) {
                        timed_out = true;
                        break;
                    }
                }
                ops = completed;
            }
            "put-bulk" => {
                let mut i = 0;
                while i < n {
                    let docs: Vec<_> = (i..n.min(i + opt.batch)).map(|k| make_doc(k, n)).collect();
                    a.put_batch(&docs)?;
                    if tick(&mut completed, docs.len() as u64) {
                        timed_out = true;
                        break;
                    }
                    i += opt.batch;
                }
                ops = completed;
            }
            "get" => {
                for _ in 0..n {
                    let id = doc_id(rnd.below(loaded));
                    let d = a.get(&id)?;
                    if d.get("_id").and_then(Value::as_str) != Some(id.as_str()) {
                        return Err("get returned wrong doc".into());
                    }
                    if tick(&mut completed, 1) {
                        timed_out = true;
                        break;
                    }
                }
                ops = completed;
            }
            "alldocs" => {
                let c = a.all_docs()?;
                if c != loaded {
                    return Err(format!("alldocs returned {c}, expected {loaded}").into());
                }
                completed = c;
                ops = c;
            }
            "query" => {
                // As bench.mjs: the index build and first query reported apart, then the
                // timed queries (each ~1% of the documents, with their bodies).
                let width = (loaded as f64 / 100.0).round().max(1.0) as u64;
                let tp = Instant::now();
                a.query_prepare()?;
                let first = a.query(0, width - 1)?;
                res.set("index_build_ms", fixed(ms_since(tp), 2));
                res.set("first_query_rows", first);
                res.set("rows_expected", width);
                let mut mismatch = first != width;
                let q = js_number(opt.get("queries")).max(0.0) as u64;
                let mut times = Vec::new();
                let mut rows = 0u64;
                let tq = Instant::now();
                for _ in 0..q {
                    let lo = (rnd.next() * (loaded - width) as f64).floor() as u64;
                    let ts = Instant::now();
                    let got = a.query(lo, lo + width - 1)?;
                    mismatch |= got != width;
                    rows += got;
                    times.push(ms_since(ts));
                    if tick(&mut completed, 1) {
                        timed_out = true;
                        break;
                    }
                }
                if mismatch {
                    res.set("row_count_mismatch", true);
                }
                res.set("queries_ms", fixed(ms_since(tq), 2));
                res.set("query_median_ms", fixed(median(&mut times), 3));
                res.set("avg_rows", num(rows as f64 / completed.max(1) as f64));
                ops = completed;
            }
            "update" => {
                for _ in 0..n {
                    let id = doc_id(rnd.below(loaded));
                    a.update(&id)?;
                    if tick(&mut completed, 1) {
                        timed_out = true;
                        break;
                    }
                }
                ops = completed;
            }
            "attach" => {
                // As bench.mjs: N documents each with one attachment, one put each, then all
                // read back (sizes checked, and the first one's bytes); ops = puts + reads.
                let size = js_number(opt.get("att-size")).max(0.0) as usize;
                let tp = Instant::now();
                for i in 0..n {
                    a.put_with_attachment(&make_doc(i, n), "blob.bin", &make_blob(i, size))?;
                    if tick(&mut completed, 1) {
                        timed_out = true;
                        break;
                    }
                }
                res.set("attach_put_ms", fixed(ms_since(tp), 2));
                let tr = Instant::now();
                let mut read_bytes = 0u64;
                for i in 0..completed {
                    let b = a.get_attachment(&doc_id(i), "blob.bin")?;
                    if b.len() != size {
                        return Err(format!(
                            "attachment {i} has {} bytes, expected {size}",
                            b.len()
                        )
                        .into());
                    }
                    if i == 0 && b != make_blob(0, size) {
                        return Err("attachment content mismatch".into());
                    }
                    read_bytes += b.len() as u64;
                }
                res.set("attach_read_ms", fixed(ms_since(tr), 2));
                res.set("att_size", size as u64);
                res.set("read_bytes", read_bytes);
                ops = completed * 2;
            }
            other => return Err(format!("workload {other} not supported by kiln-bench").into()),
        }
        wall = ms_since(t0);
        // Closing finishes work the timed loop left running (kiln: the merge its background
        // compaction is doing; SQLite: its last checkpoint): reported apart, and as a rate
        // that counts it.
        a.close()?;
        let with_close = ms_since(t0);
        res.set("close_ms", fixed(with_close - wall, 2));
        if with_close > 0.0 {
            res.set(
                "ops_per_sec_with_close",
                fixed(ops as f64 * 1000.0 / with_close, 1),
            );
        }
        drop(wd);
    }
    set_rate(&mut res, wall, ops);
    res.set("completed", completed);
    res.set("timed_out", timed_out);
    if timed_out {
        res.set(
            "note",
            format!(
                "timed out at {completed} of {n} after {:.0} s",
                wall / 1000.0
            ),
        );
    }
    res.extend(&disk_stats(dir));
    // reopen is measured in its child process; report that process's peak RSS.
    let rss = if workload == "reopen" {
        res.get("child_peak_rss_mb").cloned().unwrap_or(Value::Null)
    } else {
        fixed(peak_rss_mb(), 1)
    };
    res.set("peak_rss_mb", rss);
    Ok(res)
}

// ------------------------------------------------------------------ main

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let (pos, opt) = parse_args(&argv);
    if pos.len() != 4 {
        usage("need 4 positional args");
    }
    let (system, workload, n_str, dir) = (&pos[0], &pos[1], &pos[2], PathBuf::from(&pos[3]));
    if !SYSTEMS.contains(&system.as_str()) {
        usage(&format!("unknown system {system}"));
    }
    let nf = js_number(n_str);
    if !(nf.is_finite() && nf.fract() == 0.0 && (1.0..=9.007_199_254_740_991e15).contains(&nf)) {
        usage(&format!("bad N {n_str}"));
    }
    let n = nf as u64;
    let result: Result<Obj, BoxErr> = match workload.as_str() {
        "_load" => phase_load(system, n, &dir, &opt).map(|mut o| {
            o.set("peak_rss_mb", num(peak_rss_mb()));
            o
        }),
        "_reopen" => phase_reopen(system, n, &dir, &opt).map(|mut o| {
            o.set("peak_rss_mb", num(peak_rss_mb()));
            o
        }),
        w if UNSUPPORTED.contains(&w) => {
            eprintln!("workload {w} not supported by kiln-bench");
            std::process::exit(3);
        }
        w if !WORKLOADS.contains(&w) => usage(&format!("unknown workload {w}")),
        w => run(system, w, n, &dir, &opt).map(|mut o| {
            o.set("ts", iso_now());
            o
        }),
    };
    match result {
        Ok(o) => print_line(&o),
        Err(e) => {
            eprintln!(
                "kiln-bench {system} {workload} {n} {}: error: {e}",
                dir.display()
            );
            std::process::exit(1);
        }
    }
}

/// `wall_ms`, `ops` and `ops_per_sec` as the harness prints them.
fn set_rate(r: &mut out::Obj, wall: f64, ops: u64) {
    r.set("wall_ms", fixed(wall, 2));
    r.set("ops", ops);
    r.set(
        "ops_per_sec",
        if wall > 0.0 {
            fixed(ops as f64 * 1000.0 / wall, 1)
        } else {
            Value::Null
        },
    );
}

/// The median as bench.mjs computes it (the mean of the two middle values of an even count).
fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}
