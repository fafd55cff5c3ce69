//! Admission to one backend's call slots: at most `max_concurrent` calls at once, each
//! session at most its share of them, a bounded queue of calls waiting, and a deadline
//! on the wait. A call that cannot get in is *shed* ([`Shed`]): it fails at once with
//! `overloaded`, is never retried and never counts against the backend's health — the
//! backend did nothing wrong, the gateway is full.
//!
//! Fairness comes from two FIFO semaphores (tokio's are fair): a call first takes one of
//! its session's `per_session` permits, then one of the backend's. A session with fifty
//! turns waiting therefore has at most `per_session` calls in the backend's queue at any
//! time, and every other session's calls queue between them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use turngate_core::SessionId;

/// Why a call was shed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shed {
    /// `max_queued` calls were already waiting, gateway-wide.
    QueueFull,
    /// The session had `max_queued_per_session` calls waiting.
    SessionQueueFull,
    /// No slot came free within `queue_timeout_ms`.
    QueueTimeout,
}

impl Shed {
    /// Every reason, for metrics.
    pub const ALL: [Shed; 3] = [Self::QueueFull, Self::SessionQueueFull, Self::QueueTimeout];

    /// `queue_full`, `session_queue_full` or `queue_timeout`: the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::SessionQueueFull => "session_queue_full",
            Self::QueueTimeout => "queue_timeout",
        }
    }
}

/// The bounds of one backend's admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotLimits {
    /// Calls at once.
    pub max_concurrent: usize,
    /// Calls at once of one session.
    pub per_session: usize,
    /// Calls waiting for a slot, gateway-wide.
    pub max_queued: usize,
    /// Calls of one session waiting for a slot.
    pub max_queued_per_session: usize,
    /// Longest wait for a slot.
    pub queue_timeout: Duration,
}

/// One backend's slots. See the module docs.
pub struct Slots {
    limits: SlotLimits,
    backend: Arc<Semaphore>,
    sessions: Mutex<Sessions>,
    queued: AtomicUsize,
    shed: [AtomicU64; 3],
}

/// Sessions' shares; idle ones are dropped whenever the map has doubled since the last
/// pruning, so it holds about as many sessions as have calls in flight.
#[derive(Default)]
struct Sessions {
    shares: HashMap<SessionId, Arc<SessionSlots>>,
    prune_at: usize,
}

/// Fewest sessions held before pruning.
const PRUNE_MIN: usize = 64;

struct SessionSlots {
    permits: Arc<Semaphore>,
    queued: AtomicUsize,
}

/// A slot, held while the call runs (and its answer is read).
pub struct Slot {
    _backend: OwnedSemaphorePermit,
    _session: OwnedSemaphorePermit,
}

impl Slots {
    /// Slots within `limits` (zeros count as one).
    pub fn new(limits: SlotLimits) -> Self {
        Self {
            backend: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
            limits,
            sessions: Mutex::default(),
            queued: AtomicUsize::new(0),
            shed: Default::default(),
        }
    }

    /// Calls waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Calls shed so far for `reason`.
    pub fn shed(&self, reason: Shed) -> u64 {
        self.shed[reason as usize].load(Ordering::Relaxed)
    }

    /// A slot for a call of `session`, or why the call is shed.
    pub async fn acquire(&self, session: SessionId) -> Result<Slot, Shed> {
        let mine = self.session(session);
        let result = self.wait(&mine).await;
        if let Err(reason) = result {
            self.shed[reason as usize].fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn wait(&self, mine: &SessionSlots) -> Result<Slot, Shed> {
        // Free slots are taken without queueing.
        if let Ok(session) = Arc::clone(&mine.permits).try_acquire_owned()
            && let Ok(backend) = Arc::clone(&self.backend).try_acquire_owned()
        {
            return Ok(Slot {
                _backend: backend,
                _session: session,
            });
        }
        let _queued = Queued::enter(&self.queued, self.limits.max_queued, Shed::QueueFull)?;
        let _mine = Queued::enter(
            &mine.queued,
            self.limits.max_queued_per_session,
            Shed::SessionQueueFull,
        )?;
        let take = async {
            let session = Arc::clone(&mine.permits).acquire_owned().await;
            let backend = Arc::clone(&self.backend).acquire_owned().await;
            match (session, backend) {
                (Ok(session), Ok(backend)) => Some(Slot {
                    _backend: backend,
                    _session: session,
                }),
                _ => None,
            }
        };
        match tokio::time::timeout(self.limits.queue_timeout, take).await {
            Ok(Some(slot)) => Ok(slot),
            // The semaphores are never closed.
            Ok(None) | Err(_) => Err(Shed::QueueTimeout),
        }
    }

    fn session(&self, session: SessionId) -> Arc<SessionSlots> {
        let per_session = self.limits.per_session.max(1);
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.shares.len() >= sessions.prune_at {
            // Idle: nobody holds or waits for one of its permits.
            sessions.shares.retain(|_, s| {
                Arc::strong_count(s) > 1 || s.permits.available_permits() < per_session
            });
            sessions.prune_at = (2 * sessions.shares.len()).max(PRUNE_MIN);
        }
        Arc::clone(sessions.shares.entry(session).or_insert_with(|| {
            Arc::new(SessionSlots {
                permits: Arc::new(Semaphore::new(per_session)),
                queued: AtomicUsize::new(0),
            })
        }))
    }
}

/// A place in a bounded queue, given back when dropped.
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn enter(count: &'a AtomicUsize, max: usize, full: Shed) -> Result<Self, Shed> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map(|_| Self(count))
            .map_err(|_| full)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SlotLimits {
        SlotLimits {
            max_concurrent: 2,
            per_session: 1,
            max_queued: 3,
            max_queued_per_session: 2,
            queue_timeout: Duration::from_secs(30),
        }
    }

    fn id(n: u8) -> SessionId {
        let mut bytes = [0u8; 16];
        bytes[15] = n;
        SessionId::from_bytes(bytes).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_gets_its_share_and_queues_behind_others() {
        let slots = Arc::new(Slots::new(limits()));
        let first = slots.acquire(id(1)).await.unwrap();
        // Session 1's second call waits for its own share even with a slot free…
        let waiting = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.acquire(id(1)).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        assert_eq!(slots.queued(), 1);
        // …so session 2 gets the free slot at once.
        let second = slots.acquire(id(2)).await.unwrap();
        drop(first);
        assert_eq!(waiting.await.unwrap(), Ok(()));
        drop(second);
        assert_eq!(slots.queued(), 0);
    }

    #[tokio::test]
    async fn idle_sessions_are_forgotten() {
        let slots = Slots::new(limits());
        let held = slots.acquire(id(250)).await.unwrap();
        for n in 1..=200 {
            drop(slots.acquire(id(n)).await.unwrap());
        }
        let sessions = slots.sessions.lock().unwrap();
        assert!(
            sessions.shares.len() <= PRUNE_MIN,
            "{}",
            sessions.shares.len()
        );
        assert!(
            sessions.shares.contains_key(&id(250)),
            "a busy session is kept"
        );
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn full_queues_and_late_slots_shed() {
        let slots = Arc::new(Slots::new(limits()));
        let _a = slots.acquire(id(1)).await.unwrap();
        let _b = slots.acquire(id(2)).await.unwrap();
        let spawn = |n| {
            let slots = Arc::clone(&slots);
            tokio::spawn(async move { slots.acquire(id(n)).await.map(|_| ()) })
        };
        let queued: Vec<_> = [1, 1, 2].into_iter().map(spawn).collect();
        tokio::task::yield_now().await;
        assert_eq!(slots.queued(), 3);
        // Session 1 has two waiting: its third is shed before the gateway's queue is.
        assert_eq!(slots.acquire(id(3)).await.map(|_| ()), Err(Shed::QueueFull));
        tokio::time::advance(Duration::from_secs(31)).await;
        for waiting in queued {
            assert_eq!(waiting.await.unwrap(), Err(Shed::QueueTimeout));
        }
        assert_eq!(slots.shed(Shed::QueueFull), 1);
        assert_eq!(slots.shed(Shed::QueueTimeout), 3);
        assert_eq!(slots.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn one_session_cannot_fill_the_queue() {
        let mut limits = limits();
        limits.max_queued = 10;
        let slots = Arc::new(Slots::new(limits));
        let _a = slots.acquire(id(1)).await.unwrap();
        let spawn = || {
            let slots = Arc::clone(&slots);
            tokio::spawn(async move { slots.acquire(id(1)).await.map(|_| ()) })
        };
        let _waiting = [spawn(), spawn()];
        tokio::task::yield_now().await;
        assert_eq!(
            slots.acquire(id(1)).await.map(|_| ()),
            Err(Shed::SessionQueueFull)
        );
        assert!(slots.acquire(id(2)).await.is_ok());
    }
}
