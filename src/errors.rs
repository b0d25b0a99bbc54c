//! The one error classifier: every failure of every layer is sorted into a [`FailureKind`],
//! and each kind has exactly one exit code (every command) and one gRPC code (CSI). Commands
//! and the CSI service never choose codes themselves; they ask the error for its kind
//! ([`Classify`], which each layer implements for its own error where it defines it: this
//! module sits below every layer and uses none of them). [`render`] is the one way an error
//! is shown to a person, its causes each said once.

use tonic::Code;

/// What kind of failure happened, as scripts and kubelet need to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum FailureKind {
    /// Bad usage, malformed reference, unsupported or unknown artifact, hostile manifest or
    /// archive entries refused as input.
    Input,
    /// The registry has no such thing (404), or `--pull-policy Never` and no cached copy.
    NotFound,
    /// The registry did not accept who we are (401).
    Unauthenticated,
    /// The registry or an access policy refuses these credentials (403, private model).
    PermissionDenied,
    /// The registry cannot be reached, or kept failing (429/5xx after retries, deadline).
    Network,
    /// Bytes do not match their digest or size, or were cut short.
    Integrity,
    /// The disk is full.
    NoSpace,
    /// Other local storage trouble: read-only, permissions, I/O errors.
    Storage,
    /// A signature is required and missing, or does not verify.
    Signature,
    /// Anything else.
    Other,
}

impl FailureKind {
    /// Every kind, for tables and tests.
    pub const ALL: [FailureKind; 10] = [
        FailureKind::Input,
        FailureKind::NotFound,
        FailureKind::Unauthenticated,
        FailureKind::PermissionDenied,
        FailureKind::Network,
        FailureKind::Integrity,
        FailureKind::NoSpace,
        FailureKind::Storage,
        FailureKind::Signature,
        FailureKind::Other,
    ];

    /// The process exit code of every command.
    pub fn exit_code(self) -> u8 {
        match self {
            FailureKind::Other => 1,
            FailureKind::Input => 2,
            FailureKind::NotFound
            | FailureKind::Unauthenticated
            | FailureKind::PermissionDenied => 3,
            FailureKind::Network => 4,
            FailureKind::Integrity => 5,
            FailureKind::NoSpace | FailureKind::Storage => 6,
            FailureKind::Signature => 7,
        }
    }

    /// The gRPC status code the CSI service answers with.
    pub fn grpc_code(self) -> Code {
        match self {
            FailureKind::Input => Code::InvalidArgument,
            FailureKind::NotFound => Code::NotFound,
            FailureKind::Unauthenticated => Code::Unauthenticated,
            FailureKind::PermissionDenied => Code::PermissionDenied,
            FailureKind::Network => Code::Unavailable,
            FailureKind::Integrity => Code::DataLoss,
            FailureKind::NoSpace => Code::ResourceExhausted,
            FailureKind::Storage | FailureKind::Other => Code::Internal,
            FailureKind::Signature => Code::FailedPrecondition,
        }
    }

    /// The registry refused the request for who we are or what we asked.
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            FailureKind::NotFound | FailureKind::Unauthenticated | FailureKind::PermissionDenied
        )
    }
}

/// An error that knows its kind. Each layer implements it for its own error, where that
/// error is defined; this module knows none of them.
pub trait Classify {
    fn kind(&self) -> FailureKind;
}

/// A local I/O failure: a full disk (or quota) apart from any other storage trouble.
pub fn io_kind(error: &std::io::Error) -> FailureKind {
    match error.raw_os_error() {
        Some(code) if code == nix::libc::ENOSPC || code == nix::libc::EDQUOT => {
            FailureKind::NoSpace
        }
        _ => FailureKind::Storage,
    }
}

/// An error as a person reads it: its own message, then each cause's, joined by ": ", every
/// clause once. The one rule for tugboat's errors is that a message never repeats its
/// source (thiserror `#[source]`/`#[from]` fields stay out of `#[error("...")]`), and every
/// place that shows an error to a person (the CLI's last line, CSI status messages, the warm
/// status, log fields) renders it here, so nothing in the chain is lost or said twice. A
/// foreign cause whose own message already ends with its cause's is not repeated either.
pub fn render(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let clause = cause.to_string();
        if !clause.is_empty() && !text.ends_with(&clause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&clause);
        }
        source = cause.source();
    }
    text
}

/// The gRPC status for an error: its kind's code, its rendered chain as the message (which
/// never carries credentials).
pub fn status(error: &(impl Classify + std::error::Error)) -> tonic::Status {
    tonic::Status::new(error.kind().grpc_code(), render(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's table, exactly.
    const TABLE: [(FailureKind, u8, Code); 10] = [
        (FailureKind::Input, 2, Code::InvalidArgument),
        (FailureKind::NotFound, 3, Code::NotFound),
        (FailureKind::Unauthenticated, 3, Code::Unauthenticated),
        (FailureKind::PermissionDenied, 3, Code::PermissionDenied),
        (FailureKind::Network, 4, Code::Unavailable),
        (FailureKind::Integrity, 5, Code::DataLoss),
        (FailureKind::NoSpace, 6, Code::ResourceExhausted),
        (FailureKind::Storage, 6, Code::Internal),
        (FailureKind::Signature, 7, Code::FailedPrecondition),
        (FailureKind::Other, 1, Code::Internal),
    ];

    #[test]
    fn every_kind_has_one_exit_code_and_one_grpc_code() {
        for (kind, exit, code) in TABLE {
            assert_eq!(kind.exit_code(), exit, "{kind:?}");
            assert_eq!(kind.grpc_code(), code, "{kind:?}");
        }
        assert_eq!(TABLE.len(), FailureKind::ALL.len());
    }

    #[derive(Debug)]
    struct Said(&'static str, Option<Box<Said>>);

    impl std::fmt::Display for Said {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Said {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|s| s as _)
        }
    }

    #[test]
    fn render_says_each_clause_once() {
        let chain = Said(
            "a",
            Some(Box::new(Said("b", Some(Box::new(Said("c", None)))))),
        );
        assert_eq!(render(&chain), "a: b: c");
        // A foreign error that prints its cause itself: the cause is not said again.
        let foreign = Said("a: b", Some(Box::new(Said("b", None))));
        assert_eq!(render(&foreign), "a: b");
        let silent = Said("a", Some(Box::new(Said("", None))));
        assert_eq!(render(&silent), "a");
    }
}
