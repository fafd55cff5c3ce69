//! The ASR stage: the turn's audio (16 kHz PCM, concealment included) to text.

use tracing::Instrument;
use turngate_backends::asr;
use turngate_core::{ServerEvent, StageStatus};
use turngate_telemetry::names::{attr, span};

use super::call::Call;
use super::stage::{Job, Ran};

/// Transcribes `pcm`; skipped without a backend or without audio. The WAV sent goes
/// into the turn's record as it is sent; the transcript goes to the client as
/// `transcript`.
pub(super) async fn run(job: &Job<'_>, pcm: &[i16]) -> Ran<Option<String>> {
    let Some(backend) = job.backends().asr.as_ref().filter(|_| !pcm.is_empty()) else {
        return Ran::skipped(None);
    };
    let call = Call::start(job, span::ASR, "asr".into(), backend, false);
    let wav = bytes::Bytes::from(turngate_backends::wav::encode(pcm));
    call.attr(attr::REQUEST_BYTES, wav.len() as i64);
    if let Some(record) = job.record {
        record.asr_audio(wav.clone());
    }
    let result = asr::transcribe(backend, &call.ctx, wav, &call.tape)
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
