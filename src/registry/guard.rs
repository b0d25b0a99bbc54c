//! The check every redirect target and token realm passes before it is contacted (the node
//! policy's host rules): built by the policy, held by the client's connections and by the
//! token flow alike.

/// Judges one redirect target: `Err(why)` stops the request.
pub type RedirectCheck = dyn Fn(&url::Url) -> Result<(), String> + Send + Sync;

/// A check on redirect targets, shared by the client's connections.
#[derive(Clone)]
pub struct RedirectGuard(pub std::sync::Arc<RedirectCheck>);

impl std::fmt::Debug for RedirectGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedirectGuard")
    }
}
