//! The node policy: one place that decides, before any fetch and before anything is handed out,
//! whether this request may have this model. One YAML file (a ConfigMap on the node) holds the
//! access rules (which registries and repositories each namespace and mode may ask for, which
//! hosts are never contacted, who may use the node's credentials, size and concurrency caps)
//! and the signature rules (cosign keys, OpenSSF model-signing keys, enforce or warn).
//!
//! [`Policy::admit`] judges a request by its reference, namespace and mode and answers with a
//! [`Gate`]; the pull pipeline asks the gate before contacting a host, after reading the
//! manifest, and before handing the model out.

mod access;
mod file;
pub mod hosts;
mod limits;
pub mod metrics;
pub mod signatures;

use crate::artifact::Manifest;
use crate::digest::Digest;
use crate::errors::{Classify, FailureKind};
use crate::reference::Reference;
use crate::registry::RegistryError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use access::Grant;
pub use file::PolicyFile;
pub use limits::PullSlot;
pub use signatures::{Requirement, Verdict};

/// Who is asking: the four ways a model reaches a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A CSI inline ephemeral volume written into a pod spec.
    Inline,
    /// A CSI persistent volume (static PV, volumeHandle names the model).
    Pv,
    /// The node's warm list.
    Warm,
    /// `tugboat pull` (init containers).
    Pull,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Inline => "inline",
            Mode::Pv => "pv",
            Mode::Warm => "warm",
            Mode::Pull => "pull",
        }
    }
}

/// Why a request was refused (the `reason` label of the refusal metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No rule allows this reference for this namespace and mode.
    NotAllowed,
    /// The registry host resolves to loopback, link-local or the node's own addresses.
    Host,
    /// The manifest announces more bytes than the rule allows.
    Size,
    /// The namespace already runs as many distinct pulls as its rule allows.
    Concurrency,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::NotAllowed => "not_allowed",
            Reason::Host => "host",
            Reason::Size => "size",
            Reason::Concurrency => "concurrency",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy file {}: {detail}", path.display())]
    Load { path: PathBuf, detail: String },
    #[error("access policy: {detail} (rule {rule:?}, namespace {namespace:?}, mode {mode}); refused {reference}")]
    Denied {
        rule: String,
        namespace: String,
        mode: &'static str,
        reference: String,
        reason: Reason,
        detail: String,
    },
    #[error("signature policy (rule {rule:?}): {reference} refused: {detail}")]
    Signature {
        rule: String,
        reference: String,
        detail: String,
    },
    #[error("signature policy: reading signatures of {reference}")]
    SignatureFetch {
        reference: String,
        #[source]
        source: RegistryError,
    },
}

impl PolicyError {
    /// The refusal reason, for access denials.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            PolicyError::Denied { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

/// The loaded node policy.
pub struct Policy {
    file: PolicyFile,
    source: PathBuf,
    slots: limits::Slots,
    signatures: signatures::Checker,
}

impl Policy {
    /// Reads and checks a policy file (keys included), so a broken policy stops the daemon at start.
    pub fn load(path: &Path) -> Result<Arc<Policy>, PolicyError> {
        let load_error = |detail: String| PolicyError::Load {
            path: path.to_path_buf(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| load_error(e.to_string()))?;
        let file = PolicyFile::parse(&text).map_err(load_error)?;
        Self::build(file, path)
    }

    /// The policy in `path` (without one: nothing restricted) plus a signature rule `name`
    /// requiring a cosign signature by the public key `key`. Like a volume's
    /// `signaturePolicy`, the rule applies where it is named when admitting (`stricter`);
    /// it adds to the file's rules and never replaces one (KitOps' `COSIGN_KEY`).
    pub fn with_cosign_rule(
        path: Option<&Path>,
        name: &str,
        key: &Path,
    ) -> Result<Arc<Policy>, PolicyError> {
        let source = path.unwrap_or(key);
        let load_error = |detail: String| PolicyError::Load {
            path: source.to_path_buf(),
            detail,
        };
        let mut file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| load_error(e.to_string()))?;
                PolicyFile::parse(&text).map_err(load_error)?
            }
            None => PolicyFile::default(),
        };
        let section = file.signatures.get_or_insert_with(Default::default);
        if section.rules.iter().any(|r| r.name == name) {
            return Err(load_error(format!(
                "the policy already has a signature rule named {name:?}"
            )));
        }
        section.rules.push(file::SignatureRule {
            name: name.to_string(),
            references: Vec::new(),
            action: file::Action::Enforce,
            cosign: Some(file::KeySet {
                keys: vec![key.to_path_buf()],
            }),
            model_signing: None,
        });
        Self::build(file, source)
    }

    fn build(file: PolicyFile, source: &Path) -> Result<Arc<Policy>, PolicyError> {
        let signatures = signatures::Checker::new(&file).map_err(|detail| PolicyError::Load {
            path: source.to_path_buf(),
            detail,
        })?;
        Ok(Arc::new(Policy {
            file,
            source: source.to_path_buf(),
            slots: limits::Slots::default(),
            signatures,
        }))
    }

    /// Every public key the signature rules name.
    pub fn keys(&self) -> Vec<signatures::keys::Key> {
        self.signatures.keys()
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The check the HTTP client applies to redirect targets: hosts an access rule names
    /// literally pass; others must not resolve to loopback, link-local or node addresses.
    pub fn redirect_guard(&self) -> Option<crate::registry::RedirectGuard> {
        let access = self.file.access.as_ref()?;
        let named: Vec<String> = access
            .rules
            .iter()
            .flat_map(|r| &r.references)
            .filter_map(|p| p.split('/').next())
            .filter(|host| !host.contains(['*', '?', '[', '{']))
            .map(str::to_ascii_lowercase)
            .collect();
        Some(crate::registry::RedirectGuard(Arc::new(move |url| {
            let host = match (url.host_str(), url.port()) {
                (Some(host), Some(port)) => format!("{host}:{port}"),
                (Some(host), None) => host.to_string(),
                (None, _) => return Err("the redirect names no host".to_string()),
            };
            if named.contains(&host.to_ascii_lowercase()) {
                return Ok(());
            }
            hosts::check_url_blocking(url).inspect_err(|why| {
                metrics::refused(Reason::Host);
                tracing::warn!(%url, %why, "access policy: redirect refused");
            })
        })))
    }

    /// Judges a request. `stricter` names a signature rule a CSI volume adds to the node's own
    /// (`signaturePolicy`); it can only add requirements.
    pub fn admit(
        self: &Arc<Self>,
        reference: &Reference,
        namespace: Option<&str>,
        mode: Mode,
        stricter: Option<&str>,
    ) -> Result<Gate, PolicyError> {
        let grant = match &self.file.access {
            Some(access) => {
                let grant = access::decide(access, reference, namespace, mode);
                let label = namespace.unwrap_or("");
                match &grant {
                    Ok(grant) => {
                        tracing::info!(%reference, namespace = label, mode = mode.name(), rule = %grant.rule, node_credentials = grant.node_credentials, "access policy: allowed");
                    }
                    Err(e) => {
                        metrics::refused(Reason::NotAllowed);
                        tracing::warn!(%reference, namespace = label, mode = mode.name(), error = %crate::errors::render(e), "access policy: refused");
                    }
                }
                Some(grant?)
            }
            None => None,
        };
        let requirements = self
            .signatures
            .requirements(reference, stricter)
            .map_err(|detail| PolicyError::Signature {
                rule: stricter.unwrap_or_default().to_string(),
                reference: reference.to_string(),
                detail,
            })?;
        Ok(Gate {
            policy: Some(self.clone()),
            grant,
            namespace: namespace.unwrap_or("").to_string(),
            mode,
            requirements,
        })
    }
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// What one admitted request may do, asked by the pull pipeline at each step.
pub struct Gate {
    policy: Option<Arc<Policy>>,
    grant: Option<Grant>,
    namespace: String,
    mode: Mode,
    requirements: Vec<Requirement>,
}

impl Gate {
    /// No policy: everything allowed, as without `--policy`.
    pub fn open() -> Gate {
        Gate {
            policy: None,
            grant: None,
            namespace: String::new(),
            mode: Mode::Pull,
            requirements: Vec::new(),
        }
    }

    /// Whether the node's (the process's) own registry credentials may be used.
    pub fn node_credentials(&self) -> bool {
        self.grant.as_ref().is_none_or(|g| g.node_credentials)
    }

    /// What distinguishes this gate from another for the same reference (so requests judged
    /// differently never share one pull).
    pub fn key(&self) -> String {
        let rule = self.grant.as_ref().map_or("", |g| g.rule.as_str());
        let signatures: Vec<&str> = self.requirements.iter().map(|r| r.name()).collect();
        format!(
            "{}|{}|{rule}|{}",
            self.namespace,
            self.mode.name(),
            signatures.join(",")
        )
    }

    /// Whether signature rules apply to this request.
    pub fn checks_signatures(&self) -> bool {
        !self.requirements.is_empty()
    }

    /// Before anything is sent to the registry host: hosts that resolve to loopback,
    /// link-local or the node's own addresses are refused unless the rule names them.
    pub async fn before_contact(&self, reference: &Reference) -> Result<(), PolicyError> {
        let Some(grant) = &self.grant else {
            return Ok(());
        };
        if grant.names_host {
            return Ok(());
        }
        let host = reference.api_host();
        if let Err(why) = hosts::check(host).await {
            metrics::refused(Reason::Host);
            tracing::warn!(%reference, namespace = %self.namespace, rule = %grant.rule, host, %why, "access policy: host refused before connecting");
            return Err(self.denied(
                reference,
                Reason::Host,
                format!("host {host} {why}; only a rule naming {host} explicitly may allow it"),
            ));
        }
        Ok(())
    }

    /// Once the manifest is known and before any blob is fetched: the model's announced size.
    pub fn check_manifest(
        &self,
        reference: &Reference,
        manifest: &Manifest,
    ) -> Result<(), PolicyError> {
        let Some(limit) = self.grant.as_ref().and_then(|g| g.max_model_size) else {
            return Ok(());
        };
        let announced = manifest
            .layers
            .iter()
            .map(|l| l.size)
            .fold(manifest.config.size, u64::saturating_add);
        if announced > limit {
            metrics::refused(Reason::Size);
            return Err(self.denied(
                reference,
                Reason::Size,
                format!("the manifest announces {announced} bytes, the rule allows at most {limit} (maxModelSize)"),
            ));
        }
        Ok(())
    }

    /// A slot among the namespace's concurrent distinct pulls (`maxConcurrentPulls`);
    /// `key` names the model, so requests joining one pull share a slot.
    pub fn pull_slot(&self, reference: &Reference, key: &str) -> Result<PullSlot, PolicyError> {
        let (Some(policy), Some(grant)) = (&self.policy, &self.grant) else {
            return Ok(PullSlot::unlimited());
        };
        let Some(cap) = grant.max_concurrent_pulls else {
            return Ok(PullSlot::unlimited());
        };
        policy
            .slots
            .take(&self.namespace, key, cap)
            .ok_or_else(|| {
                metrics::refused(Reason::Concurrency);
                self.denied(
                    reference,
                    Reason::Concurrency,
                    format!("the namespace already runs {cap} distinct pulls (maxConcurrentPulls); retry when one ends"),
                )
            })
    }

    /// Before the model is handed out: the signature rules, bound to the manifest digest and
    /// to the files materialised. Verdicts are remembered per (snapshot, requirement).
    pub async fn before_handout(&self, model: signatures::Model<'_>) -> Result<(), PolicyError> {
        let Some(policy) = &self.policy else {
            return Ok(());
        };
        for requirement in &self.requirements {
            policy.signatures.check(requirement, &model).await?;
        }
        Ok(())
    }

    /// Whether every signature requirement already holds a remembered positive verdict for
    /// `snapshot` (lets a destination that already holds the model skip the pull).
    pub fn remembered(&self, verdicts: &Path, snapshot: &Digest) -> bool {
        let Some(policy) = &self.policy else {
            return true;
        };
        self.requirements
            .iter()
            .all(|r| policy.signatures.remembered(r, verdicts, snapshot))
    }

    fn denied(&self, reference: &Reference, reason: Reason, detail: String) -> PolicyError {
        PolicyError::Denied {
            rule: self
                .grant
                .as_ref()
                .map_or_else(|| "default".to_string(), |g| g.rule.clone()),
            namespace: self.namespace.clone(),
            mode: self.mode.name(),
            reference: reference.to_string(),
            reason,
            detail,
        }
    }
}

impl Classify for PolicyError {
    fn kind(&self) -> FailureKind {
        match self {
            PolicyError::Load { .. } => FailureKind::Input,
            PolicyError::Denied { .. } => FailureKind::PermissionDenied,
            PolicyError::Signature { .. } => FailureKind::Signature,
            PolicyError::SignatureFetch { source, .. } => source.kind(),
        }
    }
}
