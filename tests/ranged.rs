//! Parallel ranged downloads against a real registry on loopback: a chunked pull killed
//! midway resumes only the chunks its sidecar does not record as complete, and a damaged
//! blob fetched in chunks is refused like any other (exit 5, nothing kept).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use common::*;
use tempfile::TempDir;

const MIB: u64 = 1024 * 1024;
const CHUNK: u64 = 8 * MIB;

fn tmp() -> TempDir {
    tempfile::Builder::new()
        .prefix("tugboat-ranged-")
        .tempdir()
        .unwrap()
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn chunked_flags() -> Vec<&'static str> {
    vec![
        "--concurrency",
        "1",
        "--chunk-size",
        "8MiB",
        "--streams-per-blob",
        "4",
    ]
}

/// The complete chunks `ingest/<hex>.chunks` records: (chunk_size, done indexes).
fn read_sidecar(path: &Path) -> Option<(u64, Vec<u64>)> {
    let json: serde_json::Value = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
    let chunk = json["chunk_size"].as_u64()?;
    let done = json["done"]
        .as_array()?
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    Some((chunk, done))
}

fn chunk_len(index: u64, size: u64) -> u64 {
    ((index + 1) * CHUNK).min(size) - index * CHUNK
}

enum Killed {
    Midway { done: Vec<u64> },
    FinishedFirst,
}

/// Starts a chunked pull and SIGKILLs it once a quarter of the chunks are recorded complete
/// (others are then in flight).
fn kill_midway(reference: &str, dest: &Path, cache: &Path, digest: &str, size: u64) -> Killed {
    let sidecar: PathBuf = cache.join("ingest").join(format!("{}.chunks", hex(digest)));
    let chunks = size.div_ceil(CHUNK);
    let mut cmd = pull_cmd(reference, dest, Some(cache), &chunked_flags());
    let killed = kill_when(&mut cmd, "chunk completed", cache, || {
        read_sidecar(&sidecar).filter(|(_, done)| done.len() as u64 >= chunks / 4)
    });
    match killed {
        Some(_) => {
            let (chunk, done) = read_sidecar(&sidecar).expect("sidecar readable after kill");
            assert_eq!(chunk, CHUNK, "sidecar records the chunk size");
            Killed::Midway { done }
        }
        None => Killed::FinishedFirst,
    }
}

#[test]
fn killed_chunked_pull_refetches_only_missing_chunks() {
    let reg = Registry::start();
    let src = tmp();
    for (attempt, size) in [(1u64, 388 * MIB + 12345), (2, 1540 * MIB + 777)] {
        let file = src.path().join("model.safetensors");
        write_random_file(&file, size, 70 + attempt);
        let tag = format!("v{attempt}");
        push_raw_files(&reg.host(), "models/chunked", &tag, &[&file]);
        let digest = sha256_file(&file);
        let reference = reg.reference(&format!("models/chunked:{tag}"));
        let work = tmp();
        let (dest, cache) = (work.path().join("dest"), work.path().join("cache"));

        let done = match kill_midway(&reference, &dest, &cache, &digest, size) {
            Killed::Midway { done } => done,
            Killed::FinishedFirst => {
                eprintln!("attempt {attempt}: {size} bytes finished before the kill");
                continue;
            }
        };
        let chunks = size.div_ceil(CHUNK);
        let missing: Vec<u64> = (0..chunks).filter(|i| !done.contains(i)).collect();
        assert!(
            !missing.is_empty() && !done.is_empty(),
            "killed midway: done {done:?} of {chunks}"
        );
        let mut expected: Vec<u64> = missing.iter().map(|&i| chunk_len(i, size)).collect();
        expected.sort_unstable();

        // Let the registry log the aborted GETs before marking, so they are not counted.
        thread::sleep(Duration::from_millis(500));
        let mark = reg.mark();
        pull(&reference, &dest, Some(&cache), &chunked_flags())
            .assert_ok("chunked pull resumed after SIGKILL");
        assert_same_files(&dest, &[("model.safetensors", &file)]);
        assert_eq!(
            fs::read_dir(cache.join("ingest"))
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".partial") || n.ends_with(".chunks"))
                .count(),
            0,
            "no partial or sidecar left after the verified blob was stored"
        );

        let gets = reg.blob_downloads_since(mark, &digest);
        eprintln!(
            "{size} bytes in {chunks} chunks, {} complete at the kill; re-fetched {gets:?}",
            done.len()
        );
        assert!(
            gets.iter().all(|g| g.status == 206),
            "every re-fetch is a Range request: {gets:?}"
        );
        let mut fetched: Vec<u64> = gets.iter().map(|g| g.bytes_written).collect();
        fetched.sort_unstable();
        assert_eq!(
            fetched, expected,
            "the resumed pull fetches exactly the chunks missing at the kill, one GET each"
        );
        return;
    }
    panic!("could not interrupt a chunked pull midway");
}

/// Pushes a 40 MiB blob, damages it in registry storage, and pulls it in 2 MiB chunks.
fn assert_damaged_chunked_blob_is_refused(damage: impl FnOnce(&Path)) {
    let reg = Registry::start();
    let src = tmp();
    let file = src.path().join("weights.bin");
    write_random_file(&file, 40 * MIB, 9);
    push_raw_files(&reg.host(), "models/damaged", "v1", &[&file]);
    let digest = sha256_file(&file);
    damage(&reg.blob_data_path(&digest));

    let work = tmp();
    let (dest, cache) = (work.path().join("dest"), work.path().join("cache"));
    let out = pull(
        &reg.reference("models/damaged:v1"),
        &dest,
        Some(&cache),
        &["--chunk-size", "2MiB", "--streams-per-blob", "4"],
    );
    out.assert_code(5, "a damaged blob fetched in chunks is an integrity error");
    assert!(
        out.stderr.contains(hex(&digest)),
        "stderr names the blob {digest}:\n{}",
        out.stderr
    );
    assert!(
        !cache.join("blobs/sha256").join(hex(&digest)).exists(),
        "a blob that failed its digest never lands in blobs/"
    );
    assert!(
        list_dir(&dest).is_empty(),
        "dest holds nothing: {:?}",
        walk(&dest)
    );
}

#[test]
fn corrupted_blob_fetched_in_chunks_fails_with_exit_5() {
    assert_damaged_chunked_blob_is_refused(|data| {
        let mut bytes = fs::read(data).unwrap();
        let at = bytes.len() * 3 / 4;
        bytes[at] ^= 0xff;
        fs::write(data, bytes).unwrap();
    });
}

#[test]
fn truncated_blob_fetched_in_chunks_fails_with_exit_5() {
    assert_damaged_chunked_blob_is_refused(|data| {
        let len = fs::metadata(data).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(data)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
    });
}
