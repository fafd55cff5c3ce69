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

/// A page of `session`'s whole records (turns being recorded have no manifest yet) in
/// turn-number order: those numbered after `after`, at most `limit`; and whether more
/// follow. Found by listing the session's number entries, so only the page's manifests
/// are read (16 at a time); a session recorded before there were number entries has
/// every manifest read instead.
pub async fn session_turns(
    store: &Store,
    session: &str,
    after: u32,
    limit: usize,
) -> Result<(Vec<Manifest>, bool), Error> {
    let mut entries: Vec<(u32, String)> = store
        .list(&layout::numbers(session))
        .await?
        .into_iter()
        .filter_map(|m| {
            let (number, turn) = layout::parse_number(m.location.filename()?)?;
            Some((number, turn.to_owned()))
        })
        .collect();
    if entries.is_empty() {
        let prefixes = store.children(&layout::turns_of(session)).await?;
        let mut all = manifests(store, prefixes.iter().map(ToString::to_string)).await?;
        all.sort_by(|a, b| (a.number, &a.turn_id).cmp(&(b.number, &b.turn_id)));
        all.retain(|m| m.number > after);
        let more = all.len() > limit;
        all.truncate(limit);
        return Ok((all, more));
    }
    entries.sort();
    entries.retain(|(number, _)| *number > after);
    // A page's worth at a time, skipping turns with no manifest (being recorded).
    let mut page = Vec::new();
    let mut rest = entries.into_iter().peekable();
    while page.len() < limit && rest.peek().is_some() {
        let batch: Vec<String> = rest
            .by_ref()
            .take(limit - page.len())
            .map(|(_, turn)| layout::turn(session, turn).to_string())
            .collect();
        let mut found = manifests(store, batch.into_iter()).await?;
        found.sort_by(|a, b| (a.number, &a.turn_id).cmp(&(b.number, &b.turn_id)));
        page.extend(found);
    }
    Ok((page, rest.peek().is_some()))
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
