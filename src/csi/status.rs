//! How pull failures become gRPC statuses kubelet understands: the one classifier in
//! [`crate::errors`] decides the code (the same kind the CLI turns into its exit code);
//! messages come from the error types, which never carry credentials.

use crate::errors;
use crate::pull::PullError;
use tonic::Status;

pub fn from_pull(error: &PullError) -> Status {
    errors::status(error)
}
