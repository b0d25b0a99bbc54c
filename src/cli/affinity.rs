//! The `affinity` subcommand: the node label key a reference is advertised under (by
//! `tugboat node`), and a ready-to-paste nodeAffinity that prefers, or requires, a node whose
//! cache holds the model.

use super::Failure;
use clap::Args;
use tugboat::advertise::keys;
use tugboat::errors::FailureKind;
use tugboat::reference::Reference;

#[derive(Args)]
pub struct AffinityArgs {
    /// The model as the pod names it: registry/repository:tag or
    /// registry/repository@sha256:digest (a digest is matched by digest, a tag by tag).
    #[arg(required_unless_present = "name", conflicts_with = "name")]
    reference: Option<String>,
    /// A warm-list entry's `name` instead of a reference.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Print only the requiredDuringSchedulingIgnoredDuringExecution variant.
    #[arg(long, conflicts_with_all = ["preferred", "keys"])]
    required: bool,
    /// Print only the preferredDuringSchedulingIgnoredDuringExecution variant.
    #[arg(long, conflicts_with = "keys")]
    preferred: bool,
    /// Print only the label key, one line.
    #[arg(long)]
    keys: bool,
    /// Weight of the preferred term (1-100).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(1..=100))]
    weight: u8,
}

/// What the label key stands for, and the key.
struct Target {
    what: String,
    key: String,
}

fn target(args: &AffinityArgs) -> Result<Target, Failure> {
    if let Some(name) = &args.name {
        if let Some(problem) = keys::name_problem(name) {
            return Err(Failure::new(
                FailureKind::Input,
                anyhow::anyhow!("--name {name:?}: {problem}"),
            ));
        }
        return Ok(Target {
            what: format!("the warm-list entry named {name}"),
            key: keys::name_key(name),
        });
    }
    let text = args.reference.as_deref().unwrap_or_default();
    let reference: Reference = text
        .parse()
        .map_err(|e: tugboat::reference::ReferenceError| {
            Failure::new(FailureKind::Input, e.into())
        })?;
    Ok(match reference.digest() {
        Some(digest) => Target {
            what: format!(
                "{}/{}@{digest}",
                reference.registry(),
                reference.repository()
            ),
            key: keys::digest_key(digest),
        },
        None => Target {
            what: format!(
                "{}/{}:{}",
                reference.registry(),
                reference.repository(),
                reference.tag_or_latest()
            ),
            key: keys::tag_key(&reference),
        },
    })
}

pub fn run(args: AffinityArgs) -> Result<(), Failure> {
    let target = target(&args)?;
    if args.keys {
        println!("{}", target.key);
        return Ok(());
    }
    let key = &target.key;
    let preferred = format!(
        "affinity:\n  nodeAffinity:\n    preferredDuringSchedulingIgnoredDuringExecution:\n      \
         - weight: {}\n        preference:\n          matchExpressions:\n            \
         - key: {key}\n              operator: Exists\n",
        args.weight
    );
    let required = format!(
        "affinity:\n  nodeAffinity:\n    requiredDuringSchedulingIgnoredDuringExecution:\n      \
         nodeSelectorTerms:\n        - matchExpressions:\n            \
         - key: {key}\n              operator: Exists\n"
    );
    let header = format!(
        "# Nodes whose tugboat cache holds {} carry the label\n#   {key}\n\
         # (tugboat node advertises it while the model is complete in the cache).\n",
        target.what
    );
    if args.required {
        print!("{header}# Only onto such a node: the pod stays Pending until one holds the model.\n{required}");
    } else if args.preferred {
        print!("{header}# Onto such a node when one can take the pod, else anywhere.\n{preferred}");
    } else {
        print!(
            "{header}#\n# Preferred: onto such a node when one can take the pod, else anywhere.\n\
             # Paste under the pod template's spec:\n{preferred}---\n\
             # Required: only onto such a node; the pod stays Pending until one holds the model\n\
             # (keep it on the warm list so some node does):\n{required}"
        );
    }
    Ok(())
}
