//! A cursor over received bytes that hands out fixed-size fields, so the decoders say what
//! they read (`take::<NAME_LEN>()`, `u32_le()`) instead of doing index arithmetic, and a
//! short buffer is an error rather than a panic.

use super::DecodeError;

/// Reads fields front to back from a byte slice. A read that does not fit fails with
/// [`DecodeError::Incomplete`] (saying how many bytes were missing) and consumes nothing.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    /// The next `N` bytes as a fixed-size field.
    pub(crate) fn take<const N: usize>(&mut self) -> Result<&'a [u8; N], DecodeError> {
        let all: &'a [u8] = self.rest;
        let (field, rest) = all.split_first_chunk::<N>().ok_or_else(|| self.short_by(N))?;
        self.rest = rest;
        Ok(field)
    }

    /// The next `len` bytes (a field whose size a header announced).
    pub(crate) fn bytes(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let all: &'a [u8] = self.rest;
        let (field, rest) = all.split_at_checked(len).ok_or_else(|| self.short_by(len))?;
        self.rest = rest;
        Ok(field)
    }

    /// One byte.
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.take::<1>().map(|&[b]| b)
    }

    /// A little-endian `u16` (codes).
    pub(crate) fn u16_le(&mut self) -> Result<u16, DecodeError> {
        self.take().map(|b| u16::from_le_bytes(*b))
    }

    /// A little-endian `u32` (sizes, checksums).
    pub(crate) fn u32_le(&mut self) -> Result<u32, DecodeError> {
        self.take().map(|b| u32::from_le_bytes(*b))
    }

    /// Everything not read yet; the reader is then empty.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    /// How many bytes are left.
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn short_by(&self, wanted: usize) -> DecodeError {
        DecodeError::Incomplete { needed: wanted - self.rest.len().min(wanted) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_in_order_and_little_endian() {
        let bytes = [7, 0x01, 0x02, 0x0a, 0x0b, 0x0c, 0x0d, 0xaa, 0xbb, 0xcc, 0xdd];
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8(), Ok(7));
        assert_eq!(r.u16_le(), Ok(0x0201));
        assert_eq!(r.u32_le(), Ok(0x0d0c_0b0a));
        assert_eq!(r.take::<2>(), Ok(&[0xaa, 0xbb]));
        assert_eq!(r.remaining(), 2);
        assert_eq!(r.rest(), &[0xcc, 0xdd]);
        assert_eq!(r.remaining(), 0);
        assert_eq!(r.rest(), &[] as &[u8]);
    }

    #[test]
    fn a_short_input_is_an_error_that_says_how_much_is_missing() {
        assert_eq!(Reader::new(&[]).u8(), Err(DecodeError::Incomplete { needed: 1 }));
        assert_eq!(Reader::new(&[1]).u16_le(), Err(DecodeError::Incomplete { needed: 1 }));
        assert_eq!(Reader::new(&[1, 2, 3]).u32_le(), Err(DecodeError::Incomplete { needed: 1 }));
        assert_eq!(
            Reader::new(&[0; 10]).take::<255>(),
            Err(DecodeError::Incomplete { needed: 245 })
        );
        assert_eq!(Reader::new(&[0; 10]).bytes(11), Err(DecodeError::Incomplete { needed: 1 }));
    }

    #[test]
    fn a_failed_read_consumes_nothing() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert!(r.u32_le().is_err());
        assert!(r.bytes(4).is_err());
        assert_eq!(r.remaining(), 3);
        assert_eq!(r.take::<3>(), Ok(&[1, 2, 3]));
        assert!(r.u8().is_err());
    }

    #[test]
    fn empty_fields_always_fit() {
        let mut r = Reader::new(&[]);
        assert_eq!(r.take::<0>(), Ok(&[]));
        assert_eq!(r.bytes(0), Ok(&[] as &[u8]));
    }

    #[test]
    fn any_read_of_any_short_prefix_fails_without_panicking() {
        let data: Vec<u8> = (0..=255).collect();
        for len in 0..300 {
            let prefix = &data[..len.min(data.len())];
            let mut r = Reader::new(prefix);
            let mut read = 0;
            loop {
                let before = r.remaining();
                let step = match read % 5 {
                    0 => r.u8().map(|_| 1),
                    1 => r.u16_le().map(|_| 2),
                    2 => r.u32_le().map(|_| 4),
                    3 => r.take::<16>().map(|_| 16),
                    _ => r.bytes(33).map(|_| 33),
                };
                match step {
                    Ok(n) => assert_eq!(r.remaining(), before - n),
                    Err(DecodeError::Incomplete { needed }) => {
                        assert!(needed > 0 && needed <= 33);
                        assert_eq!(r.remaining(), before);
                        break;
                    }
                    Err(other) => panic!("unexpected {other:?}"),
                }
                read += 1;
            }
        }
    }
}
