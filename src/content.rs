//! The content transform: what a protocol version does to a file's bytes between the disk
//! and the wire, in both directions, and what the two sides compare afterwards. No I/O:
//! the server's upload, the client's send (and later downloads) own the sockets, files and
//! threads, and pass their chunk buffers through here in place.
//!
//! It lives beside `crypto` and `protocol` rather than in either: `crypto` holds the
//! primitives whatever the version (CBC, cksum), `protocol` the wire types with no
//! cryptography, and this module is the one place that says which primitives a version
//! applies to content. Protocol 3 is AES-128-CBC (zero IV, PKCS#7) under the session key,
//! checked by the `cksum` of the plaintext; protocol 4 (content in plaintext inside TLS 1.3,
//! checked by a cryptographic hash) is one more [`Scheme`] variant, one more arm in each
//! private enum below, and a hash beside the cksum in [`Digest`].
//!
//! Every step is the fast primitive with no copy: [`CbcEncryptor::new`] and
//! [`CbcDecryptor::new`] (AES-NI / VAES where the CPU has them) work on the caller's
//! buffer, and the checksums read it where it lies.

use crate::crypto::aes::{BLOCK, padded_len, unpadded_len};
use crate::crypto::{AesKey, CbcDecryptor, CbcEncryptor, Cksum, PaddingError, ZlibCrc32};
use crate::protocol::Version;
use thiserror::Error;

/// How a file's content travels, chosen by the protocol version of the connection.
///
/// Today only protocol 3 exists; it is built ([`Scheme::of`]) from the version and the
/// session key where both are known (the connection's session, the client's).
#[derive(Clone, Copy)]
pub enum Scheme {
    /// Protocol 3: AES-128-CBC with a zero IV and PKCS#7 padding under the session key;
    /// the `cksum` of the plaintext is compared.
    V3 {
        /// The session's AES key (from the 1026/1027 exchange).
        key: AesKey,
    },
}

impl std::fmt::Debug for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key: key material is not logged.
        match self {
            Scheme::V3 { .. } => f.write_str("Scheme::V3"),
        }
    }
}

impl Scheme {
    /// The scheme of protocol `version` under a session's `key`.
    pub fn of(version: Version, key: AesKey) -> Scheme {
        match version {
            Version::V3 => Scheme::V3 { key },
        }
    }

    /// What the length of every chunk but the last must be a multiple of (CBC works on
    /// whole blocks).
    pub fn granule(&self) -> usize {
        match self {
            Scheme::V3 { .. } => BLOCK,
        }
    }

    /// Room the last chunk's buffer needs beyond its plaintext (for the padding).
    pub fn tail_room(&self) -> usize {
        match self {
            Scheme::V3 { .. } => BLOCK,
        }
    }

    /// The size on the wire of `len` bytes of plaintext.
    pub fn sealed_len(&self, len: usize) -> usize {
        match self {
            Scheme::V3 { .. } => padded_len(len),
        }
    }

    /// The sending side's transform. `ciphertext_crc32` also computes the zlib CRC-32 of
    /// the bytes as sent, which some existing protocol-3 peers compare instead of the
    /// cksum (see `docs/compatibility.md`).
    pub fn sealer(&self, ciphertext_crc32: bool) -> Sealer {
        let cipher = match self {
            Scheme::V3 { key } => SealCipher(SealImpl::Cbc(Some(CbcEncryptor::new(key)))),
        };
        Sealer { plain: PlainCheck::new(), cipher, wire: WireCheck::new(ciphertext_crc32) }
    }

    /// The receiving side's transform; `ciphertext_crc32` as for [`Scheme::sealer`].
    pub fn opener(&self, ciphertext_crc32: bool) -> Opener {
        let cipher = match self {
            Scheme::V3 { key } => OpenImpl::Cbc(CbcDecryptor::new(key)),
        };
        Opener { wire: WireCheck::new(ciphertext_crc32), cipher, plain: PlainCheck::new() }
    }
}

/// What both sides compare once all the content has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    /// Plaintext bytes.
    pub size: u64,
    /// The `cksum` of the plaintext (what protocol 3 compares).
    pub cksum: u32,
    /// The zlib CRC-32 of the content as sent, when asked for.
    pub ciphertext_crc32: Option<u32>,
}

impl Digest {
    /// The digest of a transform run in parts (see [`Sealer::into_parts`]).
    pub fn from_parts(plain: PlainCheck, wire: WireCheck) -> Self {
        Digest {
            size: plain.0.len(),
            cksum: plain.0.finish(),
            ciphertext_crc32: wire.0.map(|crc| crc.finish()),
        }
    }
}

/// Content that cannot be the plaintext of what was sent under this scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ContentError {
    /// The last block does not end in valid PKCS#7 padding: the key is wrong or the
    /// content was damaged.
    #[error("the content does not decrypt with this session's key (bad padding)")]
    Padding(#[from] PaddingError),
}

/// The check over the plaintext (protocol 3: `cksum`), run where the plaintext is.
#[derive(Debug)]
pub struct PlainCheck(Cksum);

impl PlainCheck {
    fn new() -> Self {
        PlainCheck(Cksum::new())
    }

    /// Adds plaintext.
    pub fn update(&mut self, plaintext: &[u8]) {
        self.0.update(plaintext);
    }
}

/// The optional check over the bytes as sent (the zlib CRC-32 of the ciphertext).
#[derive(Debug)]
pub struct WireCheck(Option<ZlibCrc32>);

impl WireCheck {
    fn new(on: bool) -> Self {
        WireCheck(on.then(ZlibCrc32::default))
    }

    /// Adds content as sent (a no-op unless it was asked for).
    pub fn update(&mut self, sent: &[u8]) {
        if let Some(crc) = self.0.as_mut() {
            crc.update(sent);
        }
    }
}

/// The sending side's transform of one file: checks the plaintext, encrypts in place (and
/// pads the last chunk), checks what is sent.
#[derive(Debug)]
pub struct Sealer {
    plain: PlainCheck,
    cipher: SealCipher,
    wire: WireCheck,
}

impl Sealer {
    /// Seals one chunk in place: `buf[..len]` is plaintext, and afterwards the first
    /// returned bytes of `buf` are to be sent (`len`, or for the last chunk `len` plus its
    /// padding, [`Scheme::sealed_len`]).
    ///
    /// # Panics
    /// If a chunk other than the last is not a multiple of [`Scheme::granule`], if the
    /// last one's `buf` lacks [`Scheme::tail_room`] beyond `len`, or after the last chunk
    /// (caller bugs).
    pub fn chunk(&mut self, buf: &mut [u8], len: usize, last: bool) -> usize {
        self.plain.update(&buf[..len]);
        let sealed = self.cipher.seal(buf, len, last);
        self.wire.update(&buf[..sealed]);
        sealed
    }

    /// What both sides compare.
    pub fn finish(self) -> Digest {
        Digest::from_parts(self.plain, self.wire)
    }

    /// The three steps apart, for a pipeline that runs each on a thread of its own: CBC
    /// encryption is one serial chain and the sender's ceiling, so the client checksums
    /// the plaintext on its reader thread and the ciphertext on its writer thread, and the
    /// encrypting thread does nothing else. Call each part's per-chunk method in stream
    /// order; [`Digest::from_parts`] ends it.
    pub fn into_parts(self) -> (PlainCheck, SealCipher, WireCheck) {
        (self.plain, self.cipher, self.wire)
    }
}

/// The encryption step of a [`Sealer`].
#[derive(Debug)]
pub struct SealCipher(SealImpl);

#[derive(Debug)]
enum SealImpl {
    /// `None` once the last chunk is sealed.
    Cbc(Option<CbcEncryptor>),
}

impl SealCipher {
    /// Transforms `buf[..len]` in place and returns how many bytes of `buf` to send; see
    /// [`Sealer::chunk`] (whose rules it has).
    pub fn seal(&mut self, buf: &mut [u8], len: usize, last: bool) -> usize {
        match &mut self.0 {
            SealImpl::Cbc(encryptor) if last => {
                encryptor.take().expect("a chunk after the last").encrypt_last(buf, len)
            }
            SealImpl::Cbc(encryptor) => {
                encryptor.as_mut().expect("a chunk after the last").encrypt_blocks(&mut buf[..len]);
                len
            }
        }
    }
}

/// The receiving side's transform of one file: checks what was sent, decrypts in place
/// (and checks and removes the last chunk's padding), checks the plaintext.
#[derive(Debug)]
pub struct Opener {
    wire: WireCheck,
    cipher: OpenImpl,
    plain: PlainCheck,
}

#[derive(Debug)]
enum OpenImpl {
    Cbc(CbcDecryptor),
}

impl Opener {
    /// Opens one chunk of content as received, in place, and returns how many bytes at the
    /// start of `buf` are plaintext: all of them, except in the last chunk, whose padding
    /// is checked and left out. After an error the content is not the sender's plaintext
    /// and nothing more of this stream should be used.
    ///
    /// # Panics
    /// If `buf.len()` is not a multiple of [`Scheme::granule`] (the caller validates the
    /// content size before reading it).
    pub fn chunk(&mut self, buf: &mut [u8], last: bool) -> Result<usize, ContentError> {
        self.wire.update(buf);
        let len = match &mut self.cipher {
            OpenImpl::Cbc(decryptor) => {
                decryptor.decrypt_blocks(buf);
                if last { unpadded_len(buf)? } else { buf.len() }
            }
        };
        self.plain.update(&buf[..len]);
        Ok(len)
    }

    /// What both sides compare.
    pub fn finish(self) -> Digest {
        Digest::from_parts(self.plain, self.wire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::aes::{decrypt_to_vec, encrypt_to_vec};
    use proptest::prelude::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed ^ (i >> 9) as u8)).collect()
    }

    /// Seals `data` in chunks of the sizes in `splits` (cycled, rounded up to whole
    /// blocks), as a sender reading a file would; returns what went on the wire.
    fn seal(scheme: &Scheme, data: &[u8], splits: &[usize]) -> (Vec<u8>, Digest) {
        let mut sealer = scheme.sealer(true);
        let mut wire = Vec::new();
        let mut rest = data;
        for &split in splits.iter().cycle() {
            let take = split.next_multiple_of(scheme.granule()).max(scheme.granule());
            let last = take >= rest.len();
            let len = if last { rest.len() } else { take };
            let mut buf = vec![0u8; len + scheme.tail_room()];
            buf[..len].copy_from_slice(&rest[..len]);
            let sealed = sealer.chunk(&mut buf, len, last);
            wire.extend_from_slice(&buf[..sealed]);
            rest = &rest[len..];
            if last {
                break;
            }
        }
        (wire, sealer.finish())
    }

    /// Opens `wire` in chunks of the sizes in `splits` (cycled, whole blocks), as a
    /// receiver reading a socket would.
    fn open(
        scheme: &Scheme,
        wire: &[u8],
        splits: &[usize],
    ) -> Result<(Vec<u8>, Digest), ContentError> {
        let mut opener = scheme.opener(true);
        let mut plain = Vec::new();
        let mut rest = wire;
        for &split in splits.iter().cycle() {
            let take = split.next_multiple_of(scheme.granule()).max(scheme.granule());
            let len = take.min(rest.len());
            let last = len == rest.len();
            let mut buf = rest[..len].to_vec();
            let n = opener.chunk(&mut buf, last)?;
            plain.extend_from_slice(&buf[..n]);
            rest = &rest[len..];
            if last {
                break;
            }
        }
        Ok((plain, opener.finish()))
    }

    fn splits() -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(prop_oneof![1usize..64, 64usize..5000, Just(1 << 16)], 1..6)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn sealing_then_opening_gives_back_the_plaintext_in_any_chunks(
            len in prop_oneof![0usize..100, 100usize..200_000],
            key in any::<[u8; 16]>(),
            seal_splits in splits(),
            open_splits in splits(),
        ) {
            let scheme = Scheme::V3 { key };
            let data = pattern(len, key[0]);
            let (wire, sent) = seal(&scheme, &data, &seal_splits);
            prop_assert_eq!(wire.len(), scheme.sealed_len(len));
            let (plain, received) = open(&scheme, &wire, &open_splits).unwrap();
            prop_assert!(plain == data);
            let want = Digest {
                size: len as u64,
                cksum: Cksum::of(&data),
                ciphertext_crc32: Some(ZlibCrc32::of(&wire)),
            };
            prop_assert_eq!(sent, want);
            prop_assert_eq!(received, want);
        }
    }

    #[test]
    fn sealing_is_the_protocols_cbc_and_opening_undoes_it() {
        let key = [5u8; 16];
        for len in [0, 1, 15, 16, 17, 4096, 70_001] {
            let data = pattern(len, 3);
            let (wire, _) = seal(&Scheme::V3 { key }, &data, &[4096]);
            assert_eq!(wire, encrypt_to_vec(&key, &data), "{len} bytes");
            assert_eq!(decrypt_to_vec(&key, &wire).unwrap(), data);
        }
    }

    #[test]
    fn a_sealer_run_in_parts_gives_the_same_bytes_and_digest() {
        let scheme = Scheme::V3 { key: [8u8; 16] };
        let data = pattern(10_000, 1);
        let (whole, digest) = seal(&scheme, &data, &[4096]);
        let (mut plain, mut cipher, mut wire) = scheme.sealer(true).into_parts();
        let mut sent = Vec::new();
        for (i, piece) in data.chunks(4096).enumerate() {
            let last = (i + 1) * 4096 >= data.len();
            let mut buf = piece.to_vec();
            buf.resize(piece.len() + scheme.tail_room(), 0);
            plain.update(piece);
            let n = cipher.seal(&mut buf, piece.len(), last);
            wire.update(&buf[..n]);
            sent.extend_from_slice(&buf[..n]);
        }
        assert_eq!(sent, whole);
        assert_eq!(Digest::from_parts(plain, wire), digest);
    }

    #[test]
    fn bad_padding_is_an_error_not_plaintext() {
        let key = [1u8; 16];
        let scheme = Scheme::V3 { key };
        // The last block decrypts to these bytes: 0 and 17 are never padding, and a pad
        // of 4 must be four 4s.
        for last_block in [[0u8; 16], [17u8; 16], {
            let mut b = [4u8; 16];
            b[13] = 3;
            b
        }] {
            let mut wire = last_block;
            CbcEncryptor::new(&key).encrypt_blocks(&mut wire);
            assert_eq!(
                open(&scheme, &wire, &[16]).map(|_| ()),
                Err(ContentError::Padding(PaddingError)),
                "{last_block:?}"
            );
        }
        let (wire, _) = seal(&scheme, b"some content", &[16]);
        match open(&Scheme::V3 { key: [2u8; 16] }, &wire, &[16]) {
            Err(e) => assert_eq!(e, ContentError::Padding(PaddingError)),
            // A wrong key ends in valid padding about once in 256 keys; the bytes differ.
            Ok((plain, _)) => assert_ne!(plain, b"some content"),
        }
    }

    #[test]
    fn without_the_crc_asked_for_there_is_none() {
        let scheme = Scheme::V3 { key: [3u8; 16] };
        let mut sealer = scheme.sealer(false);
        let mut buf = [0u8; 32];
        assert_eq!(sealer.chunk(&mut buf, 5, true), 16);
        let digest = sealer.finish();
        assert_eq!(digest.ciphertext_crc32, None);
        assert_eq!((digest.size, digest.cksum), (5, Cksum::of(&[0u8; 5])));
        let mut opener = scheme.opener(false);
        assert_eq!(opener.chunk(&mut buf[..16], true), Ok(5));
        assert_eq!(opener.finish(), digest);
    }

    #[test]
    fn the_scheme_never_shows_its_key() {
        assert_eq!(format!("{:?}", Scheme::V3 { key: [0xab; 16] }), "Scheme::V3");
    }
}
