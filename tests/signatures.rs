//! The signature policy with real signers where they install: OpenSSF `model_signing` (PyPI)
//! signs model directories pushed with oras-py; cosign signatures are written by the harness
//! to cosign's spec (simple-signing payload, `dev.cosignproject.cosign/signature`, the
//! `sha256-<hex>.sig` tag, and a referrers-API variant served through the fault proxy).
//! Refusals exit 7 and leave nothing in --dest; through CSI they are FAILED_PRECONDITION.

#[path = "common/artifacts.rs"]
mod artifacts;
mod common;
#[path = "common/cosign.rs"]
mod cosign;
#[path = "common/csi_client.rs"]
mod csi_client;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

use common::*;
use cosign::{cosign_attach, key_pair, sh, sig_tag};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `model_signing sign key DIR --private_key KEY --signature DIR/model.sig`.
fn model_sign(dir: &Path, private: &Path) {
    sh(
        Command::new("model_signing")
            .args(["sign", "key"])
            .arg(dir)
            .arg("--private_key")
            .arg(private)
            .arg("--signature")
            .arg(dir.join("model.sig")),
        "model_signing sign (pip install model-signing pyopenssl)",
    );
}

fn model_dir(root: &Path, name: &str) -> (PathBuf, Vec<PathBuf>) {
    let dir = root.join(name);
    fs::create_dir_all(&dir).unwrap();
    let files = vec![dir.join("model.bin"), dir.join("config.json")];
    let seed = name
        .bytes()
        .fold(5u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    fs::write(&files[0], random_bytes(300_000, seed)).unwrap();
    fs::write(&files[1], b"{\"arch\": \"tiny\"}").unwrap();
    (dir, files)
}

fn with_sig(dir: &Path, files: &[PathBuf]) -> Vec<PathBuf> {
    let mut all = files.to_vec();
    all.push(dir.join("model.sig"));
    all
}

fn write_policy(dir: &Path, yaml: &str) -> String {
    let path = dir.join("policy.yaml");
    fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

/// `tugboat inspect --json --policy P`'s `signatures`.
fn inspect_signatures(reference: &str, policy: &str) -> Vec<serde_json::Value> {
    let out = run(
        tugboat().args([
            "inspect",
            reference,
            "--json",
            "--plain-http",
            "--policy",
            policy,
        ]),
        Duration::from_secs(60),
    );
    out.assert_ok("inspect");
    out.json()["signatures"].as_array().unwrap().clone()
}

fn assert_nothing_in(dest: &Path) {
    let files: Vec<PathBuf> = walk(dest)
        .into_iter()
        .filter(|p| dest.join(p).is_file() || p.is_file())
        .collect();
    assert!(
        files.is_empty(),
        "files left under {}: {files:?}",
        dest.display()
    );
}

#[test]
fn model_signing_signatures_are_checked_against_the_materialised_files() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let (private, public) = key_pair(root, "signer");
    let (other_private, _) = key_pair(root, "stranger");
    let policy = write_policy(
        root,
        &format!(
            "signatures:\n  rules:\n    - name: signed-models\n      references: ['{}/ms/*']\n      modelSigning: {{keys: ['{}']}}\n",
            reg.host(),
            public.display()
        ),
    );

    let (good, files) = model_dir(root, "good");
    model_sign(&good, &private);
    oras_push(&reg.host(), "ms/good:v1", &with_sig(&good, &files));
    let dest = root.join("dest-good");
    pull(
        &reg.reference("ms/good:v1"),
        &dest,
        None,
        &["--policy", &policy],
    )
    .assert_ok("signed model");
    assert_eq!(
        list_dir(&dest),
        vec!["config.json", "model.bin", "model.sig"]
    );
    let listed = inspect_signatures(&reg.reference("ms/good:v1"), &policy);
    assert_eq!(listed[0]["kind"], "model-signing", "{listed:?}");
    assert_eq!(listed[0]["signs"], "2 file(s)");
    assert_eq!(listed[0]["signer"], public.display().to_string());

    let (changed, files) = model_dir(root, "changed");
    model_sign(&changed, &private);
    fs::write(&files[1], b"{\"arch\": \"evil\"}").unwrap();
    oras_push(&reg.host(), "ms/changed:v1", &with_sig(&changed, &files));

    let (stranger, files_s) = model_dir(root, "stranger");
    model_sign(&stranger, &other_private);
    oras_push(
        &reg.host(),
        "ms/stranger:v1",
        &with_sig(&stranger, &files_s),
    );

    let (_, files_u) = model_dir(root, "unsigned");
    oras_push(&reg.host(), "ms/unsigned:v1", &files_u);

    for (repo, needle) in [
        ("ms/changed:v1", "config.json differs from what was signed"),
        ("ms/stranger:v1", "none of the configured keys"),
        ("ms/unsigned:v1", "no model-signing signature file"),
    ] {
        for cache in [None, Some(root.join("cache"))] {
            let dest = root.join(format!("dest-{}", repo.replace(['/', ':'], "_")));
            let out = pull(
                &reg.reference(repo),
                &dest,
                cache.as_deref(),
                &["--policy", &policy],
            );
            out.assert_code(7, repo);
            assert!(
                out.stderr.contains(needle),
                "{repo}: {needle:?} not in {}",
                out.stderr
            );
            assert!(out.stderr.contains("signed-models"), "{}", out.stderr);
            assert_nothing_in(&dest);
        }
    }
}

fn push_model(reg: &Registry, root: &Path, repo_tag: &str) -> String {
    let (dir, _) = model_dir(root, &repo_tag.replace(['/', ':'], "_"));
    let out = push(&dir, &reg.reference(repo_tag), &["--json"]);
    out.assert_ok("push");
    out.json()["digest"].as_str().unwrap().to_string()
}

#[test]
fn cosign_signatures_bind_the_exact_digest_to_a_configured_key() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let (private, public) = key_pair(root, "cosign");
    let (other, _) = key_pair(root, "other");
    let policy = write_policy(
        root,
        &format!(
            "signatures:\n  rules:\n    - name: cosigned\n      references: ['**']\n      cosign: {{keys: ['{}']}}\n",
            public.display()
        ),
    );
    let host = reg.host();
    let good = push_model(&reg, root, "cs/good:v1");
    cosign_attach(&host, "cs/good", &sig_tag(&good), &good, &private, false);
    let dest = root.join("dest-good");
    pull(
        &reg.reference("cs/good:v1"),
        &dest,
        Some(&root.join("cache")),
        &["--policy", &policy],
    )
    .assert_ok("cosign-signed model");
    assert!(dest.join("model.bin").is_file());
    let listed = inspect_signatures(&reg.reference("cs/good:v1"), &policy);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["kind"], "cosign");
    assert_eq!(listed[0]["found"], "tag");
    assert_eq!(listed[0]["signs"], good.as_str());
    assert_eq!(listed[0]["signer"], public.display().to_string());

    push_model(&reg, root, "cs/unsigned:v1");
    let wrong = push_model(&reg, root, "cs/wrong-digest:v1");
    cosign_attach(
        &host,
        "cs/wrong-digest",
        &sig_tag(&wrong),
        &good,
        &private,
        false,
    );
    let stranger = push_model(&reg, root, "cs/stranger:v1");
    cosign_attach(
        &host,
        "cs/stranger",
        &sig_tag(&stranger),
        &stranger,
        &other,
        false,
    );
    let tampered = push_model(&reg, root, "cs/tampered:v1");
    cosign_attach(
        &host,
        "cs/tampered",
        &sig_tag(&tampered),
        &tampered,
        &private,
        true,
    );
    for (repo, needle) in [
        ("cs/unsigned:v1", "no cosign signature"),
        ("cs/wrong-digest:v1", &format!("names {good}")),
        ("cs/stranger:v1", "none of the configured keys"),
        ("cs/tampered:v1", "none of the configured keys"),
    ] {
        let dest = root.join(format!("dest-{}", repo.replace(['/', ':'], "_")));
        let out = pull(
            &reg.reference(repo),
            &dest,
            Some(&root.join("cache")),
            &["--policy", &policy],
        );
        out.assert_code(7, repo);
        assert!(
            out.stderr.contains(needle),
            "{repo}: {needle:?} not in {}",
            out.stderr
        );
        assert_nothing_in(&dest);
    }

    // `action: warn` lets the unsigned model through and says why it would be refused.
    let warn_policy = root.join("warn.yaml");
    fs::write(
        &warn_policy,
        format!(
            "signatures:\n  rules:\n    - name: cosigned-warn\n      references: ['**']\n      action: warn\n      cosign: {{keys: ['{}']}}\n",
            public.display()
        ),
    )
    .unwrap();
    let dest = root.join("dest-warn");
    let out = pull(
        &reg.reference("cs/unsigned:v1"),
        &dest,
        None,
        &[
            "--policy",
            &warn_policy.display().to_string(),
            "--log",
            "warn",
        ],
    );
    out.assert_ok("warn only");
    assert!(out.stderr.contains("no cosign signature"), "{}", out.stderr);
    assert!(dest.join("model.bin").is_file());
}

#[test]
fn ed25519_keys_verify_cosign_signatures() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let private = root.join("ed25519.pem");
    let public = root.join("ed25519.pub");
    sh(
        Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&private),
        "openssl genpkey ed25519",
    );
    sh(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public),
        "openssl pkey -pubout",
    );
    let policy = write_policy(
        root,
        &format!(
            "signatures:\n  rules:\n    - name: ed\n      references: ['**']\n      cosign: {{keys: ['{}']}}\n",
            public.display()
        ),
    );
    let digest = push_model(&reg, root, "ed/model:v1");
    cosign_attach(
        &reg.host(),
        "ed/model",
        &sig_tag(&digest),
        &digest,
        &private,
        false,
    );
    pull(
        &reg.reference("ed/model:v1"),
        &root.join("dest"),
        None,
        &["--policy", &policy],
    )
    .assert_ok("ed25519-signed model");
    let tampered = push_model(&reg, root, "ed/tampered:v1");
    cosign_attach(
        &reg.host(),
        "ed/tampered",
        &sig_tag(&tampered),
        &tampered,
        &private,
        true,
    );
    let dest = root.join("dest-tampered");
    pull(
        &reg.reference("ed/tampered:v1"),
        &dest,
        None,
        &["--policy", &policy],
    )
    .assert_code(7, "tampered ed25519 payload");
    assert_nothing_in(&dest);
}

#[test]
fn cosign_signatures_found_through_the_referrers_api() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let (private, public) = key_pair(root, "cosign");
    let policy = write_policy(
        root,
        &format!(
            "signatures:\n  rules:\n    - name: cosigned\n      references: ['**']\n      cosign: {{keys: ['{}']}}\n",
            public.display()
        ),
    );
    let digest = push_model(&reg, root, "ref/model:v1");
    // The signature manifest lives under an unrelated tag; only the referrers index finds it.
    let sig_manifest = cosign_attach(
        &reg.host(),
        "ref/model",
        "not-the-sig-tag",
        &digest,
        &private,
        false,
    );
    let sig_bytes = ureq::get(&format!(
        "http://{}/v2/ref/model/manifests/{sig_manifest}",
        reg.host()
    ))
    .set("Accept", "application/vnd.oci.image.manifest.v1+json")
    .call()
    .unwrap()
    .into_string()
    .unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sig_manifest,
            "size": sig_bytes.len(),
            "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json"
        }]
    });
    let proxy = fault_proxy::FaultProxy::start(&reg.host());
    proxy.add(fault_proxy::Rule::new(
        Some("GET"),
        "/referrers/",
        fault_proxy::Fault::body(
            serde_json::to_vec(&index).unwrap(),
            Some("application/vnd.oci.image.index.v1+json"),
        ),
    ));
    let dest = root.join("dest");
    pull(
        &proxy.reference("ref/model:v1"),
        &dest,
        None,
        &["--policy", &policy],
    )
    .assert_ok("signature found through referrers");
    assert!(!proxy.seen_matching("/referrers/").is_empty());
    assert!(
        proxy.seen_matching(".sig").is_empty(),
        "the tag scheme was not needed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_volume_asking_for_signatures_gets_only_signed_models_even_from_the_cache() {
    if !csi_client::can_mount() {
        return;
    }
    use csi_client::*;
    let reg = Registry::start();
    let ws = Workspace::new();
    let root = ws.dir.path();
    let (private, public) = key_pair(root, "cosign");
    let policy = write_policy(
        root,
        &format!(
            "signatures:\n  rules:\n    - name: cosigned\n      cosign: {{keys: ['{}']}}\n",
            public.display()
        ),
    );
    let host = reg.host();
    let signed = push_model(&reg, root, "csi/signed:v1");
    cosign_attach(
        &host,
        "csi/signed",
        &sig_tag(&signed),
        &signed,
        &private,
        false,
    );
    push_model(&reg, root, "csi/unsigned:v1");
    let daemon = Daemon::start(&ws, &["--policy", &policy]);
    let (_, mut node) = daemon.clients().await;

    // Without the attribute the node's own rules (none for this reference) apply: cached.
    let plain = ws.target("plain");
    node.node_publish_volume(publish_request(
        "plain",
        &plain,
        &reg.reference("csi/unsigned:v1"),
    ))
    .await
    .expect("no signature required without the attribute");

    let strict = |volume: &str, target: &Path, reference: String, rule: &str| {
        let mut request = publish_request(volume, target, &reference);
        request
            .volume_context
            .insert("signaturePolicy".into(), rule.into());
        request
    };
    let refused = ws.target("strict-unsigned");
    let status = node
        .node_publish_volume(strict(
            "s1",
            &refused,
            reg.reference("csi/unsigned:v1"),
            "cosigned",
        ))
        .await
        .expect_err("the cached unsigned model is refused to a volume requiring signatures");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("no cosign signature"),
        "{status:?}"
    );
    assert!(!refused.join("model.bin").exists());

    let served = ws.target("strict-signed");
    node.node_publish_volume(strict(
        "s2",
        &served,
        reg.reference("csi/signed:v1"),
        "cosigned",
    ))
    .await
    .expect("the signed model is served");
    assert!(served.join("model.bin").is_file());

    let unknown = ws.target("unknown-rule");
    let status = node
        .node_publish_volume(strict(
            "s3",
            &unknown,
            reg.reference("csi/signed:v1"),
            "no-such-rule",
        ))
        .await
        .expect_err("a rule the node does not define");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
}

#[test]
fn the_warm_list_warms_only_what_the_policy_allows() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let (private, public) = key_pair(root, "cosign");
    let host = reg.host();
    let policy = write_policy(
        root,
        &format!(
            "access:\n  default: deny\n  rules:\n    - name: warm\n      modes: [warm]\n      references: ['{host}/warm/*']\nsignatures:\n  rules:\n    - name: cosigned\n      references: ['{host}/warm/*']\n      cosign: {{keys: ['{}']}}\n",
            public.display()
        ),
    );
    let signed = push_model(&reg, root, "warm/signed:v1");
    cosign_attach(
        &host,
        "warm/signed",
        &sig_tag(&signed),
        &signed,
        &private,
        false,
    );
    push_model(&reg, root, "warm/unsigned:v1");
    push_model(&reg, root, "elsewhere/model:v1");
    let list = root.join("warm.yaml");
    fs::write(
        &list,
        format!(
            "models:\n  - reference: {}\n  - reference: {}\n  - reference: {}\n",
            reg.reference("warm/signed:v1"),
            reg.reference("warm/unsigned:v1"),
            reg.reference("elsewhere/model:v1")
        ),
    )
    .unwrap();
    let cache = root.join("cache");
    let out = run(
        tugboat()
            .arg("warm")
            .arg(&list)
            .arg("--cache")
            .arg(&cache)
            .args(["--plain-http", "--json", "--policy", &policy]),
        Duration::from_secs(120),
    );
    let states: Vec<serde_json::Value> = serde_json::from_str(out.stdout.trim()).unwrap();
    let state = |i: usize| states[i]["state"].as_str().unwrap().to_string();
    assert_eq!(state(0), "ready", "{states:?}");
    assert_eq!(state(1), "failed");
    assert!(states[1]["error"]
        .as_str()
        .unwrap()
        .contains("no cosign signature"));
    assert_eq!(state(2), "failed");
    assert!(states[2]["error"]
        .as_str()
        .unwrap()
        .contains("access policy"));
    let snapshots = tugboat::cache::Cache::open(&cache)
        .unwrap()
        .snapshots()
        .unwrap();
    let elsewhere_cached = snapshots.iter().any(|s| s.reference.contains("elsewhere"));
    assert!(
        !elsewhere_cached,
        "nothing was fetched for a refused reference"
    );
}

/// Not a test: `bench/policy.sh` runs it (`--ignored --nocapture`) and reads the figures it
/// prints. Extra wall time of a warm pull and a warm publish under a policy with access rules,
/// cosign and model-signing requirements, against the same without `--policy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run by bench/policy.sh"]
async fn bench_warm_pull_and_publish_overhead() {
    use csi_client::*;
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let size_mib: usize = std::env::var("SIZE_MIB")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(64);
    let reg = Registry::start();
    let ws = Workspace::new();
    let root = ws.dir.path();
    let (private, public) = key_pair(root, "bench");
    let dir = root.join("model");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("model.bin"), random_bytes(size_mib << 20, 9)).unwrap();
    fs::write(dir.join("config.json"), b"{}").unwrap();
    model_sign(&dir, &private);
    let out = push(&dir, &reg.reference("bench/model:v1"), &["--json"]);
    out.assert_ok("push");
    let digest = out.json()["digest"].as_str().unwrap().to_string();
    cosign_attach(
        &reg.host(),
        "bench/model",
        &sig_tag(&digest),
        &digest,
        &private,
        false,
    );
    let reference = reg.reference(&format!("bench/model@{digest}"));
    let host = reg.host();
    let policy = write_policy(
        root,
        &format!(
            "access:\n  default: deny\n  rules:\n    - name: bench\n      references: ['{host}/bench/*']\n      maxModelSize: 10GiB\n      maxConcurrentPulls: 4\nsignatures:\n  rules:\n    - name: signed\n      references: ['{host}/bench/*']\n      cosign: {{keys: ['{pk}']}}\n      modelSigning: {{keys: ['{pk}']}}\n",
            pk = public.display()
        ),
    );
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // Warm pull: cache hit into a fresh --dest each round; with and without alternate, so
    // drift on a shared machine hits both alike.
    let cache = root.join("cache");
    let with: Vec<&str> = vec!["--policy", &policy];
    let configs: [&[&str]; 2] = [&[], &with];
    for extra in configs {
        pull(&reference, &root.join("warmup"), Some(&cache), extra).assert_ok("warm-up");
    }
    let mut pull_times = [Vec::new(), Vec::new()];
    for i in 0..rounds {
        for (which, extra) in configs.iter().enumerate() {
            let dest = root.join(format!("dest-{which}-{i}"));
            let started = std::time::Instant::now();
            pull(&reference, &dest, Some(&cache), extra).assert_ok("warm pull");
            pull_times[which].push(started.elapsed().as_secs_f64() * 1000.0);
            fs::remove_dir_all(&dest).unwrap();
        }
    }
    let pulls = pull_times.map(median);
    println!(
        "warm pull ({size_mib} MiB, {rounds} rounds, median): without policy {:.1} ms, with policy {:.1} ms, extra {:.1} ms",
        pulls[0],
        pulls[1],
        pulls[1] - pulls[0]
    );
    if !can_mount() {
        return;
    }
    let spaces = [Workspace::new(), Workspace::new()];
    let daemons = [
        Daemon::start(&spaces[0], &[]),
        Daemon::start(&spaces[1], &["--policy", &policy]),
    ];
    let mut nodes = Vec::new();
    for (ws, daemon) in spaces.iter().zip(&daemons) {
        let (_, mut node) = daemon.clients().await;
        let warm = ws.target("warm");
        node.node_publish_volume(publish_request("warm", &warm, &reference))
            .await
            .unwrap();
        nodes.push(node);
    }
    let mut publish_times = [Vec::new(), Vec::new()];
    for i in 0..rounds {
        for (which, node) in nodes.iter_mut().enumerate() {
            let volume = format!("v{i}");
            let target = spaces[which].target(&volume);
            let started = std::time::Instant::now();
            node.node_publish_volume(publish_request(&volume, &target, &reference))
                .await
                .unwrap();
            publish_times[which].push(started.elapsed().as_secs_f64() * 1000.0);
            node.node_unpublish_volume(unpublish_request(&volume, &target))
                .await
                .unwrap();
        }
    }
    let publishes = publish_times.map(median);
    println!(
        "warm publish ({size_mib} MiB, {rounds} rounds, median): without policy {:.1} ms, with policy {:.1} ms, extra {:.1} ms",
        publishes[0],
        publishes[1],
        publishes[1] - publishes[0]
    );
}
