//! Signature rules: which signatures a model needs (cosign keys, OpenSSF model-signing keys),
//! checked against the exact manifest digest and the materialised files before the model is
//! handed out. Positive verdicts are remembered per (snapshot, requirement fingerprint), in
//! memory and on disk beside the cache, so warm pulls and mounts do not verify again.

pub mod cosign;
pub mod keys;
pub mod listing;
pub mod model_signing;

use super::access::pattern_matches;
use super::file::{Action, PolicyFile, SignatureRule};
use super::PolicyError;
use crate::cache::SnapshotFile;
use crate::digest::Digest;
use crate::reference::Reference;
use crate::registry::RegistryClient;
use keys::Key;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

/// One signature rule with its keys loaded.
#[derive(Clone, Debug)]
pub struct Requirement {
    name: String,
    references: Vec<String>,
    action: Action,
    cosign: Vec<Key>,
    model_signing: Option<(Vec<Key>, String)>,
    /// Names the rule and its keys: a changed key is a new requirement.
    fingerprint: String,
}

impl Requirement {
    fn load(rule: &SignatureRule) -> Result<Requirement, String> {
        let load = |paths: &[std::path::PathBuf]| -> Result<Vec<Key>, String> {
            if paths.is_empty() {
                return Err(format!("signature rule {:?}: no keys listed", rule.name));
            }
            paths.iter().map(|p| Key::load(p)).collect()
        };
        let cosign = match &rule.cosign {
            Some(set) => load(&set.keys)?,
            None => Vec::new(),
        };
        let model_signing = match &rule.model_signing {
            Some(set) => Some((load(&set.keys)?, set.signature_file.clone())),
            None => None,
        };
        let mut material = format!("{}\n{:?}\n", rule.name, rule.action);
        for key in &cosign {
            material.push_str(&format!("cosign\n{}\n", String::from_utf8_lossy(&key.pem)));
        }
        if let Some((keys, file)) = &model_signing {
            material.push_str(&format!("model-signing {file}\n"));
            for key in keys {
                material.push_str(&String::from_utf8_lossy(&key.pem));
            }
        }
        Ok(Requirement {
            name: rule.name.clone(),
            references: rule.references.clone(),
            action: rule.action,
            cosign,
            model_signing,
            fingerprint: Digest::of_bytes(material.as_bytes()).hex()[..16].to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What is being handed out: the model and where its verdicts are kept.
pub struct Model<'a> {
    pub registry: &'a RegistryClient,
    pub reference: &'a Reference,
    /// The digest the reference resolved to and, if that was an index, the manifest chosen.
    pub digests: Vec<Digest>,
    pub snapshot: &'a Digest,
    /// The snapshot is the whole model (no subset selected).
    pub whole: bool,
    pub dir: &'a Path,
    pub files: &'a [SnapshotFile],
    /// Directory of remembered verdicts.
    pub verdicts: &'a Path,
    /// The registry may not be contacted (pull policy Never).
    pub offline: bool,
}

/// What a verified model was signed by (for logs and `inspect`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Verdict {
    pub rule: String,
    pub signers: Vec<String>,
}

pub struct Checker {
    rules: Vec<Requirement>,
    default: Option<Requirement>,
    remembered: Mutex<HashSet<(Digest, String)>>,
}

impl Checker {
    pub fn new(file: &PolicyFile) -> Result<Checker, String> {
        let Some(section) = &file.signatures else {
            return Ok(Checker {
                rules: Vec::new(),
                default: None,
                remembered: Mutex::default(),
            });
        };
        Ok(Checker {
            rules: section
                .rules
                .iter()
                .map(Requirement::load)
                .collect::<Result<_, _>>()?,
            default: section
                .default
                .as_ref()
                .map(Requirement::load)
                .transpose()?,
            remembered: Mutex::default(),
        })
    }

    /// The node's requirement for `reference` (first matching rule, else the default), plus
    /// the rule a volume names (`stricter`), which only adds to it.
    pub fn requirements(
        &self,
        reference: &Reference,
        stricter: Option<&str>,
    ) -> Result<Vec<Requirement>, String> {
        let target = format!("{}/{}", reference.registry(), reference.repository());
        let mut out: Vec<Requirement> = self
            .rules
            .iter()
            .find(|r| r.references.iter().any(|p| pattern_matches(p, &target)))
            .or(self.default.as_ref())
            .cloned()
            .into_iter()
            .collect();
        if let Some(name) = stricter.map(str::trim).filter(|n| !n.is_empty()) {
            let named = self
                .rules
                .iter()
                .chain(&self.default)
                .find(|r| r.name == name)
                .ok_or_else(|| {
                    format!("the volume asks for signature policy {name:?}, which the node policy does not define")
                })?;
            if !out.iter().any(|r| r.name == named.name) {
                let mut named = named.clone();
                // Asked for by the volume: enforced even if the node's rule only warns.
                named.action = Action::Enforce;
                named.fingerprint.push_str("-enforce");
                out.push(named);
            }
        }
        Ok(out)
    }

    /// Every key the rules name (for listing signers).
    pub fn keys(&self) -> Vec<Key> {
        let mut keys = Vec::new();
        for rule in self.rules.iter().chain(&self.default) {
            keys.extend(rule.cosign.iter().cloned());
            if let Some((more, _)) = &rule.model_signing {
                keys.extend(more.iter().cloned());
            }
        }
        keys
    }

    pub fn remembered(
        &self,
        requirement: &Requirement,
        verdicts: &Path,
        snapshot: &Digest,
    ) -> bool {
        let key = (snapshot.clone(), requirement.fingerprint.clone());
        if self
            .remembered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key)
        {
            return true;
        }
        if verdict_path(verdicts, snapshot, &requirement.fingerprint).exists() {
            self.remember_in_memory(key);
            return true;
        }
        false
    }

    fn remember_in_memory(&self, key: (Digest, String)) {
        self.remembered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key);
    }

    pub async fn check(
        &self,
        requirement: &Requirement,
        model: &Model<'_>,
    ) -> Result<(), PolicyError> {
        if self.remembered(requirement, model.verdicts, model.snapshot) {
            return Ok(());
        }
        let outcome = verify(requirement, model).await?;
        match outcome {
            Ok(verdict) => {
                super::metrics::signature("verified");
                tracing::info!(reference = %model.reference, rule = %verdict.rule, signers = ?verdict.signers, "signature policy: verified");
                self.remember_in_memory((model.snapshot.clone(), requirement.fingerprint.clone()));
                let path = verdict_path(model.verdicts, model.snapshot, &requirement.fingerprint);
                if let Err(e) = write_verdict(&path, &verdict) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remember the signature verdict on disk");
                }
                Ok(())
            }
            Err(detail) if requirement.action == Action::Warn => {
                super::metrics::signature("warned");
                tracing::warn!(reference = %model.reference, rule = %requirement.name, %detail, "signature policy (warn): the model would be refused under enforce");
                Ok(())
            }
            Err(detail) => {
                super::metrics::signature("refused");
                tracing::warn!(reference = %model.reference, rule = %requirement.name, %detail, "signature policy: refused");
                Err(PolicyError::Signature {
                    rule: requirement.name.clone(),
                    reference: model.reference.to_string(),
                    detail,
                })
            }
        }
    }
}

/// Runs the checks; the outer error is trouble reaching the registry, the inner one a refusal.
async fn verify(
    requirement: &Requirement,
    model: &Model<'_>,
) -> Result<Result<Verdict, String>, PolicyError> {
    let mut signers = Vec::new();
    if !requirement.cosign.is_empty() {
        if model.offline {
            return Ok(Err(
                "cosign signatures must be read from the registry and --pull-policy Never forbids it"
                    .into(),
            ));
        }
        let mut failure = String::new();
        let mut signer = None;
        for digest in &model.digests {
            let found = cosign::find(model.registry, model.reference, digest)
                .await
                .map_err(|source| PolicyError::SignatureFetch {
                    reference: model.reference.to_string(),
                    source,
                })?;
            match cosign::judge(&found, digest, &requirement.cosign) {
                Ok(name) => {
                    signer = Some(name);
                    break;
                }
                Err(why) => failure = why,
            }
        }
        match signer {
            Some(name) => signers.push(format!("cosign:{name}")),
            None => return Ok(Err(failure)),
        }
    }
    if let Some((keys, file)) = &requirement.model_signing {
        if !model.files.iter().any(|f| f.path.as_str() == file) {
            return Ok(Err(format!(
                "the model has no model-signing signature file {file:?}"
            )));
        }
        let signed = match model_signing::verify_bundle(&model.dir.join(file), keys) {
            Ok(signed) => signed,
            Err(why) => return Ok(Err(format!("model-signing: {why}"))),
        };
        if let Err(why) = model_signing::compare(&signed, model.files, file, model.whole) {
            return Ok(Err(format!("model-signing: {why}")));
        }
        signers.push(format!("model-signing:{}", signed.signer));
    }
    Ok(Ok(Verdict {
        rule: requirement.name.clone(),
        signers,
    }))
}

fn verdict_path(dir: &Path, snapshot: &Digest, fingerprint: &str) -> std::path::PathBuf {
    dir.join(format!("{}-{fingerprint}.json", snapshot.hex()))
}

fn write_verdict(path: &Path, verdict: &Verdict) -> std::io::Result<()> {
    let dir = path.parent().expect("verdicts live in a directory");
    std::fs::create_dir_all(dir)?;
    let temp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&temp, serde_json::to_vec(verdict).unwrap_or_default())?;
    std::fs::rename(&temp, path)
}
