//! What many pods cost a warm node and its registry: N CSI publishes of one private model
//! (htpasswd registry, credentials only in each pod's secret) through a counting proxy, so the
//! connections and authentication round trips the daemon makes are counted, with per-publish
//! latency and the daemon's RSS printed. The figures are reported by bench/publish.sh (the
//! `#[ignore]`d run); the small run asserts what must hold: one connection pool and one
//! authentication for any number of pods sharing a secret. Needs root (bind mounts).

mod common;
#[path = "common/counting_proxy.rs"]
mod counting_proxy;
#[path = "common/csi_client.rs"]
mod csi_client;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use counting_proxy::CountingProxy;
use csi_client::*;

const MIB: u64 = 1024 * 1024;

struct Figures {
    connections: usize,
    requests: usize,
    auth_requests: usize,
    token_requests: usize,
    latencies: Vec<Duration>,
    rss_kib: u64,
}

fn rss_kib(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Publishes `count` volumes of one private model on a node whose cache already has it, from
/// a registry with basic auth (htpasswd) or bearer tokens (`token`).
async fn warm_publishes(count: usize, policy: &str, token: bool) -> Figures {
    let (user, pass) = ("robot$ml", "s3cret-Pa55");
    let reg = if token {
        Registry::start_with_token(user, pass)
    } else {
        Registry::start_with_htpasswd(user, pass)
    };
    let proxy = CountingProxy::start(&reg.host());
    let ws = Workspace::new();
    let src = ws.dir.path().join("model");
    fs::create_dir_all(&src).unwrap();
    write_random_file(&src.join("weights.gguf"), 4 * MIB, 3);
    fs::write(src.join("config.json"), b"{}").unwrap();
    let config = ws.dir.path().join("push-config.json");
    fs::write(&config, docker_config_json(&reg.host(), user, pass)).unwrap();
    push(
        &src,
        &reg.reference("private/llm:v1"),
        &["--docker-config", &config.display().to_string()],
    )
    .assert_ok("push");
    let reference = format!("{}/private/llm:v1", proxy.host());

    let daemon = Daemon::start(&ws, &[]);
    let (_, mut node) = daemon.clients().await;
    let request = |volume: &str| {
        let mut request = publish_request(volume, &ws.target(volume), &reference);
        request.secrets = basic_secret(user, pass);
        request
            .volume_context
            .insert("pullPolicy".into(), policy.into());
        request
    };
    // Warm the node: the first publish downloads the model.
    node.node_publish_volume(request("warm-up")).await.unwrap();
    let (connections, requests) = (proxy.connections(), proxy.requests().len());
    let auth = proxy.auth_requests();
    let tokens = reg.token_requests();

    let mut latencies = Vec::new();
    for i in 0..count {
        let volume = format!("pod-{i}");
        let started = Instant::now();
        node.node_publish_volume(request(&volume)).await.unwrap();
        latencies.push(started.elapsed());
    }
    let figures = Figures {
        connections: proxy.connections() - connections,
        requests: proxy.requests().len() - requests,
        auth_requests: proxy.auth_requests() - auth,
        token_requests: reg.token_requests() - tokens,
        latencies,
        rss_kib: rss_kib(daemon.pid()),
    };
    for i in 0..count {
        let volume = format!("pod-{i}");
        node.node_unpublish_volume(unpublish_request(&volume, &ws.target(&volume)))
            .await
            .unwrap();
    }
    node.node_unpublish_volume(unpublish_request("warm-up", &ws.target("warm-up")))
        .await
        .unwrap();
    figures
}

fn report(label: &str, count: usize, figures: &mut Figures) {
    figures.latencies.sort();
    println!(
        "{label}: {count} warm publishes: {} connections opened, {} requests, {} auth round trips, \
         {} token requests; latency p50 {:.1} ms, p99 {:.1} ms; daemon RSS {} KiB with {count} volumes published",
        figures.connections,
        figures.requests,
        figures.auth_requests,
        figures.token_requests,
        percentile(&figures.latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&figures.latencies, 0.99).as_secs_f64() * 1e3,
        figures.rss_kib,
    );
}

/// The measurement bench/publish.sh reports: 50 publishes under each pull policy, and the
/// daemon's RSS with 200 volumes published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by bench/publish.sh"]
async fn publish_load_figures() {
    if !can_mount() {
        return;
    }
    for (auth, token) in [("htpasswd", false), ("token", true)] {
        for policy in ["IfNotPresent", "Always"] {
            let mut figures = warm_publishes(50, policy, token).await;
            report(&format!("{auth} {policy}"), 50, &mut figures);
        }
    }
    let mut figures = warm_publishes(200, "IfNotPresent", false).await;
    report("htpasswd IfNotPresent", 200, &mut figures);
}

/// Pods sharing one secret share the daemon's connections and its authentication: ten warm
/// publishes that each ask the registry (`pullPolicy: Always`) open no new connection and make
/// no new authentication round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_publishes_share_one_pool_and_one_authentication() {
    if !can_mount() {
        return;
    }
    for (auth, token) in [("htpasswd", false), ("token", true)] {
        let mut figures = warm_publishes(10, "Always", token).await;
        report(&format!("{auth} Always"), 10, &mut figures);
        assert_eq!(
            figures.requests, 10,
            "{auth}: one tag resolution per publish"
        );
        assert_eq!(
            figures.auth_requests, 0,
            "{auth}: the challenge is learned once"
        );
        assert_eq!(
            figures.token_requests, 0,
            "{auth}: one cached token serves every pod"
        );
        assert!(
            figures.connections <= 1,
            "{auth}: {} connections opened for 10 publishes",
            figures.connections
        );
    }
}
