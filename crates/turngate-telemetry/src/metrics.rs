//! Prometheus metrics in the text exposition format (version 0.0.4), base units in
//! names. [`Metrics`] holds what is counted as it happens (turns, backend latencies);
//! what the gateway already counts elsewhere (sessions, frames, uploads, spans) is read
//! at scrape time and written with [`Exposition`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

/// Latency buckets in seconds, 5 ms to 60 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Buckets in seconds for the gateway's own per-frame latency, 50 µs to 100 ms (the
/// target is 2 ms at p99: issue 14).
pub const FRAME_LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1,
];

/// A counter per label values.
pub struct CounterVec<const N: usize> {
    name: &'static str,
    help: &'static str,
    labels: [&'static str; N],
    values: Mutex<BTreeMap<[String; N], u64>>,
}

impl<const N: usize> CounterVec<N> {
    /// An empty counter family.
    pub const fn new(name: &'static str, help: &'static str, labels: [&'static str; N]) -> Self {
        Self {
            name,
            help,
            labels,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds one to the counter with these label values.
    pub fn inc(&self, values: [&str; N]) {
        self.add(values, 1);
    }

    /// Adds `n` to the counter with these label values.
    pub fn add(&self, values: [&str; N], n: u64) {
        if let Ok(mut map) = self.values.lock() {
            *map.entry(values.map(str::to_owned)).or_default() += n;
        }
    }

    fn write(&self, out: &mut Exposition) {
        out.family(self.name, self.help, "counter");
        let Ok(map) = self.values.lock() else { return };
        for (values, n) in map.iter() {
            out.sample(self.name, &pairs(&self.labels, values), *n as f64);
        }
    }
}

struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A histogram per label values.
pub struct HistogramVec<const N: usize> {
    name: &'static str,
    help: &'static str,
    labels: [&'static str; N],
    buckets: &'static [f64],
    values: Mutex<BTreeMap<[String; N], Histogram>>,
}

impl<const N: usize> HistogramVec<N> {
    /// An empty histogram family with these upper bounds.
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: [&'static str; N],
        buckets: &'static [f64],
    ) -> Self {
        Self {
            name,
            help,
            labels,
            buckets,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records one observation.
    pub fn observe(&self, values: [&str; N], x: f64) {
        if let Ok(mut map) = self.values.lock() {
            let h = map
                .entry(values.map(str::to_owned))
                .or_insert_with(|| Histogram {
                    counts: vec![0; self.buckets.len()],
                    sum: 0.0,
                    count: 0,
                });
            for (bound, n) in self.buckets.iter().zip(h.counts.iter_mut()) {
                if x <= *bound {
                    *n += 1;
                }
            }
            h.sum += x;
            h.count += 1;
        }
    }

    fn write(&self, out: &mut Exposition) {
        out.family(self.name, self.help, "histogram");
        let Ok(map) = self.values.lock() else { return };
        let bucket = format!("{}_bucket", self.name);
        for (values, h) in map.iter() {
            let labels = pairs(&self.labels, values);
            let bounds = self.buckets.iter().map(f64::to_string);
            let counts = h.counts.iter().copied();
            for (le, n) in bounds.zip(counts).chain([("+Inf".to_owned(), h.count)]) {
                let mut with_le = labels.clone();
                with_le.push(("le", &le));
                out.sample(&bucket, &with_le, n as f64);
            }
            out.sample(&format!("{}_sum", self.name), &labels, h.sum);
            out.sample(&format!("{}_count", self.name), &labels, h.count as f64);
        }
    }
}

fn pairs<'a, const N: usize>(
    names: &[&'static str; N],
    values: &'a [String; N],
) -> Vec<(&'static str, &'a str)> {
    names
        .iter()
        .copied()
        .zip(values.iter().map(String::as_str))
        .collect()
}

/// What is counted as it happens.
pub struct Metrics {
    /// Turns opened, by cause.
    pub turns_started: CounterVec<1>,
    /// Turns completed, by cause and status.
    pub turns_completed: CounterVec<2>,
    /// Backend call latency, by stage and outcome.
    pub backend_duration: HistogramVec<2>,
    /// LLM time to first token.
    pub llm_first_token: HistogramVec<0>,
    /// From an RTP packet's receipt to its tagged frame in its turn's buffer.
    pub frame_latency: HistogramVec<0>,
    /// HTTP connections closed, by why.
    pub http_connections_closed: CounterVec<1>,
    /// Offers refused, by error code.
    pub sessions_refused: CounterVec<1>,
    /// Audio a turn's buffer did not keep, by what (`frames` beyond the frame cap,
    /// `pcm` of frames beyond the samples cap).
    pub turn_audio_capped: CounterVec<1>,
    /// HTTP connections open now.
    pub http_connections: AtomicI64,
    /// Requests refused by authentication, by reason.
    pub auth_refused: CounterVec<1>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            turns_started: CounterVec::new(
                "turngate_turns_started_total",
                "Turns opened, by what opened them.",
                ["cause"],
            ),
            turns_completed: CounterVec::new(
                "turngate_turns_completed_total",
                "Turns whose processing finished, by cause and status.",
                ["cause", "status"],
            ),
            backend_duration: HistogramVec::new(
                "turngate_backend_request_duration_seconds",
                "Backend calls (retries included), by stage and outcome.",
                ["stage", "outcome"],
                LATENCY_BUCKETS,
            ),
            llm_first_token: HistogramVec::new(
                "turngate_llm_time_to_first_token_seconds",
                "From the LLM request to its first streamed token.",
                [],
                LATENCY_BUCKETS,
            ),
            frame_latency: HistogramVec::new(
                "turngate_frame_latency_seconds",
                "From an RTP packet's receipt (the WebRTC stack yielding it to the session) \
                 to its tagged frame in its turn's buffer: queueing, Opus decoding, VAD, \
                 tagging and the hand-over to the turn's owner and record. Frames held in \
                 pre-roll (tagged when their turn opened after them) and frames outside \
                 turns are not observed.",
                [],
                FRAME_LATENCY_BUCKETS,
            ),
            http_connections_closed: CounterVec::new(
                "turngate_http_connections_closed_total",
                "HTTP connections closed: by the client or after its last response (ended), \
                 for sending no request headers within http.header_read_timeout_ms (timeout), \
                 or dropped at the shutdown deadline (shutdown).",
                ["reason"],
            ),
            turn_audio_capped: CounterVec::new(
                "turngate_turn_audio_capped_total",
                "Frames a turn's buffer did not keep (frames: over the frame cap) or kept \
                 without their PCM (pcm: over the samples cap of turn.max_turn_ms): only a \
                 sender faster than real time gets here.",
                ["what"],
            ),
            http_connections: AtomicI64::new(0),
            auth_refused: CounterVec::new(
                "turngate_auth_refused_total",
                "Requests refused by authentication (401/403), by reason: missing, malformed, \
                 unknown_key, algorithm, signature, expired, not_yet_valid, audience, issuer, \
                 missing_claim, scope, admin_token, host (a Host not served).",
                ["reason"],
            ),
            sessions_refused: CounterVec::new(
                "turngate_sessions_refused_total",
                "Offers refused, by error code: limits (too_many_sessions, too_many_pending, \
                 no_media_port, payload_too_large, request_timeout) and bad offers.",
                ["code"],
            ),
        }
    }
}

impl Metrics {
    /// Writes every family.
    pub fn write(&self, out: &mut Exposition) {
        out.single(
            "turngate_http_connections",
            "HTTP connections open now (bounded by http.max_connections).",
            "gauge",
            self.http_connections.load(Ordering::Relaxed) as f64,
        );
        self.turn_audio_capped.write(out);
        self.auth_refused.write(out);
        self.http_connections_closed.write(out);
        self.sessions_refused.write(out);
        self.turns_started.write(out);
        self.turns_completed.write(out);
        self.backend_duration.write(out);
        self.llm_first_token.write(out);
        self.frame_latency.write(out);
    }
}

/// A Prometheus text exposition being written.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// The content type of [`Exposition::finish`]'s text.
    pub const CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";

    /// Starts a family: its `HELP` and `TYPE` lines.
    pub fn family(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(
            self.text,
            "# HELP {name} {}",
            help.replace('\\', "\\\\").replace('\n', "\\n")
        );
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.text, "{k}=\"{v}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, help: &str, kind: &str, value: f64) {
        self.family(name, help, kind);
        self.sample(name, &[], value);
    }

    /// The text.
    pub fn finish(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = HistogramVec::new("x_seconds", "X.", ["stage"], &[0.1, 1.0]);
        h.observe(["asr"], 0.05);
        h.observe(["asr"], 0.5);
        h.observe(["asr"], 5.0);
        let mut out = Exposition::default();
        h.write(&mut out);
        let text = out.finish();
        for line in [
            "# TYPE x_seconds histogram",
            "x_seconds_bucket{stage=\"asr\",le=\"0.1\"} 1",
            "x_seconds_bucket{stage=\"asr\",le=\"1\"} 2",
            "x_seconds_bucket{stage=\"asr\",le=\"+Inf\"} 3",
            "x_seconds_sum{stage=\"asr\"} 5.55",
            "x_seconds_count{stage=\"asr\"} 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }

    #[test]
    fn counters_escape_label_values() {
        let c = CounterVec::new("y_total", "Y.", ["code"]);
        c.inc(["a\"b"]);
        c.inc(["a\"b"]);
        let mut out = Exposition::default();
        c.write(&mut out);
        assert!(out.finish().contains("y_total{code=\"a\\\"b\"} 2\n"));
    }
}
