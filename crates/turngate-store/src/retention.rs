//! Removing records: by age (`record.retention_days`, from the manifest's end time) and
//! on request (a session, a subject, a turn).
//!
//! A turn is deleted whole and in an order no reader can mistake: its manifest first
//! (a reader takes only a turn with a manifest for a record), then its other objects,
//! then its `turns/{turn}` index if that names this session. A sweep killed midway so
//! leaves at worst objects without a manifest; the next sweep removes those orphans
//! once they are older than the retention and no marker says the turn is being
//! recorded.

use std::collections::{BTreeMap, BTreeSet};
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
/// older than `keep`.
pub async fn sweep(store: &Store, keep: Duration, now: SystemTime) -> Result<Removed, Error> {
    let open = open_turns(store).await?;
    let mut removed = Removed::default();
    for turn in turns(store, &Path::from("sessions")).await? {
        let expired = |end: SystemTime| end + keep < now;
        match turn.manifest() {
            Some(meta) => {
                let ended = match store.get(&meta.location).await? {
                    Some(bytes) => serde_json::from_slice::<Manifest>(&bytes)
                        .ok()
                        .and_then(|m| end_time(&m)),
                    None => None,
                };
                // A manifest without a readable end time ages from when it was written.
                let ended = ended.unwrap_or_else(|| modified(meta));
                if expired(ended) {
                    removed.objects += delete_turn(store, &turn).await?;
                    removed.turns += 1;
                }
            }
            None if !open.contains(&turn.turn) && turn.newest().is_some_and(expired) => {
                removed.objects += delete_turn(store, &turn).await?;
                removed.orphans += 1;
            }
            None => {}
        }
    }
    Ok(removed)
}

/// Deletes the records `selector` names, whole.
pub async fn delete(store: &Store, selector: &Selector) -> Result<Removed, Error> {
    let prefix = match selector {
        Selector::Session(id) => Path::from(format!("sessions/{id}")),
        _ => Path::from("sessions"),
    };
    let open = open_turns(store).await?;
    let mut removed = Removed::default();
    for turn in turns(store, &prefix).await? {
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
                None => open_subject(store, &turn).await?.as_deref() == Some(sub.as_str()),
            },
        };
        if !chosen {
            continue;
        }
        if open.contains(&turn.turn) {
            removed.open += 1;
            continue;
        }
        removed.objects += delete_turn(store, &turn).await?;
        removed.turns += 1;
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

/// The turns some node is recording now (they have a marker).
async fn open_turns(store: &Store) -> Result<BTreeSet<String>, Error> {
    Ok(store
        .list(&Path::from("open"))
        .await?
        .into_iter()
        // open/{node}/{turn}[/{session}]
        .filter_map(|m| m.location.parts().nth(2).map(|p| p.as_ref().to_owned()))
        .collect())
}

/// The token subject a marker of `turn` names, if one does.
async fn open_subject(store: &Store, turn: &TurnObjects) -> Result<Option<String>, Error> {
    for meta in store.list(&Path::from("open")).await? {
        let parts: Vec<String> = meta
            .location
            .parts()
            .map(|p| p.as_ref().to_owned())
            .collect();
        if parts.get(2) == Some(&turn.turn)
            && parts.get(3).is_none_or(|s| *s == turn.session)
            && let Some(bytes) = store.get(&meta.location).await?
            && let Ok(marker) = serde_json::from_slice::<serde_json::Value>(&bytes)
        {
            return Ok(marker["subject"].as_str().map(str::to_owned));
        }
    }
    Ok(None)
}

/// Deletes one turn: manifest, the rest, then its index if it names this session.
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
