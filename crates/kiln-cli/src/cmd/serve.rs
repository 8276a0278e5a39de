//! `kiln serve`: the sync server (`kiln-server`) over a folder or an S3-compatible bucket.

use crate::out::{bad_input, Fail, Out};
use clap::Args;
use std::io::Write;
use std::sync::Arc;

/// Serve databases to `kiln sync` clients over HTTP (`http://ADDR` is then a remote). The
/// server keeps ciphertext only, in --storage, and never holds a key. Runs until SIGTERM or
/// Ctrl-C, finishing the requests under way. Prints `listening on http://ADDR` (https with --tls-cert) once it listens.
#[derive(Args)]
pub struct Serve {
    /// The address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, default_value = "127.0.0.1:8077", value_name = "HOST:PORT")]
    addr: String,
    /// Where the server keeps files and head records: a folder (made if need be) or an
    /// S3-compatible bucket (`s3://bucket/prefix`, with the --s3-* flags or `AWS_*`).
    /// Several servers may serve one bucket.
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    storage: String,
    /// The largest request body taken (a file or a head record), in bytes.
    #[arg(long, default_value_t = 1 << 30, value_name = "BYTES")]
    max_body: usize,
    /// The tokens clients must give: a file of `TOKEN read|propose|write GLOB` lines (a token at least
    /// 16 characters; GLOB matches database names, `*` any run); read again on SIGHUP.
    /// Without it, anyone who reaches the server may read and write every database.
    #[arg(long, value_name = "FILE")]
    tokens: Option<std::path::PathBuf>,
    /// Connections served at once; more wait to be accepted.
    #[arg(long, default_value_t = 512, value_name = "N")]
    max_connections: usize,
    /// The longest a request may take, its upload included (408 after).
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    request_timeout: u64,
    /// How often, while clients watch (`kiln sync --watch`), the watched databases' head
    /// records are listed to find writes made through other servers on the same storage: one
    /// listing per watched database each time (a request on a bucket). Writes through this
    /// server are told at once.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS", value_parser = positive_seconds)]
    poll: f64,
    /// On SIGTERM, how long requests under way may take to finish; those still running then
    /// are dropped (an upload cut short keeps nothing).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS", value_parser = positive_seconds)]
    drain_timeout: f64,
    /// Serve HTTPS: the certificate chain (PEM). Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1). Needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Logs on stderr: one line per event, `text` or `json` (one object per line: timestamp,
    /// level, target, fields). Each request answered is one event (peer, method, path,
    /// route, status, ms).
    #[arg(long, value_enum, default_value = "text", value_name = "FORMAT")]
    log_format: LogFormatArg,
    /// The least level logged: error, warn, info (each request) or debug.
    #[arg(long, env = "KILN_LOG", default_value = "info", value_name = "LEVEL")]
    log_level: LevelArg,
}

/// A number of seconds above zero and at most a day.
fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!(
            "{s}: expected seconds above 0 and at most 86400 (e.g. 0.5)"
        )),
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LevelArg {
    Error,
    Warn,
    Info,
    Debug,
}

impl Serve {
    pub fn run(&self, out: &Out, remote: &kiln_sync::RemoteConfig) -> Result<u8, Fail> {
        if self.storage.starts_with("http://") || self.storage.starts_with("https://") {
            return Err(bad_input(format!(
                "--storage {}: a server keeps its data in a folder or a bucket, not behind \
                 another server",
                self.storage
            )));
        }
        let storage = kiln_sync::open_remote_with(&self.storage, remote).map_err(|e| Fail {
            code: if e.kind() == std::io::ErrorKind::InvalidInput {
                crate::out::code::USAGE
            } else {
                crate::out::code::ERROR
            },
            msg: format!("--storage {}: {e}", self.storage),
        })?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some(kiln_server::tls_config(c, k).map_err(|e| Fail {
                code: crate::out::code::USAGE,
                msg: e.to_string(),
            })?),
            _ => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let opts = kiln_server::ServerOptions {
            tls,
            max_body: self.max_body,
            max_connections: self.max_connections.max(1),
            request_timeout: std::time::Duration::from_secs(self.request_timeout.max(1)),
            poll: std::time::Duration::from_secs_f64(self.poll),
            drain_timeout: std::time::Duration::from_secs_f64(self.drain_timeout),
            ..Default::default()
        };
        kiln_server::log::to_stderr(
            match self.log_format {
                LogFormatArg::Text => kiln_server::LogFormat::Text,
                LogFormatArg::Json => kiln_server::LogFormat::Json,
            },
            match self.log_level {
                LevelArg::Error => kiln_server::log::Level::ERROR,
                LevelArg::Warn => kiln_server::log::Level::WARN,
                LevelArg::Info => kiln_server::log::Level::INFO,
                LevelArg::Debug => kiln_server::log::Level::DEBUG,
            },
        );
        let json = out.json;
        let tokens = self.tokens.as_deref();
        kiln_server::run_until_signal(&self.addr, Arc::from(storage), opts, tokens, |addr| {
            let mut o = std::io::stdout().lock();
            let _ = if json {
                writeln!(
                    o,
                    "{}",
                    serde_json::json!({"listening": format!("{scheme}://{addr}")})
                )
            } else {
                writeln!(o, "listening on {scheme}://{addr}")
            };
            let _ = o.flush();
        })
        .map_err(|e| Fail {
            code: crate::out::code::ERROR,
            msg: format!("serve on {}: {e}", self.addr),
        })?;
        Ok(0)
    }
}
