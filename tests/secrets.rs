//! Credentials never leave in what tugboat prints: logs (text, JSON, trace level), error
//! messages, `--json` output, the node daemon's log, CSI status messages and /metrics.
//! Every output is grepped for the password, the base64 `user:pass` and the wrong password.

mod common;
#[path = "common/csi_client.rs"]
mod csi_client;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

use std::fs;

use base64::Engine as _;
use common::*;
use csi_client::*;
use fault_proxy::*;

const USER: &str = "robot$leaky";
const PASS: &str = "Sup3r-Secret-Pa55-7c1e";
const WRONG: &str = "Wr0ng-Secret-Pa55-9d2f";

fn needles() -> Vec<String> {
    let b64 =
        |u: &str, p: &str| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
    vec![PASS.into(), WRONG.into(), b64(USER, PASS), b64(USER, WRONG)]
}

fn assert_clean(what: &str, text: &str) {
    for needle in needles() {
        assert!(
            !text.contains(&needle),
            "{what}: a secret ({}...) appears in the output:\n{text}",
            &needle[..4]
        );
    }
}

#[test]
fn pull_push_inspect_outputs_never_contain_credentials() {
    let reg = Registry::start_with_htpasswd(USER, PASS);
    let proxy = FaultProxy::start(&reg.host());
    let work = tempfile::tempdir().unwrap();
    let good = work.path().join("good.json");
    let bad = work.path().join("bad.json");
    let proxied = work.path().join("proxied.json");
    fs::write(&good, docker_config_json(&reg.host(), USER, PASS)).unwrap();
    fs::write(&bad, docker_config_json(&reg.host(), USER, WRONG)).unwrap();
    fs::write(&proxied, docker_config_json(&proxy.host(), USER, PASS)).unwrap();
    let (good, bad, proxied) = (
        good.display().to_string(),
        bad.display().to_string(),
        proxied.display().to_string(),
    );
    let src = work.path().join("model");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("w.bin"), random_bytes(300_000, 9)).unwrap();
    let reference = reg.reference("secret/m:v1");

    let mut outputs: Vec<(String, Run)> = Vec::new();
    let push_run = push(
        &src,
        &reference,
        &["--docker-config", &good, "--log", "trace"],
    );
    push_run.assert_ok("push");
    outputs.push(("push --log trace".into(), push_run));
    let cache = work.path().join("cache");
    for (what, extra, dest, expect) in [
        (
            "pull --json --log trace",
            vec!["--docker-config", &good, "--json", "--log", "trace"],
            "d1",
            Some(0),
        ),
        (
            "pull --log-json --log debug",
            vec![
                "--docker-config",
                &good,
                "--log-json",
                "--log",
                "debug",
                "--pull-policy",
                "Always",
            ],
            "d2",
            Some(0),
        ),
        (
            "pull with a wrong password",
            vec![
                "--docker-config",
                &bad,
                "--pull-policy",
                "Always",
                "--json",
                "--log",
                "debug",
            ],
            "d3",
            Some(3),
        ),
        (
            "pull of a missing tag",
            vec!["--docker-config", &good, "--log", "debug"],
            "d4",
            Some(3),
        ),
    ] {
        let reference = if dest == "d4" {
            reg.reference("secret/m:nope")
        } else {
            reference.clone()
        };
        let out = pull(&reference, &work.path().join(dest), Some(&cache), &extra);
        assert_eq!(out.code(), expect, "{what}:\n{}", out.stderr);
        outputs.push((what.into(), out));
    }
    // A private model in a shared cache, asked for without credentials.
    let out = pull(
        &reference,
        &work.path().join("d5"),
        Some(&cache),
        &["--log", "debug"],
    );
    out.assert_code(3, "private model without credentials");
    outputs.push(("pull of a private cached model".into(), out));
    // Through a proxy that fails every manifest with 503 and echoes nothing secret.
    proxy.add(Rule::new(Some("GET"), "/manifests/", Fault::status(503)));
    let out = pull(
        &proxy.reference("secret/m:v1"),
        &work.path().join("d6"),
        Some(&work.path().join("cache2")),
        &[
            "--docker-config",
            &proxied,
            "--retries",
            "2",
            "--log",
            "trace",
        ],
    );
    out.assert_code(4, "503 forever");
    outputs.push(("pull through 503s".into(), out));
    // A mirror is another host: origin credentials must not be sent to it.
    proxy.clear();
    proxy.reset_counters();
    let out = pull(
        &reference,
        &work.path().join("d7"),
        Some(&work.path().join("cache3")),
        &[
            "--docker-config",
            &good,
            "--mirror",
            &format!("{}={}", reg.host(), proxy.host()),
            "--log",
            "debug",
        ],
    );
    outputs.push(("pull with a mirror".into(), out));
    assert!(!proxy.seen().is_empty(), "the mirror was asked");
    assert!(
        proxy.seen().iter().all(|s| s
            .authorization
            .as_deref()
            .is_none_or(|a| !a.starts_with("Basic"))),
        "origin credentials were sent to a mirror: {:?}",
        proxy.seen()
    );
    let mut inspect = tugboat();
    inspect.args([
        "inspect",
        &reference,
        "--json",
        "--plain-http",
        "--docker-config",
        &good,
        "--log",
        "trace",
    ]);
    let out = run(&mut inspect, TIMEOUT);
    outputs.push(("inspect --json".into(), out));

    for (what, out) in &outputs {
        assert_clean(&format!("{what} stdout"), &out.stdout);
        assert_clean(&format!("{what} stderr"), &out.stderr);
    }
    // The cache on disk keeps no credentials either.
    for path in walk(&cache) {
        let full = cache.join(&path);
        if full.is_file() && fs::metadata(&full).unwrap().len() < 1 << 20 {
            assert_clean(
                &path.display().to_string(),
                &String::from_utf8_lossy(&fs::read(&full).unwrap()),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_daemon_log_status_and_metrics_never_contain_credentials() {
    if !can_mount() {
        return;
    }
    let reg = Registry::start_with_htpasswd(USER, PASS);
    let ws = Workspace::new();
    let config = ws.dir.path().join("push.json");
    fs::write(&config, docker_config_json(&reg.host(), USER, PASS)).unwrap();
    let src = ws.dir.path().join("model");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("w.bin"), random_bytes(200_000, 3)).unwrap();
    let reference = reg.reference("secret/csi:v1");
    push(
        &src,
        &reference,
        &["--docker-config", &config.display().to_string()],
    )
    .assert_ok("push");

    let http = format!("127.0.0.1:{}", free_port());
    let daemon = Daemon::start(&ws, &["--http-addr", &http, "--log", "trace"]);
    let (_, mut node) = daemon.clients().await;
    let mut statuses = Vec::new();
    for (volume, secrets) in [
        ("wrong-basic", basic_secret(USER, WRONG)),
        (
            "wrong-docker",
            dockerconfig_secret(&reg.host(), USER, WRONG),
        ),
        ("none", Default::default()),
    ] {
        let mut request = publish_request(volume, &ws.target(volume), &reference);
        request.secrets = secrets;
        let status = node.node_publish_volume(request).await.unwrap_err();
        statuses.push(format!("{volume}: {status:?}"));
    }
    for (volume, secrets) in [
        ("good-basic", basic_secret(USER, PASS)),
        ("good-docker", dockerconfig_secret(&reg.host(), USER, PASS)),
    ] {
        let mut request = publish_request(volume, &ws.target(volume), &reference);
        request.secrets = secrets;
        node.node_publish_volume(request).await.unwrap();
    }
    for status in &statuses {
        assert_clean("CSI status", status);
    }
    let metrics = ureq::get(&format!("http://{http}/metrics"))
        .call()
        .map(|r| r.into_string().unwrap_or_default());
    match metrics {
        Ok(text) => {
            assert!(!text.is_empty());
            assert_clean("/metrics", &text);
        }
        Err(e) => panic!("GET /metrics on --http-addr {http}: {e}"),
    }
    for volume in ["good-basic", "good-docker"] {
        node.node_unpublish_volume(unpublish_request(volume, &ws.target(volume)))
            .await
            .unwrap();
    }
    assert_clean("daemon log (trace)", &daemon.log_text());
}
