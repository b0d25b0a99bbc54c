//! CSI test helpers: run `tugboat node` as a real process on a Unix socket, talk to it with
//! the tonic client stubs generated from proto/csi.proto, build NodePublish requests the way
//! kubelet does, and clean up any bind mount a failing test leaves behind.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tugboat::csi::proto::identity_client::IdentityClient;
use tugboat::csi::proto::node_client::NodeClient;
use tugboat::csi::proto::volume_capability::access_mode::Mode;
use tugboat::csi::proto::volume_capability::{AccessMode, AccessType, MountVolume};
use tugboat::csi::proto::{
    NodePublishVolumeRequest, NodeUnpublishVolumeRequest, ProbeRequest, VolumeCapability,
};

/// Whether this process may bind-mount (root on Linux with CAP_SYS_ADMIN). Says why not, and
/// fails the test under `CI` (see [`super::skip`]).
pub fn can_mount() -> bool {
    if !cfg!(target_os = "linux") {
        super::skip("the CSI tests need Linux bind mounts");
        return false;
    }
    if !nix::unistd::geteuid().is_root() {
        super::skip("the CSI tests need root (real bind mounts); run them as root");
        return false;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    match tugboat::csi::mount::bind_read_only(&a, &b) {
        Ok(()) => {
            let _ = tugboat::csi::mount::unmount(&b);
            true
        }
        Err(errno) => {
            super::skip(&format!(
                "bind mounts are not permitted here ({errno}); the CSI tests need CAP_SYS_ADMIN"
            ));
            false
        }
    }
}

/// A workspace for one test: cache, socket and pod target directories. On drop, every mount
/// below it is detached, so a failing test never leaves mounts on the machine.
pub struct Workspace {
    pub dir: TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace {
            dir: tempfile::Builder::new()
                .prefix("tugboat-csi-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("plugin/csi.sock")
    }

    /// Where kubelet would ask for pod `pod`'s volume.
    pub fn target(&self, pod: &str) -> PathBuf {
        self.dir
            .path()
            .join("kubelet/pods")
            .join(pod)
            .join("volumes/kubernetes.io~csi/model/mount")
    }

    /// Mount points below this workspace, as the kernel lists them.
    pub fn mounts(&self) -> Vec<tugboat::csi::mountinfo::MountEntry> {
        let root = fs::canonicalize(self.dir.path()).unwrap();
        tugboat::csi::mountinfo::read()
            .unwrap()
            .into_iter()
            .filter(|m| m.mount_point.starts_with(&root))
            .collect()
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        for mount in self.mounts().into_iter().rev() {
            let _ = nix::mount::umount2(&mount.mount_point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A `tugboat node` process.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Daemon {
    /// Starts `tugboat node --plain-http` on the workspace's socket and cache, plus `extra` flags.
    pub fn start(ws: &Workspace, extra: &[&str]) -> Daemon {
        Self::start_with_env(ws, extra, &[])
    }

    /// [`Daemon::start`] with these environment variables set for the daemon.
    pub fn start_with_env(ws: &Workspace, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut args: Vec<String> = vec![
            "node".into(),
            "--csi-endpoint".into(),
            format!("unix://{}", ws.socket().display()),
            "--cache".into(),
            ws.cache().display().to_string(),
            "--plain-http".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut daemon = Daemon {
            child: None,
            socket: ws.socket(),
            log: ws.dir.path().join("daemon.log"),
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        daemon.spawn();
        daemon
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = super::tugboat()
            .args(&self.args)
            // The node id comes from the environment, as from the downward API.
            .env("TUGBOAT_NODE_ID", "test-node")
            .env("TUGBOAT_LOG", "info,tugboat=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn tugboat node");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "tugboat node exited with {status}; log:\n{}",
                    self.log_text()
                );
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "tugboat node did not listen within 20 s; log:\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends `signal` and waits for the process to end; returns its exit status.
    pub fn stop_with(&mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("tugboat node ignored {signal}; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the same daemon again (same socket, cache and flags).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the daemon first");
        self.spawn();
    }

    pub async fn clients(&self) -> (IdentityClient<Channel>, NodeClient<Channel>) {
        let channel = connect(&self.socket).await;
        (
            IdentityClient::new(channel.clone()),
            NodeClient::new(channel),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A gRPC channel over the Unix socket (the URI is a placeholder tonic requires).
pub async fn connect(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .expect("connect to the CSI socket")
}

/// What kubelet sends for an inline ephemeral volume with `readOnly: true`.
pub fn publish_request(
    volume_id: &str,
    target: &Path,
    reference: &str,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: volume_id.to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(VolumeCapability {
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
            access_type: Some(AccessType::Mount(MountVolume::default())),
        }),
        readonly: true,
        volume_context: HashMap::from([
            ("reference".to_string(), reference.to_string()),
            (
                "csi.storage.k8s.io/ephemeral".to_string(),
                "true".to_string(),
            ),
            (
                "csi.storage.k8s.io/pod.namespace".to_string(),
                "default".to_string(),
            ),
            (
                "csi.storage.k8s.io/pod.name".to_string(),
                volume_id.to_string(),
            ),
        ]),
        ..Default::default()
    }
}

pub fn unpublish_request(volume_id: &str, target: &Path) -> NodeUnpublishVolumeRequest {
    NodeUnpublishVolumeRequest {
        volume_id: volume_id.to_string(),
        target_path: target.display().to_string(),
    }
}

/// `secrets` of a basic-auth Secret (`username`, `password`).
pub fn basic_secret(user: &str, pass: &str) -> HashMap<String, String> {
    HashMap::from([
        ("username".to_string(), user.to_string()),
        ("password".to_string(), pass.to_string()),
    ])
}

/// `secrets` of a `kubernetes.io/dockerconfigjson` Secret.
pub fn dockerconfig_secret(host: &str, user: &str, pass: &str) -> HashMap<String, String> {
    HashMap::from([(
        ".dockerconfigjson".to_string(),
        super::docker_config_json(host, user, pass),
    )])
}

/// Probe until the daemon reports ready.
pub async fn wait_probe_ready(identity: &mut IdentityClient<Channel>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = identity
            .probe(ProbeRequest {})
            .await
            .map(|r| r.into_inner().ready)
            .unwrap_or(None);
        if ready == Some(true) {
            return;
        }
        assert!(Instant::now() < deadline, "the daemon never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
