//! The node access policy through CSI: a real `tugboat node` on a Unix socket, a real
//! registry on loopback, real bind mounts. Namespaces come from kubelet's volume_context.

mod common;
#[path = "common/csi_client.rs"]
mod csi_client;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use csi_client::*;
use tonic::Code;
use tugboat::csi::proto::NodePublishVolumeRequest;

fn write_policy(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("policy.yaml");
    fs::write(&path, yaml).unwrap();
    path
}

fn in_namespace(
    volume: &str,
    target: &Path,
    reference: &str,
    namespace: &str,
) -> NodePublishVolumeRequest {
    let mut request = publish_request(volume, target, reference);
    request
        .volume_context
        .insert("csi.storage.k8s.io/pod.namespace".into(), namespace.into());
    request
}

fn push_dir(reg: &Registry, work: &Path, repo_tag: &str, size: usize, extra: &[&str]) -> String {
    let dir = work.join(format!("src-{}", repo_tag.replace(['/', ':'], "_")));
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("model.bin"),
        random_bytes(size, repo_tag.len() as u64),
    )
    .unwrap();
    let reference = reg.reference(repo_tag);
    push(&dir, &reference, extra).assert_ok("push");
    reference
}

/// A TCP listener that counts the connections it accepts.
fn counting_listener(ip: &str) -> (TcpListener, u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let (accepting, counter) = (listener.try_clone().unwrap(), count.clone());
    std::thread::spawn(move || {
        for stream in accepting.incoming() {
            if stream.is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (listener, port, count)
}

fn assert_refused(
    result: Result<tonic::Response<impl std::fmt::Debug>, tonic::Status>,
    needles: &[&str],
) {
    let status = result.expect_err("the publish must be refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "{needle:?} not in {:?}",
            status.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn namespaces_get_their_repositories_and_private_hosts_are_never_contacted() {
    if !can_mount() {
        return;
    }
    let reg = Registry::start();
    let ws = Workspace::new();
    let ml = push_dir(&reg, ws.dir.path(), "ml/tiny:v1", 100_000, &[]);
    let other = push_dir(&reg, ws.dir.path(), "other/tiny:v1", 100_000, &[]);
    let host = reg.host();
    let (_loop_listener, loop_port, loop_count) = counting_listener("127.0.0.1");
    let own_ip = tugboat::policy::hosts::node_addresses()
        .into_iter()
        .find(|ip| !ip.is_loopback() && ip.is_ipv4())
        .map(|ip| ip.to_string());
    let own = own_ip.as_deref().map(counting_listener);
    let policy = write_policy(
        ws.dir.path(),
        &format!(
            "access:\n  default: deny\n  rules:\n    - name: ml-team\n      namespaces: [ml-team]\n      references: ['{host}/ml/*']\n    - name: open\n      namespaces: [open]\n      references: ['**']\n"
        ),
    );
    let http = format!("127.0.0.1:{}", free_port());
    let daemon = Daemon::start(
        &ws,
        &[
            "--policy",
            &policy.display().to_string(),
            "--http-addr",
            &http,
        ],
    );
    let (_, mut node) = daemon.clients().await;

    let target = ws.target("allowed");
    node.node_publish_volume(in_namespace("allowed", &target, &ml, "ml-team"))
        .await
        .expect("ml-team may mount its repository");
    assert!(target.join("model.bin").is_file());

    let refused = ws.target("other-repo");
    assert_refused(
        node.node_publish_volume(in_namespace("other-repo", &refused, &other, "ml-team"))
            .await,
        &["\"default\"", "\"ml-team\"", "other/tiny"],
    );
    let elsewhere = ml.replace(&host, &format!("localhost:{}", reg.port()));
    assert_refused(
        node.node_publish_volume(in_namespace(
            "other-registry",
            &refused,
            &elsewhere,
            "ml-team",
        ))
        .await,
        &["\"default\"", "\"ml-team\""],
    );
    assert!(!refused.join("model.bin").exists());

    let mut private = vec![
        (format!("127.0.0.1:{loop_port}/ml/x:v1"), "loopback"),
        (
            "169.254.169.254/latest/meta-data:v1".to_string(),
            "link-local",
        ),
    ];
    if let (Some(ip), Some((_, port, _))) = (&own_ip, &own) {
        private.push((format!("{ip}:{port}/ml/x:v1"), "node's own addresses"));
    }
    for (i, (reference, why)) in private.iter().enumerate() {
        let target = ws.target(&format!("private-{i}"));
        let started = std::time::Instant::now();
        assert_refused(
            node.node_publish_volume(in_namespace(&format!("p{i}"), &target, reference, "open"))
                .await,
            &[why, "\"open\""],
        );
        // Refused before connecting: no connect timeout was waited for.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
    assert_eq!(
        loop_count.load(Ordering::SeqCst),
        0,
        "no connection to the loopback listener"
    );
    if let Some((_, _, count)) = &own {
        assert_eq!(
            count.load(Ordering::SeqCst),
            0,
            "no connection to the node's address"
        );
    } else {
        eprintln!("no non-loopback IPv4 address on this machine; the node-address case is skipped");
    }
    let log = daemon.log_text();
    assert!(
        log.contains("access policy: refused"),
        "decisions are logged"
    );
    let metrics = ureq::get(&format!("http://{http}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("tugboat_policy_refusals_total{reason=\"not_allowed\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "tugboat_policy_refusals_total{{reason=\"host\"}} {}",
            private.len()
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_larger_than_the_rule_allows_is_refused_before_any_blob() {
    if !can_mount() {
        return;
    }
    let reg = Registry::start();
    let ws = Workspace::new();
    let big = push_dir(&reg, ws.dir.path(), "ml/big:v1", 3 * 1024 * 1024, &[]);
    let policy = write_policy(
        ws.dir.path(),
        &format!(
            "access:\n  default: deny\n  rules:\n    - name: small-models\n      references: ['{}/ml/*']\n      maxModelSize: 1MiB\n",
            reg.host()
        ),
    );
    let daemon = Daemon::start(&ws, &["--policy", &policy.display().to_string()]);
    let (_, mut node) = daemon.clients().await;
    let mark = reg.mark();
    let target = ws.target("big");
    assert_refused(
        node.node_publish_volume(in_namespace("big", &target, &big, "ml"))
            .await,
        &["maxModelSize", "\"small-models\"", "\"ml\""],
    );
    assert!(
        reg.blob_gets_since(mark).is_empty(),
        "no blob was requested"
    );
    assert!(!target.join("model.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_credentials_only_where_a_rule_grants_them() {
    if !can_mount() {
        return;
    }
    let (user, pass) = ("node", "node-secret-pw");
    let reg = Registry::start_with_htpasswd(user, pass);
    let ws = Workspace::new();
    let config = ws.dir.path().join("node-docker.json");
    fs::write(&config, docker_config_json(&reg.host(), user, pass)).unwrap();
    let config_arg = config.display().to_string();
    let private = push_dir(
        &reg,
        ws.dir.path(),
        "ml/private:v1",
        50_000,
        &["--docker-config", &config_arg],
    );
    let policy = write_policy(
        ws.dir.path(),
        &format!(
            "access:\n  default: deny\n  rules:\n    - name: trusted\n      namespaces: [trusted]\n      references: ['{host}/ml/*']\n      nodeCredentials: true\n    - name: tenants\n      namespaces: ['*']\n      references: ['{host}/ml/*']\n",
            host = reg.host()
        ),
    );
    let daemon = Daemon::start(
        &ws,
        &[
            "--policy",
            &policy.display().to_string(),
            "--docker-config",
            &config_arg,
        ],
    );
    let (_, mut node) = daemon.clients().await;
    let tenant = ws.target("tenant");
    let status = node
        .node_publish_volume(in_namespace("tenant", &tenant, &private, "tenant"))
        .await
        .expect_err("without node credentials the registry refuses");
    assert!(
        matches!(
            status.code(),
            Code::PermissionDenied | Code::Unauthenticated
        ),
        "{status:?}"
    );
    let trusted = ws.target("trusted");
    node.node_publish_volume(in_namespace("trusted", &trusted, &private, "trusted"))
        .await
        .expect("the trusted namespace may use the node's credentials");
    assert!(trusted.join("model.bin").is_file());
    // Served from the cache now, the model is still refused to the tenant (tenancy).
    let again = ws.target("tenant-again");
    node.node_publish_volume(in_namespace("tenant2", &again, &private, "tenant"))
        .await
        .expect_err("a private cached model is not handed to a namespace without credentials");
}

#[path = "common/fault_proxy.rs"]
mod fault_proxy;

#[test]
fn redirects_to_private_hosts_are_refused_before_connecting() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    push_dir(&reg, root, "ml/tiny:v1", 100_000, &[]);
    let proxy = fault_proxy::FaultProxy::start(&reg.host());
    let (_listener, port, count) = counting_listener("127.0.0.1");
    proxy.add(fault_proxy::Rule::new(
        Some("GET"),
        "/blobs/",
        fault_proxy::Fault::Redirect(format!("http://localhost:{port}/v2/ml/tiny/blobs/x")),
    ));
    let policy = write_policy(
        root,
        &format!(
            "access:\n  default: deny\n  rules:\n    - name: proxy\n      references: ['{}/ml/*']\n",
            proxy.host()
        ),
    );
    let dest = root.join("dest");
    let out = pull(
        &proxy.reference("ml/tiny:v1"),
        &dest,
        None,
        &["--policy", &policy.display().to_string(), "--retries", "1"],
    );
    assert_eq!(out.code(), Some(3), "{}", out.stderr);
    assert!(out.stderr.contains("redirect"), "{}", out.stderr);
    assert!(out.stderr.contains("loopback"), "{}", out.stderr);
    assert_eq!(
        count.load(Ordering::SeqCst),
        0,
        "the redirect target was never contacted"
    );
    assert!(!dest.join("model.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_namespace_runs_at_most_its_cap_of_distinct_pulls() {
    if !can_mount() {
        return;
    }
    let reg = Registry::start();
    let ws = Workspace::new();
    let a = push_dir(&reg, ws.dir.path(), "ml/a:v1", 50_000, &[]);
    let b = push_dir(&reg, ws.dir.path(), "ml/b:v1", 60_000, &[]);
    let upstream = reg.host();
    // The proxy runs its own runtime: start it off this one.
    let proxy = std::thread::spawn(move || fault_proxy::FaultProxy::start(&upstream))
        .join()
        .unwrap();
    proxy.add(fault_proxy::Rule::new(
        Some("GET"),
        "/blobs/",
        fault_proxy::Fault::Hold,
    ));
    let (a, b) = (
        a.replace(&reg.host(), &proxy.host()),
        b.replace(&reg.host(), &proxy.host()),
    );
    let policy = write_policy(
        ws.dir.path(),
        &format!(
            "access:\n  default: deny\n  rules:\n    - name: capped\n      references: ['{}/ml/*']\n      maxConcurrentPulls: 1\n",
            proxy.host()
        ),
    );
    let daemon = Daemon::start(&ws, &["--policy", &policy.display().to_string()]);
    let (_, mut node) = daemon.clients().await;
    let (target_a, target_b, target_other) =
        (ws.target("a"), ws.target("b"), ws.target("other-ns"));
    let mut first = node.clone();
    let held = tokio::spawn({
        let (a, target_a) = (a.clone(), target_a.clone());
        async move {
            first
                .node_publish_volume(in_namespace("a", &target_a, &a, "team"))
                .await
        }
    });
    // Wait until the first pull is held at its blob.
    for _ in 0..200 {
        if !proxy.seen_matching("/blobs/").is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_refused(
        node.node_publish_volume(in_namespace("b", &target_b, &b, "team"))
            .await,
        &["maxConcurrentPulls", "\"capped\"", "\"team\""],
    );
    // Another namespace has its own slots (its pull waits at the proxy like the first).
    let mut other = node.clone();
    let other_pull = tokio::spawn({
        let (b, target_other) = (b.clone(), target_other.clone());
        async move {
            other
                .node_publish_volume(in_namespace("o", &target_other, &b, "elsewhere"))
                .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !other_pull.is_finished(),
        "the other namespace was not refused"
    );
    proxy.release();
    held.await.unwrap().expect("the first pull completes");
    other_pull
        .await
        .unwrap()
        .expect("the other namespace's pull completes");
    node.node_publish_volume(in_namespace("b", &target_b, &b, "team"))
        .await
        .expect("with the slot free, the second model is pulled");
}

#[test]
fn a_token_realm_on_a_private_host_is_refused_before_connecting() {
    let work = tempfile::tempdir().unwrap();
    let (_realm_listener, realm_port, realm_count) = counting_listener("127.0.0.1");
    // A registry that demands a token from a realm on loopback (like a metadata endpoint).
    let registry = TcpListener::bind("127.0.0.1:0").unwrap();
    let registry_host = format!("127.0.0.1:{}", registry.local_addr().unwrap().port());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut stream in registry.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let body = "{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}";
            let _ = write!(
                stream,
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://localhost:{realm_port}/token\",service=\"r\"\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let policy = write_policy(
        work.path(),
        &format!(
            "access:\n  default: deny\n  rules:\n    - name: named\n      references: ['{registry_host}/ml/*']\n"
        ),
    );
    let dest = work.path().join("dest");
    let out = pull(
        &format!("{registry_host}/ml/tiny:v1"),
        &dest,
        None,
        &["--policy", &policy.display().to_string(), "--retries", "1"],
    );
    assert_eq!(out.code(), Some(3), "{}", out.stderr);
    assert!(out.stderr.contains("token realm"), "{}", out.stderr);
    assert!(out.stderr.contains("loopback"), "{}", out.stderr);
    assert_eq!(
        realm_count.load(Ordering::SeqCst),
        0,
        "the realm was never contacted"
    );
}
