//! Leases from plan to install: a pull holds what it reads from the cache until its result is
//! in `--dest`, so `cache gc` and `cache rm` run at the worst moment (the snapshot committed,
//! not yet installed) take nothing from it; a killed pull's lease is reclaimed, so nothing
//! stays pinned. The moment is reached deterministically through the `install` pause point.

mod common;
#[path = "common/csi_client.rs"]
mod csi_client;

use common::*;
use csi_client::{publish_request, unpublish_request, Daemon, Workspace};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// An eight-file model under `repo:v1`; returns its reference and the source files.
fn push_model(reg: &Registry, work: &Path, repo: &str, seed: u64) -> (String, Vec<PathBuf>) {
    let dir = work.join(format!("src-{}", repo.replace('/', "-")));
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<PathBuf> = (0..8)
        .map(|i| {
            let file = dir.join(format!("part{i}.bin"));
            std::fs::write(&file, random_bytes(MIB + i * 4096, seed + i as u64)).unwrap();
            file
        })
        .collect();
    let reference = reg.reference(&format!("{repo}:v1"));
    push(&dir, &reference, &[]).assert_ok("push");
    (reference, files)
}

/// A pull started with the `install` pause armed; returns once it is paused there.
fn paused_pull(reference: &str, dest: &Path, cache: &Path, pause: &Path) -> Child {
    std::fs::create_dir_all(pause).unwrap();
    let mut cmd = pull_cmd(reference, dest, Some(cache), &[]);
    let mut child = cmd
        .env("TUGBOAT_PAUSE_AT", "install")
        .env("TUGBOAT_PAUSE_DIR", pause)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tugboat pull");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pause.join("install.reached").exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the pull ended before its install point: {status}");
        }
        assert!(Instant::now() < deadline, "the pull never reached install");
        thread::sleep(Duration::from_millis(10));
    }
    child
}

fn release_and_wait(mut child: Child, pause: &Path) -> (bool, String) {
    std::fs::write(pause.join("install.release"), b"").unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.success(), stderr)
}

fn gc_far_below(cache: &Path) -> Run {
    let mut cmd = tugboat();
    cmd.args(["cache", "gc", "--max-size", "1KiB", "--cache"])
        .arg(cache);
    run(&mut cmd, TIMEOUT)
}

fn cache_rm(cache: &Path, reference: &str) -> Run {
    let mut cmd = tugboat();
    cmd.args(["cache", "rm", reference, "--cache"]).arg(cache);
    run(&mut cmd, TIMEOUT)
}

fn snapshot_count(cache: &Path) -> usize {
    std::fs::read_dir(cache.join("snapshots"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_type().unwrap().is_dir() && !e.file_name().to_string_lossy().starts_with('.')
        })
        .count()
}

fn originals(files: &[PathBuf]) -> Vec<(String, &Path)> {
    files
        .iter()
        .map(|f| {
            (
                f.file_name().unwrap().to_string_lossy().into_owned(),
                f.as_path(),
            )
        })
        .collect()
}

fn assert_tree(dest: &Path, files: &[PathBuf]) {
    let named = originals(files);
    let pairs: Vec<(&str, &Path)> = named.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    assert_same_files(dest, &pairs);
}

#[test]
fn gc_and_rm_between_commit_and_install_take_nothing_from_the_pull() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let (model, files) = push_model(&reg, work.path(), "models/held", 1);
    let (other, _) = push_model(&reg, work.path(), "models/other", 100);

    for (round, what) in ["cold", "warm"].iter().enumerate() {
        let dest = work.path().join(format!("dest-{what}"));
        let pause = work.path().join(format!("pause-{what}"));
        let child = paused_pull(&model, &dest, &cache, &pause);

        // The worst moment: the snapshot is committed, nothing is in --dest yet.
        let other_dest = work.path().join(format!("other-{what}"));
        pull(&other, &other_dest, Some(&cache), &[]).assert_ok("other model");
        cache_rm(&cache, &other).assert_ok("rm of a model nothing holds");
        gc_far_below(&cache).assert_ok("gc beside the paused pull");
        let rm = cache_rm(&cache, &model);
        assert_ne!(rm.code(), Some(0), "rm of a model a pull holds must refuse");
        assert!(
            rm.stderr.contains("is in use by") && rm.stderr.contains("pull "),
            "rm names the pull that holds the model: {}",
            rm.stderr
        );

        let (ok, stderr) = release_and_wait(child, &pause);
        assert!(ok, "{what} pull failed beside gc and rm: {stderr}");
        assert_tree(&dest, &files);
        assert_eq!(
            snapshot_count(&cache),
            1,
            "round {round}: the held model stays"
        );

        // Its lease went with the pull: now the same collection removes it.
        gc_far_below(&cache).assert_ok("gc after the pull");
        if *what == "warm" {
            assert_eq!(snapshot_count(&cache), 0, "a finished pull pins nothing");
        } else {
            // Pulled again warm next round: put it back.
            pull(&model, &work.path().join("refill"), Some(&cache), &[]).assert_ok("refill");
        }
    }
    assert!(
        std::fs::read_dir(cache.join("leases/work"))
            .unwrap()
            .next()
            .is_none(),
        "no work lease left"
    );
}

#[test]
fn a_killed_pulls_lease_is_reclaimed() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let (model, _) = push_model(&reg, work.path(), "models/killed", 7);
    let pause = work.path().join("pause");
    let mut child = paused_pull(&model, &work.path().join("dest"), &cache, &pause);

    gc_far_below(&cache).assert_ok("gc beside the live pull");
    assert_eq!(snapshot_count(&cache), 1, "the live pull's snapshot stays");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    let left = lease_files(&cache);
    assert!(
        left.iter().any(|p| p.starts_with("work")),
        "a killed pull leaves its lease file: {left:?}"
    );

    gc_far_below(&cache).assert_ok("gc after the kill");
    assert_eq!(snapshot_count(&cache), 0, "the dead pull pins nothing");
    let left = lease_files(&cache);
    assert!(
        left.is_empty(),
        "the dead pull's lease is reclaimed: {left:?}"
    );
}

/// The files under `leases/` (lock files aside), relative to it.
fn lease_files(cache: &Path) -> Vec<PathBuf> {
    let root = cache.join("leases");
    walk(&root)
        .into_iter()
        .filter(|p| root.join(p).is_file() && p.extension().is_none_or(|e| e != "lock"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_and_rm_beside_a_paused_publish_take_nothing_from_it() {
    if !csi_client::can_mount() {
        return;
    }
    let reg = Registry::start();
    let ws = Workspace::new();
    let (model, files) = push_model(&reg, ws.dir.path(), "models/published", 40);
    let pause = ws.dir.path().join("pause");
    std::fs::create_dir_all(&pause).unwrap();
    let daemon = Daemon::start_with_env(
        &ws,
        &[],
        &[
            ("TUGBOAT_PAUSE_AT", "install"),
            ("TUGBOAT_PAUSE_DIR", pause.to_str().unwrap()),
        ],
    );
    let (_, mut node) = daemon.clients().await;
    let target = ws.target("pod-a");
    let request = publish_request("vol-a", &target, &model);
    let mut publisher = node.clone();
    let publish = tokio::spawn(async move { publisher.node_publish_volume(request).await });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pause.join("install.reached").exists() {
        assert!(
            Instant::now() < deadline,
            "the publish never reached install"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let cache = ws.cache();
    gc_far_below(&cache).assert_ok("gc beside the paused publish");
    let rm = cache_rm(&cache, &model);
    assert!(
        rm.stderr.contains("is in use by") && rm.stderr.contains("publish "),
        "rm names the publish that holds the model: {}",
        rm.stderr
    );
    std::fs::write(pause.join("install.release"), b"").unwrap();
    publish
        .await
        .unwrap()
        .expect("the publish succeeds beside gc and rm");
    assert_tree(&target, &files);

    // Now the volume's own lease holds it.
    gc_far_below(&cache).assert_ok("gc while mounted");
    assert_eq!(snapshot_count(&cache), 1, "a mounted model stays");
    node.node_unpublish_volume(unpublish_request("vol-a", &target))
        .await
        .expect("unpublish");
    gc_far_below(&cache).assert_ok("gc after unpublish");
    assert_eq!(
        snapshot_count(&cache),
        0,
        "an unpublished model pins nothing"
    );
}
