//! Reading and writing a payload's fields in the design's types (`u8` to `u64`, `bool`,
//! `str8`, `str16`). A payload's length is known from its header, so a field that does not
//! fit is malformed ([`FrameError::ShortPayload`]), and so is anything left after the last
//! field: every payload has exactly one encoding.

use super::FrameError;

/// Reads fields front to back from one payload.
#[derive(Debug, Clone)]
pub(super) struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    pub(super) fn new(payload: &'a [u8]) -> Self {
        Fields { rest: payload }
    }

    /// The next `N` bytes as a fixed-size field.
    pub(super) fn take<const N: usize>(&mut self) -> Result<&'a [u8; N], FrameError> {
        let all: &'a [u8] = self.rest;
        let (field, rest) = all
            .split_first_chunk::<N>()
            .ok_or(FrameError::ShortPayload { needed: N - all.len().min(N) })?;
        self.rest = rest;
        Ok(field)
    }

    fn bytes(&mut self, len: usize) -> Result<&'a [u8], FrameError> {
        let all: &'a [u8] = self.rest;
        let (field, rest) = all
            .split_at_checked(len)
            .ok_or(FrameError::ShortPayload { needed: len - all.len().min(len) })?;
        self.rest = rest;
        Ok(field)
    }

    pub(super) fn u8(&mut self) -> Result<u8, FrameError> {
        self.take::<1>().map(|&[b]| b)
    }

    pub(super) fn u16(&mut self) -> Result<u16, FrameError> {
        self.take().map(|b| u16::from_le_bytes(*b))
    }

    pub(super) fn u32(&mut self) -> Result<u32, FrameError> {
        self.take().map(|b| u32::from_le_bytes(*b))
    }

    pub(super) fn u64(&mut self) -> Result<u64, FrameError> {
        self.take().map(|b| u64::from_le_bytes(*b))
    }

    pub(super) fn i64(&mut self) -> Result<i64, FrameError> {
        self.take().map(|b| i64::from_le_bytes(*b))
    }

    /// A `bool`: 0 or 1, nothing else.
    pub(super) fn bool(&mut self, field: &'static str) -> Result<bool, FrameError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            byte => Err(FrameError::NotBool { field, byte }),
        }
    }

    /// A `str8`: UTF-8 text of at most `max` bytes with no control character.
    pub(super) fn str8(&mut self, field: &'static str, max: usize) -> Result<String, FrameError> {
        let len = usize::from(self.u8()?);
        self.text(field, len, max)
    }

    /// A `str16`: as [`Fields::str8`] with a `u16` length.
    pub(super) fn str16(&mut self, field: &'static str, max: usize) -> Result<String, FrameError> {
        let len = usize::from(self.u16()?);
        self.text(field, len, max)
    }

    /// A `str8` whose content rules (control characters, NFC, components) are not the
    /// codec's but the receiver's, so that breaking them is a refusal it can name rather
    /// than a malformed frame: only UTF-8 and the length are checked here.
    pub(super) fn name8(&mut self, field: &'static str, max: usize) -> Result<String, FrameError> {
        let len = usize::from(self.u8()?);
        self.utf8(field, len, max)
    }

    /// As [`Fields::name8`] with a `u16` length.
    pub(super) fn name16(&mut self, field: &'static str, max: usize) -> Result<String, FrameError> {
        let len = usize::from(self.u16()?);
        self.utf8(field, len, max)
    }

    /// A `bin8`: a length byte, then that many bytes.
    pub(super) fn bin8(&mut self) -> Result<&'a [u8], FrameError> {
        let len = usize::from(self.u8()?);
        self.bytes(len)
    }

    /// A `bin16`: a `u16` length, then that many bytes.
    pub(super) fn bin16(&mut self) -> Result<&'a [u8], FrameError> {
        let len = usize::from(self.u16()?);
        self.bytes(len)
    }

    fn utf8(&mut self, field: &'static str, len: usize, max: usize) -> Result<String, FrameError> {
        let bytes = self.bytes(len)?;
        let text = std::str::from_utf8(bytes).map_err(|_| FrameError::TextNotUtf8 { field })?;
        if len > max {
            return Err(FrameError::TextTooLong { field, len, max });
        }
        Ok(text.to_owned())
    }

    fn text(&mut self, field: &'static str, len: usize, max: usize) -> Result<String, FrameError> {
        let bytes = self.bytes(len)?;
        let text = std::str::from_utf8(bytes).map_err(|_| FrameError::TextNotUtf8 { field })?;
        check_text(field, text, max)?;
        Ok(text.to_owned())
    }

    /// The end of the payload: nothing may follow the last field.
    pub(super) fn finish(self) -> Result<(), FrameError> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(FrameError::TrailingBytes(n)),
        }
    }
}

/// The rules of a text field, shared by the decoders and the encoders so that nothing is
/// sent that the peer must refuse: at most `max` bytes, no control character.
pub(super) fn check_text(field: &'static str, text: &str, max: usize) -> Result<(), FrameError> {
    if text.len() > max {
        return Err(FrameError::TextTooLong { field, len: text.len(), max });
    }
    match text.char_indices().find(|(_, c)| c.is_control()) {
        Some((position, _)) => Err(FrameError::TextControl { field, position }),
        None => Ok(()),
    }
}

/// Writes `str8` text after checking it (`max` is at most 255).
pub(super) fn put_str8(
    out: &mut Vec<u8>,
    field: &'static str,
    text: &str,
    max: usize,
) -> Result<(), FrameError> {
    check_text(field, text, max.min(usize::from(u8::MAX)))?;
    out.push(text.len() as u8);
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// Writes `str16` text after checking it (`max` is at most 65,535).
pub(super) fn put_str16(
    out: &mut Vec<u8>,
    field: &'static str,
    text: &str,
    max: usize,
) -> Result<(), FrameError> {
    check_text(field, text, max.min(usize::from(u16::MAX)))?;
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// Writes a name or path as `str8` (see [`Fields::name8`]): only its length is checked.
pub(super) fn put_name8(
    out: &mut Vec<u8>,
    field: &'static str,
    text: &str,
    max: usize,
) -> Result<(), FrameError> {
    let max = max.min(usize::from(u8::MAX));
    if text.len() > max {
        return Err(FrameError::TextTooLong { field, len: text.len(), max });
    }
    out.push(text.len() as u8);
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// Writes a name or path as `str16` (see [`Fields::name16`]): only its length is checked.
pub(super) fn put_name16(
    out: &mut Vec<u8>,
    field: &'static str,
    text: &str,
    max: usize,
) -> Result<(), FrameError> {
    let max = max.min(usize::from(u16::MAX));
    if text.len() > max {
        return Err(FrameError::TextTooLong { field, len: text.len(), max });
    }
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    Ok(())
}
