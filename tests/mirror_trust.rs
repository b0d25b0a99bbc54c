//! Mirrors and who may read a model, against real registries (htpasswd, bearer tokens, TLS)
//! behind a real caching mirror (nginx `proxy_cache` keyed without Authorization, started by
//! tests/common/nginx.rs):
//! - with the manifest and every blob in the mirror's cache, a pull or a CSI publish without
//!   the credentials the origin wants is refused (the origin is asked, one HEAD by digest), and
//!   with them served; an origin that cannot be reached cannot confirm, so that is refused too;
//! - credentials go to a `--trusted-mirror` (Basic, or the origin's own Bearer token), never to
//!   a `--mirror`, never to the host a blob is redirected to; where the origin's `/v2/` is open
//!   and only the repository wants credentials, the origin itself is asked for its challenge;
//! - every mirror request carries `X-Dragonfly-Registry` with the origin's scheme;
//! - an untrusted mirror the origin's credentials would have opened: one warning, and the
//!   model comes from the origin.

mod common;
#[path = "common/csi_client.rs"]
mod csi_client;
#[path = "common/nginx.rs"]
mod nginx;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use common::*;
use nginx::Nginx;

const USER: &str = "robot$ml";
const PASS: &str = "s3cret-Pa55";
const WARNING: &str = "the mirror is not trusted with them";

/// A private model: two files in the origin, pushed with credentials.
struct Model {
    reference: String,
    repo: &'static str,
    digest: String,
    files: Vec<(&'static str, Vec<u8>)>,
}

fn push_private(reg: &Registry, repo: &'static str) -> Model {
    let files = vec![
        ("weights.bin", random_bytes(3 << 20, 7)),
        ("tokenizer.json", br#"{"vocab":["a","b"]}"#.to_vec()),
    ];
    let layers: Vec<(Option<&str>, Vec<u8>)> = files
        .iter()
        .map(|(name, bytes)| (Some(*name), bytes.clone()))
        .collect();
    let digest = push_raw_artifact_auth(&reg.host(), Some((USER, PASS)), repo, "v1", &layers, &[]);
    Model {
        reference: reg.reference(&format!("{repo}:v1")),
        repo,
        digest,
        files,
    }
}

fn write_config(dir: &Path, host: &str) -> String {
    let path = dir.join("docker-config.json");
    fs::write(&path, docker_config_json(host, USER, PASS)).unwrap();
    path.display().to_string()
}

fn basic() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"))
    )
}

fn assert_model_in(dest: &Path, model: &Model) {
    for (name, bytes) in &model.files {
        assert_eq!(&fs::read(dest.join(name)).unwrap(), bytes, "{name}");
    }
}

/// Nothing of the model under `dest`: it is absent or empty.
fn assert_nothing_in(dest: &Path) {
    if dest.exists() {
        assert_eq!(list_dir(dest), Vec::<String>::new(), "{}", dest.display());
    }
}

/// HEADs of the manifest by digest the origin answered since `mark`.
fn origin_heads(reg: &Registry, mark: usize, digest: &str) -> usize {
    reg.requests_since(mark)
        .iter()
        .filter(|r| r.method == "HEAD" && r.uri.contains(&format!("/manifests/{digest}")))
        .count()
}

/// Pulls the model with credentials through a trusted mirror, so the mirror caches the
/// manifest and every blob; checks they are all there by fetching them from the mirror with
/// no credentials at all (what makes a caching mirror leak).
fn warm(mirror: &Nginx, reg: &Registry, model: &Model, work: &Path, config: &str) {
    let trusted = format!("{}={}", reg.host(), mirror.host());
    pull(
        &model.reference,
        &work.join("warm-dest"),
        Some(&work.join("warm-cache")),
        &["--docker-config", config, "--trusted-mirror", &trusted],
    )
    .assert_ok("warming the mirror with credentials");
    for (_, bytes) in &model.files {
        let digest = sha256_bytes(bytes);
        assert_eq!(
            &get_blob(&mirror.host(), model.repo, &digest, None),
            bytes,
            "the mirror serves {digest} to anyone"
        );
    }
}

#[test]
fn a_private_model_in_a_caching_mirror_is_not_pulled_without_the_origins_word() {
    let reg = Registry::start_with_htpasswd(USER, PASS);
    let model = push_private(&reg, "private/llm");
    let mirror = Nginx::caching(&format!("http://{}", reg.host()));
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &reg.host());
    warm(&mirror, &reg, &model, work.path(), &config);
    let untrusted = format!("{}={}", reg.host(), mirror.host());

    // No credentials at all: the mirror serves the manifest from its cache, the origin says no.
    let before = mirror.requests().len();
    let cache = work.path().join("cache");
    let dest = work.path().join("dest");
    let run = pull(
        &model.reference,
        &dest,
        Some(&cache),
        &["--mirror", &untrusted],
    );
    run.assert_code(3, "no credentials, the model in the mirror");
    let line = error_line(&run, "no credentials, the model in the mirror");
    assert!(line.contains("came through a mirror"), "{line}");
    assert!(
        line.contains("the origin refused these credentials"),
        "{line}"
    );
    assert!(line.contains("HTTP 401"), "{line}");
    assert_nothing_in(&dest);
    let served: Vec<_> = mirror.requests()[before..].to_vec();
    assert!(
        served.iter().any(|r| r.status == 200 && r.cache == "HIT"),
        "the mirror did serve its copy: {served:?}"
    );

    // Again on the same cache, which now holds the manifest: the blobs come from the mirror,
    // and the origin still decides before anything is handed out.
    let run = pull(
        &model.reference,
        &dest,
        Some(&cache),
        &["--mirror", &untrusted],
    );
    run.assert_code(3, "no credentials, the manifest cached");
    assert!(error_line(&run, "again").contains("came through a mirror"));
    assert_nothing_in(&dest);

    // Without --cache (the pull's work cache lives under the destination): nothing is left.
    let ephemeral = work.path().join("dest-ephemeral");
    let run = pull(
        &model.reference,
        &ephemeral,
        None,
        &["--mirror", &untrusted],
    );
    run.assert_code(3, "no credentials, no --cache");
    assert_nothing_in(&ephemeral);

    // Wrong credentials are refused the same way.
    let wrong = work.path().join("wrong.json");
    fs::write(&wrong, docker_config_json(&reg.host(), USER, "wrong")).unwrap();
    let wrong = wrong.display().to_string();
    let run = pull(
        &model.reference,
        &work.path().join("dest-wrong"),
        Some(&work.path().join("cache-wrong")),
        &["--mirror", &untrusted, "--docker-config", &wrong],
    );
    run.assert_code(3, "wrong credentials");
    assert!(error_line(&run, "wrong credentials").contains("came through a mirror"));

    // With the credentials, through the same untrusted mirror: the mirror serves the bytes,
    // the origin answers one HEAD and serves no blob (no --cache: nothing else asks it).
    let mark = reg.mark();
    let good = work.path().join("dest-good");
    pull(
        &model.reference,
        &good,
        None,
        &["--mirror", &untrusted, "--docker-config", &config],
    )
    .assert_ok("with credentials");
    assert_model_in(&good, &model);
    assert_eq!(origin_heads(&reg, mark, &model.digest), 1);
    assert!(
        reg.blob_gets_since(mark).is_empty(),
        "{:?}",
        reg.blob_gets_since(mark)
    );

    // The origin cannot be reached: nobody can confirm, so the mirror's copy is refused.
    let mut reg = reg;
    reg.stop();
    let unreachable = work.path().join("dest-unreachable");
    let run = pull(
        &model.reference,
        &unreachable,
        None,
        &[
            "--mirror",
            &untrusted,
            "--retries",
            "1",
            "--retry-deadline",
            "1",
        ],
    );
    run.assert_code(4, "the origin is down");
    let line = error_line(&run, "the origin is down");
    assert!(
        line.contains("the origin could not be asked to confirm these credentials"),
        "{line}"
    );
    assert_nothing_in(&unreachable);
}

#[test]
fn credentials_reach_a_trusted_mirror_only_and_never_a_redirect_target() {
    let reg = Registry::start_with_htpasswd(USER, PASS);
    let model = push_private(&reg, "private/llm");
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &reg.host());
    let origin = format!("http://{}", reg.host());

    // An untrusted mirror, cold: asked anonymously, it answers the origin's 401; one warning,
    // the mirror is not asked again, and the origin serves the model.
    let mirror = Nginx::caching(&origin);
    let mark = reg.mark();
    let dest = work.path().join("untrusted");
    let run = pull(
        &model.reference,
        &dest,
        Some(&work.path().join("cache-untrusted")),
        &[
            "--mirror",
            &format!("{}={}", reg.host(), mirror.host()),
            "--docker-config",
            &config,
        ],
    );
    run.assert_ok("through an untrusted mirror");
    assert_model_in(&dest, &model);
    assert_eq!(run.stderr.matches(WARNING).count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("--trusted-mirror"), "{}", run.stderr);
    let asked = mirror.requests();
    assert_eq!(asked.len(), 1, "asked once, then skipped: {asked:?}");
    assert_eq!(asked[0].status, 401);
    assert!(asked.iter().all(|r| r.authorization == "-"), "{asked:?}");
    let from_origin = reg.blob_gets_since(mark);
    for (_, bytes) in &model.files {
        let digest = sha256_bytes(bytes);
        assert!(
            from_origin
                .iter()
                .any(|g| g.digest == digest && g.status == 200),
            "the origin served {digest}: {from_origin:?}"
        );
    }

    // No credentials configured and a mirror that refuses: no warning about trust.
    let run = pull(
        &model.reference,
        &work.path().join("anonymous"),
        Some(&work.path().join("cache-anonymous")),
        &["--mirror", &format!("{}={}", reg.host(), mirror.host())],
    );
    run.assert_code(3, "no credentials anywhere");
    assert_eq!(run.stderr.matches(WARNING).count(), 0, "{}", run.stderr);
    drop(mirror);

    // A trusted mirror gets exactly the Basic credentials the origin would, and the origin's
    // scheme and host in X-Dragonfly-Registry.
    let mirror = Nginx::caching(&origin);
    let dest = work.path().join("trusted");
    let run = pull(
        &model.reference,
        &dest,
        Some(&work.path().join("cache-trusted")),
        &[
            "--trusted-mirror",
            &format!("{}={}", reg.host(), mirror.host()),
            "--docker-config",
            &config,
        ],
    );
    run.assert_ok("through a trusted mirror");
    assert_model_in(&dest, &model);
    assert_eq!(run.stderr.matches(WARNING).count(), 0, "{}", run.stderr);
    let asked = mirror.requests();
    assert!(asked.len() > model.files.len(), "{asked:?}");
    for r in &asked {
        assert_eq!(r.authorization, basic(), "{r:?}");
        assert_eq!(r.dragonfly_registry, origin, "{r:?}");
        assert!(r.uri.contains(&format!("ns={}", reg.host())), "{r:?}");
        assert_eq!(r.status, 200, "{r:?}");
    }
    drop(mirror);

    // A trusted mirror that redirects blobs elsewhere (an object store): the redirect target
    // never sees the credentials.
    let mirror = Nginx::redirecting(&origin, &basic());
    let dest = work.path().join("redirected");
    pull(
        &model.reference,
        &dest,
        Some(&work.path().join("cache-redirected")),
        &[
            "--trusted-mirror",
            &format!("{}={}", reg.host(), mirror.host()),
            "--docker-config",
            &config,
        ],
    )
    .assert_ok("blobs redirected by a trusted mirror");
    assert_model_in(&dest, &model);
    let redirects: Vec<_> = mirror
        .requests()
        .into_iter()
        .filter(|r| r.status == 307)
        .collect();
    assert!(redirects.len() >= model.files.len(), "{redirects:?}");
    assert!(redirects.iter().all(|r| r.authorization == basic()));
    let stored = mirror.storage_requests();
    assert_eq!(stored.len(), redirects.len(), "{stored:?}");
    for r in &stored {
        assert_eq!(
            r.authorization, "-",
            "credentials followed a redirect: {r:?}"
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
}

#[test]
fn a_trusted_mirror_gets_the_origins_bearer_token() {
    let reg = Registry::start_with_token(USER, PASS);
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &reg.host());
    let src = work.path().join("model");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("weights.bin"), random_bytes(1 << 20, 3)).unwrap();
    let reference = reg.reference("private/tok:v1");
    push(&src, &reference, &["--docker-config", &config]).assert_ok("push with a token");
    let origin = format!("http://{}", reg.host());

    let mirror = Nginx::caching(&origin);
    let before = reg.token_requests();
    let dest = work.path().join("trusted");
    pull(
        &reference,
        &dest,
        Some(&work.path().join("cache-trusted")),
        &[
            "--trusted-mirror",
            &format!("{}={}", reg.host(), mirror.host()),
            "--docker-config",
            &config,
        ],
    )
    .assert_ok("through a trusted mirror, bearer tokens");
    assert_same_files(&dest, &[("weights.bin", &src.join("weights.bin"))]);
    assert!(
        reg.token_requests() > before,
        "the origin's token server issued the token"
    );
    let asked = mirror.requests();
    assert!(!asked.is_empty());
    for r in &asked {
        // The origin accepted it through the mirror (200), so it is the origin's token.
        assert!(r.authorization.starts_with("Bearer "), "{r:?}");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.dragonfly_registry, origin, "{r:?}");
    }
    assert!(!asked.iter().any(|r| r.authorization.starts_with("Basic")));

    // The same origin through an untrusted mirror: no token, no password, and the warning.
    let mirror = Nginx::caching(&origin);
    let run = pull(
        &reference,
        &work.path().join("untrusted"),
        Some(&work.path().join("cache-untrusted")),
        &[
            "--mirror",
            &format!("{}={}", reg.host(), mirror.host()),
            "--docker-config",
            &config,
        ],
    );
    run.assert_ok("through an untrusted mirror, bearer tokens");
    assert_eq!(run.stderr.matches(WARNING).count(), 1, "{}", run.stderr);
    assert!(mirror.requests().iter().all(|r| r.authorization == "-"));
}

#[test]
fn public_models_keep_coming_through_a_mirror_that_names_an_https_origin() {
    let reg = Registry::start_tls();
    push_raw_artifact_tls(&reg);
    let mirror = Nginx::caching(&format!("https://{}", reg.host()));
    let work = tempfile::tempdir().unwrap();
    let ca = reg.tls_ca().display().to_string();
    for round in ["cold", "warm"] {
        let mark = reg.mark();
        let dest = work.path().join(round);
        let mut cmd = tugboat();
        cmd.arg("pull")
            .arg(reg.reference("public/m:v1"))
            .arg("--dest")
            .arg(&dest)
            .arg("--cache")
            .arg(work.path().join(format!("cache-{round}")))
            .args(["--ca-file", &ca])
            .args([
                "--mirror",
                &format!("{}=http://{}", reg.host(), mirror.host()),
            ]);
        run(&mut cmd, TIMEOUT).assert_ok(&format!("a public model, mirror {round}"));
        assert_eq!(fs::read(dest.join("w.bin")).unwrap(), b"public weights");
        let heads = reg
            .requests_since(mark)
            .iter()
            .filter(|r| r.method == "HEAD" && r.uri.contains("/manifests/sha256:"))
            .count();
        assert_eq!(heads, 1, "{round}: one HEAD at the origin per pull");
    }
    let asked = mirror.requests();
    assert!(asked.iter().any(|r| r.cache == "HIT"), "{asked:?}");
    for r in &asked {
        assert_eq!(
            r.dragonfly_registry,
            format!("https://{}", reg.host()),
            "{r:?}"
        );
        assert_eq!(r.authorization, "-");
    }
}

/// `public/m:v1` with one file `w.bin`, pushed over the registry's TLS with its CA.
fn push_raw_artifact_tls(reg: &Registry) {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("w.bin"), b"public weights").unwrap();
    let mut cmd = tugboat();
    cmd.arg("push")
        .arg(src.path())
        .arg(reg.reference("public/m:v1"))
        .args(["--ca-file", &reg.tls_ca().display().to_string()]);
    run(&mut cmd, TIMEOUT).assert_ok("push over TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_csi_publish_through_a_caching_mirror_needs_the_pods_credentials() {
    use csi_client::*;
    use tonic::Code;
    if !can_mount() {
        return;
    }
    let reg = Registry::start_with_htpasswd(USER, PASS);
    let model = push_private(&reg, "private/csi");
    let mirror = Nginx::caching(&format!("http://{}", reg.host()));
    let trusted = format!("{}={}", reg.host(), mirror.host());
    let with_secrets = |ws: &Workspace, volume: &str, secrets: HashMap<String, String>| {
        let mut request = publish_request(volume, &ws.target(volume), &model.reference);
        request.secrets = secrets;
        request
    };
    let files_at = |target: PathBuf| {
        for (name, bytes) in &model.files {
            assert_eq!(&fs::read(target.join(name)).unwrap(), bytes, "{name}");
        }
    };

    // The daemon has no credentials; the pod's pull secret goes to the trusted mirror, which
    // caches the model.
    {
        let ws = Workspace::new();
        let daemon = Daemon::start(&ws, &["--trusted-mirror", &trusted]);
        let (_, mut node) = daemon.clients().await;
        node.node_publish_volume(with_secrets(
            &ws,
            "pod-a",
            dockerconfig_secret(&reg.host(), USER, PASS),
        ))
        .await
        .unwrap();
        files_at(ws.target("pod-a"));
        let asked = mirror.requests();
        assert!(!asked.is_empty());
        assert!(
            asked.iter().all(|r| r.authorization == basic()),
            "{asked:?}"
        );
        node.node_unpublish_volume(unpublish_request("pod-a", &ws.target("pod-a")))
            .await
            .unwrap();
    }

    // Another node (an empty cache), the mirror warm: a pod without credentials is refused,
    // a pod with its own secret is served, and the first pod is still refused after that.
    let ws = Workspace::new();
    let daemon = Daemon::start(&ws, &["--mirror", &trusted]);
    let (_, mut node) = daemon.clients().await;
    let before = mirror.requests().len();
    let status = node
        .node_publish_volume(with_secrets(&ws, "pod-nocreds", HashMap::new()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("came through a mirror")
            && status
                .message()
                .contains("the origin refused these credentials"),
        "{}",
        status.message()
    );
    assert!(
        mirror.requests()[before..].iter().any(|r| r.cache == "HIT"),
        "the mirror served its copy"
    );
    assert!(ws.mounts().is_empty(), "a refused publish mounts nothing");

    node.node_publish_volume(with_secrets(&ws, "pod-b", basic_secret(USER, PASS)))
        .await
        .unwrap();
    files_at(ws.target("pod-b"));

    // (The model is in this node's cache now, private: the cache's own rule refuses it.)
    let status = node
        .node_publish_volume(with_secrets(&ws, "pod-nocreds-2", HashMap::new()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            status.code(),
            Code::Unauthenticated | Code::PermissionDenied
        ),
        "{status:?}"
    );
    assert_eq!(ws.mounts().len(), 1, "only pod-b's mount");
    node.node_unpublish_volume(unpublish_request("pod-b", &ws.target("pod-b")))
        .await
        .unwrap();
}

#[test]
fn a_trusted_mirror_gets_credentials_where_only_the_repository_wants_them() {
    let reg = Registry::start();
    let files: Vec<(Option<&str>, Vec<u8>)> = vec![(Some("weights.bin"), random_bytes(2 << 20, 9))];
    push_raw_artifact_auth(&reg.host(), None, "private/llm", "v1", &files, &[]);
    // The origin: /v2/ open, /v2/private/ behind Basic (as a front that guards some projects).
    let origin = Nginx::guarding(&format!("http://{}", reg.host()), USER, PASS, "private");
    let mirror = Nginx::caching(&format!("http://{}", origin.host()));
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &origin.host());
    let dest = work.path().join("dest");
    let run = pull(
        &format!("{}/private/llm:v1", origin.host()),
        &dest,
        Some(&work.path().join("cache")),
        &[
            "--docker-config",
            &config,
            "--trusted-mirror",
            &format!("{}={}", origin.host(), mirror.host()),
        ],
    );
    run.assert_ok("through the trusted mirror");
    assert_eq!(fs::read(dest.join("weights.bin")).unwrap(), files[0].1);
    assert!(
        !run.stderr.contains("falling back"),
        "the mirror served it: {}",
        run.stderr
    );
    let asked = mirror.requests();
    let digest = sha256_bytes(&files[0].1);
    assert!(
        asked
            .iter()
            .any(|r| r.uri.contains(&digest) && r.status == 200 && r.authorization == basic()),
        "the blob came through the mirror, with the origin's credentials: {asked:?}"
    );
    // The challenge came from the origin itself: an anonymous HEAD there, never one learned
    // from the mirror's relayed 401.
    assert!(
        origin
            .requests()
            .iter()
            .any(|r| r.method == "HEAD" && r.status == 401 && r.authorization == "-"),
        "{:?}",
        origin.requests()
    );
}
