//! The soak: for `SOAK_SECONDS` (default 600) everything that touches a node cache runs at
//! once on one cache: two `tugboat pull --dest` loops, CSI publish / read / unpublish through
//! the node daemon, the daemon's warm loop following a warm list rewritten every few seconds
//! (the daemon also collects every second with `--cache-max-size 1KiB`), `cache gc --max-size
//! 1KiB` and `cache rm` of random models. Then the end checks: every model pulled once more is
//! identical to what was pushed, `cache verify` is clean, and no partial download, lease or
//! mount is left. `soak_with_kills` adds a killer that SIGKILLs a random live participant
//! (a pull, a gc, an rm or the node daemon, which is restarted) every 0.5-2 s: killed work is
//! counted as killed, every survivor must succeed and the cache must still verify.
//!
//! Both are `#[ignore]`d benchmarks run by bench/soak.sh; each prints a table of rounds,
//! failures and kills per participant, then asserts zero failures. Needs root (bind mounts).
//! `SOAK_SEED` replays a run's choices of models and kill victims.

mod common;
#[path = "common/csi_client.rs"]
mod csi_client;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use csi_client::*;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use sha2::{Digest as _, Sha256};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tugboat::csi::proto::node_client::NodeClient;

const MIB: u64 = 1 << 20;
const MODELS: usize = 5;
const PULL_TIMEOUT: Duration = Duration::from_secs(300);
const CACHE_COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
const WARM_LIST_EVERY: Duration = Duration::from_secs(3);
/// Failures printed in full per participant; the rest are counted.
const FAILURES_SHOWN: usize = 10;

#[test]
#[ignore = "a soak of several minutes: run by bench/soak.sh"]
fn soak() {
    run_soak(false);
}

#[test]
#[ignore = "a soak of several minutes: run by bench/soak.sh"]
fn soak_with_kills() {
    run_soak(true);
}

fn run_soak(with_kills: bool) {
    if !can_mount() {
        return;
    }
    let seconds = env_number("SOAK_SECONDS", 600);
    let seed = env_number("SOAK_SEED", clock_seed());
    let name = if with_kills {
        "soak_with_kills"
    } else {
        "soak"
    };
    println!("{name}: {seconds} s, SOAK_SEED={seed}");

    let registry = Registry::start();
    let ws = Workspace::new();
    let models = Arc::new(push_models(&registry, &ws.dir.path().join("models")));
    let warm_list = ws.dir.path().join("warm.yaml");
    write_warm_list(&warm_list, Some(&models[0].reference));
    let node = Node::start(&ws, &warm_list);
    let soak = Soak {
        cache: ws.cache(),
        work: ws.dir.path().to_path_buf(),
        models,
        deadline: Instant::now() + Duration::from_secs(seconds),
        processes: Processes::default(),
        node: node.clone(),
    };

    let started = Instant::now();
    let mut rows = run_participants(&soak, &ws, &warm_list, seed, with_kills);
    let soaked = started.elapsed();

    let mut end = EndChecks::default();
    settle_node(&soak, &ws, &warm_list, &mut end);
    rows.push(warm_row(&node));
    rows.push(node_row(&node));
    end.notes.push(keep_daemon_log(&node, name));
    rows.push(final_pulls(&soak));
    if with_kills {
        // What killed holders left is reclaimed by the next collection; the temporary files
        // of writers killed between write and rename go once they are a minute old.
        thread::sleep(Duration::from_secs(61));
        collect_once(&soak.cache, &mut end);
    }
    check_cache(&soak.cache, &ws, &mut end);

    print_table(name, soaked, seed, &rows, &end);
    let failures: usize = rows.iter().map(|r| r.failures.len()).sum();
    assert_eq!(failures, 0, "{name}: participants failed (table above)");
    assert!(
        end.problems.is_empty(),
        "{name}: end checks failed: {:?}",
        end.problems
    );
}

// ---------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------

/// A pushed model and what every pulled or mounted tree of it must hold.
struct Model {
    name: String,
    reference: String,
    files: Vec<SourceFile>,
}

struct SourceFile {
    path: PathBuf,
    size: u64,
    digest: String,
}

/// Five models of 21-45 MiB each: three weight shards, a config and a nested tokenizer, so
/// the working set (about 165 MiB) is far above any collection's limit.
fn push_models(registry: &Registry, root: &Path) -> Vec<Model> {
    (0..MODELS)
        .map(|index| {
            let name = format!("soak-{index}");
            let dir = root.join(&name);
            write_model_files(&dir, index as u64);
            let reference = registry.reference(&format!("models/{name}:v1"));
            push(&dir, &reference, &[]).assert_ok("push a soak model");
            Model {
                files: source_files(&dir),
                name,
                reference,
            }
        })
        .collect()
}

fn write_model_files(dir: &Path, index: u64) {
    fs::create_dir_all(dir.join("tokenizer")).unwrap();
    for shard in 0..3u64 {
        let path = dir.join(format!("model-0000{}-of-00003.safetensors", shard + 1));
        write_random_file(&path, (6 + 2 * index + shard) * MIB, 100 * index + shard);
    }
    let config = format!(
        "{{\"model\": \"soak-{index}\", \"layers\": {}}}\n",
        10 + index
    );
    fs::write(dir.join("config.json"), config).unwrap();
    let tokenizer = random_bytes(MIB as usize + 123 * index as usize, 1000 + index);
    fs::write(dir.join("tokenizer/tokenizer.json"), tokenizer).unwrap();
}

fn source_files(dir: &Path) -> Vec<SourceFile> {
    walk(dir)
        .into_iter()
        .filter(|path| dir.join(path).is_file())
        .map(|path| SourceFile {
            size: fs::metadata(dir.join(&path)).unwrap().len(),
            digest: sha256_file(&dir.join(&path)),
            path,
        })
        .collect()
}

/// Whether `root` (a `--dest` tree or a mount) holds exactly the model's files, byte for byte.
fn compare_tree(root: &Path, model: &Model) -> Result<(), String> {
    let found: Vec<PathBuf> = walk(root)
        .into_iter()
        .filter(|path| !path.starts_with(".tugboat") && root.join(path).is_file())
        .collect();
    let pushed: Vec<PathBuf> = model.files.iter().map(|f| f.path.clone()).collect();
    if found != pushed {
        return Err(format!(
            "{} at {}: files {found:?}, pushed {pushed:?}",
            model.name,
            root.display()
        ));
    }
    for file in &model.files {
        let path = root.join(&file.path);
        let (size, digest) = hash_file(&path)
            .map_err(|e| format!("{}: reading {}: {e}", model.name, path.display()))?;
        if size != file.size || digest != file.digest {
            return Err(format!(
                "{}: {} is {size} bytes {digest}, pushed {} bytes {}",
                model.name,
                path.display(),
                file.size,
                file.digest
            ));
        }
    }
    Ok(())
}

fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, format!("sha256:{}", hex::encode(hasher.finalize()))))
}

// ---------------------------------------------------------------------------------------
// Participants
// ---------------------------------------------------------------------------------------

/// What every participant shares.
struct Soak {
    cache: PathBuf,
    work: PathBuf,
    models: Arc<Vec<Model>>,
    deadline: Instant,
    processes: Processes,
    node: Node,
}

impl Soak {
    fn running(&self) -> bool {
        Instant::now() < self.deadline
    }

    fn model(&self, rng: &mut Rng) -> &Model {
        &self.models[rng.below(self.models.len())]
    }
}

/// One participant's tally: rounds run, each failure's text, rounds cut short by a kill.
#[derive(Default)]
struct Row {
    name: String,
    rounds: u64,
    failures: Vec<String>,
    killed: u64,
    notes: String,
}

impl Row {
    fn named(name: &str) -> Row {
        Row {
            name: name.to_string(),
            ..Row::default()
        }
    }
}

/// Runs every participant until the deadline and returns their rows.
fn run_participants(
    soak: &Soak,
    ws: &Workspace,
    warm_list: &Path,
    seed: u64,
    with_kills: bool,
) -> Vec<Row> {
    thread::scope(|scope| {
        let mut handles = vec![
            scope.spawn(move || puller(soak, "pull A", Rng::new(seed ^ 1))),
            scope.spawn(move || puller(soak, "pull B", Rng::new(seed ^ 2))),
            scope.spawn(move || publisher(soak, ws, Rng::new(seed ^ 3))),
            scope.spawn(move || warm_list_writer(soak, warm_list)),
            scope.spawn(move || collector(soak)),
            scope.spawn(move || remover(soak, Rng::new(seed ^ 5))),
        ];
        if with_kills {
            handles.push(scope.spawn(move || killer(soak, Rng::new(seed ^ 6))));
        }
        handles
            .into_iter()
            .map(|handle| {
                handle.join().unwrap_or_else(|panic| Row {
                    name: "a participant".into(),
                    failures: vec![format!("panicked: {}", panic_text(&panic))],
                    ..Row::default()
                })
            })
            .collect()
    })
}

/// `tugboat pull REF --dest FRESH --cache C`, the tree compared with the source, the dest deleted.
fn puller(soak: &Soak, name: &str, mut rng: Rng) -> Row {
    let mut row = Row::named(name);
    let tag = name.replace(' ', "-");
    while soak.running() {
        row.rounds += 1;
        let model = soak.model(&mut rng);
        let dest = soak.work.join(format!("pulls/{tag}-{}", row.rounds));
        let mut cmd = pull_cmd(&model.reference, &dest, Some(&soak.cache), &[]);
        match soak.processes.run(&mut cmd, name, PULL_TIMEOUT) {
            Ended::Killed => row.killed += 1,
            Ended::Failed(text) => row.failures.push(format!("{}: {text}", model.name)),
            Ended::Succeeded(_) => {
                if let Err(text) = compare_tree(&dest, model) {
                    row.failures.push(text);
                }
            }
        }
        let _ = fs::remove_dir_all(&dest);
    }
    row
}

/// `tugboat cache gc --max-size 1KiB` in a loop: it must always succeed.
fn collector(soak: &Soak) -> Row {
    let mut row = Row::named("cache gc");
    let mut evicted = 0usize;
    while soak.running() {
        row.rounds += 1;
        let mut cmd = tugboat();
        cmd.args(["cache", "gc", "--max-size", "1KiB", "--json", "--cache"])
            .arg(&soak.cache);
        match soak
            .processes
            .run(&mut cmd, "cache gc", CACHE_COMMAND_TIMEOUT)
        {
            Ended::Killed => row.killed += 1,
            Ended::Failed(text) => row.failures.push(text),
            Ended::Succeeded(run) => evicted += models_evicted(&run.stdout),
        }
        thread::sleep(Duration::from_millis(100));
    }
    row.notes = format!("{evicted} models evicted");
    row
}

fn models_evicted(json: &str) -> usize {
    serde_json::from_str::<serde_json::Value>(json.trim())
        .ok()
        .and_then(|report| report["snapshots_removed"].as_array().map(Vec::len))
        .unwrap_or(0)
}

/// `tugboat cache rm REF` of a random model: removed (0), not cached (3) and a refusal that
/// names who uses it are all fine; anything else is a failure.
fn remover(soak: &Soak, mut rng: Rng) -> Row {
    let mut row = Row::named("cache rm");
    let (mut removed, mut absent, mut in_use) = (0, 0, 0);
    while soak.running() {
        row.rounds += 1;
        let model = soak.model(&mut rng);
        let mut cmd = tugboat();
        cmd.args(["cache", "rm", &model.reference, "--cache"])
            .arg(&soak.cache);
        match soak
            .processes
            .run(&mut cmd, "cache rm", CACHE_COMMAND_TIMEOUT)
        {
            Ended::Killed => row.killed += 1,
            Ended::Succeeded(_) => removed += 1,
            Ended::Failed(text) if text.starts_with("exit 3:") => absent += 1,
            Ended::Failed(text) if text.contains("is in use by") => in_use += 1,
            Ended::Failed(text) => row.failures.push(format!("{}: {text}", model.name)),
        }
        thread::sleep(Duration::from_millis(150));
    }
    row.notes = format!("{removed} removed, {absent} not cached, {in_use} in use");
    row
}

/// Names a different model in the warm list every few seconds, as ConfigMap updates replace
/// the file. The warm loop's passes and failures are read from the daemon's log afterwards.
fn warm_list_writer(soak: &Soak, warm_list: &Path) -> Row {
    let mut row = Row::named("warm list");
    let mut next = 1;
    while soak.running() {
        thread::sleep(WARM_LIST_EVERY.min(soak.deadline.saturating_duration_since(Instant::now())));
        write_warm_list(
            warm_list,
            Some(&soak.models[next % soak.models.len()].reference),
        );
        next += 1;
        row.rounds += 1;
    }
    row.notes = "list rewrites; the warm loop's row is `warm passes`".into();
    row
}

/// The warm list file (written aside and renamed in, as kubelet updates a ConfigMap volume).
fn write_warm_list(path: &Path, reference: Option<&str>) {
    let body = match reference {
        Some(reference) => format!("interval: 1s\nmodels:\n  - reference: {reference}\n"),
        None => "interval: 1s\nmodels: []\n".to_string(),
    };
    let staged = path.with_extension("new");
    fs::write(&staged, body).unwrap();
    fs::rename(&staged, path).unwrap();
}

/// Publishes a random model to a fresh target through the daemon, reads and hashes every file
/// through the mount, unpublishes. A call the daemon's death cut short counts as killed; the
/// target is unpublished through the restarted daemon.
fn publisher(soak: &Soak, ws: &Workspace, mut rng: Rng) -> Row {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut row = Row::named("csi publish");
    while soak.running() {
        row.rounds += 1;
        let model = soak.model(&mut rng);
        let volume = format!("soak-{}", row.rounds);
        let target = ws.target(&volume);
        let round = runtime.block_on(publish_round(soak, model, &volume, &target));
        let clean = matches!(round, Round::Done) && !is_mounted(&target);
        match round {
            Round::Done => {}
            Round::Killed => row.killed += 1,
            Round::Failed(text) => row.failures.push(text),
        }
        if !clean {
            if let Err(text) = runtime.block_on(ensure_unpublished(soak, &volume, &target)) {
                row.failures.push(text);
            }
        }
    }
    row
}

enum Round {
    Done,
    Killed,
    Failed(String),
}

async fn publish_round(soak: &Soak, model: &Model, volume: &str, target: &Path) -> Round {
    let Some(generation) = soak.node.wait_up().await else {
        return Round::Failed("the node daemon did not come back".into());
    };
    let died = || soak.node.generation() != generation;
    let mut client = match try_connect(&soak.node.socket).await {
        Ok(client) => client,
        Err(_) if died() => return Round::Killed,
        Err(text) => return Round::Failed(text),
    };
    let request = publish_request(volume, target, &model.reference);
    match with_deadline(client.node_publish_volume(request)).await {
        Ok(_) => {}
        Err(_) if died() => return Round::Killed,
        Err(text) => return Round::Failed(format!("publish {}: {text}", model.name)),
    }
    let read = compare_tree(target, model);
    let unpublished =
        with_deadline(client.node_unpublish_volume(unpublish_request(volume, target))).await;
    if let Err(text) = read {
        return Round::Failed(format!("through the mount: {text}"));
    }
    match unpublished {
        Ok(_) => Round::Done,
        Err(_) if died() => Round::Killed,
        Err(text) => Round::Failed(format!("unpublish {}: {text}", model.name)),
    }
}

/// Unpublishes `target` through the (possibly restarted) daemon until nothing is mounted there.
async fn ensure_unpublished(soak: &Soak, volume: &str, target: &Path) -> Result<(), String> {
    let giving_up = Instant::now() + Duration::from_secs(120);
    while Instant::now() < giving_up {
        let Some(generation) = soak.node.wait_up().await else {
            return Err("the node daemon did not come back".into());
        };
        match unpublish_once(soak, volume, target).await {
            Ok(()) if !is_mounted(target) => return Ok(()),
            Ok(()) => {
                return Err(format!(
                    "unpublish {volume} succeeded but {} is still mounted",
                    target.display()
                ))
            }
            // The daemon died meanwhile: again, through the one that replaced it.
            Err(_) if soak.node.generation() != generation => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(text) => return Err(format!("unpublish {volume} after its round: {text}")),
        }
    }
    Err(format!("{} still mounted after 120 s", target.display()))
}

async fn unpublish_once(soak: &Soak, volume: &str, target: &Path) -> Result<(), String> {
    let mut client = try_connect(&soak.node.socket).await?;
    with_deadline(client.node_unpublish_volume(unpublish_request(volume, target)))
        .await
        .map(|_| ())
}

fn is_mounted(target: &Path) -> bool {
    let Ok(target) = fs::canonicalize(target) else {
        return false;
    };
    tugboat::csi::mountinfo::read()
        .unwrap_or_default()
        .iter()
        .any(|m| m.mount_point == target)
}

async fn with_deadline<T>(
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(PULL_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err(format!("no answer in {PULL_TIMEOUT:?}")),
    }
}

/// A client on the daemon's socket, or why not (the daemon may be dead).
async fn try_connect(socket: &Path) -> Result<NodeClient<Channel>, String> {
    let socket = socket.to_path_buf();
    let endpoint = Endpoint::try_from("http://[::]:50051").unwrap();
    let connecting = endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
        let socket = socket.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
    }));
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok(channel)) => Ok(NodeClient::new(channel)),
        Ok(Err(e)) => Err(format!("connect to the CSI socket: {e}")),
        Err(_) => Err("connect to the CSI socket: no answer in 10 s".into()),
    }
}

/// Every 0.5-2 s, SIGKILLs one random live participant process: a pull, a gc, an rm or the
/// node daemon (restarted at once on the same socket and cache).
fn killer(soak: &Soak, mut rng: Rng) -> Row {
    let mut row = Row::named("killer");
    let mut by_role: BTreeMap<String, u64> = BTreeMap::new();
    while soak.running() {
        thread::sleep(Duration::from_millis(500 + rng.below(1500) as u64));
        if !soak.running() {
            break;
        }
        let live = soak.processes.live_count();
        let victim = if rng.below(live + 1) == live {
            match soak.node.kill_and_restart() {
                Ok(()) => Some("node daemon".to_string()),
                Err(text) => {
                    row.failures.push(text);
                    break;
                }
            }
        } else {
            soak.processes.kill_random(&mut rng)
        };
        if let Some(role) = victim {
            row.rounds += 1;
            *by_role.entry(role).or_default() += 1;
        }
    }
    row.notes = by_role
        .iter()
        .map(|(role, n)| format!("{role} x{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    row
}

// ---------------------------------------------------------------------------------------
// Child processes the killer may pick
// ---------------------------------------------------------------------------------------

/// The live child processes of the participants, and which of them the killer killed.
#[derive(Clone, Default)]
struct Processes(Arc<Mutex<ProcessTable>>);

#[derive(Default)]
struct ProcessTable {
    live: BTreeMap<i32, String>,
    killed: HashSet<i32>,
}

enum Ended {
    Succeeded(Run),
    /// Exit status and the error lines of stderr.
    Failed(String),
    Killed,
}

impl Processes {
    fn table(&self) -> MutexGuard<'_, ProcessTable> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `cmd` to its end, registered as killable under `role`. A process stays in the
    /// table until it has exited but is not yet reaped, so its PID is never reused while
    /// the killer may pick it.
    fn run(&self, cmd: &mut Command, role: &str, timeout: Duration) -> Ended {
        let mut child = match cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
            Ok(child) => child,
            Err(e) => return Ended::Failed(format!("spawn {cmd:?}: {e}")),
        };
        let pid = child.id() as i32;
        self.table().live.insert(pid, role.to_string());
        let stdout = read_in_background(child.stdout.take().unwrap());
        let stderr = read_in_background(child.stderr.take().unwrap());
        let timed_out = !wait_for_exit_unreaped(pid, timeout);
        if timed_out {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            wait_for_exit_unreaped(pid, Duration::from_secs(10));
        }
        let killed_by_us = {
            let mut table = self.table();
            table.live.remove(&pid);
            table.killed.remove(&pid)
        };
        let status = child.wait().expect("reap a child");
        let run = Run {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        };
        if timed_out {
            Ended::Failed(format!(
                "no exit in {timeout:?}: {}",
                error_lines(&run.stderr)
            ))
        } else if killed_by_us && status.signal() == Some(Signal::SIGKILL as i32) {
            Ended::Killed
        } else if status.success() {
            Ended::Succeeded(run)
        } else {
            let how = match status.code() {
                Some(code) => format!("exit {code}"),
                None => format!("{status}"),
            };
            Ended::Failed(format!("{how}: {}", error_lines(&run.stderr)))
        }
    }

    fn live_count(&self) -> usize {
        self.table().live.len()
    }

    /// SIGKILLs one live child at random; returns its role.
    fn kill_random(&self, rng: &mut Rng) -> Option<String> {
        let mut table = self.table();
        if table.live.is_empty() {
            return None;
        }
        let index = rng.below(table.live.len());
        let (pid, role) = table
            .live
            .iter()
            .nth(index)
            .map(|(pid, role)| (*pid, role.clone()))?;
        kill(Pid::from_raw(pid), Signal::SIGKILL).ok()?;
        table.killed.insert(pid);
        Some(role)
    }
}

/// Waits until `pid` has exited, leaving it unreaped (`WNOWAIT`); false on timeout.
fn wait_for_exit_unreaped(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    while Instant::now() < deadline {
        match waitid(Id::Pid(Pid::from_raw(pid)), flags) {
            Ok(WaitStatus::StillAlive) => thread::sleep(Duration::from_millis(10)),
            _ => return true,
        }
    }
    false
}

fn read_in_background(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// The `error: ...` lines of a command's stderr, else its last three lines.
fn error_lines(stderr: &str) -> String {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("error:"))
        .collect();
    if !errors.is_empty() {
        return errors.join(" | ");
    }
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

// ---------------------------------------------------------------------------------------
// The node daemon
// ---------------------------------------------------------------------------------------

/// The `tugboat node` process, shared by the publisher, the killer and the end checks. Its
/// generation is odd while it is down (killed, not yet restarted) and changes on each kill.
#[derive(Clone)]
struct Node {
    daemon: Arc<Mutex<Daemon>>,
    generation: Arc<AtomicU64>,
    starts: Arc<AtomicU64>,
    socket: PathBuf,
    log: PathBuf,
}

impl Node {
    fn start(ws: &Workspace, warm_list: &Path) -> Node {
        let warm = warm_list.display().to_string();
        let http = format!("127.0.0.1:{}", free_port());
        let daemon = Daemon::start(
            ws,
            &[
                "--warm-config",
                &warm,
                "--http-addr",
                &http,
                "--gc-interval",
                "1",
                "--cache-max-size",
                "1KiB",
            ],
        );
        Node {
            socket: daemon.socket.clone(),
            log: daemon.log.clone(),
            daemon: Arc::new(Mutex::new(daemon)),
            generation: Arc::new(AtomicU64::new(0)),
            starts: Arc::new(AtomicU64::new(1)),
        }
    }

    fn daemon(&self) -> MutexGuard<'_, Daemon> {
        self.daemon
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Waits while the daemon is down; returns the generation it is up in (None: it never
    /// came back).
    async fn wait_up(&self) -> Option<u64> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let generation = self.generation();
            if generation.is_multiple_of(2) {
                return Some(generation);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill_and_restart(&self) -> Result<(), String> {
        let mut daemon = self.daemon();
        self.generation.fetch_add(1, Ordering::SeqCst);
        daemon.stop_with(Signal::SIGKILL);
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| daemon.restart()))
            .map_err(|panic| format!("the node daemon did not restart: {}", panic_text(&panic)))?;
        self.starts.fetch_add(1, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn stop(&self) -> std::process::ExitStatus {
        self.daemon().stop_with(Signal::SIGTERM)
    }
}

/// What the daemon's log says: warm passes done, warm entries failed, errors logged.
#[derive(Default)]
struct DaemonLog {
    passes: u64,
    warm_failures: Vec<String>,
    errors: Vec<String>,
    warnings: usize,
}

fn read_daemon_log(path: &Path) -> DaemonLog {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut log = DaemonLog::default();
    for line in text.lines() {
        if line.contains("warm pass done") {
            log.passes += 1;
        } else if line.contains("warming failed") {
            log.warm_failures.push(line.to_string());
        } else if line.contains(" ERROR ") || line.contains("panicked") {
            log.errors.push(line.to_string());
        } else if line.contains(" WARN ") {
            log.warnings += 1;
        }
    }
    log
}

/// The warm loop's row and the daemon's own: starts, errors it logged.
fn node_row(node: &Node) -> Row {
    let log = read_daemon_log(&node.log);
    let starts = node.starts.load(Ordering::SeqCst);
    Row {
        name: "node daemon".into(),
        rounds: starts,
        killed: starts - 1,
        failures: log.errors,
        notes: format!(
            "starts; errors logged are failures; {} other warnings",
            log.warnings
        ),
    }
}

/// Copies the daemon's log out of the soak's temporary directory; says where.
fn keep_daemon_log(node: &Node, name: &str) -> String {
    let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-daemon.log"));
    match fs::copy(&node.log, &kept) {
        Ok(_) => format!("the node daemon's log is kept in {}", kept.display()),
        Err(e) => format!("the node daemon's log could not be kept: {e}"),
    }
}

fn warm_row(node: &Node) -> Row {
    let log = read_daemon_log(&node.log);
    Row {
        name: "warm passes".into(),
        rounds: log.passes,
        failures: log.warm_failures,
        ..Row::default()
    }
}

// ---------------------------------------------------------------------------------------
// The end
// ---------------------------------------------------------------------------------------

/// What the end checks found wrong, in words.
#[derive(Default)]
struct EndChecks {
    problems: Vec<String>,
    passed: Vec<String>,
    /// Worth knowing, not asserted.
    notes: Vec<String>,
}

impl EndChecks {
    fn check(&mut self, what: &str, problem: Option<String>) {
        match problem {
            Some(problem) => self.problems.push(format!("{what}: {problem}")),
            None => self.passed.push(what.to_string()),
        }
    }
}

/// Empties the warm list and waits for a pass that read it (so the warm lease goes),
/// unpublishes anything still mounted, and stops the daemon.
fn settle_node(soak: &Soak, ws: &Workspace, warm_list: &Path, end: &mut EndChecks) {
    let before = read_daemon_log(&soak.node.log).passes;
    write_warm_list(warm_list, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    // Two passes: the first may have read the list before it was emptied.
    while read_daemon_log(&soak.node.log).passes < before + 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
    let passes = read_daemon_log(&soak.node.log).passes;
    end.check(
        "a warm pass over the empty list",
        (passes < before + 2).then(|| format!("{} passes in 60 s", passes - before)),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let left = ws.mounts();
    for mount in &left {
        let volume = volume_of(&mount.mount_point);
        if let Err(text) = runtime.block_on(ensure_unpublished(soak, &volume, &mount.mount_point)) {
            end.problems.push(text);
        }
    }
    end.check(
        "nothing left published by the publisher",
        (!left.is_empty()).then(|| format!("{} volumes were still mounted", left.len())),
    );
    let status = soak.node.stop();
    end.check(
        "the node daemon stops on SIGTERM",
        (!status.success()).then(|| format!("it ended with {status}")),
    );
}

/// The pod (volume id) of a target `kubelet/pods/<pod>/volumes/...`.
fn volume_of(target: &Path) -> String {
    let parts: Vec<String> = target
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts
        .iter()
        .position(|p| p == "pods")
        .and_then(|i| parts.get(i + 1).cloned())
        .unwrap_or_default()
}

/// Every model pulled once more into a fresh dir and compared (consuming what killed pulls
/// left in `ingest/`).
fn final_pulls(soak: &Soak) -> Row {
    let mut row = Row::named("final pulls");
    for model in soak.models.iter() {
        row.rounds += 1;
        let dest = soak.work.join(format!("final/{}", model.name));
        let mut cmd = pull_cmd(&model.reference, &dest, Some(&soak.cache), &[]);
        match soak.processes.run(&mut cmd, "final pull", PULL_TIMEOUT) {
            Ended::Succeeded(_) => {
                if let Err(text) = compare_tree(&dest, model) {
                    row.failures.push(text);
                }
            }
            Ended::Failed(text) => row.failures.push(format!("{}: {text}", model.name)),
            Ended::Killed => unreachable!("nothing kills after the deadline"),
        }
        let _ = fs::remove_dir_all(&dest);
    }
    row
}

fn collect_once(cache: &Path, end: &mut EndChecks) {
    let mut cmd = tugboat();
    cmd.args(["cache", "gc", "--cache"]).arg(cache);
    let run = run(&mut cmd, CACHE_COMMAND_TIMEOUT);
    end.check(
        "one `cache gc` after the kills",
        (!run.status.success()).then(|| format!("{}: {}", run.status, error_lines(&run.stderr))),
    );
}

/// `cache verify` clean; no partial download, lease or mount left.
fn check_cache(cache: &Path, ws: &Workspace, end: &mut EndChecks) {
    let mut cmd = tugboat();
    cmd.args(["cache", "verify", "--cache"]).arg(cache);
    let verify = run(&mut cmd, Duration::from_secs(600));
    end.check(
        "`cache verify` exits 0",
        (!verify.status.success()).then(|| {
            format!(
                "{}: {} {}",
                verify.status,
                verify.stdout.trim(),
                error_lines(&verify.stderr)
            )
        }),
    );
    let partials: Vec<PathBuf> = walk(&cache.join("ingest"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "partial"))
        .collect();
    end.check(
        "no *.partial in ingest/",
        (!partials.is_empty()).then(|| format!("{partials:?}")),
    );
    let leases_dir = cache.join("leases");
    let (half_written, leases): (Vec<PathBuf>, Vec<PathBuf>) = walk(&leases_dir)
        .into_iter()
        .filter(|p| leases_dir.join(p).is_file() && p.extension().is_none_or(|e| e != "lock"))
        .partition(|p| is_hidden(p));
    end.check(
        "no lease files under leases/",
        (!leases.is_empty()).then(|| describe_files(&leases_dir, &leases)),
    );
    end.check(
        "no half-written lease files (hidden temp files) under leases/",
        (!half_written.is_empty()).then(|| describe_files(&leases_dir, &half_written)),
    );
    let elsewhere: Vec<PathBuf> = walk(cache)
        .into_iter()
        .filter(|p| !p.starts_with("leases") && is_hidden(p) && cache.join(p).is_file())
        .collect();
    end.check(
        "no hidden temp files elsewhere in the cache",
        (!elsewhere.is_empty()).then(|| format!("{elsewhere:?}")),
    );
    let mounts: Vec<PathBuf> = ws.mounts().into_iter().map(|m| m.mount_point).collect();
    end.check(
        "no mounts under the soak's directory",
        (!mounts.is_empty()).then(|| format!("{mounts:?}")),
    );
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with('.'))
}

/// Each file with its bytes on one line (lease files are small JSON).
fn describe_files(root: &Path, files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|path| {
            let body = fs::read_to_string(root.join(path)).unwrap_or_default();
            format!(
                "{}: {}",
                path.display(),
                body.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn print_table(name: &str, soaked: Duration, seed: u64, rows: &[Row], end: &EndChecks) {
    println!();
    println!(
        "== {name}: {:.0} s of soak, SOAK_SEED={seed}",
        soaked.as_secs_f64()
    );
    println!(
        "{:<14} {:>8} {:>9} {:>7}  notes",
        "participant", "rounds", "failures", "killed"
    );
    for row in rows {
        println!(
            "{:<14} {:>8} {:>9} {:>7}  {}",
            row.name,
            row.rounds,
            row.failures.len(),
            row.killed,
            row.notes
        );
    }
    let total: usize = rows.iter().map(|r| r.failures.len()).sum();
    println!("{name}: {total} failures");
    for row in rows.iter().filter(|r| !r.failures.is_empty()) {
        println!("-- {} failures:", row.name);
        for text in row.failures.iter().take(FAILURES_SHOWN) {
            println!("   ! {text}");
        }
        if row.failures.len() > FAILURES_SHOWN {
            println!("   ! ... and {} more", row.failures.len() - FAILURES_SHOWN);
        }
    }
    for passed in &end.passed {
        println!("end check ok: {passed}");
    }
    for problem in &end.problems {
        println!("end check FAILED: {problem}");
    }
    for note in &end.notes {
        println!("note: {note}");
    }
}

// ---------------------------------------------------------------------------------------
// Small things
// ---------------------------------------------------------------------------------------

/// xorshift64*: the soak's choices, replayable from `SOAK_SEED`.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}
