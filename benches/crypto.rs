//! Crypto throughput against same-run baselines: `cargo bench --bench crypto`.
//!
//! On one buffer of random data (256 MiB; `BENCH_MIB` changes it), each repetition
//! (`BENCH_REPS`, default 5) times, in turn:
//!
//! - our AES-128-CBC encrypt in the client's chunks and decrypt in the server's chunks,
//!   on the AES-NI path that `new()` picks and on the `portable()` path;
//! - `openssl enc -aes-128-cbc` and `openssl enc -d` on the same data in a temporary file,
//!   timed as whole processes (start-up and the file read included, nothing subtracted);
//! - our `Cksum` against GNU `cksum FILE` (also a whole process);
//! - for reference only, `openssl speed -evp aes-128-cbc` in both directions: OpenSSL's own
//!   loop on the same chunk sizes, without process start-up or file I/O;
//! - protocol 4's choices: the content hash, BLAKE3 (the `blake3` crate) against SHA-256
//!   (ring's, checked against GNU `sha256sum`), each fed in 1 MiB pieces as an upload feeds
//!   it, and TLS's record cipher, ring's AES-256-GCM on 16 KiB records, beside protocol 3's
//!   serial CBC.
//!
//! Medians are printed in MB/s (10^6 bytes per second of plaintext) with three targets:
//! encrypt / openssl encrypt >= 0.9, decrypt / our encrypt >= 3, cksum / GNU cksum >= 1,
//! and BLAKE3 / SHA-256 >= 2 (the design keeps BLAKE3 only if it is clearly faster).
//! Correctness is checked once before timing: our ciphertext equals OpenSSL's, decrypts
//! back on both paths, and our cksum equals GNU's.

use securexfer::crypto::aes::{AesKey, padded_len};
use securexfer::crypto::{CbcDecryptor, CbcEncryptor, Cksum};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Plaintext chunk the client encrypts at a time.
const ENCRYPT_CHUNK: usize = securexfer::client::upload::CHUNK;
/// Ciphertext chunk the server decrypts at a time (in an upload this large).
const DECRYPT_CHUNK: usize = securexfer::server::upload::LARGE_CHUNK;
const ZERO_IV_HEX: &str = "00000000000000000000000000000000";

/// The targets, as minimum ratios.
const TARGET_ENCRYPT_VS_OPENSSL: f64 = 0.9;
const TARGET_DECRYPT_VS_ENCRYPT: f64 = 3.0;
const TARGET_CKSUM_VS_GNU: f64 = 1.0;
const TARGET_BLAKE3_VS_SHA256: f64 = 2.0;
/// The pieces a protocol-4 upload hashes at a time (its largest `DATA` frame).
const HASH_PIECE: usize = 1 << 20;
/// The plaintext of a full TLS record.
const TLS_RECORD: usize = 16 << 10;

/// The data and its files, shared by every measurement.
struct Fixture {
    key: AesKey,
    plain: Vec<u8>,
    cipher: Vec<u8>,
    plain_path: PathBuf,
    cipher_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// One repetition's times, in the order they are printed.
#[derive(Default, Clone)]
struct Times {
    enc: Vec<Duration>,
    dec: Vec<Duration>,
    enc_portable: Vec<Duration>,
    dec_portable: Vec<Duration>,
    openssl_enc: Vec<Duration>,
    openssl_dec: Vec<Duration>,
    cksum: Vec<Duration>,
    gnu_cksum: Vec<Duration>,
    /// `openssl speed` in process, MB/s: (encrypt, decrypt). A reference, not a target.
    openssl_speed: Vec<(f64, f64)>,
    blake3: Vec<Duration>,
    sha256: Vec<Duration>,
    gcm: Vec<Duration>,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo bench -- --list` and `cargo test --benches` probe harness-less targets.
        return;
    }
    let mib = env_usize("BENCH_MIB", 256);
    let reps = env_usize("BENCH_REPS", 5).max(1);
    let fixture = Fixture::new(mib << 20);
    fixture.check();
    println!(
        "crypto bench: {mib} MiB of random data, {reps} repetitions, medians \
         (encrypt chunk {} KiB, decrypt chunk {} KiB, load {})",
        ENCRYPT_CHUNK >> 10,
        DECRYPT_CHUNK >> 10,
        load_average()
    );
    let mut work = vec![0u8; fixture.cipher.len()];
    let mut times = Times::default();
    for _ in 0..reps {
        fixture.measure_once(&mut work, &mut times);
    }
    report(fixture.plain.len(), &times);
}

impl Fixture {
    fn new(len: usize) -> Self {
        let mut plain = vec![0u8; len];
        getrandom::fill(&mut plain).expect("OS randomness");
        let key: AesKey = securexfer::crypto::random_bytes();
        let mut cipher = vec![0u8; padded_len(len)];
        cipher[..len].copy_from_slice(&plain);
        encrypt(CbcEncryptor::new(&key), &mut cipher, len);
        let dir = tempfile::tempdir().expect("temporary directory");
        let plain_path = dir.path().join("plain.bin");
        let cipher_path = dir.path().join("cipher.bin");
        std::fs::write(&plain_path, &plain).expect("write plaintext file");
        std::fs::write(&cipher_path, &cipher).expect("write ciphertext file");
        Fixture { key, plain, cipher, plain_path, cipher_path, _dir: dir }
    }

    /// Before any timing: every path computes the same bytes as the reference tools.
    fn check(&self) {
        let openssl_out = self._dir.path().join("openssl.bin");
        openssl(false, &self.key, &self.plain_path, &openssl_out);
        let theirs = std::fs::read(&openssl_out).expect("read openssl output");
        assert!(theirs == self.cipher, "our ciphertext differs from openssl enc's");
        std::fs::remove_file(&openssl_out).expect("remove openssl output");
        let len = self.plain.len();
        let mut work = self.plain.clone();
        work.resize(self.cipher.len(), 0);
        encrypt(CbcEncryptor::portable(&self.key), &mut work, len);
        assert!(work == self.cipher, "the portable encryptor differs from the AES-NI one");
        for dec in [CbcDecryptor::new(&self.key), CbcDecryptor::portable(&self.key)] {
            work.copy_from_slice(&self.cipher);
            decrypt(dec, &mut work);
            assert!(work[..len] == self.plain[..], "decryption does not give the plaintext back");
        }
        assert_eq!(
            Cksum::of(&self.plain),
            gnu_cksum(&self.plain_path),
            "cksum differs from GNU cksum"
        );
        assert_eq!(hex(&sha256(&self.plain)), gnu_sha256sum(&self.plain_path), "SHA-256 differs");
        // BLAKE3 fed in pieces is BLAKE3 of the whole (the published empty-input vector
        // is checked by the blake3 crate's own tests).
        assert_eq!(&blake3_pieces(&self.plain), blake3::hash(&self.plain).as_bytes());
    }

    /// One of each measurement, interleaved so that all see the same machine load.
    fn measure_once(&self, work: &mut [u8], t: &mut Times) {
        let len = self.plain.len();
        let key = &self.key;
        work[..len].copy_from_slice(&self.plain);
        t.enc.push(timed(|| encrypt(CbcEncryptor::new(key), work, len)));
        work[..len].copy_from_slice(&self.plain);
        t.enc_portable.push(timed(|| encrypt(CbcEncryptor::portable(key), work, len)));
        work.copy_from_slice(&self.cipher);
        t.dec.push(timed(|| decrypt(CbcDecryptor::new(key), work)));
        work.copy_from_slice(&self.cipher);
        t.dec_portable.push(timed(|| decrypt(CbcDecryptor::portable(key), work)));
        let null = Path::new("/dev/null");
        t.openssl_enc.push(timed(|| openssl(false, key, &self.plain_path, null)));
        t.openssl_dec.push(timed(|| openssl(true, key, &self.cipher_path, null)));
        t.cksum.push(timed(|| {
            black_box(Cksum::of(black_box(&self.plain)));
        }));
        t.gnu_cksum.push(timed(|| {
            gnu_cksum(&self.plain_path);
        }));
        t.openssl_speed
            .push((openssl_speed(false, ENCRYPT_CHUNK), openssl_speed(true, DECRYPT_CHUNK)));
        t.blake3.push(timed(|| {
            black_box(blake3_pieces(black_box(&self.plain)));
        }));
        t.sha256.push(timed(|| {
            black_box(sha256(black_box(&self.plain)));
        }));
        work[..len].copy_from_slice(&self.plain);
        t.gcm.push(timed(|| gcm_seal(&work[..len])));
    }
}

/// Encrypts the `len` plaintext bytes at the start of `buf` in place, chunk by chunk as the
/// client does; `buf` has room for the padding.
fn encrypt(mut enc: CbcEncryptor, buf: &mut [u8], len: usize) {
    let mut done = 0;
    while len - done > ENCRYPT_CHUNK {
        enc.encrypt_blocks(&mut buf[done..done + ENCRYPT_CHUNK]);
        done += ENCRYPT_CHUNK;
    }
    enc.encrypt_last(&mut buf[done..], len - done);
    black_box(buf);
}

/// Decrypts `buf` in place, chunk by chunk as the server does.
fn decrypt(mut dec: CbcDecryptor, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(DECRYPT_CHUNK) {
        dec.decrypt_blocks(chunk);
    }
    black_box(buf);
}

/// BLAKE3 of `data`, fed in [`HASH_PIECE`]s as a protocol-4 upload feeds its hasher.
fn blake3_pieces(data: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    for piece in data.chunks(HASH_PIECE) {
        hasher.update(piece);
    }
    hasher.finalize().into()
}

/// SHA-256 of `data` with ring, fed in the same pieces.
fn sha256(data: &[u8]) -> Vec<u8> {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for piece in data.chunks(HASH_PIECE) {
        context.update(piece);
    }
    context.finish().as_ref().to_vec()
}

/// Seals `data` as TLS 1.3 does with AES-256-GCM: 16 KiB records, a nonce per record.
fn gcm_seal(data: &[u8]) {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7; 32]).expect("key"));
    let mut record = vec![0u8; TLS_RECORD];
    for (n, piece) in data.chunks(TLS_RECORD).enumerate() {
        record.truncate(piece.len());
        record.copy_from_slice(piece);
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&(n as u64).to_be_bytes());
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut record,
            )
            .expect("seal");
        let _ = black_box(tag);
    }
}

fn gnu_sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("run sha256sum");
    assert!(out.status.success(), "sha256sum failed");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_owned()
}

fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn openssl(decrypt: bool, key: &AesKey, input: &Path, output: &Path) {
    let mut cmd = Command::new("openssl");
    cmd.arg("enc").arg("-aes-128-cbc");
    if decrypt {
        cmd.arg("-d");
    }
    cmd.args(["-K", &hex(key), "-iv", ZERO_IV_HEX, "-in"]).arg(input).arg("-out").arg(output);
    let status =
        cmd.stdin(Stdio::null()).status().expect("cannot run openssl (apt-get install openssl)");
    assert!(status.success(), "openssl enc failed: {status}");
}

/// `openssl speed` on blocks of `bytes` for one second, in MB/s: OpenSSL's own loop with no
/// process start or file I/O, for reference.
fn openssl_speed(decrypt: bool, bytes: usize) -> f64 {
    let mut cmd = Command::new("openssl");
    cmd.args(["speed", "-seconds", "1", "-bytes", &bytes.to_string()]);
    if decrypt {
        cmd.arg("-decrypt");
    }
    let out = cmd
        .args(["-evp", "aes-128-cbc"])
        .stderr(Stdio::null())
        .output()
        .expect("cannot run openssl speed");
    let text = String::from_utf8_lossy(&out.stdout);
    // The last line is "AES-128-CBC  1163063.38k": thousands of bytes per second.
    text.lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|f| f.trim_end_matches('k').parse::<f64>().ok())
        .map(|k| k / 1e3)
        .unwrap_or_else(|| panic!("unexpected openssl speed output {text:?}"))
}

/// GNU `cksum FILE`'s first field.
fn gnu_cksum(path: &Path) -> u32 {
    let out = Command::new("cksum")
        .arg(path)
        .output()
        .expect("cannot run cksum (apt-get install coreutils)");
    assert!(out.status.success(), "cksum failed");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("unexpected cksum output {text:?}"))
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    let n = sorted.len();
    if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2 }
}

fn report(bytes: usize, t: &Times) {
    let rate = |times: &[Duration]| bytes as f64 / median(times).as_secs_f64() / 1e6;
    let rows: [(&str, &[Duration]); 8] = [
        ("our encrypt (AES-NI path)", &t.enc),
        ("our decrypt (AES-NI/VAES path)", &t.dec),
        ("our encrypt (portable, cbc crate)", &t.enc_portable),
        ("our decrypt (portable, cbc crate)", &t.dec_portable),
        ("openssl enc (whole process)", &t.openssl_enc),
        ("openssl enc -d (whole process)", &t.openssl_dec),
        ("our cksum", &t.cksum),
        ("GNU cksum (whole process)", &t.gnu_cksum),
    ];
    for (name, times) in rows {
        let all: Vec<String> =
            times.iter().map(|d| format!("{:.0}", bytes as f64 / d.as_secs_f64() / 1e6)).collect();
        println!("{name:<36} {:>8.0} MB/s   (runs: {})", rate(times), all.join(" "));
    }
    let speed = |pick: fn(&(f64, f64)) -> f64| {
        let mut v: Vec<f64> = t.openssl_speed.iter().map(pick).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (speed_enc, speed_dec) = (speed(|s| s.0), speed(|s| s.1));
    println!(
        "{:<36} {speed_enc:>8.0} MB/s   (reference: OpenSSL's loop, no process or file)",
        "openssl speed encrypt (in process)"
    );
    println!("{:<36} {speed_dec:>8.0} MB/s   (reference)", "openssl speed decrypt (in process)");
    let rows: [(&str, &[Duration]); 3] = [
        ("BLAKE3 (1 MiB pieces)", &t.blake3),
        ("SHA-256, ring (1 MiB pieces)", &t.sha256),
        ("AES-256-GCM seal, ring (16 KiB)", &t.gcm),
    ];
    for (name, times) in rows {
        let all: Vec<String> =
            times.iter().map(|d| format!("{:.0}", bytes as f64 / d.as_secs_f64() / 1e6)).collect();
        println!("{name:<36} {:>8.0} MB/s   (runs: {})", rate(times), all.join(" "));
    }
    let checks = [
        ("encrypt / openssl enc", rate(&t.enc) / rate(&t.openssl_enc), TARGET_ENCRYPT_VS_OPENSSL),
        ("BLAKE3 / SHA-256", rate(&t.blake3) / rate(&t.sha256), TARGET_BLAKE3_VS_SHA256),
        ("decrypt / our encrypt", rate(&t.dec) / rate(&t.enc), TARGET_DECRYPT_VS_ENCRYPT),
        ("cksum / GNU cksum", rate(&t.cksum) / rate(&t.gnu_cksum), TARGET_CKSUM_VS_GNU),
    ];
    for (name, ratio, target) in checks {
        let verdict = if ratio >= target { "PASS" } else { "MISS" };
        println!("ratio {name:<28} {ratio:>6.2}   target >= {target:<4} {verdict}");
    }
    println!(
        "reference: encrypt / openssl speed {:.2}, decrypt / openssl speed {:.2}, \
         AES-256-GCM / our CBC encrypt {:.2}",
        rate(&t.enc) / speed_enc,
        rate(&t.dec) / speed_dec,
        rate(&t.gcm) / rate(&t.enc)
    );
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
