//! SHA-256 block compression for two states over the same blocks at once, with the x86 SHA
//! extensions. One message schedule serves both states, and the two chains of round
//! instructions are independent, so the processor overlaps them: two digests of one stream
//! cost little more than one. Checked against `sha2` in `twin`'s tests.

use core::arch::x86_64::*;

/// The SHA-256 round constants (FIPS 180-4, 4.2.2).
const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// Whether this processor has the instructions `compress_both` needs.
pub fn available() -> bool {
    is_x86_feature_detected!("sha")
        && is_x86_feature_detected!("sse4.1")
        && is_x86_feature_detected!("ssse3")
}

/// Compresses `blocks` into both `a` and `b`. Call only when [`available`].
pub fn compress_both(a: &mut [u32; 8], b: &mut [u32; 8], blocks: &[[u8; 64]]) {
    assert!(available(), "the SHA extensions are required");
    // SAFETY: the processor has the target features (checked above).
    unsafe { compress_both_shani(a, b, blocks) }
}

/// The state in the register order the round instructions use: (ABEF, CDGH).
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
unsafe fn load(state: &[u32; 8]) -> (__m128i, __m128i) {
    let dcba = _mm_loadu_si128(state.as_ptr() as *const __m128i);
    let hgfe = _mm_loadu_si128(state.as_ptr().add(4) as *const __m128i);
    let cdab = _mm_shuffle_epi32(dcba, 0xB1);
    let efgh = _mm_shuffle_epi32(hgfe, 0x1B);
    (
        _mm_alignr_epi8(cdab, efgh, 8),
        _mm_blend_epi16(efgh, cdab, 0xF0),
    )
}

#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
unsafe fn store(state: &mut [u32; 8], abef: __m128i, cdgh: __m128i) {
    let feba = _mm_shuffle_epi32(abef, 0x1B);
    let dchg = _mm_shuffle_epi32(cdgh, 0xB1);
    _mm_storeu_si128(
        state.as_mut_ptr() as *mut __m128i,
        _mm_blend_epi16(feba, dchg, 0xF0),
    );
    _mm_storeu_si128(
        state.as_mut_ptr().add(4) as *mut __m128i,
        _mm_alignr_epi8(dchg, feba, 8),
    );
}

#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
unsafe fn compress_both_shani(a: &mut [u32; 8], b: &mut [u32; 8], blocks: &[[u8; 64]]) {
    // Big-endian words from little-endian loads.
    let byte_swap = _mm_set_epi64x(
        0x0c0d_0e0f_0809_0a0b_u64 as i64,
        0x0405_0607_0001_0203_u64 as i64,
    );
    let (mut a_abef, mut a_cdgh) = load(a);
    let (mut b_abef, mut b_cdgh) = load(b);
    for block in blocks {
        let saved = (a_abef, a_cdgh, b_abef, b_cdgh);
        let words = block.as_ptr() as *const __m128i;
        let mut schedule = [
            _mm_shuffle_epi8(_mm_loadu_si128(words), byte_swap),
            _mm_shuffle_epi8(_mm_loadu_si128(words.add(1)), byte_swap),
            _mm_shuffle_epi8(_mm_loadu_si128(words.add(2)), byte_swap),
            _mm_shuffle_epi8(_mm_loadu_si128(words.add(3)), byte_swap),
        ];
        // Sixteen groups of four rounds; the schedule for group i + 4 is made in group i.
        for group in 0..16 {
            let k = _mm_loadu_si128(K.as_ptr().add(group * 4) as *const __m128i);
            let wk = _mm_add_epi32(schedule[group % 4], k);
            a_cdgh = _mm_sha256rnds2_epu32(a_cdgh, a_abef, wk);
            b_cdgh = _mm_sha256rnds2_epu32(b_cdgh, b_abef, wk);
            let wk_high = _mm_shuffle_epi32(wk, 0x0E);
            a_abef = _mm_sha256rnds2_epu32(a_abef, a_cdgh, wk_high);
            b_abef = _mm_sha256rnds2_epu32(b_abef, b_cdgh, wk_high);
            if group < 12 {
                let w_minus_7 =
                    _mm_alignr_epi8(schedule[(group + 3) % 4], schedule[(group + 2) % 4], 4);
                let partial = _mm_add_epi32(
                    _mm_sha256msg1_epu32(schedule[group % 4], schedule[(group + 1) % 4]),
                    w_minus_7,
                );
                schedule[group % 4] = _mm_sha256msg2_epu32(partial, schedule[(group + 3) % 4]);
            }
        }
        a_abef = _mm_add_epi32(a_abef, saved.0);
        a_cdgh = _mm_add_epi32(a_cdgh, saved.1);
        b_abef = _mm_add_epi32(b_abef, saved.2);
        b_cdgh = _mm_add_epi32(b_cdgh, saved.3);
    }
    store(a, a_abef, a_cdgh);
    store(b, b_abef, b_cdgh);
}
