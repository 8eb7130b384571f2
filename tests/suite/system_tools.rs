//! Our cksum and AES-128-CBC against the system's own tools on fresh random data: GNU
//! `cksum`, and `openssl enc` in both directions. Both tools are required (CI installs
//! them): a missing tool fails the test with instructions instead of passing silently.

use securexfer::crypto::aes::{self, BLOCK, padded_len, unpadded_len};
use securexfer::crypto::{AesKey, CbcDecryptor, CbcEncryptor, Cksum};
use std::path::Path;
use std::process::{Command, Output};

/// Sizes around the block boundaries, a page, and a large odd size.
const SIZES: [usize; 7] = [0, 1, 15, 16, 17, 4096, (1 << 20) + 3];
const ZERO_IV_HEX: &str = "00000000000000000000000000000000";

fn random_data(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    getrandom::fill(&mut data).expect("OS randomness");
    data
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `tool args`, failing the test with an install hint if the tool is missing or fails.
fn run(tool: &str, args: &[&str], install_hint: &str) -> Output {
    let output = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!(
            "could not run `{tool}` ({e}): this test needs it. Install it ({install_hint}); \
             CI installs it"
        )
    });
    assert!(
        output.status.success(),
        "`{tool} {}` failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn system_cksum(path: &Path) -> (u32, u64) {
    let output = run("cksum", &[path.to_str().expect("utf-8 path")], "apt-get install coreutils");
    let text = String::from_utf8(output.stdout).expect("cksum prints text");
    let mut fields = text.split_whitespace();
    let crc = fields.next().and_then(|f| f.parse().ok());
    let size = fields.next().and_then(|f| f.parse().ok());
    match (crc, size) {
        (Some(crc), Some(size)) => (crc, size),
        _ => panic!("unexpected cksum output {text:?}"),
    }
}

fn openssl_enc(decrypt: bool, key: &AesKey, input: &Path, output: &Path) {
    let key_hex = to_hex(key);
    let mut args = vec!["enc"];
    if decrypt {
        args.push("-d");
    }
    args.extend([
        "-aes-128-cbc",
        "-K",
        &key_hex,
        "-iv",
        ZERO_IV_HEX,
        "-in",
        input.to_str().expect("utf-8 path"),
        "-out",
        output.to_str().expect("utf-8 path"),
    ]);
    run("openssl", &args, "apt-get install openssl");
}

/// Streams `data` through our encryptor in 4 KiB chunks, as a client sending a file does.
fn stream_encrypt(mut enc: CbcEncryptor, data: &[u8]) -> Vec<u8> {
    let whole = data.len() / BLOCK * BLOCK;
    let mut out = data[..whole].to_vec();
    for chunk in out.chunks_mut(4096) {
        enc.encrypt_blocks(chunk);
    }
    let mut last = vec![0u8; BLOCK];
    last[..data.len() - whole].copy_from_slice(&data[whole..]);
    let n = enc.encrypt_last(&mut last, data.len() - whole);
    out.extend_from_slice(&last[..n]);
    out
}

/// Streams `ciphertext` through our decryptor in 4 KiB chunks and strips the padding.
fn stream_decrypt(mut dec: CbcDecryptor, ciphertext: &[u8]) -> Vec<u8> {
    let mut buf = ciphertext.to_vec();
    for chunk in buf.chunks_mut(4096) {
        dec.decrypt_blocks(chunk);
    }
    let last = buf.len() - BLOCK;
    let keep = last + unpadded_len(&buf[last..]).expect("valid padding");
    buf.truncate(keep);
    buf
}

#[test]
fn our_cksum_equals_the_system_cksum_on_random_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    for size in SIZES {
        let data = random_data(size);
        let path = dir.path().join(format!("data-{size}"));
        std::fs::write(&path, &data).expect("write");
        let (crc, len) = system_cksum(&path);
        assert_eq!(len, size as u64, "cksum's byte count");
        assert_eq!(Cksum::of(&data), crc, "cksum of {size} random bytes");
        let mut streamed = Cksum::new();
        for chunk in data.chunks(1000) {
            streamed.update(chunk);
        }
        assert_eq!(streamed.finish(), crc, "streamed cksum of {size} random bytes");
    }
}

#[test]
fn openssl_ciphertext_equals_ours_and_we_decrypt_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    for size in SIZES {
        let key: AesKey = securexfer::crypto::random_bytes();
        let data = random_data(size);
        let plain = dir.path().join(format!("plain-{size}"));
        let encrypted = dir.path().join(format!("openssl-{size}.enc"));
        std::fs::write(&plain, &data).expect("write");
        openssl_enc(false, &key, &plain, &encrypted);
        let theirs = std::fs::read(&encrypted).expect("read");
        assert_eq!(theirs.len(), padded_len(size), "openssl's ciphertext length for {size}");

        assert!(aes::encrypt_to_vec(&key, &data) == theirs, "encrypt_to_vec, {size} bytes");
        assert!(stream_encrypt(CbcEncryptor::new(&key), &data) == theirs, "new, {size} bytes");
        assert!(
            stream_encrypt(CbcEncryptor::portable(&key), &data) == theirs,
            "portable, {size} bytes"
        );
        assert!(stream_decrypt(CbcDecryptor::new(&key), &theirs) == data, "new, {size} bytes");
        assert!(
            stream_decrypt(CbcDecryptor::portable(&key), &theirs) == data,
            "portable, {size} bytes"
        );
    }
}

#[test]
fn our_ciphertext_decrypts_with_openssl() {
    let dir = tempfile::tempdir().expect("tempdir");
    for size in SIZES {
        let key: AesKey = securexfer::crypto::random_bytes();
        let data = random_data(size);
        for (label, enc) in
            [("new", CbcEncryptor::new(&key)), ("portable", CbcEncryptor::portable(&key))]
        {
            let ours = dir.path().join(format!("ours-{label}-{size}.enc"));
            let back = dir.path().join(format!("back-{label}-{size}"));
            std::fs::write(&ours, stream_encrypt(enc, &data)).expect("write");
            openssl_enc(true, &key, &ours, &back);
            let decrypted = std::fs::read(&back).expect("read");
            assert!(decrypted == data, "openssl enc -d of our {label} ciphertext, {size} bytes");
        }
    }
}

/// Protocol 4's upgrade proof is plain RSASSA-PKCS1-v1_5 with SHA-256: OpenSSL verifies
/// the client's signature of an upgrade statement with the protocol-3 public key, as the
/// design says an operator can.
#[test]
fn openssl_verifies_the_upgrade_signature() {
    use securexfer::crypto::PrivateKey;
    use securexfer::protocol::ClientId;
    let key = PrivateKey::generate();
    let statement = securexfer::protocol::v4::upgrade_statement(
        &[1; 32],
        &[2; 32],
        &[3; 32],
        &ClientId([4; 16]),
        "alice",
    )
    .unwrap();
    let signature = key.sign_pkcs1v15_sha256(&statement).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (public, message, sig) =
        (dir.path().join("pub.der"), dir.path().join("m.bin"), dir.path().join("sig.bin"));
    std::fs::write(&public, key.public_key().to_der()).unwrap();
    std::fs::write(&message, &statement).unwrap();
    std::fs::write(&sig, &signature).unwrap();
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let args = [
        "dgst".to_owned(),
        "-sha256".to_owned(),
        "-keyform".to_owned(),
        "DER".to_owned(),
        "-verify".to_owned(),
        path(&public),
        "-signature".to_owned(),
        path(&sig),
        path(&message),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run("openssl", &args, "apt-get install openssl");
    assert!(String::from_utf8_lossy(&output.stdout).contains("Verified OK"));
}
