//! Everything read from the user: documents (argument, stdin, import lines) within their
//! bounds, event CIDs, and the numbers that clap does not check itself.

use crate::out::{bad_input, Fail};
use kiln::{Cid, Error};
use std::io::{BufRead, Read};

/// The most JSON text read for one document (the argument, stdin, or one import line): any
/// document kiln stores, written as compact JSON (as `export` writes it), fits, since no byte of
/// a stored body takes more than 6 bytes of JSON (`false,`, or `\u001f` in a string). Longer
/// input is refused without reading further (a 300 MB document used to take 1.2 GB).
pub const MAX_TEXT: usize = 8 << 20;

pub fn too_long(what: &str) -> String {
    format!(
        "invalid document: {what} is longer than {} MiB of JSON text; refused without reading \
         further (a stored document is at most {} MiB)",
        MAX_TEXT >> 20,
        kiln::MAX_DOC_BYTES >> 20
    )
}

pub fn not_utf8(what: &str, e: &std::str::Utf8Error) -> String {
    format!(
        "invalid document: {what} is not valid UTF-8 (at byte {})",
        e.valid_up_to() + 1
    )
}

/// The document given on stdin, read up to [`MAX_TEXT`] bytes.
pub fn read_stdin_doc() -> Result<String, Fail> {
    let mut b = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_TEXT as u64 + 1)
        .read_to_end(&mut b)
        .map_err(|e| Error::io("stdin", e))?;
    if b.len() > MAX_TEXT {
        return Err(bad_input(too_long("the document on stdin")));
    }
    String::from_utf8(b).map_err(|e| bad_input(not_utf8("the document on stdin", &e.utf8_error())))
}

/// What [`read_line`] read.
pub enum Line {
    End,
    Text,
    /// Longer than the limit: not read further.
    TooLong,
}

/// Reads the next line into `buf` (without its `\n` or `\r\n`), at most `max` bytes of it
/// and a buffer's worth more: a longer line is not read to its end.
pub fn read_line(r: &mut dyn BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Line> {
    buf.clear();
    loop {
        let avail = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(match buf.len() {
                0 => Line::End,
                n if n > max => Line::TooLong,
                _ => Line::Text,
            });
        }
        let (take, ends) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        buf.extend_from_slice(&avail[..take]);
        r.consume(take);
        if ends {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(if buf.len() > max {
                Line::TooLong
            } else {
                Line::Text
            });
        }
        if buf.len() > max + 1 {
            return Ok(Line::TooLong);
        }
    }
}

pub fn parse_event(s: &str) -> kiln::Result<Cid> {
    Cid::parse(s.trim()).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{s:?} is not an event CID (copy one from `kiln log`)"
        ))
    })
}

/// `--batch`: a whole number, at least 1.
pub fn batch_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("a batch holds at least 1 document".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// `N` or `default` (no setting).
pub fn parse_threshold(s: &str) -> kiln::Result<Option<usize>> {
    if s == "default" {
        return Ok(None);
    }
    s.parse::<usize>().map(Some).map_err(|_| {
        Error::InvalidArgument(format!(
            "compaction threshold {s:?} is not a whole number or `default`"
        ))
    })
}

/// A key or value given on the command line: JSON when it parses as JSON, else the text as a
/// string (`0` is the number zero, `'"0"'` the string "0", `red` the string "red").
pub fn parse_key(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.to_owned()))
}

/// `FIELD=VALUE` of `kiln find --where` (the value as [`parse_key`] reads it).
pub fn parse_where(s: &str) -> Result<(String, serde_json::Value), String> {
    match s.split_once('=') {
        Some((f, v)) if !f.is_empty() => Ok((f.to_owned(), parse_key(v))),
        _ => Err(format!("expected FIELD=VALUE, got {s:?}")),
    }
}
