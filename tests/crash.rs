//! Crash safety and full disks.
//!
//! - SIGKILL at seeded points of many pulls (the fault proxy kills the process the moment it
//!   has sent a chosen number of body bytes): afterwards `tugboat cache verify` finds nothing
//!   corrupt, every partial is a prefix of its blob, and a re-run completes fetching exactly
//!   the bytes that were not on disk.
//! - A full disk (a 64 MiB tmpfs mounted by the test, as root; skipped with a message where
//!   mounting is not allowed): the pull fails with exit 6 and a clear message, what is left is
//!   consistent, and the next pull succeeds once space is freed.

mod common;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;
use fault_proxy::*;

const MIB: usize = 1024 * 1024;

/// xorshift64*: the seeded choices of the kill loop.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Bytes of each blob already on disk: complete blobs count fully, partials by length.
fn bytes_on_disk(cache: &Path, blobs: &[Vec<u8>]) -> u64 {
    blobs
        .iter()
        .map(|b| {
            let hex = &sha256_bytes(b)[7..];
            if cache.join("blobs/sha256").join(hex).is_file() {
                b.len() as u64
            } else {
                fs::metadata(cache.join("ingest").join(format!("{hex}.partial")))
                    .map(|m| m.len())
                    .unwrap_or(0)
            }
        })
        .sum()
}

/// Downloads one blob at a time, largest first; kills never land exactly at the end of a blob.
#[test]
fn sigkill_at_seeded_points_never_corrupts_and_reruns_fetch_only_the_rest() {
    crash_loop(&["--concurrency", "1"], true);
}

/// Parallel downloads, kills anywhere, including after a blob's last byte reached its partial
/// but before the rename: the re-run verifies and commits such a partial.
#[test]
fn sigkill_anywhere_with_parallel_downloads() {
    crash_loop(&[], false);
}

/// The precise reproduction: a partial holding every byte of its blob, as a kill just before
/// the rename leaves it, must be verified and committed without fetching anything.
#[test]
fn a_complete_partial_is_committed_without_a_request() {
    let reg = Registry::start();
    let weights = random_bytes(2 * MIB, 301);
    push_raw_artifact(
        &reg.host(),
        "crash/full",
        "v1",
        &[(Some("w.bin"), weights.clone())],
        &[],
    );
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    fs::create_dir_all(cache.join("ingest")).unwrap();
    let hex = &sha256_bytes(&weights)[7..];
    fs::write(
        cache.join("ingest").join(format!("{hex}.partial")),
        &weights,
    )
    .unwrap();
    let proxy = FaultProxy::start(&reg.host());
    let dest = work.path().join("dest");
    pull(&proxy.reference("crash/full:v1"), &dest, Some(&cache), &[]).assert_ok("complete partial");
    assert_eq!(fs::read(dest.join("w.bin")).unwrap(), weights);
    let fetched: u64 = proxy.seen_matching(hex).iter().map(|s| s.body_bytes).sum();
    assert_eq!(fetched, 0);
}

fn crash_loop(extra: &[&str], avoid_blob_ends: bool) {
    let reg = Registry::start();
    let files = vec![
        ("weights-1.bin".to_string(), random_bytes(24 * MIB, 101)),
        ("weights-2.bin".to_string(), random_bytes(12 * MIB, 102)),
        ("tokenizer.json".to_string(), random_bytes(4096, 103)),
    ];
    let layers: Vec<(Option<&str>, Vec<u8>)> = files
        .iter()
        .map(|(t, b)| (Some(t.as_str()), b.clone()))
        .collect();
    push_raw_artifact(&reg.host(), "crash/m", "v1", &layers, &[]);
    let blobs: Vec<Vec<u8>> = files.iter().map(|(_, b)| b.clone()).collect();
    let total: u64 = blobs.iter().map(|b| b.len() as u64).sum();
    let proxy = FaultProxy::start(&reg.host());
    let reference = proxy.reference("crash/m:v1");
    // Slow the bodies a little so the kill lands where the counter says.
    let trickle = || {
        Rule::new(
            Some("GET"),
            "/blobs/",
            Fault::Trickle {
                chunk: 256 * 1024,
                pause: Duration::from_millis(1),
            },
        )
    };
    let seed = std::env::var("TUGBOAT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7b0a7u64);
    let iterations = 12;
    let mut rng = Rng(seed | 1);
    eprintln!("crash loop: seed {seed:#x}, {iterations} iterations (TUGBOAT_CRASH_SEED to vary)");
    let work = tempfile::Builder::new()
        .prefix("tugboat-crash-")
        .tempdir()
        .unwrap();
    let mut killed_count = 0;
    for i in 0..iterations {
        let (dest, cache) = (
            work.path().join(format!("dest-{i}")),
            work.path().join(format!("cache-{i}")),
        );
        // Up to three kills per pull, at increasing byte counts, before the re-run.
        let kills = 1 + rng.below(3);
        let mut history = Vec::new();
        for _ in 0..kills {
            let threshold = 1 + rng.below(total);
            // Relative to what this attempt must fetch; blobs come largest first.
            let mut relative = threshold
                .saturating_sub(bytes_on_disk(&cache, &blobs))
                .max(1);
            if avoid_blob_ends {
                let mut end = 0;
                for b in &blobs {
                    end += b.len() as u64 - bytes_on_disk(&cache, std::slice::from_ref(b));
                    if relative == end && relative > 1 {
                        relative -= 1;
                    }
                }
            }
            proxy.clear();
            proxy.add(trickle());
            proxy.reset_counters();
            let mut child = pull_cmd(&reference, &dest, Some(&cache), extra)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            // Bytes this attempt will not need to fetch (already on disk) are not counted.
            proxy.kill_when(relative, child.id() as i32);
            let status = child.wait().unwrap();
            use std::os::unix::process::ExitStatusExt as _;
            let killed = proxy.disarm_kill() || status.signal() == Some(9);
            killed_count += usize::from(killed);
            history.push((threshold, killed, status.code()));
            if !killed {
                assert!(
                    status.success(),
                    "iteration {i}: an unkilled pull failed: {status:?}"
                );
            }
            // After every kill: nothing corrupt, partials are prefixes.
            assert_cache_sound(&cache, &blobs);
            assert_dest_all_or_nothing(&dest, &files);
        }
        let verify = run(
            tugboat()
                .args(["cache", "verify", "--json", "--cache"])
                .arg(&cache),
            TIMEOUT,
        );
        verify.assert_ok("cache verify");
        let report = verify.json();
        assert_eq!(
            report["corrupt_blobs"].as_array().map(Vec::len),
            Some(0),
            "iteration {i}: cache verify found corruption: {report}"
        );
        // The re-run fetches exactly what is missing.
        let missing = total - bytes_on_disk(&cache, &blobs);
        proxy.clear();
        proxy.reset_counters();
        let rerun = pull(&reference, &dest, Some(&cache), &[]);
        rerun.assert_ok("re-run after kills");
        assert!(assert_dest_all_or_nothing(&dest, &files));
        let fetched: u64 = proxy
            .seen_matching("/blobs/")
            .iter()
            .filter(|s| !s.path.contains(&EMPTY_DIGEST[7..]))
            .map(|s| s.body_bytes)
            .sum();
        eprintln!(
            "iteration {i}: kills {history:?}; re-run fetched {fetched} of {missing} missing bytes"
        );
        assert_eq!(
            fetched, missing,
            "iteration {i}: the re-run must fetch only what was missing (kills {history:?}); requests {:#?}",
            proxy.seen()
        );
        assert_cache_sound(&cache, &blobs);
    }
    assert!(
        killed_count >= iterations / 2,
        "too few kills landed: {killed_count}"
    );
}

// --- full disk -----------------------------------------------------------------------------

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        if !nix::unistd::geteuid().is_root() {
            skip("the full-disk test mounts a tmpfs and needs root");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("tugboat-enospc-")
            .tempdir()
            .unwrap();
        let options = format!("size={size},mode=0755");
        match nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        ) {
            Ok(()) => Some(Tmpfs { dir }),
            Err(e) => {
                skip(&format!(
                    "cannot mount a tmpfs here ({e}); the full-disk test needs CAP_SYS_ADMIN"
                ));
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Fills the filesystem at `dir` with a ballast file until writes fail.
fn fill(path: &Path) {
    use std::io::Write as _;
    let mut file = fs::File::create(path).unwrap();
    let chunk = vec![0xAAu8; MIB];
    loop {
        if file.write_all(&chunk).is_err() {
            break;
        }
    }
    // Then the last few KiB.
    let small = vec![0xAAu8; 4096];
    while file.write_all(&small).is_ok() {}
    let _ = file.sync_all();
}

#[test]
fn a_full_disk_fails_clearly_stays_consistent_and_recovers() {
    let Some(disk) = Tmpfs::mount("64m") else {
        return;
    };
    let reg = Registry::start();
    let files = vec![
        ("weights.bin".to_string(), random_bytes(20 * MIB, 201)),
        ("config.json".to_string(), b"{\"a\":1}".to_vec()),
    ];
    let layers: Vec<(Option<&str>, Vec<u8>)> = files
        .iter()
        .map(|(t, b)| (Some(t.as_str()), b.clone()))
        .collect();
    push_raw_artifact(&reg.host(), "disk/m", "v1", &layers, &[]);
    let blobs: Vec<Vec<u8>> = files.iter().map(|(_, b)| b.clone()).collect();
    let weights = sha256_bytes(&files[0].1);
    let proxy = FaultProxy::start(&reg.host());
    let reference = proxy.reference("disk/m:v1");
    let (cache, dest) = (disk.path().join("cache"), disk.path().join("dest"));

    // 1. The disk fills up mid-download: the blob request is held until a ballast file has
    //    taken every free byte, then the body flows into a full filesystem.
    proxy.add(Rule::new(Some("GET"), &format!("/blobs/{weights}"), Fault::Hold).times(1));
    let child = pull_cmd(&reference, &dest, Some(&cache), &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while proxy.seen_matching(&format!("/blobs/{weights}")).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the pull never asked for the blob"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ballast = disk.path().join("ballast");
    fill(&ballast);
    proxy.release();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("full disk mid-download: {:?}\n{stderr}", out.status.code());
    assert_eq!(
        out.status.code(),
        Some(6),
        "a full disk is exit 6:\n{stderr}"
    );
    assert!(
        stderr.contains("full") || stderr.contains("No space"),
        "the message says the disk is full:\n{stderr}"
    );
    assert_cache_sound(&cache, &blobs);
    assert!(!assert_dest_all_or_nothing(&dest, &files));

    // 2. Space freed: the next pull completes.
    fs::remove_file(&ballast).unwrap();
    proxy.clear();
    pull(&reference, &dest, Some(&cache), &[]).assert_ok("pull after freeing space");
    assert!(assert_dest_all_or_nothing(&dest, &files));
    assert_cache_sound(&cache, &blobs);
    let verify = run(
        tugboat()
            .args(["cache", "verify", "--json", "--cache"])
            .arg(&cache),
        TIMEOUT,
    );
    verify.assert_ok("cache verify");
    assert_eq!(
        verify.json()["corrupt_blobs"].as_array().map(Vec::len),
        Some(0)
    );

    // 3. A model that cannot fit at all is refused before downloading anything.
    let big_files = [("huge.bin".to_string(), random_bytes(48 * MIB, 202))];
    let layers: Vec<(Option<&str>, Vec<u8>)> = big_files
        .iter()
        .map(|(t, b)| (Some(t.as_str()), b.clone()))
        .collect();
    push_raw_artifact(&reg.host(), "disk/big", "v1", &layers, &[]);
    let dest2 = disk.path().join("dest-big");
    proxy.reset_counters();
    let out = pull(&proxy.reference("disk/big:v1"), &dest2, Some(&cache), &[]);
    out.assert_code(6, "a model larger than the free space");
    assert!(out.stderr.contains("not enough space"), "{}", out.stderr);
    assert_eq!(
        proxy
            .seen_matching("/blobs/")
            .iter()
            .map(|s| s.body_bytes)
            .sum::<u64>(),
        0,
        "nothing downloaded for a model that cannot fit"
    );
    assert!(list_dir(&dest2).is_empty());
    assert_cache_sound(&cache, &blobs);

    // 4. The destination's filesystem fills while installing (cache elsewhere): exit 6, and
    //    the destination holds none of the model.
    let other = tempfile::tempdir().unwrap();
    let cache_elsewhere = other.path().join("cache");
    pull(
        &reference,
        &other.path().join("warm"),
        Some(&cache_elsewhere),
        &[],
    )
    .assert_ok("warm a cache on another filesystem");
    fill(&ballast);
    let dest3 = disk.path().join("dest-copy");
    let out = pull(&reference, &dest3, Some(&cache_elsewhere), &[]);
    eprintln!("full dest: {:?}\n{}", out.code(), out.stderr);
    out.assert_code(6, "a destination on a full filesystem");
    assert!(!assert_dest_all_or_nothing(&dest3, &files));
    fs::remove_file(&ballast).unwrap();
    pull(&reference, &dest3, Some(&cache_elsewhere), &[]).assert_ok("dest after freeing space");
    assert!(assert_dest_all_or_nothing(&dest3, &files));
    drop(proxy);
    drop(disk);
}
