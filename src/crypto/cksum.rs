//! The POSIX `cksum` CRC: CRC-32 (poly 0x04C11DB7, not reflected, init 0) over the data and
//! then the data's length in the fewest little-endian bytes, inverted.
//!
//! `crc-fast` computes CRC-32/CKSUM with carry-less multiply (tens of GB/s) where the
//! table-driven `crc` crate manages a fraction of GNU `cksum`'s speed; the length suffix is
//! the only part that is ours.

use crc_fast::{CrcAlgorithm, Digest};

/// A streaming `cksum` hasher: feed any number of chunks, then [`Cksum::finish`].
#[derive(Clone)]
pub struct Cksum {
    digest: Digest,
    len: u64,
}

impl Default for Cksum {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Cksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cksum").field("len", &self.len).finish()
    }
}

impl Cksum {
    /// A hasher that has seen nothing.
    pub fn new() -> Self {
        Cksum { digest: Digest::new(CrcAlgorithm::Crc32Cksum), len: 0 }
    }

    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.digest.update(data);
        self.len += data.len() as u64;
    }

    /// How many bytes were hashed.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was hashed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value `cksum` prints first.
    pub fn finish(mut self) -> u32 {
        let len_bytes = self.len.to_le_bytes();
        let used = len_bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        self.digest.update(&len_bytes[..used]);
        self.digest.finalize() as u32
    }

    /// The cksum of a whole buffer.
    pub fn of(data: &[u8]) -> u32 {
        let mut c = Cksum::new();
        c.update(data);
        c.finish()
    }
}

/// The zlib CRC-32 (reflected, as `zlib.crc32` computes it). Not part of the protocol: some
/// existing peers put it, computed over the *ciphertext*, where the protocol wants the
/// `cksum` of the plaintext, and securexfer talks to them (see `docs/compatibility.md`).
#[derive(Clone)]
pub struct ZlibCrc32(Digest);

impl Default for ZlibCrc32 {
    fn default() -> Self {
        ZlibCrc32(Digest::new(CrcAlgorithm::Crc32IsoHdlc))
    }
}

impl std::fmt::Debug for ZlibCrc32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZlibCrc32")
    }
}

impl ZlibCrc32 {
    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The CRC of everything added.
    pub fn finish(&self) -> u32 {
        self.0.finalize() as u32
    }

    /// The CRC of a whole buffer.
    pub fn of(data: &[u8]) -> u32 {
        let mut c = ZlibCrc32::default();
        c.update(data);
        c.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zlib_crc32_matches_the_check_value_and_zlib() {
        // The CRC-32/ISO-HDLC check value, and `zlib.crc32(b"hello world")`.
        assert_eq!(ZlibCrc32::of(b"123456789"), 0xCBF4_3926);
        assert_eq!(ZlibCrc32::of(b"hello world"), 0x0D4A_1185);
        let mut split = ZlibCrc32::default();
        split.update(b"hello ");
        split.update(b"world");
        assert_eq!(split.finish(), 0x0D4A_1185);
    }
}
