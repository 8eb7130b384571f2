//! Invitation tokens as people pass them around: `sxi-` and 26 characters of lowercase
//! base32 (RFC 4648's alphabet, no padding) for the 16 random bytes `REGISTER` carries
//! (docs/protocol-v4.md, "Registration policy"). The prefix makes a token recognisable
//! in a chat or a mail; base32 survives being read aloud and typed.

use thiserror::Error;

/// The prefix of every token.
pub const TOKEN_PREFIX: &str = "sxi-";
/// The token's bytes on the wire.
pub const TOKEN_BYTES: usize = 16;
/// Base32 characters for 16 bytes: 128 bits in groups of 5, the last carrying 3.
pub const TOKEN_CHARS: usize = 26;
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Why a text is not a token.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "{0}: an invitation token is sxi- and 26 characters of a-z and 2-7, as `securexfer db \
     invite` prints it"
)]
pub struct TokenError(pub String);

/// The 16 bytes of a token written `sxi-…`; the text is taken as given (surrounding
/// whitespace aside), so a mistyped token is refused here rather than by the server.
pub fn parse(text: &str) -> Result<[u8; TOKEN_BYTES], TokenError> {
    let body = text
        .trim()
        .strip_prefix(TOKEN_PREFIX)
        .ok_or_else(|| TokenError("it does not start with sxi-".into()))?;
    if body.len() != TOKEN_CHARS {
        return Err(TokenError(format!("it has {} characters after sxi-", body.len())));
    }
    let mut bits: u32 = 0;
    let mut held = 0;
    let mut out = Vec::with_capacity(TOKEN_BYTES);
    for (i, c) in body.bytes().enumerate() {
        let value = ALPHABET
            .iter()
            .position(|&a| a == c)
            .ok_or_else(|| TokenError(format!("character {} is {:?}", i + 1, c as char)))?;
        bits = (bits << 5) | value as u32;
        held += 5;
        if held >= 8 {
            held -= 8;
            out.push((bits >> held) as u8);
            bits &= (1 << held) - 1;
        }
    }
    if bits != 0 {
        return Err(TokenError("its last character has bits set beyond the 16 bytes".into()));
    }
    out.try_into().map_err(|_| TokenError("it does not hold 16 bytes".into()))
}

/// The text of a token's bytes (what `db invite` prints).
pub fn format(bytes: &[u8; TOKEN_BYTES]) -> String {
    let mut text = String::from(TOKEN_PREFIX);
    let (mut bits, mut held) = (0u32, 0);
    for &b in bytes {
        bits = (bits << 8) | u32::from(b);
        held += 8;
        while held >= 5 {
            held -= 5;
            text.push(ALPHABET[((bits >> held) & 31) as usize] as char);
        }
        bits &= (1 << held) - 1;
    }
    if held > 0 {
        text.push(ALPHABET[((bits << (5 - held)) & 31) as usize] as char);
    }
    text
}
