//! Node labels end to end, with a stand-in for the apiserver's two Node endpoints (GET and
//! merge PATCH of a Node's metadata, as kube-rs sends them) so the suite needs no cluster;
//! bench/advertise.sh runs the same against a real kube-apiserver. The daemon (`tugboat node
//! --advertise on --kubeconfig ...`) labels the Node with what its cache holds (warm list,
//! `tugboat pull --cache`), drops labels when `cache gc` or `cache rm` removes a model,
//! reconciles hand edits at start, batches changes, sends nothing in steady state, survives
//! a failing apiserver, and is off (saying so once) without a cluster.

mod common;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use tugboat::advertise::keys;
use tugboat::reference::Reference;

const NODE: &str = "node-a";

#[derive(Default)]
struct Node {
    labels: BTreeMap<String, String>,
    /// (method, path and query, body) of every request.
    requests: Vec<(String, String, Value)>,
    /// Answer PATCH with 500.
    fail_patches: bool,
    resource_version: u64,
}

type Shared = Arc<Mutex<Node>>;

/// A JSON body, as the apiserver answers.
struct Json(Value);

impl axum::response::IntoResponse for Json {
    fn into_response(self) -> axum::response::Response {
        let content_type = [(axum::http::header::CONTENT_TYPE, "application/json")];
        (content_type, self.0.to_string()).into_response()
    }
}

fn metadata(node: &Node) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": {
            "name": NODE,
            "resourceVersion": node.resource_version.to_string(),
            "labels": node.labels,
        }
    })
}

fn not_found(name: &str) -> (StatusCode, Json) {
    (
        StatusCode::NOT_FOUND,
        Json(json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": format!("nodes \"{name}\" not found"), "reason": "NotFound", "code": 404
        })),
    )
}

async fn get_node(
    State(node): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> (StatusCode, Json) {
    let mut node = node.lock().unwrap();
    node.requests
        .push(("GET".into(), format!("/api/v1/nodes/{name}"), Value::Null));
    if name != NODE {
        return not_found(&name);
    }
    (StatusCode::OK, Json(metadata(&node)))
}

async fn patch_node(
    State(node): State<Shared>,
    UrlPath(name): UrlPath<String>,
    headers: axum::http::HeaderMap,
    body: String,
) -> (StatusCode, Json) {
    let mut node = node.lock().unwrap();
    let patch: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    node.requests.push((
        "PATCH".into(),
        format!("/api/v1/nodes/{name}"),
        patch.clone(),
    ));
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/merge-patch+json"),
        "a JSON merge patch"
    );
    if name != NODE {
        return not_found(&name);
    }
    if node.fail_patches {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500}),
            ),
        );
    }
    // Only metadata.labels is ever patched.
    let object = patch.as_object().expect("patch object");
    assert_eq!(object.keys().collect::<Vec<_>>(), ["metadata"], "{patch}");
    let meta = object["metadata"].as_object().unwrap();
    assert_eq!(meta.keys().collect::<Vec<_>>(), ["labels"], "{patch}");
    for (key, value) in meta["labels"].as_object().unwrap() {
        match value {
            Value::Null => {
                node.labels.remove(key);
            }
            Value::String(v) => {
                assert!(keys::valid_label_key(key), "{key}");
                assert!(keys::valid_label_text(v), "{key}={v}");
                node.labels.insert(key.clone(), v.clone());
            }
            other => panic!("label {key}: {other}"),
        }
    }
    node.resource_version += 1;
    (StatusCode::OK, Json(metadata(&node)))
}

/// The stand-in apiserver on a loopback port, serving one Node.
struct Apiserver {
    node: Shared,
    port: u16,
}

impl Apiserver {
    fn start(labels: &[(&str, &str)]) -> Apiserver {
        let node: Shared = Arc::new(Mutex::new(Node {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            resource_version: 1,
            ..Node::default()
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new()
            .route("/api/v1/nodes/{name}", get(get_node).patch(patch_node))
            .with_state(node.clone());
        thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        Apiserver { node, port }
    }

    fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"http://127.0.0.1:{}\"}}\n\
                 users:\n- name: test\n  user: {{token: test-token}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\n\
                 current-context: test\n",
                self.port
            ),
        )
        .unwrap();
        path
    }

    fn labels(&self) -> BTreeMap<String, String> {
        self.node.lock().unwrap().labels.clone()
    }

    fn owned(&self) -> BTreeMap<String, String> {
        self.labels()
            .into_iter()
            .filter(|(k, _)| keys::is_owned(k))
            .collect()
    }

    fn requests(&self) -> Vec<(String, String, Value)> {
        self.node.lock().unwrap().requests.clone()
    }

    fn edit(&self, f: impl FnOnce(&mut Node)) {
        f(&mut self.node.lock().unwrap());
    }
}

struct Daemon {
    child: Child,
    log: PathBuf,
    http: String,
}

impl Daemon {
    fn start(work: &Path, cache: &Path, warm: &Path, extra: &[&str]) -> Daemon {
        let port = free_port();
        let log = work.join(format!("daemon-{port}.log"));
        let mut cmd = tugboat();
        cmd.arg("node")
            .arg("--csi-endpoint")
            .arg(format!(
                "unix://{}",
                work.join(format!("csi-{port}.sock")).display()
            ))
            .args(["--node-id", NODE, "--plain-http", "--gc-interval", "3600"])
            .arg("--cache")
            .arg(cache)
            .arg("--warm-config")
            .arg(warm)
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().expect("start tugboat node");
        let daemon = Daemon {
            child,
            log,
            http: format!("http://127.0.0.1:{port}"),
        };
        daemon.wait_for("/readyz answers", Duration::from_secs(30), || {
            ureq::get(&format!("{}/readyz", daemon.http)).call().is_ok()
        });
        daemon
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        ureq::get(&format!("{}/metrics", self.http))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    }

    /// Waits until `done`; returns how long it took.
    fn wait_for(&self, what: &str, limit: Duration, done: impl Fn() -> bool) -> Duration {
        let started = Instant::now();
        while started.elapsed() < limit {
            if done() {
                return started.elapsed();
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting until {what}; daemon log:\n{}",
            self.log()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn push_model(reg: &Registry, work: &Path, repo: &str, seed: u64) -> String {
    let dir = work.join(format!("src-{}", repo.replace('/', "-")));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.gguf"), random_bytes(256 * 1024, seed)).unwrap();
    let reference = reg.reference(&format!("{repo}:v1"));
    push(&dir, &reference, &[]).assert_ok("push");
    reference
}

/// The manifest digest `reference` resolved to in the cache, once it is recorded.
fn cached_digest(cache: &Path, reference: &str) -> Option<tugboat::digest::Digest> {
    let r: Reference = reference.parse().unwrap();
    tugboat::cache::Cache::open(cache)
        .unwrap()
        .tag(&tugboat::pull::tag_key(&r))
        .unwrap()
}

/// The labels a model pulled as `reference` (a tag) gets (none before it is pulled).
fn labels_of(cache: &Path, reference: &str) -> BTreeMap<String, String> {
    let Some(digest) = cached_digest(cache, reference) else {
        return BTreeMap::from([("not pulled yet".to_string(), reference.to_string())]);
    };
    BTreeMap::from([
        (keys::digest_key(&digest), "true".to_string()),
        (
            keys::tag_key(&reference.parse().unwrap()),
            keys::digest_value(&digest),
        ),
    ])
}

fn contains_all(have: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

fn contains_none(have: &BTreeMap<String, String>, keys: &BTreeMap<String, String>) -> bool {
    keys.keys().all(|k| !have.contains_key(k))
}

/// The value of the sample `name` (with its labels written out), 0 when absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

#[test]
fn the_node_carries_what_its_cache_holds() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let cache = work.join("cache");
    let warm_ref = push_model(&reg, work, "models/warm", 1);
    let pulled_ref = push_model(&reg, work, "models/pulled", 2);
    let removed_ref = push_model(&reg, work, "models/removed", 3);
    let warm = work.join("warm.yaml");
    std::fs::write(
        &warm,
        format!("interval: 1h\nmodels:\n  - reference: {warm_ref}\n    name: tiny\n"),
    )
    .unwrap();

    // Left by an earlier life of the node (a wiped hostPath): ours to remove; the rest is not ours.
    let stale_digest = format!("digest.model.tugboat.io/sha256.{}", "0".repeat(56));
    let api = Apiserver::start(&[
        ("kubernetes.io/hostname", NODE),
        ("gpu", "a100"),
        (&stale_digest, "true"),
        ("tag.model.tugboat.io/old_v0-000000000000", "sha256.00"),
    ]);
    let kubeconfig = api.kubeconfig(work);
    let advertise = [
        "--advertise",
        "on",
        "--node-name",
        NODE,
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ];
    let daemon = Daemon::start(work, &cache, &warm, &advertise);

    // The warm list's model appears with its tag, digest and name labels; the stale ones go.
    let took = daemon.wait_for(
        "the warm model is labelled",
        Duration::from_secs(60),
        || {
            let owned = api.owned();
            contains_all(&owned, &labels_of(&cache, &warm_ref))
                && owned.contains_key("name.model.tugboat.io/tiny")
                && !owned.contains_key(&stale_digest)
        },
    );
    eprintln!(
        "warm model labelled {:.1} s after start",
        took.as_secs_f64()
    );
    let labels = api.labels();
    assert_eq!(
        labels.get("gpu").map(String::as_str),
        Some("a100"),
        "others' labels stay"
    );
    assert_eq!(
        labels.get("kubernetes.io/hostname").map(String::as_str),
        Some(NODE)
    );
    assert_eq!(api.owned().len(), 3, "{:?}", api.owned());
    assert_eq!(
        api.owned()["name.model.tugboat.io/tiny"],
        keys::digest_value(&cached_digest(&cache, &warm_ref).unwrap())
    );
    let first = api.requests();
    assert_eq!(
        first[0].0, "GET",
        "reconciled from the Node's labels at start"
    );
    assert!(
        first.iter().filter(|r| r.0 == "GET").count() == 1,
        "{first:?}"
    );

    // A model pulled into the shared cache by another process appears.
    pull(&pulled_ref, &work.join("d1"), Some(&cache), &[]).assert_ok("pull");
    let pulled = labels_of(&cache, &pulled_ref);
    let took = daemon.wait_for(
        "the pulled model is labelled",
        Duration::from_secs(20),
        || contains_all(&api.owned(), &pulled),
    );
    eprintln!(
        "pulled model labelled {:.1} s after the pull",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(7), "{took:?}");

    // `cache gc` evicts it (the warm model is leased): its labels go, the warm model's stay.
    let mut gc = tugboat();
    gc.args(["cache", "gc", "--max-size", "1", "--cache"])
        .arg(&cache);
    run(&mut gc, TIMEOUT).assert_ok("cache gc");
    let took = daemon.wait_for(
        "the evicted model's labels go",
        Duration::from_secs(20),
        || contains_none(&api.owned(), &pulled),
    );
    eprintln!(
        "evicted model unlabelled {:.1} s after gc",
        took.as_secs_f64()
    );
    assert!(contains_all(&api.owned(), &labels_of(&cache, &warm_ref)));

    // `cache rm` likewise.
    pull(&removed_ref, &work.join("d2"), Some(&cache), &[]).assert_ok("pull");
    let removed = labels_of(&cache, &removed_ref);
    daemon.wait_for(
        "the third model is labelled",
        Duration::from_secs(20),
        || contains_all(&api.owned(), &removed),
    );
    let mut rm = tugboat();
    rm.args(["cache", "rm", &removed_ref, "--cache"])
        .arg(&cache);
    run(&mut rm, TIMEOUT).assert_ok("cache rm");
    daemon.wait_for(
        "the removed model's labels go",
        Duration::from_secs(20),
        || contains_none(&api.owned(), &removed),
    );

    // Steady state: nothing changes, nothing is sent (the next GET is ten minutes away).
    let before = api.requests().len();
    thread::sleep(Duration::from_secs(12));
    assert_eq!(
        api.requests().len(),
        before,
        "{:?}",
        &api.requests()[before..]
    );
    let metrics = daemon.metrics();
    assert_eq!(
        metric(&metrics, "tugboat_advertised_models"),
        1.0,
        "{metrics}"
    );
    assert!(metric(&metrics, "tugboat_advertised_bytes") >= 256.0 * 1024.0);
    assert!(metrics.contains("tugboat_advertise_patches_total{outcome=\"applied\"}"));
    let patches = api.requests().iter().filter(|r| r.0 == "PATCH").count();
    assert!(patches <= 7, "{patches} patches for 6 changes");
    drop(daemon);

    // Edited by hand while the daemon is down: corrected at start in one GET and one PATCH.
    let warm_labels = labels_of(&cache, &warm_ref);
    let (warm_tag_key, _) = warm_labels
        .iter()
        .find(|(k, _)| k.starts_with("tag."))
        .unwrap();
    let warm_tag_key = warm_tag_key.clone();
    api.edit(|node| {
        node.labels.remove(&warm_tag_key);
        node.labels.insert(stale_digest.clone(), "true".into());
        node.labels
            .insert("name.model.tugboat.io/tiny".into(), "sha256.edited".into());
    });
    let mark = api.requests().len();
    let daemon = Daemon::start(work, &cache, &warm, &advertise);
    daemon.wait_for("hand edits are reconciled", Duration::from_secs(30), || {
        let owned = api.owned();
        contains_all(&owned, &warm_labels)
            && !owned.contains_key(&stale_digest)
            && owned["name.model.tugboat.io/tiny"].len() == 63
    });
    thread::sleep(Duration::from_secs(6));
    let after: Vec<String> = api.requests()[mark..].iter().map(|r| r.0.clone()).collect();
    assert_eq!(
        after,
        ["GET", "PATCH"],
        "one read and one batched patch at start"
    );
    let patch = &api.requests()[mark + 1].2["metadata"]["labels"];
    assert_eq!(patch.as_object().unwrap().len(), 3, "{patch}");

    // A failing apiserver: the failure is logged and counted, the daemon serves on, and the
    // labels converge once it answers again.
    api.edit(|node| node.fail_patches = true);
    pull(&pulled_ref, &work.join("d3"), Some(&cache), &[]).assert_ok("pull again");
    daemon.wait_for("a failed patch is counted", Duration::from_secs(20), || {
        metric(
            &daemon.metrics(),
            "tugboat_advertise_patches_total{outcome=\"failed\"}",
        ) >= 1.0
    });
    assert!(
        daemon.log().contains("node labels not updated"),
        "{}",
        daemon.log()
    );
    assert!(ureq::get(&format!("{}/readyz", daemon.http)).call().is_ok());
    api.edit(|node| node.fail_patches = false);
    daemon.wait_for(
        "labels converge after the failure",
        Duration::from_secs(30),
        || contains_all(&api.owned(), &labels_of(&cache, &pulled_ref)),
    );
}

#[test]
fn the_bound_keeps_the_warm_list_and_the_most_recent() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let cache = work.join("cache");
    let refs: Vec<String> = (0..4)
        .map(|i| push_model(&reg, work, &format!("models/m{i}"), 10 + i))
        .collect();
    // m0 is on the warm list; m1..m3 are pulled one after another (m3 most recently).
    for r in &refs[1..] {
        pull(
            r,
            &work.join("d").join(r.replace(['/', ':'], "-")),
            Some(&cache),
            &[],
        )
        .assert_ok("pull");
        thread::sleep(Duration::from_millis(1100));
    }
    let warm = work.join("warm.yaml");
    std::fs::write(&warm, format!("models:\n  - reference: {}\n", refs[0])).unwrap();
    let api = Apiserver::start(&[]);
    let kubeconfig = api.kubeconfig(work);
    let daemon = Daemon::start(
        work,
        &cache,
        &warm,
        &[
            "--advertise",
            "on",
            "--node-name",
            NODE,
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--advertise-max-models",
            "2",
        ],
    );
    daemon.wait_for(
        "the warm model and the most recent",
        Duration::from_secs(60),
        || {
            contains_all(&api.owned(), &labels_of(&cache, &refs[0]))
                && contains_all(&api.owned(), &labels_of(&cache, &refs[3]))
        },
    );
    assert_eq!(
        api.owned().len(),
        4,
        "two models, two labels each: {:?}",
        api.owned()
    );
    daemon.wait_for(
        "the log says models were left out",
        Duration::from_secs(10),
        || {
            daemon
                .log()
                .contains("more complete models than --advertise-max-models")
        },
    );
}

#[test]
fn outside_a_cluster_it_is_off_and_says_so_once() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let warm = work.join("warm.yaml");
    std::fs::write(&warm, "models: []\n").unwrap();
    let daemon = Daemon::start(work, &work.join("cache"), &warm, &["--node-name", NODE]);
    thread::sleep(Duration::from_secs(2));
    let log = daemon.log();
    assert_eq!(log.matches("node labels off").count(), 1, "{log}");
    assert!(log.contains("KUBERNETES_SERVICE_HOST"), "{log}");
    drop(daemon);
    // `--advertise on` without a cluster refuses to start, naming what is missing.
    let mut cmd = tugboat();
    cmd.arg("node")
        .arg("--csi-endpoint")
        .arg(format!("unix://{}", work.join("x.sock").display()))
        .args(["--node-id", NODE, "--advertise", "on", "--node-name", NODE])
        .arg("--cache")
        .arg(work.join("cache"));
    let out = run(&mut cmd, TIMEOUT);
    out.assert_code(2, "--advertise on outside a cluster");
    assert!(
        out.stderr
            .contains("no in-cluster Kubernetes configuration"),
        "{}",
        out.stderr
    );
    let mut cmd = tugboat();
    cmd.arg("node")
        .arg("--csi-endpoint")
        .arg(format!("unix://{}", work.join("y.sock").display()))
        .args(["--node-id", NODE, "--advertise", "on"])
        .arg("--cache")
        .arg(work.join("cache"));
    let out = run(&mut cmd, TIMEOUT);
    out.assert_code(2, "--advertise on without a node name");
    assert!(out.stderr.contains("NODE_NAME"), "{}", out.stderr);
}
