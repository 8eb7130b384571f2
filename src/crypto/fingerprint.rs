//! How a public key is named to people: `SHA256:` and the unpadded base64 of the SHA-256
//! of its SubjectPublicKeyInfo, as ssh shows keys. The server prints its key this way, and
//! the client trusts and pins keys by it, so both sides use this one definition.

use base64::Engine;

/// The fingerprint of a SubjectPublicKeyInfo (DER).
pub fn of(spki_der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
    format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest))
}

/// Whether `text` has the shape of a fingerprint (`SHA256:` and 43 base64 characters).
pub fn is_valid(text: &str) -> bool {
    text.strip_prefix("SHA256:").is_some_and(|b64| {
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(b64)
            .is_ok_and(|digest| digest.len() == 32)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn fingerprints_have_the_shape_ssh_shows() {
        // SHA-256 of nothing.
        let empty = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
        assert_eq!(super::of(b""), empty);
        assert!(super::is_valid(empty));
        for bad in ["", "SHA256:", "SHA256:abc", "MD5:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"]
        {
            assert!(!super::is_valid(bad), "{bad}");
        }
    }
}
