//! The export queue: a span processor whose `on_end` never blocks. Ended spans go into
//! a bounded queue; a task sends them in batches through the OTLP exporter. When the
//! queue is full, or an export fails or times out, the spans are dropped — and
//! counted, which the SDK's own batch processor does not let anyone see; so are spans
//! still queued when shutdown stops waiting for the collector.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::QueueConfig;

/// What happened to ended spans.
#[derive(Debug, Default)]
pub struct SpanCounters {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Spans dropped because their export failed or timed out.
    pub dropped_export_failed: AtomicU64,
    /// Spans still queued when shutdown gave up waiting, or that ended after it.
    pub dropped_shutdown: AtomicU64,
    /// Spans queued and not yet exported or dropped.
    queued: AtomicU64,
}

/// Asks of the exporting task.
#[derive(Debug)]
enum Control {
    /// Export what is queued now.
    Flush,
    /// Export what is queued, shut the exporter down, stop; then answer.
    Finish(oneshot::Sender<()>),
}

/// The processor half, owned by the tracer provider.
#[derive(Debug)]
pub struct QueueProcessor {
    spans: mpsc::Sender<SpanData>,
    control: mpsc::UnboundedSender<Control>,
    counters: Arc<SpanCounters>,
}

/// The exporting task.
pub struct Worker {
    control: mpsc::UnboundedSender<Control>,
    task: JoinHandle<()>,
    counters: Arc<SpanCounters>,
}

impl Worker {
    /// Exports everything queued, then shuts the exporter down; waits at most
    /// `timeout`. Returns whether it finished in time.
    pub async fn finish(self, timeout: Duration) -> bool {
        let (done, finished) = oneshot::channel();
        let _ = self.control.send(Control::Finish(done));
        let flushed = tokio::time::timeout(timeout, finished).await.is_ok();
        self.task.abort();
        let lost = self.counters.queued.swap(0, Ordering::Relaxed);
        self.counters
            .dropped_shutdown
            .fetch_add(lost, Ordering::Relaxed);
        flushed
    }
}

/// Starts the exporting task (on the current tokio runtime) and returns the processor
/// that feeds it.
pub fn start<E: SpanExporter + 'static>(
    exporter: E,
    config: QueueConfig,
    counters: Arc<SpanCounters>,
) -> (QueueProcessor, Worker) {
    let (spans_tx, spans) = mpsc::channel(config.max_queue);
    let (control_tx, control) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(exporter, config, Arc::clone(&counters), spans, control));
    let processor = QueueProcessor {
        spans: spans_tx,
        control: control_tx.clone(),
        counters: Arc::clone(&counters),
    };
    let worker = Worker {
        control: control_tx,
        task,
        counters,
    };
    (processor, worker)
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        // Counted queued before it is, so that the task never subtracts it first.
        let counters = &self.counters;
        counters.queued.fetch_add(1, Ordering::Relaxed);
        let dropped = match self.spans.try_send(span) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => &counters.dropped_queue_full,
            Err(mpsc::error::TrySendError::Closed(_)) => &counters.dropped_shutdown,
        };
        counters.queued.fetch_sub(1, Ordering::Relaxed);
        dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Asks the task to export what is queued; does not wait (it may be called from
    /// the runtime's own threads). [`Worker::finish`] waits.
    fn force_flush(&self) -> OTelSdkResult {
        let _ = self.control.send(Control::Flush);
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.force_flush()
    }
}

async fn run<E: SpanExporter>(
    exporter: E,
    config: QueueConfig,
    counters: Arc<SpanCounters>,
    mut spans: mpsc::Receiver<SpanData>,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let mut batcher = Batcher {
        exporter: &exporter,
        batch: Vec::with_capacity(config.max_batch),
        config: &config,
        counters: &counters,
        failing: false,
    };
    let mut tick = tokio::time::interval(config.delay);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let finished = loop {
        tokio::select! {
            span = spans.recv() => match span {
                Some(span) => batcher.push(span).await,
                None => break None,
            },
            _ = tick.tick() => batcher.export().await,
            asked = control.recv() => {
                while let Ok(span) = spans.try_recv() {
                    batcher.push(span).await;
                }
                batcher.export().await;
                match asked {
                    Some(Control::Flush) => {}
                    Some(Control::Finish(done)) => break Some(done),
                    None => break None,
                }
            }
        }
    };
    batcher.export().await;
    let _ = exporter.shutdown_with_timeout(config.export_timeout);
    if let Some(done) = finished {
        let _ = done.send(());
    }
}

/// Spans waiting for their export request.
struct Batcher<'a, E> {
    exporter: &'a E,
    batch: Vec<SpanData>,
    config: &'a QueueConfig,
    counters: &'a SpanCounters,
    /// Whether the last export failed: failures are logged once per outage.
    failing: bool,
}

impl<E: SpanExporter> Batcher<'_, E> {
    async fn push(&mut self, span: SpanData) {
        self.batch.push(span);
        if self.batch.len() >= self.config.max_batch {
            self.export().await;
        }
    }

    async fn export(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let n = self.batch.len() as u64;
        let sent = std::mem::replace(&mut self.batch, Vec::with_capacity(self.config.max_batch));
        let result =
            tokio::time::timeout(self.config.export_timeout, self.exporter.export(sent)).await;
        self.counters.queued.fetch_sub(n, Ordering::Relaxed);
        let error = match result {
            Ok(Ok(())) => {
                self.counters.exported.fetch_add(n, Ordering::Relaxed);
                if std::mem::take(&mut self.failing) {
                    tracing::info!("Span export works again.");
                }
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.config.export_timeout),
        };
        self.counters
            .dropped_export_failed
            .fetch_add(n, Ordering::Relaxed);
        if std::mem::replace(&mut self.failing, true) {
            tracing::debug!(spans = n, %error, "Span export failed.");
        } else {
            tracing::warn!(spans = n, %error, "Span export failed; spans are dropped and counted until it works again.");
        }
    }
}
