//! Checks CSI requests before anything happens, answering with the status codes the CSI spec
//! prescribes: INVALID_ARGUMENT for missing or malformed fields, FAILED_PRECONDITION for
//! capabilities tugboat cannot provide (block access, a writable volume).

use super::proto::volume_capability::access_mode::Mode;
use super::proto::volume_capability::AccessType;
use super::proto::{
    NodeGetVolumeStatsRequest, NodePublishVolumeRequest, NodeUnpublishVolumeRequest,
    VolumeCapability,
};
use crate::pull::PullPolicy;
use crate::reference::Reference;
use crate::safe_path::SafePath;
use clap::ValueEnum as _;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use tonic::Status;

/// `volume_context` keys.
pub const REFERENCE: &str = "reference";
pub const PULL_POLICY: &str = "pullPolicy";
pub const SUB_PATH: &str = "subPath";
/// Which variant of a ModelKit index to mount.
pub const VARIANT: &str = "variant";
pub const EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";
pub const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
pub const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
/// A signature rule of the node policy the volume asks for in addition (never instead).
pub const SIGNATURE_POLICY: &str = "signaturePolicy";

/// `--kubelet-root`: when set, publish targets must lie below it (checked after resolving
/// symlinks), so volume requests cannot make the daemon mount over arbitrary host paths.
static KUBELET_ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Configures the kubelet root (once, at daemon start); the directory must exist.
pub fn set_kubelet_root(root: &Path) -> std::io::Result<()> {
    let canonical = std::fs::canonicalize(root)?;
    let _ = KUBELET_ROOT.set(canonical);
    Ok(())
}

/// A target below the configured kubelet root, judged by its deepest existing ancestor with
/// symlinks resolved (kubelet creates the last components; a symlink cannot lead elsewhere).
fn check_under_kubelet_root(target: &Path) -> Result<(), Status> {
    let Some(root) = KUBELET_ROOT.get() else {
        return Ok(());
    };
    let mut existing = target.to_path_buf();
    let mut rest = Vec::new();
    let resolved = loop {
        match std::fs::canonicalize(&existing) {
            Ok(path) => break path,
            Err(_) => match (existing.file_name(), existing.parent()) {
                (Some(name), Some(parent)) => {
                    rest.push(name.to_owned());
                    existing = parent.to_path_buf();
                }
                _ => break existing.clone(),
            },
        }
    };
    let full = rest.iter().rev().fold(resolved, |p, c| p.join(c));
    if full.starts_with(root) && full != *root {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "target_path {:?} is outside the kubelet root {:?}",
            target.display().to_string(),
            root.display().to_string()
        )))
    }
}

/// A NodePublishVolume request that passed validation.
#[derive(Clone)]
pub struct Publish {
    pub volume_id: String,
    pub target: PathBuf,
    pub reference: Reference,
    pub policy: PullPolicy,
    pub sub_path: Option<SafePath>,
    /// `volumeAttributes.variant`: the variant of a ModelKit index.
    pub variant: Option<String>,
    pub mode: Mode,
    pub readonly: bool,
    /// `namespace/name` of the pod, for logs.
    pub pod: String,
    /// Never printed; turned into registry credentials by `secrets.rs`.
    pub secrets: HashMap<String, String>,
    /// The pod's namespace, as kubelet sends it (for the node policy).
    pub namespace: Option<String>,
    /// An inline ephemeral volume (else a persistent volume).
    pub ephemeral: bool,
    /// `volumeAttributes.signaturePolicy`.
    pub signature_policy: Option<String>,
}

impl Publish {
    /// Whether the same volume may also be published at another target on this node.
    pub fn shareable(&self) -> bool {
        matches!(
            self.mode,
            Mode::MultiNodeReaderOnly
                | Mode::MultiNodeSingleWriter
                | Mode::MultiNodeMultiWriter
                | Mode::SingleNodeMultiWriter
        )
    }
}

pub fn publish(request: &NodePublishVolumeRequest) -> Result<Publish, Status> {
    let volume_id = required("volume_id", &request.volume_id)?;
    let target = target_path("target_path", &request.target_path)?;
    check_under_kubelet_root(&target)?;
    let capability = request
        .volume_capability
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
    let mode = capability_mode(capability)?;
    let read_only_mode = matches!(mode, Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly);
    if !request.readonly && !read_only_mode {
        return Err(Status::failed_precondition(
            "tugboat volumes are read-only: set readOnly: true on the volume \
             (or use a ReadOnlyMany access mode)",
        ));
    }
    let context = &request.volume_context;
    let reference = reference(volume_id, context)?;
    let policy = match context.get(PULL_POLICY).map(|p| p.trim()) {
        None | Some("") => PullPolicy::IfNotPresent,
        Some(text) => PullPolicy::from_str(text, true).map_err(|_| {
            Status::invalid_argument(format!(
                "volumeAttributes.{PULL_POLICY} {text:?}: expected IfNotPresent, Always or Never"
            ))
        })?,
    };
    let sub_path =
        match context.get(SUB_PATH).map(|p| p.trim_matches('/')) {
            None | Some("") | Some(".") => None,
            Some(text) => Some(SafePath::new(text).map_err(|e| {
                Status::invalid_argument(format!("volumeAttributes.{SUB_PATH}: {e}"))
            })?),
        };
    let pod = match (context.get(POD_NAMESPACE), context.get(POD_NAME)) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        _ => String::new(),
    };
    Ok(Publish {
        volume_id: volume_id.to_string(),
        target,
        reference,
        policy,
        sub_path,
        variant: context
            .get(VARIANT)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty()),
        mode,
        readonly: request.readonly,
        pod,
        secrets: request.secrets.clone(),
        namespace: context
            .get(POD_NAMESPACE)
            .filter(|n| !n.is_empty())
            .cloned(),
        ephemeral: context.get(EPHEMERAL).is_some_and(|v| v == "true"),
        signature_policy: context
            .get(SIGNATURE_POLICY)
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty()),
    })
}

/// The model: `volumeAttributes.reference`, or for a static PV a volumeHandle that is itself
/// a reference with an explicit repository path (`registry/repo:tag`); an ephemeral volume's
/// generated id never is.
fn reference(volume_id: &str, context: &HashMap<String, String>) -> Result<Reference, Status> {
    let ephemeral = context.get(EPHEMERAL).is_some_and(|v| v == "true");
    let text = match context.get(REFERENCE).map(|r| r.trim()) {
        Some(text) if !text.is_empty() => text,
        _ if !ephemeral && volume_id.contains('/') => volume_id,
        _ => {
            return Err(Status::invalid_argument(format!(
                "volumeAttributes.{REFERENCE} is required: the model to mount, e.g. \
                 harbor.example.com/ml-models/tinyllama:v1 (a static PV may name it in volumeHandle)"
            )))
        }
    };
    text.parse::<Reference>().map_err(|e| {
        Status::invalid_argument(format!(
            "{REFERENCE} {text:?}: {}",
            crate::errors::render(&e)
        ))
    })
}

fn capability_mode(capability: &VolumeCapability) -> Result<Mode, Status> {
    match &capability.access_type {
        None => {
            return Err(Status::invalid_argument(
                "volume_capability.access_type is required (mount)",
            ))
        }
        Some(AccessType::Block(_)) => {
            return Err(Status::failed_precondition(
                "tugboat volumes are filesystems; block access is not supported",
            ))
        }
        Some(AccessType::Mount(_)) => {}
    }
    let mode = capability
        .access_mode
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("volume_capability.access_mode is required"))?;
    match Mode::try_from(mode.mode) {
        Ok(Mode::Unknown) | Err(_) => Err(Status::invalid_argument(format!(
            "volume_capability.access_mode {} is not a known access mode",
            mode.mode
        ))),
        Ok(mode) => Ok(mode),
    }
}

pub fn unpublish(request: &NodeUnpublishVolumeRequest) -> Result<(String, PathBuf), Status> {
    let volume_id = required("volume_id", &request.volume_id)?;
    let target = target_path("target_path", &request.target_path)?;
    Ok((volume_id.to_string(), target))
}

/// A missing field is INVALID_ARGUMENT; a path no volume can be published at (relative, or
/// with `..`) is NOT_FOUND, as the spec's table says for "volume does not exist on the
/// specified path" (csi-sanity asks with `some/path`).
pub fn volume_stats(request: &NodeGetVolumeStatsRequest) -> Result<(String, PathBuf), Status> {
    let volume_id = required("volume_id", &request.volume_id)?;
    let value = required("volume_path", &request.volume_path)?;
    let path = target_path("volume_path", value).map_err(|_| {
        Status::not_found(format!(
            "volume {volume_id} is not published at {value:?}: not an absolute path without '..'"
        ))
    })?;
    Ok((volume_id.to_string(), path))
}

fn required<'a>(name: &str, value: &'a str) -> Result<&'a str, Status> {
    if value.trim().is_empty() {
        Err(Status::invalid_argument(format!("{name} is required")))
    } else {
        Ok(value)
    }
}

/// An absolute path without `..` (kubelet always sends one).
fn target_path(name: &str, value: &str) -> Result<PathBuf, Status> {
    let value = required(name, value)?;
    let path = Path::new(value);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(Status::invalid_argument(format!(
            "{name} {value:?} must be an absolute path without '..'"
        )));
    }
    Ok(path.components().collect())
}

#[cfg(test)]
mod tests {
    use super::super::proto::volume_capability::{AccessMode, BlockVolume, MountVolume};
    use super::*;
    use tonic::Code;

    fn valid() -> NodePublishVolumeRequest {
        NodePublishVolumeRequest {
            volume_id: "csi-1".into(),
            target_path: "/var/lib/kubelet/pods/x/volumes/m/mount".into(),
            volume_capability: Some(VolumeCapability {
                access_mode: Some(AccessMode {
                    mode: Mode::SingleNodeWriter as i32,
                }),
                access_type: Some(AccessType::Mount(MountVolume::default())),
            }),
            readonly: true,
            volume_context: HashMap::from([
                (REFERENCE.into(), "reg.example:5000/m/tiny:v1".into()),
                (EPHEMERAL.into(), "true".into()),
            ]),
            ..Default::default()
        }
    }

    fn code(request: &NodePublishVolumeRequest) -> Code {
        match publish(request) {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        }
    }

    #[test]
    fn publish_error_codes() {
        assert_eq!(code(&valid()), Code::Ok);
        let mut r = valid();
        r.volume_id.clear();
        assert_eq!(code(&r), Code::InvalidArgument);
        let mut r = valid();
        r.target_path = "relative/path".into();
        assert_eq!(code(&r), Code::InvalidArgument);
        let mut r = valid();
        r.volume_capability = None;
        assert_eq!(code(&r), Code::InvalidArgument);
        let mut r = valid();
        r.volume_capability.as_mut().unwrap().access_type = Some(AccessType::Block(BlockVolume {}));
        assert_eq!(code(&r), Code::FailedPrecondition);
        let mut r = valid();
        r.readonly = false;
        assert_eq!(code(&r), Code::FailedPrecondition);
        let mut r = valid();
        r.volume_context.remove(REFERENCE);
        assert_eq!(code(&r), Code::InvalidArgument);
        let mut r = valid();
        r.volume_context
            .insert(REFERENCE.into(), "Not A Reference!".into());
        assert_eq!(code(&r), Code::InvalidArgument);
        let mut r = valid();
        r.volume_context.insert(SUB_PATH.into(), "../etc".into());
        assert_eq!(code(&r), Code::InvalidArgument);
        let mut r = valid();
        r.volume_context
            .insert(PULL_POLICY.into(), "Sometimes".into());
        assert_eq!(code(&r), Code::InvalidArgument);
    }

    #[test]
    fn volume_stats_error_codes() {
        let code = |id: &str, path: &str| match volume_stats(&NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: path.into(),
            staging_target_path: String::new(),
        }) {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        assert_eq!(code("", "/var/lib/kubelet/pods/x"), Code::InvalidArgument);
        assert_eq!(code("vol", ""), Code::InvalidArgument);
        assert_eq!(code("vol", "some/path"), Code::NotFound);
        assert_eq!(code("vol", "/var/lib/../x"), Code::NotFound);
        assert_eq!(code("vol", "/var/lib/kubelet/pods/x"), Code::Ok);
    }

    #[test]
    fn the_variant_attribute_names_a_modelkit_variant() {
        assert_eq!(publish(&valid()).unwrap().variant, None);
        let mut r = valid();
        r.volume_context.insert(VARIANT.into(), " q4_0 ".into());
        assert_eq!(publish(&r).unwrap().variant.as_deref(), Some("q4_0"));
    }

    #[test]
    fn static_pv_volume_handle_names_the_model() {
        let mut r = valid();
        r.volume_context.clear();
        r.volume_id = "reg.example:5000/m/tiny:v1".into();
        let publish = publish(&r).unwrap();
        assert_eq!(publish.reference.repository(), "m/tiny");
        // An ephemeral volume's generated id is never taken for a reference.
        let mut r = valid();
        r.volume_context.remove(REFERENCE);
        r.volume_id = "csi-0123abcd".into();
        assert_eq!(code(&r), Code::InvalidArgument);
    }
}
