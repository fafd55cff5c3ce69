//! Reading records back: which sessions recorded a turn id, a record's manifest, its
//! objects, a session's turns.
//!
//! A turn id is found through its create-only index `turns/{turn}` (the first session
//! to record it) and `conflicts/{turn}/{session}` (any later one), so finding a turn
//! never lists the whole store.

use object_store::path::Path;

use crate::layout::{self, name};
use crate::manifest::Manifest;
use crate::{Error, Store};

/// The sessions that recorded turn `turn`, the index's first.
pub async fn sessions_of(store: &Store, turn: &str) -> Result<Vec<String>, Error> {
    let mut sessions = Vec::new();
    if let Some(bytes) = store.get(&Path::from(format!("turns/{turn}"))).await?
        && let Ok(index) = serde_json::from_slice::<serde_json::Value>(&bytes)
        && let Some(session) = index["session_id"].as_str()
    {
        sessions.push(session.to_owned());
    }
    for meta in store.list(&layout::conflicts(turn)).await? {
        if let Some(session) = meta.location.filename()
            && !sessions.iter().any(|s| s == session)
        {
            sessions.push(session.to_owned());
        }
    }
    Ok(sessions)
}

/// The manifest of `session`'s record of `turn`, if it has one (a record without one
/// is not whole: being written, or partly deleted).
pub async fn manifest(store: &Store, session: &str, turn: &str) -> Result<Option<Manifest>, Error> {
    let key = layout::artifact(session, turn, name::MANIFEST);
    Ok(match store.get(&key).await? {
        Some(bytes) => Some(
            serde_json::from_slice(&bytes)
                .map_err(|e| Error::Config(format!("{key}: not a manifest: {e}")))?,
        ),
        None => None,
    })
}

/// Every object of a record, by name under the turn's prefix, sorted.
pub async fn objects(store: &Store, session: &str, turn: &str) -> Result<Vec<String>, Error> {
    let prefix = layout::turn(session, turn).to_string();
    let mut names: Vec<String> = store
        .list(&Path::from(prefix.as_str()))
        .await?
        .into_iter()
        .filter_map(|m| {
            m.location
                .as_ref()
                .strip_prefix(prefix.as_str())
                .map(|n| n.trim_start_matches('/').to_owned())
        })
        .collect();
    names.sort();
    Ok(names)
}

/// A page of a session's recorded turns: [`session_turns`].
#[derive(Debug, Default)]
pub struct SessionTurns {
    /// The page's whole records, in turn-number order.
    pub turns: Vec<Manifest>,
    /// Whether more follow.
    pub more: bool,
    /// Whether the store holds anything of the session at all.
    pub recorded: bool,
}

/// A page of `session`'s whole records (turns being recorded have no manifest yet) in
/// turn-number order: those numbered after `after`, at most `limit`. Found by listing
/// the session's number entries, so only the page's manifests are read (16 at a time);
/// a turn without an entry (recorded before there were entries, or whose entry could not
/// be written) has its manifest read to learn its number, so it is never left out.
pub async fn session_turns(
    store: &Store,
    session: &str,
    after: u32,
    limit: usize,
) -> Result<SessionTurns, Error> {
    let mut entries: Vec<(u32, String)> = store
        .list(&layout::numbers(session))
        .await?
        .into_iter()
        .filter_map(|m| {
            let (number, turn) = layout::parse_number(m.location.filename()?)?;
            Some((number, turn.to_owned()))
        })
        .collect();
    let turns = store.children(&layout::turns_of(session)).await?;
    let numbered: std::collections::HashSet<String> =
        entries.iter().map(|(_, t)| t.clone()).collect();
    // Collected before any await: a lazy adapter held across one makes the future !Send.
    let unnumbered: Vec<String> = turns
        .iter()
        .filter(|p| p.filename().is_some_and(|t| !numbered.contains(t)))
        .map(ToString::to_string)
        .collect();
    let mut known: std::collections::HashMap<String, Manifest> =
        manifests(store, unnumbered.into_iter())
            .await?
            .into_iter()
            .map(|m| (m.turn_id.clone(), m))
            .collect();
    // (A local store may keep a deleted turn's empty directories: they record nothing.)
    let recorded = !entries.is_empty() || !known.is_empty();
    entries.extend(known.values().map(|m| (m.number, m.turn_id.clone())));
    entries.sort();
    entries.dedup();
    entries.retain(|(number, _)| *number > after);
    // A page's worth at a time, skipping turns with no manifest (being recorded).
    let mut page = Vec::new();
    let mut rest = entries.into_iter().peekable();
    while page.len() < limit && rest.peek().is_some() {
        let batch: Vec<(u32, String)> = rest.by_ref().take(limit - page.len()).collect();
        let unread: Vec<String> = batch
            .iter()
            .filter(|(_, t)| !known.contains_key(t))
            .map(|(_, t)| layout::turn(session, t).to_string())
            .collect();
        for m in manifests(store, unread.into_iter()).await? {
            known.insert(m.turn_id.clone(), m);
        }
        page.extend(batch.iter().filter_map(|(_, t)| known.remove(t)));
    }
    Ok(SessionTurns {
        turns: page,
        more: rest.peek().is_some(),
        recorded,
    })
}

/// The manifests under the turn prefixes `turns` (those that have one), read 16 at a
/// time, in no particular order.
async fn manifests(
    store: &Store,
    turns: impl Iterator<Item = String>,
) -> Result<Vec<Manifest>, Error> {
    use futures_util::{StreamExt, TryStreamExt};
    futures_util::stream::iter(turns)
        .map(|prefix| async move {
            let key = Path::from(format!("{prefix}/{}", name::MANIFEST));
            Ok::<_, Error>(
                store
                    .get(&key)
                    .await?
                    .and_then(|bytes| serde_json::from_slice::<Manifest>(&bytes).ok()),
            )
        })
        .buffer_unordered(16)
        .try_filter_map(|m| async move { Ok(m) })
        .try_collect()
        .await
}
