//! Every span name, event name and attribute key turngate emits, in one place. The
//! span model they make up is documented in `docs/telemetry.md`.

/// The `tracing` target of turngate's exported spans; the OpenTelemetry layer exports
/// spans of this target only.
pub const TARGET: &str = "turngate::span";

/// Span names.
pub mod span {
    /// A turn's root span: from its first frame (pre-roll included) to `turn.completed`.
    pub const TURN: &str = "turn";
    /// The turn's audio: from its first to its last frame.
    pub const AUDIO: &str = "audio.ingest";
    /// One image upload: from its first byte to its acceptance.
    pub const IMAGE: &str = "image.upload";
    /// The ASR request (client span).
    pub const ASR: &str = "asr";
    /// One vision request, per image (client span).
    pub const VISION: &str = "vision";
    /// The LLM request and its stream (client span).
    pub const LLM: &str = "llm";
    /// Relaying the answer to the client: from its first delta to `response.done`.
    pub const DELIVERY: &str = "response.delivery";
}

/// Span event names.
pub mod event {
    /// On the turn span, at the start of the voiced run whose onset opened a VAD turn.
    pub const SPEECH_START: &str = "vad.speech_start";
    /// On the turn span, at the last voiced frame of a turn ended by end of speech.
    pub const SPEECH_END: &str = "vad.speech_end";
    /// On the LLM span: its first token arrived.
    pub const FIRST_TOKEN: &str = "gen_ai.first_token";
}

/// Attribute keys.
pub mod attr {
    /// The turn id (on every span).
    pub const TURN_ID: &str = "turngate.turn.id";
    /// The session id (on every span).
    pub const SESSION_ID: &str = "turngate.session.id";
    /// The session id, as GenAI conventions group conversations (on every span).
    pub const CONVERSATION_ID: &str = "gen_ai.conversation.id";
    /// The session id, as Langfuse and Phoenix group sessions (on every span).
    pub const SESSION: &str = "session.id";

    /// What opened the turn: `client`, `vad` or `image`.
    pub const TURN_CAUSE: &str = "turngate.turn.cause";
    /// The turn's state when its span ended.
    pub const TURN_STATE: &str = "turngate.turn.state";
    /// Why its input ended.
    pub const TURN_REASON: &str = "turngate.turn.reason";
    /// Whether the user spoke over its processing.
    pub const TURN_INTERRUPTED: &str = "turngate.turn.interrupted";
    /// Its number within the session, from 1.
    pub const TURN_NUMBER: &str = "turngate.turn.number";
    /// Frames tagged with it.
    pub const TURN_FRAMES: &str = "turngate.turn.frames";
    /// Its input's duration, first frame to input end, in milliseconds.
    pub const TURN_DURATION_MS: &str = "turngate.turn.duration_ms";
    /// Images tagged with it.
    pub const TURN_IMAGES: &str = "turngate.turn.images";
    /// How its processing ended: `ok`, `partial` or `failed`.
    pub const TURN_STATUS: &str = "turngate.turn.status";

    /// Frames of the turn.
    pub const AUDIO_FRAMES: &str = "turngate.audio.frames";
    /// 16 kHz samples of the turn's audio.
    pub const AUDIO_SAMPLES: &str = "turngate.audio.samples";
    /// Of those, samples concealed (lost packets).
    pub const AUDIO_CONCEALED_SAMPLES: &str = "turngate.audio.concealed_samples";
    /// Frames the session dropped (back-pressure) while the turn was open.
    pub const AUDIO_DROPPED: &str = "turngate.audio.frames_dropped";
    /// Frames the session could not decode while the turn was open.
    pub const AUDIO_UNDECODABLE: &str = "turngate.audio.frames_undecodable";
    /// Arrival of the first frame, RFC 3339.
    pub const AUDIO_FIRST_FRAME: &str = "turngate.audio.first_frame_time";
    /// Arrival of the last frame, RFC 3339.
    pub const AUDIO_LAST_FRAME: &str = "turngate.audio.last_frame_time";

    /// The blob id (SHA-256 of the bytes).
    pub const BLOB_ID: &str = "turngate.blob.id";
    /// The client's upload id.
    pub const UPLOAD_ID: &str = "turngate.upload.id";
    /// Size in bytes.
    pub const IMAGE_BYTES: &str = "turngate.image.bytes";
    /// Sniffed content type.
    pub const IMAGE_MIME: &str = "turngate.image.mime";
    /// Width in pixels.
    pub const IMAGE_WIDTH: &str = "turngate.image.width";
    /// Height in pixels.
    pub const IMAGE_HEIGHT: &str = "turngate.image.height";

    /// How the call ended: `ok`, `failed` or `cancelled` (barge-in).
    pub const OUTCOME: &str = "turngate.backend.outcome";
    /// Bytes of the request's payload (audio WAV, image, or prompt JSON).
    pub const REQUEST_BYTES: &str = "turngate.backend.request_bytes";
    /// Bytes of the text the backend returned.
    pub const RESPONSE_BYTES: &str = "turngate.backend.response_bytes";
    /// Milliseconds from the LLM request to its first token.
    pub const TIME_TO_FIRST_TOKEN_MS: &str = "turngate.llm.time_to_first_token_ms";
    /// Opt-in content: the transcript.
    pub const TRANSCRIPT: &str = "turngate.asr.transcript";
    /// Deltas relayed to the client.
    pub const DELIVERY_DELTAS: &str = "turngate.delivery.deltas";
    /// Bytes of answer relayed.
    pub const DELIVERY_BYTES: &str = "turngate.delivery.bytes";

    /// OpenTelemetry conventions.
    pub const ERROR_TYPE: &str = "error.type";
    /// The server the request went to.
    pub const SERVER_ADDRESS: &str = "server.address";
    /// Its port.
    pub const SERVER_PORT: &str = "server.port";
    /// GenAI: `chat`.
    pub const GEN_AI_OPERATION: &str = "gen_ai.operation.name";
    /// GenAI: the API spoken (`openai` for OpenAI-compatible servers unless configured).
    pub const GEN_AI_PROVIDER: &str = "gen_ai.provider.name";
    /// GenAI: the model asked for.
    pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
    /// GenAI: the model that answered.
    pub const GEN_AI_RESPONSE_MODEL: &str = "gen_ai.response.model";
    /// GenAI: prompt tokens.
    pub const GEN_AI_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
    /// GenAI: answer tokens.
    pub const GEN_AI_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
    /// GenAI: why the model stopped.
    pub const GEN_AI_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
    /// GenAI, opt-in content: the system prompt, as JSON parts.
    pub const GEN_AI_SYSTEM_INSTRUCTIONS: &str = "gen_ai.system_instructions";
    /// GenAI, opt-in content: the messages sent, as JSON.
    pub const GEN_AI_INPUT_MESSAGES: &str = "gen_ai.input.messages";
    /// GenAI, opt-in content: the answer, as JSON messages.
    pub const GEN_AI_OUTPUT_MESSAGES: &str = "gen_ai.output.messages";
}
