//! Caps on what unpacking archives may create, so a hostile or broken layer (a decompression
//! bomb, a million-entry tar) fails with a clear error instead of filling the disk.

pub use crate::size::ByteSize;

/// Limits on unpacking, per pull.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Entries (files, folders, links) all archives together may create.
    pub max_files: u64,
    /// Bytes all unpacked files together may hold.
    pub max_expanded: ByteSize,
    /// How many times its compressed size one layer may expand to (beyond `ratio_floor`).
    pub max_ratio: u64,
}

impl Limits {
    pub const DEFAULT_MAX_FILES: u64 = 50_000;
    pub const DEFAULT_MAX_EXPANDED: ByteSize = ByteSize(1 << 40);
    pub const DEFAULT_MAX_RATIO: u64 = 100;
    /// Small layers may always expand to this much, whatever their ratio.
    pub const RATIO_FLOOR: u64 = 64 << 20;

    /// Bytes one layer of `compressed` bytes may expand to under the ratio guard.
    pub fn layer_budget(&self, compressed: u64) -> u64 {
        compressed
            .saturating_mul(self.max_ratio)
            .max(Self::RATIO_FLOOR)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: Self::DEFAULT_MAX_FILES,
            max_expanded: Self::DEFAULT_MAX_EXPANDED,
            max_ratio: Self::DEFAULT_MAX_RATIO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!("1TiB".parse::<ByteSize>().unwrap().0, 1 << 40);
        assert_eq!("500GiB".parse::<ByteSize>().unwrap().0, 500 << 30);
        assert_eq!("10GB".parse::<ByteSize>().unwrap().0, 10_000_000_000);
        assert_eq!("4096".parse::<ByteSize>().unwrap().0, 4096);
        assert!("lots".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(1 << 40).to_string(), "1TiB");
    }
}
