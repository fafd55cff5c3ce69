//! `GET /metrics`: the Prometheus text exposition of this node — sessions, frames by
//! fate (the accounting terms), uploads by outcome, turns, backend latency, and spans
//! exported and dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use turngate_backends::slots::Shed;
use turngate_telemetry::metrics::Exposition;

use crate::app::App;

pub(super) async fn metrics(State(app): State<Arc<App>>) -> Response {
    let content_type = Exposition::CONTENT_TYPE;
    ([(header::CONTENT_TYPE, content_type)], render(&app)).into_response()
}

/// The exposition text.
fn render(app: &App) -> String {
    let t = app.registry.totals();
    let c = &t.counts;
    let mut out = Exposition::default();
    out.single(
        "turngate_sessions",
        "Sessions live now.",
        "gauge",
        t.live as f64,
    );
    out.single(
        "turngate_sessions_pending",
        "Sessions whose peer has not connected yet (bounded by sessions.max_pending).",
        "gauge",
        app.registry.pending() as f64,
    );
    out.single(
        "turngate_sessions_retained_bytes",
        "Estimated bytes of the turns, results and image records of live and retained \
         sessions (ended ones bounded by sessions.retain_ended_bytes).",
        "gauge",
        app.registry.retained_bytes() as f64,
    );
    out.single(
        "turngate_sessions_started_total",
        "Sessions created.",
        "counter",
        t.sessions as f64,
    );
    out.single(
        "turngate_frames_received_total",
        "RTP packets of audio received; each gets one fate in turngate_frames_total.",
        "counter",
        c.frames_received as f64,
    );
    out.family(
        "turngate_frames_total",
        "Received frames by fate: tagged with a turn, discarded while idle, dropped by \
         back-pressure, or undecodable.",
        "counter",
    );
    for (fate, n) in [
        ("in_turns", c.frames_in_turns),
        ("idle_discarded", c.idle_frames_discarded),
        ("dropped_backpressure", c.frames_dropped_backpressure),
        ("undecodable", c.frames_undecodable),
    ] {
        out.sample("turngate_frames_total", &[("fate", fate)], n as f64);
    }
    out.single(
        "turngate_audio_concealed_seconds_total",
        "Audio synthesized for lost packets and timestamp gaps (bounded per session by \
         the wall time elapsed plus 200 ms).",
        "counter",
        c.samples_concealed as f64 / 16_000.0,
    );
    out.single(
        "turngate_events_dropped_total",
        "Events for clients dropped: the outbox (media.outbox) was full while the data \
         channel was closed or backed up (media.data_channel_send_buffer).",
        "counter",
        c.events_dropped as f64,
    );
    out.single(
        "turngate_messages_refused_total",
        "Data-channel messages refused with an error event (malformed, unknown, or over a \
         limit such as turn.max_turns).",
        "counter",
        c.messages_refused as f64,
    );
    out.family(
        "turngate_uploads_total",
        "Image uploads by outcome: accepted, or the error code that refused them.",
        "counter",
    );
    out.sample(
        "turngate_uploads_total",
        &[("outcome", "accepted")],
        c.images_accepted as f64,
    );
    for (code, n) in &c.images_rejected {
        out.sample("turngate_uploads_total", &[("outcome", code)], *n as f64);
    }
    out.family(
        "turngate_upload_bytes_total",
        "Bytes of image uploads: accepted, or freed when refused, timed out or abandoned.",
        "counter",
    );
    for (outcome, n) in [
        ("accepted", c.image_bytes_accepted),
        ("freed", c.upload_bytes_freed),
    ] {
        out.sample(
            "turngate_upload_bytes_total",
            &[("outcome", outcome)],
            n as f64,
        );
    }
    out.single(
        "turngate_image_bytes_held",
        "Bytes of images held by uploads and by turns not yet processed (bounded by \
         uploads.max_held_bytes; beyond, uploads are refused `overloaded`).",
        "gauge",
        app.session.image_budget.held_bytes() as f64,
    );
    app.turns.metrics.write(&mut out);
    out.single(
        "turngate_turns_processing",
        "Turns whose processing has started and not completed (waiting for or in a backend).",
        "gauge",
        app.turns.tasks.len() as f64,
    );
    out.family(
        "turngate_backend_queued",
        "Calls waiting for a call slot of the backend (bounded by its max_queued).",
        "gauge",
    );
    for backend in app.turns.backends.each() {
        out.sample(
            "turngate_backend_queued",
            &[("backend", backend.name)],
            backend.queued() as f64,
        );
    }
    out.family(
        "turngate_backend_shed_total",
        "Calls shed with `overloaded` by reason: the backend's queue was full, the \
         session's was, or no slot came free within queue_timeout_ms.",
        "counter",
    );
    for backend in app.turns.backends.each() {
        for reason in Shed::ALL {
            out.sample(
                "turngate_backend_shed_total",
                &[("backend", backend.name), ("reason", reason.as_str())],
                backend.shed(reason) as f64,
            );
        }
    }
    let spans = &app.turns.telemetry.spans;
    out.single(
        "turngate_spans_exported_total",
        "Spans the OTLP collector accepted.",
        "counter",
        spans.exported.load(Relaxed) as f64,
    );
    out.family(
        "turngate_spans_dropped_total",
        "Spans not exported: the export queue was full, the export failed, or shutdown \
         did not wait for them.",
        "counter",
    );
    for (reason, n) in [
        ("queue_full", spans.dropped_queue_full.load(Relaxed)),
        ("export_failed", spans.dropped_export_failed.load(Relaxed)),
        ("shutdown", spans.dropped_shutdown.load(Relaxed)),
    ] {
        out.sample(
            "turngate_spans_dropped_total",
            &[("reason", reason)],
            n as f64,
        );
    }
    if let Some(recorder) = &app.turns.recorder {
        let stats = &recorder.stats;
        for (name, help, value) in [
            (
                "turngate_record_store_failures_total",
                "Turn-record store operations that failed past their retries (what they \
                 wrote is listed as missing in its manifest).",
                stats.store_failures.load(Relaxed),
            ),
            (
                "turngate_record_incomplete_total",
                "Turn records finished incomplete (see their manifest's missing).",
                stats.incomplete.load(Relaxed),
            ),
            (
                "turngate_record_index_conflicts_total",
                "Turn ids a second session presented: its record is kept under its own \
                 session, the index keeps the first.",
                stats.index_conflicts.load(Relaxed),
            ),
        ] {
            out.single(name, help, "counter", value as f64);
        }
        out.single(
            "turngate_record_spool_bytes",
            "Bytes of turn records held in memory while the store refuses them (bounded by \
             record.spool_bytes).",
            "gauge",
            recorder.spool.bytes() as f64,
        );
        out.single(
            "turngate_record_spooled_written_total",
            "Store operations that waited in the spool and then succeeded.",
            "counter",
            recorder.spool.written.load(Relaxed) as f64,
        );
        out.single(
            "turngate_record_store_failing_seconds",
            "How long the turn-record store has been failing (0 while it works).",
            "gauge",
            stats.failing_for().map_or(0.0, |d| d.as_secs_f64()),
        );
    }
    out.finish()
}
