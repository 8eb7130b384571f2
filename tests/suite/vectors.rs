//! The crypto core against test vectors made by tools nobody on this project wrote
//! (GNU `cksum`, `openssl enc`, `openssl pkeyutl`): every row of every file in
//! `tests/data/vectors/` is checked, through every constructor and in several chunkings.
//! Also the key-handling rules the protocol relies on: e = 17 keys with a 160-byte SPKI,
//! base64 round trips, and typed errors (never panics) for wrong keys and garbage.

use proptest::prelude::*;
use securexfer::content::{ContentError, Digest, Scheme};
use securexfer::crypto::aes::{self, BLOCK, padded_len, unpadded_len};
use securexfer::crypto::{
    AesKey, CbcDecryptor, CbcEncryptor, Cksum, KeyError, PaddingError, PrivateKey, PublicKey,
    ZlibCrc32,
};
use securexfer::protocol::{PUBLIC_KEY_LEN, PublicKeyField};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------
// Reading the vector files

fn vector_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/vectors").join(name)
}

fn read_vector(name: &str) -> String {
    let path = vector_path(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The data rows of a TSV file (comment lines start with `#`), split into fields.
fn rows(name: &str) -> Vec<Vec<String>> {
    let rows: Vec<Vec<String>> = read_vector(name)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect();
    assert!(!rows.is_empty(), "{name} has no rows");
    rows
}

fn hex(text: &str) -> Vec<u8> {
    let text = text.trim();
    assert!(text.len().is_multiple_of(2), "odd-length hex {text:?}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn aes_key(text: &str) -> AesKey {
    hex(text).try_into().expect("a 16-byte key")
}

/// A content spec from the files: `text:S` is the ASCII of S; `pattern` is `len` bytes with
/// byte i = i mod 251.
fn content(spec: &str, len: usize) -> Vec<u8> {
    let data = match spec.strip_prefix("text:") {
        Some(text) => text.as_bytes().to_vec(),
        None if spec == "pattern" => (0..len).map(|i| (i % 251) as u8).collect(),
        None => panic!("unknown content spec {spec:?}"),
    };
    assert_eq!(data.len(), len, "content {spec:?}");
    data
}

/// One row of `cksum.tsv`.
struct CksumRow {
    name: String,
    data: Vec<u8>,
    cksum: u32,
}

/// Every row of `cksum.tsv` (its data is built once: the largest row is 16 MiB).
fn cksum_rows() -> &'static [CksumRow] {
    static ROWS: OnceLock<Vec<CksumRow>> = OnceLock::new();
    ROWS.get_or_init(|| {
        rows("cksum.tsv")
            .into_iter()
            .map(|f| {
                assert_eq!(f.len(), 4, "cksum.tsv row {f:?}");
                let len: usize = f[1].parse().expect("length");
                CksumRow {
                    name: f[0].clone(),
                    data: content(&f[2], len),
                    cksum: f[3].parse().expect("cksum"),
                }
            })
            .collect()
    })
}

/// The plaintext named `name` (the AES rows reuse the cksum rows' names for their data).
fn named_data() -> HashMap<&'static str, &'static [u8]> {
    cksum_rows().iter().map(|r| (r.name.as_str(), r.data.as_slice())).collect()
}

/// What the AES file says the ciphertext is.
enum Expected {
    Bytes(Vec<u8>),
    Cksum(u32),
}

struct AesRow {
    name: String,
    key: AesKey,
    plaintext: Vec<u8>,
    ciphertext_len: usize,
    expected: Expected,
}

fn aes_rows() -> Vec<AesRow> {
    let data = named_data();
    rows("aes128cbc.tsv")
        .into_iter()
        .map(|f| {
            assert_eq!(f.len(), 5, "aes128cbc.tsv row {f:?}");
            let plaintext = match f[2].strip_prefix("text:") {
                Some(text) => text.as_bytes().to_vec(),
                None => data
                    .get(f[0].as_str())
                    .unwrap_or_else(|| panic!("{} is not in cksum.tsv", f[0]))
                    .to_vec(),
            };
            let expected = match f[4].strip_prefix("cksum:") {
                Some(n) => Expected::Cksum(n.parse().expect("cksum")),
                None => Expected::Bytes(hex(&f[4])),
            };
            AesRow {
                name: f[0].clone(),
                key: aes_key(&f[1]),
                plaintext,
                ciphertext_len: f[3].parse().expect("ciphertext length"),
                expected,
            }
        })
        .collect()
}

fn pkcs8_pem_body() -> String {
    read_vector("rsa1024-e17.pkcs8.pem")
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn vector_key_pkcs8() -> PrivateKey {
    PrivateKey::from_base64(&pkcs8_pem_body()).expect("the PKCS#8 vector key loads")
}

fn vector_key_pkcs1() -> PrivateKey {
    PrivateKey::from_base64(&read_vector("rsa1024-e17.pkcs8.der.b64"))
        .expect("the PKCS#1 vector key loads")
}

fn vector_spki() -> Vec<u8> {
    hex(&read_vector("rsa1024-e17.spki.hex"))
}

/// A fresh e = 17 key; generation is fast but there is no need to repeat it per test.
fn generated_key() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(PrivateKey::generate)
}

// ---------------------------------------------------------------------------------------
// Streaming helpers: the ways a caller may cut a stream into pieces

/// Chunk patterns, in bytes, cycled over the data. Odd sizes for cksum; the AES helpers
/// round them to whole blocks.
const CHUNKINGS: &[&[usize]] = &[&[1], &[7, 13, 1], &[16], &[48, 16, 4080], &[65536], &[1 << 20]];

fn cksum_in_chunks(data: &[u8], pattern: &[usize]) -> u32 {
    let mut c = Cksum::new();
    let mut rest = data;
    for &size in pattern.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        c.update(chunk);
        rest = tail;
    }
    assert_eq!(c.len(), data.len() as u64);
    c.finish()
}

/// Encrypts whole blocks in chunks of `pattern` (rounded up to blocks), then hands the
/// last `tail_blocks` blocks plus the partial block to `encrypt_last`.
fn encrypt_in_chunks(
    mut enc: CbcEncryptor,
    data: &[u8],
    pattern: &[usize],
    tail_blocks: usize,
) -> Vec<u8> {
    let streamed = (data.len() / BLOCK).saturating_sub(tail_blocks) * BLOCK;
    let mut out = data[..streamed].to_vec();
    let mut at = 0;
    for &size in pattern.iter().cycle() {
        if at == streamed {
            break;
        }
        let size = size.div_ceil(BLOCK).max(1) * BLOCK;
        let end = (at + size).min(streamed);
        enc.encrypt_blocks(&mut out[at..end]);
        at = end;
    }
    let last = &data[streamed..];
    let mut buf = vec![0u8; padded_len(last.len())];
    buf[..last.len()].copy_from_slice(last);
    let n = enc.encrypt_last(&mut buf, last.len());
    assert_eq!(n, buf.len());
    out.extend_from_slice(&buf);
    out
}

/// Decrypts in chunks of `pattern` (rounded to blocks) and strips the padding from the
/// last block, as a receiver streaming to disk does.
fn decrypt_in_chunks(
    mut dec: CbcDecryptor,
    ciphertext: &[u8],
    pattern: &[usize],
) -> Result<Vec<u8>, PaddingError> {
    let mut buf = ciphertext.to_vec();
    let mut at = 0;
    for &size in pattern.iter().cycle() {
        if at == buf.len() {
            break;
        }
        let size = size.div_ceil(BLOCK).max(1) * BLOCK;
        let end = (at + size).min(buf.len());
        dec.decrypt_blocks(&mut buf[at..end]);
        at = end;
    }
    let last_block = buf.len().checked_sub(BLOCK).ok_or(PaddingError)?;
    let keep = last_block + unpadded_len(&buf[last_block..])?;
    buf.truncate(keep);
    Ok(buf)
}

type EncryptorFactory = fn(&AesKey) -> CbcEncryptor;
type DecryptorFactory = fn(&AesKey) -> CbcDecryptor;

const ENCRYPTORS: [(&str, EncryptorFactory); 2] =
    [("new", CbcEncryptor::new), ("portable", CbcEncryptor::portable)];
const DECRYPTORS: [(&str, DecryptorFactory); 2] =
    [("new", CbcDecryptor::new), ("portable", CbcDecryptor::portable)];

// ---------------------------------------------------------------------------------------
// cksum

#[test]
fn cksum_matches_gnu_cksum_on_every_vector() {
    for row in cksum_rows() {
        assert_eq!(Cksum::of(&row.data), row.cksum, "cksum of {}", row.name);
    }
}

#[test]
fn cksum_is_the_same_whatever_the_chunk_sizes() {
    for row in cksum_rows() {
        for pattern in CHUNKINGS {
            // Byte-at-a-time over 16 MiB proves nothing more than over 64 KiB.
            if **pattern == [1] && row.data.len() > 1 << 16 {
                continue;
            }
            assert_eq!(
                cksum_in_chunks(&row.data, pattern),
                row.cksum,
                "{} in {pattern:?}",
                row.name
            );
        }
    }
}

#[test]
fn cksum_counts_what_it_has_seen() {
    let mut c = Cksum::default();
    assert!(c.is_empty());
    c.update(b"abc");
    c.update(b"");
    c.update(b"de");
    assert_eq!(c.len(), 5);
    assert!(!c.is_empty());
    assert_eq!(c.clone().finish(), Cksum::of(b"abcde"));
}

// ---------------------------------------------------------------------------------------
// AES-128-CBC

#[test]
fn aes_vectors_cover_both_keys_and_both_kinds_of_expected_value() {
    let rows = aes_rows();
    assert!(rows.iter().any(|r| matches!(r.expected, Expected::Bytes(_))));
    assert!(rows.iter().any(|r| matches!(r.expected, Expected::Cksum(_))));
    let keys: std::collections::HashSet<_> = rows.iter().map(|r| r.key).collect();
    assert!(keys.len() >= 2);
}

fn check_ciphertext(row: &AesRow, ciphertext: &[u8], how: &str) {
    assert_eq!(ciphertext.len(), row.ciphertext_len, "{} {how}: length", row.name);
    match &row.expected {
        Expected::Bytes(bytes) => {
            assert_eq!(to_hex(ciphertext), to_hex(bytes), "{} {how}", row.name);
        }
        Expected::Cksum(cksum) => {
            assert_eq!(Cksum::of(ciphertext), *cksum, "{} {how}: cksum of ciphertext", row.name);
        }
    }
}

#[test]
fn aes_encryption_matches_openssl_on_every_vector() {
    for row in aes_rows() {
        assert_eq!(padded_len(row.plaintext.len()), row.ciphertext_len, "{}", row.name);
        check_ciphertext(&row, &aes::encrypt_to_vec(&row.key, &row.plaintext), "encrypt_to_vec");
        for (label, make) in ENCRYPTORS {
            for pattern in CHUNKINGS {
                for tail_blocks in [0, 1, 3] {
                    let ct =
                        encrypt_in_chunks(make(&row.key), &row.plaintext, pattern, tail_blocks);
                    let how =
                        format!("{label} in {pattern:?}, {tail_blocks} blocks left to the end");
                    check_ciphertext(&row, &ct, &how);
                }
            }
        }
    }
}

#[test]
fn aes_decryption_recovers_every_vector_plaintext() {
    for row in aes_rows() {
        let ciphertext = aes::encrypt_to_vec(&row.key, &row.plaintext);
        check_ciphertext(&row, &ciphertext, "encrypt_to_vec");
        assert_eq!(
            aes::decrypt_to_vec(&row.key, &ciphertext).as_deref(),
            Ok(&row.plaintext[..]),
            "{} decrypt_to_vec",
            row.name
        );
        for (label, make) in DECRYPTORS {
            for pattern in CHUNKINGS {
                let plain = decrypt_in_chunks(make(&row.key), &ciphertext, pattern);
                assert!(
                    plain.as_deref() == Ok(&row.plaintext[..]),
                    "{} decrypted by {label} in {pattern:?}",
                    row.name
                );
            }
        }
    }
}

#[test]
fn hex_vectors_decrypt_as_given_in_the_file() {
    for row in aes_rows() {
        let Expected::Bytes(ciphertext) = &row.expected else { continue };
        for (label, make) in DECRYPTORS {
            let plain = decrypt_in_chunks(make(&row.key), ciphertext, &[16]);
            assert_eq!(plain.as_deref(), Ok(&row.plaintext[..]), "{} by {label}", row.name);
        }
    }
}

#[test]
fn fast_and_portable_aes_agree_with_each_other_on_every_length() {
    let key: AesKey = securexfer::crypto::random_bytes();
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
    for len in 0..=300 {
        let data = &data[..len];
        let fast = encrypt_in_chunks(CbcEncryptor::new(&key), data, &[32], 0);
        let portable = encrypt_in_chunks(CbcEncryptor::portable(&key), data, &[48], 1);
        assert_eq!(fast, portable, "length {len}");
        // Decrypt each with the other implementation; the 8-block lanes of the fast path
        // are exercised by the chunks of 144 bytes (9 blocks).
        let back = decrypt_in_chunks(CbcDecryptor::new(&key), &portable, &[144]);
        assert_eq!(back.as_deref(), Ok(data), "length {len}");
        let back = decrypt_in_chunks(CbcDecryptor::portable(&key), &fast, &[16]);
        assert_eq!(back.as_deref(), Ok(data), "length {len}");
    }
}

#[test]
fn the_wide_decryption_path_agrees_with_the_portable_one_across_group_boundaries() {
    // The VAES path (where the CPU has it) decrypts groups of 16 blocks (256 bytes) and
    // leaves the rest to the 128-bit loop; chunks of 256, 272 and 4096+16 bytes and the
    // lengths around them put group and chunk boundaries everywhere.
    let key: AesKey = securexfer::crypto::random_bytes();
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 13 + i / 251) as u8).collect();
    for len in (0..=1100).step_by(7).chain([4095, 4096, 4097, 8191, 16_384, 19_999]) {
        let data = &data[..len];
        let ciphertext = encrypt_in_chunks(CbcEncryptor::portable(&key), data, &[48], 1);
        for chunks in [&[256][..], &[272], &[4112, 256, 16]] {
            let back = decrypt_in_chunks(CbcDecryptor::new(&key), &ciphertext, chunks);
            assert_eq!(back.as_deref(), Ok(data), "length {len}, chunks {chunks:?}");
        }
    }
}

/// A ciphertext whose plaintext is `last_block` with no padding added, so decryption ends
/// in exactly those bytes.
fn ciphertext_ending_in(key: &AesKey, last_block: [u8; BLOCK]) -> Vec<u8> {
    let mut buf = [[0x41u8; BLOCK], last_block].concat();
    CbcEncryptor::new(key).encrypt_blocks(&mut buf);
    buf
}

#[test]
fn bad_pkcs7_padding_is_a_padding_error() {
    let key = aes_rows()[0].key;
    let mut bad_blocks = vec![[0u8; BLOCK], [17u8; BLOCK], [0xFF; BLOCK]];
    let mut inconsistent = [4u8; BLOCK];
    inconsistent[BLOCK - 3] = 9; // ends ..., 9, 4, 4: four bytes of 4 are claimed
    bad_blocks.push(inconsistent);
    let mut mixed = [16u8; BLOCK];
    mixed[0] = 15;
    bad_blocks.push(mixed);
    for block in bad_blocks {
        let ct = ciphertext_ending_in(&key, block);
        assert_eq!(aes::decrypt_to_vec(&key, &ct), Err(PaddingError), "{block:?}");
        for (label, make) in DECRYPTORS {
            assert_eq!(decrypt_in_chunks(make(&key), &ct, &[16]), Err(PaddingError), "{label}");
        }
    }
}

#[test]
fn well_formed_padding_of_every_length_is_accepted() {
    for pad in 1..=BLOCK {
        let mut block = [b'x'; BLOCK];
        block[BLOCK - pad..].fill(pad as u8);
        assert_eq!(unpadded_len(&block), Ok(BLOCK - pad));
    }
}

#[test]
fn ciphertext_that_is_not_whole_blocks_is_a_padding_error_not_a_panic() {
    let key = [7u8; 16];
    for len in [0, 1, 15, 17, 31] {
        assert_eq!(aes::decrypt_to_vec(&key, &vec![0; len]), Err(PaddingError), "length {len}");
        assert_eq!(unpadded_len(&vec![1; len]), Err(PaddingError), "length {len}");
    }
}

#[test]
fn decrypting_with_the_wrong_key_does_not_give_the_plaintext() {
    let rows = aes_rows();
    let right = rows.iter().find(|r| r.plaintext.len() > 1000).expect("a large row");
    let wrong = rows.iter().map(|r| r.key).find(|k| *k != right.key).expect("a second key");
    let ct = aes::encrypt_to_vec(&right.key, &right.plaintext);
    assert_ne!(aes::decrypt_to_vec(&wrong, &ct).ok(), Some(right.plaintext.clone()));
}

#[test]
#[should_panic(expected = "whole blocks")]
fn encrypting_a_partial_block_mid_stream_is_a_caller_bug() {
    CbcEncryptor::new(&[0; 16]).encrypt_blocks(&mut [0u8; 15]);
}

// ---------------------------------------------------------------------------------------
// The content transform (protocol 3): the same vectors through the seam both pipelines use

/// Seals `data` in place in chunks of `pattern` (rounded up to whole blocks), as the
/// client's pipeline does, and returns what goes on the wire with the digest.
fn seal_in_chunks(scheme: &Scheme, data: &[u8], pattern: &[usize]) -> (Vec<u8>, Digest) {
    let mut sealer = scheme.sealer(true);
    let mut buf = data.to_vec();
    buf.resize(data.len() + scheme.tail_room(), 0);
    let mut at = 0;
    for &size in pattern.iter().cycle() {
        let size = size.div_ceil(BLOCK).max(1) * BLOCK;
        if at + size >= data.len() {
            let sealed = sealer.chunk(&mut buf[at..], data.len() - at, true);
            buf.truncate(at + sealed);
            return (buf, sealer.finish());
        }
        assert_eq!(sealer.chunk(&mut buf[at..at + size], size, false), size);
        at += size;
    }
    unreachable!("the pattern cycles")
}

/// Opens `wire` in place in chunks of `pattern` (rounded to blocks), as the server's
/// upload does, keeping only the plaintext.
fn open_in_chunks(
    scheme: &Scheme,
    wire: &[u8],
    pattern: &[usize],
) -> Result<(Vec<u8>, Digest), ContentError> {
    let mut opener = scheme.opener(true);
    let mut buf = wire.to_vec();
    let (mut at, mut plain_end) = (0, 0);
    for &size in pattern.iter().cycle() {
        let end = (at + size.div_ceil(BLOCK).max(1) * BLOCK).min(buf.len());
        let last = end == buf.len();
        let n = opener.chunk(&mut buf[at..end], last)?;
        buf.copy_within(at..at + n, plain_end);
        plain_end += n;
        at = end;
        if last {
            break;
        }
    }
    buf.truncate(plain_end);
    Ok((buf, opener.finish()))
}

#[test]
fn the_content_transform_seals_every_vector_as_openssl_does_and_opens_it_back() {
    for row in aes_rows() {
        let scheme = Scheme::V3 { key: row.key };
        for pattern in CHUNKINGS {
            let (wire, sent) = seal_in_chunks(&scheme, &row.plaintext, pattern);
            check_ciphertext(&row, &wire, &format!("sealed in {pattern:?}"));
            let want = Digest {
                size: row.plaintext.len() as u64,
                cksum: Cksum::of(&row.plaintext),
                ciphertext_crc32: Some(ZlibCrc32::of(&wire)),
            };
            assert_eq!(sent, want, "{} sealed in {pattern:?}", row.name);
            let (plain, received) = open_in_chunks(&scheme, &wire, pattern).unwrap();
            assert!(plain == row.plaintext, "{} opened in {pattern:?}", row.name);
            assert_eq!(received, want, "{} opened in {pattern:?}", row.name);
        }
    }
}

#[test]
fn the_content_transform_refuses_bad_padding() {
    let key = aes_rows()[0].key;
    let mut inconsistent = [4u8; BLOCK];
    inconsistent[BLOCK - 3] = 9;
    for block in [[0u8; BLOCK], [17u8; BLOCK], [0xFF; BLOCK], inconsistent] {
        let wire = ciphertext_ending_in(&key, block);
        for pattern in [&[16][..], &[32]] {
            let opened = open_in_chunks(&Scheme::V3 { key }, &wire, pattern);
            assert_eq!(opened.err(), Some(ContentError::Padding(PaddingError)), "{block:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// RSA: the vector key

#[test]
fn vector_key_loads_from_pkcs8_and_pkcs1_with_the_expected_spki() {
    let spki = vector_spki();
    assert_eq!(spki.len(), PUBLIC_KEY_LEN, "the vector SPKI fills the field");
    for (label, key) in [("PKCS#8", vector_key_pkcs8()), ("PKCS#1", vector_key_pkcs1())] {
        let public = key.public_key();
        assert_eq!(to_hex(&public.to_der()), to_hex(&spki), "{label}");
        let field = public.to_field().expect("fits the field");
        assert_eq!(&field.0[..], &spki[..], "{label}: 160 bytes, no padding needed");
        assert_eq!(PublicKey::from_field(&field).expect("parses back"), public, "{label}");
        assert_eq!(PublicKey::from_der(&spki).expect("parses"), public, "{label}");
    }
}

#[test]
fn vector_key_loads_from_one_line_and_from_wrapped_base64() {
    let one_line: String = pkcs8_pem_body().split_whitespace().collect();
    let spki = vector_spki();
    for text in [one_line.clone(), format!("  {one_line}\r\n\n"), pkcs8_pem_body() + "\n"] {
        let key = PrivateKey::from_base64(&text).expect("loads");
        assert_eq!(key.public_key().to_der(), spki);
    }
}

#[test]
fn openssl_oaep_sha1_ciphertexts_decrypt_to_their_aes_keys() {
    let keys = [("PKCS#8", vector_key_pkcs8()), ("PKCS#1", vector_key_pkcs1())];
    for row in rows("rsa-oaep-sha1.tsv") {
        assert_eq!(row.len(), 2, "rsa-oaep-sha1.tsv row {row:?}");
        let expected = aes_key(&row[0]);
        let ciphertext = hex(&row[1]);
        assert_eq!(ciphertext.len(), 128);
        for (label, key) in &keys {
            let got = key.decrypt_aes_key(&ciphertext).expect("decrypts");
            assert_eq!(to_hex(&got), to_hex(&expected), "{label}");
        }
    }
}

#[test]
fn our_oaep_encryption_decrypts_with_the_vector_key_and_is_randomised() {
    let key = vector_key_pkcs8();
    let public = PublicKey::from_der(&vector_spki()).expect("parses");
    let aes: AesKey = securexfer::crypto::random_bytes();
    let a = public.encrypt_aes_key(&aes).expect("encrypts");
    let b = public.encrypt_aes_key(&aes).expect("encrypts");
    assert_eq!(a.len(), 128);
    assert_ne!(a, b, "OAEP is randomised");
    assert_eq!(key.decrypt_aes_key(&a).expect("decrypts"), aes);
    assert_eq!(key.decrypt_aes_key(&b).expect("decrypts"), aes);
}

// ---------------------------------------------------------------------------------------
// RSA: generated keys

#[test]
fn generated_keys_have_exponent_17_and_a_160_byte_spki() {
    for key in [generated_key().clone(), PrivateKey::generate()] {
        let der = key.public_key().to_der();
        assert_eq!(der.len(), PUBLIC_KEY_LEN);
        assert_eq!(&der[der.len() - 3..], &[0x02, 0x01, 0x11], "INTEGER 17 ends the SPKI");
        let field = key.public_key().to_field().expect("fits");
        assert_eq!(&field.0[..], &der[..]);
    }
}

#[test]
fn generated_keys_are_distinct() {
    assert_ne!(PrivateKey::generate().public_key(), generated_key().public_key());
}

#[test]
fn generated_key_survives_a_base64_save_and_load() {
    let key = generated_key();
    let text = key.to_base64();
    assert!(!text.contains(char::is_whitespace), "one line");
    let loaded = PrivateKey::from_base64(&text).expect("loads");
    assert_eq!(loaded.public_key(), key.public_key());
    assert_eq!(loaded.to_base64(), text);
    // Wrapped at 72 columns with a blank line after, as one existing client writes it.
    let wrapped: String = text
        .as_bytes()
        .chunks(72)
        .map(|c| format!("{}\n", std::str::from_utf8(c).expect("ascii")))
        .collect::<String>()
        + "\n";
    let reloaded = PrivateKey::from_base64(&wrapped).expect("wrapped loads");
    let aes: AesKey = securexfer::crypto::random_bytes();
    let ct = key.public_key().encrypt_aes_key(&aes).expect("encrypts");
    assert_eq!(reloaded.decrypt_aes_key(&ct).expect("decrypts"), aes);
}

#[test]
fn decrypting_with_the_wrong_private_key_is_an_error() {
    let aes: AesKey = securexfer::crypto::random_bytes();
    let ct = generated_key().public_key().encrypt_aes_key(&aes).expect("encrypts");
    assert!(matches!(vector_key_pkcs8().decrypt_aes_key(&ct), Err(KeyError::Oaep(_))));
}

#[test]
fn damaged_or_misshapen_oaep_ciphertexts_are_errors() {
    let key = vector_key_pkcs8();
    let ciphertext = hex(&rows("rsa-oaep-sha1.tsv")[0][1]);
    let mut flipped = ciphertext.clone();
    flipped[64] ^= 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("127 bytes", ciphertext[1..].to_vec()),
        ("129 bytes", [&ciphertext[..], &[0]].concat()),
        ("one bit flipped", flipped),
        ("all zeros", vec![0; 128]),
        ("above the modulus", vec![0xFF; 128]),
        ("a fixed pattern", (0..128).map(|i| i as u8).collect()),
    ];
    for (label, ct) in cases {
        assert!(key.decrypt_aes_key(&ct).is_err(), "{label}");
    }
}

#[test]
fn oaep_plaintext_that_is_not_16_bytes_is_a_key_length_error() {
    use rsa::pkcs8::DecodePublicKey;
    let public = rsa::PublicKey::from_public_key_der(&vector_spki()).expect("parses");
    let key = vector_key_pkcs8();
    for len in [0, 15, 17, 32] {
        let ct = public.oaep_encrypt::<sha1::Sha1>(&vec![9; len]).expect("encrypts");
        match key.decrypt_aes_key(&ct) {
            Err(KeyError::AesKeyLength(n)) => assert_eq!(n, len),
            other => panic!("{len} bytes gave {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// RSA: garbage keys are errors, not panics

/// A DER element: tag, definite length, content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match content.len() {
        n @ 0..=0x7f => out.push(n as u8),
        n @ 0x80..=0xff => out.extend([0x81, n as u8]),
        n => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(content);
    out
}

/// An RSA SubjectPublicKeyInfo for modulus `n` and exponent `e` (big-endian, unsigned).
fn spki(n: &[u8], e: &[u8]) -> Vec<u8> {
    let int = |v: &[u8]| {
        let mut v = v.to_vec();
        if v.first().is_some_and(|b| b & 0x80 != 0) {
            v.insert(0, 0);
        }
        der(0x02, &v)
    };
    let rsa_key = der(0x30, &[int(n), int(e)].concat());
    let rsa_oid = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
    let algorithm = der(0x30, &rsa_oid);
    let bits = der(0x03, &[&[0u8][..], &rsa_key].concat());
    der(0x30, &[algorithm, bits].concat())
}

fn vector_modulus() -> Vec<u8> {
    // The SPKI ends with INTEGER n (0x02 0x81 0x81 0x00 + 128 bytes) then INTEGER 17.
    let vector = vector_spki();
    let n = vector[vector.len() - 3 - 128..vector.len() - 3].to_vec();
    assert_eq!(spki(&n, &[17]), vector, "the test's DER builder reproduces the vector SPKI");
    n
}

fn field_of(bytes: &[u8]) -> PublicKeyField {
    let mut field = [0u8; PUBLIC_KEY_LEN];
    field[..bytes.len()].copy_from_slice(bytes);
    PublicKeyField(field)
}

#[test]
fn public_key_field_of_zeros_or_noise_is_not_der() {
    assert!(matches!(PublicKey::from_field(&field_of(&[])), Err(KeyError::NotDer)));
    assert!(matches!(PublicKey::from_field(&PublicKeyField([0xFF; 160])), Err(KeyError::NotDer)));
    // A SEQUENCE that claims more bytes than the field has.
    assert!(matches!(PublicKey::from_field(&field_of(&[0x30, 0x81, 0xA0])), Err(KeyError::NotDer)));
}

#[test]
fn public_key_field_with_bytes_after_the_key_is_refused() {
    // Claim one byte less: the last byte of the real key (0x11) becomes "padding".
    let mut field = field_of(&vector_spki());
    field.0[2] -= 1;
    assert!(matches!(PublicKey::from_field(&field), Err(KeyError::BadPadding)));
}

#[test]
fn public_key_with_exponent_3_fills_the_field_and_is_accepted() {
    // The reference Python peer makes e = 3 keys (Python cannot generate e = 17).
    let key = spki(&vector_modulus(), &[3]);
    assert_eq!(key.len(), PUBLIC_KEY_LEN);
    let public = PublicKey::from_field(&field_of(&key)).expect("e = 3 is a valid key");
    assert_eq!(public.to_der(), key);
}

#[test]
fn zero_padding_after_a_shorter_der_reaches_the_key_parser() {
    // No valid 1024-bit RSA SPKI is shorter than 160 bytes (the modulus needs its 0x00
    // byte and 17 is one byte), so build one that is shorter by leaving out the
    // AlgorithmIdentifier's NULL: the field parser must accept its zero padding and hand
    // exactly the DER to the key parser, which then judges the key itself.
    let mut short = spki(&vector_modulus(), &[17]);
    let null_at = short.windows(2).position(|w| w == [0x05, 0x00]).expect("NULL");
    short.drain(null_at..null_at + 2);
    short[1 + 2 + 1] -= 2; // the AlgorithmIdentifier SEQUENCE's length
    short[2] -= 2; // the outer SEQUENCE's length (0x30 0x81 LEN)
    assert_eq!(short.len(), PUBLIC_KEY_LEN - 2);
    let from_field = PublicKey::from_field(&field_of(&short)).map_err(|e| e.to_string());
    let from_der = PublicKey::from_der(&short).map_err(|e| e.to_string());
    assert_eq!(from_field, from_der, "the padding is not what decides");
    assert!(matches!(PublicKey::from_field(&field_of(&short)), Err(KeyError::BadPublicKey(_))));
}

#[test]
fn rsa_key_of_another_size_is_refused() {
    let n = vector_modulus();
    let double = [&n[..], &n[..]].concat(); // a 2048-bit odd number
    let der = spki(&double, &[17]);
    assert!(matches!(PublicKey::from_der(&der), Err(KeyError::WrongSize(2048))));
    let short = &n[..96]; // 768 bits, top bit set, but even: either refusal is fine
    let der = spki(short, &[17]);
    assert!(PublicKey::from_der(&der).is_err());
}

#[test]
fn public_key_with_a_nonsense_exponent_is_refused_or_at_least_does_not_panic() {
    let n = vector_modulus();
    for e in [&[][..], &[0], &[1], &[2], &[0xFF; 8], &[0x80; 3]] {
        let key = spki(&n, e);
        if key.len() <= PUBLIC_KEY_LEN {
            let _ = PublicKey::from_field(&field_of(&key));
        }
        let _ = PublicKey::from_der(&key);
    }
    assert!(PublicKey::from_der(&spki(&n, &[0])).is_err(), "e = 0");
    assert!(PublicKey::from_der(&spki(&n, &[1])).is_err(), "e = 1");
}

#[test]
fn private_key_text_that_is_not_a_key_is_refused() {
    for text in ["", "not base64 at all!", "AAAA", "MIIBCgKCAQEA"] {
        assert!(
            matches!(PrivateKey::from_base64(text), Err(KeyError::BadPrivateKey(_))),
            "{text:?}"
        );
    }
}

#[test]
fn public_key_where_the_private_key_belongs_is_named_as_such() {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(vector_spki());
    assert!(matches!(PrivateKey::from_base64(&text), Err(KeyError::PublicNotPrivate)));
}

#[test]
fn key_errors_explain_themselves() {
    assert!(KeyError::WrongSize(2048).to_string().contains("2048"));
    assert!(KeyError::AesKeyLength(15).to_string().contains("15"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3_000))]

    #[test]
    fn damaged_public_key_fields_are_errors_or_keys_never_panics(
        flips in prop::collection::vec((0..PUBLIC_KEY_LEN, 1..=255u8), 1..4),
    ) {
        let mut field = field_of(&vector_spki());
        for (i, mask) in flips {
            field.0[i] ^= mask;
        }
        if let Ok(key) = PublicKey::from_field(&field) {
            // Whatever parses must be a 1024-bit key that fits the field.
            prop_assert!(key.to_field().is_ok());
        }
    }

    #[test]
    fn random_public_key_fields_never_panic(
        body in prop::collection::vec(any::<u8>(), PUBLIC_KEY_LEN - 3),
        header in prop::sample::select(vec![
            [0x30u8, 0x81, 0x9d],
            [0x30, 0x81, 0x9c],
            [0x30, 0x50, 0x02],
        ]),
    ) {
        let field = field_of(&[&header[..], &body].concat());
        let _ = PublicKey::from_field(&field);
        let _ = PublicKey::from_der(&field.0);
    }

    #[test]
    fn random_ciphertexts_are_errors_never_panics(
        ciphertext in prop::collection::vec(any::<u8>(), 0..260),
    ) {
        // A random 128-byte string is a valid OAEP encoding with negligible probability.
        let key = vector_key_pkcs1();
        prop_assert!(key.decrypt_aes_key(&ciphertext).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn damaged_private_keys_are_errors_or_keys_never_panics(
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 1..4),
        which in any::<bool>(),
    ) {
        use base64::Engine;
        let text = if which { pkcs8_pem_body() } else { read_vector("rsa1024-e17.pkcs8.der.b64") };
        let mut der = securexfer::crypto::rsa::decode_base64(&text).expect("base64");
        for (i, mask) in flips {
            let i = i.index(der.len());
            der[i] ^= mask;
        }
        let _ = PrivateKey::from_der(&der);
        let _ = PrivateKey::from_base64(&base64::engine::general_purpose::STANDARD.encode(&der));
    }
}
