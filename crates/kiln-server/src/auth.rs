//! Bearer tokens scoped to database-name globs, `read`, `propose` or `write` (docs/server.md "Tokens").
//!
//! A tokens file has one `TOKEN read|propose|write GLOB` per line (blank lines and `#` comments
//! skipped); a token may have several lines. A glob matches a database id: `*` any run of
//! characters, `?` one, anything else itself. `write` includes `propose`, which includes
//! `read`. Tokens are compared in
//! constant time (every token of the file is compared, whole, whatever matches).

use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// Tokens a server takes, replaced whole when the file is read again (SIGHUP).
pub type SharedTokens = Arc<RwLock<Arc<Tokens>>>;

/// What a request does to a database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Reads it.
    Read,
    /// Files proposals for it (and may read it), but neither writes it nor decides them.
    Propose,
    /// Writes it and decides its proposals (and may read it and propose).
    Write,
}

/// One line of a tokens file.
#[derive(Clone, Debug)]
struct Grant {
    token: Vec<u8>,
    access: Access,
    glob: String,
}

/// The tokens a server accepts.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    grants: Vec<Grant>,
}

/// Shortest token taken (a guessable token is no lock).
pub const MIN_TOKEN: usize = 16;

impl Tokens {
    /// Reads a tokens file; a line that is not `TOKEN read|propose|write GLOB` is an error naming it.
    pub fn load(path: &Path) -> io::Result<Tokens> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Tokens::parse(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }

    /// Parses a tokens file's text.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut grants = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |why: &str| format!("line {}: {why}", i + 1);
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [token, access, glob] = parts[..] else {
                return Err(at("not `TOKEN read|propose|write GLOB`"));
            };
            if token.len() < MIN_TOKEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(at(&format!(
                    "a token is at least {MIN_TOKEN} printable characters"
                )));
            }
            let access = match access {
                "read" => Access::Read,
                "propose" => Access::Propose,
                "write" => Access::Write,
                _ => return Err(at("the scope is read, propose or write")),
            };
            grants.push(Grant {
                token: token.as_bytes().to_vec(),
                access,
                glob: glob.to_owned(),
            });
        }
        Ok(Tokens { grants })
    }

    /// These tokens, to share with a server and replace later.
    pub fn shared(self) -> SharedTokens {
        Arc::new(RwLock::new(Arc::new(self)))
    }

    /// How many lines it has.
    pub fn len(&self) -> usize {
        self.grants.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// What `token` may do: `None` when no line has it (every line compared, in constant
    /// time for each).
    pub fn scope(&self, token: &[u8]) -> Option<Scope> {
        let mut found = Vec::new();
        for g in &self.grants {
            if same(&g.token, token) {
                found.push((g.access, g.glob.clone()));
            }
        }
        (!found.is_empty()).then_some(Scope { grants: found })
    }
}

/// What one token may do.
#[derive(Clone, Debug)]
pub struct Scope {
    grants: Vec<(Access, String)>,
}

impl Scope {
    /// Whether it may do `access` to database `db`.
    pub fn allows(&self, access: Access, db: &str) -> bool {
        self.grants
            .iter()
            .any(|(a, glob)| *a >= access && matches(glob, db))
    }

    /// Whether it may do `access` to some database (what files, shared by all, ask).
    pub fn allows_any(&self, access: Access) -> bool {
        self.grants.iter().any(|(a, _)| *a >= access)
    }

    /// Whether it may do `access` to every database (what a remote gc's listing and removal
    /// of files ask: they concern all of them).
    pub fn allows_all(&self, access: Access) -> bool {
        self.grants
            .iter()
            .any(|(a, glob)| *a >= access && glob == "*")
    }
}

/// Equal, in time that depends on the lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// Whether glob `g` (`*` any run, `?` one character) matches all of `s`.
pub fn matches(g: &str, s: &str) -> bool {
    let (g, s): (Vec<char>, Vec<char>) = (g.chars().collect(), s.chars().collect());
    // The classic two-pointer match, backtracking to the last `*`.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < s.len() {
        if i < g.len() && (g[i] == '?' || g[i] == s[j]) {
            i += 1;
            j += 1;
        } else if i < g.len() && g[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    g[i..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (g, s, want) in [
            ("*", "notes", true),
            ("*", "", true),
            ("notes", "notes", true),
            ("notes", "notes2", false),
            ("team-*", "team-a", true),
            ("team-*", "team-", true),
            ("team-*", "tea", false),
            ("*-fork", "main-fork", true),
            ("*-fork", "main-fork2", false),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("n?tes", "notes", true),
            ("n?tes", "ntes", false),
            ("**", "x", true),
        ] {
            assert_eq!(matches(g, s), want, "{g} {s}");
        }
    }

    #[test]
    fn scopes() {
        let t = Tokens::parse(
            "# readers\nreader-token-0123456 read team-*\n\n\
             writer-token-0123456 write notes\nwriter-token-0123456 read *\n\
             admin-token-01234567 write *\n",
        )
        .unwrap();
        assert_eq!(t.len(), 4);
        assert!(t.scope(b"nobody-token-000000").is_none());
        assert!(
            t.scope(b"reader-token-012345").is_none(),
            "a prefix is not the token"
        );
        let r = t.scope(b"reader-token-0123456").unwrap();
        assert!(r.allows(Access::Read, "team-a") && !r.allows(Access::Write, "team-a"));
        assert!(!r.allows(Access::Read, "notes") && r.allows_any(Access::Read));
        assert!(!r.allows_any(Access::Write) && !r.allows_all(Access::Read));
        let w = t.scope(b"writer-token-0123456").unwrap();
        assert!(w.allows(Access::Write, "notes") && w.allows(Access::Read, "other"));
        assert!(!w.allows(Access::Write, "other") && !w.allows_all(Access::Write));
        assert!(t
            .scope(b"admin-token-01234567")
            .unwrap()
            .allows_all(Access::Write));
        for bad in [
            "short read *",
            "long-enough-token-1 admin *",
            "long-enough-token-1 read",
            "long-enough-token-1 read a b",
        ] {
            assert!(Tokens::parse(bad).is_err(), "{bad}");
        }
    }
}
