//! How the files of the cache reach a consumer's `--dest`: never as an inode the consumer could
//! write. A reflink (FICLONE: the new file shares the blocks copy-on-write, in constant time)
//! where the filesystem supports it (XFS, btrfs, bcachefs), else a kernel-side copy. Hard links
//! (`--link hard`) share the cache's inode: fast on any filesystem, but a consumer running as
//! root can `chmod` such a file and change the cache's bytes under every other user.
//!
//! A model's files are placed together (`place_all`): a few threads make the files, copy them in
//! large extents (`copy_file_range`, so the bytes never cross into user space; one file's
//! extents on several threads), start each extent's writeback as it lands, and return only once
//! every new file and folder is durable: their fsyncs run on the same threads at once, so the
//! journal commits them together, and they wait only for this model's bytes (a `syncfs` would
//! also wait for whatever else is writing to the node's disk).

use super::parallel;
use crate::cache::writeback;
use std::fs;
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// How `--dest` files are made from the cache's files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DestLink {
    /// A reflink where the filesystem supports it, else a copy: the consumer owns its inode.
    #[default]
    #[value(name = "copy")]
    Copy,
    /// Hard links into the cache where on one filesystem (else a copy). The consumer shares
    /// the cache's inode: only for consumers that cannot write it (not root, no CAP_FOWNER).
    #[value(name = "hard")]
    Hard,
}

// FICLONE = _IOW(0x94, 9, int) (linux/fs.h).
nix::ioctl_write_int!(ficlone, 0x94, 9);

/// Threads placing one model's files. The work is the kernel's (page-cache copies, writeback
/// submission), so a few threads keep a disk busy without crowding a small node.
const THREADS: usize = 4;

/// Bytes of one file a thread copies before it takes the next piece of work: large enough that
/// per-extent costs vanish, small enough that one big file spreads over every thread.
const EXTENT: u64 = 256 << 20;

/// A file of the cache and where its copy goes (the target must not exist).
pub struct Job {
    pub source: PathBuf,
    pub target: PathBuf,
}

/// A failure, and the path it concerns.
pub type Failure = (PathBuf, io::Error);

/// What became of a job's file in the first pass.
#[derive(Clone, Copy)]
enum Made {
    /// A hard link to the cache's inode: its bytes are durable already.
    Linked,
    /// A reflink, complete but for its mode.
    Cloned(u32),
    /// Created at its full size; its bytes still to be copied.
    Sized { len: u64, mode: u32 },
}

/// Makes every job's target hold its source's bytes as `how` says, and returns once the
/// targets' bytes and metadata (and `dirs`, the folders they were made in) are durable.
pub fn place_all(jobs: &[Job], dirs: &[PathBuf], how: DestLink) -> Result<(), Failure> {
    place_in_extents(jobs, dirs, how, EXTENT)
}

fn place_in_extents(
    jobs: &[Job],
    dirs: &[PathBuf],
    how: DestLink,
    extent: u64,
) -> Result<(), Failure> {
    let made = parallel::map(jobs.len(), THREADS, |i| make(&jobs[i], how))?;
    let mut extents = Vec::new();
    for (i, m) in made.iter().enumerate() {
        if let Made::Sized { len, .. } = *m {
            extents.extend((0..len.div_ceil(extent)).map(|k| (i, k * extent)));
        }
    }
    parallel::map(extents.len(), THREADS, |e| {
        let (i, offset) = extents[e];
        let Made::Sized { len, .. } = made[i] else {
            unreachable!("only sized files have extents")
        };
        copy_extent(&jobs[i], offset, extent.min(len - offset))
    })?;
    let mut new_files = Vec::new();
    for (job, m) in jobs.iter().zip(&made) {
        let mode = match *m {
            Made::Linked => continue,
            Made::Cloned(mode) | Made::Sized { mode, .. } => mode,
        };
        fs::set_permissions(&job.target, fs::Permissions::from_mode(mode))
            .map_err(|e| (job.target.clone(), e))?;
        new_files.push(&job.target);
    }
    // Concurrent fsyncs share the journal's commits.
    let durable = new_files.iter().copied().chain(dirs);
    let durable: Vec<&PathBuf> = durable.collect();
    parallel::map(durable.len(), THREADS, |i| {
        fsync(durable[i]).map_err(|e| (durable[i].clone(), e))
    })?;
    Ok(())
}

fn fsync(path: &Path) -> io::Result<()> {
    fs::File::open(path)?.sync_all()
}

use std::os::unix::fs::PermissionsExt as _;

/// The first pass over one file: a hard link (with `--link hard`), else a reflink, else a new
/// file of the source's size for the extents to fill.
fn make(job: &Job, how: DestLink) -> Result<Made, Failure> {
    if how == DestLink::Hard && fs::hard_link(&job.source, &job.target).is_ok() {
        return Ok(Made::Linked);
    }
    let at_source = |e| (job.source.clone(), e);
    let at_target = |e| (job.target.clone(), e);
    let from = fs::File::open(&job.source).map_err(at_source)?;
    let meta = from.metadata().map_err(at_source)?;
    let mode = meta.permissions().mode() & 0o7777;
    let to = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&job.target)
        .map_err(at_target)?;
    // SAFETY: both descriptors are open for the duration of the call; FICLONE takes the
    // source descriptor as its integer argument and touches no memory of ours.
    let cloned = unsafe { ficlone(to.as_raw_fd(), from.as_raw_fd() as nix::libc::c_ulong) };
    if cloned.is_ok() {
        return Ok(Made::Cloned(mode));
    }
    // EOPNOTSUPP, EXDEV, EINVAL: no reflink here; the bytes are copied. The blocks are
    // reserved first: the extents then land contiguously whatever order they arrive in, and a
    // destination without room fails here, before anything is copied.
    let len = meta.len();
    if len > 0 {
        allocate(&to, len).map_err(at_target)?;
    }
    Ok(Made::Sized { len, mode })
}

/// Gives `file` `len` bytes, allocated where the filesystem can (fallocate), else sparse.
fn allocate(file: &fs::File, len: u64) -> io::Result<()> {
    let wanted = i64::try_from(len).map_err(io::Error::other)?;
    // SAFETY: the descriptor is open for the duration of the call; fallocate reads nothing
    // but its integer arguments.
    let rc = unsafe { nix::libc::fallocate(file.as_raw_fd(), 0, 0, wanted) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(nix::libc::EOPNOTSUPP) | Some(nix::libc::ENOSYS) | Some(nix::libc::EINVAL) => {
            file.set_len(len)
        }
        _ => Err(e),
    }
}

/// Copies `source`'s bytes `offset..offset + len` to the same place in `target`: in the kernel
/// (`copy_file_range`, one writeback step per call), else through a buffer where the kernel
/// cannot (another filesystem type, an old kernel).
fn copy_extent(job: &Job, offset: u64, len: u64) -> Result<(), Failure> {
    let from = fs::File::open(&job.source).map_err(|e| (job.source.clone(), e))?;
    let to = fs::OpenOptions::new()
        .write(true)
        .open(&job.target)
        .map_err(|e| (job.target.clone(), e))?;
    let at_target = |e| (job.target.clone(), e);
    let end = offset + len;
    let mut at = offset;
    while at < end {
        let step = writeback::STEP.min(end - at);
        match copy_range(&from, &to, at, step) {
            Ok(0) => {
                return Err(at_target(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} ended at byte {at}", job.source.display()),
                )))
            }
            Ok(n) => {
                writeback::start(&to, at, n);
                at += n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if kernel_cannot(&e) => {
                return copy_buffered(&from, &to, at, end).map_err(at_target);
            }
            Err(e) => return Err(at_target(e)),
        }
    }
    Ok(())
}

/// One `copy_file_range` call: bytes `at..at + len` of `from` to the same offset of `to`.
fn copy_range(from: &fs::File, to: &fs::File, at: u64, len: u64) -> io::Result<u64> {
    let mut off_in = i64::try_from(at).map_err(io::Error::other)?;
    let mut off_out = off_in;
    // SAFETY: both descriptors are open for the duration of the call and the offsets are
    // locals the kernel writes back to; no buffer of ours is involved.
    let n = unsafe {
        nix::libc::copy_file_range(
            from.as_raw_fd(),
            &mut off_in,
            to.as_raw_fd(),
            &mut off_out,
            len as usize,
            0,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as u64)
    }
}

/// The errors that mean "not through the kernel between these two files", not "failed".
fn kernel_cannot(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EXDEV)
            | Some(nix::libc::ENOSYS)
            | Some(nix::libc::EOPNOTSUPP)
            | Some(nix::libc::EINVAL)
            | Some(nix::libc::EPERM)
    )
}

/// The copy through a 1 MiB buffer, for bytes `at..end`.
fn copy_buffered(from: &fs::File, to: &fs::File, mut at: u64, end: u64) -> io::Result<()> {
    let mut buffer = vec![0u8; 1 << 20];
    while at < end {
        let want = buffer.len().min((end - at) as usize);
        let n = from.read_at(&mut buffer[..want], at)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the source ended at byte {at}"),
            ));
        }
        to.write_all_at(&buffer[..n], at)?;
        if (at + n as u64) / writeback::STEP != at / writeback::STEP {
            writeback::start(to, at - at % writeback::STEP, writeback::STEP);
        }
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn place(source: &Path, target: &Path, how: DestLink) {
        let job = Job {
            source: source.to_path_buf(),
            target: target.to_path_buf(),
        };
        place_all(&[job], &[], how).unwrap();
    }

    #[test]
    fn copies_are_new_inodes_and_hard_links_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("blob");
        fs::write(&source, b"weights").unwrap();
        fs::set_permissions(&source, fs::Permissions::from_mode(0o444)).unwrap();
        let copy = dir.path().join("copy");
        place(&source, &copy, DestLink::Copy);
        assert_eq!(fs::read(&copy).unwrap(), b"weights");
        let (a, b) = (fs::metadata(&source).unwrap(), fs::metadata(&copy).unwrap());
        assert_ne!(a.ino(), b.ino());
        assert_eq!(b.mode() & 0o777, 0o444);
        let hard = dir.path().join("hard");
        place(&source, &hard, DestLink::Hard);
        assert_eq!(fs::metadata(&hard).unwrap().ino(), a.ino());
    }

    #[test]
    fn many_files_and_files_of_several_extents_copy_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let mut jobs = Vec::new();
        let mut expected = Vec::new();
        // Sizes around the extent and writeback boundaries, an empty file, small files.
        let extent = 1 << 20;
        let sizes = [0, 1, 4096, extent - 1, extent + 4097, 2 * extent + 3];
        for (i, size) in sizes.iter().chain([7u64; 40].iter()).enumerate() {
            let source = dir.path().join(format!("s{i}"));
            let bytes: Vec<u8> = (0..*size).map(|b| (b as u8) ^ (i as u8)).collect();
            fs::write(&source, &bytes).unwrap();
            fs::set_permissions(&source, fs::Permissions::from_mode(0o440)).unwrap();
            jobs.push(Job {
                source,
                target: dir.path().join(format!("t{i}")),
            });
            expected.push(bytes);
        }
        place_in_extents(&jobs, &[dir.path().to_path_buf()], DestLink::Copy, extent).unwrap();
        for (job, bytes) in jobs.iter().zip(&expected) {
            assert!(fs::read(&job.target).unwrap() == *bytes, "{:?}", job.target);
            let mode = fs::metadata(&job.target).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o440);
        }
    }

    #[test]
    fn the_buffered_copy_matches_the_kernel_copy() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("s");
        let bytes: Vec<u8> = (0..(3u64 << 20) + 5).map(|b| (b % 251) as u8).collect();
        fs::write(&source, &bytes).unwrap();
        let from = fs::File::open(&source).unwrap();
        let target = dir.path().join("t");
        let to = fs::File::create(&target).unwrap();
        copy_buffered(&from, &to, 0, bytes.len() as u64).unwrap();
        assert!(fs::read(&target).unwrap() == bytes);
    }

    #[test]
    fn a_missing_source_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let job = Job {
            source: dir.path().join("absent"),
            target: dir.path().join("t"),
        };
        let (path, _) = place_all(&[job], &[], DestLink::Copy).err().unwrap();
        assert_eq!(path, dir.path().join("absent"));
    }
}
