//! Authorization headers per (endpoint, repository, operation): anonymous, HTTP basic, or the
//! bearer-token flow Harbor and Docker Hub use (obtained through oci-client), cached until a
//! registry answers 401 again.

use super::credentials::{CredentialStore, Credentials};
use super::endpoint::Endpoint;
use super::error::RegistryError;
use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use std::collections::HashMap;
use tokio::sync::Mutex;

type CacheKey = (String, String, bool);

/// Obtains and remembers `Authorization` header values.
pub struct Authorizer {
    verified: oci_client::Client,
    unverified: oci_client::Client,
    credentials: CredentialStore,
    cache: Mutex<HashMap<CacheKey, Option<String>>>,
    /// With a redirect guard: the token realm a registry names is judged like a redirect
    /// before the token exchange connects to it (HTTP clients for HTTPS and unverified TLS).
    realm_check: Option<(super::RedirectGuard, reqwest::Client, reqwest::Client)>,
}

impl Authorizer {
    pub fn new(
        credentials: CredentialStore,
        plain_http_hosts: Vec<String>,
        all_plain_http: bool,
        extra_roots: Vec<oci_client::client::Certificate>,
    ) -> Self {
        let config = |accept_invalid: bool| ClientConfig {
            protocol: if all_plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::HttpsExcept(plain_http_hosts.clone())
            },
            accept_invalid_certificates: accept_invalid,
            extra_root_certificates: extra_roots.clone(),
            connect_timeout: Some(std::time::Duration::from_secs(15)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        };
        Authorizer {
            verified: oci_client::Client::new(config(false)),
            unverified: oci_client::Client::new(config(true)),
            credentials,
            cache: Mutex::new(HashMap::new()),
            realm_check: None,
        }
    }

    /// Judges token realms with `guard` (probing `/v2/` with these clients) before exchanging.
    pub fn with_realm_check(
        mut self,
        guard: super::RedirectGuard,
        verified: reqwest::Client,
        unverified: reqwest::Client,
    ) -> Self {
        self.realm_check = Some((guard, verified, unverified));
        self
    }

    /// Refuses a token realm the guard does not accept.
    async fn check_realm(&self, endpoint: &Endpoint) -> Result<(), RegistryError> {
        let Some((guard, verified, unverified)) = &self.realm_check else {
            return Ok(());
        };
        let http = if endpoint.insecure {
            unverified
        } else {
            verified
        };
        let Ok(response) = http.get(endpoint.url("/v2/")).send().await else {
            return Ok(());
        };
        let realm = response
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split("realm=\"").nth(1))
            .and_then(|rest| rest.split('"').next())
            .and_then(|realm| url::Url::parse(realm).ok());
        match realm {
            Some(url) => (guard.0)(&url).map_err(|why| RegistryError::RedirectRefused {
                registry: endpoint.host.clone(),
                what: "authentication".into(),
                detail: format!("token realm {url}: {why}"),
            }),
            None => Ok(()),
        }
    }

    /// Credentials configured for a host, if any.
    pub fn credentials_for(&self, host: &str) -> Option<&Credentials> {
        self.credentials.lookup(host)
    }

    /// The header to send, from cache or a fresh token exchange.
    pub async fn header(
        &self,
        endpoint: &Endpoint,
        repository: &str,
        push: bool,
    ) -> Result<Option<String>, RegistryError> {
        let key = (endpoint.host.clone(), repository.to_string(), push);
        if let Some(cached) = self.cache.lock().await.get(&key) {
            return Ok(cached.clone());
        }
        let header = self.exchange(endpoint, repository, push).await?;
        self.cache.lock().await.insert(key, header.clone());
        Ok(header)
    }

    /// Forgets a header the registry no longer accepts (expired token).
    pub async fn invalidate(&self, endpoint: &Endpoint, repository: &str, push: bool) {
        let key = (endpoint.host.clone(), repository.to_string(), push);
        self.cache.lock().await.remove(&key);
    }

    async fn exchange(
        &self,
        endpoint: &Endpoint,
        repository: &str,
        push: bool,
    ) -> Result<Option<String>, RegistryError> {
        self.check_realm(endpoint).await?;
        let credentials = self.credentials.lookup(&endpoint.host);
        let auth = match credentials {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let reference = oci_client::Reference::with_tag(
            endpoint.host.clone(),
            repository.to_string(),
            "latest".to_string(),
        );
        let operation = if push {
            RegistryOperation::Push
        } else {
            RegistryOperation::Pull
        };
        let client = if endpoint.insecure {
            &self.unverified
        } else {
            &self.verified
        };
        match client.auth(&reference, &auth, operation).await {
            Ok(Some(token)) => Ok(Some(format!("Bearer {token}"))),
            Ok(None) => Ok(credentials.map(basic_header)),
            Err(oci_client::errors::OciDistributionError::RequestError(e)) => {
                Err(RegistryError::Network {
                    registry: endpoint.host.clone(),
                    what: "authentication".into(),
                    attempts: 1,
                    detail: super::client::describe_reqwest_error(&e),
                })
            }
            Err(e) => Err(RegistryError::Unauthorized {
                registry: endpoint.host.clone(),
                repository: repository.to_string(),
                detail: format!(
                    "token exchange {}: {}",
                    if credentials.is_some() {
                        "with the configured credentials failed"
                    } else {
                        "without credentials failed"
                    },
                    redact(&e.to_string(), credentials)
                ),
            }),
        }
    }
}

fn basic_header(credentials: &Credentials) -> String {
    let raw = format!("{}:{}", credentials.username, credentials.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// Removes a password from text that is about to be shown.
pub fn redact(text: &str, credentials: Option<&Credentials>) -> String {
    let mut out: String = text.chars().take(300).collect();
    if let Some(c) = credentials {
        if !c.password.is_empty() {
            out = out.replace(&c.password, "<redacted>");
        }
    }
    out
}
