//! Store operations the store did not take yet: kept in memory (at most
//! `record.spool_bytes`), then in a local directory (`record.spool_dir`, at most
//! `record.spool_disk_bytes`), and carried out in the order they came
//! ([`super::Recorder::drain_spool`], with back-off from 1 s doubling to 5 s) until
//! the store takes them. What waits on disk survives a restart: a node replays it
//! before anything new.
//!
//! While anything waits here, new operations queue behind it without trying the store
//! first: a turn's manifest so never lands before the artifacts it lists, and turns do
//! not each wait out the retries of a store that is down. Once anything waits on disk,
//! new operations go to disk too, so the order holds across the tiers (memory holds
//! only what is older than all of disk). Beyond both bounds an object is dropped (its
//! turn lists it `missing`, `store_failed`); manifests, markers, index entries and
//! marker removals may use as much again beyond a bound, so a record that lost parts
//! still says so once the store is back, and a store down for days cannot exhaust
//! memory or disk with them either.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use turngate_core::{SessionId, TurnId};

/// A store operation waiting its turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    Put(Path, Bytes),
    /// A marker to remove once the manifest before it is written.
    Delete(Path),
    /// A turn's create-only index (see [`super::Recorder::index`]).
    Index(Index),
}

/// A turn's index entry: `turns/{turn}` naming its session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    pub turn: TurnId,
    pub session: SessionId,
}

impl Pending {
    /// Bytes it holds in memory (roughly, for the bound: its body or its key).
    fn size(&self) -> u64 {
        match self {
            Self::Put(_, bytes) => bytes.len() as u64,
            Self::Delete(key) => key.as_ref().len() as u64,
            Self::Index(_) => 64,
        }
    }
}

/// How an operation is written on disk: this header as one JSON line, then the body.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Header {
    Put { key: String },
    Delete { key: String },
    Index { turn: String, session: String },
}

/// Where an operation went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spooled {
    Queued,
    /// Both tiers are full: the object is dropped.
    Full,
}

/// The spool. See the module docs.
pub struct Spool {
    tiers: Mutex<Tiers>,
    /// The directory's lock, held for the spool's life: two processes replaying one
    /// directory would write each other's operations and overwrite each other's files.
    _lock: Option<std::fs::File>,
    /// Bytes waiting, in memory and on disk.
    bytes: AtomicU64,
    max_memory: u64,
    max_disk: u64,
    /// Operations that waited here and were then carried out.
    pub written: AtomicU64,
    arrived: Notify,
}

struct Tiers {
    memory: VecDeque<Pending>,
    memory_bytes: u64,
    /// The directory, and the sequence numbers of what waits in it, oldest first.
    dir: Option<PathBuf>,
    disk: VecDeque<(u64, u64)>,
    disk_bytes: u64,
    next_seq: u64,
}

impl Spool {
    /// A spool of `max_memory` bytes in memory and `max_disk` bytes in `dir` (none: no
    /// disk tier). What `dir` holds from an earlier run waits first.
    pub fn new(max_memory: u64, dir: Option<PathBuf>, max_disk: u64) -> std::io::Result<Self> {
        let mut disk = VecDeque::new();
        let mut disk_bytes = 0;
        let mut lock = None;
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir)?;
            let file = std::fs::File::create(dir.join(".lock"))?;
            file.try_lock().map_err(|_| {
                std::io::Error::other(format!(
                    "{} is in use by another process (each node needs its own spool directory)",
                    dir.display()
                ))
            })?;
            lock = Some(file);
            let mut found: Vec<(u64, u64)> = std::fs::read_dir(dir)?
                .flatten()
                .filter_map(|e| {
                    let seq = e.file_name().to_str()?.parse().ok()?;
                    Some((seq, e.metadata().ok()?.len()))
                })
                .collect();
            found.sort_unstable();
            disk_bytes = found.iter().map(|(_, len)| len).sum();
            disk.extend(found);
        }
        let next_seq = disk.back().map_or(0, |(seq, _)| seq + 1);
        Ok(Self {
            _lock: lock,
            bytes: AtomicU64::new(disk_bytes),
            tiers: Mutex::new(Tiers {
                memory: VecDeque::new(),
                memory_bytes: 0,
                dir,
                disk,
                disk_bytes,
                next_seq,
            }),
            max_memory,
            max_disk,
            written: AtomicU64::new(0),
            arrived: Notify::new(),
        })
    }

    /// Whether anything waits.
    pub fn is_empty(&self) -> bool {
        let tiers = self.tiers();
        tiers.memory.is_empty() && tiers.disk.is_empty()
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Queues `bytes` for `key`, within the bounds, or twice the bounds if `always`
    /// (manifests, markers).
    pub fn push(&self, key: Path, bytes: Bytes, always: bool) -> Spooled {
        self.enqueue(Pending::Put(key, bytes), always)
    }

    /// Queues the removal of `key` behind what waits (within twice the bounds).
    pub fn delete(&self, key: Path) -> Spooled {
        self.enqueue(Pending::Delete(key), true)
    }

    /// Queues a turn's index behind what waits (within twice the bounds).
    pub fn index(&self, index: Index) -> Spooled {
        self.enqueue(Pending::Index(index), true)
    }

    fn enqueue(&self, pending: Pending, always: bool) -> Spooled {
        let size = pending.size();
        let mut tiers = self.tiers();
        let room = |used: u64, max: u64| {
            let max = if always { max.saturating_mul(2) } else { max };
            used + size <= max
        };
        // With a disk tier, memory holds only what fits its own bound.
        let in_memory = tiers.disk.is_empty()
            && (tiers.memory_bytes + size <= self.max_memory
                || (tiers.dir.is_none() && room(tiers.memory_bytes, self.max_memory)));
        let added = if in_memory {
            tiers.memory_bytes += size;
            tiers.memory.push_back(pending);
            size
        } else {
            let fits = room(tiers.disk_bytes, self.max_disk);
            let Some(dir) = tiers.dir.clone().filter(|_| fits) else {
                return Spooled::Full;
            };
            let seq = tiers.next_seq;
            match write(&dir.join(seq.to_string()), &pending) {
                Ok(len) => {
                    tiers.next_seq += 1;
                    tiers.disk.push_back((seq, len));
                    tiers.disk_bytes += len;
                    len
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Turn record: cannot write to the spool directory.");
                    return Spooled::Full;
                }
            }
        };
        drop(tiers);
        self.bytes.fetch_add(added, Ordering::Relaxed);
        self.arrived.notify_one();
        Spooled::Queued
    }

    /// The oldest operation waiting, if any (memory first: it is older than disk).
    pub fn front(&self) -> Option<Pending> {
        let tiers = self.tiers();
        if let Some(pending) = tiers.memory.front() {
            return Some(pending.clone());
        }
        let (seq, _) = *tiers.disk.front()?;
        let path = tiers.dir.as_ref()?.join(seq.to_string());
        drop(tiers);
        match read(&path) {
            Ok(pending) => Some(pending),
            Err(e) => {
                // A file that does not read back is of no use to anyone: skip it.
                tracing::warn!(file = %path.display(), error = %e, "Turn record: an unreadable spool file; skipped.");
                self.done();
                self.front()
            }
        }
    }

    /// The oldest operation was carried out: it leaves the spool.
    pub fn done(&self) {
        let mut tiers = self.tiers();
        let size = if let Some(pending) = tiers.memory.pop_front() {
            tiers.memory_bytes -= pending.size();
            pending.size()
        } else if let Some((seq, len)) = tiers.disk.pop_front() {
            tiers.disk_bytes -= len;
            if let Some(dir) = &tiers.dir {
                let _ = std::fs::remove_file(dir.join(seq.to_string()));
            }
            len
        } else {
            return;
        };
        drop(tiers);
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(size))
            });
        self.written.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits until something is queued.
    pub async fn arrival(&self) {
        self.arrived.notified().await;
    }

    fn tiers(&self) -> std::sync::MutexGuard<'_, Tiers> {
        self.tiers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Writes `pending` to `path` (synced, so it survives a crash); returns its length.
fn write(path: &std::path::Path, pending: &Pending) -> std::io::Result<u64> {
    use std::io::Write;
    let (header, body): (Header, &[u8]) = match pending {
        Pending::Put(key, bytes) => (
            Header::Put {
                key: key.to_string(),
            },
            bytes,
        ),
        Pending::Delete(key) => (
            Header::Delete {
                key: key.to_string(),
            },
            &[],
        ),
        Pending::Index(i) => (
            Header::Index {
                turn: i.turn.to_string(),
                session: i.session.to_string(),
            },
            &[],
        ),
    };
    let mut file = std::fs::File::create(path)?;
    serde_json::to_writer(&mut file, &header)?;
    file.write_all(b"\n")?;
    file.write_all(body)?;
    file.sync_all()?;
    file.metadata().map(|m| m.len())
}

/// Reads back what [`write`] wrote.
fn read(path: &std::path::Path) -> std::io::Result<Pending> {
    let bytes = std::fs::read(path)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| bad("no header"))?;
    let header: Header = serde_json::from_slice(&bytes[..newline])?;
    let body = Bytes::from(bytes).slice(newline + 1..);
    Ok(match header {
        Header::Put { key } => Pending::Put(Path::from(key), body),
        Header::Delete { key } => Pending::Delete(Path::from(key)),
        Header::Index { turn, session } => Pending::Index(Index {
            turn: turn.parse().map_err(|_| bad("turn id"))?,
            session: session.parse().map_err(|_| bad("session id"))?,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(n: usize) -> Pending {
        Pending::Put(Path::from(format!("k/{n}")), Bytes::from(vec![n as u8; n]))
    }

    fn push(spool: &Spool, p: &Pending, always: bool) -> Spooled {
        match p {
            Pending::Put(k, b) => spool.push(k.clone(), b.clone(), always),
            _ => unreachable!(),
        }
    }

    fn drained(spool: &Spool) -> Vec<Pending> {
        std::iter::from_fn(|| {
            let p = spool.front()?;
            spool.done();
            Some(p)
        })
        .collect()
    }

    #[test]
    fn memory_only_keeps_its_bound_and_manifests_twice_it() {
        let spool = Spool::new(10, None, 0).unwrap();
        assert_eq!(push(&spool, &put(6), false), Spooled::Queued);
        assert_eq!(push(&spool, &put(6), false), Spooled::Full);
        assert_eq!(push(&spool, &put(4), false), Spooled::Queued);
        assert_eq!(push(&spool, &put(2), true), Spooled::Queued);
        assert_eq!(push(&spool, &put(9), true), Spooled::Full);
        assert_eq!(spool.delete(Path::from("open/n/t")), Spooled::Queued);
        assert_eq!(spool.delete(Path::from("open/n/u")), Spooled::Full);
        assert_eq!(spool.bytes(), 20);
        assert_eq!(
            drained(&spool),
            vec![
                put(6),
                put(4),
                put(2),
                Pending::Delete(Path::from("open/n/t"))
            ]
        );
        assert!(spool.is_empty());
        assert_eq!(spool.bytes(), 0);
    }

    #[test]
    fn past_memory_operations_go_to_disk_in_order_and_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("turngate-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let index = Pending::Index(Index {
            turn: "0af7651916cd43dd8448eb211c80319c".parse().unwrap(),
            session: "01890f3a9b7c4d5e6f708192a3b4c5d6".parse().unwrap(),
        });
        {
            let spool = Spool::new(10, Some(dir.clone()), 1000).unwrap();
            assert_eq!(push(&spool, &put(8), false), Spooled::Queued); // memory
            assert_eq!(push(&spool, &put(9), false), Spooled::Queued); // disk
            // Memory has room again, but disk holds something: disk, to keep the order.
            assert_eq!(push(&spool, &put(1), false), Spooled::Queued);
            spool.index(match &index {
                Pending::Index(i) => i.clone(),
                _ => unreachable!(),
            });
            assert_eq!(spool.delete(Path::from("open/n/t")), Spooled::Queued);
            assert_eq!(push(&spool, &put(2000), false), Spooled::Full);
            assert_eq!(spool.front(), Some(put(8)));
            spool.done();
            // The process stops here: memory is lost, disk is not.
        }
        let spool = Spool::new(10, Some(dir.clone()), 1000).unwrap();
        // One process at a time.
        assert!(Spool::new(10, Some(dir.clone()), 1000).is_err());
        assert!(!spool.is_empty());
        assert_eq!(
            drained(&spool),
            vec![
                put(9),
                put(1),
                index,
                Pending::Delete(Path::from("open/n/t"))
            ]
        );
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, [".lock"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
