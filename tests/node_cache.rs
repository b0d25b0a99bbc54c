//! The node cache over time: LRU eviction under a size limit with leases respected, `cache ls`
//! against the disk, `cache verify` finding and the next pull repairing corruption, a file
//! deleted from a snapshot restored by the next pull, the node daemon's warm list reloading
//! without a restart, and `/metrics` checked with Prometheus' own Python parser.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use tugboat::cache::{Cache, Lease};
use tugboat::digest::Digest;

const MIB: usize = 1 << 20;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Pushes a one-file model of `mib` MiB under `repo:v1`; returns (reference, file path, size).
fn push_model(
    reg: &Registry,
    work: &Path,
    repo: &str,
    mib: usize,
    seed: u64,
) -> (String, PathBuf, u64) {
    let dir = work.join(format!("src-{}", repo.replace('/', "-")));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("model.gguf");
    std::fs::write(&file, random_bytes(mib * MIB, seed)).unwrap();
    let reference = reg.reference(&format!("{repo}:v1"));
    push(&dir, &reference, &[]).assert_ok("push");
    (reference, file, (mib * MIB) as u64)
}

fn cache_ls(cache: &Path) -> Vec<serde_json::Value> {
    let mut cmd = tugboat();
    cmd.args(["cache", "ls", "--json", "--cache"]).arg(cache);
    let run = run(&mut cmd, TIMEOUT);
    run.assert_ok("cache ls");
    serde_json::from_str(run.stdout.trim()).expect("cache ls --json is a JSON array")
}

fn listed_references(cache: &Path) -> Vec<String> {
    let mut refs: Vec<String> = cache_ls(cache)
        .iter()
        .map(|m| m["reference"].as_str().unwrap().to_string())
        .collect();
    refs.sort();
    refs
}

fn snapshot_dirs(cache: &Path) -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir(cache.join("snapshots"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_type().unwrap().is_dir() && !e.file_name().to_string_lossy().starts_with('.')
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn size_limit_evicts_least_recently_used_and_spares_leased_models() {
    let reg = Registry::start();
    let work = tmp();
    let cache = work.path().join("cache");
    let (a, _, size) = push_model(&reg, work.path(), "models/a", 8, 1);
    let (b, _, _) = push_model(&reg, work.path(), "models/b", 8, 2);
    let (c, file_c, _) = push_model(&reg, work.path(), "models/c", 8, 3);
    // Room for two models, not three.
    let limit = format!("{}", size * 5 / 2);

    pull(
        &a,
        &work.path().join("d-a"),
        Some(&cache),
        &["--cache-max-size", &limit],
    )
    .assert_ok("pull a");
    thread::sleep(Duration::from_millis(1100));
    pull(
        &b,
        &work.path().join("d-b"),
        Some(&cache),
        &["--cache-max-size", &limit],
    )
    .assert_ok("pull b");
    thread::sleep(Duration::from_millis(1100));
    // Using `a` again makes `b` the least recently used.
    pull(
        &a,
        &work.path().join("d-a2"),
        Some(&cache),
        &["--cache-max-size", &limit],
    )
    .assert_ok("re-pull a");
    thread::sleep(Duration::from_millis(1100));
    pull(
        &c,
        &work.path().join("d-c"),
        Some(&cache),
        &["--cache-max-size", &limit],
    )
    .assert_ok("pull c");

    assert_eq!(
        listed_references(&cache),
        vec![a.clone(), c.clone()],
        "b was least recently used"
    );
    // `cache ls` agrees with the disk: one snapshot directory per listed model, and the
    // evicted model's blob is gone.
    let listed: Vec<String> = cache_ls(&cache)
        .iter()
        .map(|m| {
            m["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:")
                .to_string()
        })
        .collect();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    assert_eq!(snapshot_dirs(&cache), listed_sorted);
    let blobs = std::fs::read_dir(cache.join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 2, "one blob per remaining model");
    // What the destinations got is unaffected (hard links keep their bytes).
    assert_same_files(&work.path().join("d-c"), &[("model.gguf", &file_c)]);

    // A leased model survives any pressure.
    let handle = Cache::open(&cache).unwrap();
    let leased = Digest::from_hex(&listed[0]).unwrap();
    handle
        .take_lease(&Lease {
            snapshot: leased.clone(),
            holder: "test-volume".into(),
            target: None,
            reference: String::new(),
            created: 0,
            labels: Default::default(),
        })
        .unwrap();
    let mut gc = tugboat();
    gc.args(["cache", "gc", "--max-size", "1", "--json", "--cache"])
        .arg(&cache);
    let report = run(&mut gc, TIMEOUT);
    report.assert_ok("cache gc");
    let report: serde_json::Value = serde_json::from_str(report.stdout.trim()).unwrap();
    assert_eq!(report["still_over_limit"], true, "{report}");
    assert_eq!(
        snapshot_dirs(&cache),
        vec![listed[0].clone()],
        "only the leased model is left"
    );
    assert!(handle.snapshot(&leased).unwrap().is_some());
}

#[test]
fn gc_dry_run_removes_nothing_and_reports_what_it_would_free() {
    let reg = Registry::start();
    let work = tmp();
    let cache = work.path().join("cache");
    let (a, _, size) = push_model(&reg, work.path(), "models/dry", 4, 9);
    pull(&a, &work.path().join("d"), Some(&cache), &[]).assert_ok("pull");
    let mut gc = tugboat();
    gc.args([
        "cache",
        "gc",
        "--max-size",
        "1",
        "--dry-run",
        "--json",
        "--cache",
    ])
    .arg(&cache);
    let out = run(&mut gc, TIMEOUT);
    out.assert_ok("gc --dry-run");
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(report["dry_run"], true);
    assert!(report["bytes_freed"].as_u64().unwrap() >= size, "{report}");
    assert_eq!(
        listed_references(&cache),
        vec![a],
        "dry run removed nothing"
    );
}

#[test]
fn verify_finds_a_corrupted_blob_and_the_next_pull_repairs_it() {
    let reg = Registry::start();
    let work = tmp();
    let cache = work.path().join("cache");
    let (reference, file, _) = push_model(&reg, work.path(), "models/v", 6, 4);
    pull(&reference, &work.path().join("d1"), Some(&cache), &[]).assert_ok("pull");
    let digest = sha256_file(&file);
    let blob = cache
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));

    let mut clean = tugboat();
    clean.args(["cache", "verify", "--cache"]).arg(&cache);
    run(&mut clean, TIMEOUT).assert_ok("verify on an intact cache");

    // Flip one byte in place (root ignores the read-only mode).
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[12345] ^= 0x40;
    std::fs::write(&blob, &bytes).unwrap();

    let mut verify = tugboat();
    verify
        .args(["cache", "verify", "--json", "--cache"])
        .arg(&cache);
    let out = run(&mut verify, TIMEOUT);
    out.assert_code(5, "verify finds the damage");
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(
        report["corrupt_blobs"],
        serde_json::json!([digest]),
        "{report}"
    );
    assert!(!blob.exists(), "the corrupt blob is quarantined");
    assert!(cache
        .join("quarantine")
        .join(digest.trim_start_matches("sha256:"))
        .exists());
    assert!(
        listed_references(&cache).is_empty(),
        "the damaged model is dropped"
    );

    let mark = reg.mark();
    pull(&reference, &work.path().join("d2"), Some(&cache), &[]).assert_ok("pull repairs");
    assert_same_files(&work.path().join("d2"), &[("model.gguf", &file)]);
    assert_eq!(
        reg.blob_downloads_since(mark, &digest).len(),
        1,
        "the blob was fetched again"
    );
    run(&mut clean, TIMEOUT).assert_ok("verify after the repair");
}

#[test]
fn a_file_deleted_from_a_snapshot_is_restored_by_the_next_pull() {
    let reg = Registry::start();
    let work = tmp();
    let cache = work.path().join("cache");
    let (reference, file, _) = push_model(&reg, work.path(), "models/gone", 4, 5);
    pull(&reference, &work.path().join("d1"), Some(&cache), &[]).assert_ok("pull");
    let snapshot = cache.join("snapshots").join(&snapshot_dirs(&cache)[0]);
    std::fs::remove_file(snapshot.join("model.gguf")).unwrap();

    let mark = reg.mark();
    let again = pull(&reference, &work.path().join("d2"), Some(&cache), &[]);
    again.assert_ok("pull after the deletion");
    assert_same_files(&work.path().join("d2"), &[("model.gguf", &file)]);
    assert!(
        again.stderr.contains("missing or has the wrong size"),
        "the pull says why it rebuilt the snapshot: {}",
        again.stderr
    );
    let digest = sha256_file(&file);
    assert!(
        reg.blob_downloads_since(mark, &digest).is_empty(),
        "the blob was still in the cache: the snapshot is rebuilt from it"
    );
    assert!(
        snapshot.join("model.gguf").is_file(),
        "the snapshot is whole again"
    );
}

/// `tugboat node` with a warm list and the HTTP endpoint; killed on drop.
struct Daemon {
    child: Child,
    http: String,
    log: PathBuf,
}

impl Daemon {
    fn start(work: &Path, cache: &Path, warm: &Path) -> Daemon {
        let port = free_port();
        let log = work.join("daemon.log");
        let mut cmd = tugboat();
        cmd.arg("node")
            .arg("--csi-endpoint")
            .arg(format!("unix://{}", work.join("csi.sock").display()))
            .args(["--node-id", "node-a", "--plain-http", "--gc-interval", "1"])
            .arg("--cache")
            .arg(cache)
            .arg("--warm-config")
            .arg(warm)
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().expect("start tugboat node");
        let daemon = Daemon {
            child,
            http: format!("http://127.0.0.1:{port}"),
            log,
        };
        daemon.wait_for("/readyz answers 200", Duration::from_secs(30), |d| {
            d.get("/readyz")
                .map(|(code, _)| code == 200)
                .unwrap_or(false)
        });
        daemon
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        match ureq::get(&format!("{}{path}", self.http)).call() {
            Ok(response) => {
                let code = response.status();
                Some((code, response.into_string().unwrap_or_default()))
            }
            Err(ureq::Error::Status(code, response)) => {
                Some((code, response.into_string().unwrap_or_default()))
            }
            Err(_) => None,
        }
    }

    fn wait_for(&self, what: &str, limit: Duration, done: impl Fn(&Daemon) -> bool) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if done(self) {
                return;
            }
            thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "timed out waiting until {what}; daemon log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses `/metrics` with prometheus_client's parsers; returns `name{labels} value` lines.
fn parse_metrics(text: &str) -> Vec<(String, String, f64)> {
    let script = r##"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
from prometheus_client.parser import text_string_to_metric_families as prom
text = sys.stdin.read()
samples = []
for family in om(text):
    for s in family.samples:
        samples.append([s.name, json.dumps(s.labels, sort_keys=True), s.value])
# The Prometheus text parser must accept the same exposition.
list(prom(text.replace("# EOF\n", "")))
print(json.dumps(samples))
"##;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "/metrics does not parse:\n{}\n--- metrics\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<(String, String, f64)>>(&out.stdout).unwrap()
}

fn sample(samples: &[(String, String, f64)], name: &str, labels: &str) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && l.contains(labels))
        .map(|(_, _, v)| v)
        .sum()
}

#[test]
fn warm_list_changes_are_pulled_without_restart_and_metrics_match() {
    let reg = Registry::start();
    let work = tmp();
    let cache = work.path().join("cache");
    let (a, _, size_a) = push_model(&reg, work.path(), "models/warm-a", 5, 11);
    let (b, file_b, size_b) = push_model(&reg, work.path(), "models/warm-b", 3, 12);
    let warm = work.path().join("warm.yaml");
    std::fs::write(
        &warm,
        format!("interval: 1h\nmodels:\n  - reference: {a}\n"),
    )
    .unwrap();

    let daemon = Daemon::start(work.path(), &cache, &warm);
    daemon.wait_for("model a is warm", Duration::from_secs(60), |_| {
        listed_references(&cache) == vec![a.clone()]
    });

    // A ConfigMap update replaces the file: the daemon notices and pulls the new model.
    let staged = work.path().join("warm.yaml.new");
    std::fs::write(
        &staged,
        format!("interval: 1h\nmodels:\n  - reference: {a}\n  - reference: {b}\n    pullPolicy: IfNotPresent\n"),
    )
    .unwrap();
    std::fs::rename(&staged, &warm).unwrap();
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    daemon.wait_for("model b is warm", Duration::from_secs(60), |_| {
        listed_references(&cache) == both
    });

    // Its bytes are the pushed ones.
    let dest = work.path().join("check");
    pull(&b, &dest, Some(&cache), &["--pull-policy", "Never"]).assert_ok("b is in the cache");
    assert_same_files(&dest, &[("model.gguf", &file_b)]);

    // Wait for a GC pass to publish the cache figures, then check them.
    daemon.wait_for("a GC pass ran", Duration::from_secs(30), |d| {
        let (_, text) = d.get("/metrics").unwrap_or_default();
        parse_metrics(&text)
            .iter()
            .any(|(n, _, v)| n == "tugboat_gc_runs_total" && *v >= 1.0)
            && parse_metrics(&text)
                .iter()
                .any(|(n, _, v)| n == "tugboat_cache_models" && *v == 2.0)
    });
    let (code, text) = daemon.get("/metrics").expect("metrics answer");
    assert_eq!(code, 200);
    let samples = parse_metrics(&text);
    assert_eq!(
        sample(&samples, "tugboat_registry_bytes_total", ""),
        (size_a + size_b) as f64,
        "{text}"
    );
    assert_eq!(
        sample(
            &samples,
            "tugboat_pulls_total",
            "\"outcome\": \"fetched\", \"source\": \"warm\""
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &samples,
            "tugboat_pull_duration_seconds_count",
            "\"source\": \"warm\""
        ),
        2.0 + sample(&samples, "tugboat_pulls_total", "\"outcome\": \"hit\""),
        "{text}"
    );
    assert_eq!(sample(&samples, "tugboat_cache_models", ""), 2.0);
    assert_eq!(
        sample(&samples, "tugboat_warm_entries", "\"state\": \"ready\""),
        2.0
    );
    assert!(sample(&samples, "tugboat_cache_size_bytes", "") >= (size_a + size_b) as f64);
    assert_eq!(sample(&samples, "tugboat_pulls_in_flight", ""), 0.0);
    assert_eq!(daemon.get("/healthz").map(|(c, _)| c), Some(200));
}
