//! Authorization headers per request, over the client's one connection pool: what each registry
//! asks for (learned once per host from the `WWW-Authenticate` challenge of `GET /v2/`), HTTP
//! basic, or the bearer-token flow Harbor and Docker Hub use. Tokens are cached per (registry,
//! repository, scope, credential fingerprint) until they expire, so every pod sharing one
//! secret shares one token, and pods with other secrets never see it.

use super::credentials::Credentials;
use super::endpoint::Endpoint;
use super::error::RegistryError;
use super::guard::RedirectGuard;
use base64::Engine as _;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Token lifetime when the token server does not say (the distribution spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens are dropped this long before they expire, so a request never carries a stale one.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// Token responses larger than this are refused.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// What a registry asks for, from its `/v2/` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// `/v2/` answered without a challenge: no authorization needed.
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// (registry host, repository, scope actions, credential fingerprint or "").
type TokenKey = (String, String, &'static str, String);

/// Learned challenges and live tokens, shared by every request of a client and its
/// credential views.
#[derive(Default)]
pub struct Authorizer {
    challenges: Mutex<HashMap<String, Challenge>>,
    tokens: Mutex<HashMap<TokenKey, (String, Instant)>>,
    /// Token requests made (for /metrics and tests of the sharing).
    pub token_requests: std::sync::atomic::AtomicU64,
    /// With a guard, the token realm a registry names is judged like a redirect before the
    /// token exchange connects to it.
    realm_guard: Option<RedirectGuard>,
}

impl Authorizer {
    /// An authorizer that judges token realms with `guard`, if any.
    pub fn with_realm_guard(guard: Option<RedirectGuard>) -> Self {
        Authorizer {
            realm_guard: guard,
            ..Default::default()
        }
    }

    /// The header to send, if any: from the caches, or after a challenge probe and/or a token
    /// request.
    pub async fn header(
        &self,
        http: &reqwest::Client,
        endpoint: &Endpoint,
        repository: &str,
        push: bool,
        credentials: Option<&Credentials>,
    ) -> Result<Option<String>, RegistryError> {
        let challenge = self.challenge(http, endpoint).await?;
        match challenge {
            Challenge::None => Ok(None),
            Challenge::Basic => Ok(credentials.map(basic_header)),
            Challenge::Bearer { realm, service } => {
                let key = token_key(endpoint, repository, push, credentials);
                let scope = key.2;
                if let Some((header, until)) = self.tokens.lock().await.get(&key) {
                    if Instant::now() < *until {
                        return Ok(Some(header.clone()));
                    }
                }
                let (token, lifetime) = self
                    .fetch_token(
                        http,
                        endpoint,
                        &realm,
                        service.as_deref(),
                        repository,
                        scope,
                        credentials,
                    )
                    .await?;
                let header = format!("Bearer {token}");
                let until = Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN);
                let mut tokens = self.tokens.lock().await;
                let now = Instant::now();
                tokens.retain(|_, (_, until)| *until > now);
                tokens.insert(key, (header.clone(), until));
                Ok(Some(header))
            }
        }
    }

    /// Forgets a token the registry rejected (expired or revoked). A changed challenge is
    /// learned from the 401 itself ([`Self::learn`]).
    pub async fn invalidate(
        &self,
        endpoint: &Endpoint,
        repository: &str,
        push: bool,
        credentials: Option<&Credentials>,
    ) {
        let key = token_key(endpoint, repository, push, credentials);
        self.tokens.lock().await.remove(&key);
    }

    /// Records the challenge a registry sent with a 401 on an API request (some answer `/v2/`
    /// without one and challenge per repository).
    pub async fn learn(&self, endpoint: &Endpoint, www_authenticate: &str) {
        let challenge = parse_challenge(www_authenticate);
        if challenge != Challenge::None {
            self.challenges
                .lock()
                .await
                .insert(endpoint.host.clone(), challenge);
        }
    }

    /// The host's challenge, probed once with `GET /v2/`.
    async fn challenge(
        &self,
        http: &reqwest::Client,
        endpoint: &Endpoint,
    ) -> Result<Challenge, RegistryError> {
        if let Some(known) = self.challenges.lock().await.get(&endpoint.host) {
            return Ok(known.clone());
        }
        let response = http
            .get(format!("{}/v2/", endpoint.base_url()))
            .send()
            .await
            .map_err(|e| network(endpoint, "the /v2/ authentication probe", &e))?;
        let challenge = match response.headers().get(reqwest::header::WWW_AUTHENTICATE) {
            Some(value) if response.status() == reqwest::StatusCode::UNAUTHORIZED => {
                parse_challenge(value.to_str().unwrap_or_default())
            }
            _ => Challenge::None,
        };
        self.challenges
            .lock()
            .await
            .insert(endpoint.host.clone(), challenge.clone());
        Ok(challenge)
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_token(
        &self,
        http: &reqwest::Client,
        endpoint: &Endpoint,
        realm: &str,
        service: Option<&str>,
        repository: &str,
        scope: &str,
        credentials: Option<&Credentials>,
    ) -> Result<(String, Duration), RegistryError> {
        let mut url = url::Url::parse(realm).map_err(|e| RegistryError::Protocol {
            registry: endpoint.host.clone(),
            what: "authentication".into(),
            detail: format!("the token realm {realm:?} is not a URL: {e}"),
        })?;
        if let Some(guard) = &self.realm_guard {
            (guard.0)(&url).map_err(|why| RegistryError::RedirectRefused {
                registry: endpoint.host.clone(),
                what: "authentication".into(),
                detail: format!("token realm {url}: {why}"),
            })?;
        }
        self.token_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", &format!("repository:{repository}:{scope}"));
        }
        let mut request = http.get(url);
        if let Some(c) = credentials {
            request = request.header(reqwest::header::AUTHORIZATION, basic_header(c));
        }
        let response = request
            .send()
            .await
            .map_err(|e| network(endpoint, "the token request", &e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| network(endpoint, "the token request", &e))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(MAX_TOKEN_RESPONSE)]);
            let detail = format!(
                "token request {}: HTTP {status}: {}",
                if credentials.is_some() {
                    "with the configured credentials failed"
                } else {
                    "without credentials failed"
                },
                redact(text.trim(), credentials)
            );
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                RegistryError::Status {
                    registry: endpoint.host.clone(),
                    what: "the token request".into(),
                    status: status.as_u16(),
                    attempts: 1,
                    detail: format!(": {detail}"),
                }
            } else {
                RegistryError::Unauthorized {
                    registry: endpoint.host.clone(),
                    repository: repository.to_string(),
                    detail,
                }
            });
        }
        if body.len() > MAX_TOKEN_RESPONSE {
            return Err(RegistryError::Protocol {
                registry: endpoint.host.clone(),
                what: "the token request".into(),
                detail: format!("token response larger than {MAX_TOKEN_RESPONSE} bytes"),
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| RegistryError::Protocol {
                registry: endpoint.host.clone(),
                what: "the token request".into(),
                detail: format!("the token response is not the expected JSON: {e}"),
            })?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| RegistryError::Protocol {
                registry: endpoint.host.clone(),
                what: "the token request".into(),
                detail: "the token response carries no token".into(),
            })?;
        let lifetime = parsed
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        Ok((token, lifetime))
    }
}

/// What a token is cached under: one per registry, repository, scope and credential.
fn token_key(
    endpoint: &Endpoint,
    repository: &str,
    push: bool,
    credentials: Option<&Credentials>,
) -> TokenKey {
    (
        endpoint.host.clone(),
        repository.to_string(),
        if push { "pull,push" } else { "pull" },
        credentials.map(|c| c.fingerprint()).unwrap_or_default(),
    )
}

/// Parses `Basic realm=".."` or `Bearer realm="..",service="..",scope=".."`.
pub fn parse_challenge(value: &str) -> Challenge {
    let (scheme, params) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Challenge::Basic;
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Challenge::None;
    }
    let mut realm = None;
    let mut service = None;
    for (key, value) in challenge_params(params) {
        match key.to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value),
            "service" => service = Some(value),
            _ => {}
        }
    }
    match realm {
        Some(realm) => Challenge::Bearer { realm, service },
        None => Challenge::None,
    }
}

/// `key="value", key=value` pairs; commas inside quotes stay in the value.
fn challenge_params(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_string();
        let after = after.trim_start();
        let (value, remaining) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.find('"') {
                Some(end) => (quoted[..end].to_string(), &quoted[end + 1..]),
                None => (quoted.to_string(), ""),
            },
            None => match after.find(',') {
                Some(end) => (after[..end].trim().to_string(), &after[end..]),
                None => (after.trim().to_string(), ""),
            },
        };
        pairs.push((key, value));
        rest = remaining.trim_start().trim_start_matches(',');
    }
    pairs
}

fn network(endpoint: &Endpoint, what: &str, error: &reqwest::Error) -> RegistryError {
    RegistryError::Network {
        registry: endpoint.host.clone(),
        what: what.to_string(),
        attempts: 1,
        detail: crate::errors::render(error),
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
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(parse_challenge(r#"Basic realm="x""#), Challenge::Basic);
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://h/service/token",service="harbor-registry",scope="repository:a/b:pull,push""#
            ),
            Challenge::Bearer {
                realm: "https://h/service/token".into(),
                service: Some("harbor-registry".into())
            }
        );
        assert_eq!(
            parse_challenge(
                "Bearer realm=https://auth.docker.io/token, service=registry.docker.io"
            ),
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            }
        );
        assert_eq!(parse_challenge("Negotiate"), Challenge::None);
    }
}
