//! `tugboat kitops-init`: the contract of KitOps' init-container image (kitops-init), read from
//! the same environment variables with the same meaning, so an existing init-container spec
//! works with its image swapped for tugboat's (the image runs this when started without
//! arguments and MODELKIT_REF is set):
//! - MODELKIT_REF (required); UNPACK_PATH (default `/home/user/modelkit/`); UNPACK_FILTER
//!   (default `model`, in `kit unpack --filter` syntax, see `artifact::kit_filter`);
//!   EXTRA_FLAGS (default `--ignore-existing`), the kit flags that have a meaning here;
//! - COSIGN_KEY: the ModelKit must carry a cosign signature by that key, an enforced signature
//!   rule added to the node policy; keyless verification (COSIGN_CERT_IDENTITY,
//!   COSIGN_CERT_OIDC_ISSUER) is refused rather than skipped.
//!
//! The rest is `tugboat pull`: its TUGBOAT_* variables (cache, credentials, policy) apply too.

use super::{parse_reference, Failure, Prepared, PullOptions};
use clap::Args;
use std::path::{Path, PathBuf};
use tugboat::artifact::kit_filter::{self, KitFilter};
use tugboat::errors::FailureKind;
use tugboat::policy::Policy;

/// The name the COSIGN_KEY requirement goes by (in logs and refusals).
const COSIGN_RULE: &str = "COSIGN_KEY";

#[derive(Args)]
pub struct KitopsInitArgs {
    /// The ModelKit: registry/repository:tag or @sha256:digest (also oci://..., kit://...).
    #[arg(long = "modelkit-ref", env = "MODELKIT_REF", value_name = "REF", value_parser = modelkit_ref)]
    modelkit_ref: String,
    /// Directory to unpack into (created if missing).
    #[arg(
        long = "unpack-path",
        env = "UNPACK_PATH",
        value_name = "DIR",
        default_value = DEFAULT_UNPACK_PATH,
        value_parser = unpack_path
    )]
    unpack_path: PathBuf,
    /// What to unpack, as `kit unpack --filter` reads it: TYPES[:NAMES], TYPES a comma list of
    /// kitfile, model (with its parts), datasets, code, docs; NAMES Kitfile entry names or
    /// paths, e.g. `model,kitfile` or `datasets:validation`. A filter with names reads the
    /// ModelKit's Kitfile from the registry first (two small requests).
    #[arg(
        long = "unpack-filter",
        env = "UNPACK_FILTER",
        value_name = "FILTER",
        default_value = DEFAULT_FILTER,
        value_parser = unpack_filter
    )]
    unpack_filter: KitFilter,
    /// More `kit unpack` flags, space-separated: -d/--dir DIR (instead of UNPACK_PATH),
    /// -f/--filter F (one more filter: a layer is unpacked if any filter takes it),
    /// --plain-http, --tls-verify=false (this registry over HTTP or unverified TLS), and
    /// -o/--overwrite, -i/--ignore-existing, -v (accepted: tugboat replaces what it places
    /// with verified files, and skips a destination whose stamp shows the model is there).
    #[arg(
        long = "extra-flags",
        env = "EXTRA_FLAGS",
        value_name = "FLAGS",
        allow_hyphen_values = true,
        default_value = "--ignore-existing",
        value_parser = ExtraFlags::parse
    )]
    extra_flags: ExtraFlags,
    /// A cosign public key file (PEM, ECDSA P-256 or Ed25519): the ModelKit must be signed by
    /// it (its exact digest), or nothing is unpacked (exit 7). Checked as cosign checks the
    /// signature, without consulting the Rekor transparency log.
    #[arg(long = "cosign-key", env = "COSIGN_KEY", value_name = "FILE")]
    cosign_key: Option<String>,
    /// Keyless verification: refused (tugboat verifies with keys only: use COSIGN_KEY).
    #[arg(long, env = "COSIGN_CERT_IDENTITY", value_name = "IDENTITY")]
    cosign_cert_identity: Option<String>,
    /// Keyless verification: refused, as COSIGN_CERT_IDENTITY.
    #[arg(long, env = "COSIGN_CERT_OIDC_ISSUER", value_name = "URL")]
    cosign_cert_oidc_issuer: Option<String>,
    #[command(flatten)]
    options: PullOptions,
}

const DEFAULT_UNPACK_PATH: &str = "/home/user/modelkit/";
const DEFAULT_FILTER: &str = "model";

// Empty values mean the default, as `${UNPACK_PATH:-...}` in kitops-init's entrypoint: a spec
// may well say `value: ""`.
fn unpack_path(text: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(match text.trim() {
        "" => DEFAULT_UNPACK_PATH,
        path => path,
    }))
}

fn modelkit_ref(text: &str) -> Result<String, String> {
    match text.trim() {
        "" => Err(
            "MODELKIT_REF is empty: name the ModelKit to unpack (registry/repository:tag)".into(),
        ),
        reference => Ok(reference.to_string()),
    }
}

fn unpack_filter(text: &str) -> Result<KitFilter, String> {
    match text.trim() {
        "" => DEFAULT_FILTER,
        filter => filter,
    }
    .parse()
    .map_err(|e: kit_filter::FilterError| e.to_string())
}

fn input(message: String) -> Failure {
    Failure::new(FailureKind::Input, anyhow::anyhow!(message))
}

pub async fn run(args: KitopsInitArgs) -> Result<(), Failure> {
    let extra = args.extra_flags.clone();
    let reference = parse_reference(&args.modelkit_ref)?;
    let key = cosign_key(&args)?;
    let options = &args.options;

    let mut filters = vec![args.unpack_filter.clone()];
    filters.extend(extra.filters);
    let mut selection = options
        .select
        .selection_with_kinds(&kit_filter::kinds(&filters), "UNPACK_FILTER")?;
    let dest = extra.dir.unwrap_or(args.unpack_path);

    let mut registry = options.registry.options()?;
    registry.endpoints.plain_http |= extra.plain_http;
    if extra.tls_verify_off {
        registry
            .endpoints
            .insecure_hosts
            .push(reference.registry().to_string());
    }
    let policy = match &key {
        Some(key) => Some(
            Policy::with_cosign_rule(options.policy.path(), COSIGN_RULE, key)
                .map_err(Failure::classified)?,
        ),
        None => options.policy.load()?,
    };
    let required = key.as_ref().map(|_| COSIGN_RULE);
    let prepared = Prepared::new(&reference, policy, required, registry)?;

    if kit_filter::names_entries(&filters) {
        if options.pull_policy == tugboat::pull::PullPolicy::Never {
            return Err(input(
                "a filter naming Kitfile entries (TYPES:NAMES) reads the Kitfile from the \
                 registry, which --pull-policy Never forbids: filter by type only"
                    .to_string(),
            ));
        }
        prepared
            .gate
            .before_contact(&reference)
            .await
            .map_err(Failure::classified)?;
        let fetched = tugboat::inspect::manifest_and_config(&prepared.client, &reference)
            .await
            .map_err(Failure::classified)?;
        let config = fetched
            .config
            .filter(|_| tugboat::artifact::kitops::detect(&fetched.manifest))
            .ok_or_else(|| {
                input(format!(
                    "{reference} is not a KitOps ModelKit with a Kitfile, and the filter names \
                     Kitfile entries (TYPES:NAMES): filter by type only (e.g. UNPACK_FILTER=model)"
                ))
            })?;
        let layers = kit_filter::select_layers(&filters, &fetched.manifest, &config)
            .map_err(|e| input(format!("{reference}: {e}")))?;
        selection = selection.with_layers(layers);
    }
    tracing::info!(
        %reference,
        dest = %dest.display(),
        filter = %args.unpack_filter,
        signature = if key.is_some() { "COSIGN_KEY" } else { "none" },
        "unpacking a ModelKit as KitOps' init container does"
    );
    let layout = options
        .limits
        .layout_with(selection, options.select.variant());
    prepared.pull(reference, Some(dest), layout, options).await
}

/// COSIGN_KEY as a key file, checked now so a wrong key stops before any download; keyless
/// settings without it are refused.
fn cosign_key(args: &KitopsInitArgs) -> Result<Option<PathBuf>, Failure> {
    let given = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    if let Some(key) = given(&args.cosign_key) {
        if key.contains("://") || key.starts_with("pkcs11:") {
            return Err(input(format!(
                "COSIGN_KEY {key:?}: tugboat reads cosign public keys from files only, not URLs, \
                 KMS or Kubernetes-secret URIs; mount the public key (cosign.pub, from a Secret or \
                 ConfigMap) and set COSIGN_KEY to its path"
            )));
        }
        tugboat::policy::signatures::keys::Key::load(Path::new(&key))
            .map_err(|e| input(format!("COSIGN_KEY: {e}")))?;
        return Ok(Some(PathBuf::from(key)));
    }
    if given(&args.cosign_cert_identity).is_some() || given(&args.cosign_cert_oidc_issuer).is_some()
    {
        return Err(input(
            "COSIGN_CERT_IDENTITY / COSIGN_CERT_OIDC_ISSUER ask for keyless verification (a Fulcio \
             certificate and a Rekor entry), which tugboat cannot check, and it will not unpack \
             unverified what was meant to be verified: sign the ModelKit with a key (`cosign \
             sign --key cosign.key REF`) and set COSIGN_KEY to the mounted public key, or unset \
             both variables to unpack without verification"
                .to_string(),
        ));
    }
    Ok(None)
}

/// What EXTRA_FLAGS change, each kit flag mapped onto its meaning here.
#[derive(Clone, Debug, Default, PartialEq)]
struct ExtraFlags {
    dir: Option<PathBuf>,
    filters: Vec<KitFilter>,
    plain_http: bool,
    tls_verify_off: bool,
}

impl ExtraFlags {
    /// Splits on whitespace as the kitops-init entrypoint does (`read -a`).
    fn parse(text: &str) -> Result<ExtraFlags, String> {
        let mut flags = ExtraFlags::default();
        let mut words = text.split_whitespace();
        let refuse = |word: &str| {
            format!(
                "EXTRA_FLAGS: {word:?} is not a kit unpack flag tugboat maps; remove it (tugboat's \
                 own settings are its TUGBOAT_* variables, see `tugboat kitops-init --help`)"
            )
        };
        while let Some(word) = words.next() {
            let (name, inline) = match word.split_once('=') {
                Some((name, value)) if name.starts_with("--") => (name, Some(value)),
                _ => (word, None),
            };
            let mut value = |what: &str| -> Result<String, String> {
                match inline {
                    Some(v) => Ok(v.to_string()),
                    None => words
                        .next()
                        .map(str::to_string)
                        .ok_or_else(|| format!("EXTRA_FLAGS: {word} needs {what} after it")),
                }
            };
            let boolean = |inline: Option<&str>| -> Result<bool, String> {
                match inline {
                    None | Some("true") => Ok(true),
                    Some("false") => Ok(false),
                    Some(other) => Err(format!(
                        "EXTRA_FLAGS: {name}={other}: expected true or false"
                    )),
                }
            };
            match name {
                "-d" | "--dir" => flags.dir = Some(PathBuf::from(value("a directory")?)),
                "-f" | "--filter" => flags.filters.push(
                    value("a filter")?
                        .parse()
                        .map_err(|e| format!("EXTRA_FLAGS: {e}"))?,
                ),
                "--plain-http" => flags.plain_http = boolean(inline)?,
                "--tls-verify" => flags.tls_verify_off = !boolean(inline)?,
                "-o" | "--overwrite" | "-i" | "--ignore-existing" | "--verbose" => {
                    boolean(inline)?;
                }
                _ if name.len() > 2 && name.starts_with("-d") && !name.starts_with("--") => {
                    flags.dir = Some(PathBuf::from(&name[2..]));
                }
                _ if name.len() > 2 && name.starts_with("-f") && !name.starts_with("--") => {
                    flags
                        .filters
                        .push(name[2..].parse().map_err(|e| format!("EXTRA_FLAGS: {e}"))?);
                }
                _ if name.starts_with("-v") && name[1..].bytes().all(|b| b == b'v') => {}
                _ => return Err(refuse(word)),
            }
        }
        Ok(flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_flags_map_onto_their_meaning() {
        assert_eq!(
            ExtraFlags::parse("--ignore-existing").unwrap(),
            ExtraFlags::default()
        );
        let flags = ExtraFlags::parse(
            "-o --plain-http --dir /models -f datasets:validation --filter=kitfile -vv",
        )
        .unwrap();
        assert_eq!(flags.dir, Some(PathBuf::from("/models")));
        assert_eq!(flags.filters.len(), 2);
        assert!(flags.plain_http && !flags.tls_verify_off);
        let flags = ExtraFlags::parse("--tls-verify=false -d/m").unwrap();
        assert!(flags.tls_verify_off);
        assert_eq!(flags.dir, Some(PathBuf::from("/m")));
        assert!(
            !ExtraFlags::parse("--tls-verify=true")
                .unwrap()
                .tls_verify_off
        );
    }

    #[test]
    fn unknown_or_broken_extra_flags_are_refused_with_the_flag() {
        for (bad, says) in [
            ("--proxy http://p:3128", "\"--proxy\""),
            ("--cert /c.pem", "\"--cert\""),
            ("--dir", "needs a directory"),
            ("-f weights", "invalid filter type"),
            ("--plain-http=maybe", "expected true or false"),
        ] {
            let e = ExtraFlags::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
