//! The policy file's shape (YAML), checked as it is read: unknown keys, bad globs and
//! unreadable keys are errors that name the field.

use serde::Deserialize;
use std::path::PathBuf;

/// The whole file. A missing section means that part of the policy is off.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub access: Option<AccessSection>,
    pub signatures: Option<SignatureSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessSection {
    /// What happens to a request no rule matches.
    pub default: Default,
    #[serde(default)]
    pub rules: Vec<AccessRule>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Default {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessRule {
    pub name: String,
    /// Namespace globs; absent: any namespace, and requests that have none (pull, warm).
    pub namespaces: Option<Vec<String>>,
    /// Modes; absent: all of them.
    pub modes: Option<Vec<super::Mode>>,
    /// `registry/repository` globs (`*` stays within one path segment, `**` crosses them).
    pub references: Vec<String>,
    /// May the node's own registry credentials be used for these references?
    #[serde(default)]
    pub node_credentials: bool,
    /// Largest model (config + layers, as the manifest announces), e.g. `20GiB`.
    pub max_model_size: Option<String>,
    /// Distinct pulls one namespace may run at once under this rule.
    pub max_concurrent_pulls: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SignatureSection {
    /// Requirement for references no rule matches; absent: none.
    pub default: Option<SignatureRule>,
    #[serde(default)]
    pub rules: Vec<SignatureRule>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SignatureRule {
    #[serde(default = "default_rule_name")]
    pub name: String,
    /// `registry/repository` globs; empty for the default (and for rules only volumes name).
    #[serde(default)]
    pub references: Vec<String>,
    /// `enforce` refuses, `warn` logs and lets the model through.
    #[serde(default = "enforce")]
    pub action: Action,
    pub cosign: Option<KeySet>,
    pub model_signing: Option<ModelSigningKeys>,
}

fn default_rule_name() -> String {
    "default".to_string()
}

fn enforce() -> Action {
    Action::Enforce
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Enforce,
    Warn,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySet {
    /// PEM public key files (ECDSA P-256) on the node.
    pub keys: Vec<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ModelSigningKeys {
    pub keys: Vec<PathBuf>,
    /// The signature file inside the model (default `model.sig`).
    #[serde(default = "model_sig")]
    pub signature_file: String,
}

fn model_sig() -> String {
    "model.sig".to_string()
}

impl PolicyFile {
    pub fn parse(text: &str) -> Result<PolicyFile, String> {
        let file: PolicyFile = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        if let Some(access) = &file.access {
            for rule in &access.rules {
                if rule.references.is_empty() {
                    return Err(format!(
                        "access rule {:?}: `references` lists no registry/repository pattern",
                        rule.name
                    ));
                }
                if let Some(size) = &rule.max_model_size {
                    crate::size::parse_size(size).map_err(|e| {
                        format!("access rule {:?}: maxModelSize {size:?}: {e}", rule.name)
                    })?;
                }
                if rule.max_concurrent_pulls == Some(0) {
                    return Err(format!(
                        "access rule {:?}: maxConcurrentPulls must be at least 1",
                        rule.name
                    ));
                }
            }
        }
        if let Some(signatures) = &file.signatures {
            for rule in signatures.rules.iter().chain(&signatures.default) {
                if rule.cosign.is_none() && rule.model_signing.is_none() {
                    return Err(format!(
                        "signature rule {:?}: name `cosign` keys and/or `modelSigning` keys",
                        rule.name
                    ));
                }
            }
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_shape() {
        let file = PolicyFile::parse(
            "access:\n  default: deny\n  rules:\n    - name: ml\n      namespaces: [ml]\n      modes: [inline, pv]\n      references: ['harbor.example/ml/*']\n      nodeCredentials: true\n      maxModelSize: 20GiB\n      maxConcurrentPulls: 2\nsignatures:\n  rules:\n    - name: signed\n      references: ['harbor.example/ml/**']\n      cosign: {keys: [/k.pub]}\n",
        )
        .unwrap();
        let access = file.access.unwrap();
        assert_eq!(access.default, Default::Deny);
        assert_eq!(access.rules[0].max_concurrent_pulls, Some(2));
        assert_eq!(file.signatures.unwrap().rules[0].action, Action::Enforce);
    }

    #[test]
    fn refuses_unknown_keys_and_empty_rules() {
        assert!(PolicyFile::parse("access:\n  default: deny\n  rulez: []\n").is_err());
        assert!(PolicyFile::parse(
            "access:\n  default: deny\n  rules:\n    - name: x\n      references: []\n"
        )
        .is_err());
        assert!(PolicyFile::parse("access:\n  default: maybe\n").is_err());
    }
}
