//! tugboat where users already are, against a real registry:
//! - KServe's storage-initializer contract: `tugboat pull [flags] STORAGE_URI DEST` with the
//!   `tugboat://` prefix (and `oci://`, `kit://`) wherever a reference goes (pull, inspect, the
//!   warm list), credentials from a pull secret in TUGBOAT_DOCKER_CONFIG_JSON, and the URIs
//!   tugboat does not fetch refused with what to use instead;
//! - KitOps' init-container contract: `tugboat` without arguments, driven by MODELKIT_REF,
//!   UNPACK_PATH, UNPACK_FILTER (`kit unpack --filter` syntax, names included), EXTRA_FLAGS and
//!   COSIGN_KEY (a cosign signature checked before anything is unpacked; keyless refused).
//!
//! tests/container.rs starts the image itself these two ways under containerd.

#[path = "common/artifacts.rs"]
mod artifacts;
mod common;
#[path = "common/cosign.rs"]
mod cosign;

use artifacts::{push_artifact, tar, Entry, Layer};
use common::*;
use std::fs;
use std::path::Path;
use std::process::Command;

/// A ModelKit with a model, a model part, two datasets, code and docs, as `kit pack` lays it
/// out (one tar layer per Kitfile entry, in Kitfile order). Returns its manifest digest.
fn push_modelkit(reg: &Registry, repo: &str) -> String {
    let kitfile = serde_json::json!({
        "manifestVersion": "1.0.0",
        "package": {"name": "tiny", "version": "1.0.0"},
        "model": {"name": "tiny", "path": "tiny.gguf",
                  "parts": [{"name": "lora", "path": "adapters/lora.bin"}]},
        "datasets": [{"name": "train", "path": "data/train.csv"},
                     {"name": "validation", "path": "data/val.csv"}],
        "code": [{"path": "src"}],
        "docs": [{"path": "README.md"}]
    });
    let layer = |kind: &str, entries: &[Entry<'_>]| {
        Layer::new(
            &format!("application/vnd.kitops.modelkit.{kind}.v1.tar"),
            tar(entries),
            &[],
        )
    };
    let layers = vec![
        layer("model", &[Entry::File("tiny.gguf", b"weights")]),
        layer(
            "modelpart",
            &[
                Entry::Dir("adapters/"),
                Entry::File("adapters/lora.bin", b"lora"),
            ],
        ),
        layer(
            "dataset",
            &[Entry::Dir("data/"), Entry::File("data/train.csv", b"t\n")],
        ),
        layer(
            "dataset",
            &[Entry::Dir("data/"), Entry::File("data/val.csv", b"v\n")],
        ),
        layer(
            "code",
            &[Entry::Dir("src/"), Entry::File("src/run.py", b"1\n")],
        ),
        layer("docs", &[Entry::File("README.md", b"docs\n")]),
    ];
    push_artifact(
        &reg.host(),
        repo,
        "v1",
        None,
        (
            "application/vnd.kitops.modelkit.config.v1+json",
            &serde_json::to_vec(&kitfile).unwrap(),
        ),
        &layers,
        &[],
    )
}

/// `tugboat` without arguments, as KitOps' init-container spec starts its image.
fn kitops_init(env: &[(&str, &str)]) -> Run {
    let mut cmd = tugboat();
    cmd.env("TUGBOAT_PLAIN_HTTP", "true")
        .env("TUGBOAT_JSON", "true")
        .envs(env.iter().copied());
    run(&mut cmd, TIMEOUT)
}

fn files(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = walk(dir)
        .into_iter()
        .filter(|p| dir.join(p).is_file() && !p.starts_with(".tugboat"))
        .map(|p| p.display().to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn kserve_appends_the_storage_uri_and_the_destination() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model.gguf");
    write_random_file(&model, 300_000, 7);
    push_raw_files(&reg.host(), "kserve/tiny", "v1", &[&model]);
    let cache = work.path().join("cache");

    // As the ClusterStorageContainer's command with KServe's two arguments appended.
    let first = work.path().join("mnt-models-1");
    let uri = format!("tugboat://{}", reg.reference("kserve/tiny:v1"));
    let mut cmd = tugboat();
    cmd.args(["pull", "--plain-http", "--json", "--cache"])
        .arg(&cache)
        .arg(&uri)
        .arg(&first);
    let out = run(&mut cmd, TIMEOUT);
    out.assert_ok("tugboat pull URI DEST");
    assert_same_files(&first, &[("model.gguf", &model)]);
    assert_eq!(out.json()["cache_hit"], false);
    assert_eq!(
        out.json()["reference"],
        reg.reference("kserve/tiny:v1"),
        "the scheme is not part of the reference"
    );

    // The next pod on the node: a fresh /mnt/models, the same cache, no blob fetched again;
    // oci:// and kit:// name the same model.
    for (i, prefix) in ["tugboat://", "oci://", "kit://"].iter().enumerate() {
        let dest = work.path().join(format!("mnt-models-{}", i + 2));
        let mark = reg.mark();
        let mut cmd = tugboat();
        cmd.args(["pull", "--plain-http", "--json", "--cache"])
            .arg(&cache)
            .arg(format!("{prefix}{}", reg.reference("kserve/tiny:v1")))
            .arg(&dest);
        let out = run(&mut cmd, TIMEOUT);
        out.assert_ok(prefix);
        assert_same_files(&dest, &[("model.gguf", &model)]);
        assert_eq!(out.json()["cache_hit"], true, "{prefix}");
        assert!(
            reg.blob_gets_since(mark).is_empty(),
            "{prefix}: a blob was fetched again"
        );
    }

    // The destination once: as DEST or --dest, not both differently.
    let mut cmd = tugboat();
    cmd.args(["pull", "--plain-http", &uri])
        .arg(work.path().join("a"))
        .arg("--dest")
        .arg(work.path().join("b"));
    let out = run(&mut cmd, TIMEOUT);
    out.assert_code(2, "two destinations");
    assert!(out.stderr.contains("give it once"), "{}", out.stderr);

    // inspect and the warm list take prefixed references too.
    let mut cmd = tugboat();
    cmd.args(["inspect", "--plain-http", "--json", &uri]);
    let out = run(&mut cmd, TIMEOUT);
    out.assert_ok("inspect tugboat://");
    assert_eq!(out.json()["format"], "oras");
    let warm = work.path().join("warm.yaml");
    fs::write(
        &warm,
        format!(
            "interval: 10m\nmodels:\n  - reference: oci://{}\n",
            reg.reference("kserve/tiny:v1")
        ),
    )
    .unwrap();
    let mut cmd = tugboat();
    cmd.arg("warm")
        .arg(&warm)
        .arg("--cache")
        .arg(work.path().join("warm-cache"))
        .arg("--plain-http");
    run(&mut cmd, TIMEOUT).assert_ok("warm an oci:// entry");
}

#[test]
fn uris_tugboat_does_not_fetch_say_what_to_use_instead() {
    let work = tempfile::tempdir().unwrap();
    for (uri, advice) in [
        ("hf://Qwen/Qwen2.5-0.5B-Instruct", "kit import"),
        ("s3://models/qwen", "oras push"),
        ("gs://models/qwen", "oras push"),
        ("https://harbor.example.com/ml/qwen", "--plain-http"),
        ("oci+native://harbor.example.com/ml/qwen:v1", "tugboat://"),
        ("pvc://models-claim/qwen", "nothing to pull"),
    ] {
        let mut cmd = tugboat();
        cmd.args(["pull", uri]).arg(work.path().join("dest"));
        let out = run(&mut cmd, TIMEOUT);
        out.assert_code(2, uri);
        assert!(
            out.stderr.contains("does not fetch") && out.stderr.contains(advice),
            "{uri}: {}",
            out.stderr
        );
        assert!(
            !work.path().join("dest").exists(),
            "{uri}: the destination was made"
        );
    }
}

#[test]
fn credentials_come_from_a_pull_secret_in_the_environment() {
    let reg = Registry::start_with_htpasswd("robot", "s3cret-Passw0rd");
    let work = tempfile::tempdir().unwrap();
    let model_dir = work.path().join("model");
    fs::create_dir(&model_dir).unwrap();
    let model = model_dir.join("model.gguf");
    write_random_file(&model, 50_000, 9);
    let config = work.path().join("docker.json");
    fs::write(
        &config,
        docker_config_json(&reg.host(), "robot", "s3cret-Passw0rd"),
    )
    .unwrap();
    let out = push(
        &model_dir,
        &reg.reference("private/tiny:v1"),
        &["--docker-config", config.to_str().unwrap()],
    );
    out.assert_ok("push");
    let uri = format!("tugboat://{}", reg.reference("private/tiny:v1"));

    let anonymous = work.path().join("anonymous");
    let mut cmd = tugboat();
    cmd.args(["pull", "--plain-http", &uri]).arg(&anonymous);
    run(&mut cmd, TIMEOUT).assert_code(3, "no credentials");

    let dest = work.path().join("dest");
    let secret = docker_config_json(&reg.host(), "robot", "s3cret-Passw0rd");
    let mut cmd = tugboat();
    cmd.args(["pull", "--plain-http", &uri])
        .arg(&dest)
        .env("TUGBOAT_DOCKER_CONFIG_JSON", &secret);
    let out = run(&mut cmd, TIMEOUT);
    out.assert_ok("credentials from TUGBOAT_DOCKER_CONFIG_JSON");
    assert_same_files(&dest, &[("model.gguf", &model)]);

    // An optional secret that is absent leaves the variable empty: anonymous, not an error.
    let mut cmd = tugboat();
    cmd.args(["pull", "--plain-http", &uri])
        .arg(work.path().join("empty"))
        .env("TUGBOAT_DOCKER_CONFIG_JSON", "");
    run(&mut cmd, TIMEOUT).assert_code(3, "empty variable: anonymous");
    // A broken one says so without echoing it.
    let mut cmd = tugboat();
    cmd.args(["pull", "--plain-http", &uri])
        .arg(work.path().join("broken"))
        .env("TUGBOAT_DOCKER_CONFIG_JSON", "{\"auths\": s3cret-Passw0rd");
    let out = run(&mut cmd, TIMEOUT);
    out.assert_code(2, "broken secret");
    assert!(
        out.stderr.contains("TUGBOAT_DOCKER_CONFIG_JSON"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("s3cret"),
        "the secret was echoed: {}",
        out.stderr
    );
    // --help never shows the value.
    let mut cmd = tugboat();
    cmd.args(["pull", "--help"])
        .env("TUGBOAT_DOCKER_CONFIG_JSON", &secret);
    let out = run(&mut cmd, TIMEOUT);
    assert!(out.stdout.contains("TUGBOAT_DOCKER_CONFIG_JSON"));
    assert!(!out.stdout.contains("s3cret") && !out.stdout.contains("cm9ib3"));
}

#[test]
fn kitops_init_variables_unpack_what_kit_unpack_would() {
    let reg = Registry::start();
    push_modelkit(&reg, "kit/tiny");
    let reference = reg.reference("kit/tiny:v1");
    let work = tempfile::tempdir().unwrap();
    let unpack = |name: &str, env: &[(&str, &str)]| -> (Run, Vec<String>) {
        let dest = work.path().join(name);
        let dest_str = dest.display().to_string();
        let mut all = vec![
            ("MODELKIT_REF", reference.as_str()),
            ("UNPACK_PATH", dest_str.as_str()),
        ];
        all.extend_from_slice(env);
        let out = kitops_init(&all);
        out.assert_ok(name);
        (out, files(&dest))
    };

    // The defaults: UNPACK_FILTER=model (the model and its parts, no Kitfile).
    let (first, got) = unpack("default", &[]);
    assert_eq!(got, ["adapters/lora.bin", "tiny.gguf"]);
    assert_eq!(first.json()["format"], "kitops");
    assert_eq!(
        unpack("kitfile", &[("UNPACK_FILTER", "model,kitfile")]).1,
        ["Kitfile", "adapters/lora.bin", "tiny.gguf"]
    );
    // Names and paths pick Kitfile entries; EXTRA_FLAGS adds filters and may move the target.
    assert_eq!(
        unpack("validation", &[("UNPACK_FILTER", "datasets:validation")]).1,
        ["data/val.csv"]
    );
    assert_eq!(
        unpack(
            "union",
            &[
                ("UNPACK_FILTER", "model:lora"),
                (
                    "EXTRA_FLAGS",
                    "--ignore-existing -f docs:README.md -f datasets:data/train.csv"
                ),
            ]
        )
        .1,
        ["README.md", "adapters/lora.bin", "data/train.csv"]
    );
    let moved = work.path().join("moved");
    let flags = format!("-o --dir {}", moved.display());
    unpack(
        "ignored",
        &[("UNPACK_FILTER", "code"), ("EXTRA_FLAGS", &flags)],
    );
    assert_eq!(files(&moved), ["src/run.py"]);
    assert!(
        !work.path().join("ignored").exists(),
        "--dir replaces UNPACK_PATH"
    );

    // A restarted init container (the same emptyDir): a hit, no registry request at all.
    let mark = reg.mark();
    let (again, got) = unpack("default", &[]);
    assert_eq!(got, ["adapters/lora.bin", "tiny.gguf"]);
    assert_eq!(again.json()["cache_hit"], true);
    assert!(
        reg.requests_since(mark).is_empty(),
        "the re-run asked the registry: {:?}",
        reg.requests_since(mark)
    );

    // What kit itself would refuse, or tugboat cannot honour, stops before any download.
    for (env, says) in [
        (vec![("UNPACK_FILTER", "weights")], "invalid filter type"),
        (
            vec![("EXTRA_FLAGS", "--proxy http://p:3128")],
            "\"--proxy\"",
        ),
        (vec![("MODELKIT_REF", "")], "MODELKIT_REF is empty"),
        (vec![("TUGBOAT_ONLY", "weights")], "cannot be combined"),
    ] {
        let dest = work.path().join("refused");
        let dest_str = dest.display().to_string();
        let mut all = vec![
            ("MODELKIT_REF", reference.as_str()),
            ("UNPACK_PATH", dest_str.as_str()),
        ];
        all.extend(env.iter().copied());
        let out = kitops_init(&all);
        out.assert_code(2, says);
        assert!(out.stderr.contains(says), "{says}: {}", out.stderr);
        assert!(!dest.exists(), "{says}: something was unpacked");
    }
}

#[test]
fn kitops_cosign_variables_map_onto_the_signature_policy() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let (private, public) = cosign::key_pair(work.path(), "cosign");
    let signed = push_modelkit(&reg, "kit/signed");
    cosign::cosign_attach(
        &reg.host(),
        "kit/signed",
        &cosign::sig_tag(&signed),
        &signed,
        &private,
        false,
    );
    push_modelkit(&reg, "kit/unsigned");
    let public = public.display().to_string();
    let unpack = |repo: &str, name: &str, env: &[(&str, &str)]| -> (Run, std::path::PathBuf) {
        let dest = work.path().join(name);
        let reference = reg.reference(repo);
        let dest_str = dest.display().to_string();
        let mut all = vec![
            ("MODELKIT_REF", reference.as_str()),
            ("UNPACK_PATH", dest_str.as_str()),
        ];
        all.extend_from_slice(env);
        (kitops_init(&all), dest)
    };

    let (out, dest) = unpack("kit/signed:v1", "signed", &[("COSIGN_KEY", &public)]);
    out.assert_ok("signed by COSIGN_KEY");
    assert_eq!(files(&dest), ["adapters/lora.bin", "tiny.gguf"]);

    let (out, dest) = unpack("kit/unsigned:v1", "unsigned", &[("COSIGN_KEY", &public)]);
    out.assert_code(7, "unsigned with COSIGN_KEY");
    assert!(out.stderr.contains("COSIGN_KEY"), "{}", out.stderr);
    assert!(files(&dest).is_empty(), "an unsigned ModelKit was unpacked");

    // Another key than the signer's.
    let (_, other) = cosign::key_pair(work.path(), "other");
    let other = other.display().to_string();
    let (out, _) = unpack("kit/signed:v1", "other", &[("COSIGN_KEY", &other)]);
    out.assert_code(7, "signed by another key");

    // Keyless: refused with what to use instead, never skipped; a key wins over it (as kit).
    let keyless = [
        ("COSIGN_CERT_IDENTITY", "kitops@jozu.com"),
        ("COSIGN_CERT_OIDC_ISSUER", "https://github.com/login/oauth"),
    ];
    let (out, dest) = unpack("kit/signed:v1", "keyless", &keyless);
    out.assert_code(2, "keyless");
    assert!(
        out.stderr.contains("keyless") && out.stderr.contains("COSIGN_KEY"),
        "{}",
        out.stderr
    );
    assert!(!dest.exists());
    let (out, _) = unpack("kit/unsigned:v1", "half", &keyless[..1]);
    out.assert_code(2, "half a keyless configuration");
    let mut with_key = keyless.to_vec();
    with_key.push(("COSIGN_KEY", &public));
    let (out, _) = unpack("kit/signed:v1", "key-wins", &with_key);
    out.assert_ok("COSIGN_KEY with keyless variables");

    // A key that is not a file.
    let (out, _) = unpack(
        "kit/signed:v1",
        "kms",
        &[("COSIGN_KEY", "awskms:///arn:aws:kms:eu-west-1:1:key/k")],
    );
    out.assert_code(2, "KMS key");
    assert!(out.stderr.contains("files only"), "{}", out.stderr);
    // Added to a node policy given with it, never replacing its rules.
    let policy = work.path().join("policy.yaml");
    fs::write(
        &policy,
        format!(
            "access:\n  default: deny\n  rules:\n    - name: kits\n      references: ['{}/kit/**']\n      modes: [pull]\n",
            reg.host()
        ),
    )
    .unwrap();
    let policy = policy.display().to_string();
    let (out, _) = unpack(
        "kit/signed:v1",
        "with-policy",
        &[("COSIGN_KEY", &public), ("TUGBOAT_POLICY", &policy)],
    );
    out.assert_ok("COSIGN_KEY beside a node policy");
    let (out, _) = unpack(
        "kit/unsigned:v1",
        "with-policy-unsigned",
        &[("COSIGN_KEY", &public), ("TUGBOAT_POLICY", &policy)],
    );
    out.assert_code(7, "unsigned beside a node policy");
}

#[test]
fn the_image_entrypoint_without_arguments_is_kitops_init_only_with_modelkit_ref() {
    let out = run(&mut tugboat(), TIMEOUT);
    out.assert_code(2, "no arguments, no MODELKIT_REF");
    assert!(out.stderr.contains("Usage"), "{}", out.stderr);
    // The KitOps variables are not read by `pull`: an explicit command wins.
    let mut cmd: Command = tugboat();
    cmd.args(["pull", "--check-args", "h.example/m:v1", "/d"])
        .env("MODELKIT_REF", "h.example/other:v1");
    run(&mut cmd, TIMEOUT).assert_ok("pull with MODELKIT_REF set");
}
