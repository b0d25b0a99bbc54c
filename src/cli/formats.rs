//! Flags that shape a model tree (`--subpath`, `--include`, `--exclude`, `--only`), the
//! unpacking limits, and the `inspect` subcommand.

use super::{parse_reference, Failure, FormatChoice, RegistryArgs};
use anyhow::Context as _;
use clap::Args;
use tugboat::artifact::{Kind, Selection};
use tugboat::errors::FailureKind;
use tugboat::materialize::{ByteSize, Limits};
use tugboat::pull::Layout;

#[derive(Args, Clone)]
pub struct SelectArgs {
    /// Take only this folder of the model (e.g. /models of a Modelcar image) as the root.
    #[arg(long, env = "TUGBOAT_SUBPATH", value_name = "PATH")]
    subpath: Option<String>,
    /// Keep only paths matching this glob (repeatable or comma-separated; a folder match
    /// keeps everything below it), e.g. --include '*.gguf'.
    #[arg(
        long,
        env = "TUGBOAT_INCLUDE",
        value_name = "GLOB",
        value_delimiter = ','
    )]
    include: Vec<String>,
    /// Drop paths matching this glob (repeatable or comma-separated).
    #[arg(
        long,
        env = "TUGBOAT_EXCLUDE",
        value_name = "GLOB",
        value_delimiter = ','
    )]
    exclude: Vec<String>,
    /// ModelPack/KitOps: fetch only layers of these kinds, e.g. --only weights,config.
    /// Other layers are never downloaded.
    #[arg(
        long,
        env = "TUGBOAT_ONLY",
        value_name = "KINDS",
        value_delimiter = ','
    )]
    only: Vec<Kind>,
    /// A ModelKit index: the variant to pull, by its tag (q4_0), a label value, or key=value.
    #[arg(long, env = "TUGBOAT_VARIANT", value_name = "NAME")]
    variant: Option<String>,
}

impl SelectArgs {
    pub fn selection(&self) -> Result<Selection, Failure> {
        self.selection_of_kinds(&self.only)
    }

    /// The selection with `kinds` where `--only` would be (chosen by KitOps' UNPACK_FILTER);
    /// `--only` given as well is refused rather than silently overridden.
    pub fn selection_with_kinds(
        &self,
        kinds: &[Kind],
        chosen_by: &str,
    ) -> Result<Selection, Failure> {
        if !self.only.is_empty() {
            return Err(Failure::new(
                FailureKind::Input,
                anyhow::anyhow!(
                    "{chosen_by} chooses the layers to unpack; --only (TUGBOAT_ONLY) cannot be \
                     combined with it: give one of them"
                ),
            ));
        }
        self.selection_of_kinds(kinds)
    }

    fn selection_of_kinds(&self, kinds: &[Kind]) -> Result<Selection, Failure> {
        Selection::new(self.subpath.as_deref(), &self.include, &self.exclude, kinds)
            .map_err(|e| Failure::new(FailureKind::Input, e.into()))
    }

    pub fn variant(&self) -> Option<String> {
        self.variant.clone()
    }
}

#[derive(Args, Clone)]
pub struct LimitArgs {
    /// Most entries (files, folders, links) unpacking archives may create.
    #[arg(long, env = "TUGBOAT_MAX_FILES", default_value_t = Limits::DEFAULT_MAX_FILES)]
    max_files: u64,
    /// Most bytes unpacked files may hold together (e.g. 500GiB, 2TiB).
    #[arg(long, env = "TUGBOAT_MAX_EXPANDED_SIZE", default_value = "1TiB")]
    max_expanded_size: ByteSize,
    /// Most times its compressed size one archive layer may expand to (layers may always
    /// reach 64 MiB); guards against decompression bombs.
    #[arg(long, env = "TUGBOAT_MAX_COMPRESSION_RATIO", default_value_t = Limits::DEFAULT_MAX_RATIO)]
    max_compression_ratio: u64,
}

impl LimitArgs {
    pub fn layout(&self, select: &SelectArgs) -> Result<Layout, Failure> {
        Ok(self.layout_with(select.selection()?, select.variant()))
    }

    /// The layout of an already-built selection.
    pub fn layout_with(&self, selection: Selection, variant: Option<String>) -> Layout {
        Layout {
            selection,
            variant,
            limits: Limits {
                max_files: self.max_files,
                max_expanded: self.max_expanded_size,
                max_ratio: self.max_compression_ratio.max(1),
            },
        }
    }
}

#[derive(Args)]
pub struct InspectArgs {
    /// The artifact: registry[:port]/repository[:tag][@sha256:digest].
    reference: String,
    /// Packaging format; detected from the manifest when not given.
    #[arg(long, env = "TUGBOAT_FORMAT", default_value = "auto")]
    format: FormatChoice,
    #[command(flatten)]
    select: SelectArgs,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    policy: super::PolicyArgs,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub async fn inspect(args: InspectArgs) -> Result<(), Failure> {
    let reference = parse_reference(&args.reference)?;
    let selection = args.select.selection()?;
    let client = args.registry.client()?;
    let report = tugboat::inspect::inspect(&client, &reference, args.format.forced(), &selection)
        .await
        .map_err(Failure::classified)?;
    let keys = args
        .policy
        .load()?
        .map(|policy| policy.keys())
        .unwrap_or_default();
    let signatures = match tugboat::policy::signatures::listing::list(
        &client,
        &reference,
        &report.digest,
        &keys,
    )
    .await
    {
        Ok(listed) => listed,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the signatures");
            Vec::new()
        }
    };
    if args.json {
        let mut value = serde_json::to_value(&report).context("serialising the report")?;
        value["signatures"] = serde_json::to_value(&signatures).context("serialising")?;
        println!("{value}");
        return Ok(());
    }
    let d = &report.description;
    println!("{}", report.reference);
    println!("  digest:   {}", report.digest);
    println!("  format:   {}", d.format);
    if let Some(t) = &d.artifact_type {
        println!("  artifact: {t}");
    }
    for (key, value) in &d.metadata {
        println!("  {:<9} {value}", format!("{key}:"));
    }
    println!("  layers:");
    for layer in &d.layers {
        println!(
            "    {} {:>10}  {:<6} {:<9} {}",
            if layer.fetch { "+" } else { "-" },
            super::human_bytes(layer.size),
            layer.action,
            layer.kind.unwrap_or(""),
            layer.path.as_deref().unwrap_or("(archive at the root)")
        );
    }
    println!(
        "  a pull fetches {} layer(s), {}; skips {} layer(s), {}",
        d.fetch_layers,
        super::human_bytes(d.fetch_bytes),
        d.skip_layers,
        super::human_bytes(d.skip_bytes)
    );
    println!(
        "  signatures:{}",
        if signatures.is_empty() { " none" } else { "" }
    );
    for s in &signatures {
        println!(
            "    {:<13} {:<10} signs {}  signer: {}",
            s.kind,
            s.found,
            s.signs,
            s.signer
                .as_deref()
                .unwrap_or("(no key of --policy verifies it)")
        );
    }
    Ok(())
}
