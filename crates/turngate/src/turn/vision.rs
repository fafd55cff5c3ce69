//! The vision stage: each image of the turn described, concurrently.

use std::time::Instant;

use futures_util::future::join_all;
use tracing::Instrument;
use turngate_backends::vision;
use turngate_core::{Blob, ServerEvent, StageStatus, Tagged};
use turngate_telemetry::content;
use turngate_telemetry::names::{attr, span};

use super::call::Call;
use super::ms;
use super::prompt::Described;
use super::stage::{Job, Ran};

/// Describes every image; skipped without a backend or without images. Each
/// description goes to the client as `vision.result`; the stage failed if any image
/// could not be described.
pub(super) async fn run(job: &Job<'_>, blobs: &[Tagged<Blob>]) -> Ran<Vec<Described>> {
    let backends = job.backends();
    let Some(backend) = backends.vision.as_ref().filter(|_| !blobs.is_empty()) else {
        return Ran::skipped(Vec::new());
    };
    let started = Instant::now();
    let calls = blobs.iter().enumerate().map(|(i, blob)| async move {
        let call = Call::start(
            job,
            span::VISION,
            format!("vision-{}", i + 1),
            backend,
            true,
        );
        call.attr(attr::BLOB_ID, blob.value.blob_id.to_string());
        call.attr(attr::REQUEST_BYTES, blob.value.bytes.len() as i64);
        let messages = vision::messages(&blob.value, &backends.vision_instruction);
        call.input(&messages);
        let result = vision::describe(backend, &call.ctx, messages, &call.tape)
            .instrument(call.span.clone())
            .await;
        match &result {
            Ok(description) => {
                call.attr(attr::RESPONSE_BYTES, description.len() as i64);
                call.content(attr::GEN_AI_OUTPUT_MESSAGES, || {
                    content::output_messages(description, None)
                });
                call.finish(Ok(()));
            }
            Err(e) => {
                call.finish(Err(e));
            }
        }
        (blob, result)
    });
    let mut status = StageStatus::Ok;
    let mut described = Vec::new();
    for (blob, result) in join_all(calls).await {
        match result {
            Ok(description) => {
                let event = ServerEvent::VisionResult {
                    turn_id: job.ctx.turn_id,
                    blob_id: blob.value.blob_id,
                    description: description.clone(),
                };
                job.shared.send_result(event).await;
                described.push((blob.clone(), description));
            }
            Err(e) => {
                job.fail("Vision", &e).await;
                status = StageStatus::Failed;
            }
        }
    }
    Ran::new(status, described, Some(ms(started)))
}
