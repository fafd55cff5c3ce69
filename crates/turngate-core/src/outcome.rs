//! How a turn's processing ended: each stage's outcome and the turn's one terminal
//! status, as `turn.completed` reports them.

use serde::{Deserialize, Serialize};

/// How a turn's processing ended: each turn gets exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompletionStatus {
    /// Every stage that ran succeeded.
    Ok,
    /// ASR or vision failed, but the LLM answered.
    Partial,
    /// The LLM failed, or ASR or vision failed and nothing was answered.
    Failed,
    /// The user spoke over the turn before it completed (barge-in); the stages it had
    /// not finished were cancelled.
    Interrupted,
}

/// The outcome of one processing stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// It succeeded.
    Ok,
    /// It failed (an `error` event said why).
    Failed,
    /// It was not run: not configured, or nothing to give it.
    Skipped,
    /// A barge-in cancelled it.
    Cancelled,
}

/// Each stage's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stages {
    /// Speech to text.
    pub asr: StageStatus,
    /// Image descriptions.
    pub vision: StageStatus,
    /// The answer.
    pub llm: StageStatus,
}

impl Stages {
    /// The status of a turn that was not interrupted: `ok` when no stage failed,
    /// `partial` when the LLM answered despite a failed ASR or vision stage, `failed`
    /// otherwise. A stage `skipped` (not configured, nothing to give it, or a turn
    /// answered by its successor) is no failure.
    pub fn status(&self) -> CompletionStatus {
        let input_failed = self.asr == StageStatus::Failed || self.vision == StageStatus::Failed;
        match self.llm {
            StageStatus::Ok if input_failed => CompletionStatus::Partial,
            StageStatus::Skipped if input_failed => CompletionStatus::Failed,
            StageStatus::Ok | StageStatus::Skipped => CompletionStatus::Ok,
            StageStatus::Failed | StageStatus::Cancelled => CompletionStatus::Failed,
        }
    }
}
