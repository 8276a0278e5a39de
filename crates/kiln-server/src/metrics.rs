//! Request counts and latencies for an operator: `GET /metrics` in the Prometheus text format
//! (docs/server.md "Observability"). Bounded: one series per route template, method and
//! status, never per database or file.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// One series: requests of a route, method and status.
#[derive(Clone, Debug, Default)]
struct Series {
    count: u64,
    seconds: f64,
    /// Requests at most each bucket's bound (cumulative, as Prometheus has it).
    buckets: [u64; BUCKETS.len()],
}

/// The counts of a running server.
#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<(String, String, u16), Series>>,
    started: Option<Instant>,
}

impl Metrics {
    /// Counts from now.
    pub fn new() -> Metrics {
        Metrics {
            series: Mutex::default(),
            started: Some(Instant::now()),
        }
    }

    fn record(&self, route: String, method: String, status: u16, seconds: f64) {
        let mut all = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let s = all.entry((route, method, status)).or_default();
        s.count += 1;
        s.seconds += seconds;
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                s.buckets[i] += 1;
            }
        }
    }

    /// The Prometheus text exposition of the counts.
    pub fn render(&self) -> String {
        let all = self
            .series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut out = String::new();
        let up = self
            .started
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        let _ = writeln!(
            out,
            "# HELP kiln_server_uptime_seconds Seconds since the server started."
        );
        let _ = writeln!(out, "# TYPE kiln_server_uptime_seconds gauge");
        let _ = writeln!(out, "kiln_server_uptime_seconds {up:.3}");
        let _ = writeln!(
            out,
            "# HELP kiln_server_requests_total Requests answered, by route, method and status."
        );
        let _ = writeln!(out, "# TYPE kiln_server_requests_total counter");
        for ((route, method, status), s) in &all {
            let _ = writeln!(
                out,
                "kiln_server_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {}",
                s.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP kiln_server_request_seconds Time to answer a request, by route and method."
        );
        let _ = writeln!(out, "# TYPE kiln_server_request_seconds histogram");
        let mut by_route: BTreeMap<(String, String), Series> = BTreeMap::new();
        for ((route, method, _), s) in &all {
            let t = by_route.entry((route.clone(), method.clone())).or_default();
            t.count += s.count;
            t.seconds += s.seconds;
            for i in 0..BUCKETS.len() {
                t.buckets[i] += s.buckets[i];
            }
        }
        for ((route, method), s) in &by_route {
            let labels = format!("route=\"{route}\",method=\"{method}\"");
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "kiln_server_request_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                    s.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "kiln_server_request_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "kiln_server_request_seconds_sum{{{labels}}} {:.6}",
                s.seconds
            );
            let _ = writeln!(
                out,
                "kiln_server_request_seconds_count{{{labels}}} {}",
                s.count
            );
        }
        out
    }
}

/// Middleware: counts each request under its route template (never its path: names of
/// databases and files stay out of the metrics, and the series stay few).
pub async fn count(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = match req.method().as_str() {
        m @ ("GET" | "HEAD" | "PUT" | "POST" | "DELETE") => m,
        _ => "other",
    }
    .to_owned();
    let t = Instant::now();
    let res = next.run(req).await;
    m.record(
        route,
        method,
        res.status().as_u16(),
        t.elapsed().as_secs_f64(),
    );
    res
}
