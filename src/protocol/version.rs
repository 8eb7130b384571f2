//! Which protocol a conversation speaks.
//!
//! Protocol 3 has a version byte in every header, but the existing peers fill it with
//! whatever they like (1, 2 and 3 are all seen; see `docs/compatibility.md`), so on the
//! plain TCP path the byte never selects anything: every request is protocol 3, and every
//! answer says 3. The byte a peer sent stays available as
//! [`RequestHeader::version`](super::RequestHeader::version) for the one compatibility
//! mode that keys on it. What a connection speaks is decided before the first header (by
//! how it starts), carried as a [`Version`] by the connection and its sessions, and given
//! to every encoder, so that a second protocol is one more variant rather than a constant
//! changed in many places.

use std::fmt;

/// A protocol version this implementation speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// Protocol 3: the fixed binary protocol of `docs/protocol-v3.md`.
    V3,
}

impl Version {
    /// Every version spoken, oldest first.
    pub const ALL: &'static [Version] = &[Version::V3];

    /// The byte written in the headers of this version's messages.
    pub const fn byte(self) -> u8 {
        match self {
            Version::V3 => 3,
        }
    }

    /// The version with this number, if it is one this implementation speaks.
    pub fn from_number(n: u8) -> Option<Version> {
        Version::ALL.iter().copied().find(|v| v.byte() == n)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.byte())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_3_writes_3_and_no_other_number_is_spoken() {
        assert_eq!(Version::V3.byte(), 3);
        assert_eq!(Version::from_number(3), Some(Version::V3));
        for n in (0..=255u8).filter(|&n| n != 3) {
            assert_eq!(Version::from_number(n), None, "{n}");
        }
        assert_eq!(Version::V3.to_string(), "3");
    }
}
