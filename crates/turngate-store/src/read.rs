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

/// The manifests of every whole record of `session` (turns being recorded have none
/// yet), in turn-number order. Read 16 at a time.
pub async fn session_turns(store: &Store, session: &str) -> Result<Vec<Manifest>, Error> {
    use futures_util::{StreamExt, TryStreamExt};
    let turns = store
        .children(&Path::from(format!("sessions/{session}/turns")))
        .await?;
    let mut manifests: Vec<Manifest> = futures_util::stream::iter(turns)
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
        .await?;
    manifests.sort_by(|a, b| (a.number, &a.turn_id).cmp(&(b.number, &b.turn_id)));
    Ok(manifests)
}
