//! How a public key is named to people: `SHA256:` and the unpadded base64 of the SHA-256
//! of its SubjectPublicKeyInfo, as ssh shows keys. The server prints its key this way, and
//! the client trusts and pins keys by it, so both sides use this one definition.

use base64::Engine;

/// The fingerprint of a SubjectPublicKeyInfo (DER).
pub fn of(spki_der: &[u8]) -> String {
    text(&raw(spki_der))
}

/// The 32 bytes behind a fingerprint: the SHA-256 of the SubjectPublicKeyInfo (DER), as
/// protocol 4 carries it (the `fp` type of docs/protocol-v4.md).
pub fn raw(spki_der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// The text of a raw fingerprint (`SHA256:` and unpadded base64).
pub fn text(raw: &[u8; 32]) -> String {
    format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw))
}

/// The raw bytes of a fingerprint's text, or `None` if it has not the shape.
pub fn parse(text: &str) -> Option<[u8; 32]> {
    let b64 = text.strip_prefix("SHA256:")?;
    base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64).ok()?.try_into().ok()
}

/// Whether `text` has the shape of a fingerprint (`SHA256:` and 43 base64 characters).
pub fn is_valid(text: &str) -> bool {
    parse(text).is_some()
}

#[cfg(test)]
mod tests {
    #[test]
    fn fingerprints_have_the_shape_ssh_shows() {
        // SHA-256 of nothing.
        let empty = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
        assert_eq!(super::of(b""), empty);
        assert!(super::is_valid(empty));
        assert_eq!(super::parse(empty), Some(super::raw(b"")));
        assert_eq!(super::text(&super::raw(b"")), empty);
        for bad in ["", "SHA256:", "SHA256:abc", "MD5:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"]
        {
            assert!(!super::is_valid(bad), "{bad}");
        }
    }
}
