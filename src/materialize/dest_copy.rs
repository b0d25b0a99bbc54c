//! How a file of the cache reaches a consumer's `--dest`: never as an inode the consumer could
//! write. A reflink (FICLONE: the new file shares the blocks copy-on-write, in constant time)
//! where the filesystem supports it (XFS, btrfs, bcachefs), else a kernel-side copy. Hard links
//! (`--link hard`) share the cache's inode: fast on any filesystem, but a consumer running as
//! root can `chmod` such a file and change the cache's bytes under every other user.

use std::fs;
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

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

/// Makes `target` (which must not exist) hold `source`'s bytes as `how` says.
pub fn place(source: &Path, target: &Path, how: DestLink) -> io::Result<()> {
    if how == DestLink::Hard && fs::hard_link(source, target).is_ok() {
        return Ok(());
    }
    reflink_or_copy(source, target)
}

fn reflink_or_copy(source: &Path, target: &Path) -> io::Result<()> {
    let from = fs::File::open(source)?;
    let mode = from.metadata()?.permissions();
    let to = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target)?;
    // SAFETY: both descriptors are open for the duration of the call; FICLONE takes the
    // source descriptor as its integer argument and touches no memory of ours.
    let cloned = unsafe { ficlone(to.as_raw_fd(), from.as_raw_fd() as nix::libc::c_ulong) };
    if cloned.is_err() {
        // EOPNOTSUPP, EXDEV, EINVAL: no reflink here; copy in the kernel instead.
        drop(to);
        fs::remove_file(target)?;
        fs::copy(source, target)?;
    }
    fs::set_permissions(target, mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn copies_are_new_inodes_and_hard_links_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("blob");
        fs::write(&source, b"weights").unwrap();
        fs::set_permissions(&source, fs::Permissions::from_mode(0o444)).unwrap();
        let copy = dir.path().join("copy");
        place(&source, &copy, DestLink::Copy).unwrap();
        assert_eq!(fs::read(&copy).unwrap(), b"weights");
        let (a, b) = (fs::metadata(&source).unwrap(), fs::metadata(&copy).unwrap());
        assert_ne!(a.ino(), b.ino());
        assert_eq!(b.mode() & 0o777, 0o444);
        let hard = dir.path().join("hard");
        place(&source, &hard, DestLink::Hard).unwrap();
        assert_eq!(fs::metadata(&hard).unwrap().ino(), a.ino());
    }
    use std::os::unix::fs::PermissionsExt as _;
}
