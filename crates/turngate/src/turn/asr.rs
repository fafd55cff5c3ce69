//! The ASR stage: the turn's audio (16 kHz PCM, concealment included) to text.

use tracing::Instrument;
use turngate_backends::asr;
use turngate_core::{ServerEvent, StageStatus};
use turngate_telemetry::names::{attr, span};

use super::call::Call;
use super::stage::{Job, Ran};

/// Transcribes `pcm`; skipped without a backend or without audio. The transcript goes
/// to the client as `transcript`.
pub(super) async fn run(job: &Job<'_>, pcm: &[i16]) -> Ran<Option<String>> {
    let Some(backend) = job.backends().asr.as_ref().filter(|_| !pcm.is_empty()) else {
        return Ran::skipped(None);
    };
    let call = Call::start(job.metrics(), job.trace, &job.ctx, span::ASR, backend);
    call.attr(
        attr::REQUEST_BYTES,
        (turngate_backends::wav::HEADER_BYTES + pcm.len() * 2) as i64,
    );
    let result = asr::transcribe(backend, &call.ctx, pcm)
        .instrument(call.span.clone())
        .await;
    match result {
        Ok(text) => {
            call.attr(attr::RESPONSE_BYTES, text.len() as i64);
            call.content(attr::TRANSCRIPT, || text.clone());
            let took = call.finish(Ok(()));
            let event = ServerEvent::Transcript {
                turn_id: job.ctx.turn_id,
                text: text.clone(),
            };
            job.shared.send_result(event).await;
            Ran::new(StageStatus::Ok, Some(text), Some(took))
        }
        Err(e) => {
            let took = call.finish(Err(&e));
            job.fail("ASR", &e).await;
            Ran::new(StageStatus::Failed, None, Some(took))
        }
    }
}
