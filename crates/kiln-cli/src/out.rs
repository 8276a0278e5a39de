//! All output formatting: human text or JSON, escaping for terminals, dates, exit codes and
//! the failures they come from.

use kiln::{Cid, Error};
use serde_json::{json, Value};
use std::io::Write;

/// Exit codes (also in `kiln --help`).
pub mod code {
    pub const ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const NO_SUCH: u8 = 4;
    pub const CORRUPT: u8 = 5;
    /// An expected-version write found the document at another version: nothing written.
    pub const CONFLICT: u8 = 6;
}

pub struct Out {
    pub json: bool,
}

impl Out {
    pub fn print(&self, human: impl FnOnce() -> String, machine: impl FnOnce() -> Value) {
        let mut o = std::io::stdout().lock();
        let text = if self.json {
            machine().to_string()
        } else {
            human()
        };
        if !text.is_empty() {
            let _ = writeln!(o, "{text}");
        }
    }
}

/// Why a command failed: what to print and the exit code.
pub struct Fail {
    pub code: u8,
    pub msg: String,
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        // The library's messages say what happened; the command line adds where to look.
        let mut msg = e.to_string();
        match e {
            Error::NoStore(_) => msg.push_str(
                " (check --root or $KILN_ROOT; `kiln db create NAME` creates a store with its \
                 first database)",
            ),
            Error::NoSuchDatabase(_) => msg.push_str(" (see `kiln db list`)"),
            Error::NoSuchEvent(..) => msg.push_str(" (see `kiln log`)"),
            Error::InvalidArgument(ref m) if m.contains("document version") => {
                msg.push_str(" (`kiln get DB ID --rev` prints it)")
            }
            _ => {}
        }
        Fail {
            code: exit_code(&e),
            msg,
        }
    }
}

/// Bad input (exit 2).
pub fn bad_input(msg: String) -> Fail {
    Fail {
        code: code::USAGE,
        msg,
    }
}

pub fn exit_code(e: &Error) -> u8 {
    match e {
        Error::InvalidName { .. }
        | Error::InvalidDocument(_)
        | Error::InvalidArgument(_)
        | Error::DatabaseExists(_) => code::USAGE,
        Error::NoSuchDatabase(_)
        | Error::NoSuchEvent(..)
        | Error::NoSuchIndex(..)
        | Error::NoStore(_) => code::NO_SUCH,
        Error::Purged(..) | Error::NoSuchDocument { .. } | Error::NoSuchFile { .. } => {
            code::NOT_FOUND
        }
        Error::Changed(_) => code::USAGE,
        Error::Conflict(_) => code::CONFLICT,
        e if e.is_corruption() => code::CORRUPT,
        _ => code::ERROR,
    }
}

/// Text for a terminal: an id (or a message) holding control characters, which could move the
/// cursor, color the output or fake lines of it, is shown escaped and quoted (`"a\nb"`); any
/// other as it is. (`--json` output is escaped by JSON.)
pub fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}'
                | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if s.chars().any(unsafe_char) {
        format!("{s:?}").into()
    } else {
        s.into()
    }
}

pub fn torn_note(name: &str) -> String {
    format!(
        "the head record of database '{name}' ends in an append a crash cut off (a commit that \
         was never acknowledged); it was discarded, and the next commit removes it"
    )
}

pub fn cids(v: &[Cid]) -> Vec<String> {
    v.iter().map(|c| c.to_string()).collect()
}

pub fn proposal_json(p: &kiln::Proposal) -> Value {
    let status = match &p.status {
        kiln::Status::Open => json!({"state": "open"}),
        kiln::Status::Accepted {
            event,
            by,
            at,
            only,
        } => {
            json!({"state": "accepted", "event": event, "by": by, "at_ms": at, "only": only})
        }
        kiln::Status::Rejected { by, at, reason } => {
            json!({"state": "rejected", "by": by, "at_ms": at, "reason": reason})
        }
    };
    json!({"id": p.id, "fork": p.fork, "to": p.to, "message": p.message,
        "created_ms": p.created, "heads": p.heads.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        "status": status})
}

/// `YYYY-MM-DD HH:MM:SS.mmmZ` for milliseconds since the Unix epoch.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// A merge's conflicts, a line each (`kiln merge`, `kiln sync`).
pub fn conflict_lines(r: &kiln::MergeReport) -> Vec<String> {
    r.conflicts
        .iter()
        .map(|c| {
            format!(
                "conflict {}: ancestor {} | ours {} | theirs {} -> {} wins",
                esc(&c.id),
                c.ancestor
                    .as_ref()
                    .map_or("(none)".into(), |v| v.to_string()),
                c.ours.as_ref().map_or("(none)".into(), |v| v.to_string()),
                c.theirs.as_ref().map_or("(none)".into(), |v| v.to_string()),
                side(c.winner)
            )
        })
        .collect()
}

fn side(x: kiln::Side) -> &'static str {
    match x {
        kiln::Side::Ours => "ours",
        kiln::Side::Theirs => "theirs",
    }
}

/// A merge report as JSON (`kiln merge --json`, `kiln sync --json`).
pub fn merge_json(r: &kiln::MergeReport) -> Value {
    serde_json::json!({"event": r.event.map(|e| e.to_string()), "fast_forward": r.fast_forward,
        "events": r.events, "changed": r.changed,
        "conflicts": r.conflicts.iter().map(|c| serde_json::json!({"id": c.id, "ancestor": c.ancestor,
            "ours": c.ours, "theirs": c.theirs, "winner": side(c.winner)})).collect::<Vec<_>>()})
}

/// A sync's progress on one line of stderr, redrawn in place (at most ten times a second),
/// when stderr is a terminal and the output is not JSON; wiped when done.
pub struct Bar {
    on: bool,
    last: std::cell::Cell<Option<std::time::Instant>>,
}

impl Bar {
    pub fn new(out: &Out) -> Bar {
        use std::io::IsTerminal;
        Bar {
            on: !out.json && std::io::stderr().is_terminal(),
            last: std::cell::Cell::new(None),
        }
    }

    /// Draws where a sync's transfers are.
    pub fn sync(&self, p: &kiln_sync::Progress) {
        if !self.on || p.total == 0 {
            return;
        }
        let now = std::time::Instant::now();
        let due = self
            .last
            .get()
            .is_none_or(|t| now.duration_since(t).as_millis() >= 100);
        if !due && p.done < p.total {
            return;
        }
        self.last.set(Some(now));
        let what = match p.step {
            kiln_sync::Step::Pull => "pulling files",
            kiln_sync::Step::PullFileSets => "pulling file-sets",
            kiln_sync::Step::Push => "pushing files",
            kiln_sync::Step::PushFileSets => "pushing file-sets",
        };
        const W: usize = 24;
        let full = W * p.done / p.total;
        let bar: String = "#".repeat(full) + &"-".repeat(W - full);
        let mb = p.bytes as f64 / 1e6;
        let mut e = std::io::stderr().lock();
        let _ = write!(
            e,
            "\r\x1b[K{}: {what} [{bar}] {}/{} {mb:.1} MB",
            esc(p.db),
            p.done,
            p.total
        );
        let _ = e.flush();
    }

    /// Wipes the line, if anything was drawn.
    pub fn clear(&self) {
        if self.on && self.last.get().is_some() {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[K");
            let _ = e.flush();
            self.last.set(None);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00.000Z");
        assert_eq!(super::utc(951_782_400_123), "2000-02-29 00:00:00.123Z");
        assert_eq!(super::utc(1_795_857_206_688), "2026-11-28 09:13:26.688Z");
    }
}
