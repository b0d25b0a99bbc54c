//! The Kubernetes deliverables (`manifests/`, `Dockerfile`):
//! - every YAML under manifests/ validates against the Kubernetes API schemas
//!   (`kubernetes-validate --strict`, from PyPI, installed by .ci/run), and the kustomizations
//!   list what exists;
//! - every tugboat container in them (args, env) is accepted by the binary's own parser, each
//!   `TUGBOAT_*` variable is one the subcommand reads, and the paths, ports, sockets, driver
//!   names, secrets and ConfigMaps they name fit the pod around them;
//! - the Dockerfile's build stage runs here as written (its RUN lines, with its ENV) and the
//!   binary it produces passes the same checks.

use serde_yaml_ng::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

// ---------------------------------------------------------------------------------------------
// Reading the manifests

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn manifests_dir() -> PathBuf {
    root().join("manifests")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(yaml_files(&path));
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn is_kustomization(path: &Path) -> bool {
    matches!(
        path.file_name().and_then(|n| n.to_str()),
        Some("kustomization.yaml" | "kustomization.yml" | "Kustomization")
    )
}

/// Every Kubernetes object under manifests/ (kustomizations excluded), with its file.
struct Doc {
    file: String,
    value: Value,
}

fn docs() -> Vec<Doc> {
    let mut out = Vec::new();
    for path in yaml_files(&manifests_dir()) {
        if is_kustomization(&path) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path.strip_prefix(root()).unwrap().display().to_string();
        for de in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = <Value as serde::Deserialize>::deserialize(de)
                .unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
            if !value.is_null() {
                out.push(Doc {
                    file: file.clone(),
                    value,
                });
            }
        }
    }
    assert!(!out.is_empty(), "no manifests found");
    out
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, key| v.get(*key))
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(v, path).and_then(Value::as_str)
}

fn seq<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn kind(doc: &Doc) -> &str {
    text(&doc.value, &["kind"]).unwrap_or("")
}

fn name(v: &Value) -> &str {
    text(v, &["metadata", "name"]).unwrap_or("")
}

fn find<'a>(docs: &'a [Doc], kind_: &str, name_: &str) -> Option<&'a Doc> {
    docs.iter()
        .find(|d| kind(d) == kind_ && name(&d.value) == name_)
}

/// A pod template found in a workload, with where it came from.
struct PodSpec<'a> {
    at: String,
    labels: Option<&'a Value>,
    spec: &'a Value,
}

fn pod_specs(docs: &[Doc]) -> Vec<PodSpec<'_>> {
    let mut out = Vec::new();
    for doc in docs {
        let template = match kind(doc) {
            "Pod" => Some(&doc.value),
            "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet" | "Job" => {
                get(&doc.value, &["spec", "template"])
            }
            "CronJob" => get(&doc.value, &["spec", "jobTemplate", "spec", "template"]),
            _ => None,
        };
        if let Some(template) = template {
            out.push(PodSpec {
                at: format!("{} {}/{}", doc.file, kind(doc), name(&doc.value)),
                labels: get(template, &["metadata", "labels"]),
                spec: get(template, &["spec"]).expect("pod template without spec"),
            });
        }
    }
    out
}

fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    seq(spec, &["initContainers"])
        .iter()
        .chain(seq(spec, &["containers"]).iter())
}

/// A container running the tugboat image (the last path segment of its image is `tugboat`).
fn is_tugboat(container: &Value) -> bool {
    let image = text(container, &["image"]).unwrap_or("");
    let without_tag = image.split('@').next().unwrap();
    let last = without_tag.rsplit('/').next().unwrap();
    last.split(':').next() == Some("tugboat")
}

/// What a tugboat container runs: argv after the binary, and its environment.
struct Invocation {
    at: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

fn invocation(at: &str, container: &Value) -> Invocation {
    let at = format!(
        "{at} container {}",
        text(container, &["name"]).unwrap_or("?")
    );
    let strings = |key: &str| -> Vec<String> {
        seq(container, &[key])
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => panic!("{at}: {key} entry {other:?} is not a string"),
            })
            .collect()
    };
    let mut argv = Vec::new();
    let command = strings("command");
    if let Some((first, rest)) = command.split_first() {
        assert!(
            Path::new(first).file_name().and_then(|n| n.to_str()) == Some("tugboat"),
            "{at}: command {first:?} is not the tugboat binary"
        );
        argv.extend(rest.iter().cloned());
    }
    argv.extend(strings("args"));
    assert!(
        get(container, &["envFrom"]).is_none(),
        "{at}: envFrom cannot be checked; use env entries"
    );
    let mut env: Vec<(String, String)> = Vec::new();
    for e in seq(container, &["env"]) {
        let key = text(e, &["name"]).expect("env without name").to_string();
        let value = if let Some(v) = text(e, &["value"]) {
            // kubelet expands $(VAR) from the variables defined *before* this one.
            let expanded = expand_env_refs(v, &env);
            if let Some(later) = unexpanded_ref(&expanded) {
                panic!("{at}: env {key} uses $({later}), which is not defined before it");
            }
            expanded
        } else {
            match text(e, &["valueFrom", "fieldRef", "fieldPath"]) {
                Some("spec.nodeName") => "node-a".to_string(),
                Some("status.hostIP") => "10.0.0.7".to_string(),
                _ if get(e, &["valueFrom"]).is_some() => "from-value-from".to_string(),
                _ => String::new(),
            }
        };
        env.push((key, value));
    }
    let argv = argv.iter().map(|a| expand_env_refs(a, &env)).collect();
    Invocation { at, argv, env }
}

/// `$(NAME)` replaced by NAME's value where `env` defines it, as kubelet does for env values,
/// command and args (`$$` escapes; unknown references stay as written).
fn expand_env_refs(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some((name, tail)) = after.strip_prefix('(').and_then(|a| a.split_once(')')) {
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn unexpanded_ref(value: &str) -> Option<&str> {
    let start = value.find("$(")? + 2;
    value[start..].split_once(')').map(|(name, _)| name)
}

#[test]
fn env_references_expand_as_kubelet_expands_them() {
    let env = vec![("HOST_IP".to_string(), "10.0.0.7".to_string())];
    assert_eq!(
        expand_env_refs("h=http://$(HOST_IP):65001", &env),
        "h=http://10.0.0.7:65001"
    );
    assert_eq!(
        expand_env_refs("$$(HOST_IP) $(NOPE)", &env),
        "$(HOST_IP) $(NOPE)"
    );
    assert_eq!(unexpanded_ref("x $(NOPE) y"), Some("NOPE"));
}

fn invocations(docs: &[Doc]) -> Vec<Invocation> {
    let mut out = Vec::new();
    for pod in pod_specs(docs) {
        for c in containers(pod.spec).filter(|c| is_tugboat(c)) {
            out.push(invocation(&pod.at, c));
        }
    }
    out
}

/// The value of `--flag` in argv (`--flag=v` or `--flag v`), else of env `var`.
fn option(inv: &Invocation, flag: &str, var: &str) -> Option<String> {
    let mut args = inv.argv.iter();
    while let Some(arg) = args.next() {
        if let Some(v) = arg.strip_prefix(&format!("{flag}=")) {
            return Some(v.to_string());
        }
        if arg == flag {
            return args.next().cloned();
        }
    }
    inv.env
        .iter()
        .find(|(k, _)| k == var)
        .map(|(_, v)| v.clone())
}

/// The subcommand path (`["node"]`, `["cache", "gc"]`) at the start of argv.
fn subcommand(argv: &[String]) -> Vec<String> {
    match argv.first().map(String::as_str) {
        Some("cache") => argv.iter().take(2).cloned().collect(),
        Some(first) if !first.starts_with('-') => vec![first.to_string()],
        _ => Vec::new(),
    }
}

/// Positional arguments after the subcommand (values of `--flag value` pairs are skipped when
/// the flag is not boolean: every tugboat flag in the manifests uses `--flag=value`).
fn positionals(argv: &[String]) -> Vec<String> {
    let skip = subcommand(argv).len();
    argv[skip..]
        .iter()
        .filter(|a| !a.starts_with('-'))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Checking invocations against a binary

fn run_checked(bin: &Path, inv: &Invocation, extra: &[&str]) -> std::process::Output {
    Command::new(bin)
        .args(&inv.argv)
        .arg("--check-args")
        .args(extra)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(inv.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
}

fn env_vars_in_help(bin: &Path, sub: &[String]) -> BTreeSet<String> {
    let out = Command::new(bin)
        .args(sub)
        .arg("--help")
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "tugboat {sub:?} --help failed");
    let help = String::from_utf8_lossy(&out.stdout).replace('\n', " ");
    help.split("[env: ")
        .skip(1)
        // `NAME=value]`, or `NAME]` for a variable whose value help hides
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(|s| s.trim().to_string())
        .collect()
}

/// Every tugboat container in manifests/ parses with `bin`: flags, values and env, and so do
/// the containers KServe builds from the ClusterStorageContainers.
fn check_invocations_with(bin: &Path) {
    let mut docs = docs();
    // the DaemonSet's node plugin and the init containers of examples 1, 2, 5 and 6
    let found = invocations(&docs).len();
    assert!(
        found >= 6,
        "expected the node plugin and the init containers, found {found}"
    );
    let injected = kserve_built(&docs);
    assert!(
        injected.len() >= 2,
        "the KServe pod and LocalModelCache Job"
    );
    docs.extend(injected);
    check_invocations_in(bin, &docs);
}

/// The subcommand a container runs: its argv's, or `kitops-init` for a container started
/// without arguments with MODELKIT_REF set (KitOps' init-container contract).
fn effective_subcommand(inv: &Invocation) -> Vec<String> {
    let sub = subcommand(&inv.argv);
    if sub.is_empty()
        && inv
            .env
            .iter()
            .any(|(k, v)| k == "MODELKIT_REF" && !v.is_empty())
    {
        return vec!["kitops-init".to_string()];
    }
    sub
}

fn check_invocations_in(bin: &Path, docs: &[Doc]) {
    let invs = invocations(docs);
    assert!(
        invs.iter().any(|i| subcommand(&i.argv) == ["node"]),
        "no `tugboat node` container in manifests/"
    );
    for inv in &invs {
        let sub = effective_subcommand(inv);
        assert!(
            !sub.is_empty(),
            "{}: no tugboat subcommand in {:?}",
            inv.at,
            inv.argv
        );

        let out = run_checked(bin, inv, &[]);
        assert!(
            out.status.success(),
            "{}: `tugboat {}` with env {:?} is refused by {}:\n{}",
            inv.at,
            inv.argv.join(" "),
            inv.env,
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        // The check is a real parse: the same invocation plus an unknown flag is refused.
        let bad = run_checked(bin, inv, &["--no-such-flag-for-the-test"]);
        assert_eq!(
            bad.status.code(),
            Some(2),
            "{}: an unknown flag was not refused; is --check-args parsing?",
            inv.at
        );

        // clap ignores environment variables it does not know: make sure each is read.
        let known = env_vars_in_help(bin, &sub);
        for (key, _) in &inv.env {
            if key.starts_with("TUGBOAT_") {
                assert!(
                    known.contains(key),
                    "{}: env {key} is not read by `tugboat {}` (it reads {known:?})",
                    inv.at,
                    sub.join(" ")
                );
            }
        }
    }
}

#[test]
fn tugboat_args_and_env_in_manifests_are_accepted_by_the_binary() {
    check_invocations_with(Path::new(env!("CARGO_BIN_EXE_tugboat")));
}

// ---------------------------------------------------------------------------------------------
// Schemas

fn kubernetes_validate(files: &[PathBuf], version: Option<&str>) -> (bool, String) {
    // `python3 -m` rather than the console script: no PATH or pyenv-shim surprises.
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "kubernetes_validate", "--strict"]);
    if let Some(v) = version {
        cmd.args(["--kubernetes-version", v]);
    }
    let out = cmd.args(files).output().unwrap_or_else(|e| {
        panic!(
            "kubernetes-validate is not installed ({e}): pip install kubernetes-validate \
             (bash .ci/run does)"
        )
    });
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !report.contains("No module named kubernetes_validate"),
        "kubernetes-validate is not installed: pip install kubernetes-validate (bash .ci/run does)"
    );
    (out.status.success(), report)
}

/// Kinds the Kubernetes schemas do not know (custom resources), checked by their own tests.
const CUSTOM_KINDS: [&str; 4] = [
    "PodMonitor",
    "ClusterStorageContainer",
    "InferenceService",
    "LocalModelCache",
];

#[test]
fn every_manifest_is_valid_against_the_kubernetes_schemas() {
    let files: Vec<PathBuf> = yaml_files(&manifests_dir())
        .into_iter()
        .filter(|p| !is_kustomization(p))
        .collect();
    assert!(
        files.len() >= 10,
        "expected the node manifests and 5 examples"
    );
    let objects = docs().len();
    // The oldest Kubernetes still commonly run, and the newest the package knows.
    for version in [Some("1.29.0"), None] {
        let (ok, report) = kubernetes_validate(&files, version);
        assert!(ok, "kubernetes-validate {version:?} failed:\n{report}");
        let passed = report
            .lines()
            .filter(|l| l.starts_with("INFO") && l.contains(" passed "))
            .count();
        for line in report.lines().filter(|l| l.starts_with("WARN")) {
            // Only custom resources have no schema in the package: the Prometheus Operator's
            // PodMonitor (checked field by field in `metrics_scrape_finds_the_node_plugin`) and
            // KServe's (checked in `kserve_objects_fit_kserve_and_the_pods_it_builds_validate`).
            assert!(
                CUSTOM_KINDS
                    .iter()
                    .any(|k| line.contains(&format!("kind {k}"))),
                "kubernetes-validate {version:?}: {line}"
            );
        }
        let custom = docs()
            .iter()
            .filter(|d| CUSTOM_KINDS.contains(&kind(d)))
            .count();
        assert_eq!(
            passed + custom,
            objects,
            "not every object was validated:\n{report}"
        );
    }
}

/// Negative control: the validator does refuse a wrong manifest (so a pass means something).
#[test]
fn the_schema_check_refuses_a_broken_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(manifests_dir().join("csidriver.yaml"))
        .unwrap()
        .replace("attachRequired: false", "attachRequired: \"no\"");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, text).unwrap();
    let (ok, report) = kubernetes_validate(std::slice::from_ref(&bad), None);
    assert!(!ok, "a broken CSIDriver passed:\n{report}");
    assert!(report.contains("attachRequired"), "{report}");
    // Strict mode: an unknown field is refused too.
    let text = std::fs::read_to_string(manifests_dir().join("daemonset.yaml"))
        .unwrap()
        .replace(
            "mountPropagation: Bidirectional",
            "mountPropagation: Bidirectional\n              propagate: true",
        );
    std::fs::write(&bad, text).unwrap();
    let (ok, report) = kubernetes_validate(&[bad], None);
    assert!(
        !ok && report.contains("propagate"),
        "an unknown field passed:\n{report}"
    );
}

#[test]
fn kustomizations_deploy_the_node_part() {
    let dir = manifests_dir();
    for path in yaml_files(&dir).into_iter().filter(|p| is_kustomization(p)) {
        let k: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let in_components = path.starts_with(dir.join("components"));
        assert_eq!(
            text(&k, &["kind"]),
            Some(if in_components {
                "Component"
            } else {
                "Kustomization"
            }),
            "{}",
            path.display()
        );
        let base = path.parent().unwrap();
        for r in seq(&k, &["resources"]) {
            let r = r.as_str().unwrap();
            assert!(
                base.join(r).exists(),
                "{}: resource {r} is missing",
                path.display()
            );
        }
    }
    // The top-level kustomization holds every top-level object file, so `kubectl apply -k
    // manifests/` deploys all of the node part.
    let k: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    let listed: BTreeSet<&str> = seq(&k, &["resources"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap();
        if path.is_file() && file.ends_with(".yaml") && !is_kustomization(&path) {
            assert!(
                listed.contains(file),
                "kustomization.yaml does not list {file}"
            );
        }
    }
    let docs = docs();
    let in_base = |d: &&Doc| Path::new(&d.file).parent() == Some(Path::new("manifests"));
    let kinds: BTreeSet<&str> = docs.iter().filter(in_base).map(kind).collect();
    for needed in [
        "Namespace",
        "CSIDriver",
        "ServiceAccount",
        "ConfigMap",
        "DaemonSet",
        "Service",
    ] {
        assert!(kinds.contains(needed), "the node part lacks a {needed}");
    }
    // The image the kustomization rewrites is the one the workloads use.
    for image in seq(&k, &["images"]) {
        let image_name = text(image, &["name"]).unwrap();
        let used = docs.iter().filter(in_base).any(|d| {
            pod_specs(std::slice::from_ref(d)).iter().any(|p| {
                containers(p.spec).any(|c| {
                    text(c, &["image"]).is_some_and(|i| i.split(':').next() == Some(image_name))
                })
            })
        });
        assert!(
            used,
            "kustomization images: {image_name} is used by no container"
        );
    }
    // Where kubectl is installed, let kustomize itself render it.
    if let Ok(out) = Command::new("kubectl")
        .args(["kustomize"])
        .arg(&dir)
        .output()
    {
        assert!(
            out.status.success(),
            "kubectl kustomize manifests/:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = String::from_utf8_lossy(&out.stdout);
        assert!(rendered.contains("kind: DaemonSet") && rendered.contains("kind: CSIDriver"));
    }
}

// ---------------------------------------------------------------------------------------------
// Paths, ports, sockets and names

/// The container's volumeMount that holds `path`, with the volume it mounts.
fn mount_for<'a>(
    spec: &'a Value,
    container: &'a Value,
    path: &str,
) -> Option<(&'a Value, &'a Value)> {
    let path = Path::new(path);
    let mounts = seq(container, &["volumeMounts"]);
    let mount = mounts
        .iter()
        .filter(|m| path.starts_with(text(m, &["mountPath"]).unwrap_or("\0")))
        .max_by_key(|m| text(m, &["mountPath"]).unwrap().len())?;
    let volume_name = text(mount, &["name"]).unwrap();
    let volume = seq(spec, &["volumes"])
        .iter()
        .find(|v| text(v, &["name"]) == Some(volume_name))
        .unwrap_or_else(|| panic!("volumeMount {volume_name} has no volume"));
    Some((mount, volume))
}

/// The file a configMap or secret volume mounted at `mount` provides at `path`, as text.
fn projected_file(docs: &[Doc], at: &str, mount: &Value, volume: &Value, path: &str) -> String {
    let rel = Path::new(path)
        .strip_prefix(text(mount, &["mountPath"]).unwrap())
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let (kind_, object, source) = if let Some(cm) = get(volume, &["configMap"]) {
        ("ConfigMap", text(cm, &["name"]).unwrap(), cm)
    } else if let Some(secret) = get(volume, &["secret"]) {
        ("Secret", text(secret, &["secretName"]).unwrap(), secret)
    } else {
        panic!("{at}: {path} is on a volume that is neither a ConfigMap nor a Secret");
    };
    let items = seq(source, &["items"]);
    let key = if items.is_empty() {
        rel.clone()
    } else {
        items
            .iter()
            .find(|i| text(i, &["path"]) == Some(rel.as_str()))
            .and_then(|i| text(i, &["key"]))
            .unwrap_or_else(|| panic!("{at}: no item of {kind_} {object} lands at {rel}"))
            .to_string()
    };
    let doc = find(docs, kind_, object)
        .unwrap_or_else(|| panic!("{at}: {kind_} {object} is not in manifests/"));
    if let Some(v) = text(&doc.value, &["data", &key]).filter(|_| kind_ == "ConfigMap") {
        return v.to_string();
    }
    if let Some(v) = text(&doc.value, &["stringData", &key]) {
        return v.to_string();
    }
    if let Some(v) = text(&doc.value, &["data", &key]) {
        use base64::Engine as _;
        return String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v).unwrap())
            .unwrap();
    }
    panic!("{at}: {kind_} {object} has no key {key} for {path}");
}

fn container_ports(spec: &Value) -> Vec<(String, String, i64)> {
    let mut out = Vec::new();
    for c in containers(spec) {
        for p in seq(c, &["ports"]) {
            out.push((
                text(c, &["name"]).unwrap().to_string(),
                text(p, &["name"]).unwrap_or("").to_string(),
                get(p, &["containerPort"]).and_then(Value::as_i64).unwrap(),
            ));
        }
    }
    out
}

fn port_of(addr: &str) -> i64 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} has no port"))
}

fn sidecar_flag<'a>(container: &'a Value, flag: &str) -> Option<&'a str> {
    seq(container, &["args"])
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix(&format!("{flag}=")))
}

#[test]
fn paths_ports_and_sockets_fit_the_pods_around_tugboat() {
    let mut docs = docs();
    let injected = kserve_built(&docs);
    docs.extend(injected);
    let mut warm_lists = 0;
    let mut policies = 0;
    for pod in pod_specs(&docs) {
        let spec = pod.spec;
        let ports = container_ports(spec);
        // No two containers of a pod listen on one port (they share the network namespace).
        let mut seen = BTreeMap::new();
        for (c, _, p) in &ports {
            if let Some(other) = seen.insert(*p, c.clone()) {
                panic!("{}: port {p} is used by {other} and {c}", pod.at);
            }
        }
        // Every probe's port is one kubelet can resolve: a port *name* only among the probed
        // container's own ports (a sidecar's name is a silent no-op: kubelet logs a parse
        // error and never fails the probe), a number among any container of the pod.
        for c in containers(spec) {
            let cname = text(c, &["name"]).unwrap();
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                for handler in ["httpGet", "tcpSocket", "grpc"] {
                    if let Some(port) = get(c, &[probe, handler, "port"]) {
                        check_probe_port(&pod.at, &ports, cname, probe, port);
                    }
                }
            }
            // A sidecar's --http-endpoint is a declared port of that container.
            if let Some(endpoint) = sidecar_flag(c, "--http-endpoint") {
                let cname = text(c, &["name"]).unwrap();
                assert!(
                    ports
                        .iter()
                        .any(|(pc, _, p)| pc == cname && *p == port_of(endpoint)),
                    "{} {cname}: --http-endpoint {endpoint} is not a containerPort of it",
                    pod.at
                );
            }
        }

        for c in containers(spec).filter(|c| is_tugboat(c)) {
            let inv = invocation(&pod.at, c);
            let at = &inv.at;
            let sub = effective_subcommand(&inv);
            // Every path tugboat is given lies on a volume of the pod.
            let path_options = [
                ("--dest", "TUGBOAT_DEST"),
                ("--cache", "TUGBOAT_CACHE"),
                ("--warm-config", "TUGBOAT_WARM_CONFIG"),
                ("--policy", "TUGBOAT_POLICY"),
                ("--docker-config", "TUGBOAT_DOCKER_CONFIG"),
                ("--ca-file", "TUGBOAT_CA_FILE"),
                ("--unpack-path", "UNPACK_PATH"),
                ("--cosign-key", "COSIGN_KEY"),
            ];
            let mut given: Vec<(&str, String)> = path_options
                .iter()
                .filter_map(|(flag, var)| option(&inv, flag, var).map(|p| (*flag, p)))
                .collect();
            // `pull REF DEST`: the destination KServe appends.
            if sub == ["pull"] {
                if let Some(dest) = positionals(&inv.argv).get(1) {
                    given.push(("--dest", dest.clone()));
                }
            }
            if sub == ["kitops-init"] && option(&inv, "--unpack-path", "UNPACK_PATH").is_none() {
                given.push(("--unpack-path", "/home/user/modelkit/".to_string()));
            }
            for (flag, path) in given {
                assert!(path.starts_with('/'), "{at}: {flag} {path} is not absolute");
                let (mount, volume) = mount_for(spec, c, &path)
                    .unwrap_or_else(|| panic!("{at}: {flag} {path} is on no volumeMount"));
                let read_only = get(mount, &["readOnly"]).and_then(Value::as_bool) == Some(true);
                match flag {
                    "--dest" | "--cache" | "--unpack-path" => {
                        assert!(!read_only, "{at}: {flag} {path} is mounted read-only")
                    }
                    "--cosign-key" => {
                        let pem = projected_file(&docs, at, mount, volume, &path);
                        let dir = tempfile::tempdir().unwrap();
                        let file = dir.path().join("cosign.pub");
                        std::fs::write(&file, pem).unwrap();
                        tugboat::policy::signatures::keys::Key::load(&file)
                            .unwrap_or_else(|e| panic!("{at}: COSIGN_KEY {path}: {e}"));
                    }
                    "--warm-config" => {
                        let yaml = projected_file(&docs, at, mount, volume, &path);
                        let dir = tempfile::tempdir().unwrap();
                        let file = dir.path().join("warm.yaml");
                        std::fs::write(&file, yaml).unwrap();
                        let list = tugboat::warm::WarmList::load(&file)
                            .unwrap_or_else(|e| panic!("{at}: the warm list: {e}"));
                        assert!(!list.models.is_empty(), "{at}: the warm list is empty");
                        warm_lists += 1;
                    }
                    "--policy" => {
                        let yaml = projected_file(&docs, at, mount, volume, &path);
                        let dir = tempfile::tempdir().unwrap();
                        let file = dir.path().join("policy.yaml");
                        std::fs::write(&file, yaml).unwrap();
                        tugboat::policy::Policy::load(&file)
                            .unwrap_or_else(|e| panic!("{at}: the node policy: {e}"));
                        policies += 1;
                    }
                    "--docker-config" => {
                        let json = projected_file(&docs, at, mount, volume, &path);
                        tugboat::registry::CredentialStore::from_docker_config_json(
                            json.as_bytes(),
                        )
                        .unwrap_or_else(|e| panic!("{at}: {path}: {e}"));
                    }
                    _ => {}
                }
                if flag == "--cache" && sub == ["node"] {
                    assert!(
                        get(volume, &["hostPath"]).is_some(),
                        "{at}: the node cache {path} must be a hostPath to outlive the pod"
                    );
                }
            }
            // References and mirrors parse as tugboat parses them.
            if sub == ["pull"] {
                let refs = positionals(&inv.argv);
                assert!(
                    (1..=2).contains(&refs.len()),
                    "{at}: pull takes a reference and at most a destination: {refs:?}"
                );
                refs[0]
                    .parse::<tugboat::reference::Reference>()
                    .unwrap_or_else(|e| panic!("{at}: {}: {e}", refs[0]));
            }
            if let Some(r) = option(&inv, "--modelkit-ref", "MODELKIT_REF") {
                r.parse::<tugboat::reference::Reference>()
                    .unwrap_or_else(|e| panic!("{at}: MODELKIT_REF {r}: {e}"));
            }
            if let Some(m) = option(&inv, "--mirror", "TUGBOAT_MIRROR") {
                tugboat::registry::EndpointPolicy::parse_mirror(&m)
                    .unwrap_or_else(|e| panic!("{at}: mirror {m}: {e}"));
            }
            if sub == ["node"] {
                check_node_plugin(&docs, &pod, c, &inv);
            }
        }
    }
    assert_eq!(
        warm_lists, 1,
        "the DaemonSet should load the warm list ConfigMap"
    );
    assert_eq!(
        policies, 1,
        "the DaemonSet should load the node policy ConfigMap"
    );
}

/// A probe's port resolves as kubelet resolves it: a name among the container's own ports, a
/// number among the pod's (one network namespace).
fn check_probe_port(
    at: &str,
    ports: &[(String, String, i64)],
    container: &str,
    probe: &str,
    port: &Value,
) {
    let ok = match port {
        Value::String(name) => ports.iter().any(|(c, n, _)| c == container && n == name),
        Value::Number(num) => ports.iter().any(|(_, _, p)| num.as_i64() == Some(*p)),
        _ => false,
    };
    assert!(
        ok,
        "{at} {container}: {probe} port {port:?} is not a port of this container (by name) or of \
         the pod (by number)"
    );
}

#[test]
fn a_probe_naming_a_sidecars_port_is_refused() {
    let ports = vec![
        ("tugboat".to_string(), "metrics".to_string(), 9808),
        ("liveness-probe".to_string(), "healthz".to_string(), 9809),
    ];
    let sidecar_name = Value::String("healthz".into());
    let refused = std::panic::catch_unwind(|| {
        check_probe_port("t", &ports, "tugboat", "livenessProbe", &sidecar_name)
    });
    assert!(refused.is_err(), "a sidecar's port name passed");
    check_probe_port("t", &ports, "tugboat", "livenessProbe", &Value::from(9809));
    check_probe_port("t", &ports, "tugboat", "readinessProbe", &"metrics".into());
}

fn check_node_plugin(docs: &[Doc], pod: &PodSpec<'_>, tugboat: &Value, inv: &Invocation) {
    let at = &inv.at;
    let spec = pod.spec;
    // /metrics, /healthz, /readyz: the port is declared and named `metrics`.
    let http = option(inv, "--http-addr", "TUGBOAT_HTTP_ADDR").unwrap_or("0.0.0.0:9808".into());
    let http_port = port_of(&http);
    assert!(
        seq(tugboat, &["ports"]).iter().any(|p| {
            get(p, &["containerPort"]).and_then(Value::as_i64) == Some(http_port)
                && text(p, &["name"]) == Some("metrics")
        }),
        "{at}: --http-addr {http} is not the container port named metrics"
    );
    assert_eq!(
        text(tugboat, &["readinessProbe", "httpGet", "path"]),
        Some("/readyz"),
        "{at}: readiness should use /readyz"
    );
    assert!(
        get(tugboat, &["readinessProbe", "timeoutSeconds"]).and_then(Value::as_i64) >= Some(3),
        "{at}: the readiness probe's default 1 s timeout is too short on a busy node"
    );

    // The CSI socket: one hostPath directory shared with the two sidecars, registered with
    // kubelet at its host path.
    let endpoint = option(inv, "--csi-endpoint", "TUGBOAT_CSI_ENDPOINT")
        .unwrap_or("unix:///csi/csi.sock".into());
    let socket = endpoint
        .strip_prefix("unix://")
        .unwrap_or_else(|| panic!("{at}: --csi-endpoint {endpoint} is not unix://"));
    let (mount, volume) =
        mount_for(spec, tugboat, socket).unwrap_or_else(|| panic!("{at}: {socket} on no volume"));
    let rel = Path::new(socket)
        .strip_prefix(text(mount, &["mountPath"]).unwrap())
        .unwrap();
    let host_dir = text(volume, &["hostPath", "path"])
        .unwrap_or_else(|| panic!("{at}: the CSI socket must be on a hostPath"));
    let host_socket = Path::new(host_dir).join(rel);
    let driver = option(inv, "--driver-name", "TUGBOAT_DRIVER_NAME")
        .unwrap_or(tugboat::csi::DEFAULT_DRIVER_NAME.into());
    assert_eq!(
        Path::new(host_dir),
        Path::new("/var/lib/kubelet/plugins").join(&driver),
        "{at}: kubelet expects the plugin's socket under plugins/<driver name>"
    );
    let mut sidecars = BTreeSet::new();
    for c in containers(spec).filter(|c| !is_tugboat(c)) {
        let cname = text(c, &["name"]).unwrap();
        let Some(address) = sidecar_flag(c, "--csi-address") else {
            continue;
        };
        let (m, v) = mount_for(spec, c, address)
            .unwrap_or_else(|| panic!("{at}: {cname} --csi-address {address} on no volume"));
        assert_eq!(
            text(v, &["name"]),
            text(volume, &["name"]),
            "{cname}: --csi-address is not on tugboat's socket volume"
        );
        assert_eq!(
            Path::new(address)
                .strip_prefix(text(m, &["mountPath"]).unwrap())
                .unwrap(),
            rel,
            "{cname}: --csi-address {address} is not tugboat's socket {socket}"
        );
        let image = text(c, &["image"]).unwrap();
        if image.contains("csi-node-driver-registrar") {
            assert_eq!(
                sidecar_flag(c, "--kubelet-registration-path").map(PathBuf::from),
                Some(host_socket.clone()),
                "{cname}: --kubelet-registration-path must be the socket's host path"
            );
            let (_, reg) = mount_for(spec, c, "/registration")
                .unwrap_or_else(|| panic!("{cname}: /registration is not mounted"));
            assert_eq!(
                text(reg, &["hostPath", "path"]),
                Some("/var/lib/kubelet/plugins_registry")
            );
            sidecars.insert("registrar");
        }
        if image.contains("livenessprobe") {
            // tugboat's liveness probe asks this sidecar (CSI Probe over the socket), by the
            // number of its --http-endpoint: a hung plugin then fails the probe and restarts.
            let endpoint = sidecar_flag(c, "--http-endpoint")
                .unwrap_or_else(|| panic!("{cname}: no --http-endpoint"));
            assert_eq!(
                get(tugboat, &["livenessProbe", "httpGet", "port"]).and_then(Value::as_i64),
                Some(port_of(endpoint)),
                "{at}: the liveness probe must target {cname}'s port {endpoint} by number"
            );
            assert_eq!(
                text(tugboat, &["livenessProbe", "httpGet", "path"]),
                Some("/healthz")
            );
            // A hung plugin is restarted within a minute (tests/e2e measured 129.5 s with
            // 5 x 20 s and the pod's 30 s grace, which a SIGSTOPped process spends unused).
            let probe = |k: &str| get(tugboat, &["livenessProbe", k]).and_then(Value::as_i64);
            let detect =
                probe("periodSeconds").unwrap_or(10) * probe("failureThreshold").unwrap_or(3);
            let grace = probe("terminationGracePeriodSeconds")
                .or_else(|| get(spec, &["terminationGracePeriodSeconds"]).and_then(Value::as_i64))
                .unwrap_or(30);
            assert!(
                probe("initialDelaySeconds").unwrap_or(0) + detect + grace <= 60,
                "{at}: a hung plugin waits {detect} s to fail liveness and {grace} s to be killed"
            );
            sidecars.insert("livenessprobe");
        }
    }
    assert_eq!(
        sidecars,
        BTreeSet::from(["livenessprobe", "registrar"]),
        "{at}: both sidecars"
    );

    // kubelet's pods directory at the same path, Bidirectional, in a privileged container
    // (the only kind Kubernetes lets propagate mounts); no other mount propagates that way.
    let pods_dir = "/var/lib/kubelet/pods";
    let (mount, volume) = mount_for(spec, tugboat, pods_dir)
        .unwrap_or_else(|| panic!("{at}: kubelet's pods directory is not mounted"));
    assert_eq!(text(mount, &["mountPath"]), Some(pods_dir));
    assert_eq!(text(volume, &["hostPath", "path"]), Some(pods_dir));
    assert_eq!(text(mount, &["mountPropagation"]), Some("Bidirectional"));
    if let Some(root) = option(inv, "--kubelet-root", "TUGBOAT_KUBELET_ROOT") {
        assert!(
            Path::new(pods_dir).starts_with(&root),
            "{at}: --kubelet-root {root} would refuse kubelet's target paths in {pods_dir}"
        );
    }
    assert_eq!(
        get(tugboat, &["securityContext", "privileged"]).and_then(Value::as_bool),
        Some(true)
    );
    for c in containers(spec) {
        for m in seq(c, &["volumeMounts"]) {
            if text(m, &["mountPropagation"]) == Some("Bidirectional") {
                assert!(is_tugboat(c) && text(m, &["mountPath"]) == Some(pods_dir));
            }
        }
        // Everything else as tight as it goes.
        if !is_tugboat(c) {
            let sc = get(c, &["securityContext"]).expect("sidecar securityContext");
            assert_eq!(
                get(sc, &["allowPrivilegeEscalation"]).and_then(Value::as_bool),
                Some(false)
            );
            assert_eq!(
                get(sc, &["readOnlyRootFilesystem"]).and_then(Value::as_bool),
                Some(true)
            );
            assert_eq!(
                seq(sc, &["capabilities", "drop"])
                    .first()
                    .and_then(Value::as_str),
                Some("ALL")
            );
        } else {
            assert_eq!(
                get(c, &["securityContext", "readOnlyRootFilesystem"]).and_then(Value::as_bool),
                Some(true)
            );
        }
        for r in ["requests", "limits"] {
            assert!(
                get(c, &["resources", r, "memory"]).is_some(),
                "{at}: {} has no memory {r}",
                text(c, &["name"]).unwrap()
            );
        }
    }

    // The CSIDriver object names the same driver, as the issue specifies.
    let csidriver =
        find(docs, "CSIDriver", &driver).unwrap_or_else(|| panic!("no CSIDriver named {driver}"));
    let s = &csidriver.value["spec"];
    assert_eq!(s["attachRequired"].as_bool(), Some(false));
    assert_eq!(s["podInfoOnMount"].as_bool(), Some(true));
    assert_eq!(s["fsGroupPolicy"].as_str(), Some("None"));
    let modes: BTreeSet<&str> = seq(s, &["volumeLifecycleModes"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(modes, BTreeSet::from(["Ephemeral", "Persistent"]));

    // The metrics Service and the PodMonitor select these pods and name the metrics port.
    let labels = pod.labels.expect("DaemonSet pods need labels");
    let selects = |selector: Option<&Value>| {
        let selector = selector.and_then(Value::as_mapping).expect("selector");
        !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    let services: Vec<&Doc> = docs.iter().filter(|d| kind(d) == "Service").collect();
    assert!(
        services
            .iter()
            .any(|d| selects(get(&d.value, &["spec", "selector"]))
                && seq(&d.value, &["spec", "ports"]).iter().any(|p| {
                    text(p, &["targetPort"]) == Some("metrics")
                        || get(p, &["targetPort"]).and_then(Value::as_i64) == Some(http_port)
                })),
        "no Service selects the node plugin's metrics port"
    );
    let monitors: Vec<&Doc> = docs.iter().filter(|d| kind(d) == "PodMonitor").collect();
    assert!(!monitors.is_empty(), "no PodMonitor");
    for m in monitors {
        // No schema for it in kubernetes-validate: check its shape here.
        assert_eq!(
            text(&m.value, &["apiVersion"]),
            Some("monitoring.coreos.com/v1")
        );
        let spec_keys: BTreeSet<&str> = get(&m.value, &["spec"])
            .and_then(Value::as_mapping)
            .unwrap()
            .keys()
            .filter_map(Value::as_str)
            .collect();
        assert!(spec_keys.is_subset(&BTreeSet::from([
            "selector",
            "podMetricsEndpoints",
            "namespaceSelector",
            "jobLabel",
            "podTargetLabels",
        ])));
        assert!(selects(get(&m.value, &["spec", "selector", "matchLabels"])));
        for e in seq(&m.value, &["spec", "podMetricsEndpoints"]) {
            assert_eq!(text(e, &["port"]), Some("metrics"));
            assert_eq!(text(e, &["path"]), Some("/metrics"));
        }
    }
}

#[test]
fn model_volumes_name_the_driver_and_a_valid_reference() {
    let docs = docs();
    let driver = tugboat::csi::DEFAULT_DRIVER_NAME;
    let parse = |at: &str, r: &str| {
        r.parse::<tugboat::reference::Reference>()
            .unwrap_or_else(|e| panic!("{at}: reference {r:?}: {e}"));
    };
    let check_attrs = |at: &str, attrs: Option<&Value>| {
        if let Some(policy) = attrs.and_then(|a| text(a, &["pullPolicy"])) {
            assert!(
                ["IfNotPresent", "Always", "Never"].contains(&policy),
                "{at}: pullPolicy {policy}"
            );
        }
    };
    let mut inline = 0;
    let mut with_secret = 0;
    for pod in pod_specs(&docs) {
        for v in seq(pod.spec, &["volumes"]) {
            let Some(csi) = get(v, &["csi"]) else {
                continue;
            };
            assert_eq!(text(csi, &["driver"]), Some(driver), "{}", pod.at);
            assert_eq!(
                get(csi, &["readOnly"]).and_then(Value::as_bool),
                Some(true),
                "{}",
                pod.at
            );
            let attrs = get(csi, &["volumeAttributes"]);
            let reference = attrs
                .and_then(|a| text(a, &["reference"]))
                .unwrap_or_else(|| {
                    panic!("{}: a csi volume needs volumeAttributes.reference", pod.at)
                });
            parse(&pod.at, reference);
            check_attrs(&pod.at, attrs);
            if let Some(secret) = text(csi, &["nodePublishSecretRef", "name"]) {
                let s = find(&docs, "Secret", secret)
                    .unwrap_or_else(|| panic!("{}: Secret {secret} is missing", pod.at));
                assert_eq!(
                    text(&s.value, &["type"]),
                    Some("kubernetes.io/dockerconfigjson")
                );
                with_secret += 1;
            }
            inline += 1;
        }
        for s in seq(pod.spec, &["imagePullSecrets"]) {
            let name = text(s, &["name"]).unwrap();
            assert!(
                find(&docs, "Secret", name).is_some(),
                "{}: Secret {name} is missing",
                pod.at
            );
        }
    }
    assert!(
        inline >= 2 && with_secret >= 1,
        "examples 3 and 5 use csi volumes"
    );

    let mut shared = 0;
    for pv in docs.iter().filter(|d| kind(d) == "PersistentVolume") {
        let at = format!("{} PersistentVolume/{}", pv.file, name(&pv.value));
        let csi = get(&pv.value, &["spec", "csi"]).expect("a csi PV");
        assert_eq!(text(csi, &["driver"]), Some(driver), "{at}");
        assert_eq!(
            get(csi, &["readOnly"]).and_then(Value::as_bool),
            Some(true),
            "{at}"
        );
        let attrs = get(csi, &["volumeAttributes"]);
        let reference = attrs
            .and_then(|a| text(a, &["reference"]))
            .or_else(|| text(csi, &["volumeHandle"]))
            .unwrap();
        parse(&at, reference);
        check_attrs(&at, attrs);
        let modes: Vec<&str> = seq(&pv.value, &["spec", "accessModes"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(modes, ["ReadOnlyMany"], "{at}");
        // Its claim binds to it by name and is used by a multi-replica workload.
        let claim = docs
            .iter()
            .find(|d| {
                kind(d) == "PersistentVolumeClaim"
                    && text(&d.value, &["spec", "volumeName"]) == Some(name(&pv.value))
            })
            .unwrap_or_else(|| panic!("{at}: no claim binds to it"));
        let users = docs
            .iter()
            .filter(|d| kind(d) == "Deployment")
            .filter(|d| {
                d.value["spec"]["replicas"].as_i64().unwrap_or(1) > 1
                    && seq(&d.value, &["spec", "template", "spec", "volumes"])
                        .iter()
                        .any(|v| {
                            text(v, &["persistentVolumeClaim", "claimName"])
                                == Some(name(&claim.value))
                        })
            })
            .count();
        assert!(users >= 1, "{at}: no multi-replica Deployment shares it");
        shared += 1;
    }
    assert_eq!(shared, 1, "example 4: one static PV");
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile

/// One Dockerfile instruction: keyword and its (continuation-joined) rest.
fn sha256_of(path: &Path) -> String {
    use sha2::Digest as _;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    hex::encode(sha2::Sha256::digest(bytes))
}

fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if !current.is_empty() && trimmed.starts_with('#') {
            continue; // comment inside a continued instruction
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, rest) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((keyword.to_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    out
}

#[test]
fn dockerfile_build_stage_runs_here_and_its_binary_accepts_the_manifests() {
    let root = root();
    let text = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let instructions = dockerfile_instructions(&text);

    // Split into stages; the build stage is `FROM ... AS build`, the last stage is the image.
    let mut stages: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut global_args = BTreeMap::new();
    for (keyword, rest) in instructions {
        if keyword == "FROM" {
            stages.push((rest, Vec::new()));
        } else if let Some((_, body)) = stages.last_mut() {
            body.push((keyword, rest));
        } else if keyword == "ARG" {
            let (k, v) = rest.split_once('=').unwrap_or((&rest, ""));
            global_args.insert(k.to_string(), v.to_string());
        }
    }
    let (build_from, build) = stages
        .iter()
        .find(|(from, _)| from.to_lowercase().ends_with(" as build"))
        .expect("a stage `FROM ... AS build`");
    assert!(
        stages.len() >= 2,
        "multi-stage: a build stage and the image"
    );
    assert!(
        build_from.contains("rust:") && build_from.contains("bookworm"),
        "build stage on Debian's Rust image: {build_from}"
    );
    let (image_from, image) = stages.last().unwrap();
    assert!(
        image_from.starts_with("scratch"),
        "the image is FROM scratch (no base image to pull): {image_from}"
    );

    // Replay the build stage here: WORKDIR is the repository, ENV/ARG become the environment,
    // RUN lines run in sh as Docker runs them. OUT (where the binary goes) is sent into
    // target/image/ instead of /out.
    let out_dir = root.join("target/image");
    // scripts/build-image.sh refuses to fill a non-empty directory: start afresh.
    let _ = std::fs::remove_dir_all(out_dir.join("rootfs"));
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut runs = 0;
    for (keyword, rest) in build {
        match keyword.as_str() {
            "WORKDIR" => assert_eq!(rest, "/src", "the build stage works in /src"),
            "COPY" => assert_eq!(rest, ". .", "the build stage copies the repository"),
            "ENV" | "ARG" => {
                let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
                env.insert(k.to_string(), v.trim_matches('"').to_string());
            }
            "RUN" => {
                let mut command = rest.as_str();
                while let Some(after) = command.strip_prefix("--") {
                    // RUN options such as --mount=type=cache,...
                    command = after
                        .split_once(' ')
                        .map(|(_, c)| c.trim_start())
                        .unwrap_or("");
                }
                let mut vars = env.clone();
                vars.insert("OUT".into(), out_dir.display().to_string());
                let started = std::time::Instant::now();
                let status = Command::new("sh")
                    .args(["-c", command])
                    .current_dir(&root)
                    .envs(&vars)
                    .status()
                    .unwrap();
                assert!(
                    status.success(),
                    "build stage `RUN {command}` failed: {status}"
                );
                eprintln!("RUN {command}: {:.0?}", started.elapsed());
                runs += 1;
            }
            other => panic!("build stage: {other} is not replayed by this test"),
        }
    }
    assert!(runs >= 1, "the build stage has no RUN");
    assert!(
        env.contains_key("OUT"),
        "the build stage sets ENV OUT (the binary's directory)"
    );

    // The image is the filesystem scripts/build-image.sh made, with the binary as entrypoint.
    let out = env["OUT"].clone();
    let copy = image
        .iter()
        .find(|(k, r)| k == "COPY" && r.starts_with("--from=build "))
        .map(|(_, r)| r.clone())
        .expect("COPY --from=build");
    let parts: Vec<&str> = copy.split_whitespace().collect();
    assert_eq!(
        parts[1..],
        [format!("{out}/rootfs/").as_str(), "/"],
        "the image is the rootfs scripts/build-image.sh made"
    );
    let entrypoint = image
        .iter()
        .find(|(k, _)| k == "ENTRYPOINT")
        .map(|(_, r)| r.clone())
        .expect("ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(&entrypoint).expect("ENTRYPOINT [...]");
    let rootfs = out_dir.join("rootfs");
    let shipped = rootfs.join(entry[0].trim_start_matches('/'));
    assert_eq!(
        sha256_of(&shipped),
        sha256_of(&out_dir.join("tugboat")),
        "ENTRYPOINT is the binary built"
    );
    // Inside the image's filesystem alone (chroot, as root) the binary finds everything it
    // links: it runs.
    if nix::unistd::Uid::effective().is_root() {
        let version = Command::new("chroot")
            .arg(&rootfs)
            .args([entry[0].as_str(), "--version"])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .unwrap();
        assert!(
            version.status.success(),
            "the binary does not run in its own image: {}",
            String::from_utf8_lossy(&version.stderr)
        );
    }

    let bin = out_dir.join("tugboat");
    let version = Command::new(&bin).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("tugboat {}", env!("CARGO_PKG_VERSION"))
    );
    check_invocations_with(&bin);
}

// ---------------------------------------------------------------------------------------------
// Pod Security and resources of the examples

/// Where a pod breaks the `restricted` Pod Security Standard (Kubernetes 1.25+ rules).
fn restricted_violations(spec: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if get(spec, &[host]).and_then(Value::as_bool) == Some(true) {
            out.push(format!("{host}: true"));
        }
    }
    const VOLUME_TYPES: [&str; 8] = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for v in seq(spec, &["volumes"]) {
        let mapping = v.as_mapping().unwrap();
        for key in mapping.keys().filter_map(Value::as_str) {
            if key != "name" && !VOLUME_TYPES.contains(&key) {
                out.push(format!("volume {}: {key}", text(v, &["name"]).unwrap()));
            }
        }
    }
    let pod_sc = |key: &str| get(spec, &["securityContext", key]);
    if pod_sc("runAsUser").and_then(Value::as_i64) == Some(0) {
        out.push("pod runAsUser: 0".into());
    }
    let pod_non_root = pod_sc("runAsNonRoot").and_then(Value::as_bool);
    let seccomp_ok = |sc: Option<&Value>| {
        matches!(
            sc.and_then(|s| text(s, &["seccompProfile", "type"])),
            Some("RuntimeDefault" | "Localhost")
        )
    };
    let pod_seccomp = seccomp_ok(get(spec, &["securityContext"]));
    for c in containers(spec) {
        let name = text(c, &["name"]).unwrap();
        let sc = get(c, &["securityContext"]);
        let field = |key: &str| sc.and_then(|s| get(s, &[key]));
        if field("privileged").and_then(Value::as_bool) == Some(true) {
            out.push(format!("{name}: privileged"));
        }
        if field("allowPrivilegeEscalation").and_then(Value::as_bool) != Some(false) {
            out.push(format!("{name}: allowPrivilegeEscalation is not false"));
        }
        let caps = |k: &str| -> Vec<&str> {
            sc.map(|s| seq(s, &["capabilities", k]))
                .unwrap_or(&[])
                .iter()
                .filter_map(Value::as_str)
                .collect()
        };
        if !caps("drop").contains(&"ALL") {
            out.push(format!("{name}: capabilities.drop lacks ALL"));
        }
        if caps("add").iter().any(|c| *c != "NET_BIND_SERVICE") {
            out.push(format!("{name}: adds capabilities {:?}", caps("add")));
        }
        match field("runAsNonRoot").and_then(Value::as_bool) {
            Some(false) => out.push(format!("{name}: runAsNonRoot: false")),
            None if pod_non_root != Some(true) => out.push(format!(
                "{name}: runAsNonRoot is not set (pod or container)"
            )),
            _ => {}
        }
        if field("runAsUser").and_then(Value::as_i64) == Some(0) {
            out.push(format!("{name}: runAsUser: 0"));
        }
        if !pod_seccomp && !seccomp_ok(sc) {
            out.push(format!(
                "{name}: no RuntimeDefault/Localhost seccompProfile"
            ));
        }
        for p in seq(c, &["ports"]) {
            if get(p, &["hostPort"]).is_some() {
                out.push(format!("{name}: hostPort"));
            }
        }
    }
    out
}

/// CPU quantity in millicores ("250m", "1", "0.5").
fn millicores(q: &Value) -> i64 {
    let s = match q {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("cpu quantity {other:?}"),
    };
    match s.strip_suffix('m') {
        Some(m) => m.parse().unwrap(),
        None => (s.parse::<f64>().unwrap() * 1000.0).round() as i64,
    }
}

#[test]
fn examples_are_admissible_under_restricted_pod_security_and_fit_a_small_node() {
    let docs = docs();
    let examples: Vec<Doc> = docs
        .into_iter()
        .filter(|d| {
            d.file.starts_with("manifests/examples/")
                || d.file.starts_with("manifests/integrations/kitops/")
        })
        .collect();
    let pods = pod_specs(&examples);
    assert!(pods.len() >= 7, "every example's pods: {}", pods.len());
    for pod in &pods {
        let violations = restricted_violations(pod.spec);
        assert!(
            violations.is_empty(),
            "{}: not admissible under Pod Security `restricted`: {violations:?}",
            pod.at
        );
        for c in containers(pod.spec) {
            let cpu = get(c, &["resources", "requests", "cpu"])
                .unwrap_or_else(|| panic!("{}: {:?} requests no cpu", pod.at, c["name"]));
            assert!(
                millicores(cpu) <= 500,
                "{}: {:?} requests {cpu:?} cpu: too much for a small node",
                pod.at,
                c["name"]
            );
        }
    }
    // The node plugin cannot be restricted (privileged, hostPath, Bidirectional propagation):
    // its namespace says so to Pod Security Admission, and the checker sees why.
    let docs = self::docs();
    let ns = find(&docs, "Namespace", "tugboat-system").expect("the tugboat-system Namespace");
    assert_eq!(
        text(
            &ns.value,
            &["metadata", "labels", "pod-security.kubernetes.io/enforce"]
        ),
        Some("privileged")
    );
    let daemonset = find(&docs, "DaemonSet", "tugboat-node").unwrap();
    let violations = restricted_violations(pod_specs(std::slice::from_ref(daemonset))[0].spec);
    assert!(
        violations.iter().any(|v| v.contains("privileged"))
            && violations.iter().any(|v| v.contains("hostPath")),
        "{violations:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Node labels: RBAC, the token, the node name, and the examples' affinities

/// The rules granted to a ServiceAccount by every (Cluster)RoleBinding in `docs`.
fn rules_of_service_account<'a>(docs: &'a [Doc], namespace: &str, sa: &str) -> Vec<&'a Value> {
    let mut rules = Vec::new();
    for binding in docs
        .iter()
        .filter(|d| matches!(kind(d), "RoleBinding" | "ClusterRoleBinding"))
    {
        let binds_it = seq(&binding.value, &["subjects"]).iter().any(|s| {
            text(s, &["kind"]) == Some("ServiceAccount")
                && text(s, &["name"]) == Some(sa)
                && text(s, &["namespace"]) == Some(namespace)
        });
        if !binds_it {
            continue;
        }
        let role_kind = text(&binding.value, &["roleRef", "kind"]).unwrap();
        let role_name = text(&binding.value, &["roleRef", "name"]).unwrap();
        assert_eq!(
            text(&binding.value, &["roleRef", "apiGroup"]),
            Some("rbac.authorization.k8s.io")
        );
        let role = find(docs, role_kind, role_name).unwrap_or_else(|| {
            panic!(
                "{}: {role_kind} {role_name} is not in manifests/",
                binding.file
            )
        });
        rules.extend(seq(&role.value, &["rules"]));
    }
    rules
}

fn strings(v: &Value, key: &str) -> BTreeSet<String> {
    seq(v, &[key])
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn node_labels_need_get_and_patch_on_nodes_and_nothing_more() {
    let docs = docs();
    let daemonset = find(&docs, "DaemonSet", "tugboat-node").expect("the DaemonSet");
    let pod = &pod_specs(std::slice::from_ref(daemonset))[0];
    let spec = pod.spec;
    let namespace = text(&daemonset.value, &["metadata", "namespace"]).unwrap();
    let sa = text(spec, &["serviceAccountName"]).expect("the DaemonSet names its ServiceAccount");

    // Exactly one rule reaches the ServiceAccount: get and patch on core nodes.
    let rules = rules_of_service_account(&docs, namespace, sa);
    assert_eq!(rules.len(), 1, "{sa}: {rules:?}");
    let rule = rules[0];
    assert_eq!(strings(rule, "apiGroups"), BTreeSet::from(["".to_string()]));
    assert_eq!(
        strings(rule, "resources"),
        BTreeSet::from(["nodes".to_string()])
    );
    assert_eq!(
        strings(rule, "verbs"),
        BTreeSet::from(["get".to_string(), "patch".to_string()])
    );
    assert!(get(rule, &["nonResourceURLs"]).is_none());
    // No role anywhere grants wildcards.
    for role in docs
        .iter()
        .filter(|d| matches!(kind(d), "Role" | "ClusterRole"))
    {
        for rule in seq(&role.value, &["rules"]) {
            for key in ["apiGroups", "resources", "verbs"] {
                assert!(
                    !strings(rule, key).contains("*"),
                    "{}: a wildcard in {key}",
                    role.file
                );
            }
        }
    }

    // The token reaches the tugboat container alone, where the in-cluster configuration reads
    // it; nothing is mounted automatically.
    let account = find(&docs, "ServiceAccount", sa).expect("the ServiceAccount");
    assert_eq!(
        get(&account.value, &["automountServiceAccountToken"]).and_then(Value::as_bool),
        Some(false)
    );
    assert_eq!(
        get(spec, &["automountServiceAccountToken"]).and_then(Value::as_bool),
        Some(false)
    );
    let token_dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    let tugboat = containers(spec).find(|c| is_tugboat(c)).unwrap();
    let (mount, volume) = mount_for(spec, tugboat, &format!("{token_dir}/token"))
        .expect("the tugboat container mounts the ServiceAccount token");
    assert_eq!(text(mount, &["mountPath"]), Some(token_dir));
    assert_eq!(
        get(mount, &["readOnly"]).and_then(Value::as_bool),
        Some(true)
    );
    let sources = seq(volume, &["projected", "sources"]);
    let token = sources
        .iter()
        .find_map(|s| get(s, &["serviceAccountToken"]))
        .expect("a projected serviceAccountToken");
    assert_eq!(text(token, &["path"]), Some("token"));
    assert!(
        get(token, &["audience"]).is_none(),
        "the apiserver's audience"
    );
    assert!(sources.iter().any(|s| {
        text(s, &["configMap", "name"]) == Some("kube-root-ca.crt")
            && seq(s, &["configMap", "items"])
                .iter()
                .any(|i| text(i, &["path"]) == Some("ca.crt"))
    }));
    assert!(sources.iter().any(|s| {
        seq(s, &["downwardAPI", "items"]).iter().any(|i| {
            text(i, &["path"]) == Some("namespace")
                && text(i, &["fieldRef", "fieldPath"]) == Some("metadata.namespace")
        })
    }));
    let volume_name = text(volume, &["name"]).unwrap();
    for c in containers(spec).filter(|c| !is_tugboat(c)) {
        assert!(
            seq(c, &["volumeMounts"])
                .iter()
                .all(|m| text(m, &["name"]) != Some(volume_name)),
            "{}: a sidecar mounts the token",
            text(c, &["name"]).unwrap()
        );
    }

    // The node name comes from the downward API, and the daemon reads it.
    let inv = invocation(&pod.at, tugboat);
    assert_ne!(
        option(&inv, "--advertise", "TUGBOAT_ADVERTISE").as_deref(),
        Some("off")
    );
    let node_name = seq(tugboat, &["env"])
        .iter()
        .find(|e| text(e, &["name"]) == Some("NODE_NAME"))
        .expect("NODE_NAME in the tugboat container's env");
    assert_eq!(
        text(node_name, &["valueFrom", "fieldRef", "fieldPath"]),
        Some("spec.nodeName")
    );
    let bin = Path::new(env!("CARGO_BIN_EXE_tugboat"));
    let read = env_vars_in_help(bin, &["node".to_string()]);
    for var in [
        "NODE_NAME",
        "TUGBOAT_ADVERTISE",
        "TUGBOAT_ADVERTISE_MAX_MODELS",
    ] {
        assert!(
            read.contains(var),
            "tugboat node does not read {var}: {read:?}"
        );
    }
}

#[test]
fn example_affinities_name_the_model_their_pods_mount() {
    let docs = docs();
    let bin = Path::new(env!("CARGO_BIN_EXE_tugboat"));
    let mut checked = BTreeSet::new();
    for pod in pod_specs(&docs) {
        let affinity = get(pod.spec, &["affinity", "nodeAffinity"]);
        let mut keys = Vec::new();
        if let Some(affinity) = affinity {
            for term in seq(
                affinity,
                &["preferredDuringSchedulingIgnoredDuringExecution"],
            ) {
                keys.extend(seq(term, &["preference", "matchExpressions"]).iter());
            }
            for term in seq(
                affinity,
                &[
                    "requiredDuringSchedulingIgnoredDuringExecution",
                    "nodeSelectorTerms",
                ],
            ) {
                keys.extend(seq(term, &["matchExpressions"]).iter());
            }
        }
        let keys: Vec<&Value> = keys
            .into_iter()
            .filter(|e| text(e, &["key"]).is_some_and(|k| k.contains(".model.tugboat.io/")))
            .collect();
        if keys.is_empty() {
            continue;
        }
        let references: Vec<&str> = seq(pod.spec, &["volumes"])
            .iter()
            .filter_map(|v| text(v, &["csi", "volumeAttributes", "reference"]))
            .collect();
        assert_eq!(references.len(), 1, "{}: one model volume", pod.at);
        let out = Command::new(bin)
            .args(["affinity", references[0], "--keys"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = String::from_utf8(out.stdout).unwrap().trim().to_string();
        for e in keys {
            assert_eq!(text(e, &["key"]), Some(expected.as_str()), "{}", pod.at);
            assert_eq!(text(e, &["operator"]), Some("Exists"), "{}", pod.at);
        }
        let how = if get(
            pod.spec,
            &[
                "affinity",
                "nodeAffinity",
                "requiredDuringSchedulingIgnoredDuringExecution",
            ],
        )
        .is_some()
        {
            "required"
        } else {
            "preferred"
        };
        checked.insert(how);
    }
    assert_eq!(
        checked,
        BTreeSet::from(["preferred", "required"]),
        "an example of each"
    );
}

// ---------------------------------------------------------------------------------------------
// Kustomize components (manifests/components/*): rendered over the base by kustomize itself

#[test]
fn components_render_over_the_base_and_their_settings_are_accepted() {
    let components: Vec<PathBuf> = yaml_files(&manifests_dir().join("components"))
        .into_iter()
        .filter(|p| is_kustomization(p))
        .map(|p| p.parent().unwrap().to_path_buf())
        .collect();
    assert!(
        components.len() >= 2,
        "the private-registry and dragonfly-mirror components"
    );
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: kubectl is not installed; components are not rendered");
        return;
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_tugboat"));
    for component in components {
        let name = component.file_name().unwrap().to_str().unwrap();
        // kustomize takes relative paths only, and refuses an overlay inside its base.
        let dir = tempfile::Builder::new()
            .prefix(".kustomize-")
            .tempdir_in(root())
            .unwrap();
        std::fs::write(
            dir.path().join("kustomization.yaml"),
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
                 resources: [../manifests]\ncomponents: [../manifests/components/{name}]\n"
            ),
        )
        .unwrap();
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "component {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = String::from_utf8(out.stdout).unwrap();
        let file = dir.path().join("rendered.yaml");
        std::fs::write(&file, &rendered).unwrap();
        let (ok, report) = kubernetes_validate(std::slice::from_ref(&file), None);
        assert!(ok, "component {name}: kubernetes-validate:\n{report}");

        let docs: Vec<Doc> = serde_yaml_ng::Deserializer::from_str(&rendered)
            .map(|de| Doc {
                file: format!("components/{name}"),
                value: <Value as serde::Deserialize>::deserialize(de).unwrap(),
            })
            .collect();
        check_invocations_in(bin, &docs);
        let invs = invocations(&docs);
        let node = invs
            .iter()
            .find(|i| subcommand(&i.argv) == ["node"])
            .unwrap();
        let pod = pod_specs(&docs).into_iter().next().unwrap();
        let tugboat = containers(pod.spec).find(|c| is_tugboat(c)).unwrap();
        if let Some(mirror) = option(node, "--mirror", "TUGBOAT_MIRROR") {
            // The node's address from the downward API, never the pod's own loopback.
            assert!(
                mirror.contains("10.0.0.7") && !mirror.contains("127.0.0.1"),
                "component {name}: mirror {mirror} is not the node's address"
            );
            tugboat::registry::EndpointPolicy::parse_mirror(&mirror)
                .unwrap_or_else(|e| panic!("component {name}: mirror {mirror}: {e}"));
        }
        if let Some(ca) = option(node, "--ca-file", "TUGBOAT_CA_FILE") {
            let (mount, volume) = mount_for(pod.spec, tugboat, &ca)
                .unwrap_or_else(|| panic!("component {name}: --ca-file {ca} on no volume"));
            assert_eq!(
                get(mount, &["readOnly"]).and_then(Value::as_bool),
                Some(true)
            );
            assert!(get(volume, &["configMap", "name"]).is_some());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// KServe and KitOps (manifests/integrations/): tugboat where users already are

/// The fields of KServe's CRDs these manifests use (KServe's `serving.kserve.io_*.yaml`
/// schemas): an unknown key is refused as `kubectl apply` with validation would refuse it.
fn unknown_keys(at: &str, value: &Value, allowed: &[&str]) {
    let mapping = value
        .as_mapping()
        .unwrap_or_else(|| panic!("{at}: not a mapping"));
    for key in mapping.keys() {
        let key = key
            .as_str()
            .unwrap_or_else(|| panic!("{at}: a key is not a string"));
        assert!(
            allowed.contains(&key),
            "{at}: {key:?} is not a field KServe's schema has here (it has {allowed:?})"
        );
    }
}

/// KServe's default ClusterStorageContainer's formats (config/storagecontainers/default.yaml):
/// a tugboat storageUri must match none of them, or KServe's own initializer could take it.
fn matched_by_kserve_default(uri: &str) -> bool {
    ["gs://", "s3://", "hdfs://", "hf://", "modelscope://", "webhdfs://"]
        .iter()
        .any(|p| uri.starts_with(p))
        // its regexes are unanchored: any http(s):// inside matches
        || uri.contains("http://")
        || uri.contains("https://")
}

fn kserve_storage_containers(docs: &[Doc]) -> Vec<&Doc> {
    docs.iter()
        .filter(|d| kind(d) == "ClusterStorageContainer")
        .collect()
}

/// The ClusterStorageContainer KServe picks for `uri` and `workload`: the first enabled one
/// whose supportedUriFormats prefix matches (tugboat's use prefixes only).
fn storage_container_for<'a>(docs: &'a [Doc], uri: &str, workload: &str) -> Option<&'a Doc> {
    kserve_storage_containers(docs).into_iter().find(|d| {
        get(&d.value, &["disabled"]).and_then(Value::as_bool) != Some(true)
            && text(&d.value, &["spec", "workloadType"]).unwrap_or("initContainer") == workload
            && seq(&d.value, &["spec", "supportedUriFormats"])
                .iter()
                .any(|f| text(f, &["prefix"]).is_some_and(|p| uri.starts_with(p)))
    })
}

fn to_json(v: &Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap()
}

fn to_yaml(v: serde_json::Value) -> Value {
    serde_yaml_ng::to_value(v).unwrap()
}

/// What KServe builds from the InferenceServices and LocalModelCaches here, as its code builds
/// it: the predictor pod (storage-initializer = the matching ClusterStorageContainer's
/// container, `storageUri /mnt/models` appended, the `kserve-provision-location` emptyDir at
/// /mnt/models, KServe's HF_* variables added after the container's own), and the LocalModel
/// node agent's download Job (args replaced by `sourceModelUri /mnt/models`, volume mounts by
/// the node's model PVC at /mnt/models).
fn kserve_built(docs: &[Doc]) -> Vec<Doc> {
    let mut out = Vec::new();
    for isvc in docs.iter().filter(|d| kind(d) == "InferenceService") {
        let at = format!("{} InferenceService/{}", isvc.file, name(&isvc.value));
        let predictor = get(&isvc.value, &["spec", "predictor"]).expect("spec.predictor");
        let model = get(predictor, &["model"]).expect("spec.predictor.model");
        let uri = text(model, &["storageUri"]).expect("storageUri");
        let csc = storage_container_for(docs, uri, "initContainer")
            .unwrap_or_else(|| panic!("{at}: no ClusterStorageContainer takes {uri}"));
        let mut init = to_json(get(&csc.value, &["spec", "container"]).unwrap());
        init["args"] = serde_json::json!([uri, "/mnt/models"]);
        init["terminationMessagePolicy"] = "FallbackToLogsOnError".into();
        let mounts = init["volumeMounts"].as_array_mut().map(std::mem::take);
        let mut mounts = mounts.unwrap_or_default();
        mounts.push(
            serde_json::json!({"name": "kserve-provision-location", "mountPath": "/mnt/models"}),
        );
        init["volumeMounts"] = mounts.into();
        let mut env = init["env"].as_array().cloned().unwrap_or_default();
        for (k, v) in [
            ("HF_HUB_ENABLE_HF_TRANSFER", "1"),
            ("HF_XET_HIGH_PERFORMANCE", "1"),
            ("HF_XET_NUM_CONCURRENT_RANGE_GETS", "8"),
        ] {
            if !env.iter().any(|e| e["name"] == k) {
                env.push(serde_json::json!({"name": k, "value": v}));
            }
        }
        init["env"] = env.into();
        let mut volumes = get(predictor, &["volumes"])
            .map(to_json)
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        volumes.push(serde_json::json!({"name": "kserve-provision-location", "emptyDir": {}}));
        let mut server = serde_json::json!({
            "name": "kserve-container",
            "image": "kserve/huggingfaceserver:latest",
            "volumeMounts": [{"name": "kserve-provision-location", "mountPath": "/mnt/models", "readOnly": true}],
        });
        for key in ["args", "resources", "env"] {
            if let Some(v) = get(model, &[key]) {
                server[key] = to_json(v);
            }
        }
        let pod = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": format!("{}-predictor", name(&isvc.value)),
                "namespace": text(&isvc.value, &["metadata", "namespace"]).unwrap_or("default"),
            },
            "spec": {
                "initContainers": [init],
                "containers": [server],
                "volumes": volumes,
            }
        });
        out.push(Doc {
            file: format!("{} (the pod KServe's injector builds)", isvc.file),
            value: to_yaml(pod),
        });
    }
    for cache in docs.iter().filter(|d| kind(d) == "LocalModelCache") {
        let at = format!("{} LocalModelCache/{}", cache.file, name(&cache.value));
        let uri = text(&cache.value, &["spec", "sourceModelUri"]).expect("sourceModelUri");
        let group = seq(&cache.value, &["spec", "nodeGroups"])[0]
            .as_str()
            .unwrap();
        let csc = storage_container_for(docs, uri, "localModelDownloadJob")
            .unwrap_or_else(|| panic!("{at}: no localModelDownloadJob container takes {uri}"));
        let mut container = to_json(get(&csc.value, &["spec", "container"]).unwrap());
        // GetStorageKey: the first 16 hex digits of the URI's SHA-256.
        let key = &sha256_of_text(uri)[..16];
        container["args"] = serde_json::json!([uri, "/mnt/models"]);
        container["volumeMounts"] = serde_json::json!([{
            "name": "kserve-pvc-source", "mountPath": "/mnt/models", "readOnly": false,
            "subPath": format!("models/{key}")
        }]);
        container["terminationMessagePolicy"] = "FallbackToLogsOnError".into();
        let job = serde_json::json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            // generateName in KServe; the schema check needs the name it gets
            "metadata": {"name": format!("{}-node-a-x7k2p", name(&cache.value)), "namespace": "kserve-localmodel-jobs"},
            "spec": {
                "ttlSecondsAfterFinished": 3600,
                "template": {"spec": {
                    "nodeSelector": {"kubernetes.io/hostname": "node-a"},
                    "containers": [container],
                    "restartPolicy": "Never",
                    "securityContext": {"fsGroup": 1000},
                    "volumes": [{"name": "kserve-pvc-source", "persistentVolumeClaim": {
                        "claimName": format!("{}-{group}", name(&cache.value))}}],
                }}
            }
        });
        out.push(Doc {
            file: format!("{} (the Job KServe's LocalModel agent builds)", cache.file),
            value: to_yaml(job),
        });
    }
    out
}

fn sha256_of_text(text: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

#[test]
fn kserve_objects_fit_kserve_and_the_pods_it_builds_validate() {
    let docs = docs();
    let cscs = kserve_storage_containers(&docs);
    let workloads: BTreeSet<&str> = cscs
        .iter()
        .map(|d| text(&d.value, &["spec", "workloadType"]).unwrap_or("initContainer"))
        .collect();
    assert_eq!(
        workloads,
        BTreeSet::from(["initContainer", "localModelDownloadJob"]),
        "a ClusterStorageContainer for each KServe workload"
    );
    for csc in &cscs {
        let at = format!("{} ClusterStorageContainer/{}", csc.file, name(&csc.value));
        let v = &csc.value;
        assert_eq!(
            text(v, &["apiVersion"]),
            Some("serving.kserve.io/v1alpha1"),
            "{at}"
        );
        unknown_keys(
            &at,
            v,
            &["apiVersion", "kind", "metadata", "spec", "disabled"],
        );
        let spec = get(v, &["spec"]).unwrap();
        unknown_keys(
            &at,
            spec,
            &[
                "container",
                "supportedUriFormats",
                "workloadType",
                "supportsMultiModelDownload",
            ],
        );
        let container = get(spec, &["container"]).expect("spec.container is required");
        assert!(
            text(container, &["name"]).is_some(),
            "{at}: container.name is required"
        );
        assert!(is_tugboat(container), "{at}: not the tugboat image");
        // KServe appends (initContainer) or sets (localModelDownloadJob) the args: a
        // container's own args would replace `storageUri /mnt/models` or be dropped.
        assert!(
            get(container, &["args"]).is_none(),
            "{at}: set command, not args"
        );
        let formats = seq(spec, &["supportedUriFormats"]);
        assert!(!formats.is_empty(), "{at}: supportedUriFormats is required");
        for f in formats {
            unknown_keys(&at, f, &["prefix", "regex"]);
            let prefix = text(f, &["prefix"]).expect("tugboat's formats are prefixes");
            let scheme = prefix.strip_suffix("://").expect("a scheme prefix");
            assert!(
                tugboat::reference::ACCEPTED_SCHEMES.contains(&scheme),
                "{at}: tugboat does not accept {prefix}"
            );
            // oci:// goes to KServe's Modelcar handling first, oci+NAME:// is read as one of
            // KServe's OCI modes: either would never reach this container reliably.
            assert!(
                scheme != "oci" && !scheme.starts_with("oci+"),
                "{at}: {prefix} is taken by KServe's own OCI handling"
            );
            assert!(!matched_by_kserve_default(prefix), "{at}: {prefix}");
        }
        if let Some(multi) = get(spec, &["supportsMultiModelDownload"]) {
            assert_eq!(
                multi.as_bool(),
                Some(false),
                "{at}: tugboat pulls one model per run"
            );
        }
    }

    for isvc in docs.iter().filter(|d| kind(d) == "InferenceService") {
        let at = format!("{} InferenceService/{}", isvc.file, name(&isvc.value));
        assert_eq!(
            text(&isvc.value, &["apiVersion"]),
            Some("serving.kserve.io/v1beta1")
        );
        unknown_keys(
            &at,
            &isvc.value,
            &["apiVersion", "kind", "metadata", "spec"],
        );
        let predictor = get(&isvc.value, &["spec", "predictor"]).unwrap();
        let model = get(predictor, &["model"]).unwrap();
        assert!(
            text(model, &["modelFormat", "name"]).is_some(),
            "{at}: modelFormat.name"
        );
        let uri = text(model, &["storageUri"]).unwrap();
        uri.parse::<tugboat::reference::Reference>()
            .unwrap_or_else(|e| panic!("{at}: storageUri {uri}: {e}"));
        assert!(!matched_by_kserve_default(uri), "{at}: {uri}");
        // The volume the storage container mounts is the pod's (a container cannot add one).
        let csc = storage_container_for(&docs, uri, "initContainer").unwrap();
        for m in seq(&csc.value, &["spec", "container", "volumeMounts"]) {
            let volume = text(m, &["name"]).unwrap();
            assert!(
                seq(predictor, &["volumes"])
                    .iter()
                    .any(|v| text(v, &["name"]) == Some(volume)),
                "{at}: the storage container mounts {volume}, which the predictor does not declare"
            );
        }
        let ns = text(&isvc.value, &["metadata", "namespace"]).unwrap();
        let namespace = find(&docs, "Namespace", ns).expect("its Namespace");
        assert_eq!(
            text(
                &namespace.value,
                &["metadata", "labels", "pod-security.kubernetes.io/enforce"]
            ),
            Some("privileged"),
            "{at}: a hostPath node cache needs a namespace that admits it"
        );
        let secret =
            find(&docs, "Secret", "tugboat-registry-credentials").expect("the pull secret");
        assert_eq!(
            text(&secret.value, &["type"]),
            Some("kubernetes.io/dockerconfigjson")
        );
    }
    for cache in docs.iter().filter(|d| kind(d) == "LocalModelCache") {
        let at = format!("{} LocalModelCache/{}", cache.file, name(&cache.value));
        unknown_keys(
            &at,
            &cache.value,
            &["apiVersion", "kind", "metadata", "spec"],
        );
        let spec = get(&cache.value, &["spec"]).unwrap();
        unknown_keys(
            &at,
            spec,
            &[
                "sourceModelUri",
                "modelSize",
                "nodeGroups",
                "serviceAccountName",
                "storage",
            ],
        );
        for required in ["sourceModelUri", "modelSize", "nodeGroups"] {
            assert!(
                get(spec, &[required]).is_some(),
                "{at}: {required} is required"
            );
        }
    }

    // What KServe builds from them validates against the Kubernetes schemas.
    let built = kserve_built(&docs);
    assert_eq!(built.len(), 2, "one predictor pod, one download Job");
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, doc) in built.iter().enumerate() {
        let file = dir.path().join(format!("built-{i}.yaml"));
        std::fs::write(&file, serde_yaml_ng::to_string(&doc.value).unwrap()).unwrap();
        files.push(file);
    }
    for version in [Some("1.29.0"), None] {
        let (ok, report) = kubernetes_validate(&files, version);
        assert!(
            ok,
            "what KServe builds does not validate ({version:?}):\n{report}"
        );
        assert!(!report.contains("WARN"), "{report}");
    }
    // The storage initializer runs `tugboat pull ... tugboat://REF /mnt/models`.
    let pod = &built[0];
    let inv = invocation(&pod.file, &seq(&pod.value, &["spec", "initContainers"])[0]);
    assert_eq!(subcommand(&inv.argv), ["pull"]);
    let positional = positionals(&inv.argv);
    assert_eq!(positional.len(), 2, "{:?}", inv.argv);
    assert!(positional[0].starts_with("tugboat://") && positional[1] == "/mnt/models");
}

#[test]
fn the_kitops_swap_changes_only_the_image() {
    let docs = docs();
    let kitops: Vec<Doc> = docs
        .into_iter()
        .filter(|d| d.file.starts_with("manifests/integrations/kitops/"))
        .collect();
    let invs = invocations(&kitops);
    assert!(
        !invs.is_empty(),
        "no tugboat container in manifests/integrations/kitops/"
    );
    // kitops-init's variables (build/dockerfiles/init/entrypoint.sh in kitops-ml/kitops).
    const KITOPS: [&str; 7] = [
        "MODELKIT_REF",
        "UNPACK_PATH",
        "UNPACK_FILTER",
        "EXTRA_FLAGS",
        "COSIGN_KEY",
        "COSIGN_CERT_IDENTITY",
        "COSIGN_CERT_OIDC_ISSUER",
    ];
    for inv in &invs {
        assert!(
            inv.argv.is_empty(),
            "{}: a KitOps spec has no command or args",
            inv.at
        );
        assert_eq!(effective_subcommand(inv), ["kitops-init"], "{}", inv.at);
        for (key, _) in &inv.env {
            assert!(
                KITOPS.contains(&key.as_str()) || key.starts_with("TUGBOAT_"),
                "{}: {key} is neither kitops-init's nor tugboat's",
                inv.at
            );
        }
    }
}
