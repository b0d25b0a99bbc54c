//! The `warm` subcommand: one pass over a warm list (for a Job or a CronJob).

use super::{Failure, PolicyArgs, RegistryArgs};
use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tugboat::errors::FailureKind;
use tugboat::warm::{parse_labels, warm_once, WarmList, WarmState};

#[derive(Args)]
pub struct WarmArgs {
    /// The warm list (YAML: interval, models[].reference, pullPolicy, nodeSelector).
    file: PathBuf,
    /// The cache to fill.
    #[arg(long, env = "TUGBOAT_CACHE", default_value = "/var/lib/tugboat")]
    cache: PathBuf,
    /// This node's labels as k=v,k2=v2, matched against each entry's nodeSelector.
    #[arg(long, env = "TUGBOAT_NODE_LABELS", value_parser = parse_labels, default_value = "")]
    node_labels: BTreeMap<String, String>,
    /// Blobs downloaded at once per model.
    #[arg(long, env = "TUGBOAT_CONCURRENCY", default_value_t = 4)]
    concurrency: usize,
    /// One JSON array of entry states on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub async fn run(args: WarmArgs) -> Result<(), Failure> {
    let list = WarmList::load(&args.file).map_err(Failure::classified)?;
    let policy = args.policy.load()?;
    let mut options = args.registry.options()?;
    options.redirect_guard = policy.as_ref().and_then(|p| p.redirect_guard());
    let client = tugboat::registry::RegistryClient::new(options).map_err(Failure::classified)?;
    let statuses = warm_once(
        &list,
        &args.node_labels,
        &args.cache,
        &client,
        args.concurrency,
        policy.as_ref(),
        false,
    )
    .await;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&statuses).map_err(anyhow::Error::from)?
        );
    } else {
        for status in &statuses {
            println!(
                "{:<16} {} {}",
                format!("{:?}", status.state),
                status.reference,
                status
                    .error
                    .as_deref()
                    .or(status.digest.as_deref())
                    .unwrap_or("")
            );
        }
    }
    let failed: Vec<_> = statuses
        .iter()
        .filter(|s| s.state == WarmState::Failed)
        .collect();
    if let Some(first) = failed.first() {
        // The exit code of the first failure's kind, as `tugboat pull` of it would exit.
        let failed = failed.len();
        return Err(Failure::new(
            first.kind.unwrap_or(FailureKind::Other),
            anyhow::anyhow!(
                "{failed} of {} model(s) could not be warmed",
                statuses.len()
            ),
        ));
    }
    Ok(())
}
