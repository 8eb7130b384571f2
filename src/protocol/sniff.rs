//! Which protocol a connection speaks, decided from its first bytes (issue 14: protocol 4
//! runs TLS 1.3 on the same port as protocol 3).
//!
//! A TLS connection opens with a handshake record holding a ClientHello: record type 0x16,
//! a legacy record version 0x03 0x01 to 0x03 0x03 (TLS 1.3 keeps these for middleboxes),
//! two length bytes, then handshake type 0x01. A protocol-3 connection opens with a request
//! header, whose first 16 bytes are the client id: zeros before registration, else an id
//! the server issued, and this server never issues one that starts 0x16 0x03 (see
//! [`could_open_tls`]). So the two cannot be mistaken for each other, except for a peer that
//! chooses to send such an id in a 1025 (where the id is not looked at): it is taken for
//! TLS and its connection fails the TLS handshake.

/// The TLS record type of a handshake record.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// The major byte of every TLS legacy record version.
pub const TLS_MAJOR_VERSION: u8 = 0x03;
/// The minor bytes of the legacy record versions a ClientHello may carry (TLS 1.0 to 1.2).
pub const TLS_MINOR_VERSIONS: std::ops::RangeInclusive<u8> = 0x01..=0x03;
/// The handshake message type of a ClientHello.
pub const TLS_CLIENT_HELLO: u8 = 0x01;
/// Bytes needed to decide: record type, version (2), record length (2), handshake type.
pub const SNIFF_LEN: usize = 6;

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// A TLS ClientHello: protocol 4.
    Tls,
    /// Anything else: protocol 3, served exactly as before.
    Protocol3,
    /// Every byte so far fits a ClientHello, but there are too few to be sure.
    NeedMore,
}

/// Decides from `prefix`, the first bytes of a connection (any number of them). Pure, so
/// that the rule can be tested against every recorded protocol-3 conversation.
pub fn classify(prefix: &[u8]) -> Sniff {
    let fits = |i: usize, ok: &dyn Fn(u8) -> bool| prefix.get(i).is_none_or(|&b| ok(b));
    let tls_so_far = fits(0, &|b| b == TLS_HANDSHAKE_RECORD)
        && fits(1, &|b| b == TLS_MAJOR_VERSION)
        && fits(2, &|b| TLS_MINOR_VERSIONS.contains(&b))
        && fits(5, &|b| b == TLS_CLIENT_HELLO);
    match (tls_so_far, prefix.len() >= SNIFF_LEN) {
        (false, _) => Sniff::Protocol3,
        (true, true) => Sniff::Tls,
        (true, false) => Sniff::NeedMore,
    }
}

/// Whether a client id could open a connection that is taken for TLS: it starts with the
/// handshake record type and the TLS major version. The server never issues such an id
/// (one in 65,536 random ids would be), so that no request of a registered client can be
/// taken for protocol 4.
pub fn could_open_tls(id: &[u8]) -> bool {
    id.starts_with(&[TLS_HANDSHAKE_RECORD, TLS_MAJOR_VERSION])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first bytes of a real TLS 1.3 ClientHello (rustls, openssl and browsers alike).
    const HELLO: [u8; 9] = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];

    #[test]
    fn a_client_hello_is_tls_whatever_its_legacy_record_version() {
        assert_eq!(classify(&HELLO), Sniff::Tls);
        for minor in TLS_MINOR_VERSIONS {
            assert_eq!(classify(&[0x16, 0x03, minor, 0x00, 0x30, 0x01]), Sniff::Tls);
        }
    }

    #[test]
    fn a_short_prefix_of_a_client_hello_needs_more_bytes() {
        for len in 0..SNIFF_LEN {
            assert_eq!(classify(&HELLO[..len]), Sniff::NeedMore, "{len} bytes");
        }
    }

    #[test]
    fn anything_that_departs_from_a_client_hello_is_protocol_3_at_once() {
        assert_eq!(classify(&[0x00]), Sniff::Protocol3, "a zero id (1025)");
        assert_eq!(classify(&[0x16, 0x02]), Sniff::Protocol3);
        assert_eq!(classify(&[0x16, 0x03, 0x00]), Sniff::Protocol3);
        assert_eq!(classify(&[0x16, 0x03, 0x04]), Sniff::Protocol3);
        assert_eq!(classify(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02]), Sniff::Protocol3, "alert");
        assert_eq!(
            classify(&[0x16, 0x03, 0x03, 0x00, 0x30, 0x02]),
            Sniff::Protocol3,
            "not a hello"
        );
    }

    #[test]
    fn an_id_that_could_open_tls_is_one_that_starts_0x16_0x03() {
        assert!(could_open_tls(&[0x16, 0x03, 0, 0]));
        assert!(!could_open_tls(&[0x16, 0x04]));
        assert!(!could_open_tls(&[0; 16]));
        // Every id that is not excluded classifies as protocol 3, whatever follows.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let mut request = [0xffu8; SNIFF_LEN];
                request[..2].copy_from_slice(&[a, b]);
                if !could_open_tls(&request) {
                    assert_eq!(classify(&request), Sniff::Protocol3, "{a:#04x} {b:#04x}");
                }
            }
        }
    }
}
