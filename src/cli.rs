//! Command-line definitions and the glue from each subcommand to the library.

mod affinity;
mod cache;
mod formats;
mod kitops;
mod node;
mod warm;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use tugboat::artifact::Format;
use tugboat::errors::{Classify, FailureKind};
use tugboat::policy::{Gate, Mode, Policy};
use tugboat::progress::Progress;
use tugboat::pull::{PullPolicy, PullRequest};
use tugboat::reference::Reference;
use tugboat::registry::{CredentialStore, EndpointPolicy, RegistryClient, RegistryOptions};

/// `--policy`: the node policy (access and signature rules), shared by pull, warm and node.
#[derive(Args)]
pub struct PolicyArgs {
    /// Node policy YAML: which registries/repositories each namespace and mode may use, hosts
    /// never contacted, node credentials, size caps, and required signatures.
    #[arg(
        long,
        value_name = "FILE",
        env = "TUGBOAT_POLICY",
        alias = "signature-policy"
    )]
    policy: Option<PathBuf>,
}

impl PolicyArgs {
    pub fn path(&self) -> Option<&std::path::Path> {
        self.policy.as_deref()
    }

    pub fn load(&self) -> Result<Option<std::sync::Arc<Policy>>, Failure> {
        self.policy
            .as_deref()
            .map(Policy::load)
            .transpose()
            .map_err(Failure::classified)
    }
}

#[derive(Parser)]
#[command(
    name = "tugboat",
    version,
    about = "Bring AI models from OCI registries onto Kubernetes nodes: verified, resumable, cached.",
    long_about = "Bring AI models from OCI registries (Harbor, distribution, any OCI registry) onto \
Kubernetes nodes, verified byte for byte.\n\n\
Typical init container:\n  tugboat pull harbor.example.com/ml-models/tinyllama:v1.0.0-gguf --dest /models\n\n\
Exit codes (every command): 0 ok, 2 bad usage, reference or artifact, 3 refused by the registry \
(not found, authentication, permission), 4 network, 5 integrity (digest or size mismatch), \
6 local storage (disk full, permissions), 7 signature required or invalid (--policy), 1 other. \
Access-policy refusals exit 3."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (error, warn, info, debug, or a tracing filter like tugboat=debug).
    #[arg(long, global = true, env = "TUGBOAT_LOG")]
    log: Option<String>,
    /// Log lines as JSON objects instead of text.
    #[arg(long, global = true, env = "TUGBOAT_LOG_JSON")]
    log_json: bool,
    /// Only check the command line: parse the flags and TUGBOAT_* variables, then exit 0 (2
    /// when they are refused) without running anything. A flag only, never read from the
    /// environment, so no pod env can turn a pull into a no-op.
    #[arg(long, global = true)]
    pub check_args: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Pull a model into a directory (and the node cache), verifying every byte.
    #[command(
        after_help = "Examples:\n  tugboat pull harbor.example.com/ml-models/tinyllama:v1.0.0-gguf --dest /models\n  \
tugboat pull registry.local:5000/m/tiny@sha256:<hex> --dest /models --cache /var/lib/tugboat --plain-http\n  \
tugboat pull REF --dest /models --pull-policy Never   # fail unless cached\n  \
tugboat pull --cache=/var/lib/tugboat tugboat://harbor.example.com/ml-models/qwen:v1 /mnt/models\n                                  \
# as KServe's ClusterStorageContainer runs it: storageUri and /mnt/models appended"
    )]
    Pull(PullArgs),
    /// Unpack a ModelKit as KitOps' init container does, configured by its environment
    /// variables (MODELKIT_REF, UNPACK_PATH, UNPACK_FILTER, EXTRA_FLAGS, COSIGN_KEY). The image
    /// runs this when started without arguments and MODELKIT_REF is set, so a KitOps
    /// init-container spec works with only its image swapped.
    #[command(
        name = "kitops-init",
        after_help = "Example (KitOps' init-container spec, image swapped, no command or args):\n  \
MODELKIT_REF=jozu.ml/jozu/llama3-8b:8B-instruct-q4_0 UNPACK_PATH=/modelkit UNPACK_FILTER=model tugboat\n\n\
Not supported, refused with what to use instead: keyless verification (COSIGN_CERT_IDENTITY,\n\
COSIGN_CERT_OIDC_ISSUER), COSIGN_KEY as a URL or KMS URI, kit flags in EXTRA_FLAGS other than\n\
-d/--dir, -f/--filter, -o/--overwrite, -i/--ignore-existing, --plain-http, --tls-verify, -v."
    )]
    KitopsInit(kitops::KitopsInitArgs),
    /// Push a directory as an ORAS-style artifact (one layer per file, titled by its path).
    #[command(
        after_help = "Example:\n  tugboat push ./tinyllama harbor.example.com/ml-models/tinyllama:v1 --annotation org.cnai.model.name=tinyllama"
    )]
    Push(PushArgs),
    /// Show an artifact's format, model metadata, files and what a pull would fetch, reading
    /// only its manifest and config.
    #[command(
        after_help = "Examples:\n  tugboat inspect harbor.example.com/ml-models/tinyllama:v1\n  \
tugboat inspect REF --only weights --json"
    )]
    Inspect(formats::InspectArgs),
    /// Run the CSI node plugin: mount models into pods as read-only volumes.
    #[command(
        after_help = "Example (a DaemonSet container):\n  tugboat node --csi-endpoint unix:///csi/csi.sock --node-id $NODE_NAME --cache /var/lib/tugboat"
    )]
    Node(node::NodeArgs),
    /// Pull every model of a warm list into the cache once, then exit (a Job's work).
    #[command(
        after_help = "Example:\n  tugboat warm /etc/tugboat/warm.yaml --cache /var/lib/tugboat"
    )]
    Warm(warm::WarmArgs),
    /// Inspect and maintain the on-node cache.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Print the node label a model is advertised under and a nodeAffinity (preferred and
    /// required) that schedules a pod onto a node whose cache holds it.
    #[command(
        after_help = "Examples:\n  tugboat affinity harbor.example.com/ml-models/tinyllama:v1.0.0-gguf\n  \
tugboat affinity harbor.example.com/ml-models/tinyllama@sha256:<hex> --required\n  \
tugboat affinity --name tinyllama --keys"
    )]
    Affinity(affinity::AffinityArgs),
    /// Print the version.
    Version,
}

#[derive(Args)]
struct PullArgs {
    /// The model: registry[:port]/repository[:tag][@sha256:digest], also written as a URI:
    /// oci://..., tugboat://... (a KServe storageUri), kit://...
    reference: String,
    /// Where to place the model's files: the same as --dest (KServe's storage-initializer
    /// contract appends `storageUri /mnt/models`).
    #[arg(value_name = "DEST")]
    dest_dir: Option<PathBuf>,
    /// Directory the model's files are placed in (created if missing).
    #[arg(long, env = "TUGBOAT_DEST")]
    dest: Option<PathBuf>,
    #[command(flatten)]
    options: PullOptions,
}

/// What a pull does besides naming the model and where it goes (shared with `kitops-init`).
#[derive(Args)]
struct PullOptions {
    /// The shared content-addressed cache (e.g. a hostPath). Without it, DEST/.tugboat holds the
    /// download state and a stamp that lets a re-run skip the pull.
    #[arg(long, env = "TUGBOAT_CACHE")]
    cache: Option<PathBuf>,
    /// When to contact the registry.
    #[arg(long, env = "TUGBOAT_PULL_POLICY", default_value = "IfNotPresent")]
    pull_policy: PullPolicy,
    /// Re-hash the files a destination or cache already holds before trusting them.
    #[arg(long, env = "TUGBOAT_VERIFY")]
    verify: bool,
    /// How --dest files are made from the cache's: `copy` (a reflink where the filesystem
    /// supports it, else a copy; the consumer owns its files) or `hard` (hard links into the
    /// cache: fast everywhere, but a consumer running as root can change the cache's bytes for
    /// every other user).
    #[arg(long, env = "TUGBOAT_DEST_LINK", default_value = "copy")]
    link: tugboat::materialize::DestLink,
    /// Packaging format; detected from the manifest when not given.
    #[arg(long, env = "TUGBOAT_FORMAT", default_value = "auto")]
    format: FormatChoice,
    #[command(flatten)]
    select: formats::SelectArgs,
    #[command(flatten)]
    limits: formats::LimitArgs,
    /// Blobs downloaded at once.
    #[arg(long, env = "TUGBOAT_CONCURRENCY", default_value_t = 4)]
    concurrency: usize,
    /// After the pull, evict least-recently-used unleased models until --cache is below this
    /// size (e.g. 500GiB). The model just pulled is kept.
    #[arg(long, env = "TUGBOAT_CACHE_MAX_SIZE", value_parser = tugboat::size::parse_size, requires = "cache")]
    cache_max_size: Option<u64>,
    /// Print a JSON summary on stdout (digest, files, bytes fetched and reused, seconds).
    #[arg(long, env = "TUGBOAT_JSON")]
    json: bool,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatChoice {
    Auto,
    Oras,
    Modelpack,
    Kitops,
    Image,
}

impl FormatChoice {
    fn forced(self) -> Option<Format> {
        match self {
            FormatChoice::Auto => None,
            FormatChoice::Oras => Some(Format::Oras),
            FormatChoice::Modelpack => Some(Format::Modelpack),
            FormatChoice::Kitops => Some(Format::Kitops),
            FormatChoice::Image => Some(Format::Image),
        }
    }
}

#[derive(Args)]
struct PushArgs {
    /// Directory whose regular files become the artifact's layers.
    dir: PathBuf,
    /// Where to push: registry[:port]/repository:tag.
    reference: String,
    /// Manifest annotation KEY=VALUE (repeatable), e.g. org.cnai.model.name=tinyllama.
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    annotations: Vec<String>,
    /// The manifest's artifactType.
    #[arg(long, default_value = tugboat::push::DEFAULT_ARTIFACT_TYPE)]
    artifact_type: String,
    /// Files uploaded at once.
    #[arg(long, env = "TUGBOAT_CONCURRENCY", default_value_t = 4)]
    concurrency: usize,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Flags shared by every command that talks to a registry.
#[derive(Args)]
struct RegistryArgs {
    /// Speak plain HTTP to every registry (local test registries).
    #[arg(long, env = "TUGBOAT_PLAIN_HTTP")]
    plain_http: bool,
    /// A registry HOST[:PORT] reached over HTTP or with unverified TLS (repeatable, or comma-separated in the env var).
    #[arg(
        long,
        value_name = "HOST",
        env = "TUGBOAT_INSECURE_REGISTRY",
        value_delimiter = ','
    )]
    insecure_registry: Vec<String>,
    /// PEM file of extra CA certificates to trust (a private Harbor's CA).
    #[arg(long, value_name = "FILE", env = "TUGBOAT_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Docker config.json or a mounted Kubernetes .dockerconfigjson with credentials
    /// (default: $DOCKER_CONFIG/config.json, then ~/.docker/config.json).
    #[arg(long, value_name = "FILE", env = "TUGBOAT_DOCKER_CONFIG")]
    docker_config: Option<PathBuf>,
    /// The content of a Docker config.json / .dockerconfigjson, for a pull secret read into the
    /// environment (`valueFrom.secretKeyRef`, key .dockerconfigjson) where no volume can be
    /// mounted; its registries take precedence over --docker-config's. Set the variable, not the
    /// flag: a flag's value is visible in the process list.
    #[arg(
        long,
        value_name = "JSON",
        env = "TUGBOAT_DOCKER_CONFIG_JSON",
        hide_env_values = true
    )]
    docker_config_json: Option<String>,
    /// HOST=MIRROR: try MIRROR (e.g. Dragonfly's dfdaemon, a pull-through cache) before HOST;
    /// falls back to HOST if the mirror fails. Repeatable.
    #[arg(
        long,
        value_name = "HOST=MIRROR",
        env = "TUGBOAT_MIRROR",
        value_delimiter = ','
    )]
    mirror: Vec<String>,
    /// Attempts per request (and per blob, resumes included) on 429, 5xx and connection loss.
    #[arg(long, env = "TUGBOAT_RETRIES", default_value_t = 5)]
    retries: u32,
    /// Seconds a request or a blob may keep failing before it is given up (a blob's clock
    /// restarts whenever bytes arrive).
    #[arg(long, env = "TUGBOAT_RETRY_DEADLINE", default_value_t = 120)]
    retry_deadline: u64,
    /// Bytes per Range request when a large blob is fetched in parallel chunks (e.g. 16MiB);
    /// default: sized from the blob.
    #[arg(long, env = "TUGBOAT_CHUNK_SIZE", value_parser = parse_chunk_size)]
    chunk_size: Option<u64>,
    /// Parallel Range streams per large blob (1 = one stream); default: ramps up to 16 while
    /// the measured throughput keeps growing.
    #[arg(long, env = "TUGBOAT_STREAMS_PER_BLOB")]
    streams_per_blob: Option<usize>,
    /// Blob requests in flight at once, all layers and chunks together.
    #[arg(long, env = "TUGBOAT_MAX_REQUESTS", default_value_t = tugboat::registry::DEFAULT_MAX_REQUESTS)]
    max_requests: usize,
}

fn parse_chunk_size(text: &str) -> Result<u64, String> {
    match tugboat::size::parse_size(text) {
        Ok(n) if n >= 64 * 1024 => Ok(n),
        Ok(_) => Err("the chunk size must be at least 64KiB".into()),
        Err(e) => Err(e),
    }
}

impl RegistryArgs {
    /// The registry options without building a client (the daemon builds one per request).
    pub fn options(&self) -> Result<RegistryOptions, Failure> {
        let mirrors = self
            .mirror
            .iter()
            .map(|m| EndpointPolicy::parse_mirror(m))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Failure::new(FailureKind::Input, e.into()))?;
        let mut credentials = CredentialStore::load(self.docker_config.as_deref())
            .map_err(|e| Failure::new(FailureKind::Input, e.into()))?;
        if let Some(json) = self.docker_config_json.as_deref().map(str::trim) {
            if !json.is_empty() {
                // The parser's messages name positions, never the secret's content.
                let inline =
                    CredentialStore::from_docker_config_json(json.as_bytes()).map_err(|e| {
                        Failure::new(
                            FailureKind::Input,
                            anyhow::anyhow!("TUGBOAT_DOCKER_CONFIG_JSON: {e}"),
                        )
                    })?;
                credentials.merge(inline);
            }
        }
        Ok(RegistryOptions {
            endpoints: EndpointPolicy {
                plain_http: self.plain_http,
                insecure_hosts: self.insecure_registry.clone(),
                mirrors,
            },
            ca_file: self.ca_file.clone(),
            credentials,
            max_attempts: self.retries.max(1),
            retry_deadline: Some(std::time::Duration::from_secs(self.retry_deadline.max(1))),
            transfer: tugboat::registry::TransferOptions::new(
                self.chunk_size,
                self.streams_per_blob,
                self.max_requests,
            ),
            redirect_guard: None,
        })
    }

    fn client(&self) -> Result<RegistryClient, Failure> {
        RegistryClient::new(self.options()?).map_err(Failure::classified)
    }
}

/// An error with the exit code its kind maps to (see `tugboat::errors`).
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    fn new(kind: FailureKind, error: anyhow::Error) -> Self {
        Failure {
            code: kind.exit_code(),
            error,
        }
    }

    /// A library error, with the exit code the one classifier gives its kind.
    fn classified<E>(error: E) -> Self
    where
        E: Classify + std::error::Error + Send + Sync + 'static,
    {
        Failure::new(error.kind(), error.into())
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::new(FailureKind::Other, error)
    }
}

/// The arguments for clap: `kitops-init` put in front when no subcommand is given and
/// MODELKIT_REF is set, as KitOps' init-container specs start the image without arguments.
pub fn argv() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let has_subcommand = args
        .iter()
        .skip(1)
        .any(|a| !a.to_string_lossy().starts_with('-'));
    if !has_subcommand && std::env::var_os("MODELKIT_REF").is_some() {
        args.insert(1.min(args.len()), "kitops-init".into());
    }
    args
}

pub fn init_logging(cli: &Cli) {
    // On a terminal the progress bars tell the story; logs stay quiet unless asked.
    let default = if std::io::stderr().is_terminal() {
        "warn"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_new(cli.log.as_deref().unwrap_or(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    if cli.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Pull(args) => pull(args).await,
        Command::KitopsInit(args) => kitops::run(args).await,
        Command::Push(args) => push(args).await,
        Command::Inspect(args) => formats::inspect(args).await,
        Command::Node(args) => node::run(args).await,
        Command::Cache(command) => cache::run(command),
        Command::Affinity(args) => affinity::run(args),
        Command::Warm(args) => warm::run(args).await,
        Command::Version => {
            println!("tugboat {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

fn parse_reference(text: &str) -> Result<Reference, Failure> {
    text.parse::<Reference>()
        .map_err(|e| Failure::new(FailureKind::Input, e.into()))
}

async fn pull(args: PullArgs) -> Result<(), Failure> {
    let dest = match (args.dest_dir, args.dest) {
        (Some(positional), Some(flag)) if positional != flag => {
            return Err(Failure::new(
                FailureKind::Input,
                anyhow::anyhow!(
                    "the destination is given twice, as DEST {} and as --dest/TUGBOAT_DEST {}; \
                     give it once",
                    positional.display(),
                    flag.display()
                ),
            ))
        }
        (positional, flag) => positional.or(flag),
    };
    let reference = parse_reference(&args.reference)?;
    let options = args.options;
    let prepared = Prepared::new(
        &reference,
        options.policy.load()?,
        None,
        options.registry.options()?,
    )?;
    let layout = options.limits.layout(&options.select)?;
    prepared.pull(reference, dest, layout, &options).await
}

/// A pull admitted by the policy, with the registry client it may use.
struct Prepared {
    gate: Gate,
    client: RegistryClient,
}

impl Prepared {
    /// Judges `reference` by `policy` (adding the signature rule `required`, if given) and
    /// builds the client the gate allows.
    fn new(
        reference: &Reference,
        policy: Option<std::sync::Arc<Policy>>,
        required: Option<&str>,
        mut registry: RegistryOptions,
    ) -> Result<Prepared, Failure> {
        let gate = match &policy {
            Some(policy) => policy
                .admit(reference, None, Mode::Pull, required)
                .map_err(Failure::classified)?,
            None => Gate::open(),
        };
        if !gate.node_credentials() {
            registry.credentials = Default::default();
        }
        registry.redirect_guard = policy.as_ref().and_then(|p| p.redirect_guard());
        let client = RegistryClient::new(registry).map_err(Failure::classified)?;
        Ok(Prepared { gate, client })
    }

    /// Runs the pull and prints its report.
    async fn pull(
        &self,
        reference: Reference,
        dest: Option<PathBuf>,
        layout: tugboat::pull::Layout,
        options: &PullOptions,
    ) -> Result<(), Failure> {
        let request = PullRequest {
            reference,
            dest,
            cache: options.cache.clone(),
            policy: options.pull_policy,
            verify: options.verify,
            concurrency: options.concurrency,
            format: options.format.forced(),
            layout,
            dest_link: options.link,
        };
        let progress = Progress::for_terminal(options.json);
        let report = tugboat::pull::pull_gated(&request, &self.client, &progress, &self.gate)
            .await
            .map_err(Failure::classified)?;
        if let (Some(max_size), Some(snapshot)) = (options.cache_max_size, &report.snapshot) {
            collect_after_pull(snapshot, max_size)?;
        }
        if options.json {
            println!(
                "{}",
                serde_json::to_string(&report).context("serialising the report")?
            );
        } else {
            let size: u64 = report.files.iter().map(|f| f.size).sum();
            let place = report
                .dest
                .as_ref()
                .or(report.snapshot.as_ref())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            println!(
                "{} {} ({}) -> {}: {} file(s), {}, fetched {}, reused {}, {:.2}s",
                if report.cache_hit { "cached" } else { "pulled" },
                report.reference,
                report.digest,
                place,
                report.files.len(),
                human_bytes(size),
                human_bytes(report.bytes_fetched),
                human_bytes(report.bytes_reused),
                report.seconds
            );
        }
        Ok(())
    }
}

/// Keeps a shared cache under `max_size` after a pull, sparing the model just pulled.
fn collect_after_pull(snapshot: &std::path::Path, max_size: u64) -> Result<(), Failure> {
    let storage = Failure::classified::<tugboat::cache::CacheError>;
    let root = snapshot
        .parent()
        .and_then(|snapshots| snapshots.parent())
        .expect("snapshots live in CACHE/snapshots/");
    let cache = tugboat::cache::Cache::open(root).map_err(storage)?;
    let mut policy = tugboat::cache::GcPolicy {
        max_size: Some(max_size),
        ..Default::default()
    };
    if let Some(id) = snapshot
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|hex| tugboat::digest::Digest::from_hex(hex).ok())
    {
        policy.protected.insert(id);
    }
    let report = cache.gc(&policy).map_err(storage)?;
    if !report.snapshots_removed.is_empty() {
        tracing::info!(freed = report.bytes_freed, models = ?report.snapshots_removed, "cache over --cache-max-size: evicted least recently used models");
    }
    Ok(())
}

async fn push(args: PushArgs) -> Result<(), Failure> {
    let reference = parse_reference(&args.reference)?;
    if reference.tag().is_none() || reference.digest().is_some() {
        return Err(Failure::new(
            FailureKind::Input,
            anyhow::anyhow!("push needs a tag and no digest: registry/repository:tag"),
        ));
    }
    let mut annotations = std::collections::BTreeMap::new();
    for pair in &args.annotations {
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            Failure::new(
                FailureKind::Input,
                anyhow::anyhow!("--annotation {pair:?}: expected KEY=VALUE"),
            )
        })?;
        annotations.insert(key.to_string(), value.to_string());
    }
    let client = args.registry.client()?;
    let options = tugboat::push::PushOptions {
        artifact_type: args.artifact_type,
        annotations,
        concurrency: args.concurrency,
    };
    let report = tugboat::push::push(&client, &args.dir, &reference, &options)
        .await
        .map_err(Failure::classified)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("serialising the report")?
        );
    } else {
        let uploaded = report.files.iter().filter(|f| f.uploaded).count();
        println!(
            "pushed {}@{}: {} file(s), {} uploaded",
            report.reference,
            report.digest,
            report.files.len(),
            uploaded
        );
    }
    Ok(())
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
