//! Network faults between tugboat and a real registry, injected by a proxy on loopback
//! (tests/common/fault_proxy.rs): dropped connections, stalls, a flipped byte, 5xx and 429 with
//! Retry-After, a lying Content-Length, another blob's bytes, a trickle, during manifest and
//! blob fetches. Each pull either completes with the right bytes (after a retry or a Range
//! resume) or fails with a clear message and exit code; never a wrong file in `--dest` or in
//! `blobs/`, and the next pull without the fault succeeds on the same cache.

mod common;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

use std::path::Path;
use std::time::Duration;

use common::*;
use fault_proxy::*;

const MIB: usize = 1024 * 1024;

struct Model {
    files: Vec<(String, Vec<u8>)>,
    weights: String,
    manifest: String,
}

fn push_model(reg: &Registry, repo: &str) -> Model {
    let files = vec![
        ("model.gguf".to_string(), random_bytes(3 * MIB, 11)),
        (
            "config.json".to_string(),
            br#"{"architecture":"llama","quantization":"Q4_K_M"}"#.to_vec(),
        ),
    ];
    let layers: Vec<(Option<&str>, Vec<u8>)> = files
        .iter()
        .map(|(t, b)| (Some(t.as_str()), b.clone()))
        .collect();
    let manifest = push_raw_artifact(&reg.host(), repo, "v1", &layers, &[]);
    Model {
        weights: sha256_bytes(&files[0].1),
        files,
        manifest,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// The pull completes with the right bytes.
    Ok,
    /// The pull fails with this exit code and a message containing the needle.
    Fail(i32, &'static str),
}

struct Case {
    what: &'static str,
    rule: Rule,
    /// Pull by digest instead of by tag.
    by_digest: bool,
    extra: &'static [&'static str],
    expect: Expect,
}

fn case(what: &'static str, rule: Rule, expect: Expect) -> Case {
    Case {
        what,
        rule,
        by_digest: false,
        extra: &[],
        expect,
    }
}

/// Runs each case on a fresh cache and dest, checks its outcome and the soundness of what is
/// left, then checks the same cache recovers with the fault removed.
fn run_cases(reg: &Registry, proxy: &FaultProxy, model: &Model, repo: &str, cases: Vec<Case>) {
    let known: Vec<Vec<u8>> = model.files.iter().map(|(_, b)| b.clone()).collect();
    let mut failures = Vec::new();
    for case in cases {
        let work = tempfile::Builder::new()
            .prefix("tugboat-faults-")
            .tempdir()
            .unwrap();
        let (dest, cache) = (work.path().join("dest"), work.path().join("cache"));
        let reference = if case.by_digest {
            proxy.reference(&format!("{repo}@{}", model.manifest))
        } else {
            proxy.reference(&format!("{repo}:v1"))
        };
        proxy.clear();
        proxy.reset_counters();
        proxy.add(case.rule.clone());
        let out = pull(&reference, &dest, Some(&cache), case.extra);
        let faulted = proxy.seen().iter().filter(|s| s.fault.is_some()).count();
        assert!(
            faulted > 0,
            "{}: the fault never fired: {:?}",
            case.what,
            proxy.seen()
        );
        let outcome = match out.code() {
            Some(0) => Expect::Ok,
            Some(code) => Expect::Fail(code, ""),
            None => Expect::Fail(-1, ""),
        };
        eprintln!(
            "fault case {:<48} -> exit {:?}; {}",
            case.what,
            out.code(),
            out.stderr.lines().last().unwrap_or("")
        );
        let matches = match (case.expect, outcome) {
            (Expect::Ok, Expect::Ok) => true,
            (Expect::Fail(want, needle), Expect::Fail(got, _)) => {
                want == got && out.stderr.contains(needle)
            }
            _ => false,
        };
        if !matches {
            failures.push(format!(
                "{}: expected {:?}, got exit {:?}\n--- stderr\n{}\n--- requests\n{:#?}",
                case.what,
                case.expect,
                out.code(),
                out.stderr,
                proxy.seen()
            ));
        }
        // Whatever happened: nothing wrong anywhere.
        assert_cache_sound(&cache, &known);
        let filled = assert_dest_all_or_nothing(&dest, &model.files);
        assert_eq!(
            filled,
            out.code() == Some(0),
            "{}: dest filled although the pull failed (or empty after success)",
            case.what
        );
        // And the same cache recovers once the fault is gone.
        proxy.clear();
        pull(&reference, &dest, Some(&cache), &[]).assert_ok(case.what);
        assert!(assert_dest_all_or_nothing(&dest, &model.files));
        assert_cache_sound(&cache, &known);
    }
    let _ = reg;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn blob_path(model: &Model) -> String {
    format!("/blobs/{}", model.weights)
}

#[test]
fn blob_fetch_faults_are_retried_resumed_or_refused() {
    let reg = Registry::start();
    let model = push_model(&reg, "faults/blob");
    // Another blob of the same size, to be served in place of the weights.
    let other = random_bytes(3 * MIB, 12);
    push_raw_artifact(
        &reg.host(),
        "faults/other",
        "v1",
        &[(Some("x"), other.clone())],
        &[],
    );
    let proxy = FaultProxy::start(&reg.host());
    let blob = blob_path(&model);
    let get = Some("GET");
    let status = |code, retry_after| Fault::Status { code, retry_after };
    let cases = vec![
        case(
            "blob: drop after 1 MiB",
            Rule::new(get, &blob, Fault::DropAfter(MIB as u64)).times(1),
            Expect::Ok,
        ),
        case(
            "blob: drop before any byte, twice",
            Rule::new(get, &blob, Fault::DropAfter(0)).times(2),
            Expect::Ok,
        ),
        case(
            "blob: stall 1 s",
            Rule::new(get, &blob, Fault::Stall(Duration::from_secs(1))).times(1),
            Expect::Ok,
        ),
        case(
            "blob: 500 twice",
            Rule::new(get, &blob, status(500, None)).times(2),
            Expect::Ok,
        ),
        case(
            "blob: 502 twice",
            Rule::new(get, &blob, status(502, None)).times(2),
            Expect::Ok,
        ),
        case(
            "blob: 503 twice",
            Rule::new(get, &blob, status(503, None)).times(2),
            Expect::Ok,
        ),
        case(
            "blob: 429 Retry-After 1, twice",
            Rule::new(get, &blob, status(429, Some(1))).times(2),
            Expect::Ok,
        ),
        case(
            "blob: Content-Length 4 KiB short",
            Rule::new(get, &blob, Fault::ContentLengthDelta(-4096)).times(1),
            Expect::Ok,
        ),
        case(
            "blob: trickle",
            Rule::new(
                get,
                &blob,
                Fault::Trickle {
                    chunk: 64 * 1024,
                    pause: Duration::from_millis(2),
                },
            )
            .times(1),
            Expect::Ok,
        ),
        case(
            "blob: one flipped byte",
            Rule::new(get, &blob, Fault::Corrupt(MIB as u64 + 7)).times(1),
            Expect::Fail(5, "does not match its digest"),
        ),
        case(
            "blob: another blob's bytes",
            Rule::new(get, &blob, Fault::body(other.clone(), None)).times(1),
            Expect::Fail(5, "does not match its digest"),
        ),
        case(
            "blob: a short foreign body",
            Rule::new(get, &blob, Fault::body(b"not the weights".to_vec(), None)).times(1),
            Expect::Fail(5, ""),
        ),
        Case {
            extra: &["--retries", "2"],
            ..case(
                "blob: 503 forever",
                Rule::new(get, &blob, status(503, None)),
                Expect::Fail(4, "503"),
            )
        },
    ];
    run_cases(&reg, &proxy, &model, "faults/blob", cases);
}

/// The registry's body runs to its end but the Content-Length promised more: every byte of
/// the blob is there when the connection closes.
#[test]
fn blob_with_overlong_content_length_completes() {
    let reg = Registry::start();
    let model = push_model(&reg, "faults/overlong");
    let proxy = FaultProxy::start(&reg.host());
    let blob = blob_path(&model);
    let cases = vec![case(
        "blob: Content-Length 4 KiB long",
        Rule::new(Some("GET"), &blob, Fault::ContentLengthDelta(4096)).times(1),
        Expect::Ok,
    )];
    run_cases(&reg, &proxy, &model, "faults/overlong", cases);
}

#[test]
fn manifest_fetch_faults_are_retried_or_refused() {
    let reg = Registry::start();
    let model = push_model(&reg, "faults/manifest");
    let proxy = FaultProxy::start(&reg.host());
    // Another manifest, to be served in place of this one.
    let other = push_raw_artifact(
        &reg.host(),
        "faults/manifest",
        "v2",
        &[(Some("a.bin"), b"other".to_vec())],
        &[],
    );
    let other_bytes = get_raw_manifest(&reg.host(), "faults/manifest", &other);
    // Where the weights' title sits in the manifest as served: flip a byte of it.
    let raw = get_raw_manifest(&reg.host(), "faults/manifest", "v1");
    assert_eq!(sha256_bytes(&raw), model.manifest);
    let title_at = find(&raw, b"model.gguf").expect("title in manifest") as u64;
    let path = "/manifests/";
    let get = Some("GET");
    let status = |code, retry_after| Fault::Status { code, retry_after };
    let cases = vec![
        case(
            "manifest: drop after 100 bytes",
            Rule::new(get, path, Fault::DropAfter(100)).times(1),
            Expect::Ok,
        ),
        case(
            "manifest: drop before any byte",
            Rule::new(get, path, Fault::DropAfter(0)).times(1),
            Expect::Ok,
        ),
        case(
            "manifest: stall 1 s",
            Rule::new(get, path, Fault::Stall(Duration::from_secs(1))).times(1),
            Expect::Ok,
        ),
        case(
            "manifest: 500 twice",
            Rule::new(get, path, status(500, None)).times(2),
            Expect::Ok,
        ),
        case(
            "manifest: 502 twice",
            Rule::new(get, path, status(502, None)).times(2),
            Expect::Ok,
        ),
        case(
            "manifest: 503 twice",
            Rule::new(get, path, status(503, None)).times(2),
            Expect::Ok,
        ),
        case(
            "manifest: 429 Retry-After 1, twice",
            Rule::new(get, path, status(429, Some(1))).times(2),
            Expect::Ok,
        ),
        case(
            "manifest: Content-Length 50 long",
            Rule::new(get, path, Fault::ContentLengthDelta(50)).times(1),
            Expect::Ok,
        ),
        case(
            "manifest: trickle",
            Rule::new(
                get,
                path,
                Fault::Trickle {
                    chunk: 64,
                    pause: Duration::from_millis(3),
                },
            )
            .times(1),
            Expect::Ok,
        ),
        // Bytes that do not match the registry's Docker-Content-Digest are fetched again.
        case(
            "manifest by tag: one flipped byte in a title",
            Rule::new(get, path, Fault::Corrupt(title_at)).times(1),
            Expect::Ok,
        ),
        case(
            "manifest by tag: Content-Length 50 short",
            Rule::new(get, path, Fault::ContentLengthDelta(-50)).times(1),
            Expect::Ok,
        ),
        Case {
            by_digest: true,
            ..case(
                "manifest by digest: one flipped byte",
                Rule::new(get, path, Fault::Corrupt(title_at)).times(1),
                Expect::Ok,
            )
        },
        // ... and when the lie is consistent, refused.
        case(
            "manifest by tag: flipped byte, always",
            Rule::new(get, path, Fault::Corrupt(title_at)),
            Expect::Fail(5, "Docker-Content-Digest"),
        ),
        Case {
            by_digest: true,
            ..case(
                "manifest by digest: another manifest",
                Rule::new(
                    get,
                    path,
                    Fault::body(
                        other_bytes,
                        Some("application/vnd.oci.image.manifest.v1+json"),
                    ),
                )
                .times(1),
                Expect::Fail(5, "digest"),
            )
        },
        Case {
            extra: &["--retries", "2"],
            ..case(
                "manifest: 503 forever",
                Rule::new(get, path, status(503, Some(0))),
                Expect::Fail(4, "503"),
            )
        },
    ];
    run_cases(&reg, &proxy, &model, "faults/manifest", cases);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The manifest bytes exactly as the registry serves them.
fn get_raw_manifest(host: &str, repo: &str, tag: &str) -> Vec<u8> {
    use std::io::Read as _;
    let url = format!("http://{host}/v2/{repo}/manifests/{tag}");
    let resp = ureq::get(&url)
        .set("Accept", "application/vnd.oci.image.manifest.v1+json")
        .call()
        .unwrap();
    let mut body = Vec::new();
    resp.into_reader().read_to_end(&mut body).unwrap();
    body
}

/// The proxy itself: a byte count and a passthrough that changes nothing.
#[test]
fn proxy_passthrough_is_transparent() {
    let reg = Registry::start();
    let model = push_model(&reg, "faults/plain");
    let proxy = FaultProxy::start(&reg.host());
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("dest");
    pull(
        &proxy.reference("faults/plain:v1"),
        &dest,
        Some(&work.path().join("c")),
        &[],
    )
    .assert_ok("pull through a fault-free proxy");
    assert!(assert_dest_all_or_nothing(&dest, &model.files));
    let served: u64 = proxy
        .seen_matching(&blob_path(&model))
        .iter()
        .map(|s| s.body_bytes)
        .sum();
    assert_eq!(served, 3 * MIB as u64);
    let _ = Path::new("");
}
