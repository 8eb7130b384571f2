//! Heap buffers for bulk file and socket I/O, with their start aligned to a page.
//!
//! The kernel copies file and socket data to and from user memory with `rep movsb`. On AMD
//! Zen that runs about 4x slower when the user buffer starts 1 to 31 bytes past a 64-byte
//! boundary, and that is exactly where glibc's `malloc` puts large blocks (a fresh mapping
//! plus a 16-byte header), so every `Vec<u8>` chunk buffer hit the slow case (the figures
//! are in bench/README.md, "Where the time goes").
//!
//! A page (rather than a cache line) because the server writes large uploads with
//! `O_DIRECT`, which wants the memory aligned to the file system's block.

use std::ops::{Deref, DerefMut};

/// The alignment of [`AlignedBuf`]'s contents.
pub(crate) const ALIGN: usize = 4096;

/// A fixed-capacity byte buffer whose contents start on an [`ALIGN`]-byte boundary. It
/// derefs to its first [`len`](AlignedBuf::set_len) bytes.
pub(crate) struct AlignedBuf {
    /// The allocation; only the bytes ever used are initialised (zeroed once), so a large
    /// buffer for a small file costs no more than the small file.
    raw: Vec<u8>,
    start: usize,
    capacity: usize,
    len: usize,
}

impl AlignedBuf {
    /// An empty buffer that can hold `capacity` bytes.
    pub(crate) fn new(capacity: usize) -> Self {
        let mut raw: Vec<u8> = Vec::with_capacity(capacity + ALIGN);
        let start = (ALIGN - raw.as_ptr().addr() % ALIGN) % ALIGN;
        raw.resize(start, 0);
        AlignedBuf { raw, start, capacity, len: 0 }
    }

    /// How many bytes were ever made ready (zeroed or written): growing to that costs nothing.
    pub(crate) fn initialized(&self) -> usize {
        self.raw.len() - self.start
    }

    /// Makes the buffer `len` bytes long; bytes not written since hold old contents (or
    /// zeros).
    ///
    /// # Panics
    /// If `len` exceeds the capacity.
    pub(crate) fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity, "{len} bytes do not fit in {}", self.capacity);
        let end = self.start + len;
        if self.raw.len() < end {
            // Within the capacity reserved in `new`: never reallocates, so `start` holds.
            self.raw.resize(end, 0);
        }
        self.len = len;
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_start_aligned_and_hold_the_set_length() {
        for capacity in [0, 1, 16, 4096, 1 << 20] {
            let mut buf = AlignedBuf::new(capacity);
            assert!(buf.is_empty());
            assert_eq!(buf.as_ptr().addr() % ALIGN, 0);
            buf.set_len(capacity);
            assert_eq!(buf.len(), capacity);
            assert_eq!(buf.as_ptr().addr() % ALIGN, 0);
            buf.iter_mut().for_each(|b| *b = 7);
            buf.set_len(capacity / 2);
            assert!(buf.iter().all(|&b| b == 7));
            buf.set_len(capacity);
            assert!(buf.iter().all(|&b| b == 7), "contents survive shrinking and growing");
            assert_eq!(buf.as_ptr().addr() % ALIGN, 0);
        }
    }

    #[test]
    #[should_panic(expected = "do not fit")]
    fn a_length_past_the_capacity_is_refused() {
        AlignedBuf::new(8).set_len(9);
    }
}
