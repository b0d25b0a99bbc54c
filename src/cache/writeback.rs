//! Starts the disk writing what an unpacked file has so far, while the rest of the file is
//! still arriving, so that the fsync which publishes a snapshot finds little left to flush
//! and unpacked bytes do not pile up as dirty pages (which the kernel would then write back
//! in a burst, along with download partials that never need to reach the disk).

use std::fs::File;
use std::os::fd::AsRawFd;

/// Bytes of a file written between two writeback starts.
pub const STEP: u64 = 64 << 20;

/// Asks the kernel to start writing `file`'s bytes `offset..offset + length` (without
/// waiting for them). Best effort: a failure leaves the final fsync to do the work.
pub fn start(file: &File, offset: u64, length: u64) {
    let (Ok(offset), Ok(length)) = (i64::try_from(offset), i64::try_from(length)) else {
        return;
    };
    // SAFETY: the descriptor is open for the duration of the call, and sync_file_range
    // reads nothing but its integer arguments.
    let _ = unsafe {
        nix::libc::sync_file_range(
            file.as_raw_fd(),
            offset,
            length,
            nix::libc::SYNC_FILE_RANGE_WRITE,
        )
    };
}
