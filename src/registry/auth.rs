//! Authorization headers per (endpoint, repository, operation): anonymous, HTTP basic, or the
//! bearer-token flow Harbor and Docker Hub use (distribution's token auth: a 401 from `/v2/`
//! with `WWW-Authenticate: Bearer realm=...,service=...`, then a token from the realm), cached
//! until a registry answers 401 again. It speaks through the same HTTP clients as the rest of
//! the registry layer, so it works wherever they do (also in an image without a CA bundle).

use super::credentials::{CredentialStore, Credentials};
use super::endpoint::Endpoint;
use super::error::RegistryError;
use base64::Engine as _;
use reqwest::header::WWW_AUTHENTICATE;
use reqwest::StatusCode;
use std::collections::HashMap;
use tokio::sync::Mutex;

type CacheKey = (String, String, bool);

/// Obtains and remembers `Authorization` header values.
pub struct Authorizer {
    verified: reqwest::Client,
    unverified: reqwest::Client,
    credentials: CredentialStore,
    cache: Mutex<HashMap<CacheKey, Option<String>>>,
    /// With a redirect guard: the token realm a registry names is judged like a redirect
    /// before the token exchange connects to it.
    realm_check: Option<super::RedirectGuard>,
}

impl Authorizer {
    /// `verified` checks TLS certificates; `unverified` is for `--insecure-registry` hosts.
    pub fn new(
        credentials: CredentialStore,
        verified: reqwest::Client,
        unverified: reqwest::Client,
    ) -> Self {
        Authorizer {
            verified,
            unverified,
            credentials,
            cache: Mutex::new(HashMap::new()),
            realm_check: None,
        }
    }

    /// Judges token realms with `guard` (probing `/v2/`) before exchanging.
    pub fn with_realm_check(mut self, guard: super::RedirectGuard) -> Self {
        self.realm_check = Some(guard);
        self
    }

    /// Refuses a token realm the guard does not accept.
    async fn check_realm(&self, endpoint: &Endpoint) -> Result<(), RegistryError> {
        let Some(guard) = &self.realm_check else {
            return Ok(());
        };
        let http = if endpoint.insecure {
            &self.unverified
        } else {
            &self.verified
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
        let client = if endpoint.insecure {
            &self.unverified
        } else {
            &self.verified
        };
        let network = |e: reqwest::Error| RegistryError::Network {
            registry: endpoint.host.clone(),
            what: "authentication".into(),
            attempts: 1,
            detail: super::client::describe_reqwest_error(&e),
        };
        // Which scheme the registry asks for: none, Basic, or a Bearer token from a realm.
        let ping = client
            .get(format!("{}/v2/", endpoint.base_url()))
            .send()
            .await
            .map_err(network)?;
        let challenge = match ping.status() {
            StatusCode::UNAUTHORIZED => ping
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(BearerChallenge::parse),
            _ => None,
        };
        let Some(challenge) = challenge else {
            return Ok(credentials.map(basic_header));
        };
        let actions = if push { "pull,push" } else { "pull" };
        let mut request = client
            .get(&challenge.realm)
            .query(&[("scope", format!("repository:{repository}:{actions}"))]);
        if let Some(service) = &challenge.service {
            request = request.query(&[("service", service)]);
        }
        if let Some(c) = credentials {
            request = request.basic_auth(&c.username, Some(&c.password));
        }
        let refused = |detail: String| RegistryError::Unauthorized {
            registry: endpoint.host.clone(),
            repository: repository.to_string(),
            detail: format!(
                "token exchange {}: {}",
                if credentials.is_some() {
                    "with the configured credentials failed"
                } else {
                    "without credentials failed"
                },
                redact(&detail, credentials)
            ),
        };
        let response = request.send().await.map_err(network)?;
        let status = response.status();
        if !status.is_success() {
            return Err(refused(format!(
                "{} answered HTTP {status}",
                challenge.realm
            )));
        }
        let body: TokenResponse = response
            .json()
            .await
            .map_err(|e| refused(format!("{}: {e}", challenge.realm)))?;
        match body.token.or(body.access_token) {
            Some(token) if !token.is_empty() => Ok(Some(format!("Bearer {token}"))),
            _ => Err(refused(format!("{} returned no token", challenge.realm))),
        }
    }
}

/// The token endpoint's answer (distribution token auth; OAuth2 servers say `access_token`).
#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

/// `WWW-Authenticate: Bearer realm="...",service="...",scope="..."`.
#[derive(Debug, PartialEq)]
struct BearerChallenge {
    realm: String,
    service: Option<String>,
}

impl BearerChallenge {
    fn parse(header: &str) -> Option<Self> {
        let (scheme, params) = header.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let mut realm = None;
        let mut service = None;
        let mut rest = params.trim();
        while !rest.is_empty() {
            let (key, after) = rest.split_once('=')?;
            let after = after.trim_start();
            let (value, tail) = match after.strip_prefix('"') {
                Some(quoted) => {
                    let (v, t) = quoted.split_once('"')?;
                    (v, t)
                }
                None => after.split_once(',').map_or((after, ""), |(v, t)| (v, t)),
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "realm" => realm = Some(value.to_string()),
                "service" => service = Some(value.to_string()),
                _ => {}
            }
            rest = tail.trim_start().trim_start_matches(',').trim_start();
        }
        Some(BearerChallenge {
            realm: realm?,
            service,
        })
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

#[cfg(test)]
mod tests {
    use super::BearerChallenge;

    #[test]
    fn bearer_challenges_parse_as_registries_send_them() {
        assert_eq!(
            BearerChallenge::parse(
                r#"Bearer realm="https://harbor.example.com/service/token",service="harbor-registry",scope="repository:a/b:pull""#
            ),
            Some(BearerChallenge {
                realm: "https://harbor.example.com/service/token".into(),
                service: Some("harbor-registry".into()),
            })
        );
        assert_eq!(
            BearerChallenge::parse("bearer realm=http://127.0.0.1:1/token"),
            Some(BearerChallenge {
                realm: "http://127.0.0.1:1/token".into(),
                service: None,
            })
        );
        assert_eq!(BearerChallenge::parse(r#"Basic realm="registry""#), None);
        assert_eq!(BearerChallenge::parse(r#"Bearer service="x""#), None);
    }
}
