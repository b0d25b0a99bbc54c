//! Reads the kernel's mount table (`/proc/self/mountinfo`): which paths are mount points, and
//! what part of which filesystem each one shows. Used to make publish/unpublish idempotent and
//! to rebuild state after a restart.

use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u32,
    pub parent: u32,
    /// `major:minor` of the filesystem.
    pub device: String,
    /// The directory of the filesystem shown at the mount point (a bind mount's source).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub options: String,
    pub fs_type: String,
    pub source: String,
}

/// The current mount table of this process's mount namespace.
pub fn read() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    // 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    let (before, after) = line.split_once(" - ")?;
    let mut fields = before.split(' ');
    let id = fields.next()?.parse().ok()?;
    let parent = fields.next()?.parse().ok()?;
    let device = fields.next()?.to_string();
    let root = PathBuf::from(unescape(fields.next()?));
    let mount_point = PathBuf::from(unescape(fields.next()?));
    let options = fields.next()?.to_string();
    let mut tail = after.split(' ');
    let fs_type = tail.next()?.to_string();
    let source = unescape(tail.next().unwrap_or_default());
    Some(MountEntry {
        id,
        parent,
        device,
        root,
        mount_point,
        options,
        fs_type,
        source,
    })
}

/// The kernel writes space, tab, newline and backslash as `\040`, `\011`, `\012`, `\134`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(value) = u8::try_from(value) {
                    out.push(value);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The entries mounted exactly at `path`, innermost (last mounted) last.
pub fn mounts_at<'a>(table: &'a [MountEntry], path: &Path) -> Vec<&'a MountEntry> {
    table.iter().filter(|m| m.mount_point == path).collect()
}

/// The mount that contains `path` (longest mount-point prefix; the last one wins on ties).
pub fn containing<'a>(table: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    table
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.components().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
36 35 98:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 36 0:33 / /tmp rw,nosuid,nodev shared:7 - tmpfs tmpfs rw
90 40 0:33 /cache/snapshots/abc /tmp/pods/a\\040b/mount ro,nosuid,nodev,relatime shared:7 - tmpfs tmpfs rw
bad line
";

    #[test]
    fn parses_fields_and_escapes() {
        let table = parse(SAMPLE);
        assert_eq!(table.len(), 4);
        let bind = &table[3];
        assert_eq!(bind.id, 90);
        assert_eq!(bind.parent, 40);
        assert_eq!(bind.device, "0:33");
        assert_eq!(bind.root, Path::new("/cache/snapshots/abc"));
        assert_eq!(bind.mount_point, Path::new("/tmp/pods/a b/mount"));
        assert!(bind.options.starts_with("ro,"));
        assert_eq!(bind.fs_type, "tmpfs");
        assert_eq!(mounts_at(&table, Path::new("/tmp/pods/a b/mount")).len(), 1);
        assert_eq!(
            containing(&table, Path::new("/tmp/cache/x")).unwrap().id,
            40
        );
        assert_eq!(containing(&table, Path::new("/var/x")).unwrap().id, 36);
    }

    #[test]
    fn unescape_keeps_plain_backslashes() {
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("a\\9"), "a\\9");
        assert_eq!(unescape("end\\"), "end\\");
    }
}
