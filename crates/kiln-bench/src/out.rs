//! The result line: a JSON object that keeps insertion order (like a JS object, so the line
//! starts with `{"system":`) and prints numbers the way `JSON.stringify` does.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Clone, Debug, Default)]
pub struct Obj(Vec<(String, Value)>);

impl Obj {
    pub fn new() -> Self {
        Obj(Vec::new())
    }

    /// Sets a key: replaces it in place if present (like a JS assignment), else appends.
    pub fn set(&mut self, k: &str, v: impl Into<Value>) {
        let v = v.into();
        match self.0.iter_mut().find(|(x, _)| x == k) {
            Some(slot) => slot.1 = v,
            None => self.0.push((k.to_owned(), v)),
        }
    }

    pub fn get(&self, k: &str) -> Option<&Value> {
        self.0.iter().find(|(x, _)| x == k).map(|(_, v)| v)
    }

    pub fn extend(&mut self, other: &Obj) {
        for (k, v) in &other.0 {
            self.set(k, v.clone());
        }
    }

    pub fn to_json(&self) -> String {
        let mut s = String::from("{");
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&serde_json::to_string(k).unwrap_or_default());
            s.push(':');
            write_value(&mut s, v);
        }
        s.push('}');
        s
    }
}

/// A float as JS would print it, as a JSON value (`NaN`/infinite become `null`).
pub fn num(x: f64) -> Value {
    serde_json::Number::from_f64(x)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// `+x.toFixed(d)`.
pub fn fixed(x: f64, d: i32) -> Value {
    let p = 10f64.powi(d);
    num((x * p).round() / p)
}

fn write_value(s: &mut String, v: &Value) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
                    let _ = write!(s, "{}", f as i64);
                    return;
                }
            }
            s.push_str(&n.to_string());
        }
        Value::Array(a) => {
            s.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                write_value(s, x);
            }
            s.push(']');
        }
        Value::Object(m) => {
            s.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&serde_json::to_string(k).unwrap_or_default());
                s.push(':');
                write_value(s, x);
            }
            s.push('}');
        }
        other => s.push_str(&other.to_string()),
    }
}

/// `diskStats(dir)` of bench.mjs: regular files under `dir` (not following directory
/// symlinks), skipping the `.bench-data` marker; `per_dir` groups by top-level entry.
pub fn disk_stats(dir: &Path) -> Obj {
    #[derive(Default)]
    struct Acc {
        bytes: u64,
        alloc: u64,
        files: u64,
        per: BTreeMap<String, (u64, u64)>,
    }
    fn walk(d: &Path, top: Option<&str>, acc: &mut Acc) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            let p = e.path();
            if ft.is_dir() {
                walk(&p, Some(top.unwrap_or(&name)), acc);
            } else if ft.is_file() {
                if name == ".bench-data" {
                    continue;
                }
                let Ok(md) = std::fs::metadata(&p) else {
                    continue;
                };
                use std::os::unix::fs::MetadataExt;
                acc.bytes += md.len();
                acc.alloc += md.blocks() * 512;
                acc.files += 1;
                let k = top.unwrap_or(".").to_owned();
                let slot = acc.per.entry(k).or_default();
                slot.0 += 1;
                slot.1 += md.len();
            }
        }
    }
    let mut acc = Acc::default();
    walk(dir, None, &mut acc);
    let mut per = serde_json::Map::new();
    for (k, (files, bytes)) in acc.per {
        per.insert(k, serde_json::json!({ "files": files, "bytes": bytes }));
    }
    let mut o = Obj::new();
    o.set("disk_bytes", acc.bytes);
    o.set("disk_alloc_bytes", acc.alloc);
    o.set("files", acc.files);
    o.set("per_dir", Value::Object(per));
    o
}

/// Peak resident set size of this process (VmHWM), in MiB.
pub fn peak_rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for line in s.lines() {
        if let Some(rest) = line.strip_prefix("VmHWM:") {
            let kb: f64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0.0);
            return kb / 1024.0;
        }
    }
    0.0
}

/// `new Date().toISOString()`.
pub fn iso_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let ms = d.subsec_millis();
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // civil_from_days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_like_js() {
        let mut o = Obj::new();
        o.set("system", "kiln");
        o.set("a", num(1000.0));
        o.set("b", fixed(12.3456, 2));
        o.set("c", 7u64);
        o.set("d", num(f64::NAN));
        o.set("a", num(2.5));
        assert_eq!(
            o.to_json(),
            r#"{"system":"kiln","a":2.5,"b":12.35,"c":7,"d":null}"#
        );
    }

    #[test]
    fn iso() {
        let s = iso_now();
        assert_eq!(s.len(), 24, "{s}");
        assert!(s.ends_with('Z'));
    }
}
