//! The sessions of this node: live ones by WHIP resource id and by session id, and
//! recently ended ones (kept in memory, bounded by count, age and an estimate of their
//! bytes).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use turngate_core::SessionId;
use turngate_media::session::{Counts, SessionCounters, SessionShared};

/// A session as the API sees it.
pub struct Entry {
    /// The media side's shared state: counters, turns and their results.
    pub shared: Arc<SessionShared>,
    /// The `sub` of the token that created it, if any: only that subject may end it or
    /// upload to it.
    pub subject: Option<String>,
}

impl Entry {
    /// A new session's entry.
    pub fn new(shared: Arc<SessionShared>, subject: Option<String>) -> Self {
        Self { shared, subject }
    }

    /// Whether a client with `claims` may act on this session: its creator's subject.
    pub fn belongs_to(&self, claims: &crate::auth::Claims) -> bool {
        self.subject == claims.owner
    }
}

#[derive(Default)]
struct Maps {
    by_resource: HashMap<String, SessionId>,
    /// Live sessions (reserved ones included) by client address ([`address_key`]), and
    /// the address of each live resource.
    live_by_ip: HashMap<IpAddr, usize>,
    /// Live sessions by their token's subject.
    live_by_subject: HashMap<String, usize>,
    owner_of: HashMap<String, Owner>,
    /// Ordered by id, which is ordered by start time (ids are minted time-first).
    by_id: BTreeMap<SessionId, Arc<Entry>>,
    ended: VecDeque<(Instant, SessionId)>,
    /// What the sessions no longer held counted.
    forgotten: Totals,
}

/// Whose a live session is: its client's address key and its token's subject.
#[derive(Clone, Debug)]
struct Owner {
    ip: IpAddr,
    subject: Option<String>,
}

/// Takes one from `key`'s count, forgetting it at zero.
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

impl Maps {
    fn release(&mut self, owner: &Owner) {
        release(&mut self.live_by_ip, &owner.ip);
        if let Some(subject) = &owner.subject {
            release(&mut self.live_by_subject, subject);
        }
    }

    /// The estimated bytes a session holds.
    fn bytes(&self, id: &SessionId) -> u64 {
        self.by_id.get(id).map_or(0, |e| e.shared.retained_bytes())
    }
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
    max_per_ip: usize,
    max_per_subject: usize,
    retention: Retention,
}

/// How many ended sessions stay queryable, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// At most this many.
    pub count: usize,
    /// For at most this long after they end.
    pub age: Duration,
    /// Holding at most this many bytes together, by
    /// [`SessionShared::retained_bytes`](turngate_media::session::SessionShared::retained_bytes).
    pub bytes: u64,
}

/// A reserved place under `sessions.max` and `sessions.max_per_ip`, released on drop
/// unless it became a session.
pub struct Slot<'a> {
    registry: &'a Registry,
    owner: Owner,
    used: bool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.used {
            self.registry.slots.fetch_sub(1, Ordering::AcqRel);
            self.registry.lock().release(&self.owner);
        }
    }
}

/// The key a client address is counted under: an IPv4 address, or an IPv6 address's
/// /64 (one subscriber's usual allocation, so one client cannot count as 2^64).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Which limit refused a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// `sessions.max`.
    Gateway,
    /// `sessions.max_per_ip`.
    Address,
    /// `auth.max_sessions_per_subject`.
    Subject,
}

impl Registry {
    /// A registry allowing `max` live sessions (`max_per_ip` from one address,
    /// `max_per_subject` of one token subject) and keeping ended ones within `retention`.
    pub fn new(
        (max, max_per_ip, max_per_subject): (usize, usize, usize),
        (max_pending, max_pending_per_ip): (usize, usize),
        retention: Retention,
    ) -> Self {
        Self {
            maps: Mutex::default(),
            slots: AtomicUsize::new(0),
            pending: Arc::default(),
            max_pending,
            max_pending_per_ip,
            max,
            max_per_ip,
            max_per_subject,
            retention,
        }
    }

    /// Reserves a place for a new session of `ip` (and of the token `subject`, if any),
    /// if under every limit.
    pub fn reserve(&self, ip: IpAddr, subject: Option<&str>) -> Result<Slot<'_>, Full> {
        let ip = address_key(ip);
        let mut maps = self.lock();
        if maps.live_by_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            return Err(Full::Address);
        }
        if let Some(subject) = subject
            && maps.live_by_subject.get(subject).copied().unwrap_or(0) >= self.max_per_subject
        {
            return Err(Full::Subject);
        }
        self.slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .map_err(|_| Full::Gateway)?;
        *maps.live_by_ip.entry(ip).or_default() += 1;
        if let Some(subject) = subject {
            *maps.live_by_subject.entry(subject.to_owned()).or_default() += 1;
        }
        Ok(Slot {
            registry: self,
            owner: Owner {
                ip,
                subject: subject.map(str::to_owned),
            },
            used: false,
        })
    }

    /// Reserves a place for a session of `ip` whose peer has not connected yet; `Err`
    /// says which limit is full.
    pub fn reserve_pending(&self, ip: IpAddr) -> Result<PendingSlot, String> {
        let ip = address_key(ip);
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
        maps.owner_of.insert(resource.clone(), slot.owner.clone());
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

    /// Up to `limit` live and retained sessions started after the one `after` names
    /// (from the first if `None`), oldest first, and whether more follow.
    pub fn page(&self, after: Option<SessionId>, limit: usize) -> (Vec<Arc<Entry>>, bool) {
        let mut maps = self.lock();
        self.prune(&mut maps);
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut range = maps.by_id.range((from, Bound::Unbounded));
        let page: Vec<_> = range
            .by_ref()
            .take(limit)
            .map(|(_, e)| Arc::clone(e))
            .collect();
        let more = range.next().is_some();
        (page, more)
    }

    /// The estimated bytes of live and retained sessions.
    pub fn retained_bytes(&self) -> u64 {
        let maps = self.lock();
        maps.by_id.values().map(|e| e.shared.retained_bytes()).sum()
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
            if let Some(owner) = maps.owner_of.remove(resource) {
                maps.release(&owner);
            }
        }
        self.prune(&mut maps);
    }

    /// Forgets the oldest retained sessions while there are more than the count, while
    /// the oldest is older than the age limit, or while they hold more than the bytes
    /// limit. (Bytes are summed afresh: an ended session's turns may still complete.)
    fn prune(&self, maps: &mut Maps) {
        let mut held: u64 = maps.ended.iter().map(|(_, id)| maps.bytes(id)).sum();
        while let Some(&(at, id)) = maps.ended.front() {
            let r = &self.retention;
            if maps.ended.len() <= r.count && at.elapsed() < r.age && held <= r.bytes {
                break;
            }
            held -= maps.bytes(&id);
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
