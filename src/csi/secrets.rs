//! Registry credentials from a NodePublishVolume's `secrets` (the pod's
//! `nodePublishSecretRef`): a `.dockerconfigjson` (or legacy `.dockercfg`) key, or
//! `username` + `password` keys for the model's registry. Errors name keys, never values.

use crate::reference::Reference;
use crate::registry::{CredentialStore, Credentials};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use tonic::Status;

const DOCKER_CONFIG_JSON: &str = ".dockerconfigjson";
const DOCKER_CFG: &str = ".dockercfg";

/// Adds the secret's credentials to `store` (they win over the daemon's own for that registry).
pub fn apply(
    secrets: &HashMap<String, String>,
    reference: &Reference,
    store: &mut CredentialStore,
) -> Result<(), Status> {
    for key in [DOCKER_CONFIG_JSON, DOCKER_CFG] {
        if let Some(json) = secrets.get(key) {
            let parsed = CredentialStore::from_docker_config_json(json.as_bytes()).map_err(|_| {
                Status::invalid_argument(format!(
                    "secret key {key} is not a valid docker config (expected {{\"auths\": {{host: {{\"auth\": ...}}}}}})"
                ))
            })?;
            if let Some(credentials) = parsed.lookup(reference.registry()) {
                store.insert(reference.registry(), credentials.clone());
            }
        }
    }
    match (secrets.get("username"), secrets.get("password")) {
        (Some(username), Some(password)) => store.insert(
            reference.registry(),
            Credentials {
                username: username.clone(),
                password: password.clone(),
            },
        ),
        (Some(_), None) | (None, Some(_)) => {
            return Err(Status::invalid_argument(
                "the volume's secret has only one of the keys username and password",
            ))
        }
        (None, None) => {}
    }
    Ok(())
}

/// A one-way identity of a secrets map, so requests with the same secret can share work.
pub fn fingerprint(secrets: &HashMap<String, String>) -> String {
    if secrets.is_empty() {
        return String::new();
    }
    let mut entries: Vec<(&String, &String)> = secrets.iter().collect();
    entries.sort();
    let mut hasher = Sha256::new();
    for (key, value) in entries {
        hasher.update(key.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_and_basic_keys() {
        let reference: Reference = "reg.example:5000/m/tiny:v1".parse().unwrap();
        let mut store = CredentialStore::default();
        let json = r#"{"auths":{"reg.example:5000":{"auth":"dXNlcjpwYXNz"}}}"#;
        apply(
            &HashMap::from([(DOCKER_CONFIG_JSON.into(), json.into())]),
            &reference,
            &mut store,
        )
        .unwrap();
        assert_eq!(store.lookup("reg.example:5000").unwrap().username, "user");
        let basic = HashMap::from([
            ("username".to_string(), "robot".to_string()),
            ("password".to_string(), "s3cret-value".to_string()),
        ]);
        apply(&basic, &reference, &mut store).unwrap();
        assert_eq!(store.lookup("reg.example:5000").unwrap().username, "robot");
        let bad = HashMap::from([(DOCKER_CONFIG_JSON.to_string(), "s3cret-value".to_string())]);
        let error = apply(&bad, &reference, &mut store).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(!error.message().contains("s3cret"));
        assert_ne!(fingerprint(&basic), fingerprint(&HashMap::new()));
    }
}
