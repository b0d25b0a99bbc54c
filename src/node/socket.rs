//! The CSI endpoint: `unix:///csi/csi.sock` parsed to a path, a stale socket file from a
//! previous run removed (a live one refused), the listener bound with a restrictive umask and
//! its permissions set to the configured mode.

use super::NodeError;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use tokio::net::UnixListener;

/// `unix:///a/b.sock`, `unix:/a/b.sock` or `/a/b.sock` -> `/a/b.sock`.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, NodeError> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if !path.starts_with('/') || path.len() < 2 {
        return Err(NodeError::Endpoint(endpoint.to_string()));
    }
    Ok(PathBuf::from(path))
}

pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, NodeError> {
    let fail = |source| NodeError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    remove_stale(path).map_err(fail)?;
    // Nobody but the owner may connect between bind and chmod.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(fail)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o777)).map_err(fail)?;
    Ok(listener)
}

/// Removes a socket file nobody listens on; refuses to touch anything else.
fn remove_stale(path: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "exists and is not a socket; refusing to replace it",
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another process is serving on this socket",
        ));
    }
    tracing::info!(socket = %path.display(), "removing the stale socket of a previous run");
    std::fs::remove_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_forms() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").unwrap(),
            Path::new("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("unix:/csi/csi.sock").unwrap(),
            Path::new("/csi/csi.sock")
        );
        assert_eq!(socket_path("/x.sock").unwrap(), Path::new("/x.sock"));
        assert!(socket_path("tcp://0.0.0.0:1").is_err());
        assert!(socket_path("unix://relative.sock").is_err());
    }

    #[tokio::test]
    async fn stale_socket_replaced_live_one_and_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let live = bind(&path, 0o600).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            bind(&path, 0o600).is_err(),
            "a live socket must not be replaced"
        );
        drop(live);
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(bind(&file, 0o600).is_err());
        assert!(file.exists());
    }
}
