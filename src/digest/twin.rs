//! SHA-256 with its state in the open, so that one stream of bytes can feed two digests at
//! once: a tar layer's digest and the digest of the file being unpacked from it. Where the
//! two are at the same offset within a block, whole blocks go through both in one pass
//! (`shani`, on x86 with the SHA extensions); elsewhere each is updated on its own through
//! `sha2`'s block function. Either way the results are plain SHA-256 (FIPS 180-4).

use super::Digest;
use sha2::block_api::compress256;

const INITIAL: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// A running SHA-256.
#[derive(Clone)]
pub struct Sha256State {
    state: [u32; 8],
    buffer: [u8; 64],
    buffered: usize,
    length: u64,
}

impl Default for Sha256State {
    fn default() -> Self {
        Sha256State {
            state: INITIAL,
            buffer: [0; 64],
            buffered: 0,
            length: 0,
        }
    }
}

/// `bytes`, a whole number of blocks, as the block slices `sha2` and `shani` take.
fn as_blocks(bytes: &[u8]) -> &[[u8; 64]] {
    let (blocks, rest) = bytes.as_chunks::<64>();
    debug_assert!(rest.is_empty());
    blocks
}

impl Sha256State {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.length
    }

    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.length += data.len() as u64;
        if self.buffered > 0 {
            let take = data.len().min(64 - self.buffered);
            self.buffer[self.buffered..self.buffered + take].copy_from_slice(&data[..take]);
            self.buffered += take;
            data = &data[take..];
            if self.buffered < 64 {
                return;
            }
            let block = self.buffer;
            compress256(&mut self.state, &[block]);
            self.buffered = 0;
        }
        let whole = data.len() / 64 * 64;
        compress256(&mut self.state, as_blocks(&data[..whole]));
        let rest = &data[whole..];
        self.buffer[..rest.len()].copy_from_slice(rest);
        self.buffered = rest.len();
    }

    pub fn finish(mut self) -> Digest {
        let bits = self.length.wrapping_mul(8);
        let mut padding = [0u8; 72];
        padding[0] = 0x80;
        let pad = if self.buffered < 56 {
            56 - self.buffered
        } else {
            120 - self.buffered
        };
        padding[pad..pad + 8].copy_from_slice(&bits.to_be_bytes());
        let length = self.length;
        self.update(&padding[..pad + 8]);
        debug_assert_eq!(self.buffered, 0);
        self.length = length;
        let mut out = [0u8; 32];
        for (bytes, word) in out.chunks_exact_mut(4).zip(self.state) {
            bytes.copy_from_slice(&word.to_be_bytes());
        }
        Digest::from_sha256_bytes(&out)
    }
}

/// Feeds the same `data` to both digests, in one pass where their block offsets agree.
pub fn update_both(a: &mut Sha256State, b: &mut Sha256State, data: &[u8]) {
    if a.buffered != b.buffered || !both_at_once() {
        a.update(data);
        b.update(data);
        return;
    }
    let head = ((64 - a.buffered) % 64).min(data.len());
    a.update(&data[..head]);
    b.update(&data[..head]);
    let data = &data[head..];
    if a.buffered != 0 {
        return;
    }
    let whole = data.len() / 64 * 64;
    compress_both(&mut a.state, &mut b.state, as_blocks(&data[..whole]));
    a.length += whole as u64;
    b.length += whole as u64;
    a.update(&data[whole..]);
    b.update(&data[whole..]);
}

/// Whether blocks can go through both states in one pass on this processor.
#[cfg(target_arch = "x86_64")]
fn both_at_once() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(super::shani::available)
}

#[cfg(target_arch = "x86_64")]
fn compress_both(a: &mut [u32; 8], b: &mut [u32; 8], blocks: &[[u8; 64]]) {
    super::shani::compress_both(a, b, blocks)
}

#[cfg(not(target_arch = "x86_64"))]
fn both_at_once() -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
fn compress_both(a: &mut [u32; 8], b: &mut [u32; 8], blocks: &[[u8; 64]]) {
    compress256(a, blocks);
    compress256(b, blocks);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(data: &[u8]) -> Digest {
        Digest::of_bytes(data)
    }

    #[test]
    fn known_answers() {
        let empty = Sha256State::new().finish();
        assert_eq!(
            empty.hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut abc = Sha256State::new();
        abc.update(b"abc");
        assert_eq!(
            abc.finish().hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        for length in [55, 56, 63, 64, 65, 119, 120, 127, 128, 1000] {
            let data: Vec<u8> = (0..length).map(|i| (i * 7 + 3) as u8).collect();
            let mut one = Sha256State::new();
            one.update(&data);
            assert_eq!(one.finish(), reference(&data), "length {length}");
        }
    }

    proptest! {
        /// A layer digest over header + content and a file digest over content alone, fed
        /// in arbitrary pieces, equal plain SHA-256 of the same bytes.
        #[test]
        fn both_digests_match_sha256(
            blocks in 0usize..12,
            misaligned in prop_oneof![Just(0usize), 1usize..64],
            content in proptest::collection::vec(any::<u8>(), 0..5000),
            cuts in proptest::collection::vec(0usize..5000, 0..8),
        ) {
            // A tar header is whole blocks, so content starts block-aligned in the layer; a
            // misaligned start takes the one-at-a-time path.
            let header: Vec<u8> = (0..blocks * 64 + misaligned).map(|i| (i * 31) as u8).collect();
            let mut layer = Sha256State::new();
            let mut file = Sha256State::new();
            layer.update(&header);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(content.len())).collect();
            cuts.sort_unstable();
            let mut at = 0;
            for cut in cuts.into_iter().chain([content.len()]) {
                update_both(&mut layer, &mut file, &content[at..cut]);
                at = cut;
            }
            prop_assert_eq!(file.len(), content.len() as u64);
            prop_assert_eq!(file.finish(), reference(&content));
            let whole = [header.as_slice(), content.as_slice()].concat();
            prop_assert_eq!(layer.finish(), reference(&whole));
        }
    }
}
