//! The image under a real container runtime: containerd and runc (Debian packages) on a
//! containerd of the test's own (its own config, root, state and socket in a tempdir; no
//! systemd). The release binary is packed by scripts/build-image.sh, `ctr images import`ed, and
//! run twice:
//! - as an init container would run it: uid/gid 65532, read-only root filesystem, no
//!   capabilities, no new privileges, host network (the registry is on loopback), the
//!   destination bind-mounted; the model arrives byte-identical;
//! - as the node plugin: privileged, the CSI socket directory bind-mounted and the kubelet
//!   directory bind-mounted with rshared propagation; a volume published through the CSI
//!   socket appears at the target on the host, byte-identical, and unpublishing removes it.
//!
//! A second test starts the image as the platforms that would run it start it:
//! - as KServe's storage-initializer injector builds the container from
//!   manifests/integrations/kserve/clusterstoragecontainer.yaml: its command, env (the pull
//!   secret's .dockerconfigjson from secretKeyRef), securityContext and cache mount, KServe's
//!   `storageUri /mnt/models` appended, its HF_* variables, /mnt/models an emptyDir;
//! - as KitOps' init-container spec runs it (manifests/integrations/kitops/init-container.yaml):
//!   no command, no args, the KitOps variables, a ConfigMap with the cosign key;
//!
//! and each a second time: the next KServe pod on the node (a fresh emptyDir, the same cache)
//! fetches no blob; the restarted KitOps init container (the same emptyDir) asks the registry
//! nothing.
//!
//! Needs root and containerd/ctr/runc: skipped with a message otherwise, failing under CI=1.

#[path = "common/artifacts.rs"]
mod artifacts;
mod common;
#[path = "common/cosign.rs"]
mod cosign;
#[path = "common/csi_client.rs"]
mod csi_client;

use common::*;
use csi_client::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The tests here share one release build and runc's state directory: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn skip(why: &str) -> bool {
    eprintln!("SKIPPED: {why}");
    if std::env::var_os("CI").is_some() {
        panic!("CI is set and the container runtime test cannot run: {why}");
    }
    false
}

fn can_run() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        return skip("needs root");
    }
    for tool in ["containerd", "ctr", "runc"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return skip(&format!(
                "{tool} is not installed (apt-get install containerd runc)"
            ));
        }
    }
    true
}

/// The release binary, built as the Dockerfile builds it, packed as an OCI archive.
fn image_archive(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("target/container-image");
    let status = Command::new(root.join("scripts/build-release.sh"))
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "scripts/build-release.sh failed");
    let archive = dir.join("tugboat.tar");
    let status = Command::new(root.join("scripts/build-image.sh"))
        .arg("archive")
        .arg(out.join("tugboat"))
        .arg(&archive)
        .arg("test")
        .status()
        .unwrap();
    assert!(status.success(), "scripts/build-image.sh failed");
    archive
}

/// A containerd of our own, killed and unmounted on drop.
struct Containerd {
    dir: PathBuf,
    /// Per run: runc keeps its state under /run/containerd/runc/<namespace> on the host.
    namespace: String,
    child: Child,
    mounts: Vec<PathBuf>,
}

impl Containerd {
    fn start(dir: &Path, name: &str) -> Containerd {
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
             [debug]\n  address = \"\"\n",
            d = dir.display()
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let containerd = Containerd {
            dir: dir.to_path_buf(),
            namespace: format!("tugboat-test-{}-{name}", std::process::id()),
            child,
            mounts: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !containerd.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        containerd
    }

    fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .args(["--namespace", &self.namespace])
            .args(args);
        cmd
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        self.ctr_cmd(args).output().unwrap()
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A writable snapshot of the imported image mounted at `dir/name` (what a runtime gives
    /// a container; `ctr run --config` takes the root filesystem as a path).
    fn rootfs(&mut self, name: &str, chain_id: &str) -> PathBuf {
        let target = self.dir.join(name);
        std::fs::create_dir_all(&target).unwrap();
        let snapshots = ["snapshots", "--snapshotter", "native"];
        let mut args = snapshots.to_vec();
        args.extend(["prepare", name, chain_id]);
        self.ctr_ok(&args);
        let mut args = snapshots.to_vec();
        let target_str = target.display().to_string();
        args.extend(["mounts", &target_str, name]);
        let mount = self.ctr_ok(&args);
        let status = Command::new("sh")
            .args(["-c", mount.trim()])
            .status()
            .unwrap();
        assert!(status.success(), "{mount}");
        self.mounts.push(target.clone());
        target
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Containers outlive containerd (their shims): stop them first, whatever happened.
        for id in [
            "tugboat-node",
            "tugboat-init",
            "kserve-1",
            "kserve-2",
            "kitops-1",
            "kitops-2",
        ] {
            let _ = self.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
            std::thread::sleep(Duration::from_millis(300));
            let _ = self.ctr(&["task", "delete", "--force", id]);
            let _ = self.ctr(&["containers", "delete", id]);
        }
        for m in self.mounts.iter().rev() {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&self.namespace));
    }
}

/// Imports the archive; returns the chain id of its one layer and the image config.
fn import(containerd: &Containerd, archive: &Path) -> (String, serde_json::Value) {
    let archive = archive.display().to_string();
    containerd.ctr_ok(&[
        "images",
        "import",
        "--snapshotter",
        "native",
        "--base-name",
        "localhost/tugboat",
        &archive,
    ]);
    // The image's one layer: its chain id is its diff_id.
    let layout = tempfile::tempdir().unwrap();
    assert!(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(layout.path())
        .status()
        .unwrap()
        .success());
    let read = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let blob = |d: &str| layout.path().join("blobs/sha256").join(&d[7..]);
    let index = read(layout.path().join("index.json"));
    let manifest = read(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let config = read(blob(manifest["config"]["digest"].as_str().unwrap()));
    let chain_id = config["rootfs"]["diff_ids"][0]
        .as_str()
        .unwrap()
        .to_string();
    (chain_id, config)
}

#[test]
fn under_containerd_and_runc_as_init_container_and_as_node_plugin() {
    if !can_run() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("tugboat-ctr-")
        .tempdir()
        .unwrap();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let archive = image_archive(dir.path());
    let mut containerd = Containerd::start(dir.path(), "runtime");
    let (chain_id, _) = import(&containerd, &archive);
    assert!(containerd
        .ctr_ok(&["images", "ls", "-q"])
        .contains("localhost/tugboat:test"));

    let registry = Registry::start();
    let model = dir.path().join("model.gguf");
    write_random_file(&model, 5 * 1024 * 1024 + 3, 31);
    push_raw_files(&registry.host(), "models/ctr", "v1", &[&model]);
    let reference = registry.reference("models/ctr:v1");

    // ---- init container: 65532, read-only root, no capabilities, bind-mounted destination
    let rootfs = containerd.rootfs("init-rootfs", &chain_id);
    let dest = dir.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    nix::unistd::chown(&dest, Some(65532.into()), Some(65532.into())).unwrap();
    let mut spec: serde_json::Value =
        serde_json::from_str(&containerd.ctr_ok(&["oci", "spec"])).unwrap();
    let process = &mut spec["process"];
    process["user"] = serde_json::json!({"uid": 65532, "gid": 65532});
    process["args"] = serde_json::json!([
        "/usr/local/bin/tugboat",
        "pull",
        reference,
        "--dest",
        "/models",
        "--plain-http"
    ]);
    process["env"] = serde_json::json!(["PATH=/usr/local/bin", "NO_PROXY=127.0.0.1"]);
    process["noNewPrivileges"] = true.into();
    for set in [
        "bounding",
        "effective",
        "permitted",
        "inheritable",
        "ambient",
    ] {
        process["capabilities"][set] = serde_json::json!([]);
    }
    spec["root"] = serde_json::json!({"path": rootfs, "readonly": true});
    spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "destination": "/models", "type": "bind", "source": dest,
            "options": ["rbind", "rw"]
        }));
    let namespaces = spec["linux"]["namespaces"].as_array_mut().unwrap();
    namespaces.retain(|n| n["type"] != "network"); // host network: the registry is on loopback
    spec["linux"]["cgroupsPath"] = format!("/{}/tugboat-init", containerd.namespace).into();
    let spec_file = dir.path().join("init-spec.json");
    std::fs::write(&spec_file, serde_json::to_vec(&spec).unwrap()).unwrap();
    let spec_path = spec_file.display().to_string();
    let out = containerd.ctr(&["run", "--rm", "--config", &spec_path, "tugboat-init"]);
    eprintln!(
        "init container: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the init container failed");
    assert_same_files(&dest, &[("model.gguf", &model)]);
    let owner =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dest.join("model.gguf")).unwrap());
    assert_eq!(owner, 65532, "files are written as the container's user");

    // ---- node plugin: privileged, CSI socket dir, kubelet dir with rshared propagation
    let kubelet = dir.path().join("kubelet");
    let csi_dir = dir.path().join("plugin");
    let cache = dir.path().join("cache");
    for d in [&kubelet, &csi_dir, &cache] {
        std::fs::create_dir_all(d).unwrap();
    }
    // kubelet's directory is a shared mount on a node: make ours one.
    nix::mount::mount(
        Some(&kubelet),
        &kubelet,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    containerd.mounts.push(kubelet.clone());
    nix::mount::mount(
        None::<&str>,
        &kubelet,
        None::<&str>,
        nix::mount::MsFlags::MS_SHARED | nix::mount::MsFlags::MS_REC,
        None::<&str>,
    )
    .unwrap();
    let bind = |src: &Path, dst: &str, extra: &str| {
        format!(
            "type=bind,src={},dst={dst},options=rbind:rw{extra}",
            src.display()
        )
    };
    let kubelet_str = kubelet.display().to_string();
    let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
    let mut node = containerd
        .ctr_cmd(&[
            "run",
            "--rm",
            "--snapshotter",
            "native",
            "--privileged",
            "--net-host",
            // as kubelet asks runc for a Bidirectional mount: the container's mounts are
            // shared, so the plugin's bind mounts reach the host
            "--rootfs-propagation",
            "rshared",
            "--read-only",
            "--mount",
            &bind(&csi_dir, "/csi", ""),
            "--mount",
            &bind(&kubelet, &kubelet_str, ":rshared"),
            "--mount",
            &bind(&cache, "/var/lib/tugboat", ""),
            "--env",
            "TUGBOAT_NODE_ID=node-a",
            "localhost/tugboat:test",
            "tugboat-node",
            "/usr/local/bin/tugboat",
            "node",
            "--csi-endpoint=unix:///csi/csi.sock",
            "--cache=/var/lib/tugboat",
            "--http-addr=127.0.0.1:0",
            "--plain-http",
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let socket = csi_dir.join("csi.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !socket.exists() {
        if let Ok(Some(status)) = node.try_wait() {
            panic!(
                "the node plugin container exited with {status}:\n{}",
                std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "no CSI socket in 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let target = kubelet.join("pods/pod-1/volumes/kubernetes.io~csi/model/mount");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = runtime.block_on(async {
        let channel = connect(&socket).await;
        let mut node_client = tugboat::csi::proto::node_client::NodeClient::new(channel);
        node_client
            .node_publish_volume(publish_request("vol-1", &target, &reference))
            .await?;
        // Published inside the container, seen on the host through rshared propagation.
        assert_same_files(&target, &[("model.gguf", &model)]);
        node_client
            .node_unpublish_volume(unpublish_request("vol-1", &target))
            .await?;
        Ok::<_, tonic::Status>(())
    });
    let _ = containerd.ctr(&["task", "kill", "--signal", "SIGKILL", "tugboat-node"]);
    let _ = node.wait();
    result.unwrap_or_else(|status| {
        panic!(
            "CSI call failed: {status:?}\n{}",
            std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default()
        )
    });
    assert!(
        !target.join("model.gguf").exists(),
        "unpublish left the model mounted"
    );
}

// ---------------------------------------------------------------------------------------------
// As KServe and KitOps start it

fn yaml_docs(file: &str) -> Vec<serde_yaml_ng::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|de| <serde_yaml_ng::Value as serde::Deserialize>::deserialize(de).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn strings(v: &serde_yaml_ng::Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// What a container spec asks of runc, reduced to what these runs use.
struct Run {
    id: &'static str,
    args: Vec<String>,
    env: Vec<String>,
    uid: u32,
    /// (destination, host source, read-only)
    mounts: Vec<(String, PathBuf, bool)>,
}

/// Starts `run` as kubelet would have runc start it (read-only root, no capabilities, no new
/// privileges, host network for the loopback registry) and waits for it.
fn start(containerd: &mut Containerd, dir: &Path, chain_id: &str, run: &Run) -> (bool, String) {
    let rootfs = containerd.rootfs(&format!("{}-rootfs", run.id), chain_id);
    let mut spec: serde_json::Value =
        serde_json::from_str(&containerd.ctr_ok(&["oci", "spec"])).unwrap();
    let process = &mut spec["process"];
    process["user"] = serde_json::json!({"uid": run.uid, "gid": run.uid});
    process["args"] = serde_json::json!(run.args);
    process["env"] = serde_json::json!(run.env);
    process["noNewPrivileges"] = true.into();
    for set in [
        "bounding",
        "effective",
        "permitted",
        "inheritable",
        "ambient",
    ] {
        process["capabilities"][set] = serde_json::json!([]);
    }
    spec["root"] = serde_json::json!({"path": rootfs, "readonly": true});
    for (destination, source, read_only) in &run.mounts {
        spec["mounts"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "destination": destination, "type": "bind", "source": source,
                "options": ["rbind", if *read_only { "ro" } else { "rw" }]
            }));
    }
    let namespaces = spec["linux"]["namespaces"].as_array_mut().unwrap();
    namespaces.retain(|n| n["type"] != "network");
    spec["linux"]["cgroupsPath"] = format!("/{}/{}", containerd.namespace, run.id).into();
    let spec_file = dir.join(format!("{}-spec.json", run.id));
    std::fs::write(&spec_file, serde_json::to_vec(&spec).unwrap()).unwrap();
    let spec_path = spec_file.display().to_string();
    let out = containerd.ctr(&["run", "--rm", "--config", &spec_path, run.id]);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("---- {}: {:?}\n{log}", run.id, run.args);
    (out.status.success(), log)
}

/// An emptyDir as kubelet makes it: a fresh directory, mode 0777.
fn empty_dir(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
    path.to_path_buf()
}

/// A ModelKit as `kit pack` lays it out: the model, a dataset, docs. Returns its digest.
fn push_modelkit(reg: &Registry, model: &Path) -> String {
    use artifacts::{push_artifact, tar, Entry, Layer};
    let weights = std::fs::read(model).unwrap();
    let kitfile = serde_json::json!({
        "manifestVersion": "1.0.0",
        "package": {"name": "tiny"},
        "model": {"name": "tiny", "path": "model.gguf"},
        "datasets": [{"name": "train", "path": "train.csv"}],
        "docs": [{"path": "README.md"}]
    });
    let layer = |kind: &str, name: &str, bytes: &[u8]| {
        Layer::new(
            &format!("application/vnd.kitops.modelkit.{kind}.v1.tar"),
            tar(&[Entry::File(name, bytes)]),
            &[],
        )
    };
    push_artifact(
        &reg.host(),
        "kit/tiny",
        "v1",
        None,
        (
            "application/vnd.kitops.modelkit.config.v1+json",
            &serde_json::to_vec(&kitfile).unwrap(),
        ),
        &[
            layer("model", "model.gguf", &weights),
            layer("dataset", "train.csv", b"a,b\n"),
            layer("docs", "README.md", b"docs\n"),
        ],
        &[],
    )
}

#[test]
fn as_kserve_and_kitops_start_it_filled_then_warm() {
    if !can_run() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::Builder::new()
        .prefix("tugboat-ctr-int-")
        .tempdir()
        .unwrap();
    let archive = image_archive(dir.path());
    let mut containerd = Containerd::start(dir.path(), "integrations");
    let (chain_id, image) = import(&containerd, &archive);
    // The runtime's argv when a spec gives no command or args: Entrypoint + Cmd.
    let entrypoint: Vec<String> = image["config"]["Entrypoint"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let cmd = image["config"]["Cmd"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(cmd.is_empty(), "the image has no Cmd: {cmd:?}");
    let image_env: Vec<String> = image["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();

    let model = dir.path().join("model.gguf");
    write_random_file(&model, 3 * 1024 * 1024 + 5, 41);

    // ---- KServe: a private registry, the pull secret in the InferenceService's namespace
    let registry = Registry::start_with_htpasswd("robot", "kserve-Passw0rd");
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::copy(&model, src.join("model.gguf")).unwrap();
    let docker_config = docker_config_json(&registry.host(), "robot", "kserve-Passw0rd");
    let config_file = dir.path().join("push-config.json");
    std::fs::write(&config_file, &docker_config).unwrap();
    push(
        &src,
        &registry.reference("ml-models/tiny:v1"),
        &["--docker-config", config_file.to_str().unwrap()],
    )
    .assert_ok("push the KServe model");
    let storage_uri = format!("tugboat://{}", registry.reference("ml-models/tiny:v1"));

    let cscs = yaml_docs("manifests/integrations/kserve/clusterstoragecontainer.yaml");
    let csc = cscs
        .iter()
        .find(|d| d["spec"]["workloadType"].as_str() == Some("initContainer"))
        .expect("the initContainer ClusterStorageContainer");
    let container = &csc["spec"]["container"];
    let mut args = strings(&container["command"]);
    // KServe's injector: CreateInitContainerWithConfig sets Args [storageUri, /mnt/models].
    args.extend([storage_uri.clone(), "/mnt/models".to_string()]);
    let mut env = image_env.clone();
    for e in container["env"].as_sequence().unwrap() {
        let name = e["name"].as_str().unwrap();
        let value = match e["value"].as_str() {
            Some(v) => v.to_string(),
            None => {
                let key = &e["valueFrom"]["secretKeyRef"];
                assert_eq!(key["name"].as_str(), Some("tugboat-registry-credentials"));
                assert_eq!(key["key"].as_str(), Some(".dockerconfigjson"));
                docker_config.clone()
            }
        };
        env.push(format!("{name}={value}"));
    }
    // AddDefaultHuggingFaceEnvVars, after the merge.
    env.extend([
        "HF_HUB_ENABLE_HF_TRANSFER=1".to_string(),
        "HF_XET_HIGH_PERFORMANCE=1".to_string(),
        "HF_XET_NUM_CONCURRENT_RANGE_GETS=8".to_string(),
    ]);
    // The one thing not in the manifest: this registry speaks plain HTTP on loopback (a lab
    // registry, as the private-registry component sets for the node plugin).
    env.push(format!("TUGBOAT_INSECURE_REGISTRY={}", registry.host()));
    env.push("NO_PROXY=127.0.0.1".to_string());
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    let uid = security["runAsUser"].as_u64().unwrap() as u32;
    let cache_mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
    // The hostPath: the node's cache, shared by the pods of the node.
    let node_cache = dir.path().join("node/var/lib/tugboat");
    std::fs::create_dir_all(&node_cache).unwrap();

    let mut kserve = |id: &'static str| {
        let mnt_models = empty_dir(&dir.path().join(format!("{id}/mnt-models")));
        let mark = registry.mark();
        let (ok, log) = start(
            &mut containerd,
            dir.path(),
            &chain_id,
            &Run {
                id,
                args: args.clone(),
                env: env.clone(),
                uid,
                mounts: vec![
                    (cache_mount.to_string(), node_cache.clone(), false),
                    ("/mnt/models".to_string(), mnt_models.clone(), false),
                ],
            },
        );
        assert!(ok, "{id}: the storage initializer failed");
        assert_same_files(&mnt_models, &[("model.gguf", &model)]);
        let requests = registry.requests_since(mark);
        let blobs = registry.blob_gets_since(mark);
        (log, requests, blobs)
    };
    let (log, _, blobs) = kserve("kserve-1");
    assert!(log.contains("pulled "), "{log}");
    assert!(!blobs.is_empty(), "the first pod downloads");
    let (log, requests, blobs) = kserve("kserve-2");
    assert!(
        log.contains("cached ") && log.contains("fetched 0 B"),
        "the second pod is a cache hit:\n{log}"
    );
    assert!(blobs.is_empty(), "the second pod fetched blobs: {blobs:?}");
    eprintln!(
        "KServe warm run: {} registry request(s), none for a blob: {:?}",
        requests.len(),
        requests
            .iter()
            .map(|r| format!("{} {} {}", r.method, r.uri, r.status))
            .collect::<Vec<_>>()
    );

    // ---- KitOps: the spec of manifests/integrations/kitops, its image swapped
    let kit_registry = Registry::start();
    let digest = push_modelkit(&kit_registry, &model);
    let (private, public) = cosign::key_pair(dir.path(), "kit-cosign");
    cosign::cosign_attach(
        &kit_registry.host(),
        "kit/tiny",
        &cosign::sig_tag(&digest),
        &digest,
        &private,
        false,
    );
    let docs = yaml_docs("manifests/integrations/kitops/init-container.yaml");
    let pod = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Pod"))
        .unwrap();
    let init = &pod["spec"]["initContainers"][0];
    assert!(init["command"].is_null() && init["args"].is_null());
    let mut env = image_env.clone();
    let mut unpack_path = String::new();
    let mut key_path = String::new();
    for e in init["env"].as_sequence().unwrap() {
        let name = e["name"].as_str().unwrap();
        let mut value = e["value"].as_str().unwrap().to_string();
        match name {
            // The ModelKit this test pushed, in place of the example's Harbor.
            "MODELKIT_REF" => value = kit_registry.reference("kit/tiny:v1"),
            "UNPACK_PATH" => unpack_path = value.clone(),
            "COSIGN_KEY" => key_path = value.clone(),
            _ => {}
        }
        env.push(format!("{name}={value}"));
    }
    env.push("TUGBOAT_PLAIN_HTTP=true".to_string());
    env.push("NO_PROXY=127.0.0.1".to_string());
    let uid = pod["spec"]["securityContext"]["runAsUser"]
        .as_u64()
        .unwrap() as u32;
    // The ConfigMap volume with the public key.
    let keys = dir.path().join("kit-keys");
    std::fs::create_dir(&keys).unwrap();
    let key_dir = Path::new(&key_path).parent().unwrap().display().to_string();
    std::fs::copy(
        &public,
        keys.join(Path::new(&key_path).file_name().unwrap()),
    )
    .unwrap();
    let modelkit_storage = empty_dir(&dir.path().join("kitops/modelkit"));
    let mut kitops = |id: &'static str| {
        let mark = kit_registry.mark();
        let (ok, log) = start(
            &mut containerd,
            dir.path(),
            &chain_id,
            &Run {
                id,
                args: entrypoint.clone(),
                env: env.clone(),
                uid,
                mounts: vec![
                    (unpack_path.clone(), modelkit_storage.clone(), false),
                    (key_dir.clone(), keys.clone(), true),
                ],
            },
        );
        assert!(ok, "{id}: the KitOps init container failed");
        // UNPACK_FILTER=model: the model only, as kit unpack --filter=model.
        let mut got: Vec<String> = walk(&modelkit_storage)
            .into_iter()
            .filter(|p| !p.starts_with(".tugboat"))
            .map(|p| p.display().to_string())
            .collect();
        got.sort();
        assert_eq!(got, ["model.gguf"], "{id}");
        assert_same_files(&modelkit_storage, &[("model.gguf", &model)]);
        (log, kit_registry.requests_since(mark))
    };
    let (log, requests) = kitops("kitops-1");
    assert!(log.contains("pulled ") && !requests.is_empty(), "{log}");
    assert!(
        requests.iter().any(|r| r.uri.contains(".sig")),
        "the signature was looked up: {:?}",
        requests.iter().map(|r| &r.uri).collect::<Vec<_>>()
    );
    let (log, requests) = kitops("kitops-2");
    assert!(
        log.contains("cached "),
        "the restarted init container is a hit:\n{log}"
    );
    assert!(
        requests.is_empty(),
        "the restarted init container asked the registry: {:?}",
        requests.iter().map(|r| &r.uri).collect::<Vec<_>>()
    );
    eprintln!("KitOps restart: 0 registry requests");
}
