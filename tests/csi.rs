//! The CSI node plugin end to end, as root with real bind mounts: a real `tugboat node`
//! process on a Unix socket, a tonic client, and a real registry on loopback. Skipped (with a
//! message) where bind mounts are not permitted.

mod common;
#[path = "common/csi_client.rs"]
mod csi_client;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use csi_client::*;
use tonic::Code;
use tugboat::csi::proto::volume_capability::access_mode::Mode;
use tugboat::csi::proto::volume_capability::{AccessType, BlockVolume};
use tugboat::csi::proto::{
    GetPluginInfoRequest, NodeGetCapabilitiesRequest, NodeGetInfoRequest,
    NodeGetVolumeStatsRequest, NodePublishVolumeRequest, NodeStageVolumeRequest, ProbeRequest,
};

const MIB: u64 = 1024 * 1024;

/// Pushes a model of the given (name, size) files; returns (reference, [(name, local path, digest)]).
fn push_model(
    reg: &Registry,
    work: &Path,
    repo_tag: &str,
    files: &[(&str, u64)],
    extra: &[&str],
) -> (String, Vec<(String, PathBuf, String)>) {
    let dir = work.join(format!("src-{}", repo_tag.replace(['/', ':'], "_")));
    fs::create_dir_all(&dir).unwrap();
    let mut out = Vec::new();
    for (i, (name, size)) in files.iter().enumerate() {
        let path = dir.join(name);
        write_random_file(&path, *size, 7 + i as u64 + repo_tag.len() as u64 * 31);
        let digest = sha256_file(&path);
        out.push((name.to_string(), path, digest));
    }
    let reference = reg.reference(repo_tag);
    push(&dir, &reference, extra).assert_ok("tugboat push");
    (reference, out)
}

fn assert_model_at(target: &Path, files: &[(String, PathBuf, String)]) {
    let originals: Vec<(&str, &Path)> = files
        .iter()
        .map(|(n, p, _)| (n.as_str(), p.as_path()))
        .collect();
    assert_same_files(target, &originals);
}

fn assert_read_only(target: &Path) {
    let error = fs::write(target.join("new-file"), b"x").expect_err("a write must fail");
    assert_eq!(error.raw_os_error(), Some(nix::libc::EROFS), "{error}");
    let first = fs::read_dir(target)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let error = fs::OpenOptions::new()
        .append(true)
        .open(&first)
        .expect_err("appending must fail");
    assert!(
        matches!(
            error.raw_os_error(),
            Some(nix::libc::EROFS) | Some(nix::libc::EACCES)
        ),
        "{error}"
    );
}

fn mount_flags(ws: &Workspace, target: &Path) -> String {
    let target = fs::canonicalize(target).unwrap();
    let mounts: Vec<_> = ws
        .mounts()
        .into_iter()
        .filter(|m| m.mount_point == target)
        .collect();
    assert_eq!(mounts.len(), 1, "exactly one mount at {}", target.display());
    mounts[0].options.clone()
}

fn leases(ws: &Workspace) -> Vec<tugboat::cache::Lease> {
    tugboat::cache::Cache::open(ws.cache())
        .unwrap()
        .leases()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_volumes_of_one_model_read_only_one_download_idempotent() {
    if !can_mount() {
        return;
    }
    let reg = Registry::start();
    let ws = Workspace::new();
    let (reference, files) = push_model(
        &reg,
        ws.dir.path(),
        "models/tiny:v1",
        &[("model.gguf", 3 * MIB), ("config.json", 2000)],
        &[],
    );
    let daemon = Daemon::start(&ws, &[]);
    let (mut identity, mut node) = daemon.clients().await;

    let info = identity
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "model.csi.tugboat.io");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    wait_probe_ready(&mut identity).await;
    let node_info = node
        .node_get_info(NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(node_info.node_id, "test-node");
    let caps = node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        caps.capabilities.len(),
        1,
        "GET_VOLUME_STATS only, no staging"
    );

    let (a, b) = (ws.target("pod-a"), ws.target("pod-b"));
    node.node_publish_volume(publish_request("vol-a", &a, &reference))
        .await
        .unwrap();
    node.node_publish_volume(publish_request("vol-b", &b, &reference))
        .await
        .unwrap();
    for target in [&a, &b] {
        assert_model_at(target, &files);
        assert_read_only(target);
        let flags = mount_flags(&ws, target);
        for flag in ["ro", "nosuid", "nodev"] {
            assert!(
                flags.split(',').any(|f| f == flag),
                "{flag} missing in {flags}"
            );
        }
    }
    for (_, _, digest) in &files {
        assert_eq!(reg.blob_get_count(digest), 1, "blob {digest} served once");
    }
    assert_eq!(leases(&ws).len(), 2);

    let stats = node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: "vol-a".into(),
            volume_path: a.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.usage[0].used as u64, 3 * MIB + 2000);

    // A repeated publish is a no-op: no second mount, no registry request.
    let mark = reg.mark();
    node.node_publish_volume(publish_request("vol-a", &a, &reference))
        .await
        .unwrap();
    mount_flags(&ws, &a);
    assert!(
        reg.requests_since(mark).is_empty(),
        "a repeat must not ask the registry"
    );
    assert_eq!(leases(&ws).len(), 2);

    for (volume, target) in [("vol-a", &a), ("vol-b", &b)] {
        node.node_unpublish_volume(unpublish_request(volume, target))
            .await
            .unwrap();
        assert!(!target.exists(), "unpublish removes the target directory");
    }
    assert!(ws.mounts().is_empty(), "no mounts left: {:?}", ws.mounts());
    assert!(leases(&ws).is_empty());
    // Repeats are no-ops too.
    node.node_unpublish_volume(unpublish_request("vol-a", &a))
        .await
        .unwrap();
    node.node_unpublish_volume(unpublish_request("vol-b", &b))
        .await
        .unwrap();
    assert!(ws.mounts().is_empty());
    // The model stays in the cache: publishing again downloads nothing.
    node.node_publish_volume(publish_request("vol-c", &ws.target("pod-c"), &reference))
        .await
        .unwrap();
    assert_model_at(&ws.target("pod-c"), &files);
    node.node_unpublish_volume(unpublish_request("vol-c", &ws.target("pod-c")))
        .await
        .unwrap();
    for (_, _, digest) in &files {
        assert_eq!(reg.blob_get_count(digest), 1);
    }
    assert!(ws.mounts().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_publishes_start_one_download() {
    if !can_mount() {
        return;
    }
    let reg = Registry::start();
    let ws = Workspace::new();
    let (reference, files) = push_model(
        &reg,
        ws.dir.path(),
        "models/crowd:v1",
        &[
            ("weights.bin", 48 * MIB),
            ("a.json", 10_000),
            ("b.txt", 300),
        ],
        &[],
    );
    let daemon = Daemon::start(&ws, &[]);
    let (_, node) = daemon.clients().await;
    let mut calls = Vec::new();
    for i in 0..16 {
        let mut node = node.clone();
        let (volume, target) = (format!("vol-{i}"), ws.target(&format!("pod-{i}")));
        let reference = reference.clone();
        calls.push(tokio::spawn(async move {
            node.node_publish_volume(publish_request(&volume, &target, &reference))
                .await
                .map(|_| target)
        }));
    }
    let mut targets = Vec::new();
    for call in calls {
        targets.push(call.await.unwrap().expect("publish"));
    }
    for target in &targets {
        assert_model_at(target, &files);
    }
    for (name, _, digest) in &files {
        assert_eq!(reg.blob_get_count(digest), 1, "{name} downloaded once");
    }
    let log = daemon.log_text();
    assert!(log.contains("joined a pull already under way"), "{log}");
    let mut node = node.clone();
    for (i, target) in targets.iter().enumerate() {
        node.node_unpublish_volume(unpublish_request(&format!("vol-{i}"), target))
            .await
            .unwrap();
    }
    assert!(ws.mounts().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pull_past_the_deadline_continues_and_the_retry_joins_it() {
    if !can_mount() {
        return;
    }
    let reg = Registry::start();
    let ws = Workspace::new();
    let (reference, files) = push_model(
        &reg,
        ws.dir.path(),
        "models/slow:v1",
        &[("big.bin", 160 * MIB)],
        &[],
    );
    let daemon = Daemon::start(&ws, &[]);
    let (_, mut node) = daemon.clients().await;
    let target = ws.target("pod-slow");
    let mut first = tonic::Request::new(publish_request("vol-slow", &target, &reference));
    first.set_timeout(Duration::from_millis(150));
    let status = node
        .node_publish_volume(first)
        .await
        .expect_err("the first call gives up at its deadline");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    // kubelet retries; an ABORTED (previous call still winding down) is retried too.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match node
            .node_publish_volume(publish_request("vol-slow", &target, &reference))
            .await
        {
            Ok(_) => break,
            Err(s) if s.code() == Code::Aborted && attempts < 50 => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(s) => panic!("retry failed: {s:?}\n{}", daemon.log_text()),
        }
    }
    assert_model_at(&target, &files);
    let log = daemon.log_text();
    assert!(
        log.contains("joined a pull already under way"),
        "the retry must join the running pull:\n{log}"
    );
    assert_eq!(
        reg.blob_get_count(&files[0].2),
        1,
        "the retry joined the running download instead of starting another"
    );
    node.node_unpublish_volume(unpublish_request("vol-slow", &target))
        .await
        .unwrap();
    assert!(ws.mounts().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_and_restart_keep_mounts_and_rebuild_leases() {
    if !can_mount() {
        return;
    }
    let reg = Registry::start();
    let ws = Workspace::new();
    let (reference, files) = push_model(
        &reg,
        ws.dir.path(),
        "models/survivor:v1",
        &[("w.bin", 2 * MIB), ("c.json", 500)],
        &[],
    );
    let mut daemon = Daemon::start(&ws, &[]);
    let (_, mut node) = daemon.clients().await;
    let (a, b) = (ws.target("pod-a"), ws.target("pod-b"));
    node.node_publish_volume(publish_request("vol-a", &a, &reference))
        .await
        .unwrap();
    node.node_publish_volume(publish_request("vol-b", &b, &reference))
        .await
        .unwrap();
    let status = daemon.stop_with(nix::sys::signal::Signal::SIGKILL);
    assert!(!status.success());

    // Odd state a crash can leave: a lease whose mount never happened, and a mount of a
    // snapshot whose lease was lost.
    let cache = tugboat::cache::Cache::open(ws.cache()).unwrap();
    let snapshot = cache.leases().unwrap()[0].snapshot.clone();
    let mut stale = cache.leases().unwrap()[0].clone();
    stale.holder = "csi~vol-ghost~0000".into();
    stale.target = Some(ws.target("pod-ghost"));
    stale.labels.insert("volume_id".into(), "vol-ghost".into());
    cache.take_lease(&stale).unwrap();
    let orphan = ws.target("pod-orphan");
    fs::create_dir_all(&orphan).unwrap();
    tugboat::csi::mount::bind_read_only(&cache.snapshot_dir(&snapshot), &orphan).unwrap();
    assert_eq!(cache.leases().unwrap().len(), 3);

    // The mounts outlive the daemon.
    assert_model_at(&a, &files);
    assert_model_at(&b, &files);

    daemon.restart();
    let (mut identity, mut node) = daemon.clients().await;
    wait_probe_ready(&mut identity).await;
    let rebuilt = cache.leases().unwrap();
    let targets: Vec<PathBuf> = rebuilt.iter().filter_map(|l| l.target.clone()).collect();
    assert_eq!(rebuilt.len(), 3, "{rebuilt:?}");
    assert!(targets.contains(&a) && targets.contains(&b));
    assert!(
        targets
            .iter()
            .any(|t| fs::canonicalize(t).ok() == fs::canonicalize(&orphan).ok()),
        "the orphan mount is adopted"
    );
    assert!(
        !targets.contains(&ws.target("pod-ghost")),
        "the stale lease is dropped"
    );
    assert!(
        cache.is_leased(&snapshot).unwrap(),
        "GC must see the snapshot as leased"
    );
    let log = daemon.log_text();
    assert!(log.contains("leases rebuilt"), "{log}");

    // GC, where it exists, leaves leased snapshots alone, whatever the pressure.
    let gc = run(
        tugboat()
            .args(["cache", "gc", "--max-size", "1KiB", "--cache"])
            .arg(ws.cache()),
        TIMEOUT,
    );
    if gc.stderr.contains("unrecognized") {
        eprintln!(
            "note: `tugboat cache gc` is not available yet ({})",
            gc.stderr.trim()
        );
    } else {
        assert_model_at(&a, &files);
        assert!(
            cache.snapshot(&snapshot).unwrap().is_some(),
            "GC removed a leased snapshot:\n{}\n{}",
            gc.stdout,
            gc.stderr
        );
    }

    // The restarted daemon serves the same volumes: repeat publish is a no-op, unpublish works.
    node.node_publish_volume(publish_request("vol-a", &a, &reference))
        .await
        .unwrap();
    // kubelet publishing the adopted mount's volume again makes the lease that volume's own.
    node.node_publish_volume(publish_request("vol-orphan", &orphan, &reference))
        .await
        .unwrap();
    let claimed = cache.leases().unwrap();
    assert_eq!(claimed.len(), 3);
    assert!(claimed
        .iter()
        .any(|l| l.labels.get("volume_id").map(String::as_str) == Some("vol-orphan")));
    for (volume, target) in [("vol-a", &a), ("vol-b", &b), ("vol-orphan", &orphan)] {
        node.node_unpublish_volume(unpublish_request(volume, target))
            .await
            .unwrap();
    }
    assert!(ws.mounts().is_empty(), "{:?}", ws.mounts());
    assert!(cache.leases().unwrap().is_empty());
    assert!(!cache.is_leased(&snapshot).unwrap());

    // SIGTERM: graceful stop, mounts kept.
    node.node_publish_volume(publish_request("vol-a", &a, &reference))
        .await
        .unwrap();
    let status = daemon.stop_with(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "graceful exit on SIGTERM: {status}");
    assert_model_at(&a, &files);
    assert!(
        !daemon.socket.exists(),
        "the socket is removed on a clean stop"
    );
    daemon.restart();
    let (_, mut node) = daemon.clients().await;
    node.node_unpublish_volume(unpublish_request("vol-a", &a))
        .await
        .unwrap();
    assert!(ws.mounts().is_empty());
    for (_, _, digest) in &files {
        assert_eq!(reg.blob_get_count(digest), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_requests_get_the_spec_codes() {
    if !can_mount() {
        return;
    }
    let reg = Registry::start();
    let ws = Workspace::new();
    let (reference, _) = push_model(
        &reg,
        ws.dir.path(),
        "models/codes:v1",
        &[("f.bin", 1000)],
        &[],
    );
    let daemon = Daemon::start(&ws, &[]);
    let (_, mut node) = daemon.clients().await;
    let target = ws.target("pod");
    let valid = || publish_request("vol", &target, &reference);

    let mut cases: Vec<(&str, NodePublishVolumeRequest, Code)> = Vec::new();
    let mut r = valid();
    r.volume_id.clear();
    cases.push(("missing volume id", r, Code::InvalidArgument));
    let mut r = valid();
    r.target_path.clear();
    cases.push(("missing target path", r, Code::InvalidArgument));
    let mut r = valid();
    r.volume_capability = None;
    cases.push(("missing capability", r, Code::InvalidArgument));
    let mut r = valid();
    r.volume_capability.as_mut().unwrap().access_mode = None;
    cases.push(("missing access mode", r, Code::InvalidArgument));
    let mut r = valid();
    r.volume_capability.as_mut().unwrap().access_type = Some(AccessType::Block(BlockVolume {}));
    cases.push((
        "block access exceeds capabilities",
        r,
        Code::FailedPrecondition,
    ));
    let mut r = valid();
    r.readonly = false;
    cases.push(("writable exceeds capabilities", r, Code::FailedPrecondition));
    let mut r = valid();
    r.volume_context.remove("reference");
    cases.push(("missing reference", r, Code::InvalidArgument));
    let mut r = valid();
    r.volume_context
        .insert("reference".into(), "UPPER/case:bad tag".into());
    cases.push(("unparseable reference", r, Code::InvalidArgument));
    let mut r = valid();
    r.volume_context
        .insert("reference".into(), reg.reference("models/absent:v1"));
    cases.push(("model does not exist", r, Code::NotFound));
    let mut r = valid();
    r.volume_context.insert("pullPolicy".into(), "Never".into());
    r.volume_context
        .insert("reference".into(), reg.reference("models/uncached:v1"));
    cases.push(("not cached with pullPolicy Never", r, Code::NotFound));
    let mut r = valid();
    r.volume_context
        .insert("subPath".into(), "../../etc".into());
    cases.push(("subPath leaving the model", r, Code::InvalidArgument));
    let mut r = valid();
    r.volume_context
        .insert("subPath".into(), "no/such/dir".into());
    cases.push(("subPath not in the model", r, Code::NotFound));
    for (what, request, code) in cases {
        let status = node.node_publish_volume(request).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
    }
    assert!(ws.mounts().is_empty(), "no failed publish leaves a mount");
    assert!(leases(&ws).is_empty(), "no failed publish leaves a lease");

    // Published, then asked again with other parameters: ALREADY_EXISTS.
    node.node_publish_volume(valid()).await.unwrap();
    let mut other = valid();
    other.volume_capability.as_mut().unwrap().access_mode =
        Some(tugboat::csi::proto::volume_capability::AccessMode {
            mode: Mode::SingleNodeReaderOnly as i32,
        });
    let status = node.node_publish_volume(other).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    // The same single-node volume at a second target: FAILED_PRECONDITION.
    let second = publish_request("vol", &ws.target("pod-2"), &reference);
    let status = node.node_publish_volume(second).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    // ... but a MULTI_NODE_READER_ONLY volume (a static PV) may be published twice, and its
    // volumeHandle may carry the reference.
    let mut pv1 = publish_request(&reference, &ws.target("pv-1"), &reference);
    pv1.volume_context.clear();
    pv1.volume_capability.as_mut().unwrap().access_mode =
        Some(tugboat::csi::proto::volume_capability::AccessMode {
            mode: Mode::MultiNodeReaderOnly as i32,
        });
    pv1.readonly = false;
    let mut pv2 = pv1.clone();
    pv2.target_path = ws.target("pv-2").display().to_string();
    node.node_publish_volume(pv1).await.unwrap();
    node.node_publish_volume(pv2).await.unwrap();
    assert!(ws.target("pv-2").join("f.bin").is_file());

    // Unpublish: missing fields are INVALID_ARGUMENT.
    let status = node
        .node_unpublish_volume(unpublish_request("", &target))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = node
        .node_unpublish_volume(unpublish_request("vol", Path::new("")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // Volume stats of something not published: NOT_FOUND.
    let status = node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: "nope".into(),
            volume_path: ws.target("nope").display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // ... and so are a published volume asked about at another path, at a relative path (as
    // csi-sanity asks), or a published path asked about under another volume id.
    for (volume_id, volume_path) in [
        (
            "vol".to_string(),
            ws.target("elsewhere").display().to_string(),
        ),
        ("vol".to_string(), "some/path".to_string()),
        ("other-vol".to_string(), target.display().to_string()),
    ] {
        let status = node
            .node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: volume_id.clone(),
                volume_path: volume_path.clone(),
                staging_target_path: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::NotFound,
            "stats of {volume_id} at {volume_path}: {status:?}"
        );
    }
    // The published one itself has figures.
    let stats = node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: "vol".into(),
            volume_path: target.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.usage[0].used, 1000);
    // Staging is not offered.
    let status = node
        .node_stage_volume(NodeStageVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    // Neither are unstaging nor expansion (the capabilities say so).
    let status = node
        .node_unstage_volume(tugboat::csi::proto::NodeUnstageVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    let status = node
        .node_expand_volume(tugboat::csi::proto::NodeExpandVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    // Unpublishing what was never published is OK: the RPC is idempotent, and kubelet repeats
    // it after a restart (a model volume has no existence apart from its publications).
    node.node_unpublish_volume(unpublish_request("never", &ws.target("never")))
        .await
        .unwrap();

    for (volume, t) in [
        ("vol", target.clone()),
        (reference.as_str(), ws.target("pv-1")),
        (reference.as_str(), ws.target("pv-2")),
    ] {
        node.node_unpublish_volume(unpublish_request(volume, &t))
            .await
            .unwrap();
    }
    assert!(ws.mounts().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_models_need_the_pods_own_credentials() {
    if !can_mount() {
        return;
    }
    let (user, pass) = ("robot$ml", "s3cret-Pa55");
    let reg = Registry::start_with_htpasswd(user, pass);
    let ws = Workspace::new();
    let config = ws.dir.path().join("push-config.json");
    fs::write(&config, docker_config_json(&reg.host(), user, pass)).unwrap();
    let config_arg = config.display().to_string();
    let (reference, files) = push_model(
        &reg,
        ws.dir.path(),
        "private/llm:v1",
        &[("weights.gguf", 4 * MIB), ("tokenizer.json", 3000)],
        &["--docker-config", &config_arg],
    );
    // The daemon itself has no credentials: only the pods' secrets do.
    let daemon = Daemon::start(&ws, &[]);
    let (_, mut node) = daemon.clients().await;
    let with_secrets = |volume: &str, secrets: HashMap<String, String>| {
        let mut request = publish_request(volume, &ws.target(volume), &reference);
        request.secrets = secrets;
        request
    };

    // Without credentials, nothing cached yet: the registry's 401 is UNAUTHENTICATED, naming
    // the registry.
    let status = node
        .node_publish_volume(with_secrets("pod-nocreds", HashMap::new()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains(&reg.host()),
        "{}",
        status.message()
    );

    // Pod A: credentials only in `secrets` (a .dockerconfigjson): mounted.
    node.node_publish_volume(with_secrets(
        "pod-a",
        dockerconfig_secret(&reg.host(), user, pass),
    ))
    .await
    .unwrap();
    assert_model_at(&ws.target("pod-a"), &files);
    let cache = tugboat::cache::Cache::open(ws.cache()).unwrap();
    let lease = &cache.leases().unwrap()[0];
    assert!(cache.is_private(&lease.snapshot).unwrap(), "marked private");

    // Pod B without credentials, then with wrong ones: refused although the bytes are cached.
    for (volume, secrets) in [
        ("pod-b", HashMap::new()),
        ("pod-b-wrong", basic_secret(user, "wrong-password")),
    ] {
        let status = node
            .node_publish_volume(with_secrets(volume, secrets))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{volume}: {status:?}"
        );
        assert!(
            status.message().contains(&reg.host()),
            "{}",
            status.message()
        );
        assert!(status.message().contains("private"), "{}", status.message());
        assert!(!status.message().contains("wrong-password"));
        assert!(!ws.target(volume).join("weights.gguf").exists());
    }

    // Pod C with valid credentials (username/password form): mounted without a second download.
    node.node_publish_volume(with_secrets("pod-c", basic_secret(user, pass)))
        .await
        .unwrap();
    assert_model_at(&ws.target("pod-c"), &files);
    for (_, _, digest) in &files {
        assert_eq!(
            reg.blob_get_count(digest),
            1,
            "cached bytes reused for pod C"
        );
    }

    // `tugboat pull` on the same shared cache follows the same rule.
    let dest = ws.dir.path().join("init-container");
    let refused = pull(&reference, &dest, Some(&ws.cache()), &[]);
    refused.assert_code(3, "pull of a private cached model without credentials");
    assert!(refused.stderr.contains("private"), "{}", refused.stderr);
    let allowed = pull(
        &reference,
        &dest,
        Some(&ws.cache()),
        &["--docker-config", &config_arg],
    );
    allowed.assert_ok("pull with valid credentials");
    assert_model_at(&dest, &files);
    for (_, _, digest) in &files {
        assert_eq!(reg.blob_get_count(digest), 1);
    }
    let log = daemon.log_text();
    assert!(
        !log.contains(pass) && !log.contains("wrong-password"),
        "secrets in the log"
    );

    for volume in ["pod-a", "pod-c"] {
        node.node_unpublish_volume(unpublish_request(volume, &ws.target(volume)))
            .await
            .unwrap();
    }
    assert!(ws.mounts().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_and_socket_permissions() {
    if !can_mount() {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let ws = Workspace::new();
    // A stale socket file from a previous run is replaced.
    fs::create_dir_all(ws.socket().parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(ws.socket()).unwrap());
    let daemon = Daemon::start(&ws, &["--driver-name", "models.example.com"]);
    let mode = fs::metadata(&daemon.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (mut identity, _) = daemon.clients().await;
    let probe = identity.probe(ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));
    let info = identity
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "models.example.com");
}

/// KServe-style and OCI-style prefixes where a CSI volume names its model: an inline volume's
/// `volumeAttributes.reference` and a static PV's `volumeHandle` (no attributes). Both name the
/// same cached model as the plain reference: one download.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefixed_references_in_volume_attributes_and_pv_handles() {
    if !can_mount() {
        return;
    }
    let reg = Registry::start();
    let ws = Workspace::new();
    let (reference, files) = push_model(
        &reg,
        ws.dir.path(),
        "models/prefixed:v1",
        &[("model.gguf", MIB)],
        &[],
    );
    let daemon = Daemon::start(&ws, &[]);
    let (mut identity, mut node) = daemon.clients().await;
    wait_probe_ready(&mut identity).await;

    let inline = ws.target("pod-inline");
    node.node_publish_volume(publish_request(
        "vol-inline",
        &inline,
        &format!("oci://{reference}"),
    ))
    .await
    .unwrap();
    assert_model_at(&inline, &files);

    let pv = ws.target("pod-pv");
    let handle = format!("tugboat://{reference}");
    let mut request = publish_request(&handle, &pv, "");
    request.volume_context.clear();
    node.node_publish_volume(request).await.unwrap();
    assert_model_at(&pv, &files);
    assert_eq!(
        reg.blob_get_count(&files[0].2),
        1,
        "one download for both spellings"
    );

    // A scheme tugboat does not fetch is INVALID_ARGUMENT with what to use instead.
    let refused = node
        .node_publish_volume(publish_request(
            "vol-hf",
            &ws.target("pod-hf"),
            "hf://Qwen/Qwen2.5-0.5B",
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("kit import"),
        "{}",
        refused.message()
    );

    for (volume, target) in [("vol-inline", &inline), (handle.as_str(), &pv)] {
        node.node_unpublish_volume(unpublish_request(volume, target))
            .await
            .unwrap();
    }
    assert!(ws.mounts().is_empty(), "{:?}", ws.mounts());
}
