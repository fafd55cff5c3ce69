//! Removing records: by age (`record.retention_days`, from the manifest's end time) and
//! on request (a session, a subject, a turn).
//!
//! A turn is deleted whole and in an order no reader can mistake: its manifest first
//! (a reader takes only a turn with a manifest for a record), then its other objects,
//! then its `turns/{turn}` index if that names this session. A sweep killed midway so
//! leaves at worst objects without a manifest; the next sweep removes those orphans
//! once they are older than the retention and no marker says the turn is being
//! recorded.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use object_store::ObjectMeta;
use object_store::path::Path;

use crate::layout::name;
use crate::manifest::Manifest;
use crate::{Error, Store};

/// What a pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Whole turns (with their manifest).
    pub turns: usize,
    /// Turns without a manifest (left by an interrupted pass or a failed record).
    pub orphans: usize,
    /// Objects deleted in all.
    pub objects: usize,
    /// Turns chosen but left alone because they are being recorded (a marker says so):
    /// their node would write them back. Delete them once they end.
    pub open: usize,
}

/// Which records to delete on request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    Session(String),
    Turn(String),
    /// Every record whose manifest names this token subject.
    Subject(String),
}

/// A turn's objects in the store, found by listing.
struct TurnObjects {
    session: String,
    turn: String,
    objects: Vec<ObjectMeta>,
}

impl TurnObjects {
    fn manifest(&self) -> Option<&ObjectMeta> {
        self.objects
            .iter()
            .find(|o| o.location.filename() == Some(name::MANIFEST) && self.depth(o) == 1)
    }

    /// Path parts below the turn's prefix.
    fn depth(&self, o: &ObjectMeta) -> usize {
        o.location.parts().count() - 4
    }

    fn newest(&self) -> Option<SystemTime> {
        self.objects.iter().map(modified).max()
    }
}

/// Deletes the turns whose manifest ended more than `keep` before `now`, and orphans
/// older than `keep` (one pass, as `turngate gc` runs it; see [`Sweeper`]).
pub async fn sweep(store: &Store, keep: Duration, now: SystemTime) -> Result<Removed, Error> {
    Sweeper::default().sweep(store, keep, now).await
}

/// Sweeps by age, pass after pass, as `serve` does hourly: a session at a time (so a
/// pass holds one session's object list, not the store's), reading a manifest only when
/// its end time is not known yet. A manifest is written after its turn ends, so one
/// written more than `keep` ago is expired unread; the end times of the others are
/// remembered between passes (a few bytes per turn still kept), so each is read once.
#[derive(Debug, Default)]
pub struct Sweeper {
    /// Manifest (by [`key_hash`]) → the turn's end.
    ends: HashMap<u64, SystemTime>,
}

impl Sweeper {
    /// One pass. See [`sweep`].
    pub async fn sweep(
        &mut self,
        store: &Store,
        keep: Duration,
        now: SystemTime,
    ) -> Result<Removed, Error> {
        let open = open_turns(store).await?;
        let expired = |end: SystemTime| end + keep < now;
        let mut removed = Removed::default();
        let mut ends = HashMap::with_capacity(self.ends.len());
        for session in store.children(&Path::from("sessions")).await? {
            for turn in turns(store, &session).await? {
                match turn.manifest() {
                    Some(meta) => {
                        let written = modified(meta);
                        let hash = key_hash(&meta.location, written);
                        let ended = match self.ends.get(&hash) {
                            _ if expired(written) => written,
                            Some(&ended) => ended,
                            None => store
                                .get(&meta.location)
                                .await?
                                .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
                                .and_then(|m| end_time(&m))
                                // Without a readable end time it ages from its writing.
                                .unwrap_or(written),
                        };
                        if expired(ended) {
                            removed.objects += delete_turn(store, &turn).await?;
                            removed.turns += 1;
                        } else {
                            ends.insert(hash, ended);
                        }
                    }
                    None if !open.iter().any(|o| o.names(&turn.turn, &turn.session))
                        && turn.newest().is_some_and(expired) =>
                    {
                        removed.objects += delete_turn(store, &turn).await?;
                        removed.orphans += 1;
                    }
                    None => {}
                }
            }
        }
        self.ends = ends;
        Ok(removed)
    }
}

/// An object's hash by key and writing time, to remember it by in a few bytes (an
/// object written again is read again).
fn key_hash(key: &Path, written: SystemTime) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (key.as_ref(), written).hash(&mut hasher);
    hasher.finish()
}

/// Deletes the records `selector` names, whole. A turn being recorded (a marker names
/// it and its session) is left alone and counted in `open`, whether or not anything of
/// it reached the store yet.
pub async fn delete(store: &Store, selector: &Selector) -> Result<Removed, Error> {
    let prefix = match selector {
        Selector::Session(id) => Path::from(format!("sessions/{id}")),
        _ => Path::from("sessions"),
    };
    let open = open_turns(store).await?;
    let mut removed = Removed::default();
    let mut listed = BTreeSet::new();
    for turn in turns(store, &prefix).await? {
        listed.insert((turn.session.clone(), turn.turn.clone()));
        let chosen = match selector {
            Selector::Session(_) => true,
            Selector::Turn(id) => &turn.turn == id,
            Selector::Subject(sub) => match turn.manifest() {
                Some(meta) => store
                    .get(&meta.location)
                    .await?
                    .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
                    .is_some_and(|m| m.subject.as_deref() == Some(sub.as_str())),
                // Being recorded: its marker names the subject.
                None => match open.iter().find(|o| o.names(&turn.turn, &turn.session)) {
                    Some(marker) => marker.subject(store).await?.as_deref() == Some(sub.as_str()),
                    None => false,
                },
            },
        };
        if !chosen {
            continue;
        }
        if open.iter().any(|o| o.names(&turn.turn, &turn.session)) {
            removed.open += 1;
            continue;
        }
        removed.objects += delete_turn(store, &turn).await?;
        removed.turns += 1;
    }
    // Turns being recorded that stored nothing yet.
    for marker in &open {
        let stored = marker
            .session
            .as_ref()
            .is_some_and(|s| listed.contains(&(s.clone(), marker.turn.clone())));
        let chosen = match selector {
            Selector::Session(id) => marker.session.as_ref() == Some(id),
            Selector::Turn(id) => &marker.turn == id,
            Selector::Subject(sub) => marker.subject(store).await?.as_deref() == Some(sub.as_str()),
        };
        if chosen && !stored {
            removed.open += 1;
        }
    }
    Ok(removed)
}

/// The turn's end: completion, else input end, else start.
fn end_time(m: &Manifest) -> Option<SystemTime> {
    let t = &m.timings;
    let at = [&t.completed, &t.input_ended]
        .into_iter()
        .flatten()
        .next()
        .unwrap_or(&t.started);
    humantime::parse_rfc3339(&at.at).ok()
}

/// Every turn under `prefix` (`sessions` or `sessions/{id}`), with its objects.
async fn turns(store: &Store, prefix: &Path) -> Result<Vec<TurnObjects>, Error> {
    let mut by_turn: BTreeMap<(String, String), Vec<ObjectMeta>> = BTreeMap::new();
    for meta in store.list(prefix).await? {
        let parts: Vec<String> = meta
            .location
            .parts()
            .map(|p| p.as_ref().to_owned())
            .collect();
        if let [first, session, turns, turn, _, ..] = parts.as_slice()
            && first == "sessions"
            && turns == "turns"
        {
            by_turn
                .entry((session.clone(), turn.clone()))
                .or_default()
                .push(meta);
        }
    }
    Ok(by_turn
        .into_iter()
        .map(|((session, turn), objects)| TurnObjects {
            session,
            turn,
            objects,
        })
        .collect())
}

/// A turn some node is recording now: its marker `open/{node}/{turn}[/{session}]`.
struct Open {
    key: Path,
    turn: String,
    /// Absent in markers from before they named the session: any session's.
    session: Option<String>,
}

impl Open {
    /// Whether this marker is of `session`'s record of `turn`.
    fn names(&self, turn: &str, session: &str) -> bool {
        self.turn == turn && self.session.as_deref().is_none_or(|s| s == session)
    }

    /// The token subject the marker names, if any.
    async fn subject(&self, store: &Store) -> Result<Option<String>, Error> {
        Ok(store
            .get(&self.key)
            .await?
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|m| m["subject"].as_str().map(str::to_owned)))
    }
}

/// The turns some node is recording now (they have a marker).
async fn open_turns(store: &Store) -> Result<Vec<Open>, Error> {
    Ok(store
        .list(&Path::from("open"))
        .await?
        .into_iter()
        .filter_map(|m| {
            let (_, turn, session) = crate::layout::parse_marker(&m.location)?;
            Some(Open {
                turn,
                session,
                key: m.location,
            })
        })
        .collect())
}

/// Deletes one turn: manifest, the rest, its session's number entry, then its index if
/// it names this session.
async fn delete_turn(store: &Store, turn: &TurnObjects) -> Result<usize, Error> {
    let mut deleted = 0;
    if let Some(manifest) = turn.manifest() {
        store.delete(&manifest.location).await?;
        deleted += 1;
    }
    for o in &turn.objects {
        if Some(o) != turn.manifest() {
            store.delete(&o.location).await?;
            deleted += 1;
        }
    }
    for entry in store.list(&crate::layout::numbers(&turn.session)).await? {
        if entry
            .location
            .filename()
            .and_then(crate::layout::parse_number)
            .is_some_and(|(_, t)| t == turn.turn)
        {
            store.delete(&entry.location).await?;
            deleted += 1;
        }
    }
    let conflict = Path::from(format!("conflicts/{}/{}", turn.turn, turn.session));
    if store.get(&conflict).await?.is_some() {
        store.delete(&conflict).await?;
        deleted += 1;
    }
    let index = Path::from(format!("turns/{}", turn.turn));
    if let Some(bytes) = store.get(&index).await?
        && serde_json::from_slice::<serde_json::Value>(&bytes)
            .is_ok_and(|v| v["session_id"] == turn.session.as_str())
    {
        store.delete(&index).await?;
        deleted += 1;
    }
    Ok(deleted)
}

/// When an object was last written.
fn modified(meta: &ObjectMeta) -> SystemTime {
    let ms = meta.last_modified.timestamp_millis().max(0) as u64;
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}
