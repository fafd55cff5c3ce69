//! Objects the store did not take: kept in memory, at most `record.spool_bytes`, and
//! written again in the order they came ([`super::Recorder::drain_spool`], with
//! back-off from 1 s doubling to 30 s) until the store takes them.
//!
//! While anything waits here, new objects queue behind it without trying the store
//! first: a turn's manifest so never lands before the artifacts it lists, and turns
//! do not each wait out the retries of a store that is down. Beyond the bound an
//! object is dropped (its turn lists it `missing`, `store_failed`); a manifest is
//! always taken, so a record that lost parts still says so once the store is back.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use object_store::path::Path;
use tokio::sync::Notify;

/// A store operation waiting its turn.
#[derive(Clone, Debug)]
pub enum Pending {
    Put(Path, Bytes),
    /// A marker to remove once the manifest before it is written.
    Delete(Path),
    /// A turn's create-only index (see [`super::Recorder::index`]).
    Index(Index),
}

/// A turn's index entry: `turns/{turn}` naming its session.
#[derive(Clone, Debug)]
pub struct Index {
    pub turn: turngate_core::TurnId,
    pub session: turngate_core::SessionId,
}

impl Pending {
    fn size(&self) -> u64 {
        match self {
            Self::Put(_, bytes) => bytes.len() as u64,
            Self::Delete(_) | Self::Index(_) => 0,
        }
    }
}

/// The spool. See the module docs.
pub struct Spool {
    queue: Mutex<VecDeque<Pending>>,
    /// Bytes waiting.
    bytes: AtomicU64,
    max_bytes: u64,
    /// Objects that waited here and were then written.
    pub written: AtomicU64,
    arrived: Notify,
}

/// Whether an object went into the spool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spooled {
    Queued,
    /// The spool is full: the object is dropped.
    Full,
}

impl Spool {
    pub fn new(max_bytes: u64) -> Self {
        Self {
            queue: Mutex::default(),
            bytes: AtomicU64::new(0),
            max_bytes,
            written: AtomicU64::new(0),
            arrived: Notify::new(),
        }
    }

    /// Whether anything waits.
    pub fn is_empty(&self) -> bool {
        self.bytes() == 0 && self.queue().is_empty()
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Queues `bytes` for `key`, within the bound unless `always` (manifests).
    pub fn push(&self, key: Path, bytes: Bytes, always: bool) -> Spooled {
        let size = bytes.len() as u64;
        if !always && self.bytes() + size > self.max_bytes {
            return Spooled::Full;
        }
        self.enqueue(Pending::Put(key, bytes));
        Spooled::Queued
    }

    /// Queues the removal of `key` behind what waits.
    pub fn delete(&self, key: Path) {
        self.enqueue(Pending::Delete(key));
    }

    /// Queues a turn's index behind what waits.
    pub fn index(&self, index: Index) {
        self.enqueue(Pending::Index(index));
    }

    fn enqueue(&self, pending: Pending) {
        let mut queue = self.queue();
        self.bytes.fetch_add(pending.size(), Ordering::Relaxed);
        queue.push_back(pending);
        drop(queue);
        self.arrived.notify_one();
    }

    /// The oldest operation waiting, if any.
    pub fn front(&self) -> Option<Pending> {
        self.queue().front().cloned()
    }

    /// The oldest operation was carried out: it leaves the spool.
    pub fn done(&self) {
        if let Some(pending) = self.queue().pop_front() {
            self.bytes.fetch_sub(pending.size(), Ordering::Relaxed);
            self.written.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until something is queued.
    pub async fn arrival(&self) {
        self.arrived.notified().await;
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_holds_except_for_manifests() {
        let spool = Spool::new(10);
        let put = |n: usize, always| spool.push(Path::from("k"), Bytes::from(vec![0; n]), always);
        assert_eq!(put(6, false), Spooled::Queued);
        assert_eq!(put(6, false), Spooled::Full);
        assert_eq!(put(4, false), Spooled::Queued);
        assert_eq!(put(100, true), Spooled::Queued);
        assert_eq!(spool.bytes(), 110);
        assert!(!spool.is_empty());
    }
}
