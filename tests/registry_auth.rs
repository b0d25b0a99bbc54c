//! The registry client's token flow against a real registry that demands bearer tokens (a
//! token server in tests/common/token_server.py): one token per registry, repository, scope and
//! credential, reused until it expires, shared by every view of one client, never by views with
//! other credentials.

mod common;

use std::fs;
use std::time::Duration;

use common::*;
use tugboat::reference::Reference;
use tugboat::registry::{CredentialStore, Credentials, RegistryClient, RegistryOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_cached_per_credential_until_they_expire() {
    let (user, pass) = ("robot$ml", "s3cret-Pa55");
    // Tokens announced for 11 s are kept 1 s (they are dropped 10 s before they expire).
    let reg = Registry::start_with_token_lifetime(user, pass, 11);
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model");
    fs::create_dir_all(&model).unwrap();
    fs::write(model.join("config.json"), b"{}").unwrap();
    let config = work.path().join("config.json");
    fs::write(&config, docker_config_json(&reg.host(), user, pass)).unwrap();
    let reference = reg.reference("private/llm:v1");
    push(
        &model,
        &reference,
        &["--docker-config", &config.display().to_string()],
    )
    .assert_ok("push with a bearer token");
    let reference: Reference = reference.parse().unwrap();

    let client = RegistryClient::new(RegistryOptions {
        endpoints: tugboat::registry::EndpointPolicy {
            plain_http: true,
            ..Default::default()
        },
        max_attempts: 1,
        ..Default::default()
    })
    .unwrap();
    let mut good = CredentialStore::default();
    good.insert(
        &reg.host(),
        Credentials {
            username: user.into(),
            password: pass.into(),
        },
    );
    let mut wrong = CredentialStore::default();
    wrong.insert(
        &reg.host(),
        Credentials {
            username: user.into(),
            password: "wrong".into(),
        },
    );

    let before = reg.token_requests();
    let pod_a = client.with_credentials(good.clone());
    let pod_b = client.with_credentials(good);
    pod_a.manifest_digest(&reference).await.unwrap();
    pod_b.manifest_digest(&reference).await.unwrap();
    pod_a.manifest(&reference).await.unwrap();
    assert_eq!(
        reg.token_requests() - before,
        1,
        "views with the same credentials share one token"
    );

    let refused = client
        .with_credentials(wrong)
        .manifest_digest(&reference)
        .await
        .unwrap_err();
    assert!(refused.is_refusal(), "{refused}");
    assert!(!refused.to_string().contains("wrong"), "{refused}");
    assert_eq!(
        reg.token_requests() - before,
        2,
        "other credentials ask for their own token"
    );
    // Anonymous gets a token without access; the registry's 401 makes the client ask once
    // more (a token may have been revoked), then give up.
    let anonymous = client
        .anonymous()
        .unwrap()
        .manifest_digest(&reference)
        .await;
    assert!(anonymous.unwrap_err().is_refusal());
    let after_refusals = reg.token_requests();
    pod_a.manifest_digest(&reference).await.unwrap();
    assert_eq!(
        reg.token_requests(),
        after_refusals,
        "the refusals of others did not cost this view its token"
    );

    tokio::time::sleep(Duration::from_millis(1500)).await;
    pod_a.manifest_digest(&reference).await.unwrap();
    assert_eq!(
        reg.token_requests(),
        after_refusals + 1,
        "an expired token is replaced"
    );
}
