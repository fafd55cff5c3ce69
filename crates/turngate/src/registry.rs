//! The sessions of this node: live ones by WHIP resource id and by session id, and
//! recently ended ones (kept in memory, bounded by count and age).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use turngate_core::SessionId;
use turngate_media::session::{Counts, SessionCounters, SessionShared};

/// A session as the API sees it.
pub struct Entry {
    /// The media side's shared state: counters, turns and their results.
    pub shared: Arc<SessionShared>,
}

impl Entry {
    /// A new session's entry.
    pub fn new(shared: Arc<SessionShared>) -> Self {
        Self { shared }
    }
}

#[derive(Default)]
struct Maps {
    by_resource: HashMap<String, SessionId>,
    by_id: HashMap<SessionId, Arc<Entry>>,
    ended: VecDeque<(Instant, SessionId)>,
    /// What the sessions no longer held counted.
    forgotten: Totals,
}

/// Counters summed over sessions, for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    /// Sessions ever registered.
    pub sessions: u64,
    /// Sessions live now.
    pub live: u64,
    /// Their counters, summed.
    pub counts: Counts,
}

impl Totals {
    fn add(&mut self, c: &SessionCounters) {
        self.sessions += 1;
        self.counts += &c.read();
    }
}

/// Sessions whose peer has not connected yet: gateway-wide and by client address.
#[derive(Default)]
struct Pending {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// A place among the pending sessions, given back on drop (when the peer connects, or
/// the session ends without).
pub struct PendingSlot {
    pending: Arc<Mutex<Pending>>,
    ip: IpAddr,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.total -= 1;
        if let Some(n) = pending.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                pending.by_ip.remove(&self.ip);
            }
        }
    }
}

/// All sessions of this node.
pub struct Registry {
    maps: Mutex<Maps>,
    slots: AtomicUsize,
    pending: Arc<Mutex<Pending>>,
    max_pending: usize,
    max_pending_per_ip: usize,
    max: usize,
    retain: usize,
    retain_for: Duration,
}

/// A reserved place under `max_sessions`, released on drop unless it became a session.
pub struct Slot<'a> {
    registry: &'a Registry,
    used: bool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.used {
            self.registry.slots.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Registry {
    /// A registry allowing `max` live sessions and keeping `retain` ended ones for
    /// `retain_for`.
    pub fn new(
        max: usize,
        (max_pending, max_pending_per_ip): (usize, usize),
        retain: usize,
        retain_for: Duration,
    ) -> Self {
        Self {
            maps: Mutex::default(),
            slots: AtomicUsize::new(0),
            pending: Arc::default(),
            max_pending,
            max_pending_per_ip,
            max,
            retain,
            retain_for,
        }
    }

    /// Reserves a place for a new session, if under the limit.
    pub fn reserve(&self) -> Option<Slot<'_>> {
        self.slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot {
                registry: self,
                used: false,
            })
    }

    /// Reserves a place for a session of `ip` whose peer has not connected yet; `Err`
    /// says which limit is full.
    pub fn reserve_pending(&self, ip: IpAddr) -> Result<PendingSlot, String> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.total >= self.max_pending {
            return Err(format!(
                "{} sessions are waiting for their peer to connect; retry later",
                self.max_pending
            ));
        }
        let mine = pending.by_ip.entry(ip).or_default();
        if *mine >= self.max_pending_per_ip {
            return Err(format!(
                "{} sessions of this address are waiting for their peer to connect; retry later",
                self.max_pending_per_ip
            ));
        }
        *mine += 1;
        pending.total += 1;
        Ok(PendingSlot {
            pending: Arc::clone(&self.pending),
            ip,
        })
    }

    /// Sessions whose peer has not connected yet.
    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    /// Registers a live session under its resource id.
    pub fn insert(&self, mut slot: Slot<'_>, resource: String, entry: Arc<Entry>) {
        slot.used = true;
        let mut maps = self.lock();
        maps.by_resource.insert(resource, entry.shared.id);
        maps.by_id.insert(entry.shared.id, entry);
    }

    /// The live session behind a resource id.
    pub fn by_resource(&self, resource: &str) -> Option<Arc<Entry>> {
        let maps = self.lock();
        maps.by_resource
            .get(resource)
            .and_then(|id| maps.by_id.get(id))
            .cloned()
    }

    /// A live or retained session.
    pub fn get(&self, id: SessionId) -> Option<Arc<Entry>> {
        let mut maps = self.lock();
        self.prune(&mut maps);
        maps.by_id.get(&id).cloned()
    }

    /// Live and retained sessions, oldest first.
    pub fn all(&self) -> Vec<Arc<Entry>> {
        let mut maps = self.lock();
        self.prune(&mut maps);
        let mut all: Vec<_> = maps.by_id.values().cloned().collect();
        all.sort_by_key(|e| e.shared.id);
        all
    }

    /// Live sessions.
    pub fn live(&self) -> Vec<Arc<Entry>> {
        let maps = self.lock();
        maps.by_resource
            .values()
            .filter_map(|id| maps.by_id.get(id))
            .cloned()
            .collect()
    }

    /// Moves an ended session from live to retained, and prunes the retained ones.
    pub fn ended(&self, resource: &str) {
        let mut maps = self.lock();
        if let Some(id) = maps.by_resource.remove(resource) {
            maps.ended.push_back((Instant::now(), id));
            self.slots.fetch_sub(1, Ordering::AcqRel);
        }
        self.prune(&mut maps);
    }

    /// Forgets retained sessions beyond the count or older than the age limit.
    fn prune(&self, maps: &mut Maps) {
        while let Some(&(at, id)) = maps.ended.front() {
            if maps.ended.len() <= self.retain && at.elapsed() < self.retain_for {
                break;
            }
            maps.ended.pop_front();
            if let Some(entry) = maps.by_id.remove(&id) {
                maps.forgotten.add(&entry.shared.counters);
            }
        }
    }

    /// Counters summed over every session this node ever had: monotonic, since a
    /// session's counters move into the forgotten totals when it is pruned.
    pub fn totals(&self) -> Totals {
        let maps = self.lock();
        let mut totals = maps.forgotten.clone();
        for entry in maps.by_id.values() {
            totals.add(&entry.shared.counters);
        }
        totals.live = maps.by_resource.len() as u64;
        totals
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        // A panic while holding this lock would be a bug; keep serving with the data.
        self.maps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
