//! Every error tugboat can show a person, as it shows it: one sample of every variant of every
//! error type in the crate (nested ones under every variant of what they wrap), rendered
//! through the renderers the program uses (`errors::render` for the CLI's last line, log
//! fields and the warm status; `errors::status` for CSI; an `anyhow` chain as the CLI builds
//! it). Each clause must appear once, nothing in the chain may be lost, and no message may
//! repeat its own source. Also: each class of failure gets the same kind, exit code and gRPC
//! code in every command.
//!
//! A new variant without a sample does not compile: each sample list is checked by a `match`
//! with one arm per listed variant and no wildcard.

use std::error::Error;
use std::io;
use std::net::SocketAddr;
use tugboat::advertise::AdvertiseError;
use tugboat::artifact::{ArtifactError, SelectionError};
use tugboat::cache::CacheError;
use tugboat::csi::flight::FlightLost;
use tugboat::digest::{Digest, DigestError};
use tugboat::errors::{self, Classify, FailureKind};
use tugboat::inspect::InspectError;
use tugboat::materialize::MaterializeError;
use tugboat::node::NodeError;
use tugboat::policy::{PolicyError, Reason};
use tugboat::pull::PullError;
use tugboat::push::PushError;
use tugboat::reference::ReferenceError;
use tugboat::registry::RegistryError;
use tugboat::safe_path::UnsafePath;
use tugboat::warm::WarmError;

/// The samples of an enum, one list per variant; the `match` inside fails to compile when a
/// variant has no list, and each sample is checked to be the variant it is listed under.
macro_rules! every_variant {
    ($ty:ident { $($variant:ident => $samples:expr),+ $(,)? }) => {{
        fn variant(e: &$ty) -> &'static str {
            match e {
                $($ty::$variant { .. } => stringify!($variant),)+
            }
        }
        let mut out: Vec<$ty> = Vec::new();
        $(
            let before = out.len();
            out.extend($samples);
            assert!(
                out.len() > before,
                "no sample of {}::{}",
                stringify!($ty),
                stringify!($variant)
            );
            for e in &out[before..] {
                assert_eq!(variant(e), stringify!($variant), "a sample listed under {}::{}", stringify!($ty), stringify!($variant));
            }
        )+
        out
    }};
}

fn digest(seed: &str) -> Digest {
    Digest::of_bytes(seed.as_bytes())
}

fn enoent() -> io::Error {
    io::Error::from_raw_os_error(nix::libc::ENOENT)
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(nix::libc::ENOSPC)
}

fn erofs() -> io::Error {
    io::Error::from_raw_os_error(nix::libc::EROFS)
}

/// An io::Error that carries one of tugboat's errors (as readers handed to tar do).
fn wrapped_io() -> io::Error {
    io::Error::other(CacheError::io("C/blobs/sha256/abc", enoent()))
}

fn digest_errors() -> Vec<DigestError> {
    every_variant!(DigestError {
        NoAlgorithm => [DigestError::NoAlgorithm("abc".into())],
        UnsupportedAlgorithm => [DigestError::UnsupportedAlgorithm("md5".into())],
        BadHex => [DigestError::BadHex("sha256:xyz".into())],
    })
}

fn reference_errors() -> Vec<ReferenceError> {
    every_variant!(ReferenceError {
        Empty => [ReferenceError::Empty],
        Invalid => [ReferenceError::Invalid {
            reference: "Bad//Ref".into(),
            problem: "the repository has an empty component".into(),
        }],
        Digest => digest_errors().into_iter().map(|source| ReferenceError::Digest {
            reference: "r.example/m@sha256:xyz".into(),
            source,
        }),
        Scheme => [ReferenceError::Scheme {
            reference: "hf://org/model".into(),
            scheme: "hf".into(),
            advice: "push the model to an OCI registry and use oci://REGISTRY/REPO:TAG".into(),
        }],
    })
}

fn unsafe_path() -> UnsafePath {
    UnsafePath {
        path: "../etc/passwd".into(),
        reason: "it leaves the model directory",
    }
}

fn registry_errors() -> Vec<RegistryError> {
    every_variant!(RegistryError {
        Unauthorized => [RegistryError::Unauthorized {
            registry: "r.example".into(),
            repository: "ml/m".into(),
            detail: "HTTP 401".into(),
        }],
        Forbidden => [RegistryError::Forbidden {
            registry: "r.example".into(),
            repository: "ml/m".into(),
        }],
        NotFound => [RegistryError::NotFound {
            registry: "r.example".into(),
            what: "manifest v1".into(),
        }],
        Status => [
            RegistryError::Status {
                registry: "r.example".into(),
                what: "blob sha256:ab".into(),
                status: 503,
                attempts: 5,
                detail: String::new(),
            },
            RegistryError::Status {
                registry: "r.example".into(),
                what: "blob sha256:ab".into(),
                status: 405,
                attempts: 1,
                detail: " (method not allowed)".into(),
            },
        ],
        Network => [RegistryError::Network {
            registry: "r.example".into(),
            what: "manifest v1".into(),
            attempts: 3,
            detail: "error sending request: client error (Connect): tcp connect error: Connection refused (os error 111)".into(),
        }],
        Protocol => [RegistryError::Protocol {
            registry: "r.example".into(),
            what: "blob sha256:ab".into(),
            detail: "bad Content-Range".into(),
        }],
        Config => [RegistryError::Config("cannot read --ca-file /etc/ca.pem: No such file or directory (os error 2)".into())],
        RedirectRefused => [RegistryError::RedirectRefused {
            registry: "r.example".into(),
            what: "blob sha256:ab".into(),
            detail: "redirect to http://127.0.0.1/ refused: host 127.0.0.1 is loopback".into(),
        }],
    })
}

fn artifact_errors() -> Vec<ArtifactError> {
    every_variant!(ArtifactError {
        Malformed => [ArtifactError::Malformed {
            detail: "raw layer sha256:ab has no org.cncf.model.filepath annotation: its file has no name".into(),
        }],
        UnsafeName => [ArtifactError::UnsafeName {
            annotation: "org.opencontainers.image.title",
            source: unsafe_path(),
        }],
        DuplicatePath => [ArtifactError::DuplicatePath { path: "model.gguf".into() }],
        NamesDisagree => [ArtifactError::NamesDisagree {
            digest: "sha256:ab".into(),
            title: "a.bin".into(),
            filepath: "b.bin".into(),
        }],
        Empty => [ArtifactError::Empty { format: "oras" }],
        NothingSelected => [ArtifactError::NothingSelected { format: "modelpack", layers: 3 }],
        KindsUnsupported => [ArtifactError::KindsUnsupported { format: "oras" }],
        UnknownLayer => [ArtifactError::UnknownLayer {
            format: "kitops",
            digest: "sha256:ab".into(),
            media_type: "application/x-odd".into(),
        }],
        VariantNeeded => [ArtifactError::VariantNeeded { variants: "q4, q8".into() }],
        NoSuchVariant => [ArtifactError::NoSuchVariant {
            wanted: "q2".into(),
            variants: "q4, q8".into(),
        }],
        AmbiguousVariant => [ArtifactError::AmbiguousVariant {
            wanted: "gguf".into(),
            variants: "q4, q8".into(),
        }],
        NotAnIndex => [ArtifactError::NotAnIndex { wanted: "q4".into() }],
        UnknownArtifact => [ArtifactError::UnknownArtifact {
            artifact_type: "application/x-thing".into(),
            config: "application/x-config".into(),
            layers: "application/x-layer".into(),
        }],
        Unsupported => [ArtifactError::Unsupported {
            format: "image",
            detail: "zstd:chunked".into(),
        }],
    })
}

fn cache_errors() -> Vec<CacheError> {
    every_variant!(CacheError {
        Io => [
            CacheError::io("C/snapshots/abc/part2.bin", enoent()),
            CacheError::io("C/blobs/sha256/abc", enospc()),
            CacheError::io("C/ingest", erofs()),
            CacheError::io("C/ingest/abc.partial", wrapped_io()),
        ],
        DigestMismatch => [CacheError::DigestMismatch {
            digest: digest("expected"),
            actual: digest("actual"),
        }],
        SizeMismatch => [CacheError::SizeMismatch {
            digest: digest("expected"),
            expected: 10,
            actual: 9,
        }],
        Corrupt => [CacheError::Corrupt {
            path: "C/refs/r.example/m/v1".into(),
            detail: "not a digest".into(),
        }],
    })
}

fn materialize_errors() -> Vec<MaterializeError> {
    every_variant!(MaterializeError {
        Cache => cache_errors().into_iter().map(MaterializeError::Cache),
        Destination => [MaterializeError::Destination {
            path: "/models".into(),
            detail: "is not empty and has no stamp".into(),
        }],
        UnsafeEntry => [MaterializeError::UnsafeEntry {
            digest: "sha256:ab".into(),
            entry: "../x".into(),
            reason: "it leaves the model directory".into(),
        }],
        DuplicatePath => [MaterializeError::DuplicatePath {
            digest: "sha256:ab".into(),
            path: "model.gguf".into(),
            detail: "by layer sha256:cd".into(),
        }],
        Limit => [MaterializeError::Limit {
            digest: "sha256:ab".into(),
            detail: "more than 100000 entries".into(),
        }],
        Archive => [MaterializeError::Archive {
            digest: "sha256:ab".into(),
            detail: "reading an entry header: unexpected end of file".into(),
        }],
    })
}

fn policy_errors() -> Vec<PolicyError> {
    every_variant!(PolicyError {
        Load => [PolicyError::Load {
            path: "/etc/tugboat/policy.yaml".into(),
            detail: "rules: expected a sequence".into(),
        }],
        Denied => [PolicyError::Denied {
            rule: "default".into(),
            namespace: "team-a".into(),
            mode: "inline",
            reference: "r.example/ml/m:v1".into(),
            reason: Reason::NotAllowed,
            detail: "no rule allows it".into(),
        }],
        Signature => [PolicyError::Signature {
            rule: "signed".into(),
            reference: "r.example/ml/m:v1".into(),
            detail: "no cosign signature verifies with key k1".into(),
        }],
        SignatureFetch => registry_errors().into_iter().map(|source| PolicyError::SignatureFetch {
            reference: "r.example/ml/m:v1".into(),
            source,
        }),
    })
}

fn pull_errors() -> Vec<PullError> {
    every_variant!(PullError {
        Registry => registry_errors().into_iter().map(PullError::Registry),
        Artifact => artifact_errors().into_iter().map(|source| PullError::Artifact {
            reference: "r.example/ml/m:v1".into(),
            source,
        }),
        Cache => cache_errors().into_iter().map(PullError::Cache),
        Materialize => materialize_errors().into_iter().map(PullError::Materialize),
        ManifestMismatch => [PullError::ManifestMismatch {
            expected: digest("expected"),
            actual: digest("actual"),
        }],
        Truncated => [PullError::Truncated {
            digest: digest("blob"),
            expected: 10,
            available: 9,
        }],
        NotCached => [PullError::NotCached { reference: "r.example/ml/m:v1".into() }],
        NoSpace => [PullError::NoSpace {
            path: "C".into(),
            needed: 100,
            available: 10,
        }],
        NoTarget => [PullError::NoTarget],
        PrivateDenied => registry_errors().into_iter().map(|source| PullError::PrivateDenied {
            reference: "r.example/ml/private:v1".into(),
            source,
        }),
        PrivateOffline => [PullError::PrivateOffline { reference: "r.example/ml/private:v1".into() }],
        MirrorCopyDenied => registry_errors()
            .into_iter()
            .filter(RegistryError::is_refusal)
            .map(|source| PullError::MirrorCopyDenied {
                reference: "r.example/ml/private:v1".into(),
                source,
            }),
        MirrorCopyUnconfirmed => registry_errors()
            .into_iter()
            .filter(|e| !e.is_refusal())
            .map(|source| PullError::MirrorCopyUnconfirmed {
                reference: "r.example/ml/private:v1".into(),
                source,
            }),
        Policy => policy_errors().into_iter().map(PullError::Policy),
    })
}

fn inspect_errors() -> Vec<InspectError> {
    every_variant!(InspectError {
        Registry => registry_errors().into_iter().map(InspectError::Registry),
        Artifact => artifact_errors().into_iter().map(|source| InspectError::Artifact {
            reference: "r.example/ml/m:v1".into(),
            source,
        }),
        Mismatch => [InspectError::Mismatch {
            what: "config",
            expected: digest("expected"),
            actual: digest("actual"),
        }],
    })
}

fn push_errors() -> Vec<PushError> {
    every_variant!(PushError {
        Io => [
            PushError::Io { path: "/src/model.gguf".into(), source: enoent() },
            PushError::Io { path: "/src/model.gguf".into(), source: wrapped_io() },
        ],
        Input => [PushError::Input {
            path: "/src".into(),
            detail: "is not a directory".into(),
        }],
        Registry => registry_errors().into_iter().map(PushError::Registry),
    })
}

fn transport_error() -> tonic::transport::Error {
    tonic::transport::Endpoint::from_shared("not a uri \u{0}")
        .expect_err("an invalid URI is refused")
}

fn node_errors() -> Vec<NodeError> {
    let addr: SocketAddr = "127.0.0.1:9808".parse().unwrap();
    every_variant!(NodeError {
        Endpoint => [NodeError::Endpoint("tcp://x".into())],
        NodeId => [NodeError::NodeId],
        Socket => [NodeError::Socket {
            path: "/csi/csi.sock".into(),
            source: io::Error::from_raw_os_error(nix::libc::EADDRINUSE),
        }],
        Cache => cache_errors().into_iter().map(NodeError::Cache),
        Serve => [NodeError::Serve(transport_error())],
        Http => [NodeError::Http {
            addr,
            source: io::Error::from_raw_os_error(nix::libc::EADDRINUSE),
        }],
        Registry => registry_errors().into_iter().map(NodeError::Registry),
        Advertise => advertise_errors().into_iter().map(NodeError::Advertise),
    })
}

fn advertise_errors() -> Vec<AdvertiseError> {
    every_variant!(AdvertiseError {
        NodeName => [AdvertiseError::NodeName],
        Cluster => [AdvertiseError::Cluster {
            detail: "KUBERNETES_SERVICE_HOST is not set: not running in a pod".into(),
        }],
        Kubeconfig => [AdvertiseError::Kubeconfig {
            path: "/etc/kubeconfig".into(),
            detail: "failed to read kubeconfig from '\"/etc/kubeconfig\"': No such file or directory (os error 2)".into(),
        }],
        Api => [
            AdvertiseError::Api {
                verb: "patch",
                node: "node-a".into(),
                code: Some(403),
                detail: "the apiserver answered 403: nodes \"node-a\" is forbidden (the daemon's ServiceAccount needs get and patch on nodes: manifests/rbac.yaml)".into(),
            },
            AdvertiseError::Api {
                verb: "get",
                node: "node-a".into(),
                code: None,
                detail: "client error (Connect): tcp connect error: Connection refused (os error 111)".into(),
            },
        ],
    })
}

fn warm_errors() -> Vec<WarmError> {
    every_variant!(WarmError {
        Read => [WarmError::Read { path: "/etc/tugboat/warm.yaml".into(), source: enoent() }],
        Invalid => [WarmError::Invalid {
            path: "/etc/tugboat/warm.yaml".into(),
            detail: "models[0].reference: reference \"Bad\"".into(),
        }],
    })
}

type Boxed = Box<dyn Error + Send + Sync + 'static>;

fn boxed<E: Error + Send + Sync + 'static>(label: &str, errors: Vec<E>) -> Vec<(String, Boxed)> {
    errors
        .into_iter()
        .enumerate()
        .map(|(i, e)| (format!("{label} #{i}: {e:?}"), Box::new(e) as Boxed))
        .collect()
}

/// Every sample of every error type, labelled.
fn every_error() -> Vec<(String, Boxed)> {
    let mut all = Vec::new();
    all.extend(boxed("DigestError", digest_errors()));
    all.extend(boxed("ReferenceError", reference_errors()));
    all.extend(boxed("UnsafePath", vec![unsafe_path()]));
    all.extend(boxed(
        "SelectionError",
        vec![SelectionError {
            flag: "--include",
            pattern: "[".into(),
            detail: "unclosed character class".into(),
        }],
    ));
    all.extend(boxed("FlightLost", vec![FlightLost]));
    all.extend(boxed("RegistryError", registry_errors()));
    all.extend(boxed("ArtifactError", artifact_errors()));
    all.extend(boxed("CacheError", cache_errors()));
    all.extend(boxed("MaterializeError", materialize_errors()));
    all.extend(boxed("PolicyError", policy_errors()));
    all.extend(boxed("PullError", pull_errors()));
    all.extend(boxed("InspectError", inspect_errors()));
    all.extend(boxed("PushError", push_errors()));
    all.extend(boxed("NodeError", node_errors()));
    all.extend(boxed("WarmError", warm_errors()));
    all.extend(boxed("AdvertiseError", advertise_errors()));
    all
}

/// Each clause once; every message of the chain present; no message repeating its source.
fn check(label: &str, error: &(dyn Error + 'static), rendered: &str) {
    let clauses: Vec<&str> = rendered.split(": ").collect();
    for (i, clause) in clauses.iter().enumerate() {
        assert!(
            !clauses[..i].contains(clause),
            "{label}: the clause {clause:?} is said twice in {rendered:?}"
        );
    }
    let mut level: Option<&(dyn Error + 'static)> = Some(error);
    while let Some(e) = level {
        let own = e.to_string();
        assert!(
            rendered.contains(&own),
            "{label}: {own:?} is lost from {rendered:?}"
        );
        if let Some(source) = e.source() {
            let said = source.to_string();
            assert!(
                said.is_empty() || !own.contains(&said),
                "{label}: the message {own:?} repeats its source {said:?}"
            );
        }
        level = e.source();
    }
}

#[test]
fn every_error_says_each_clause_once() {
    let all = every_error();
    assert!(all.len() > 100, "{} samples", all.len());
    for (label, error) in all {
        let rendered = errors::render(error.as_ref());
        check(&label, error.as_ref(), &rendered);
        // The CLI's chain: the error as `anyhow` holds it, and under a context line.
        let chained = anyhow::anyhow!(error);
        check(&label, chained.as_ref(), &errors::render(chained.as_ref()));
        assert_eq!(errors::render(chained.as_ref()), rendered, "{label}");
        let context = chained.context("running the command");
        let with_context = errors::render(context.as_ref());
        check(&label, context.as_ref(), &with_context);
        assert_eq!(with_context, format!("running the command: {rendered}"));
    }
}

/// CSI answers with the same rendering: for the pull errors kubelet sees, and every other
/// error with a kind.
#[test]
fn csi_status_messages_say_each_clause_once() {
    fn statuses<E: Classify + Error + 'static>(label: &str, errors: Vec<E>) {
        for e in errors {
            let status = errors::status(&e);
            assert_eq!(status.code(), e.kind().grpc_code(), "{label} {e:?}");
            assert_eq!(status.message(), errors::render(&e), "{label} {e:?}");
            check(label, &e, status.message());
        }
    }
    for e in pull_errors() {
        let status = tugboat::csi::status::from_pull(&e);
        assert_eq!(status.message(), errors::render(&e));
    }
    statuses("PullError", pull_errors());
    statuses("PolicyError", policy_errors());
    statuses("RegistryError", registry_errors());
    statuses("CacheError", cache_errors());
    statuses("MaterializeError", materialize_errors());
    statuses("InspectError", inspect_errors());
    statuses("PushError", push_errors());
    statuses("NodeError", node_errors());
    statuses("WarmError", warm_errors());
    statuses("AdvertiseError", advertise_errors());
}

/// The two lines the issue quotes, as tugboat now says them.
#[test]
fn the_quoted_lines_say_their_cause_once() {
    let missing = PullError::Cache(CacheError::io("C/snapshots/abc/part2.bin", enoent()));
    assert_eq!(
        errors::render(&missing),
        "C/snapshots/abc/part2.bin: No such file or directory (os error 2)"
    );
    let raw = PullError::Artifact {
        reference: "r.example/ml/m:v1".into(),
        source: ArtifactError::Malformed {
            detail: "raw layer sha256:ab has no org.cncf.model.filepath annotation: its file has no name".into(),
        },
    };
    assert_eq!(
        errors::render(&raw),
        "r.example/ml/m:v1: malformed manifest: raw layer sha256:ab has no \
         org.cncf.model.filepath annotation: its file has no name"
    );
}

// ---- the one classifier, seen from every command (these construct errors of many layers,
// so they live here rather than in `errors.rs`, which sits below them all) ----

fn registry(kind: FailureKind) -> Option<RegistryError> {
    let (registry, repository, what) = ("r.example".to_string(), "m".to_string(), "x".to_string());
    Some(match kind {
        FailureKind::Input => RegistryError::Config("bad".into()),
        FailureKind::NotFound => RegistryError::NotFound { registry, what },
        FailureKind::Unauthenticated => RegistryError::Unauthorized {
            registry,
            repository,
            detail: "401".into(),
        },
        FailureKind::PermissionDenied => RegistryError::Forbidden {
            registry,
            repository,
        },
        FailureKind::Network => RegistryError::Status {
            registry,
            what,
            status: 503,
            attempts: 5,
            detail: String::new(),
        },
        FailureKind::Integrity => RegistryError::Protocol {
            registry,
            what,
            detail: "bad Content-Range".into(),
        },
        FailureKind::Other => RegistryError::Status {
            registry,
            what,
            status: 405,
            attempts: 1,
            detail: String::new(),
        },
        _ => return None,
    })
}

fn io_of(kind: FailureKind) -> Option<io::Error> {
    match kind {
        FailureKind::NoSpace => Some(enospc()),
        FailureKind::Storage => Some(erofs()),
        _ => None,
    }
}

/// Each class of failure, as every command meets it, gets the same kind and therefore the
/// same exit code and gRPC code: pull (init container, CSI publish and warm all run it),
/// inspect and push.
#[test]
fn each_class_maps_the_same_in_every_command() {
    let digest = Digest::of_bytes(b"x");
    for kind in FailureKind::ALL {
        let mut seen: Vec<(&str, FailureKind)> = Vec::new();
        if let Some(e) = registry(kind) {
            seen.push(("pull", PullError::Registry(e).kind()));
            seen.push((
                "inspect",
                InspectError::Registry(registry(kind).unwrap()).kind(),
            ));
            seen.push(("push", PushError::Registry(registry(kind).unwrap()).kind()));
        }
        if let Some(e) = io_of(kind) {
            seen.push(("pull", PullError::Cache(CacheError::io("/c", e)).kind()));
            seen.push((
                "pull (dest)",
                PullError::Materialize(MaterializeError::Cache(CacheError::io(
                    "/d",
                    io_of(kind).unwrap(),
                )))
                .kind(),
            ));
        }
        match kind {
            FailureKind::Input => {
                let artifact = || ArtifactError::Malformed { detail: "x".into() };
                seen.push((
                    "pull",
                    PullError::Artifact {
                        reference: "r".into(),
                        source: artifact(),
                    }
                    .kind(),
                ));
                seen.push((
                    "inspect",
                    InspectError::Artifact {
                        reference: "r".into(),
                        source: artifact(),
                    }
                    .kind(),
                ));
                seen.push((
                    "push",
                    PushError::Input {
                        path: "/p".into(),
                        detail: "x".into(),
                    }
                    .kind(),
                ));
            }
            FailureKind::Integrity => {
                seen.push((
                    "pull",
                    PullError::ManifestMismatch {
                        expected: digest.clone(),
                        actual: digest.clone(),
                    }
                    .kind(),
                ));
                seen.push((
                    "inspect",
                    InspectError::Mismatch {
                        what: "manifest",
                        expected: digest.clone(),
                        actual: digest.clone(),
                    }
                    .kind(),
                ));
            }
            FailureKind::NotFound => seen.push((
                "pull --pull-policy Never",
                PullError::NotCached {
                    reference: "r".into(),
                }
                .kind(),
            )),
            _ => {}
        }
        for (command, got) in &seen {
            assert_eq!(*got, kind, "{command}");
            assert_eq!(got.exit_code(), kind.exit_code(), "{command}");
            assert_eq!(got.grpc_code(), kind.grpc_code(), "{command}");
        }
    }
}

// ---- the CLI's last line, against a real registry ----

#[path = "common/artifacts.rs"]
mod artifacts;
mod common;
use common::error_line;

/// The issue's line: a raw ModelPack layer without `org.cncf.model.filepath` is refused,
/// its reason said once.
#[test]
fn a_raw_layer_without_a_filepath_is_refused_once() {
    let reg = common::Registry::start();
    artifacts::push_artifact(
        &reg.host(),
        "evil/nameless",
        "v1",
        Some("application/vnd.cncf.model.manifest.v1+json"),
        (
            "application/vnd.cncf.model.config.v1+json",
            br#"{"descriptor":{"name":"x"},"config":{},"modelfs":{"type":"layers","diffIds":[]}}"#,
        ),
        &[artifacts::Layer::new(
            "application/vnd.cncf.model.weight.v1.raw",
            b"weights".to_vec(),
            &[],
        )],
        &[],
    );
    let dir = tempfile::tempdir().unwrap();
    let run = common::pull(
        &reg.reference("evil/nameless:v1"),
        &dir.path().join("dest"),
        Some(&dir.path().join("cache")),
        &[],
    );
    run.assert_code(2, "a nameless raw layer");
    let line = error_line(&run, "a nameless raw layer");
    assert_eq!(
        run.stderr.matches("its file has no name").count(),
        1,
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.matches("malformed manifest").count(),
        1,
        "{}",
        run.stderr
    );
    assert!(
        line.contains("has no org.cncf.model.filepath annotation"),
        "{line}"
    );
}

/// The issue's other line: an I/O error names its path and says its cause once, from the
/// cache (through the pull's transparent wrapper, as a snapshot file gone is reported) and
/// from push (a directory that is not there).
#[test]
fn an_io_error_says_its_cause_once() {
    let reg = common::Registry::start();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("part1.bin"), b"one").unwrap();
    let reference = reg.reference("ml/parts:v1");
    common::push(src.path(), &reference, &[]).assert_ok("push");

    // A --cache that is a file: the cache cannot make its folders under it.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::write(&cache, b"not a folder").unwrap();
    let run = common::pull(&reference, &dir.path().join("dest"), Some(&cache), &[]);
    let line = error_line(&run, "a pull into a cache that is a file");
    assert!(line.contains(&cache.display().to_string()), "{line}");
    assert_eq!(run.stderr.matches("(os error").count(), 1, "{}", run.stderr);

    let run = common::push(
        &src.path().join("missing"),
        &reg.reference("ml/missing:v1"),
        &[],
    );
    let line = error_line(&run, "a push of a missing directory");
    assert!(line.contains("missing"), "{line}");
    assert_eq!(
        run.stderr.matches("No such file or directory").count(),
        1,
        "{}",
        run.stderr
    );
}
