//! The one classifier, seen from every command: each class of failure gets the same kind,
//! exit code and gRPC code in every command. These construct errors of many layers, so they
//! live here rather than in `errors.rs`, which sits below them all.

use std::io;
use tugboat::artifact::ArtifactError;
use tugboat::cache::CacheError;
use tugboat::digest::Digest;
use tugboat::errors::{Classify, FailureKind};
use tugboat::inspect::InspectError;
use tugboat::materialize::MaterializeError;
use tugboat::pull::PullError;
use tugboat::push::PushError;
use tugboat::registry::RegistryError;

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(nix::libc::ENOSPC)
}

fn erofs() -> io::Error {
    io::Error::from_raw_os_error(nix::libc::EROFS)
}

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
