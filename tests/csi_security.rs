//! Who may talk to the CSI socket, and what a volume request may make the daemon mount.
//! - The socket (mode 0600 by default) refuses a non-root caller; mode 0666 lets it in (the
//!   control), so the refusal is the socket's mode and not the directories'.
//! - Volume attributes cannot make the daemon mount anything but a cache snapshot: a reference
//!   that is a path, a subPath with `..` or absolute, a target outside `--kubelet-root` (also
//!   through a symlink) are all INVALID_ARGUMENT, with no mount and no lease left behind.
//!
//! Root only (real bind mounts, setpriv); skipped with a message elsewhere.

mod common;
#[path = "common/csi_client.rs"]
mod csi_client;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use common::*;
use csi_client::*;
use tonic::Code;

/// Tries to connect to `socket` as uid/gid 65534 (nobody); returns whether it connected.
fn connects_as_nobody(socket: &Path) -> bool {
    let script = "import socket,sys\n\
                  s=socket.socket(socket.AF_UNIX)\n\
                  try:\n    s.connect(sys.argv[1]); print('connected')\n\
                  except OSError as e:\n    print('refused', e); sys.exit(3)\n";
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            script,
        ])
        .arg(socket)
        .output()
        .expect("run setpriv (util-linux) and /usr/bin/python3");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("connect as nobody: {}", text.trim());
    if !out.status.success() {
        assert!(
            text.contains("Permission denied"),
            "the connect failed for another reason: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.success()
}

/// Opens every directory from the workspace down to the socket to others, so only the
/// socket's own mode decides.
fn open_dirs(ws: &Workspace) {
    for dir in [
        ws.dir.path().to_path_buf(),
        ws.socket().parent().unwrap().to_path_buf(),
    ] {
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_refuses_non_root_callers() {
    if !can_mount() {
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        skip("setpriv (util-linux) is not installed");
        return;
    }
    let ws = Workspace::new();
    open_dirs(&ws);
    let mut daemon = Daemon::start(&ws, &[]);
    let mode = fs::metadata(&daemon.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        !connects_as_nobody(&daemon.socket),
        "uid 65534 connected to a 0600 socket"
    );
    // Root (kubelet) still gets in.
    let (mut identity, _) = daemon.clients().await;
    wait_probe_ready(&mut identity).await;
    daemon.stop_with(nix::sys::signal::Signal::SIGTERM);
    drop(daemon);

    // The control: a socket configured 0666 lets the same caller in.
    let ws = Workspace::new();
    open_dirs(&ws);
    let daemon = Daemon::start(&ws, &["--csi-socket-mode", "0666"]);
    assert!(
        connects_as_nobody(&daemon.socket),
        "the control: 0666 must let uid 65534 in"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volume_attributes_cannot_mount_anything_but_snapshots() {
    if !can_mount() {
        return;
    }
    let reg = Registry::start();
    let ws = Workspace::new();
    push_raw_artifact(
        &reg.host(),
        "models/safe",
        "v1",
        &[(Some("data/w.bin"), b"weights".to_vec())],
        &[],
    );
    let reference = reg.reference("models/safe:v1");
    let kubelet = ws.dir.path().join("kubelet");
    fs::create_dir_all(&kubelet).unwrap();
    let kubelet_arg = kubelet.display().to_string();
    let daemon = Daemon::start(&ws, &["--kubelet-root", &kubelet_arg]);
    let (_, mut node) = daemon.clients().await;
    let target = ws.target("pod");
    let valid = || publish_request("vol", &target, &reference);

    // A place outside the kubelet root, and a symlink inside it that leads there.
    let outside = ws.dir.path().join("host-etc");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("passwd"), b"root:x:0:0").unwrap();
    let link_parent = kubelet.join("pods/evil/volumes/kubernetes.io~csi");
    fs::create_dir_all(&link_parent).unwrap();
    std::os::unix::fs::symlink(&outside, link_parent.join("model")).unwrap();

    let mut cases = Vec::new();
    for bad_reference in [
        "/etc",
        "/etc/passwd",
        "file:///etc/passwd",
        "../../../etc",
        "./cache/snapshots",
        &format!("{}", ws.cache().display()),
        &format!("{}/../../etc:v1", reg.host()),
        &format!("{}/models/safe:v1/../../../etc", reg.host()),
    ] {
        let mut r = valid();
        r.volume_context
            .insert("reference".into(), bad_reference.to_string());
        cases.push((format!("reference {bad_reference:?}"), r));
    }
    // (A leading '/' is trimmed: "/etc" means the model's own "etc", which does not exist.)
    let mut r = valid();
    r.volume_context.insert("subPath".into(), "/etc".into());
    let status = node.node_publish_volume(r).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    for bad_sub_path in [
        "..",
        "../..",
        "data/../../..",
        "data/../../../etc",
        "./../x",
    ] {
        let mut r = valid();
        r.volume_context
            .insert("subPath".into(), bad_sub_path.to_string());
        cases.push((format!("subPath {bad_sub_path:?}"), r));
    }
    for bad_target in [
        outside.join("mount"),
        Path::new("/etc/tugboat-test-target").to_path_buf(),
        link_parent.join("model/mount"),
        link_parent.join("model"),
        kubelet.clone(),
    ] {
        let mut r = valid();
        r.target_path = bad_target.display().to_string();
        cases.push((format!("target {}", bad_target.display()), r));
    }
    let mut r = valid();
    r.target_path = format!("{}/pods/../../host-etc", kubelet.display());
    cases.push(("target with ..".into(), r));

    for (what, request) in cases {
        let status = node.node_publish_volume(request).await.expect_err(&what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }
    assert!(ws.mounts().is_empty(), "no refused publish leaves a mount");
    assert!(
        tugboat::cache::Cache::open(ws.cache())
            .unwrap()
            .leases()
            .unwrap()
            .is_empty(),
        "no refused publish leaves a lease"
    );
    assert_eq!(fs::read(outside.join("passwd")).unwrap(), b"root:x:0:0");
    assert!(!Path::new("/etc/tugboat-test-target").exists());

    // The valid request, and a subPath inside the model, mount the snapshot read-only.
    node.node_publish_volume(valid()).await.unwrap();
    assert_eq!(fs::read(target.join("data/w.bin")).unwrap(), b"weights");
    let sub_target = ws.target("pod-sub");
    let mut sub = publish_request("vol-sub", &sub_target, &reference);
    sub.volume_context.insert("subPath".into(), "data".into());
    node.node_publish_volume(sub).await.unwrap();
    assert_eq!(fs::read(sub_target.join("w.bin")).unwrap(), b"weights");
    // Every mount's source is a cache snapshot.
    for mount in ws.mounts() {
        let root = mount.root.display().to_string();
        assert!(root.contains("/cache/snapshots/"), "{mount:?}");
    }
    for (volume, t) in [("vol", &target), ("vol-sub", &sub_target)] {
        node.node_unpublish_volume(unpublish_request(volume, t))
            .await
            .unwrap();
    }
    assert!(ws.mounts().is_empty());
}
