//! A hostile registry (the real one behind tests/common/fault_proxy.rs, which substitutes what
//! it serves): a manifest over 4 MiB, 10,000 layers, a layer claiming 1 PB, digests with another
//! algorithm or bad hex, indexes that point to themselves or to other indexes, and redirects to
//! another host, which must never receive the registry's credentials. Every refusal is exit 5
//! with a message naming the problem, and leaves nothing in --dest or in the cache's blobs.

mod common;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

use std::fs;

use base64::Engine as _;
use common::*;
use fault_proxy::*;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn manifest_with_layers(layers: &[serde_json::Value]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": EMPTY_DIGEST, "size": 2},
        "layers": layers,
    }))
    .unwrap()
}

fn layer(digest: &str, size: serde_json::Value, title: &str) -> serde_json::Value {
    serde_json::json!({
        "mediaType": "application/octet-stream",
        "digest": digest,
        "size": size,
        "annotations": {TITLE_ANNOTATION: title},
    })
}

fn index_of(digests: &[&str]) -> Vec<u8> {
    let manifests: Vec<serde_json::Value> = digests
        .iter()
        .map(|d| serde_json::json!({"mediaType": OCI_INDEX, "digest": d, "size": 300}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    }))
    .unwrap()
}

/// Exit code of a manifest refused as input (hostile content).
const INPUT: i32 = 2;
/// Exit code of bytes that are not what the registry promised (digest, size limit).
const INTEGRITY: i32 = 5;

/// Serves `bytes` for every manifest request of the proxy's repository and pulls by tag;
/// expects exit `code` with `needle` in the message, and nothing left behind.
fn assert_refused(proxy: &FaultProxy, rules: Vec<Rule>, needle: &str, code: i32) {
    proxy.clear();
    for rule in rules {
        proxy.add(rule);
    }
    let work = tempfile::tempdir().unwrap();
    let (dest, cache) = (work.path().join("dest"), work.path().join("cache"));
    let out = pull(&proxy.reference("hostile/m:v1"), &dest, Some(&cache), &[]);
    out.assert_code(code, needle);
    assert!(
        out.stderr.contains(needle),
        "message should contain {needle:?}:\n{}",
        out.stderr
    );
    assert!(list_dir(&dest).is_empty(), "dest: {:?}", walk(&dest));
    assert!(
        list_dir(&cache.join("blobs/sha256")).is_empty(),
        "no blob fetched for a refused manifest"
    );
    assert!(list_dir(&cache.join("snapshots")).is_empty());
}

fn manifest_rule(bytes: Vec<u8>, content_type: &str) -> Rule {
    Rule::new(
        Some("GET"),
        "/manifests/",
        Fault::body(bytes, Some(content_type)),
    )
}

#[test]
fn hostile_manifests_are_refused() {
    let reg = Registry::start();
    push_raw_artifact(
        &reg.host(),
        "hostile/m",
        "v1",
        &[(Some("a"), b"a".to_vec())],
        &[],
    );
    let proxy = FaultProxy::start(&reg.host());
    let good = sha256_bytes(b"a");

    // Over 4 MiB (the registry itself would not store it; a hostile one serves it anyway).
    let mut huge = manifest_with_layers(&[layer(&good, 1.into(), "a")]);
    let padding = format!(",\"annotations\":{{\"pad\":\"{}\"}}}}", "x".repeat(5 << 20));
    huge.pop();
    huge.extend_from_slice(padding.as_bytes());
    assert_refused(
        &proxy,
        vec![manifest_rule(huge, MANIFEST_MEDIA_TYPE)],
        "larger than",
        INTEGRITY,
    );

    // 10,000 layers.
    let many: Vec<serde_json::Value> = (0..10_000)
        .map(|i| layer(&good, 1.into(), &format!("f{i}")))
        .collect();
    assert_refused(
        &proxy,
        vec![manifest_rule(
            manifest_with_layers(&many),
            MANIFEST_MEDIA_TYPE,
        )],
        "10000 layers",
        INPUT,
    );

    // A layer claiming 1 PB.
    let petabyte = manifest_with_layers(&[layer(&good, 1_000_000_000_000_000u64.into(), "a")]);
    assert_refused(
        &proxy,
        vec![manifest_rule(petabyte, MANIFEST_MEDIA_TYPE)],
        "16 TiB",
        INPUT,
    );
    // ... or a negative size.
    let negative = manifest_with_layers(&[layer(&good, (-1).into(), "a")]);
    assert_refused(
        &proxy,
        vec![manifest_rule(negative, MANIFEST_MEDIA_TYPE)],
        "claims -1",
        INPUT,
    );

    // Digests with another algorithm, or bad hex.
    let sha512 = format!("sha512:{}", "ab".repeat(64));
    assert_refused(
        &proxy,
        vec![manifest_rule(
            manifest_with_layers(&[layer(&sha512, 1.into(), "a")]),
            MANIFEST_MEDIA_TYPE,
        )],
        "not supported",
        INPUT,
    );
    for bad in [
        format!("sha256:{}", "A".repeat(64)),
        format!("sha256:{}", "0".repeat(63)),
        "sha256:../../../../etc/passwd".to_string(),
        format!("sha256:{}/x", "0".repeat(64)),
    ] {
        assert_refused(
            &proxy,
            vec![manifest_rule(
                manifest_with_layers(&[layer(&bad, 1.into(), "a")]),
                MANIFEST_MEDIA_TYPE,
            )],
            "64 lowercase hex",
            INPUT,
        );
    }
}

#[test]
fn indexes_pointing_to_themselves_or_to_indexes_terminate() {
    let reg = Registry::start();
    push_raw_artifact(
        &reg.host(),
        "hostile/m",
        "v1",
        &[(Some("a"), b"a".to_vec())],
        &[],
    );
    let proxy = FaultProxy::start(&reg.host());

    // Every manifest URL serves the same index, listing (what it claims is) itself.
    let claimed = format!("sha256:{}", "1".repeat(64));
    let selfish = index_of(&[&claimed]);
    assert_refused(
        &proxy,
        vec![manifest_rule(selfish, OCI_INDEX)],
        "refusing them",
        INTEGRITY,
    );

    // An index whose entry digest is the tag's own digest (what a registry would serve if
    // the tag's bytes named themselves): refused without a second fetch.
    let inner = index_of(&[&format!("sha256:{}", "2".repeat(64))]);
    let inner_digest = sha256_bytes(&inner);
    let outer = index_of(&[&inner_digest]);
    // tag -> outer; outer's entry (inner_digest) -> inner, a second index: nested, refused.
    assert_refused(
        &proxy,
        vec![
            // The first matching rule wins: the digest's rule comes first.
            Rule::new(
                Some("GET"),
                &format!("/manifests/{inner_digest}"),
                Fault::body(inner, Some(OCI_INDEX)),
            ),
            manifest_rule(outer, OCI_INDEX),
        ],
        "nested indexes are not followed",
        INPUT,
    );
    let requests = proxy.seen_matching("/manifests/").len();
    assert!(requests <= 4, "bounded manifest requests, saw {requests}");
}

/// A registry with basic auth redirects blob (and manifest) GETs to another host, as registries
/// do to object storage. The other host must never see the Authorization header.
#[test]
fn credentials_do_not_follow_a_redirect_to_another_host() {
    let (user, pass) = ("robot$redirect", "Redirect-Pa55word-9f3c");
    let reg = Registry::start_with_htpasswd(user, pass);
    let weights = random_bytes(512 * 1024, 5);
    let digest = sha256_bytes(&weights);
    let manifest = push_raw_artifact_auth(
        &reg.host(),
        Some((user, pass)),
        "private/m",
        "v1",
        &[(Some("w.bin"), weights.clone())],
        &[],
    );
    let proxy = FaultProxy::start(&reg.host());
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config.json");
    fs::write(&config, docker_config_json(&proxy.host(), user, pass)).unwrap();
    let config_arg = config.display().to_string();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));

    for (what, other_host) in [("another port", "127.0.0.1"), ("another name", "localhost")] {
        // The other host serves the right bytes, as object storage would.
        let storage = FaultProxy::recorder();
        storage.add(Rule::new(
            Some("GET"),
            "/",
            Fault::body(weights.clone(), None),
        ));
        proxy.clear();
        proxy.add(Rule::new(
            Some("GET"),
            &format!("/blobs/{digest}"),
            Fault::Redirect(format!(
                "http://{other_host}:{}/storage/{}?X-Signature=abc",
                storage.port(),
                &digest[7..]
            )),
        ));
        let dest = work.path().join(format!("dest-{other_host}"));
        let out = pull(
            &proxy.reference("private/m:v1"),
            &dest,
            Some(&work.path().join(format!("cache-{other_host}"))),
            &["--docker-config", &config_arg],
        );
        out.assert_ok(what);
        assert_eq!(fs::read(dest.join("w.bin")).unwrap(), weights);
        let at_storage = storage.seen();
        assert!(
            !at_storage.is_empty(),
            "{what}: the redirect was not followed"
        );
        for seen in &at_storage {
            assert!(
                seen.authorization.is_none(),
                "{what}: credentials followed the redirect to {other_host}: {seen:?}"
            );
        }
        // Sanity: the registry itself did get credentials.
        assert!(proxy.seen().iter().any(|s| s.authorization.is_some()));
        for text in [&out.stdout, &out.stderr] {
            assert!(!text.contains(pass) && !text.contains(&basic));
        }
    }

    // A redirected manifest (by digest) gets the same treatment.
    let storage = FaultProxy::recorder();
    let raw = {
        use std::io::Read as _;
        let resp = ureq::get(&format!("http://{}/v2/private/m/manifests/v1", reg.host()))
            .set("Accept", MANIFEST_MEDIA_TYPE)
            .set("Authorization", &format!("Basic {basic}"))
            .call()
            .unwrap();
        let mut body = Vec::new();
        resp.into_reader().read_to_end(&mut body).unwrap();
        body
    };
    assert_eq!(sha256_bytes(&raw), manifest);
    storage.add(Rule::new(
        Some("GET"),
        "/",
        Fault::body(raw, Some(MANIFEST_MEDIA_TYPE)),
    ));
    proxy.clear();
    proxy.add(Rule::new(
        Some("GET"),
        "/manifests/",
        Fault::Redirect(format!("http://localhost:{}/m", storage.port())),
    ));
    let dest = work.path().join("dest-manifest");
    pull(
        &proxy.reference(&format!("private/m@{manifest}")),
        &dest,
        Some(&work.path().join("cache-manifest")),
        &["--docker-config", &config_arg],
    )
    .assert_ok("redirected manifest");
    assert!(!storage.seen().is_empty());
    assert!(storage.seen().iter().all(|s| s.authorization.is_none()));
}
