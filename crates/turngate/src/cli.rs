//! The commands that read or prune the turn record with the server's configuration,
//! whether or not a gateway is running: `turngate turn show|export`, `turngate gc`,
//! `turngate delete`.

use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Context;
use clap::{Args, Subcommand};
use turngate_store::manifest::Manifest;
use turngate_store::retention::{self, Removed, Selector};
use turngate_store::{Store, layout, read};

use crate::config::{self, Config};

/// `--config`, as `serve` takes it.
#[derive(Args)]
pub struct ConfigFile {
    /// TOML configuration file (the one `serve` runs with): `[record]` says where records are.
    #[arg(long, env = "TURNGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigFile {
    fn store(&self) -> anyhow::Result<(Config, Store)> {
        let config = Config::load(&config::Overrides {
            config: self.config.clone(),
            ..config::Overrides::default()
        })?;
        // Reading or pruning a store that is not there is a mistyped location: say so
        // rather than make an empty one and find nothing in it.
        let location = &config.record.store;
        if !location.contains("://") || location.starts_with("file://") {
            let dir = location.trim_start_matches("file://");
            anyhow::ensure!(
                std::path::Path::new(dir).is_dir(),
                "no record store at {dir:?} (record.store / TURNGATE_STORE_URL)"
            );
        }
        let store = Store::open(location)?;
        Ok((config, store))
    }
}

#[derive(Subcommand)]
pub enum TurnCommand {
    /// A turn's record: a readable summary, or its manifest (`--json`).
    Show {
        /// The turn id.
        turn_id: String,
        /// Prints the manifest itself.
        #[arg(long)]
        json: bool,
        /// The session, if more than one recorded this turn id.
        #[arg(long)]
        session: Option<String>,
        #[command(flatten)]
        config: ConfigFile,
    },
    /// A turn's record as a tar file: the manifest first, then every object.
    Export {
        /// The turn id.
        turn_id: String,
        /// The tar file to write.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// The session, if more than one recorded this turn id.
        #[arg(long)]
        session: Option<String>,
        #[command(flatten)]
        config: ConfigFile,
    },
}

/// What `turngate delete` removes.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct DeleteArgs {
    /// Every record of this session.
    #[arg(long)]
    session: Option<String>,
    /// Every record whose session's token had this subject (`sub`).
    #[arg(long)]
    subject: Option<String>,
    /// This turn's records.
    #[arg(long)]
    turn: Option<String>,
}

/// `turngate turn …`.
pub async fn turn(command: TurnCommand) -> anyhow::Result<()> {
    match command {
        TurnCommand::Show {
            turn_id,
            json,
            session,
            config,
        } => {
            let (_, store) = config.store()?;
            let (session, manifest) = find(&store, &turn_id, session).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&manifest)?);
            } else {
                print!("{}", summary(&session, &manifest));
            }
            Ok(())
        }
        TurnCommand::Export {
            turn_id,
            output,
            session,
            config,
        } => {
            let (_, store) = config.store()?;
            let (session, _) = find(&store, &turn_id, session).await?;
            let file = std::fs::File::create(&output)
                .with_context(|| format!("cannot write {}", output.display()))?;
            let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
            let mut names = read::objects(&store, &session, &turn_id).await?;
            // The manifest first.
            names.sort_by_key(|n| n != layout::name::MANIFEST);
            for name in &names {
                let key = layout::artifact(&session, &turn_id, name);
                let Some(bytes) = store.get(&key).await? else {
                    continue;
                };
                let mut header = tar::Header::new_gnu();
                header.set_size(bytes.len() as u64);
                header.set_mode(0o644);
                header.set_mtime(unix_now());
                header.set_cksum();
                tar.append_data(&mut header, format!("{turn_id}/{name}"), &bytes[..])?;
            }
            tar.into_inner()?.flush()?;
            eprintln!("{} objects → {}", names.len(), output.display());
            Ok(())
        }
    }
}

/// `turngate gc`: one retention pass now.
pub async fn gc(config: ConfigFile) -> anyhow::Result<()> {
    let (config, store) = config.store()?;
    let removed = retention::sweep(&store, config.record.retention(), SystemTime::now()).await?;
    report("gc", removed);
    Ok(())
}

/// `turngate delete`.
pub async fn delete(args: DeleteArgs, config: ConfigFile) -> anyhow::Result<()> {
    let (_, store) = config.store()?;
    let selector = match (args.session, args.subject, args.turn) {
        (Some(s), _, _) => Selector::Session(id::<turngate_core::SessionId>("--session", s)?),
        (_, Some(s), _) if !s.is_empty() => Selector::Subject(s),
        (_, _, Some(t)) => Selector::Turn(id::<turngate_core::TurnId>("--turn", t)?),
        _ => anyhow::bail!("say what to delete: --session, --subject (not empty) or --turn"),
    };
    let removed = retention::delete(&store, &selector).await?;
    report("delete", removed);
    if removed.objects == 0 && removed.open == 0 {
        // Not an error: a repeated request finds nothing left, as it should.
        eprintln!("delete: no records matched");
    }
    anyhow::ensure!(
        removed.open == 0,
        "{} turns are being recorded and were left alone (their node would write them back): delete again once they end",
        removed.open
    );
    Ok(())
}

/// `value`, checked to be an id of its kind (32 lowercase hex): anything else could
/// name a wider prefix than one session's or turn's records.
fn id<T: std::str::FromStr>(flag: &str, value: String) -> anyhow::Result<String> {
    value
        .parse::<T>()
        .map(|_| value.clone())
        .map_err(|_| anyhow::anyhow!("{flag} {value:?} is not an id (32 lowercase hex)"))
}

fn report(what: &str, removed: Removed) {
    eprintln!(
        "{what}: {} turns, {} orphaned records, {} objects removed",
        removed.turns, removed.orphans, removed.objects
    );
}

/// The session whose record of `turn` to show: `session` if given, else the only one.
async fn find(
    store: &Store,
    turn: &str,
    session: Option<String>,
) -> anyhow::Result<(String, Manifest)> {
    let sessions = match session {
        Some(s) => vec![s],
        None => read::sessions_of(store, turn).await?,
    };
    let session = match sessions.as_slice() {
        [] => anyhow::bail!("no record of turn {turn} in {}", store.location()),
        [one] => one.clone(),
        more => anyhow::bail!(
            "turn {turn} was recorded by {} sessions ({}): pick one with --session",
            more.len(),
            more.join(", ")
        ),
    };
    let manifest = read::manifest(store, &session, turn)
        .await?
        .with_context(|| format!("turn {turn} of session {session} has no manifest (being recorded, or partly deleted)"))?;
    Ok((session, manifest))
}

/// A readable account of a record.
fn summary(session: &str, m: &Manifest) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "turn       {}", m.turn_id);
    let _ = writeln!(
        out,
        "session    {session} (turn {}, node {})",
        m.number, m.node_id
    );
    let _ = writeln!(
        out,
        "status     {} ({}), record {}",
        m.status.as_deref().unwrap_or("unknown"),
        m.reason.as_deref().unwrap_or("no reason"),
        serde_json::to_value(m.record_state)
            .map_or_else(|_| String::new(), |v| v.as_str().unwrap_or("").to_owned())
    );
    for missing in &m.missing {
        let _ = writeln!(out, "missing    {} ({})", missing.name, missing.reason);
    }
    let _ = writeln!(out, "started    {}", m.timings.started.at);
    if let Some(done) = &m.timings.completed {
        let _ = writeln!(out, "completed  {} (+{} ms)", done.at, done.offset_ms);
    }
    for (stage, ms) in &m.timings.stages_ms {
        let _ = writeln!(out, "  {stage:<16} {ms} ms");
    }
    let _ = writeln!(
        out,
        "audio      {} ms, {} packets, {} concealment packets",
        m.counters.audio_ms, m.counters.packets_recorded, m.counters.concealment_packets
    );
    if let Some(t) = &m.transcript {
        let _ = writeln!(out, "transcript {t}");
    }
    for d in &m.descriptions {
        let _ = writeln!(out, "image      {}: {}", d.blob_id, d.description);
    }
    if let Some(a) = &m.answer {
        let _ = writeln!(out, "answer     {a}");
    }
    let _ = writeln!(out, "artifacts");
    for a in &m.artifacts {
        let _ = writeln!(
            out,
            "  {:<40} {:>9} B  {:<24} {}",
            a.name, a.size, a.content_type, a.sha256
        );
    }
    out
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
