//! AES-128-CBC with a zero IV and PKCS#7 padding, as streaming encryptor and decryptor that
//! work in place on caller-owned buffers, so memory never grows with the file.
//!
//! CBC encryption is one serial chain: its speed is the latency of ten AES rounds per block,
//! and every cycle of per-block overhead shows. The `aes`/`cbc` crates dispatch per call and
//! ran well behind `openssl enc` (bench/README.md), so on x86-64 with AES-NI (detected at run time,
//! never assumed) the chain runs in a small intrinsic loop instead; everywhere else the
//! `cbc` crate does the work. Both paths are tested against OpenSSL's vectors and each other.
//!
//! Decryption has no chain, so many blocks go through the rounds at once; where the CPU
//! has VAES (256-bit AES instructions, detected at run time) two blocks share each
//! instruction (`cargo bench --bench crypto` measures both).

use aes::Aes128;
use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use thiserror::Error;

/// An AES-128 key.
pub type AesKey = [u8; 16];
/// The cipher block size.
pub const BLOCK: usize = 16;
const ZERO_IV: [u8; BLOCK] = [0; BLOCK];

/// Decrypted content whose last block does not end in valid PKCS#7 padding: the key is
/// wrong or the content was damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("the decrypted content has invalid PKCS#7 padding (wrong key or damaged content)")]
pub struct PaddingError;

/// The number of bytes PKCS#7 makes of `len` bytes.
pub fn padded_len(len: usize) -> usize {
    BLOCK * (len / BLOCK + 1)
}

enum EncImpl {
    #[cfg(target_arch = "x86_64")]
    Ni(ni::EncKeys),
    Soft(Box<cbc::Encryptor<Aes128>>),
}

/// Streaming CBC encryptor. Feed whole blocks with [`encrypt_blocks`](Self::encrypt_blocks),
/// then the tail with [`encrypt_last`](Self::encrypt_last).
pub struct CbcEncryptor {
    imp: EncImpl,
    chain: [u8; BLOCK],
}

impl std::fmt::Debug for CbcEncryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CbcEncryptor")
    }
}

impl CbcEncryptor {
    /// An encryptor with the protocol's zero IV, using AES-NI when the CPU has it.
    pub fn new(key: &AesKey) -> Self {
        #[cfg(target_arch = "x86_64")]
        if ni::available() {
            return CbcEncryptor { imp: EncImpl::Ni(ni::EncKeys::new(key)), chain: ZERO_IV };
        }
        Self::portable(key)
    }

    /// An encryptor that always uses the `cbc` crate (the fallback path, kept testable).
    pub fn portable(key: &AesKey) -> Self {
        let imp = EncImpl::Soft(Box::new(cbc::Encryptor::new(key.into(), &ZERO_IV.into())));
        CbcEncryptor { imp, chain: ZERO_IV }
    }

    /// Encrypts `buf` in place, continuing the chain.
    ///
    /// # Panics
    /// If `buf.len()` is not a multiple of 16 (a caller bug, not an input error).
    pub fn encrypt_blocks(&mut self, buf: &mut [u8]) {
        assert_eq!(buf.len() % BLOCK, 0, "CBC works on whole blocks");
        match &mut self.imp {
            #[cfg(target_arch = "x86_64")]
            EncImpl::Ni(keys) => keys.cbc_encrypt(&mut self.chain, buf),
            EncImpl::Soft(enc) => {
                let (blocks, _) = aes::Block::slice_as_chunks_mut(buf);
                enc.encrypt_blocks(blocks);
            }
        }
    }

    /// Pads the `data_len` bytes at the start of `buf` and encrypts them, ending the stream.
    /// Returns the encrypted length, [`padded_len`]`(data_len)`.
    ///
    /// # Panics
    /// If `buf` is shorter than the padded length.
    pub fn encrypt_last(mut self, buf: &mut [u8], data_len: usize) -> usize {
        let total = padded_len(data_len);
        let pad = (total - data_len) as u8;
        buf[data_len..total].fill(pad);
        self.encrypt_blocks(&mut buf[..total]);
        total
    }
}

enum DecImpl {
    #[cfg(target_arch = "x86_64")]
    Ni(ni::DecKeys),
    Soft(Box<cbc::Decryptor<Aes128>>),
}

/// Streaming CBC decryptor. Decrypt whole blocks as they arrive; on the final chunk call
/// [`unpadded_len`] to find where the content ends.
pub struct CbcDecryptor {
    imp: DecImpl,
    chain: [u8; BLOCK],
}

impl std::fmt::Debug for CbcDecryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CbcDecryptor")
    }
}

impl CbcDecryptor {
    /// A decryptor with the protocol's zero IV, using AES-NI when the CPU has it.
    pub fn new(key: &AesKey) -> Self {
        #[cfg(target_arch = "x86_64")]
        if ni::available() {
            let keys = ni::DecKeys::new(key, true);
            return CbcDecryptor { imp: DecImpl::Ni(keys), chain: ZERO_IV };
        }
        Self::portable(key)
    }

    /// A decryptor that always uses the `cbc` crate.
    pub fn portable(key: &AesKey) -> Self {
        let imp = DecImpl::Soft(Box::new(cbc::Decryptor::new(key.into(), &ZERO_IV.into())));
        CbcDecryptor { imp, chain: ZERO_IV }
    }

    /// Decrypts `buf` in place, continuing the chain.
    ///
    /// # Panics
    /// If `buf.len()` is not a multiple of 16 (a caller bug; sizes are checked on input).
    pub fn decrypt_blocks(&mut self, buf: &mut [u8]) {
        assert_eq!(buf.len() % BLOCK, 0, "CBC works on whole blocks");
        match &mut self.imp {
            #[cfg(target_arch = "x86_64")]
            DecImpl::Ni(keys) => keys.cbc_decrypt(&mut self.chain, buf),
            DecImpl::Soft(dec) => {
                let (blocks, _) = aes::Block::slice_as_chunks_mut(buf);
                dec.decrypt_blocks(blocks);
            }
        }
    }
}

/// The length of `plaintext` (the decrypted final chunk, at least one block) without its
/// PKCS#7 padding, or [`PaddingError`].
pub fn unpadded_len(plaintext: &[u8]) -> Result<usize, PaddingError> {
    if plaintext.is_empty() || !plaintext.len().is_multiple_of(BLOCK) {
        return Err(PaddingError);
    }
    let pad = *plaintext.last().ok_or(PaddingError)? as usize;
    if pad == 0 || pad > BLOCK {
        return Err(PaddingError);
    }
    let start = plaintext.len() - pad;
    if plaintext[start..].iter().any(|&b| b as usize != pad) {
        return Err(PaddingError);
    }
    Ok(start)
}

/// Encrypts a whole buffer (tests and small messages; files are streamed).
pub fn encrypt_to_vec(key: &AesKey, data: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; padded_len(data.len())];
    buf[..data.len()].copy_from_slice(data);
    let n = CbcEncryptor::new(key).encrypt_last(&mut buf, data.len());
    buf.truncate(n);
    buf
}

/// Decrypts a whole buffer (tests and small messages; files are streamed).
pub fn decrypt_to_vec(key: &AesKey, data: &[u8]) -> Result<Vec<u8>, PaddingError> {
    if data.is_empty() || !data.len().is_multiple_of(BLOCK) {
        return Err(PaddingError);
    }
    let mut buf = data.to_vec();
    CbcDecryptor::new(key).decrypt_blocks(&mut buf);
    let n = unpadded_len(&buf)?;
    buf.truncate(n);
    Ok(buf)
}

#[cfg(target_arch = "x86_64")]
// The intrinsics need `unsafe`: every block says why it holds (the CPU features were
// detected, loads and stores stay within the buffers).
#[allow(unsafe_code)]
mod ni {
    //! AES-128 with AES-NI intrinsics: the key schedule and the two CBC loops, nothing else.
    use super::BLOCK;
    use core::arch::x86_64::*;

    /// Whether this CPU runs the AES-NI path (checked once, cached by std).
    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("sse2")
    }

    #[derive(Clone, Copy)]
    pub struct EncKeys([__m128i; 11]);
    /// The decryption round keys, and whether to use VAES (two blocks per instruction).
    #[derive(Clone, Copy)]
    pub struct DecKeys([__m128i; 11], bool);

    /// Whether this CPU has VAES with 256-bit registers (checked once, cached by std).
    pub fn wide_available() -> bool {
        available()
            && std::arch::is_x86_feature_detected!("vaes")
            && std::arch::is_x86_feature_detected!("avx2")
    }

    macro_rules! expand_round {
        ($k:expr, $rcon:literal) => {{
            let k = $k;
            let t = _mm_shuffle_epi32(_mm_aeskeygenassist_si128(k, $rcon), 0xff);
            let k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
            let k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
            let k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
            _mm_xor_si128(k, t)
        }};
    }

    #[target_feature(enable = "aes,sse2")]
    fn expand(key: &[u8; 16]) -> [__m128i; 11] {
        // SAFETY: `key` is 16 readable bytes; unaligned load.
        let k0 = unsafe { _mm_loadu_si128(key.as_ptr().cast()) };
        let k1 = expand_round!(k0, 0x01);
        let k2 = expand_round!(k1, 0x02);
        let k3 = expand_round!(k2, 0x04);
        let k4 = expand_round!(k3, 0x08);
        let k5 = expand_round!(k4, 0x10);
        let k6 = expand_round!(k5, 0x20);
        let k7 = expand_round!(k6, 0x40);
        let k8 = expand_round!(k7, 0x80);
        let k9 = expand_round!(k8, 0x1b);
        let k10 = expand_round!(k9, 0x36);
        [k0, k1, k2, k3, k4, k5, k6, k7, k8, k9, k10]
    }

    impl EncKeys {
        pub fn new(key: &[u8; 16]) -> Self {
            assert!(available());
            // SAFETY: the CPU features were checked just above.
            EncKeys(unsafe { expand(key) })
        }

        pub fn cbc_encrypt(&self, chain: &mut [u8; BLOCK], buf: &mut [u8]) {
            // SAFETY: constructed only after `available()` returned true.
            unsafe { cbc_encrypt(&self.0, chain, buf) }
        }
    }

    impl DecKeys {
        /// Keys for the fastest path this CPU has; `allow_wide: false` keeps to 128-bit
        /// AES-NI (so tests can compare the two on a VAES machine).
        pub fn new(key: &[u8; 16], allow_wide: bool) -> Self {
            assert!(available());
            // SAFETY: the CPU features were checked just above.
            DecKeys(unsafe { invert(&expand(key)) }, allow_wide && wide_available())
        }

        pub fn cbc_decrypt(&self, chain: &mut [u8; BLOCK], buf: &mut [u8]) {
            if self.1 {
                // SAFETY: `self.1` is true only where `wide_available()` returned true.
                let rest = unsafe { cbc_decrypt_wide(&self.0, chain, buf) };
                // SAFETY: constructed only after `available()` returned true.
                unsafe { cbc_decrypt(&self.0, chain, &mut buf[rest..]) }
            } else {
                // SAFETY: constructed only after `available()` returned true.
                unsafe { cbc_decrypt(&self.0, chain, buf) }
            }
        }
    }

    #[target_feature(enable = "aes,sse2")]
    fn invert(k: &[__m128i; 11]) -> [__m128i; 11] {
        let mut d = [k[10]; 11];
        for i in 1..10 {
            d[i] = _mm_aesimc_si128(k[10 - i]);
        }
        d[10] = k[0];
        d
    }

    /// The serial chain: C_i = E(P_i ^ C_{i-1}). `P_i ^ k0` is computed off the chain so the
    /// loop-carried path is one XOR and ten AES rounds.
    #[target_feature(enable = "aes,sse2")]
    fn cbc_encrypt(k: &[__m128i; 11], chain: &mut [u8; BLOCK], buf: &mut [u8]) {
        // SAFETY: all loads and stores are unaligned and stay within `chain` and `buf`'s
        // 16-byte chunks.
        unsafe {
            let mut c = _mm_loadu_si128(chain.as_ptr().cast());
            for block in buf.chunks_exact_mut(BLOCK) {
                let p = _mm_xor_si128(_mm_loadu_si128(block.as_ptr().cast()), k[0]);
                let mut x = _mm_xor_si128(p, c);
                x = _mm_aesenc_si128(x, k[1]);
                x = _mm_aesenc_si128(x, k[2]);
                x = _mm_aesenc_si128(x, k[3]);
                x = _mm_aesenc_si128(x, k[4]);
                x = _mm_aesenc_si128(x, k[5]);
                x = _mm_aesenc_si128(x, k[6]);
                x = _mm_aesenc_si128(x, k[7]);
                x = _mm_aesenc_si128(x, k[8]);
                x = _mm_aesenc_si128(x, k[9]);
                c = _mm_aesenclast_si128(x, k[10]);
                _mm_storeu_si128(block.as_mut_ptr().cast(), c);
            }
            _mm_storeu_si128(chain.as_mut_ptr().cast(), c);
        }
    }

    const LANES: usize = 8;

    /// CBC decryption has no chain: eight blocks go through the rounds side by side.
    #[target_feature(enable = "aes,sse2")]
    fn cbc_decrypt(d: &[__m128i; 11], chain: &mut [u8; BLOCK], buf: &mut [u8]) {
        // SAFETY: all loads and stores are unaligned and stay within `chain` and `buf`;
        // each group of LANES blocks is read fully before any of it is written.
        unsafe {
            let mut prev = _mm_loadu_si128(chain.as_ptr().cast());
            let mut groups = buf.chunks_exact_mut(BLOCK * LANES);
            for group in &mut groups {
                let ptr = group.as_mut_ptr().cast::<__m128i>();
                let mut c = [prev; LANES];
                for (i, ci) in c.iter_mut().enumerate() {
                    *ci = _mm_loadu_si128(ptr.add(i));
                }
                let mut x = c.map(|ci| _mm_xor_si128(ci, d[0]));
                for rk in &d[1..10] {
                    for xi in x.iter_mut() {
                        *xi = _mm_aesdec_si128(*xi, *rk);
                    }
                }
                for i in 0..LANES {
                    let before = if i == 0 { prev } else { c[i - 1] };
                    let p = _mm_xor_si128(_mm_aesdeclast_si128(x[i], d[10]), before);
                    _mm_storeu_si128(ptr.add(i), p);
                }
                prev = c[LANES - 1];
            }
            for block in groups.into_remainder().chunks_exact_mut(BLOCK) {
                let c = _mm_loadu_si128(block.as_ptr().cast());
                let mut x = _mm_xor_si128(c, d[0]);
                for rk in &d[1..10] {
                    x = _mm_aesdec_si128(x, *rk);
                }
                let p = _mm_xor_si128(_mm_aesdeclast_si128(x, d[10]), prev);
                _mm_storeu_si128(block.as_mut_ptr().cast(), p);
                prev = c;
            }
            _mm_storeu_si128(chain.as_mut_ptr().cast(), prev);
        }
    }

    /// Registers per group in [`cbc_decrypt_wide`]: 16 blocks in flight, as many as
    /// [`cbc_decrypt`]'s 8 take registers, so the AES units stay busy at half the
    /// instructions.
    const WIDE_LANES: usize = 8;
    const WIDE_GROUP: usize = 2 * BLOCK * WIDE_LANES;

    /// CBC decryption two blocks per VAES instruction. Each register holds ciphertext
    /// blocks 2i and 2i+1; what they are XORed with afterwards (blocks 2i-1 and 2i) is
    /// the same bytes 16 further back, read from the buffer just before register i is
    /// stored. Registers are stored last to first, so those bytes are still ciphertext.
    /// Decrypts whole groups of [`WIDE_GROUP`] bytes and returns where it stopped; the
    /// 128-bit loop does the rest.
    #[target_feature(enable = "aes,sse2,avx2,vaes")]
    fn cbc_decrypt_wide(d: &[__m128i; 11], chain: &mut [u8; BLOCK], buf: &mut [u8]) -> usize {
        let groups = buf.len() / WIDE_GROUP;
        let k = d.map(|rk| _mm256_broadcastsi128_si256(rk));
        // SAFETY: every load and store is unaligned and within `buf` (or `chain`): group g
        // spans bytes [g * WIDE_GROUP, (g + 1) * WIDE_GROUP) and the "previous blocks" of
        // register i > 0 start 16 bytes before it, inside the group (register 0 takes
        // its previous block from `prev`). Register i is stored only after everything
        // that reads its bytes: its own load and register i + 1's previous blocks.
        unsafe {
            let mut prev = _mm_loadu_si128(chain.as_ptr().cast());
            for g in 0..groups {
                let base = buf.as_mut_ptr().add(g * WIDE_GROUP);
                let next_prev = _mm_loadu_si128(base.add(WIDE_GROUP - BLOCK).cast());
                let mut x = [_mm256_setzero_si256(); WIDE_LANES];
                for (i, xi) in x.iter_mut().enumerate() {
                    let c = _mm256_loadu_si256(base.add(2 * BLOCK * i).cast());
                    *xi = _mm256_xor_si256(c, k[0]);
                }
                for rk in &k[1..10] {
                    for xi in x.iter_mut() {
                        *xi = _mm256_aesdec_epi128(*xi, *rk);
                    }
                }
                for i in (0..WIDE_LANES).rev() {
                    let before = if i == 0 {
                        _mm256_set_m128i(_mm_loadu_si128(base.cast()), prev)
                    } else {
                        _mm256_loadu_si256(base.add(2 * BLOCK * i - BLOCK).cast())
                    };
                    let p = _mm256_xor_si256(_mm256_aesdeclast_epi128(x[i], k[10]), before);
                    _mm256_storeu_si256(base.add(2 * BLOCK * i).cast(), p);
                }
                prev = next_prev;
            }
            _mm_storeu_si128(chain.as_mut_ptr().cast(), prev);
        }
        groups * WIDE_GROUP
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    //! The hand-written AES-NI/VAES path against the portable `cbc` crate path. OpenSSL's
    //! vectors (tests/suite/vectors.rs) pin both to the standard; these pin them to each other
    //! over lengths, keys and chunk splits no vector file lists.
    use super::*;
    use proptest::prelude::*;

    /// An encryptor on the AES-NI path whatever `new` would pick.
    fn ni_encryptor(key: &AesKey) -> CbcEncryptor {
        CbcEncryptor { imp: EncImpl::Ni(ni::EncKeys::new(key)), chain: ZERO_IV }
    }

    /// A decryptor on the AES-NI path, with VAES where the CPU has it if `wide`.
    fn ni_decryptor(key: &AesKey, wide: bool) -> CbcDecryptor {
        CbcDecryptor { imp: DecImpl::Ni(ni::DecKeys::new(key, wide)), chain: ZERO_IV }
    }

    /// `len` pseudo-random bytes from `seed` (xorshift: cheap, and proptest need not
    /// shrink hundreds of KiB).
    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    /// Encrypts `data` as a stream: whole chunks of the sizes in `splits` (cycled) while
    /// more than a chunk is left, then the rest with its padding.
    fn encrypt_split(mut enc: CbcEncryptor, data: &[u8], splits: &[usize]) -> Vec<u8> {
        let mut buf = vec![0u8; padded_len(data.len())];
        buf[..data.len()].copy_from_slice(data);
        let mut at = 0;
        for &chunk in splits.iter().cycle() {
            if data.len() - at <= chunk {
                break;
            }
            enc.encrypt_blocks(&mut buf[at..at + chunk]);
            at += chunk;
        }
        let tail = enc.encrypt_last(&mut buf[at..], data.len() - at);
        assert_eq!(at + tail, buf.len());
        buf
    }

    /// Decrypts `ciphertext` in place in chunks of the sizes in `splits` (cycled).
    fn decrypt_split(mut dec: CbcDecryptor, ciphertext: &[u8], splits: &[usize]) -> Vec<u8> {
        let mut buf = ciphertext.to_vec();
        let mut rest = &mut buf[..];
        for &chunk in splits.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at_mut(chunk.min(rest.len()));
            dec.decrypt_blocks(now);
            rest = later;
        }
        buf
    }

    /// Chunk sizes in bytes, whole blocks: mostly a few blocks (around the 8-block and
    /// 16-block groups of the fast loops), sometimes past the server's 256 KiB chunk.
    fn splits() -> impl Strategy<Value = Vec<usize>> {
        let blocks = prop_oneof![3 => 1usize..=40, 1 => 1usize..=20_000];
        prop::collection::vec(blocks.prop_map(|n| n * BLOCK), 1..6)
    }

    /// Plaintext lengths: any byte count, small ones often, up to 320 KiB.
    fn lengths() -> impl Strategy<Value = usize> {
        prop_oneof![1 => 0usize..=600, 1 => 0usize..=320 * 1024]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn aes_ni_and_portable_paths_encrypt_and_decrypt_alike_in_any_split(
            key in any::<AesKey>(),
            len in lengths(),
            seed in any::<u64>(),
            ni_splits in splits(),
            portable_splits in splits(),
            wide_splits in splits(),
        ) {
            if !ni::available() {
                eprintln!("SKIPPED: this CPU has no AES-NI");
                return Ok(());
            }
            let data = pattern(len, seed);
            let portable = encrypt_split(CbcEncryptor::portable(&key), &data, &portable_splits);
            let ni = encrypt_split(ni_encryptor(&key), &data, &ni_splits);
            prop_assert!(ni == portable, "ciphertexts differ (length {})", len);

            let by_portable =
                decrypt_split(CbcDecryptor::portable(&key), &portable, &portable_splits);
            let by_narrow = decrypt_split(ni_decryptor(&key, false), &portable, &ni_splits);
            let by_wide = decrypt_split(ni_decryptor(&key, true), &portable, &wide_splits);
            prop_assert!(by_narrow == by_portable, "AES-NI decryption differs (length {})", len);
            prop_assert!(by_wide == by_portable, "VAES decryption differs (length {})", len);
            prop_assert_eq!(unpadded_len(&by_portable), Ok(len));
            prop_assert!(by_portable[..len] == data[..], "no round trip (length {})", len);
        }
    }

    #[test]
    fn wide_and_narrow_aes_ni_decrypt_alike_in_any_split() {
        if !ni::available() {
            eprintln!("SKIPPED: this CPU has no AES-NI");
            return;
        }
        if !ni::wide_available() {
            eprintln!("this CPU has no VAES: both keys take the 128-bit path");
        }
        let key = [0x5a; 16];
        let data: Vec<u8> = (0..9000u32).map(|i| (i * 31 + i / 97) as u8).collect();
        for len in [0, 16, 240, 256, 272, 512, 4096, 4112, 8992] {
            for split in [16, 256, 400, 4096] {
                let mut wide = data[..len].to_vec();
                let mut narrow = wide.clone();
                let (mut wide_chain, mut narrow_chain) = ([1u8; BLOCK], [1u8; BLOCK]);
                let (w, n) = (ni::DecKeys::new(&key, true), ni::DecKeys::new(&key, false));
                for (a, b) in wide.chunks_mut(split).zip(narrow.chunks_mut(split)) {
                    w.cbc_decrypt(&mut wide_chain, a);
                    n.cbc_decrypt(&mut narrow_chain, b);
                }
                assert!(wide == narrow, "length {len}, split {split}");
                assert_eq!(wide_chain, narrow_chain, "the chain carried on, length {len}");
            }
        }
    }
}
