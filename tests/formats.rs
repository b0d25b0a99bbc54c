//! Every packaging format users push, pulled file-for-file against a real registry on
//! loopback: ORAS files and directories (pushed with oras-py), CNCF ModelPack and KitOps
//! ModelKits (built to their specs here), OCI images (an OCI layout copied by skopeo), plus
//! `--only`, `--include`, `--subpath`, whiteouts and `tugboat inspect`.

#[path = "common/artifacts.rs"]
mod artifacts;
mod common;

use artifacts::{gzip, push_artifact, push_index, read, tar, zstd, Entry, Layer};
use common::*;
use std::fs;
use std::path::Path;
use std::process::Command;

const MP_WEIGHT_RAW: &str = "application/vnd.cncf.model.weight.v1.raw";
const MP_WEIGHT_TAR: &str = "application/vnd.cncf.model.weight.v1.tar";
const MP_CONFIG_TGZ: &str = "application/vnd.cncf.model.weight.config.v1.tar+gzip";
const MP_DOC_TZST: &str = "application/vnd.cncf.model.doc.v1.tar+zstd";
const MP_CODE_RAW: &str = "application/vnd.cncf.model.code.v1.raw";
const MP_ARTIFACT: &str = "application/vnd.cncf.model.manifest.v1+json";
const MP_CONFIG: &str = "application/vnd.cncf.model.config.v1+json";
const FILEPATH: &str = "org.cncf.model.filepath";

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tugboat-fmt-")
        .tempdir()
        .unwrap()
}

/// The ModelPack artifact used by several tests: returns (files by path, weight digests).
fn push_modelpack(reg: &Registry, repo: &str) -> (Vec<(String, Vec<u8>)>, Vec<String>) {
    let weights_a = random_bytes(600_000, 7);
    let weights_b = random_bytes(300_000, 8);
    let config_json = br#"{"architectures":["LlamaForCausalLM"]}"#.to_vec();
    let tokenizer = br#"{"model":{"type":"BPE"}}"#.to_vec();
    let readme = b"# tiny\n".to_vec();
    let script = b"print('serve')\n".to_vec();
    let layers = vec![
        Layer::new(
            MP_WEIGHT_RAW,
            weights_a.clone(),
            &[(FILEPATH, "model-00001.safetensors")],
        ),
        Layer::new(
            MP_WEIGHT_TAR,
            tar(&[Entry::File("shards/model-00002.safetensors", &weights_b)]),
            &[(FILEPATH, "shards/model-00002.safetensors")],
        ),
        Layer::new(
            MP_CONFIG_TGZ,
            gzip(&tar(&[Entry::File("config.json", &config_json)])),
            &[(FILEPATH, "config.json")],
        ),
        Layer::new(
            MP_CONFIG_TGZ,
            gzip(&tar(&[
                Entry::Dir("tok/"),
                Entry::File("tok/tokenizer.json", &tokenizer),
            ])),
            &[(FILEPATH, "tok")],
        ),
        Layer::new(
            MP_DOC_TZST,
            zstd(&tar(&[Entry::File("README.md", &readme)])),
            &[(FILEPATH, "README.md")],
        ),
        Layer::new(MP_CODE_RAW, script.clone(), &[(FILEPATH, "code/serve.py")]),
    ];
    let config = serde_json::json!({
        "descriptor": {"name": "tiny-llama", "family": "llama", "version": "1.0"},
        "config": {"architecture": "transformer", "format": "safetensors", "paramSize": "1.1B",
                   "precision": "bf16", "quantization": "none"},
        "modelfs": {"type": "layers", "diffIds": []}
    });
    let config = serde_json::to_vec(&config).unwrap();
    push_artifact(
        &reg.host(),
        repo,
        "v1",
        Some(MP_ARTIFACT),
        (MP_CONFIG, &config),
        &layers,
        &[("org.cnai.model.name", "tiny-llama")],
    );
    let weight_digests = vec![
        artifacts::sha256(&layers[0].bytes),
        artifacts::sha256(&layers[1].bytes),
    ];
    let files = vec![
        ("model-00001.safetensors".to_string(), weights_a),
        ("shards/model-00002.safetensors".to_string(), weights_b),
        ("config.json".to_string(), config_json),
        ("tok/tokenizer.json".to_string(), tokenizer),
        ("README.md".to_string(), readme),
        ("code/serve.py".to_string(), script),
    ];
    (files, weight_digests)
}

fn assert_tree(dest: &Path, files: &[(String, Vec<u8>)]) {
    for (path, bytes) in files {
        let got = read(&dest.join(path));
        assert!(
            got == *bytes,
            "{path}: pulled bytes differ; dest has {:?}",
            walk(dest)
        );
    }
    let regular: Vec<_> = walk(dest)
        .into_iter()
        .filter(|p| {
            !p.starts_with(".tugboat")
                && fs::symlink_metadata(dest.join(p)).is_ok_and(|m| m.is_file())
        })
        .collect();
    assert_eq!(
        regular.len(),
        files.len(),
        "unexpected extra files: {regular:?}"
    );
}

#[test]
fn modelpack_round_trip_raw_tar_gzip_zstd() {
    let reg = Registry::start();
    let (files, _) = push_modelpack(&reg, "mp/tiny");
    let dir = tmp();
    let dest = dir.path().join("dest");
    let run = pull(
        &reg.reference("mp/tiny:v1"),
        &dest,
        Some(&dir.path().join("cache")),
        &["--json"],
    );
    run.assert_ok("modelpack pull");
    assert_eq!(run.json()["format"], "modelpack");
    assert_tree(&dest, &files);
    // --verify re-hashes the stamped files, unpacked ones included.
    pull(
        &reg.reference("mp/tiny:v1"),
        &dest,
        Some(&dir.path().join("cache")),
        &["--verify"],
    )
    .assert_ok("verify re-pull");
}

#[test]
fn only_weights_fetches_only_weight_layers() {
    let reg = Registry::start();
    let (files, weight_digests) = push_modelpack(&reg, "mp/only");
    let dir = tmp();
    let dest = dir.path().join("dest");
    let mark = reg.mark();
    pull(
        &reg.reference("mp/only:v1"),
        &dest,
        None,
        &["--only", "weights"],
    )
    .assert_ok("--only weights");
    let mut fetched: Vec<String> = reg
        .blob_gets_since(mark)
        .into_iter()
        .filter(|g| g.status == 200 || g.status == 206)
        .map(|g| g.digest)
        .collect();
    fetched.sort();
    let mut expected = weight_digests.clone();
    expected.sort();
    assert_eq!(
        fetched, expected,
        "only the two weight layers may be downloaded"
    );
    assert_tree(&dest, &files[..2]);
}

#[test]
fn inspect_reads_only_manifest_and_config() {
    let reg = Registry::start();
    let (_, weight_digests) = push_modelpack(&reg, "mp/inspect");
    let mark = reg.mark();
    let mut cmd = tugboat();
    cmd.args([
        "inspect",
        &reg.reference("mp/inspect:v1"),
        "--plain-http",
        "--json",
        "--only",
        "weights",
    ]);
    let run = run(&mut cmd, TIMEOUT);
    run.assert_ok("inspect");
    let report = run.json();
    assert_eq!(report["format"], "modelpack");
    assert_eq!(report["metadata"]["name"], "tiny-llama");
    assert_eq!(report["metadata"]["family"], "llama");
    assert_eq!(report["metadata"]["param_size"], "1.1B");
    assert_eq!(report["metadata"]["format"], "safetensors");
    assert_eq!(report["layers"].as_array().unwrap().len(), 6);
    assert_eq!(report["fetch_layers"], 2);
    assert_eq!(report["skip_layers"], 4);
    let gets = reg.blob_gets_since(mark);
    assert_eq!(
        gets.len(),
        1,
        "inspect reads the config blob only: {gets:?}"
    );
    assert!(!weight_digests.contains(&gets[0].digest));
    // Human output names the format and the files.
    let mut cmd = tugboat();
    cmd.args(["inspect", &reg.reference("mp/inspect:v1"), "--plain-http"]);
    let text = common::run(&mut cmd, TIMEOUT);
    text.assert_ok("inspect text");
    assert!(
        text.stdout.contains("modelpack") && text.stdout.contains("model-00001.safetensors"),
        "{}",
        text.stdout
    );
}

/// `kit pack` in ModelPack format keeps the Kitfile (JSON) in the manifest annotation
/// `ml.kitops.modelkit.kitfile`; `kit unpack` writes it as YAML beside the model, and so does a
/// pull, unless the selection leaves the config out.
#[test]
fn a_modelpack_from_kit_pack_gets_its_kitfile() {
    let reg = Registry::start();
    let gguf = random_bytes(300_000, 5);
    let kitfile = serde_json::json!({
        "manifestVersion": "1.0.0",
        "package": {"name": "tinyllama", "version": "1.0.0"},
        "model": {"name": "tinyllama", "path": "models/tiny.gguf", "framework": "gguf"}
    })
    .to_string();
    let config = br#"{"descriptor":{"name":"tinyllama"},"config":{},"modelfs":{"type":"layers","diffIds":[]}}"#;
    push_artifact(
        &reg.host(),
        "kit/modelpack",
        "v1",
        Some("application/vnd.cncf.model.manifest.v1+json"),
        ("application/vnd.cncf.model.config.v1+json", config),
        &[Layer::new(
            "application/vnd.cncf.model.weight.v1.raw",
            gguf.clone(),
            &[("org.cncf.model.filepath", "models/tiny.gguf")],
        )],
        &[("ml.kitops.modelkit.kitfile", &kitfile)],
    );
    let dir = tmp();
    let dest = dir.path().join("dest");
    let run = pull(&reg.reference("kit/modelpack:v1"), &dest, None, &["--json"]);
    run.assert_ok("a ModelPack kit pushed");
    assert_eq!(run.json()["format"], "modelpack");
    let yaml = "\
manifestVersion: 1.0.0
package:
  name: tinyllama
  version: 1.0.0
model:
  name: tinyllama
  path: models/tiny.gguf
  framework: gguf
";
    assert_tree(
        &dest,
        &[
            ("models/tiny.gguf".into(), gguf.clone()),
            ("Kitfile".into(), yaml.as_bytes().to_vec()),
        ],
    );
    let only = dir.path().join("only");
    pull(
        &reg.reference("kit/modelpack:v1"),
        &only,
        None,
        &["--only", "weights"],
    )
    .assert_ok("--only weights");
    assert_tree(&only, &[("models/tiny.gguf".into(), gguf)]);
}

/// What `kit unpack` writes for the config `kitops_modelkit_round_trip` pushes.
const KIT_UNPACK_KITFILE: &str = "\
manifestVersion: 1.0.0
package:
  name: tinyllama
  version: 1.0.0
  description: test kit
model:
  name: tinyllama
  path: models/tiny.gguf
  framework: gguf
code:
  - path: src
datasets:
  - name: train
    path: data/train.csv
docs:
  - path: README.md
";

#[test]
fn kitops_modelkit_round_trip() {
    let reg = Registry::start();
    let gguf = random_bytes(500_000, 3);
    let csv = b"a,b\n1,2\n".to_vec();
    let code = b"import torch\n".to_vec();
    let readme = b"docs\n".to_vec();
    let kitfile = serde_json::json!({
        "manifestVersion": "1.0.0",
        "package": {"name": "tinyllama", "version": "1.0.0", "description": "test kit"},
        "model": {"name": "tinyllama", "path": "models/tiny.gguf", "framework": "gguf"},
        "datasets": [{"name": "train", "path": "data/train.csv"}],
        "code": [{"path": "src"}],
        "docs": [{"path": "README.md"}]
    });
    let kitfile = serde_json::to_vec(&kitfile).unwrap();
    let layers = vec![
        Layer::new(
            "application/vnd.kitops.modelkit.model.v1.tar+gzip",
            gzip(&tar(&[
                Entry::Dir("models/"),
                Entry::File("models/tiny.gguf", &gguf),
            ])),
            &[],
        ),
        Layer::new(
            "application/vnd.kitops.modelkit.dataset.v1.tar",
            tar(&[Entry::File("data/train.csv", &csv)]),
            &[],
        ),
        Layer::new(
            "application/vnd.kitops.modelkit.code.v1.tar+gzip",
            gzip(&tar(&[
                Entry::Dir("src"),
                Entry::FileMode("src/train.py", &code, 0o755),
            ])),
            &[],
        ),
        Layer::new(
            "application/vnd.kitops.modelkit.docs.v1.tar+gzip",
            gzip(&tar(&[Entry::File("README.md", &readme)])),
            &[],
        ),
    ];
    push_artifact(
        &reg.host(),
        "kit/tiny",
        "v1",
        None,
        ("application/vnd.kitops.modelkit.config.v1+json", &kitfile),
        &layers,
        &[],
    );
    let dir = tmp();
    let dest = dir.path().join("dest");
    let run = pull(&reg.reference("kit/tiny:v1"), &dest, None, &["--json"]);
    run.assert_ok("kitops pull");
    assert_eq!(run.json()["format"], "kitops");
    assert_tree(
        &dest,
        &[
            ("models/tiny.gguf".into(), gguf.clone()),
            ("data/train.csv".into(), csv),
            ("src/train.py".into(), code),
            ("README.md".into(), readme),
            // As `kit unpack` writes it: kit's struct order, yaml.v3 with two-space indent.
            ("Kitfile".into(), KIT_UNPACK_KITFILE.as_bytes().to_vec()),
        ],
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dest.join("src/train.py"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "the executable bit survives");
    // --only weights: the model layer alone.
    let only = dir.path().join("only");
    pull(
        &reg.reference("kit/tiny:v1"),
        &only,
        None,
        &["--only", "weights"],
    )
    .assert_ok("kit --only");
    assert_tree(&only, &[("models/tiny.gguf".into(), gguf)]);
}

#[test]
fn oras_files_and_directories_pushed_by_oras_py() {
    let reg = Registry::start();
    let src = tmp();
    let model = src.path().join("model.gguf");
    write_random_file(&model, 2 << 20, 11);
    let tokenizer = src.path().join("tokenizer");
    fs::create_dir_all(tokenizer.join("nested")).unwrap();
    fs::write(tokenizer.join("vocab.json"), b"{\"a\":1}").unwrap();
    fs::write(tokenizer.join("nested/merges.txt"), b"a b\n").unwrap();
    oras_push(
        &reg.host(),
        "oras/tiny:v1",
        &[model.clone(), tokenizer.clone()],
    );

    let dir = tmp();
    let dest = dir.path().join("dest");
    pull(&reg.reference("oras/tiny:v1"), &dest, None, &[]).assert_ok("oras pull");
    assert_same_files(
        &dest,
        &[
            ("model.gguf", model.as_path()),
            (
                "tokenizer/vocab.json",
                tokenizer.join("vocab.json").as_path(),
            ),
            (
                "tokenizer/nested/merges.txt",
                tokenizer.join("nested/merges.txt").as_path(),
            ),
        ],
    );

    // --include names the gguf; the directory layer cannot hold it and is never downloaded.
    let mark = reg.mark();
    let only = dir.path().join("only");
    pull(
        &reg.reference("oras/tiny:v1"),
        &only,
        None,
        &["--include", "model.gguf"],
    )
    .assert_ok("include");
    assert_eq!(list_dir(&only), vec!["model.gguf"]);
    let gets: Vec<_> = reg
        .blob_gets_since(mark)
        .into_iter()
        .filter(|g| g.status == 200)
        .collect();
    assert_eq!(gets.len(), 1, "only the gguf blob is fetched: {gets:?}");
    assert_eq!(gets[0].digest, sha256_file(&model));

    // A glob that could match inside the directory fetches it and filters its entries.
    let globbed = dir.path().join("globbed");
    pull(
        &reg.reference("oras/tiny:v1"),
        &globbed,
        None,
        &["--include", "*.gguf,*.txt"],
    )
    .assert_ok("globs");
    assert!(globbed.join("model.gguf").is_file());
    assert!(globbed.join("tokenizer/nested/merges.txt").is_file());
    assert!(!globbed.join("tokenizer/vocab.json").exists());

    // --exclude drops a folder of the directory layer.
    let ex = dir.path().join("ex");
    pull(
        &reg.reference("oras/tiny:v1"),
        &ex,
        None,
        &["--exclude", "tokenizer/nested"],
    )
    .assert_ok("exclude");
    assert!(ex.join("tokenizer/vocab.json").is_file());
    assert!(!ex.join("tokenizer/nested").exists());
}

/// Writes an OCI image layout with the given layers (already compressed as named).
fn oci_layout(dir: &Path, layers: &[(&str, Vec<u8>, Vec<u8>)]) {
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let put = |bytes: &[u8]| {
        let digest = artifacts::sha256(bytes);
        fs::write(dir.join("blobs/sha256").join(&digest[7..]), bytes).unwrap();
        digest
    };
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|(_, _, tar)| artifacts::sha256(tar))
        .collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = put(&config);
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|(mt, bytes, _)| {
            serde_json::json!({
                "mediaType": mt, "digest": put(bytes), "size": bytes.len()
            })
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layer_descs
    })).unwrap();
    let manifest_digest = put(&manifest);
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": "v1"}}]
        }))
        .unwrap(),
    )
    .unwrap();
}

#[test]
fn oci_image_copied_by_skopeo_with_subpath_and_whiteouts() {
    let reg = Registry::start();
    let a = random_bytes(400_000, 21);
    let b = random_bytes(200_000, 22);
    let base = tar(&[
        Entry::Dir("etc/"),
        Entry::File("etc/os-release", b"ID=test\n"),
        Entry::Dir("models/"),
        Entry::File("models/a.bin", &a),
        Entry::File("models/old.bin", b"stale"),
        Entry::Dir("models/cache/"),
        Entry::File("models/cache/x", b"x"),
        Entry::Symlink("models/latest", "/models/a.bin"),
    ]);
    let top = tar(&[
        Entry::Dir("models/"),
        Entry::File("models/.wh.old.bin", b""),
        Entry::Dir("models/cache/"),
        Entry::File("models/cache/.wh..wh..opq", b""),
        Entry::File("models/cache/y", b"y"),
        Entry::File("models/b.bin", &b),
    ]);
    let layout = tmp();
    oci_layout(
        layout.path(),
        &[
            ("application/vnd.oci.image.layer.v1.tar", base.clone(), base),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                zstd(&top),
                top.clone(),
            ),
        ],
    );
    let out = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false", "--preserve-digests"])
        .arg(format!("oci:{}:v1", layout.path().display()))
        .arg(format!("docker://{}", reg.reference("img/modelcar:v1")))
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tmp();
    let dest = dir.path().join("models");
    let run = pull(
        &reg.reference("img/modelcar:v1"),
        &dest,
        None,
        &["--subpath", "/models", "--json"],
    );
    run.assert_ok("image pull --subpath");
    assert_eq!(run.json()["format"], "image");
    assert_tree(
        &dest,
        &[
            ("a.bin".into(), a.clone()),
            ("b.bin".into(), b.clone()),
            ("cache/y".into(), b"y".to_vec()),
        ],
    );
    assert!(
        !dest.join("old.bin").exists(),
        "the whiteout removed old.bin"
    );
    assert!(
        !dest.join("cache/x").exists(),
        "the opaque whiteout hid cache/x"
    );
    assert_eq!(
        fs::read_link(dest.join("latest")).unwrap(),
        Path::new("a.bin")
    );
    assert_eq!(
        read(&dest.join("latest")),
        a,
        "the symlink resolves inside the model"
    );

    // The whole filesystem without --subpath.
    let whole = dir.path().join("whole");
    pull(&reg.reference("img/modelcar:v1"), &whole, None, &[]).assert_ok("image pull");
    assert_eq!(read(&whole.join("etc/os-release")), b"ID=test\n");
    assert_eq!(read(&whole.join("models/b.bin")), b);
    assert!(!whole.join("models/old.bin").exists());
}

#[test]
fn format_override_unpacks_an_oras_tarball_as_an_image() {
    let reg = Registry::start();
    let data = b"inside".to_vec();
    let layers = vec![Layer::new(
        "application/vnd.oci.image.layer.v1.tar",
        tar(&[Entry::File("inner/file.txt", &data)]),
        &[("org.opencontainers.image.title", "bundle.tar")],
    )];
    push_artifact(
        &reg.host(),
        "fmt/over",
        "v1",
        Some("application/vnd.example"),
        ("application/vnd.oci.empty.v1+json", b"{}"),
        &layers,
        &[],
    );
    let dir = tmp();
    let as_oras = dir.path().join("oras");
    pull(&reg.reference("fmt/over:v1"), &as_oras, None, &[]).assert_ok("auto");
    assert!(as_oras.join("bundle.tar").is_file());
    let as_image = dir.path().join("image");
    pull(
        &reg.reference("fmt/over:v1"),
        &as_image,
        None,
        &["--format", "image"],
    )
    .assert_ok("--format image");
    assert_eq!(read(&as_image.join("inner/file.txt")), data);
}

/// Files in the cache outside snapshots: blobs kept and partial downloads left.
fn cache_leftovers(cache: &Path) -> (Vec<String>, Vec<String>) {
    let blobs = list_dir(&cache.join("blobs/sha256"));
    let partials = list_dir(&cache.join("ingest"))
        .into_iter()
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    (blobs, partials)
}

#[test]
fn modelpack_client_round_trip_every_packing() {
    let reg = Registry::start();
    let src = tmp();
    let root = src.path();
    let weights = random_bytes(700_000, 21);
    let shard = random_bytes(400_000, 22);
    let zshard = random_bytes(300_000, 23);
    fs::write(root.join("model.safetensors"), &weights).unwrap();
    for (dir, name, bytes) in [
        ("shard2", "model-00002.safetensors", &shard),
        ("shard3", "model-00003.safetensors", &zshard),
    ] {
        fs::create_dir_all(root.join(dir)).unwrap();
        fs::write(root.join(dir).join(name), bytes).unwrap();
    }
    fs::create_dir_all(root.join("tokenizer/nested")).unwrap();
    fs::write(root.join("tokenizer/tokenizer.json"), b"{\"v\":1}").unwrap();
    fs::write(root.join("tokenizer/nested/merges.txt"), b"a b\n").unwrap();
    fs::create_dir_all(root.join("docs")).unwrap();
    fs::write(root.join("docs/README.md"), b"# model\n").unwrap();
    let config = root.join("config.json");
    fs::write(
        &config,
        br#"{"descriptor":{"name":"rt"},"config":{"format":"safetensors"}}"#,
    )
    .unwrap();
    modelpack_push(
        &reg.host(),
        "mpc/rt:v1",
        &config,
        &[
            (&root.join("model.safetensors"), MP_WEIGHT_RAW),
            (&root.join("shard2"), MP_WEIGHT_TAR),
            (
                &root.join("shard3"),
                "application/vnd.cncf.model.weight.v1.tar+zstd",
            ),
            (&root.join("tokenizer"), MP_CONFIG_TGZ),
            // A folder given a raw media type: modelpack-client packs it as a tar.
            (&root.join("docs"), "application/vnd.cncf.model.doc.v1.raw"),
        ],
    );
    let work = tmp();
    let (dest, cache) = (work.path().join("dest"), work.path().join("cache"));
    let run = pull(
        &reg.reference("mpc/rt:v1"),
        &dest,
        Some(&cache),
        &["--json"],
    );
    run.assert_ok("modelpack-client pull");
    assert_eq!(run.json()["format"], "modelpack");
    let files = vec![
        ("model.safetensors".to_string(), weights.clone()),
        ("shard2/model-00002.safetensors".to_string(), shard),
        ("shard3/model-00003.safetensors".to_string(), zshard),
        (
            "tokenizer/tokenizer.json".to_string(),
            b"{\"v\":1}".to_vec(),
        ),
        ("tokenizer/nested/merges.txt".to_string(), b"a b\n".to_vec()),
        ("docs/README.md".to_string(), b"# model\n".to_vec()),
    ];
    assert_tree(&dest, &files);
    // One copy: the raw layer's blob stays (the snapshot links it); no archive blob and no
    // partial download remain beside the unpacked files.
    let (blobs, partials) = cache_leftovers(&cache);
    assert_eq!(
        blobs,
        vec![artifacts::sha256(&weights)[7..].to_string()],
        "only the raw layer's blob is kept"
    );
    assert!(partials.is_empty(), "partials left: {partials:?}");
    // The snapshot's recorded digests stand in for the archive blobs: verify, --verify and a
    // warm re-pull all work without them.
    let verify = run_cmd(&["cache", "verify", "--json", "--cache"], &cache);
    verify.assert_ok("cache verify");
    assert_eq!(verify.json()["snapshots_dropped"], serde_json::json!([]));
    let again = work.path().join("again");
    let mark = reg.mark();
    pull(
        &reg.reference("mpc/rt:v1"),
        &again,
        Some(&cache),
        &["--verify", "--pull-policy", "Never"],
    )
    .assert_ok("verified re-pull from the cache");
    assert_tree(&again, &files);
    assert!(
        reg.blob_gets_since(mark).is_empty(),
        "no blob fetched again"
    );
    // The same artifact fetched in 64 KiB ranged chunks, as large layers are: the one-file
    // tar written as its file, the other archives unpacked from their partials.
    let (chunked, chunked_cache) = (work.path().join("chunked"), work.path().join("c2"));
    pull(
        &reg.reference("mpc/rt:v1"),
        &chunked,
        Some(&chunked_cache),
        &["--chunk-size", "64KiB", "--streams-per-blob", "4"],
    )
    .assert_ok("modelpack-client pull in chunks");
    assert_tree(&chunked, &files);
    assert!(cache_leftovers(&chunked_cache).1.is_empty());
}

fn run_cmd(args: &[&str], cache: &Path) -> Run {
    run(
        tugboat().args(args).arg(cache),
        std::time::Duration::from_secs(120),
    )
}

#[test]
fn modelpack_pre_2025_namespace_as_modctl_0_1_pushed_it() {
    let reg = Registry::start();
    let weights = random_bytes(500_000, 31);
    let config_json = br#"{"architectures":["Qwen2"]}"#.to_vec();
    let readme = b"cnai\n".to_vec();
    // modctl 0.1.x: one uncompressed tar per file, the entry at its path relative to the
    // workspace, the path in org.cnai.model.filepath; raw weight.config files.
    let layers = vec![
        Layer::new(
            "application/vnd.cnai.model.weight.v1.tar",
            tar(&[Entry::File("weights/model.safetensors", &weights)]),
            &[("org.cnai.model.filepath", "weights/model.safetensors")],
        ),
        Layer::new(
            "application/vnd.cnai.model.weight.config.v1.raw",
            config_json.clone(),
            &[("org.cnai.model.filepath", "config.json")],
        ),
        Layer::new(
            "application/vnd.cnai.model.doc.v1.tar",
            tar(&[Entry::File("README.md", &readme)]),
            &[("org.cnai.model.filepath", "README.md")],
        ),
    ];
    let config = br#"{"descriptor":{"name":"qwen"},"config":{"format":"safetensors"},"modelfs":{"type":"layers","diffIds":[]}}"#;
    push_artifact(
        &reg.host(),
        "cnai/qwen",
        "v1",
        Some("application/vnd.cnai.model.manifest.v1+json"),
        ("application/vnd.cnai.model.config.v1+json", config),
        &layers,
        &[],
    );
    let dir = tmp();
    let dest = dir.path().join("dest");
    let run = pull(&reg.reference("cnai/qwen:v1"), &dest, None, &["--json"]);
    run.assert_ok("vnd.cnai ModelPack pull");
    assert_eq!(run.json()["format"], "modelpack");
    assert_tree(
        &dest,
        &[
            ("weights/model.safetensors".into(), weights),
            ("config.json".into(), config_json),
            ("README.md".into(), readme),
        ],
    );

    // RamaLama: vnd.cnai.model.layer.v1.tar layers under the same artifactType.
    let gguf = random_bytes(200_000, 32);
    push_artifact(
        &reg.host(),
        "cnai/ramalama",
        "v1",
        Some("application/vnd.cnai.model.manifest.v1+json"),
        ("application/vnd.oci.image.config.v1+json", b"{}"),
        &[Layer::new(
            "application/vnd.cnai.model.layer.v1.tar",
            tar(&[
                Entry::Dir("models/"),
                Entry::File("models/tiny.gguf", &gguf),
            ]),
            &[],
        )],
        &[],
    );
    let dest = dir.path().join("ramalama");
    pull(&reg.reference("cnai/ramalama:v1"), &dest, None, &[]).assert_ok("RamaLama pull");
    assert_tree(&dest, &[("models/tiny.gguf".into(), gguf)]);
}

const KIT_CONFIG: &str = "application/vnd.kitops.modelkit.config.v1+json";

/// A ModelKit whose model is one raw layer and whose docs are a tar; returns the manifest
/// digest and the weights' layer digest.
fn push_kit_variant(reg: &Registry, tag: &str, weights: &[u8]) -> (String, String) {
    let kitfile = serde_json::to_vec(&serde_json::json!({
        "manifestVersion": "1.0.0",
        "package": {"name": "llama"},
        "model": {"name": "llama", "path": format!("llama-{tag}.gguf")},
    }))
    .unwrap();
    let layers = vec![
        Layer::new(
            "application/vnd.kitops.modelkit.model.v1.raw",
            weights.to_vec(),
            &[(FILEPATH, &format!("llama-{tag}.gguf"))],
        ),
        Layer::new(
            "application/vnd.kitops.modelkit.docs.v1.tar+gzip",
            gzip(&tar(&[Entry::File("README.md", tag.as_bytes())])),
            &[],
        ),
    ];
    let digest = push_artifact(
        &reg.host(),
        "kit/llama",
        tag,
        Some("application/vnd.kitops.modelkit.manifest.v1+json"),
        (KIT_CONFIG, &kitfile),
        &layers,
        &[],
    );
    (digest, artifacts::sha256(&layers[0].bytes))
}

#[test]
fn kitops_raw_layers_and_an_index_of_variants() {
    let reg = Registry::start();
    let q4 = random_bytes(300_000, 41);
    let q8 = random_bytes(600_000, 42);
    let (q4_manifest, q4_blob) = push_kit_variant(&reg, "q4_0", &q4);
    let (q8_manifest, q8_blob) = push_kit_variant(&reg, "q8_0", &q8);
    // As `kit index add repo:all repo:q4_0 -l quantization=q4_0` writes it.
    push_index(
        &reg.host(),
        "kit/llama",
        "all",
        Some("application/vnd.kitops.modelkit.index.v1+json"),
        &[
            (
                q4_manifest,
                serde_json::json!({"ml.kitops.modelkit.original-tag": "q4_0"}),
                serde_json::json!({"modelMetadata": {"quantization": "q4_0", "vram": "4GB"}}),
            ),
            (
                q8_manifest,
                serde_json::json!({"ml.kitops.modelkit.original-tag": "q8_0"}),
                serde_json::json!({"modelMetadata": {"quantization": "q8_0", "vram": "8GB"}}),
            ),
        ],
    );
    let dir = tmp();
    let cache = dir.path().join("cache");
    let reference = reg.reference("kit/llama:all");

    // No variant named: refused, listing them.
    let none = pull(&reference, &dir.path().join("none"), Some(&cache), &[]);
    none.assert_code(2, "an index of two variants without --variant");
    for needle in [
        "--variant",
        "q4_0 (quantization=q4_0",
        "q8_0 (quantization=q8_0",
    ] {
        assert!(
            none.stderr.contains(needle),
            "{needle:?} in:\n{}",
            none.stderr
        );
    }
    let wrong = pull(
        &reference,
        &dir.path().join("wrong"),
        Some(&cache),
        &["--variant", "q2_K"],
    );
    wrong.assert_code(2, "an unknown variant");
    assert!(wrong.stderr.contains("q2_K") && wrong.stderr.contains("q8_0"));

    // --variant picks one: only its blobs are fetched.
    let mark = reg.mark();
    let dest = dir.path().join("q8");
    let run = pull(
        &reference,
        &dest,
        Some(&cache),
        &["--variant", "q8_0", "--json"],
    );
    run.assert_ok("--variant q8_0");
    assert_eq!(run.json()["format"], "kitops");
    assert_eq!(fs::read(dest.join("llama-q8_0.gguf")).unwrap(), q8);
    assert_eq!(fs::read(dest.join("README.md")).unwrap(), b"q8_0");
    assert!(dest.join("Kitfile").is_file());
    let fetched: Vec<String> = reg
        .blob_gets_since(mark)
        .into_iter()
        .filter(|g| g.status == 200 || g.status == 206)
        .map(|g| g.digest)
        .collect();
    assert!(
        fetched.contains(&q8_blob),
        "q8 weights fetched: {fetched:?}"
    );
    assert!(
        !fetched.contains(&q4_blob),
        "q4 weights never fetched: {fetched:?}"
    );
    // A label as key=value names a variant too.
    let dest = dir.path().join("q4");
    pull(
        &reference,
        &dest,
        Some(&cache),
        &["--variant", "quantization=q4_0"],
    )
    .assert_ok("--variant quantization=q4_0");
    assert_eq!(fs::read(dest.join("llama-q4_0.gguf")).unwrap(), q4);
}

const DOCKER_V01: &str = "application/vnd.docker.ai.model.config.v0.1+json";
const DOCKER_V02: &str = "application/vnd.docker.ai.model.config.v0.2+json";

/// Docker model artifacts, laid out file for file as Docker Model Runner's bundle lays out
/// its `model/` folder (docker/model-runner, pkg/distribution/internal/bundle/unpack.go).
#[test]
fn docker_model_artifacts_as_model_runner_lays_them_out() {
    let reg = Registry::start();
    // v0.1, as `docker model package --gguf --mmproj --chat-template --license` pushes a
    // sharded model: names come from media types and shard order, never from annotations;
    // the license layer is not placed (and so not fetched).
    let shard1 = random_bytes(200_000, 51);
    let shard2 = random_bytes(100_000, 52);
    let mmproj = random_bytes(50_000, 54);
    let template = b"{{ messages }}".to_vec();
    let license = b"Apache-2.0\n".to_vec();
    let config = br#"{"config":{"format":"gguf","quantization":"Q4_K_M"},"descriptor":{},"rootfs":{"type":"rootfs","diff_ids":[]}}"#;
    let license_layer = Layer::new(
        "application/vnd.docker.ai.license",
        license.clone(),
        &[(FILEPATH, "LICENSE")],
    );
    let license_digest = artifacts::sha256(&license_layer.bytes);
    push_artifact(
        &reg.host(),
        "ai/smollm",
        "v1",
        None,
        (DOCKER_V01, config),
        &[
            Layer::new(
                "application/vnd.docker.ai.gguf.v3",
                shard1.clone(),
                &[(FILEPATH, "SmolLM-Q4_K_M-00001-of-00002.gguf")],
            ),
            Layer::new(
                "application/vnd.docker.ai.gguf.v3",
                shard2.clone(),
                &[(FILEPATH, "SmolLM-Q4_K_M-00002-of-00002.gguf")],
            ),
            Layer::new("application/vnd.docker.ai.mmproj", mmproj.clone(), &[]),
            Layer::new(
                "application/vnd.docker.ai.chat.template.jinja",
                template.clone(),
                &[],
            ),
            license_layer,
        ],
        &[],
    );
    let dir = tmp();
    let dest = dir.path().join("gguf");
    let mark = reg.mark();
    let run = pull(&reg.reference("ai/smollm:v1"), &dest, None, &["--json"]);
    run.assert_ok("docker gguf pull");
    assert_eq!(run.json()["format"], "docker");
    assert_tree(
        &dest,
        &[
            ("model-00001-of-00002.gguf".into(), shard1),
            ("model-00002-of-00002.gguf".into(), shard2),
            ("model.mmproj".into(), mmproj),
            ("template.jinja".into(), template),
        ],
    );
    assert!(
        reg.blob_downloads_since(mark, &license_digest).is_empty(),
        "the license layer the runner does not place is not fetched"
    );

    // v0.1 from the time `docker model package --safetensors-dir` put the configs in a vLLM
    // config archive: one unnamed safetensors file, the archive unpacked at the root.
    let st = random_bytes(300_000, 53);
    let cfg = br#"{"model_type":"llama"}"#.to_vec();
    push_artifact(
        &reg.host(),
        "ai/smollm-st",
        "v1",
        None,
        (DOCKER_V01, config),
        &[
            Layer::new("application/vnd.docker.ai.safetensors", st.clone(), &[]),
            Layer::new(
                "application/vnd.docker.ai.vllm.config.tar",
                tar(&[Entry::File("config.json", &cfg)]),
                &[],
            ),
        ],
        &[],
    );
    let dest = dir.path().join("st");
    pull(&reg.reference("ai/smollm-st:v1"), &dest, None, &[]).assert_ok("docker safetensors");
    assert_tree(
        &dest,
        &[
            ("model.safetensors".into(), st.clone()),
            ("config.json".into(), cfg.clone()),
        ],
    );

    // v0.2, as `docker model package --safetensors-dir` pushes today: one layer per file at
    // its filepath annotation, whatever its media type (the license too); a layer without an
    // annotation is left out, as the runner leaves it out.
    let st2 = random_bytes(200_000, 55);
    let tokenizer = br#"{"model":{"type":"BPE"}}"#.to_vec();
    push_artifact(
        &reg.host(),
        "ai/smollm-v2",
        "v1",
        None,
        (DOCKER_V02, config),
        &[
            Layer::new(
                "application/vnd.docker.ai.safetensors",
                st.clone(),
                &[(FILEPATH, "model-00001-of-00002.safetensors")],
            ),
            Layer::new(
                "application/vnd.docker.ai.safetensors",
                st2.clone(),
                &[(FILEPATH, "model-00002-of-00002.safetensors")],
            ),
            Layer::new(
                "application/vnd.docker.ai.model.file",
                cfg.clone(),
                &[(FILEPATH, "config.json")],
            ),
            Layer::new(
                "application/vnd.docker.ai.model.file",
                tokenizer.clone(),
                &[(FILEPATH, "tokenizer/tokenizer.json")],
            ),
            Layer::new(
                "application/vnd.docker.ai.license",
                license.clone(),
                &[(FILEPATH, "LICENSE")],
            ),
            Layer::new("application/vnd.docker.ai.model.file", b"x".to_vec(), &[]),
        ],
        &[],
    );
    let dest = dir.path().join("v2");
    pull(&reg.reference("ai/smollm-v2:v1"), &dest, None, &[]).assert_ok("docker v0.2");
    assert_tree(
        &dest,
        &[
            ("model-00001-of-00002.safetensors".into(), st),
            ("model-00002-of-00002.safetensors".into(), st2),
            ("config.json".into(), cfg),
            ("tokenizer/tokenizer.json".into(), tokenizer),
            ("LICENSE".into(), license),
        ],
    );

    // Two chat templates: the runner refuses the model, and so does tugboat, clearly.
    push_artifact(
        &reg.host(),
        "ai/two-templates",
        "v1",
        None,
        (DOCKER_V01, config),
        &[
            Layer::new("application/vnd.docker.ai.gguf.v3", b"GGUF".to_vec(), &[]),
            Layer::new(
                "application/vnd.docker.ai.chat.template.jinja",
                b"a".to_vec(),
                &[],
            ),
            Layer::new(
                "application/vnd.docker.ai.chat.template.jinja",
                b"b".to_vec(),
                &[],
            ),
        ],
        &[],
    );
    let run = pull(
        &reg.reference("ai/two-templates:v1"),
        &dir.path().join("two"),
        None,
        &[],
    );
    run.assert_code(2, "two chat templates");
    assert!(run.stderr.contains("exactly one"), "{}", run.stderr);
}

#[test]
fn an_unknown_artifact_names_its_media_types_and_format() {
    let reg = Registry::start();
    push_artifact(
        &reg.host(),
        "odd/thing",
        "v1",
        Some("application/vnd.example.thing.v1"),
        ("application/vnd.example.thing.config.v1+json", b"{}"),
        &[Layer::new(
            "application/vnd.example.thing.blob.v1",
            b"not a tar".to_vec(),
            &[],
        )],
        &[],
    );
    let dir = tmp();
    let run = pull(
        &reg.reference("odd/thing:v1"),
        &dir.path().join("d"),
        None,
        &[],
    );
    run.assert_code(2, "an unknown artifact");
    for needle in [
        "application/vnd.example.thing.v1",
        "application/vnd.example.thing.config.v1+json",
        "application/vnd.example.thing.blob.v1",
        "--format",
    ] {
        assert!(
            run.stderr.contains(needle),
            "{needle:?} in:\n{}",
            run.stderr
        );
    }
    assert!(!run.stderr.contains("tar"), "no tar error:\n{}", run.stderr);
}
