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
//! Needs root and containerd/ctr/runc: skipped with a message otherwise, failing under CI=1.

mod common;
#[path = "common/csi_client.rs"]
mod csi_client;

use common::*;
use csi_client::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
    fn start(dir: &Path) -> Containerd {
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
            namespace: format!("tugboat-test-{}", std::process::id()),
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
        for id in ["tugboat-node", "tugboat-init"] {
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

fn import(containerd: &Containerd, archive: &Path) -> String {
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
    config["rootfs"]["diff_ids"][0]
        .as_str()
        .unwrap()
        .to_string()
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
    let archive = image_archive(dir.path());
    let mut containerd = Containerd::start(dir.path());
    let chain_id = import(&containerd, &archive);
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
