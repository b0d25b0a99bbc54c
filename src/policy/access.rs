//! Access rules: the first rule whose namespaces, modes and reference patterns all match the
//! request grants it (with the rule's credentials and limits); otherwise the default decides.

use super::file::{AccessRule, AccessSection, Default};
use super::{Mode, PolicyError, Reason};
use crate::reference::Reference;
use globset::{Glob, GlobBuilder};

/// What an allowing rule grants.
#[derive(Clone, Debug)]
pub struct Grant {
    /// The rule's name (`default` for the default).
    pub rule: String,
    pub node_credentials: bool,
    pub max_model_size: Option<u64>,
    pub max_concurrent_pulls: Option<usize>,
    /// The matching pattern names the registry host literally, so loopback, link-local and
    /// node addresses are allowed for it.
    pub names_host: bool,
}

pub fn decide(
    access: &AccessSection,
    reference: &Reference,
    namespace: Option<&str>,
    mode: Mode,
) -> Result<Grant, PolicyError> {
    let target = format!("{}/{}", reference.registry(), reference.repository());
    for rule in &access.rules {
        if !namespace_matches(rule, namespace) || !mode_matches(rule, mode) {
            continue;
        }
        let Some(pattern) = rule.references.iter().find(|p| pattern_matches(p, &target)) else {
            continue;
        };
        return Ok(Grant {
            rule: rule.name.clone(),
            node_credentials: rule.node_credentials,
            max_model_size: rule
                .max_model_size
                .as_deref()
                .and_then(|s| crate::size::parse_size(s).ok()),
            max_concurrent_pulls: rule.max_concurrent_pulls,
            names_host: names_host(pattern, reference.registry()),
        });
    }
    match access.default {
        Default::Allow => Ok(Grant {
            rule: "default".to_string(),
            node_credentials: false,
            max_model_size: None,
            max_concurrent_pulls: None,
            names_host: false,
        }),
        Default::Deny => Err(PolicyError::Denied {
            rule: "default".to_string(),
            namespace: namespace.unwrap_or("").to_string(),
            mode: mode.name(),
            reference: reference.to_string(),
            reason: Reason::NotAllowed,
            detail: format!(
                "no rule allows {target} for this namespace and mode, and the default is deny; \
                 add a rule to the node policy (access.rules) naming it"
            ),
        }),
    }
}

fn namespace_matches(rule: &AccessRule, namespace: Option<&str>) -> bool {
    match (&rule.namespaces, namespace) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(patterns), Some(namespace)) => patterns.iter().any(|p| {
            Glob::new(p)
                .map(|g| g.compile_matcher().is_match(namespace))
                .unwrap_or(false)
        }),
    }
}

fn mode_matches(rule: &AccessRule, mode: Mode) -> bool {
    rule.modes
        .as_ref()
        .is_none_or(|modes| modes.contains(&mode))
}

/// `registry/repository` against a glob where `*` stays inside one path segment.
pub fn pattern_matches(pattern: &str, target: &str) -> bool {
    GlobBuilder::new(&pattern.to_ascii_lowercase())
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher().is_match(target.to_ascii_lowercase()))
        .unwrap_or(false)
}

/// Whether the pattern's registry part is this host, written out without wildcards.
fn names_host(pattern: &str, registry: &str) -> bool {
    let host = pattern.split('/').next().unwrap_or("");
    !host.contains(['*', '?', '[', '{']) && host.eq_ignore_ascii_case(registry)
}

#[cfg(test)]
mod tests {
    use super::super::file::PolicyFile;
    use super::*;

    fn section(yaml: &str) -> AccessSection {
        PolicyFile::parse(yaml).unwrap().access.unwrap()
    }

    #[test]
    fn first_matching_rule_grants_and_default_denies() {
        let access = section(
            "access:\n  default: deny\n  rules:\n    - name: ml\n      namespaces: [ml-*]\n      modes: [inline]\n      references: ['harbor.example/ml/*']\n      nodeCredentials: true\n",
        );
        let ok: Reference = "harbor.example/ml/tiny:v1".parse().unwrap();
        let grant = decide(&access, &ok, Some("ml-a"), Mode::Inline).unwrap();
        assert_eq!(grant.rule, "ml");
        assert!(grant.node_credentials && grant.names_host);
        for (reference, namespace, mode) in [
            ("harbor.example/other/tiny:v1", "ml-a", Mode::Inline),
            ("harbor.example/ml/deep/tiny:v1", "ml-a", Mode::Inline),
            ("evil.example/ml/tiny:v1", "ml-a", Mode::Inline),
            ("harbor.example/ml/tiny:v1", "web", Mode::Inline),
            ("harbor.example/ml/tiny:v1", "ml-a", Mode::Warm),
        ] {
            let reference: Reference = reference.parse().unwrap();
            let error = decide(&access, &reference, Some(namespace), mode).unwrap_err();
            assert!(error.to_string().contains("\"default\""), "{error}");
        }
    }

    #[test]
    fn wildcard_hosts_do_not_name_a_host() {
        assert!(!names_host("*/ml/*", "127.0.0.1:5000"));
        assert!(!names_host("127.0.0.*/ml/*", "127.0.0.1"));
        assert!(names_host("127.0.0.1:5000/ml/*", "127.0.0.1:5000"));
    }
}
