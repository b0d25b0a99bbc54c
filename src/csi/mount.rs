//! The mount syscalls of the node plugin: a read-only, nosuid, nodev bind mount of a cache
//! snapshot onto a pod's target path (bind first, then remount read-only, since the kernel
//! ignores flags on the initial bind), and the unmount that tolerates "already gone".

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};
use std::path::Path;

/// Binds `source` onto `target` read-only, nosuid, nodev. Flags the source filesystem already
/// forces (noexec, noatime...) are kept, as the kernel requires in user namespaces. On
/// failure nothing stays mounted.
pub fn bind_read_only(source: &Path, target: &Path) -> Result<(), Errno> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    let mut flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    if let Ok(stat) = statvfs(source) {
        let inherited = stat.flags();
        for (fs, ms) in [
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if inherited.contains(fs) {
                flags |= ms;
            }
        }
    }
    if let Err(errno) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
        let _ = umount2(target, MntFlags::MNT_DETACH);
        return Err(errno);
    }
    Ok(())
}

/// Unmounts `target`; `Ok(false)` when nothing was mounted there or it does not exist. A busy
/// mount is detached lazily (the kernel finishes once the last user lets go).
pub fn unmount(target: &Path) -> Result<bool, Errno> {
    match umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(false),
        Err(Errno::EBUSY) => {
            tracing::warn!(target = %target.display(), "mount busy; detaching it lazily");
            umount2(target, MntFlags::MNT_DETACH).map(|()| true)
        }
        Err(errno) => Err(errno),
    }
}
