//! Our crypto against an independent implementation: Python's `cryptography` package,
//! driven through `tests/peers/interop_helper.py`. RSA-OAEP-SHA-1 key transport in both
//! directions and AES-128-CBC (zero IV, PKCS#7) in both directions.
//!
//! `python3` with `cryptography` is required (CI installs it): if it is missing the tests
//! fail with instructions instead of passing silently.

use securexfer::crypto::aes::{self, BLOCK, unpadded_len};
use securexfer::crypto::{AesKey, CbcDecryptor, CbcEncryptor, PrivateKey, PublicKey};
use securexfer::protocol::PUBLIC_KEY_LEN;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

const INSTALL_HINT: &str = "install python3 and its `cryptography` package (`apt-get install \
     python3 python3-cryptography` or `pip install cryptography`); CI installs them";

fn helper_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/interop_helper.py")
}

/// Runs the helper and returns its stdout lines; fails the test clearly on any problem.
fn python(args: &[&str]) -> Vec<String> {
    let output = Command::new("python3")
        .arg(helper_path())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("could not run python3 ({e}): {INSTALL_HINT}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("MISSING-CRYPTOGRAPHY") {
        panic!("python3 has no `cryptography` package: {INSTALL_HINT}\n{stderr}");
    }
    assert!(
        output.status.success(),
        "interop_helper.py {} failed ({}): {stderr}",
        args.first().copied().unwrap_or_default(),
        output.status
    );
    String::from_utf8(output.stdout)
        .expect("the helper prints text")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex(text: &str) -> Vec<u8> {
    let text = text.trim();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn random_data(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    getrandom::fill(&mut data).expect("OS randomness");
    data
}

fn our_key() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(PrivateKey::generate)
}

#[test]
fn python_cryptography_is_available() {
    let version = python(&["check"]);
    assert_eq!(version.len(), 1, "{version:?}");
}

#[test]
fn python_decrypts_the_aes_key_we_encrypt_under_our_public_key() {
    let key = our_key();
    let private_b64 = key.to_base64();
    for _ in 0..3 {
        let aes: AesKey = securexfer::crypto::random_bytes();
        let ciphertext = key.public_key().encrypt_aes_key(&aes).expect("encrypts");
        assert_eq!(ciphertext.len(), 128);
        let out = python(&["oaep-decrypt", &private_b64, &to_hex(&ciphertext)]);
        assert_eq!(out, [to_hex(&aes)], "Python's OAEP-SHA-1 decryption of our ciphertext");
    }
}

#[test]
fn we_decrypt_the_aes_key_python_encrypts_under_our_public_key() {
    let key = our_key();
    let spki = key.public_key().to_der();
    assert_eq!(spki.len(), PUBLIC_KEY_LEN);
    for _ in 0..3 {
        let aes: AesKey = securexfer::crypto::random_bytes();
        let out = python(&["oaep-encrypt", &to_hex(&spki), &to_hex(&aes)]);
        assert_eq!(out.len(), 1, "{out:?}");
        let ciphertext = hex(&out[0]);
        assert_eq!(ciphertext.len(), 128);
        assert_eq!(key.decrypt_aes_key(&ciphertext).expect("decrypts"), aes);
    }
}

#[test]
fn python_made_e3_keys_fit_the_field_and_work_both_ways() {
    // The reference Python client makes e = 3 keys (Python cannot generate e = 17); a
    // securexfer server must take them from the 160-byte field.
    let out = python(&["rsa-generate", "3"]);
    assert_eq!(out.len(), 2, "{out:?}");
    let spki = hex(&out[1]);
    assert_eq!(spki.len(), PUBLIC_KEY_LEN);
    let mut field = [0u8; PUBLIC_KEY_LEN];
    field.copy_from_slice(&spki);
    let public = PublicKey::from_field(&securexfer::protocol::PublicKeyField(field))
        .expect("a Python e = 3 key is accepted");
    assert_eq!(public.to_der(), spki);

    let aes: AesKey = securexfer::crypto::random_bytes();
    let ciphertext = public.encrypt_aes_key(&aes).expect("encrypts");
    assert_eq!(python(&["oaep-decrypt", &out[0], &to_hex(&ciphertext)]), [to_hex(&aes)]);

    let private = PrivateKey::from_base64(&out[0]).expect("Python's PKCS#8 loads");
    assert_eq!(private.public_key(), public);
    let ciphertext = hex(&python(&["oaep-encrypt", &out[1], &to_hex(&aes)])[0]);
    assert_eq!(private.decrypt_aes_key(&ciphertext).expect("decrypts"), aes);
}

/// Sizes around block boundaries and one larger than a streaming buffer.
const SIZES: [usize; 6] = [0, 1, 15, 16, 17, 200_003];

#[test]
fn we_decrypt_what_python_encrypts_with_aes_cbc() {
    let dir = tempfile::tempdir().expect("tempdir");
    for size in SIZES {
        let key: AesKey = securexfer::crypto::random_bytes();
        let data = random_data(size);
        let plain = dir.path().join(format!("plain-{size}"));
        let encrypted = dir.path().join(format!("python-{size}.enc"));
        std::fs::write(&plain, &data).expect("write");
        python(&[
            "aes-encrypt",
            &to_hex(&key),
            plain.to_str().expect("utf-8"),
            encrypted.to_str().expect("utf-8"),
        ]);
        let theirs = std::fs::read(&encrypted).expect("read");
        assert!(aes::encrypt_to_vec(&key, &data) == theirs, "same ciphertext, {size} bytes");
        for (label, mut dec) in
            [("new", CbcDecryptor::new(&key)), ("portable", CbcDecryptor::portable(&key))]
        {
            let mut buf = theirs.clone();
            for chunk in buf.chunks_mut(BLOCK * 100) {
                dec.decrypt_blocks(chunk);
            }
            let last = buf.len() - BLOCK;
            let len = last + unpadded_len(&buf[last..]).expect("valid padding");
            assert!(buf[..len] == data[..], "{label} decryptor, {size} bytes");
        }
    }
}

#[test]
fn python_decrypts_what_we_encrypt_with_aes_cbc() {
    let dir = tempfile::tempdir().expect("tempdir");
    for size in SIZES {
        let key: AesKey = securexfer::crypto::random_bytes();
        let data = random_data(size);
        for (label, mut enc) in
            [("new", CbcEncryptor::new(&key)), ("portable", CbcEncryptor::portable(&key))]
        {
            let whole = size / BLOCK * BLOCK;
            let mut ciphertext = data[..whole].to_vec();
            for chunk in ciphertext.chunks_mut(BLOCK * 100) {
                enc.encrypt_blocks(chunk);
            }
            let mut last = [0u8; BLOCK];
            last[..size - whole].copy_from_slice(&data[whole..]);
            let n = enc.encrypt_last(&mut last, size - whole);
            ciphertext.extend_from_slice(&last[..n]);

            let ours = dir.path().join(format!("ours-{label}-{size}.enc"));
            let back = dir.path().join(format!("back-{label}-{size}"));
            std::fs::write(&ours, &ciphertext).expect("write");
            python(&[
                "aes-decrypt",
                &to_hex(&key),
                ours.to_str().expect("utf-8"),
                back.to_str().expect("utf-8"),
            ]);
            let decrypted = std::fs::read(&back).expect("read");
            assert!(decrypted == data, "Python decrypts our {label} ciphertext, {size} bytes");
        }
    }
}
