//! Registry credentials: Docker `config.json` files, Kubernetes `.dockerconfigjson` secrets and
//! plain username/password pairs, looked up by registry host. Secrets never reach `Debug` output.

use super::error::RegistryError;
use base64::Engine as _;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A username/password pair (Harbor robot accounts included). `Debug` hides the password.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl Credentials {
    /// A one-way identity of this pair (SHA-256), for remembering what it was allowed to read
    /// without keeping or printing the secret.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest as _, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(b"tugboat-credentials\0");
        hasher.update(self.username.as_bytes());
        hasher.update(b"\0");
        hasher.update(self.password.as_bytes());
        hex::encode(hasher.finalize())
    }
}

/// Credentials keyed by normalised registry host.
#[derive(Clone, Debug, Default)]
pub struct CredentialStore {
    by_host: HashMap<String, Credentials>,
}

#[derive(serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: Option<HashMap<String, DockerAuthEntry>>,
}

#[derive(serde::Deserialize)]
struct DockerAuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl CredentialStore {
    /// Reads `explicit`, else `$DOCKER_CONFIG/config.json` when `$DOCKER_CONFIG` is set (that
    /// directory only, as docker does: no fallback to the home directory), else
    /// `~/.docker/config.json`. An explicit file that is missing or unreadable is an error;
    /// the default locations are optional.
    pub fn load(explicit: Option<&Path>) -> Result<Self, RegistryError> {
        if let Some(path) = explicit {
            return Self::from_file(path);
        }
        let path: Option<PathBuf> = match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) => Some(Path::new(&dir).join("config.json")),
            None => {
                std::env::var_os("HOME").map(|home| Path::new(&home).join(".docker/config.json"))
            }
        };
        match path.filter(|p| p.is_file()) {
            Some(path) => Self::from_file(&path),
            None => Ok(Self::default()),
        }
    }

    /// Reads a Docker config file or a mounted Kubernetes `.dockerconfigjson` secret key.
    pub fn from_file(path: &Path) -> Result<Self, RegistryError> {
        let bytes = std::fs::read(path).map_err(|e| {
            RegistryError::Config(format!("cannot read docker config {}: {e}", path.display()))
        })?;
        Self::from_docker_config_json(&bytes)
            .map_err(|e| RegistryError::Config(format!("docker config {}: {e}", path.display())))
    }

    /// Parses `{"auths": {host: {"auth": base64(user:pass)} | {"username","password"}}}`,
    /// also the legacy `.dockercfg` form without the `auths` wrapper.
    pub fn from_docker_config_json(bytes: &[u8]) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
        let entries: HashMap<String, DockerAuthEntry> = match value.get("auths") {
            Some(_) => serde_json::from_value::<DockerConfig>(value)
                .map_err(|e| format!("unexpected shape: {e}"))?
                .auths
                .unwrap_or_default(),
            None => serde_json::from_value(value).unwrap_or_default(),
        };
        let mut store = CredentialStore::default();
        for (key, entry) in entries {
            if let Some(credentials) = entry.credentials().map_err(|e| format!("{key}: {e}"))? {
                store.by_host.insert(normalise_host(&key), credentials);
            }
        }
        Ok(store)
    }

    /// Adds `other`'s credentials, replacing this store's for the registries both name.
    pub fn merge(&mut self, other: CredentialStore) {
        self.by_host.extend(other.by_host);
    }

    /// Adds or replaces the credentials for one registry.
    pub fn insert(&mut self, registry: &str, credentials: Credentials) {
        self.by_host.insert(normalise_host(registry), credentials);
    }

    pub fn lookup(&self, registry: &str) -> Option<&Credentials> {
        self.by_host.get(&normalise_host(registry))
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }
}

impl DockerAuthEntry {
    fn credentials(&self) -> Result<Option<Credentials>, String> {
        if let (Some(username), Some(password)) = (&self.username, &self.password) {
            return Ok(Some(Credentials {
                username: username.clone(),
                password: password.clone(),
            }));
        }
        let Some(auth) = self.auth.as_deref().filter(|a| !a.is_empty()) else {
            return Ok(None);
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| "the \"auth\" field is not base64".to_string())?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| "the \"auth\" field is not UTF-8".to_string())?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| "the \"auth\" field does not decode to user:password".to_string())?;
        Ok(Some(Credentials {
            username: username.to_string(),
            password: password.to_string(),
        }))
    }
}

/// `https://index.docker.io/v1/` -> `docker.io`; `http://host:5000/` -> `host:5000`.
fn normalise_host(key: &str) -> String {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme.split('/').next().unwrap_or_default();
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => {
            crate::reference::DOCKER_HUB.to_string()
        }
        other => other.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_auth_and_username_forms() {
        let json = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},
            "harbor.example.com":{"username":"robot$ml","password":"s3cret"}}}"#;
        let store = CredentialStore::from_docker_config_json(json).unwrap();
        assert_eq!(store.lookup("docker.io").unwrap().username, "user");
        assert_eq!(store.lookup("docker.io").unwrap().password, "pass");
        assert_eq!(
            store.lookup("harbor.example.com").unwrap().username,
            "robot$ml"
        );
        assert!(store.lookup("other.example.com").is_none());
        assert!(!format!("{:?}", store).contains("s3cret"));
    }

    #[test]
    fn legacy_dockercfg_and_errors() {
        let json = br#"{"reg:5000":{"auth":"dXNlcjpwYXNz"}}"#;
        let store = CredentialStore::from_docker_config_json(json).unwrap();
        assert_eq!(store.lookup("reg:5000").unwrap().username, "user");
        assert!(CredentialStore::from_docker_config_json(b"nope").is_err());
        let bad = br#"{"auths":{"h":{"auth":"!!"}}}"#;
        assert!(CredentialStore::from_docker_config_json(bad).is_err());
    }
}
