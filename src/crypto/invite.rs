//! Invitation tokens for `serve --registration token`: 16 random bytes, shown to people as
//! `sxi-` and 26 characters of lowercase base32 (RFC 4648 alphabet, no padding). The
//! server's records keep only the SHA-256 of a token, so a stolen database gives no token
//! that works.

use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// The bytes of a token (protocol 4's `TOKEN_LEN`).
pub const TOKEN_BYTES: usize = 16;
/// What every token starts with, so that one pasted in the wrong place is recognisable.
pub const TOKEN_PREFIX: &str = "sxi-";
/// Base32 characters of a token: 128 bits at 5 bits a character.
pub const TOKEN_CHARS: usize = (TOKEN_BYTES * 8).div_ceil(5);
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// An invitation token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct InviteToken(pub [u8; TOKEN_BYTES]);

/// Why a text is not a token: the reason, in words.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "{0}: an invitation token is sxi- and 26 characters of a-z and 2-7, as `securexfer db \
     invite` prints it"
)]
pub struct TokenSyntaxError(pub String);

impl InviteToken {
    /// A fresh token from the operating system's random source.
    pub fn generate() -> Self {
        InviteToken(super::random_bytes())
    }

    /// The SHA-256 of the token's bytes: all the records keep.
    pub fn hash(&self) -> [u8; 32] {
        hash_token(&self.0)
    }
}

/// The SHA-256 of a token's bytes, as the records keep it.
pub fn hash_token(bytes: &[u8; TOKEN_BYTES]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

impl fmt::Display for InviteToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bits: u32 = 0;
        let mut held = 0;
        let mut text = String::with_capacity(TOKEN_PREFIX.len() + TOKEN_CHARS);
        text.push_str(TOKEN_PREFIX);
        for &byte in &self.0 {
            bits = (bits << 8) | u32::from(byte);
            held += 8;
            while held >= 5 {
                held -= 5;
                text.push(ALPHABET[((bits >> held) & 31) as usize] as char);
            }
        }
        if held > 0 {
            text.push(ALPHABET[((bits << (5 - held)) & 31) as usize] as char);
        }
        f.write_str(&text)
    }
}

impl fmt::Debug for InviteToken {
    /// Never the token itself: it is a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InviteToken(..)")
    }
}

impl FromStr for InviteToken {
    type Err = TokenSyntaxError;

    /// The text as people paste it: surrounding whitespace aside, exactly one spelling
    /// (lowercase, the last character's 2 padding bits 0), so a mistyped token is refused
    /// here rather than by the server.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| TokenSyntaxError(why);
        let body = text
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| bad("it does not start with sxi-".into()))?;
        if body.len() != TOKEN_CHARS {
            return Err(bad(format!("it has {} characters after sxi-", body.len())));
        }
        let (mut bits, mut held, mut out) = (0u32, 0, Vec::with_capacity(TOKEN_BYTES));
        for (i, c) in body.bytes().enumerate() {
            let value = ALPHABET
                .iter()
                .position(|&a| a == c)
                .ok_or_else(|| bad(format!("character {} is {:?}", i + 1, c as char)))?;
            bits = (bits << 5) | value as u32;
            held += 5;
            if held >= 8 {
                held -= 8;
                out.push((bits >> held) as u8);
            }
        }
        if bits & ((1 << held) - 1) != 0 {
            return Err(bad("its last character has bits set beyond the 16 bytes".into()));
        }
        let bytes = out.try_into().map_err(|_| bad("it does not hold 16 bytes".into()))?;
        Ok(InviteToken(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_sxi_and_26_base32_characters_and_reads_back() {
        for _ in 0..100 {
            let token = InviteToken::generate();
            let text = token.to_string();
            assert_eq!(text.len(), 4 + 26, "{text}");
            assert!(text[4..].bytes().all(|c| ALPHABET.contains(&c)), "{text}");
            assert_eq!(text.parse::<InviteToken>().unwrap(), token);
        }
        // RFC 4648's test vector "foobar" → MZXW6YTBOI, lowercase here.
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(b"foobar");
        assert!(InviteToken(bytes).to_string().starts_with("sxi-mzxw6ytboi"));
        assert_eq!(format!("{:?}", InviteToken(bytes)), "InviteToken(..)");
    }

    #[test]
    fn anything_else_is_not_a_token() {
        let good = InviteToken([0xab; 16]).to_string();
        let last_padding_bit = format!("{}b", &good[..good.len() - 1]);
        for bad in [
            "",
            "sxi-",
            "abc",
            &good[4..],
            &good.to_uppercase(),
            &format!("{good}a"),
            &last_padding_bit,
        ] {
            assert!(bad.parse::<InviteToken>().is_err(), "{bad}");
        }
    }
}
