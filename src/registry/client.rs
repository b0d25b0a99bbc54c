//! The distribution API calls tugboat makes (manifests, blobs with Range, uploads), each with
//! retries and backoff on transient failures, mirror fallback, and errors mapped to what the
//! user should check. Each view of the client records whether a mirror served it anything, so
//! a pull knows when the origin must still confirm access.

use super::auth::Authorizer;
use super::endpoint::{Endpoint, EndpointPolicy};
use super::error::RegistryError;
use super::guard::RedirectGuard;
use super::retry::RetryPolicy;
use crate::digest::Digest;
use crate::reference::Reference;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::{RequestBuilder, Response, StatusCode};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Manifests larger than this are refused (the distribution spec's recommended limit).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Media types accepted for manifests and indexes.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// Everything needed to build a client, from the command line or a CSI request.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    pub endpoints: EndpointPolicy,
    pub ca_file: Option<PathBuf>,
    pub credentials: super::credentials::CredentialStore,
    /// Attempts per request for transient failures (429, 5xx, connection loss).
    pub max_attempts: u32,
    /// How long one request or blob may keep failing; `None` = [`super::retry::DEFAULT_DEADLINE`].
    pub retry_deadline: Option<Duration>,
    /// Chunking, streams per blob and the global cap on concurrent blob requests.
    pub transfer: super::TransferOptions,
    /// Judges every redirect target and token realm before it is contacted (the node policy's
    /// host rules).
    pub redirect_guard: Option<RedirectGuard>,
}

/// Raw manifest bytes as served.
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub media_type: Option<String>,
    /// A mirror served it, not the origin: it says nothing about who may read the model.
    pub from_mirror: bool,
}

/// A blob body, possibly starting at an offset (`resumed`).
pub struct BlobBody {
    /// The registry honoured the Range request (206); otherwise the body starts at byte 0.
    pub resumed: bool,
    pub content_length: Option<u64>,
    pub stream: Pin<Box<dyn Stream<Item = Result<Bytes, RegistryError>> + Send>>,
}

/// The distribution client. Cloning it, or taking a view with other credentials
/// ([`Self::with_credentials`], [`Self::anonymous`]), shares one connection pool, one token
/// cache and one request cap: the node daemon builds one for its lifetime and passes each
/// request's credentials.
#[derive(Clone)]
pub struct RegistryClient {
    shared: Arc<Shared>,
    credentials: super::credentials::CredentialStore,
    trace: Arc<MirrorTrace>,
}

/// What mirrors did for one view (one pull): whether any served it, and which untrusted ones
/// refused it for want of credentials (skipped from then on, and warned about once).
#[derive(Default)]
struct MirrorTrace {
    served: std::sync::atomic::AtomicBool,
    refused: std::sync::Mutex<Vec<String>>,
}

/// What every view of one client shares.
struct Shared {
    /// The pool for every registry whose certificate is checked (all of them, unless
    /// `--insecure-registry` names a host).
    verified: reqwest::Client,
    /// The pool for `--insecure-registry` hosts, built only when one is configured.
    unverified: Option<reqwest::Client>,
    authorizer: Authorizer,
    /// Redirects and token realms are judged by it (see [`RegistryOptions::redirect_guard`]).
    redirect_guard: Option<RedirectGuard>,
    /// `--ca-file` was given: verified TLS has roots even without a system CA store.
    has_ca_file: bool,
    policy: EndpointPolicy,
    retry: RetryPolicy,
    transfer: super::TransferOptions,
    /// (credential fingerprint or "" for anonymous, reference) -> when the origin last served
    /// or confirmed it to those credentials.
    readable: std::sync::Mutex<std::collections::HashMap<(String, String), std::time::Instant>>,
}

impl RegistryClient {
    pub fn new(options: RegistryOptions) -> Result<Self, RegistryError> {
        let mut roots = Vec::new();
        if let Some(path) = &options.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                RegistryError::Config(format!("cannot read --ca-file {}: {e}", path.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                RegistryError::Config(format!(
                    "--ca-file {}: not PEM certificates: {e}",
                    path.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(RegistryError::Config(format!(
                    "--ca-file {}: no certificate found",
                    path.display()
                )));
            }
            roots = certs;
        }
        let guard = options.redirect_guard.clone();
        let build = |accept_invalid: bool| {
            let builder = reqwest::Client::builder()
                .user_agent(concat!("tugboat/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(15))
                .read_timeout(Duration::from_secs(60))
                // Many layers and chunks share one pool; HTTP/2 is negotiated by ALPN over
                // TLS where the registry offers it, and then multiplexes them instead.
                .pool_max_idle_per_host(options.transfer.max_requests.max(8))
                .tcp_nodelay(true)
                .http2_adaptive_window(true)
                .tls_danger_accept_invalid_certs(accept_invalid);
            let builder = match guard.clone() {
                Some(RedirectGuard(check)) => {
                    builder.redirect(reqwest::redirect::Policy::custom(move |attempt| {
                        if attempt.previous().len() >= 10 {
                            return attempt.error("too many redirects");
                        }
                        match check(attempt.url()) {
                            Ok(()) => attempt.follow(),
                            Err(why) => {
                                let refusal =
                                    format!("redirect to {} refused: {why}", attempt.url());
                                attempt.error(refusal)
                            }
                        }
                    }))
                }
                None => builder,
            };
            super::tls::with_roots(builder, &roots)
                .build()
                .map_err(|e| RegistryError::Config(format!("cannot build HTTP client: {e}")))
        };
        let unverified = if options.endpoints.insecure_hosts.is_empty() {
            None
        } else {
            Some(build(true)?)
        };
        Ok(RegistryClient {
            shared: Arc::new(Shared {
                verified: build(false)?,
                unverified,
                authorizer: Authorizer::with_realm_guard(guard.clone()),
                redirect_guard: guard,
                has_ca_file: options.ca_file.is_some(),
                policy: options.endpoints,
                retry: RetryPolicy {
                    deadline: options
                        .retry_deadline
                        .unwrap_or(super::retry::DEFAULT_DEADLINE),
                    ..RetryPolicy::new(options.max_attempts)
                },
                transfer: options.transfer,
                readable: Default::default(),
            }),
            credentials: options.credentials,
            trace: Default::default(),
        })
    }

    /// The same client (pool, endpoints, CA, retries, token cache) sending these credentials.
    pub fn with_credentials(&self, credentials: super::credentials::CredentialStore) -> Self {
        RegistryClient {
            shared: self.shared.clone(),
            credentials,
            trace: Default::default(),
        }
    }

    /// The same client and credentials with a fresh record of what mirrors served: one per
    /// pull, so [`Self::served_by_mirror`] and the untrusted-mirror warning are that pull's.
    pub fn for_one_pull(&self) -> Self {
        self.with_credentials(self.credentials.clone())
    }

    /// Whether a mirror served this view a manifest or a blob.
    pub fn served_by_mirror(&self) -> bool {
        self.trace.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The same client without any credentials.
    pub fn anonymous(&self) -> Result<Self, RegistryError> {
        Ok(self.with_credentials(Default::default()))
    }

    /// The credentials this view sends (to extend with a request's own secret).
    pub fn credentials(&self) -> &super::credentials::CredentialStore {
        &self.credentials
    }

    /// Whether requests for `reference`'s registry go to a mirror first.
    pub fn has_mirror(&self, reference: &Reference) -> bool {
        self.shared
            .policy
            .endpoints(reference.registry(), reference.api_host())
            .len()
            > 1
    }

    /// Chunking and concurrency settings for blob downloads.
    pub fn transfer(&self) -> &super::TransferOptions {
        &self.shared.transfer
    }

    /// The retry policy every request and blob download of this client follows.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.shared.retry
    }

    /// Token requests this client and its views have made (they share one token cache).
    pub fn token_requests(&self) -> u64 {
        self.shared
            .authorizer
            .token_requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The credentials this client sends to `registry`, if any.
    pub fn credentials_for(&self, registry: &str) -> Option<&super::Credentials> {
        self.credentials.lookup(registry)
    }

    fn readable_key(&self, reference: &Reference) -> (String, String) {
        let who = self
            .credentials_for(reference.registry())
            .map(|c| c.fingerprint())
            .unwrap_or_default();
        (who, reference.to_string())
    }

    /// Notes that the origin just served `reference` to this view's credentials.
    pub fn note_readable(&self, reference: &Reference, ttl: Duration) {
        let mut memo = self
            .shared
            .readable
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        memo.retain(|_, at| at.elapsed() < ttl);
        memo.insert(self.readable_key(reference), std::time::Instant::now());
    }

    /// Whether the origin served or confirmed `reference` to these credentials within `ttl`.
    pub fn readable_recently(&self, reference: &Reference, ttl: Duration) -> bool {
        let memo = self
            .shared
            .readable
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        memo.get(&self.readable_key(reference))
            .is_some_and(|at| at.elapsed() < ttl)
    }

    /// Whether the origin registry lets this client read a manifest: a HEAD sent to the
    /// origin only, never a mirror: a mirror's answer says nothing about who may read it.
    pub async fn manifest_readable(&self, reference: &Reference) -> Result<(), RegistryError> {
        let endpoint = self.origin(reference);
        let url = endpoint.url(&manifest_path(reference));
        let what = format!("manifest {reference}");
        self.send(&endpoint, reference.repository(), false, &what, |c| {
            c.head(&url).header(ACCEPT, MANIFEST_ACCEPT)
        })
        .await
        .map(|_| ())
    }

    /// Fetches a manifest or index by tag or digest (mirrors first), refusing oversize bodies.
    pub async fn manifest(&self, reference: &Reference) -> Result<FetchedManifest, RegistryError> {
        let path = manifest_path(reference);
        let what = format!("manifest {reference}");
        self.with_fallback(reference, |endpoint| {
            let path = path.clone();
            let what = what.clone();
            async move {
                // A body cut short or damaged on the way is fetched again, like a 5xx.
                let mut backoff = self.shared.retry.backoff();
                loop {
                    let response = self
                        .send(&endpoint, reference.repository(), false, &what, |c| {
                            c.get(endpoint.url(&path)).header(ACCEPT, MANIFEST_ACCEPT)
                        })
                        .await?;
                    let media_type = header_str(response.headers(), CONTENT_TYPE.as_str());
                    let announced = header_str(response.headers(), "docker-content-digest")
                        .and_then(|d| d.parse::<Digest>().ok());
                    let error = match read_limited(response, MAX_MANIFEST_BYTES, &endpoint, &what)
                        .await
                    {
                        Ok(bytes) => match announced {
                            Some(digest) if Digest::of_bytes(&bytes) != digest => {
                                RegistryError::Protocol {
                                    registry: endpoint.host.clone(),
                                    what: what.clone(),
                                    detail: format!(
                                        "the bytes served hash to {} but Docker-Content-Digest says {digest}",
                                        Digest::of_bytes(&bytes)
                                    ),
                                }
                            }
                            _ => {
                                return Ok(FetchedManifest {
                                    bytes,
                                    media_type,
                                    from_mirror: endpoint.mirror.is_some(),
                                })
                            }
                        },
                        Err(e) if e.is_transient() => e,
                        Err(e) => return Err(e),
                    };
                    match backoff.next_delay(None) {
                        Some(delay) => {
                            tracing::debug!(%error, ?delay, "manifest body failed; fetching it again");
                            tokio::time::sleep(delay).await;
                        }
                        None => return Err(error),
                    }
                }
            }
        })
        .await
    }

    /// Resolves a tag to a digest with a HEAD request; `None` when the registry omits the header.
    pub async fn manifest_digest(
        &self,
        reference: &Reference,
    ) -> Result<Option<Digest>, RegistryError> {
        let path = manifest_path(reference);
        let what = format!("manifest {reference}");
        self.with_fallback(reference, |endpoint| {
            let path = path.clone();
            let what = what.clone();
            async move {
                let response = self
                    .send(&endpoint, reference.repository(), false, &what, |c| {
                        c.head(endpoint.url(&path)).header(ACCEPT, MANIFEST_ACCEPT)
                    })
                    .await?;
                Ok(header_str(response.headers(), "docker-content-digest")
                    .and_then(|d| d.parse().ok()))
            }
        })
        .await
    }

    /// Streams a blob from `offset` (a Range request when non-zero; mirrors first).
    pub async fn blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobBody, RegistryError> {
        self.blob_range(reference, digest, offset, None).await
    }

    /// Streams bytes `start..end` of a blob (`end` exclusive; `None` = to the end), with a
    /// Range request unless that is the whole blob. A registry that ignores Range answers 200
    /// with the whole blob (`resumed` false). The request holds a slot of the global request
    /// cap until its body is dropped.
    pub async fn blob_range(
        &self,
        reference: &Reference,
        digest: &Digest,
        start: u64,
        end: Option<u64>,
    ) -> Result<BlobBody, RegistryError> {
        let path = format!("/v2/{}/blobs/{digest}", reference.repository());
        let what = format!("blob {digest}");
        let range = match (start, end) {
            (0, None) => None,
            (start, None) => Some(format!("bytes={start}-")),
            (start, Some(end)) => Some(format!("bytes={start}-{}", end.saturating_sub(1))),
        };
        let slot = self.shared.transfer.request_slot().await;
        self.with_fallback(reference, |endpoint| {
            let path = path.clone();
            let what = what.clone();
            let range = range.clone();
            async move {
                let response = self
                    .send(&endpoint, reference.repository(), false, &what, |c| {
                        let request = c.get(endpoint.url(&path));
                        match &range {
                            Some(range) => request.header(RANGE, range),
                            None => request,
                        }
                    })
                    .await?;
                let resumed = response.status() == StatusCode::PARTIAL_CONTENT;
                if resumed {
                    let served = header_str(response.headers(), "content-range");
                    let first = served
                        .as_deref()
                        .and_then(|r| r.strip_prefix("bytes "))
                        .and_then(|r| r.split(['-', '/']).next())
                        .and_then(|n| n.trim().parse::<u64>().ok());
                    if first != Some(start) {
                        return Err(RegistryError::Protocol {
                            registry: endpoint.host.clone(),
                            what,
                            detail: format!(
                                "asked for bytes from {start}, the registry served Content-Range {served:?}"
                            ),
                        });
                    }
                }
                let content_length = response.content_length();
                let registry = endpoint.host.clone();
                let stream = response
                    .bytes_stream()
                    .map_err(move |e| RegistryError::Network {
                        registry: registry.clone(),
                        what: what.clone(),
                        attempts: 1,
                        detail: crate::errors::render(&e),
                    });
                Ok((resumed, content_length, stream))
            }
        })
        .await
        .map(|(resumed, content_length, stream)| {
            // The slot travels with the body and is released when the body is dropped.
            let stream = stream.map(move |item| {
                let _held = &slot;
                item
            });
            BlobBody {
                resumed,
                content_length,
                stream: Box::pin(stream),
            }
        })
    }

    /// The OCI 1.1 referrers index of `digest`; `None` where the registry has no referrers API.
    pub async fn referrers(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<Option<Bytes>, RegistryError> {
        const INDEX: &str = "application/vnd.oci.image.index.v1+json";
        let endpoint = self.origin(reference);
        let url = endpoint.url(&format!(
            "/v2/{}/referrers/{digest}",
            reference.repository()
        ));
        let what = format!("referrers of {digest}");
        let sent = self
            .send(&endpoint, reference.repository(), false, &what, |c| {
                c.get(&url).header(ACCEPT, INDEX)
            })
            .await;
        match sent {
            Ok(response) => {
                let is_index = header_str(response.headers(), CONTENT_TYPE.as_str())
                    .is_some_and(|t| t.starts_with(INDEX));
                if !is_index {
                    return Ok(None);
                }
                read_limited(response, MAX_MANIFEST_BYTES, &endpoint, &what)
                    .await
                    .map(Some)
            }
            Err(RegistryError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the repository already holds a blob (skips re-uploading it).
    pub async fn blob_exists(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let endpoint = self.origin(reference);
        let url = endpoint.url(&format!("/v2/{}/blobs/{digest}", reference.repository()));
        let what = format!("blob {digest}");
        match self
            .send(&endpoint, reference.repository(), true, &what, |c| {
                c.head(&url)
            })
            .await
        {
            Ok(_) => Ok(true),
            Err(RegistryError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Uploads a file as one blob: POST, then the bytes in PATCH chunks of at most
    /// [`UPLOAD_CHUNK`] (each request short, whatever the model's size: a monolithic PUT of
    /// tens of gigabytes outlives any read timeout), then a PUT with the digest.
    pub async fn push_blob_file(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        path: &Path,
    ) -> Result<(), RegistryError> {
        let endpoint = self.origin(reference);
        let what = format!("upload of blob {digest}");
        let repository = reference.repository();
        let start_url = endpoint.url(&format!("/v2/{repository}/blobs/uploads/"));
        let started = self
            .send(&endpoint, repository, true, &what, |c| {
                c.post(&start_url).header(CONTENT_LENGTH, "0")
            })
            .await?;
        let mut upload_url = upload_location(&endpoint, &what, started.headers())?;
        let mut offset = 0;
        while offset < size {
            let length = (size - offset).min(UPLOAD_CHUNK);
            let url = upload_url.clone();
            let path = path.to_path_buf();
            let accepted = self
                .send(&endpoint, repository, true, &what, |c| {
                    c.patch(url.clone())
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_LENGTH, length)
                        .header(
                            reqwest::header::CONTENT_RANGE,
                            format!("{offset}-{}", offset + length - 1),
                        )
                        .body(file_range_body(&path, offset, length))
                })
                .await?;
            upload_url = upload_location(&endpoint, &what, accepted.headers())?;
            offset += length;
        }
        upload_url
            .query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        self.send(&endpoint, repository, true, &what, |c| {
            c.put(upload_url.clone()).header(CONTENT_LENGTH, "0")
        })
        .await?;
        Ok(())
    }

    /// Uploads a manifest under `reference`'s tag; returns the digest of the bytes sent.
    pub async fn push_manifest(
        &self,
        reference: &Reference,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let endpoint = self.origin(reference);
        let url = endpoint.url(&manifest_path(reference));
        let what = format!("manifest {reference}");
        self.send(&endpoint, reference.repository(), true, &what, |c| {
            c.put(&url)
                .header(CONTENT_TYPE, media_type)
                .body(bytes.clone())
        })
        .await?;
        Ok(Digest::of_bytes(&bytes))
    }

    /// The pool for this endpoint: the insecure one only for `--insecure-registry` hosts.
    fn http(&self, endpoint: &Endpoint) -> &reqwest::Client {
        match (&self.shared.unverified, endpoint.insecure) {
            (Some(unverified), true) => unverified,
            _ => &self.shared.verified,
        }
    }

    fn origin(&self, reference: &Reference) -> Endpoint {
        self.shared
            .policy
            .endpoints(reference.registry(), reference.api_host())
            .pop()
            .expect("the origin is always the last endpoint")
    }

    /// Runs `call` against each mirror, then the origin; the first success wins. An untrusted
    /// mirror that refused this view for want of credentials is not asked again by it.
    async fn with_fallback<T, F, Fut>(
        &self,
        reference: &Reference,
        call: F,
    ) -> Result<T, RegistryError>
    where
        F: Fn(Endpoint) -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let endpoints = self
            .shared
            .policy
            .endpoints(reference.registry(), reference.api_host());
        let last = endpoints.len() - 1;
        for (i, endpoint) in endpoints.into_iter().enumerate() {
            let mirror = endpoint.mirror.is_some();
            let untrusted = endpoint.is_untrusted_mirror();
            let host = endpoint.host.clone();
            let address = endpoint.base_url();
            if untrusted && self.mirror_refused(&host) {
                continue;
            }
            match call(endpoint).await {
                Ok(value) => {
                    if mirror {
                        self.trace
                            .served
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    return Ok(value);
                }
                Err(e @ (RegistryError::Unauthorized { .. } | RegistryError::Forbidden { .. }))
                    if i < last && untrusted =>
                {
                    self.note_untrusted_refusal(reference, &host, &address, &e);
                }
                Err(e) if i < last && mirror => {
                    tracing::warn!(mirror = %host, error = %e, "mirror failed; falling back to the next endpoint");
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the origin endpoint returns")
    }

    /// Learns `origin`'s challenge from an anonymous HEAD of `path` at the origin itself.
    async fn learn_challenge_at(&self, origin: &Endpoint, path: &str) {
        let url = format!("{}{path}", origin.base_url());
        match self.http(origin).head(&url).send().await {
            Ok(response) if response.status() == StatusCode::UNAUTHORIZED => {
                if let Some(challenge) = header_str(response.headers(), "www-authenticate") {
                    self.shared.authorizer.learn(origin, &challenge).await;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(%url, error = %crate::errors::render(&e), "no challenge from the origin")
            }
        }
    }

    fn mirror_refused(&self, host: &str) -> bool {
        let refused = self.trace.refused.lock().unwrap_or_else(|p| p.into_inner());
        refused.iter().any(|h| h == host)
    }

    /// An untrusted mirror, asked anonymously, refused: the origin wants credentials for this
    /// model. Said once per view (per pull) when this view has credentials a trusted mirror
    /// would have been given; the mirror is skipped for the rest of the pull.
    fn note_untrusted_refusal(
        &self,
        reference: &Reference,
        host: &str,
        address: &str,
        error: &RegistryError,
    ) {
        {
            let mut refused = self.trace.refused.lock().unwrap_or_else(|p| p.into_inner());
            if refused.iter().any(|h| h == host) {
                return;
            }
            refused.push(host.to_string());
        }
        if self.credentials_for(reference.registry()).is_some() {
            tracing::warn!(
                mirror = %host,
                registry = %reference.registry(),
                repository = %reference.repository(),
                "the model comes from the origin, not the mirror: the origin wants credentials for it and the mirror is not trusted with them; to send them to a mirror you run, declare it with --trusted-mirror {}={address} (TUGBOAT_TRUSTED_MIRROR) instead of --mirror",
                reference.registry()
            );
        } else {
            tracing::debug!(mirror = %host, error = %error, "the mirror refused an anonymous request; trying the origin");
        }
    }

    /// Sends a request built by `build`, with authorization, retries and status mapping.
    async fn send(
        &self,
        endpoint: &Endpoint,
        repository: &str,
        push: bool,
        what: &str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        super::tls::require_roots(endpoint, self.shared.has_ca_file)?;
        let http = self.http(endpoint);
        // Who authorization is for: the origin itself, or the origin a trusted mirror stands in
        // for (its credentials, its challenge, its tokens). An untrusted mirror gets none.
        let authorized = match &endpoint.mirror {
            None => Some(endpoint),
            Some(mirror) if mirror.trusted => Some(&*mirror.origin),
            Some(_) => None,
        };
        let credentials = authorized.and_then(|origin| self.credentials.lookup(&origin.host));
        let dragonfly_registry = endpoint.dragonfly_registry();
        let mut backoff = self.shared.retry.backoff();
        let mut reauthorized = false;
        loop {
            let attempt = backoff.attempt();
            let auth = match authorized {
                None => Ok(None),
                Some(origin) => {
                    self.shared
                        .authorizer
                        .header(self.http(origin), origin, repository, push, credentials)
                        .await
                }
            };
            let auth = match auth {
                Ok(auth) => auth,
                Err(e) if e.is_transient() => match backoff.next_delay(None) {
                    Some(delay) => {
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    None => return Err(e),
                },
                Err(e) => return Err(e),
            };
            let mut request = build(http);
            // reqwest drops Authorization on a redirect to another host, port or scheme (a
            // blob's 307 to object storage), so only this endpoint ever sees it.
            if let Some(value) = auth {
                request = request.header(reqwest::header::AUTHORIZATION, value);
            }
            if let Some(origin) = &dragonfly_registry {
                request = request.header(super::endpoint::DRAGONFLY_REGISTRY_HEADER, origin);
            }
            let outcome = request.send().await;
            let response = match outcome {
                Ok(response) => response,
                Err(e) if e.is_redirect() && self.shared.redirect_guard.is_some() => {
                    return Err(RegistryError::RedirectRefused {
                        registry: endpoint.host.clone(),
                        what: what.to_string(),
                        detail: crate::errors::render(&e),
                    });
                }
                Err(e) => {
                    let error = RegistryError::Network {
                        registry: endpoint.host.clone(),
                        what: what.to_string(),
                        attempts: attempt,
                        detail: crate::errors::render(&e),
                    };
                    match backoff.next_delay(None) {
                        Some(delay) => {
                            tracing::debug!(%error, ?delay, "retrying");
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                        None => return Err(error),
                    }
                }
            };
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            match status {
                StatusCode::UNAUTHORIZED if !reauthorized && authorized.is_some() => {
                    reauthorized = true;
                    let origin = authorized.unwrap_or(endpoint);
                    let authorizer = &self.shared.authorizer;
                    authorizer
                        .invalidate(origin, repository, push, credentials)
                        .await;
                    // Only the origin's own challenge is learned: a mirror never decides where
                    // the origin's credentials are sent.
                    if endpoint.mirror.is_none() {
                        if let Some(challenge) = header_str(response.headers(), "www-authenticate")
                        {
                            authorizer.learn(endpoint, &challenge).await;
                        }
                    } else {
                        // A trusted mirror relayed a refusal: the origin itself is asked for
                        // its challenge on the same path (its /v2/ may be open while this
                        // repository is not).
                        self.learn_challenge_at(origin, response.url().path()).await;
                    }
                    continue;
                }
                StatusCode::UNAUTHORIZED => {
                    let has_credentials = credentials.is_some();
                    return Err(RegistryError::Unauthorized {
                        registry: endpoint.host.clone(),
                        repository: repository.to_string(),
                        detail: if has_credentials {
                            "HTTP 401 with the configured credentials".into()
                        } else {
                            "HTTP 401 and no credentials are configured for this registry".into()
                        },
                    });
                }
                StatusCode::FORBIDDEN => {
                    return Err(RegistryError::Forbidden {
                        registry: endpoint.host.clone(),
                        repository: repository.to_string(),
                    })
                }
                StatusCode::NOT_FOUND => {
                    return Err(RegistryError::NotFound {
                        registry: endpoint.host.clone(),
                        what: format!("{what} in {repository}"),
                    })
                }
                _ => {}
            }
            let retry_after = retry_after(response.headers());
            let detail = error_detail(response).await;
            let error = RegistryError::Status {
                registry: endpoint.host.clone(),
                what: what.to_string(),
                status: status.as_u16(),
                attempts: attempt,
                detail,
            };
            if !error.is_transient() {
                return Err(error);
            }
            match backoff.next_delay(retry_after) {
                Some(delay) => {
                    tracing::debug!(%error, ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                }
                None => return Err(error),
            }
        }
    }
}

/// `/v2/<repository>/manifests/<tag or digest>`.
fn manifest_path(reference: &Reference) -> String {
    format!(
        "/v2/{}/manifests/{}",
        reference.repository(),
        reference.manifest_reference()
    )
}

/// The largest PATCH of a blob upload.
const UPLOAD_CHUNK: u64 = 256 << 20;

/// The upload URL a registry answered with (`Location`, relative or absolute).
fn upload_location(
    endpoint: &Endpoint,
    what: &str,
    headers: &HeaderMap,
) -> Result<url::Url, RegistryError> {
    let protocol = |detail: String| RegistryError::Protocol {
        registry: endpoint.host.clone(),
        what: what.to_string(),
        detail,
    };
    let location = header_str(headers, LOCATION.as_str())
        .ok_or_else(|| protocol("the upload answer has no Location header".into()))?;
    url::Url::parse(&endpoint.base_url())
        .and_then(|base| base.join(&location))
        .map_err(|e| protocol(format!("bad upload Location {location:?}: {e}")))
}

/// `length` bytes of the file at `offset`, streamed (an unreadable file sends nothing, and the
/// registry's length check refuses the chunk).
fn file_range_body(path: &Path, offset: u64, length: u64) -> reqwest::Body {
    use std::io::{Seek as _, SeekFrom};
    use tokio::io::AsyncReadExt as _;
    let file = std::fs::File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(offset))?;
        Ok(file)
    });
    match file {
        Ok(file) => reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
            tokio::fs::File::from_std(file).take(length),
            1 << 20,
        )),
        Err(_) => reqwest::Body::from(Vec::new()),
    }
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `Retry-After: <seconds>`, capped so a hostile registry cannot park us for hours.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = header_str(headers, "retry-after")?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds.min(60)))
}

/// A short, printable summary of an error body (registries send JSON error envelopes).
async fn error_detail(response: Response) -> String {
    let body = response.bytes().await.unwrap_or_default();
    let text: String = String::from_utf8_lossy(&body[..body.len().min(300)])
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if text.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", text.trim())
    }
}

async fn read_limited(
    response: Response,
    limit: usize,
    endpoint: &Endpoint,
    what: &str,
) -> Result<Bytes, RegistryError> {
    let too_big = || RegistryError::Protocol {
        registry: endpoint.host.clone(),
        what: what.to_string(),
        detail: format!("body larger than {limit} bytes"),
    };
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_big());
    }
    let mut stream = response.bytes_stream();
    let mut buffer = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| RegistryError::Network {
            registry: endpoint.host.clone(),
            what: what.to_string(),
            attempts: 1,
            detail: crate::errors::render(&e),
        })?;
        if buffer.len() + chunk.len() > limit {
            return Err(too_big());
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buffer))
}
