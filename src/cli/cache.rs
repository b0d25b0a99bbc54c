//! The `cache` subcommands: list, collect garbage, verify and remove models in the node cache.

use super::{human_bytes, Failure};
use anyhow::Context as _;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tugboat::cache::{Cache, GcPolicy};
use tugboat::errors::FailureKind;
use tugboat::reference::Reference;
use tugboat::size::parse_size;

#[derive(Subcommand)]
pub enum CacheCommand {
    /// List the models held in the cache: reference, digest, files, size, last use, leases.
    Ls {
        #[command(flatten)]
        cache: CacheDir,
        /// One JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
    /// One garbage-collection pass: stale partial downloads, unreferenced blobs and, above the
    /// size limit, least-recently-used unleased models.
    #[command(
        after_help = "Examples:\n  tugboat cache gc --dry-run\n  tugboat cache gc --max-size 500GiB"
    )]
    Gc {
        #[command(flatten)]
        cache: CacheDir,
        /// Evict least-recently-used models while the cache is larger than this (e.g. 500GiB).
        #[arg(long, env = "TUGBOAT_CACHE_MAX_SIZE", value_parser = parse_size)]
        max_size: Option<u64>,
        /// Also evict while the cache filesystem is fuller than this percentage.
        #[arg(long, env = "TUGBOAT_CACHE_HIGH_WATERMARK", value_parser = parse_percent)]
        high_watermark: Option<f64>,
        /// Evict down to this percentage of --max-size (or of the filesystem).
        #[arg(long, env = "TUGBOAT_CACHE_LOW_WATERMARK", default_value = "80", value_parser = parse_percent)]
        low_watermark: f64,
        /// Remove partial downloads untouched for this many hours.
        #[arg(long, default_value_t = 24)]
        partial_max_age_hours: u64,
        /// Print what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every blob and snapshot file; quarantine corrupt blobs so the next pull
    /// fetches them again. Exits 5 when damage was found.
    Verify {
        #[command(flatten)]
        cache: CacheDir,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Remove a model (by reference or digest) and the blobs only it used. Refuses a model a
    /// mounted volume still holds.
    Rm {
        /// registry/repository:tag or registry/repository@sha256:digest.
        reference: String,
        #[command(flatten)]
        cache: CacheDir,
    },
}

#[derive(Args)]
pub struct CacheDir {
    /// The cache directory.
    #[arg(
        long = "cache",
        env = "TUGBOAT_CACHE",
        default_value = "/var/lib/tugboat"
    )]
    path: PathBuf,
}

impl CacheDir {
    fn open(&self) -> Result<Cache, Failure> {
        Cache::open(&self.path).map_err(Failure::classified)
    }
}

pub fn parse_percent(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{text:?} is not a percentage"))?;
    if !(0.0..=100.0).contains(&value) {
        return Err(format!("{text:?} is not between 0 and 100"));
    }
    Ok(value / 100.0)
}

fn storage(e: tugboat::cache::CacheError) -> Failure {
    Failure::classified(e)
}

pub fn run(command: CacheCommand) -> Result<(), Failure> {
    match command {
        CacheCommand::Ls { cache, json } => ls(&cache.open()?, json),
        CacheCommand::Gc {
            cache,
            max_size,
            high_watermark,
            low_watermark,
            partial_max_age_hours,
            dry_run,
            json,
        } => {
            let policy = GcPolicy {
                max_size,
                high_watermark,
                low_watermark,
                partial_max_age: Duration::from_secs(partial_max_age_hours * 3600),
                dry_run,
                ..GcPolicy::default()
            };
            let report = cache.open()?.gc(&policy).map_err(storage)?;
            if json {
                println!("{}", serde_json::to_string(&report).context("serialising")?);
            } else {
                let verb = if dry_run { "would free" } else { "freed" };
                println!(
                    "{verb} {} ({} -> {}): {} model(s), {} blob(s), {} partial download(s)",
                    human_bytes(report.bytes_freed),
                    human_bytes(report.bytes_before),
                    human_bytes(report.bytes_after),
                    report.snapshots_removed.len(),
                    report.blobs_removed,
                    report.partials_removed
                );
                for model in &report.snapshots_removed {
                    println!("  {model}");
                }
                if report.still_over_limit {
                    println!("still over the limit: every remaining model is in use (leased)");
                }
            }
            Ok(())
        }
        CacheCommand::Verify { cache, json } => {
            let report = cache.open()?.verify().map_err(storage)?;
            if json {
                println!("{}", serde_json::to_string(&report).context("serialising")?);
            } else {
                println!(
                    "checked {} blob(s), {}, and {} unpacked file(s), {}: {} corrupt blob(s), {} damaged model(s)",
                    report.blobs_checked,
                    human_bytes(report.bytes_checked),
                    report.files_checked,
                    human_bytes(report.file_bytes_checked),
                    report.corrupt_blobs.len(),
                    report.snapshots_dropped.len() + report.leased_damaged.len()
                );
                for digest in &report.corrupt_blobs {
                    println!("  corrupt (quarantined): {digest}");
                }
                for digest in &report.snapshots_dropped {
                    println!("  model dropped, the next pull rebuilds it: {digest}");
                }
                for digest in &report.leased_damaged {
                    println!("  damaged but mounted, kept until unpublished: {digest}");
                }
            }
            if report.corrupt_blobs.is_empty()
                && report.snapshots_dropped.is_empty()
                && report.leased_damaged.is_empty()
            {
                Ok(())
            } else {
                Err(Failure::new(
                    FailureKind::Integrity,
                    anyhow::anyhow!(
                        "the cache held damaged content (see above); pulls will fetch it again"
                    ),
                ))
            }
        }
        CacheCommand::Rm { reference, cache } => rm(&cache.open()?, &reference),
    }
}

fn ls(cache: &Cache, json: bool) -> Result<(), Failure> {
    let inventory = cache.inventory().map_err(storage)?;
    let leases = cache.leases().map_err(storage)?;
    if json {
        let rows: Vec<_> = inventory
            .snapshots
            .iter()
            .map(|s| {
                serde_json::json!({
                    "reference": s.info.reference,
                    "digest": s.info.digest,
                    "format": s.info.format,
                    "files": s.info.files.len(),
                    "size": s.info.total_size(),
                    "last_used": unix(s.last_used),
                    "leases": leases.iter().filter(|l| l.snapshot == s.info.digest).map(|l| &l.holder).collect::<Vec<_>>(),
                    "path": cache.snapshot_dir(&s.info.digest),
                })
            })
            .collect();
        println!("{}", serde_json::to_string(&rows).context("serialising")?);
        return Ok(());
    }
    println!(
        "{:<50} {:<71} {:>6} {:>10} {:>10} {:>6}",
        "REFERENCE", "DIGEST", "FILES", "SIZE", "LAST USE", "LEASES"
    );
    for s in &inventory.snapshots {
        println!(
            "{:<50} {:<71} {:>6} {:>10} {:>10} {:>6}",
            s.info.reference,
            s.info.digest,
            s.info.files.len(),
            human_bytes(s.info.total_size()),
            ago(s.last_used),
            leases
                .iter()
                .filter(|l| l.snapshot == s.info.digest)
                .count()
        );
    }
    println!(
        "{} model(s), {} blob(s), {} on disk",
        inventory.snapshots.len(),
        inventory.blobs.len(),
        human_bytes(inventory.total_bytes())
    );
    Ok(())
}

fn rm(cache: &Cache, text: &str) -> Result<(), Failure> {
    let reference: Reference = text
        .parse()
        .map_err(|e: tugboat::reference::ReferenceError| {
            Failure::new(FailureKind::Input, e.into())
        })?;
    let digest = match reference.digest() {
        Some(digest) => Some(digest.clone()),
        None => cache
            .tag(&tugboat::pull::tag_key(&reference))
            .map_err(storage)?,
    };
    let inventory = cache.inventory().map_err(storage)?;
    let targets: Vec<_> = inventory
        .snapshots
        .iter()
        .filter(|s| {
            Some(&s.info.digest) == digest.as_ref() || s.info.reference == reference.to_string()
        })
        .collect();
    if targets.is_empty() {
        return Err(Failure::new(
            FailureKind::NotFound,
            anyhow::anyhow!("{reference} is not in the cache {}", cache.root().display()),
        ));
    }
    for target in &targets {
        if cache.is_leased(&target.info.digest).map_err(storage)? {
            return Err(in_use(cache, &target.info.digest));
        }
    }
    let before = inventory.total_bytes();
    for target in &targets {
        // Decided again under the snapshot's lock: a pull or publish may have taken it since.
        if !cache
            .remove_snapshot_unless_leased(&target.info.digest)
            .map_err(storage)?
        {
            return Err(in_use(cache, &target.info.digest));
        }
        println!("removed {} ({})", target.info.reference, target.info.digest);
    }
    cache
        .forget_tag(&tugboat::pull::tag_key(&reference))
        .map_err(storage)?;
    // Blobs no remaining model uses go too (grace 0: the user asked for this).
    let report = cache
        .gc(&GcPolicy {
            blob_grace: Duration::ZERO,
            ..GcPolicy::default()
        })
        .map_err(storage)?;
    println!(
        "freed {}",
        human_bytes(before.saturating_sub(report.bytes_after))
    );
    Ok(())
}

/// The refusal of `cache rm` for a model something holds, naming each holder.
fn in_use(cache: &Cache, snapshot: &tugboat::digest::Digest) -> Failure {
    let holders: Vec<String> = cache
        .leases()
        .unwrap_or_default()
        .into_iter()
        .filter(|l| &l.snapshot == snapshot)
        .map(|l| describe_holder(&l))
        .collect();
    let holders = if holders.is_empty() {
        "a lease file that cannot be read".to_string()
    } else {
        holders.join(", ")
    };
    Failure::new(
        FailureKind::Other,
        anyhow::anyhow!(
            "{snapshot} is in use by {holders}; unpublish the volume, take the model off the warm list, or wait for the pull to finish"
        ),
    )
}

/// A lease's holder in words.
fn describe_holder(lease: &tugboat::cache::Lease) -> String {
    match lease.labels.get("owner").map(String::as_str) {
        Some("csi") => format!(
            "volume {} mounted at {}",
            lease.labels.get("volume_id").map_or("?", String::as_str),
            lease
                .target
                .as_deref()
                .unwrap_or(std::path::Path::new("?"))
                .display()
        ),
        Some("work") => format!(
            "`{}` (pid {})",
            lease.reference,
            lease.labels.get("pid").map_or("?", String::as_str)
        ),
        Some("warm") => format!("the node's warm list ({})", lease.reference),
        _ => format!("{} ({})", lease.holder, lease.reference),
    }
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn ago(time: SystemTime) -> String {
    let seconds = SystemTime::now()
        .duration_since(time)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match seconds {
        0..=119 => format!("{seconds}s ago"),
        120..=7199 => format!("{}m ago", seconds / 60),
        7200..=172_799 => format!("{}h ago", seconds / 3600),
        _ => format!("{}d ago", seconds / 86400),
    }
}
