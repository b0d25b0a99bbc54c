//! A corpus of hostile artifacts against a real registry: each is refused with a clear error
//! and leaves nothing in the destination nor a snapshot in the cache. Also: setuid bits are
//! cleared, and a 10 GB gzip bomb and a 100k-entry tar trip the default limits.

#[path = "common/artifacts.rs"]
mod artifacts;
mod common;

use artifacts::{file_header, gzip, push_artifact, tar, Entry, Layer};
use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const MP_ARTIFACT: &str = "application/vnd.cncf.model.manifest.v1+json";
const MP_CONFIG: &str = "application/vnd.cncf.model.config.v1+json";
const WEIGHT_TAR: &str = "application/vnd.cncf.model.weight.v1.tar";
const WEIGHT_TGZ: &str = "application/vnd.cncf.model.weight.v1.tar+gzip";
const WEIGHT_RAW: &str = "application/vnd.cncf.model.weight.v1.raw";
const FILEPATH: &str = "org.cncf.model.filepath";
const TITLE: &str = "org.opencontainers.image.title";

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tugboat-hostile-")
        .tempdir()
        .unwrap()
}

/// Pushes a ModelPack artifact with the given layers.
fn push_modelpack(reg: &Registry, repo: &str, layers: &[Layer]) -> String {
    let config =
        br#"{"descriptor":{"name":"evil"},"config":{},"modelfs":{"type":"layers","diffIds":[]}}"#;
    push_artifact(
        &reg.host(),
        repo,
        "v1",
        Some(MP_ARTIFACT),
        (MP_CONFIG, config),
        layers,
        &[],
    )
}

/// Pulls `repo:v1` expecting a refusal whose message contains `needle`; checks that neither
/// the destination nor the cache holds anything of it.
fn assert_refused(reg: &Registry, repo: &str, needle: &str, extra: &[&str]) {
    let dir = tmp();
    let dest = dir.path().join("dest");
    let cache = dir.path().join("cache");
    let run = pull(
        &reg.reference(&format!("{repo}:v1")),
        &dest,
        Some(&cache),
        extra,
    );
    assert!(
        !run.status.success(),
        "{repo}: the pull should fail\n{}",
        run.stderr
    );
    assert_ne!(
        run.code(),
        Some(101),
        "{repo}: tugboat panicked:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(needle),
        "{repo}: expected {needle:?} in the error, got:\n{}",
        run.stderr
    );
    assert!(
        list_dir(&dest).is_empty(),
        "{repo}: destination has {:?}",
        walk(&dest)
    );
    let snapshots: Vec<_> = fs::read_dir(cache.join("snapshots"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default();
    assert!(snapshots.is_empty(), "{repo}: cache kept {snapshots:?}");
    // Refused while streaming: neither the partial download nor a blob of it stays.
    let kept: Vec<_> = ["ingest", "blobs/sha256"]
        .iter()
        .flat_map(|sub| list_dir(&cache.join(sub)))
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(kept.is_empty(), "{repo}: cache kept {kept:?}");
}

fn tar_layer(entries: &[Entry<'_>]) -> Vec<Layer> {
    vec![Layer::new(WEIGHT_TAR, tar(entries), &[])]
}

#[test]
fn traversal_and_absolute_names_are_refused() {
    let reg = Registry::start();
    push_modelpack(
        &reg,
        "evil/dotdot",
        &tar_layer(&[Entry::File("ok.bin", b"1"), Entry::File("../escaped", b"x")]),
    );
    assert_refused(&reg, "evil/dotdot", "'..'", &[]);
    push_modelpack(
        &reg,
        "evil/abs",
        &tar_layer(&[Entry::File("/etc/evil", b"x")]),
    );
    assert_refused(&reg, "evil/abs", "absolute", &[]);
    // A filepath annotation that leaves the tree.
    push_modelpack(
        &reg,
        "evil/annot",
        &[Layer::new(
            WEIGHT_RAW,
            b"x".to_vec(),
            &[(FILEPATH, "../../x")],
        )],
    );
    assert_refused(&reg, "evil/annot", "unsafe path", &[]);
    // An ORAS directory whose entries leave the folder its title names.
    let layers = vec![Layer::new(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        gzip(&tar(&[
            Entry::File("dir/a", b"a"),
            Entry::File("other/b", b"b"),
        ])),
        &[(TITLE, "dir"), ("io.deis.oras.content.unpack", "true")],
    )];
    push_artifact(
        &reg.host(),
        "evil/orasdir",
        "v1",
        None,
        ("application/vnd.oci.empty.v1+json", b"{}"),
        &layers,
        &[],
    );
    assert_refused(&reg, "evil/orasdir", "outside \"dir\"", &[]);
}

#[test]
fn symlink_escapes_are_refused() {
    let reg = Registry::start();
    push_modelpack(
        &reg,
        "evil/symup",
        &tar_layer(&[Entry::Symlink("link", "../../../etc/passwd")]),
    );
    assert_refused(&reg, "evil/symup", "leads out of the tree", &[]);
    push_modelpack(
        &reg,
        "evil/symabs",
        &tar_layer(&[Entry::Symlink("link", "/etc/passwd")]),
    );
    assert_refused(&reg, "evil/symabs", "leads out of the tree", &[]);
    // Harmless-looking link, then an entry written through it.
    push_modelpack(
        &reg,
        "evil/through",
        &tar_layer(&[
            Entry::Dir("sub/"),
            Entry::Symlink("sub/up", ".."),
            Entry::File("sub/up/x", b"x"),
        ]),
    );
    assert_refused(&reg, "evil/through", "passes through the symlink", &[]);
    // The lexical trick: `a/b -> ..` is inside, `a/c -> b/../..` would leave via b.
    push_modelpack(
        &reg,
        "evil/lexical",
        &tar_layer(&[
            Entry::Dir("a/"),
            Entry::Symlink("a/b", ".."),
            Entry::Symlink("a/c", "b/../.."),
        ]),
    );
    assert_refused(&reg, "evil/lexical", "'..' after a name", &[]);
}

#[test]
fn hardlink_escapes_and_special_files_are_refused() {
    let reg = Registry::start();
    push_modelpack(
        &reg,
        "evil/hard",
        &tar_layer(&[Entry::Hardlink("h", "../../etc/passwd")]),
    );
    assert_refused(&reg, "evil/hard", "leads out of the tree", &[]);
    push_modelpack(
        &reg,
        "evil/hardabs",
        &tar_layer(&[Entry::Hardlink("h", "/etc/passwd")]),
    );
    assert_refused(&reg, "evil/hardabs", "leads out of the tree", &[]);
    push_modelpack(
        &reg,
        "evil/chardev",
        &tar_layer(&[Entry::CharDevice("null")]),
    );
    assert_refused(&reg, "evil/chardev", "device nodes and FIFOs", &[]);
    push_modelpack(&reg, "evil/fifo", &tar_layer(&[Entry::Fifo("pipe")]));
    assert_refused(&reg, "evil/fifo", "device nodes and FIFOs", &[]);
}

#[test]
fn duplicate_paths_and_disagreeing_names_are_refused() {
    let reg = Registry::start();
    push_modelpack(
        &reg,
        "evil/dup",
        &tar_layer(&[
            Entry::File("a.bin", b"first"),
            Entry::File("a.bin", b"second"),
        ]),
    );
    assert_refused(&reg, "evil/dup", "claimed twice", &[]);
    // The same path from two layers.
    push_modelpack(
        &reg,
        "evil/dup2",
        &[
            Layer::new(WEIGHT_RAW, b"one".to_vec(), &[(FILEPATH, "w.bin")]),
            Layer::new(
                WEIGHT_TAR,
                tar(&[Entry::File("w.bin", b"two")]),
                &[(FILEPATH, "w.bin")],
            ),
        ],
    );
    assert_refused(&reg, "evil/dup2", "claim", &[]);
    push_modelpack(
        &reg,
        "evil/names",
        &[Layer::new(
            WEIGHT_RAW,
            b"w".to_vec(),
            &[
                (FILEPATH, "model.safetensors"),
                (TITLE, "other.safetensors"),
            ],
        )],
    );
    assert_refused(&reg, "evil/names", "disagree", &[]);
}

#[test]
fn setuid_setgid_sticky_bits_are_cleared() {
    let reg = Registry::start();
    push_modelpack(
        &reg,
        "evil/suid",
        &tar_layer(&[
            Entry::FileMode("run", b"#!/bin/sh\n", 0o4755),
            Entry::FileMode("grp", b"g", 0o2644),
            Entry::FileMode("sticky", b"s", 0o1644),
        ]),
    );
    let dir = tmp();
    let dest = dir.path().join("dest");
    pull(&reg.reference("evil/suid:v1"), &dest, None, &[]).assert_ok("pull");
    for name in ["run", "grp", "sticky"] {
        let mode = fs::metadata(dest.join(name)).unwrap().permissions().mode();
        assert_eq!(mode & 0o7000, 0, "{name} keeps special bits: {mode:o}");
    }
    assert_eq!(
        fs::metadata(dest.join("run")).unwrap().permissions().mode() & 0o111,
        0o111
    );
}

/// A gzip stream expanding to `size` bytes of zeros inside one tar entry, built from
/// concatenated gzip members so the test never holds or compresses 10 GB.
fn gzip_bomb(size: u64) -> Vec<u8> {
    const CHUNK: usize = 64 << 20;
    assert_eq!(size % CHUNK as u64, 0);
    let mut out = gzip(&file_header("bomb.bin", size));
    let zeros = gzip(&vec![0u8; CHUNK]);
    for _ in 0..size / CHUNK as u64 {
        out.extend_from_slice(&zeros);
    }
    out.extend_from_slice(&gzip(&[0u8; 1024]));
    out
}

#[test]
fn a_ten_gigabyte_gzip_bomb_is_refused() {
    let reg = Registry::start();
    let bomb = gzip_bomb(10 << 30);
    assert!(
        bomb.len() < 16 << 20,
        "the bomb itself is small: {}",
        bomb.len()
    );
    push_modelpack(&reg, "evil/bomb", &[Layer::new(WEIGHT_TGZ, bomb, &[])]);
    assert_refused(&reg, "evil/bomb", "--max-compression-ratio", &[]);
    // Raising the ratio still leaves the total cap.
    assert_refused(
        &reg,
        "evil/bomb",
        "--max-expanded-size",
        &[
            "--max-compression-ratio",
            "100000",
            "--max-expanded-size",
            "1GiB",
        ],
    );
}

#[test]
fn a_hundred_thousand_entry_tar_is_refused() {
    let reg = Registry::start();
    let names: Vec<String> = (0..100_000).map(|i| format!("f/{i}")).collect();
    let mut entries = vec![Entry::Dir("f/")];
    entries.extend(names.iter().map(|n| Entry::File(n.as_str(), b"")));
    push_modelpack(
        &reg,
        "evil/many",
        &[Layer::new(WEIGHT_TGZ, gzip(&tar(&entries)), &[])],
    );
    assert_refused(&reg, "evil/many", "--max-files", &[]);
}

#[test]
fn a_refused_pull_leaves_an_existing_destination_untouched() {
    let reg = Registry::start();
    push_modelpack(
        &reg,
        "good/m",
        &[Layer::new(
            WEIGHT_RAW,
            b"good".to_vec(),
            &[(FILEPATH, "w.bin")],
        )],
    );
    push_modelpack(
        &reg,
        "evil/m",
        &tar_layer(&[Entry::File("w.bin", b"bad"), Entry::File("../x", b"x")]),
    );
    let dir = tmp();
    let dest = dir.path().join("dest");
    pull(&reg.reference("good/m:v1"), &dest, None, &[]).assert_ok("good pull");
    let run = pull(&reg.reference("evil/m:v1"), &dest, None, &[]);
    assert!(!run.status.success());
    assert_eq!(fs::read(dest.join("w.bin")).unwrap(), b"good");
    assert!(!Path::new(&dir.path().join("x")).exists());
}
