//! Finishing the records a node left open: a turn whose `open/{node}/{turn}/{session}`
//! marker is still there when the node starts again (it crashed, or was killed) gets
//! its segments joined into `audio.received.ogg` and a manifest with `record_state:
//! incomplete`, `missing` saying what the stop cost; then the marker goes.
//!
//! A node finishes its own markers of turns it is not recording: at start, and again
//! with every lease renewal (the store may have been down at start). Another node's
//! markers are left alone
//! while that node holds its lease: each node renews `nodes/{node_id}` (its lease's
//! end) every third of `record.lease_ms`; markers of a node whose lease ended more than
//! a lease ago are finished by whichever node looks first. Recovered manifests are
//! written create-only, so two nodes finishing the same marker cannot overwrite each
//! other, nor a manifest the turn's own node wrote.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use turngate_store::layout::{self, name};
use turngate_store::manifest::{
    self, Artifact, Counters, Manifest, Missing, Moment, RecordState, Timings,
};
use turngate_store::ogg::GRANULE_RATE;

use super::Recorder;

/// What a marker holds: enough to write the turn's manifest without its node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Marker {
    pub session_id: String,
    pub turn_id: String,
    pub node_id: String,
    pub number: u32,
    pub cause: String,
    pub root_span_id: String,
    /// The token's subject, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// RFC 3339: the turn's start.
    pub started: String,
}

/// A node's lease, in `nodes/{node_id}`.
#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    /// Unix milliseconds.
    until_ms: i64,
}

impl Recorder {
    /// Finishes this node's open markers of turns it is not recording (at start, all
    /// of them; later, those a failing store kept it from finishing); returns how many.
    ///
    /// Not while the spool holds anything: it may hold the rest of those records (their
    /// segments, their manifest), and is replayed first; a later renewal finishes them.
    pub async fn recover_own(&self) -> usize {
        if !self.spool.is_empty() {
            tracing::debug!(
                "Turn record: the spool is not empty yet; this node's open records wait."
            );
            return 0;
        }
        let node = self.node_id().to_owned();
        self.recover_node(&node).await
    }

    /// Renews this node's lease and finishes the markers of nodes whose lease ended
    /// more than a lease ago; returns how many. Runs every third of a lease.
    pub async fn keep_lease(&self) -> usize {
        let _ = self.renew_lease().await;
        let Ok(open) = self.store.list(&Path::from("open")).await else {
            return 0;
        };
        let mut finished = self.recover_own().await;
        let nodes: BTreeSet<String> = open
            .iter()
            .filter_map(|m| layout::parse_marker(&m.location).map(|(node, ..)| node))
            .filter(|n| n != self.node_id())
            .collect();
        for node in nodes {
            let key = Path::from(format!("nodes/{node}"));
            let expired = match self.store.get(&key).await {
                Ok(Some(body)) => serde_json::from_slice::<Lease>(&body).map_or(true, |l| {
                    l.until_ms + (self.settings.lease_ms as i64) < super::unix_ms()
                }),
                // A node that never held a lease (or whose lease is gone) left these.
                Ok(None) => true,
                Err(_) => false,
            };
            if expired {
                tracing::info!(node = %node, "Turn record: finishing the open records of a node whose lease ended.");
                finished += self.recover_node(&node).await;
            }
        }
        finished
    }

    /// Writes this node's lease: it holds until a lease from now.
    pub(super) async fn renew_lease(&self) -> Result<(), turngate_store::Error> {
        let lease = Lease {
            until_ms: super::unix_ms() + self.settings.lease_ms as i64,
        };
        let key = Path::from(format!("nodes/{}", self.node_id()));
        let body = serde_json::to_vec(&lease).unwrap_or_default();
        self.put(&key, Bytes::from(body)).await
    }

    async fn recover_node(&self, node: &str) -> usize {
        let markers = match self.store.list(&layout::markers(node)).await {
            Ok(markers) => markers,
            Err(e) => {
                tracing::warn!(node, error = %e, "Turn record: cannot list open markers.");
                return 0;
            }
        };
        let mut finished = 0;
        for meta in markers {
            // A turn this process records now stays open.
            if let Some((_, turn, Some(session))) = layout::parse_marker(&meta.location)
                && self.is_live(&format!("{turn}/{session}"))
            {
                continue;
            }
            match self.finish_marker(&meta.location).await {
                Ok(()) => finished += 1,
                Err(e) => {
                    tracing::warn!(marker = %meta.location, error = %e, "Turn record: cannot finish an open record.")
                }
            }
        }
        finished
    }

    async fn finish_marker(&self, key: &Path) -> Result<(), turngate_store::Error> {
        let Some(body) = self.store.get(key).await? else {
            return Ok(());
        };
        let Ok(marker) = serde_json::from_slice::<Marker>(&body) else {
            tracing::warn!(marker = %key, "Turn record: an unreadable marker; removed.");
            return self.store.delete(key).await;
        };
        let prefix = layout::turn(&marker.session_id, &marker.turn_id);
        let manifest_key = Path::from(format!("{prefix}/{}", name::MANIFEST));
        if self.store.get(&manifest_key).await?.is_none() {
            // Its number entry, in case the stop came before it was written.
            let number = layout::number(&marker.session_id, marker.number, &marker.turn_id);
            self.store.put(&number, Bytes::new()).await?;
            let manifest = self.recovered_manifest(&marker, &prefix).await?;
            let body = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
            self.store.create(&manifest_key, Bytes::from(body)).await?;
            self.stats
                .incomplete
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(turn = %marker.turn_id, session = %marker.session_id, "Turn record: finished a record left open, as incomplete.");
        }
        self.store.delete(key).await
    }

    /// The manifest of a turn whose node stopped: the artifacts that made it to the
    /// store (the segments joined first), and what is missing because of the stop.
    async fn recovered_manifest(
        &self,
        marker: &Marker,
        prefix: &Path,
    ) -> Result<Manifest, turngate_store::Error> {
        let mut objects = self.store.list(prefix).await?;
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        let relative = |p: &Path| {
            p.as_ref()
                .strip_prefix(prefix.as_ref())
                .unwrap_or("")
                .trim_start_matches('/')
                .to_owned()
        };
        let mut joined = Vec::new();
        let mut artifacts = Vec::new();
        for meta in &objects {
            let name = relative(&meta.location);
            if name == name::AUDIO_RECEIVED {
                continue;
            }
            let Some(bytes) = self.store.get(&meta.location).await? else {
                continue;
            };
            if name.starts_with("audio/received/") {
                joined.extend_from_slice(&bytes);
            }
            artifacts.push(Artifact::of(&name, &bytes, name::content_type(&name), 0));
        }
        let stopped = |name: &str| Missing {
            name: name.into(),
            reason: "node_stopped".into(),
        };
        let mut missing = vec![stopped("outcome")];
        // The spans were in the stopped process's memory.
        if !artifacts.iter().any(|a| a.name == name::SPANS) {
            missing.push(stopped(name::SPANS));
        }
        let images = artifacts
            .iter()
            .filter(|a| a.name.starts_with("images/"))
            .count() as u32;
        let stream = turngate_store::ogg::Summary::of(&joined);
        if joined.is_empty() {
            missing.push(stopped(name::AUDIO_RECEIVED));
        } else {
            let key = Path::from(format!("{prefix}/{}", name::AUDIO_RECEIVED));
            let entry = Artifact::of(name::AUDIO_RECEIVED, &joined, "audio/ogg", 0);
            self.store.put(&key, Bytes::from(joined)).await?;
            artifacts.push(entry);
        }
        Ok(Manifest {
            format: manifest::FORMAT.into(),
            turn_id: marker.turn_id.clone(),
            session_id: marker.session_id.clone(),
            node_id: marker.node_id.clone(),
            trace_id: marker.turn_id.clone(),
            root_span_id: marker.root_span_id.clone(),
            number: marker.number,
            cause: marker.cause.clone(),
            record_state: RecordState::Incomplete,
            missing,
            timings: Timings {
                started: Moment {
                    at: marker.started.clone(),
                    offset_ms: 0,
                },
                ..Timings::default()
            },
            counters: Counters {
                packets_recorded: stream.packets,
                concealment_packets: stream.concealment_packets,
                audio_ms: (stream.granule * 1000 / u64::from(GRANULE_RATE)) as u32,
                images,
                ..Counters::default()
            },
            artifacts,
            config: self.shape.clone(),
            subject: marker.subject.clone(),
            ..Manifest::default()
        })
    }
}

/// A lease's renewal period: a third of it.
pub(super) fn renewal(lease_ms: u64) -> Duration {
    Duration::from_millis((lease_ms / 3).max(1))
}

/// How often `serve` deletes expired records.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// The node's upkeep for as long as the process runs, each in a task of its own (a
/// long sweep must not hold up the lease): the spool's replay, [`Recorder::keep_lease`]
/// every third of a lease, and a retention sweep at start and hourly. Ticks missed
/// while the store was slow are not made up in a burst.
pub fn spawn_upkeep(recorder: Arc<Recorder>) {
    let spool = Arc::clone(&recorder);
    tokio::spawn(async move { spool.drain_spool().await });
    let lease = Arc::clone(&recorder);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(renewal(lease.settings.lease_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            lease.keep_lease().await;
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweeper = turngate_store::retention::Sweeper::default();
        loop {
            tick.tick().await;
            let keep = recorder.settings.retention();
            match sweeper
                .sweep(&recorder.store, keep, std::time::SystemTime::now())
                .await
            {
                Ok(removed) if removed.objects > 0 => tracing::info!(
                    turns = removed.turns,
                    orphans = removed.orphans,
                    objects = removed.objects,
                    "Turn record: deleted expired records."
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "Turn record: the retention sweep failed."),
            }
        }
    });
}
