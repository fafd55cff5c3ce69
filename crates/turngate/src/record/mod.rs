//! The turn record as this node writes it: for every turn, the received audio, the
//! audio ASR was given, the images as uploaded and the manifest, into the configured
//! store (`record.store`), under the layout of [`turngate_store::layout`].
//!
//! [`Recorder`] is the node's: the store, the node id, what to keep, and the counters.
//! Each turn gets a [`TurnRecord`] from its owner: a handle to a task of its own that
//! writes the turn's objects as they come (audio every `record.segment_ms`), so the
//! media path never waits on the store. The task writes an `open/{node}/{turn}/{session}` marker
//! first and removes it after the manifest, which it writes last; markers a stopped
//! node left are finished by [`recover`].

mod recover;
mod spool;
mod turn;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use object_store::path::Path;
use turngate_store::manifest::{BackendShape, TurnConfig};
use turngate_store::{Created, Store, layout};

use crate::config::{Config, RecordConfig};
pub use recover::spawn_upkeep;
pub use turn::{Outcome, TurnRecord, User};

/// The node's recorder. See the module docs.
pub struct Recorder {
    store: Store,
    node_id: String,
    settings: RecordConfig,
    /// The configuration that shapes every turn, as manifests show it.
    shape: TurnConfig,
    /// Counted for `/metrics`.
    pub stats: RecordStats,
    /// What the store did not take yet.
    pub spool: spool::Spool,
    /// The turns this process is recording now, as `{turn}/{session}`: its own markers
    /// of any other turn are left over from a stop, and finished.
    live: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Where an object went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stored {
    Written,
    /// Into the spool: it is written once the store takes it.
    Spooled,
    /// Neither: the store refused it and the spool is full.
    Dropped,
}

/// What recording counts, for `/metrics` and `/readyz`.
#[derive(Default)]
pub struct RecordStats {
    /// Store operations that failed past their retries.
    pub store_failures: AtomicU64,
    /// Records finished `incomplete`.
    pub incomplete: AtomicU64,
    /// Turn ids a second session presented (the index kept the first).
    pub index_conflicts: AtomicU64,
    /// Unix milliseconds since the store has been failing; 0 while it works.
    failing_since_ms: AtomicI64,
}

impl RecordStats {
    /// How long the store has been failing, if it is.
    pub fn failing_for(&self) -> Option<Duration> {
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        (since > 0).then(|| Duration::from_millis((unix_ms() - since).max(0) as u64))
    }

    fn store_ok(&self) {
        self.failing_since_ms.store(0, Ordering::Relaxed);
    }

    fn store_failed(&self) {
        self.store_failures.fetch_add(1, Ordering::Relaxed);
        self.store_failing();
    }

    fn store_failing(&self) {
        let _ = self.failing_since_ms.compare_exchange(
            0,
            unix_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

impl Recorder {
    /// The recorder for `config`, if recording is on.
    ///
    /// Errors: a store that cannot be opened (see [`Store::open`]).
    pub fn new(config: &Config) -> anyhow::Result<Option<Arc<Self>>> {
        let settings = config.record.clone();
        if !settings.enabled {
            return Ok(None);
        }
        let store = Store::open(&settings.store)?;
        let shape = |b: &turngate_backends::BackendConfig| {
            b.is_configured().then(|| BackendShape {
                provider: b.provider.clone(),
                model: b.model.clone(),
                base_url: without_credentials(&b.url),
            })
        };
        let shape = TurnConfig {
            asr: shape(&config.asr),
            vision: shape(&config.vision.backend),
            llm: shape(&config.llm.backend),
            vision_instruction: config
                .vision
                .backend
                .is_configured()
                .then(|| config.vision.instruction.clone()),
            system_prompt: config
                .llm
                .backend
                .is_configured()
                .then(|| config.llm.system_prompt.clone()),
            history_turns: u32::try_from(config.llm.history_turns).unwrap_or(u32::MAX),
            send_images: config.llm.send_images,
        };
        Ok(Some(Arc::new(Self {
            node_id: settings.node_id(),
            store,
            spool: spool::Spool::new(
                settings.spool_bytes,
                settings.spool_dir(),
                settings.spool_disk_bytes,
            )
            .map_err(|e| anyhow::anyhow!("record.spool_dir: {e}"))?,
            settings,
            shape,
            stats: RecordStats::default(),
            live: Default::default(),
        })))
    }

    /// Notes that this process records turn `key` (`{turn}/{session}`), or no longer.
    fn set_live(&self, key: String, live: bool) {
        let mut set = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }

    /// Whether this process records turn `key` (`{turn}/{session}`) now.
    fn is_live(&self, key: &str) -> bool {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(key)
    }

    /// The store records go to (and are read from).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where records go, as configured.
    pub fn location(&self) -> &str {
        self.store.location()
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Writes `bytes` at `key`, or spools it: at once while the spool holds anything,
    /// else once the retries are spent. `always` (manifests, markers) may use twice
    /// the spool's bounds.
    async fn store_or_spool(&self, key: &Path, bytes: Bytes, always: bool) -> Stored {
        if self.spool.is_empty() && self.put(key, bytes.clone()).await.is_ok() {
            return Stored::Written;
        }
        match self.spool.push(key.clone(), bytes, always) {
            spool::Spooled::Queued => Stored::Spooled,
            spool::Spooled::Full => Stored::Dropped,
        }
    }

    /// Removes `key` now, or after what the spool holds.
    async fn delete_after_spool(&self, key: &Path) {
        if self.spool.is_empty() && self.retrying(key, || self.store.delete(key)).await.is_ok() {
            return;
        }
        if self.spool.delete(key.clone()) == spool::Spooled::Full {
            tracing::warn!(key = %key, "Turn record: the spool is full; a marker stays (the record is finished again later).");
        }
    }

    /// Carries out what the spool holds, oldest first, for as long as the process
    /// runs: each operation until the store takes it, waiting 1 s after a failure,
    /// doubling to 5 s: one attempt every 5 s during an outage costs nothing,
    /// and the spool drains within 5 s of the store's return.
    ///
    /// After a failure, the lease is renewed first once the store answers again: a
    /// store down for longer than two leases would otherwise let another node take this
    /// node's open records for a dead node's, while the spool still holds their rest.
    pub async fn drain_spool(&self) {
        let mut wait = Duration::from_secs(1);
        let mut renew = false;
        loop {
            if renew && self.renew_lease().await.is_ok() {
                renew = false;
            }
            let Some(pending) = self.spool.front() else {
                self.spool.arrival().await;
                continue;
            };
            let done = match &pending {
                spool::Pending::Put(key, bytes) => self.store.put(key, bytes.clone()).await,
                spool::Pending::Delete(key) => self.store.delete(key).await,
                spool::Pending::Index(index) => self.try_index(index).await,
            };
            match done {
                Ok(()) => {
                    self.stats.store_ok();
                    self.spool.done();
                    wait = Duration::from_secs(1);
                }
                Err(e) => {
                    self.stats.store_failing();
                    renew = true;
                    tracing::debug!(error = %e, "Turn record: the store still refuses spooled operations.");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Writes a turn's create-only index `turns/{turn}` naming its session, now or
    /// after what the spool holds. The first session to present a turn id keeps the
    /// index; a later one is noted under `conflicts/{turn}/{session}` (its record is
    /// kept under its own session), logged and counted.
    async fn index(&self, index: spool::Index) {
        if self.spool.is_empty()
            && self
                .retrying(&layout::index(index.turn), || self.try_index(&index))
                .await
                .is_ok()
        {
            return;
        }
        let turn = index.turn;
        if self.spool.index(index) == spool::Spooled::Full {
            self.stats.store_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(turn = %turn, "Turn record: the spool is full; this turn has no index entry (its record is under its session).");
        }
    }

    async fn try_index(&self, index: &spool::Index) -> Result<(), turngate_store::Error> {
        let key = layout::index(index.turn);
        let session = index.session.to_string();
        let body = serde_json::json!({"session_id": session, "node_id": self.node_id});
        let created = self
            .store
            .create(&key, Bytes::from(body.to_string()))
            .await?;
        if created == Created::Exists {
            let existing = self.store.get(&key).await?;
            // An earlier attempt of ours may have made it (its answer lost).
            let ours = existing
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|v| v["session_id"] == session.as_str());
            if !ours {
                self.store
                    .put(&layout::conflict(index.turn, index.session), Bytes::new())
                    .await?;
                self.stats.index_conflicts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(turn = %index.turn, session = %session, "Turn record: another session recorded this turn id first; this record is kept under its own session.");
            }
        }
        Ok(())
    }

    /// Writes `bytes` at `key`, retrying with back-off (from 100 ms, doubling, at most
    /// 2 s apart) for up to `record.retry_ms`.
    async fn put(&self, key: &Path, bytes: Bytes) -> Result<(), turngate_store::Error> {
        self.retrying(key, || self.store.put(key, bytes.clone()))
            .await
    }

    async fn retrying<T, F, Fut>(&self, key: &Path, op: F) -> Result<T, turngate_store::Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, turngate_store::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.settings.retry();
        let mut wait = Duration::from_millis(100);
        loop {
            // An attempt that hangs (a store that takes the connection and answers
            // nothing) is cut at the deadline like one that fails.
            let attempt = tokio::time::timeout_at(deadline, op())
                .await
                .unwrap_or(Err(turngate_store::Error::Timeout(self.settings.retry_ms)));
            match attempt {
                Ok(value) => {
                    self.stats.store_ok();
                    return Ok(value);
                }
                Err(e) if tokio::time::Instant::now() + wait > deadline => {
                    self.stats.store_failed();
                    tracing::warn!(key = %key, error = %e, "Turn record: the store failed past its retries.");
                    return Err(e);
                }
                Err(e) => {
                    self.stats.store_failing();
                    tracing::debug!(key = %key, error = %e, "Turn record: retrying a store operation.");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// `url` without userinfo or query, which may hold credentials.
fn without_credentials(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or("");
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit('@').next().unwrap_or(authority);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_owned(),
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_lose_their_credentials() {
        assert_eq!(
            without_credentials("https://user:secret@llm.example/v1?key=k"),
            "https://llm.example/v1"
        );
        assert_eq!(
            without_credentials("http://127.0.0.1:8000/v1"),
            "http://127.0.0.1:8000/v1"
        );
    }
}
