//! Frozen format vectors: a code change that alters the on-bucket format, or stops this
//! build from reading volumes written by an earlier one, fails here.
//!
//! The fixtures in tests/vectors/ were produced once by the ignored test
//! `generate_vectors` (run it with CRYPTBUCKET_WRITE_VECTORS=1 only for a new format
//! version, never to "fix" a failing test).

use std::path::PathBuf;

use cryptbucket::crypto::{
    chunk_stored_len, open_header, peek_header, Argon2Params, ChunkId, Cipher, CryptoError,
    KeySource, RecordKind, VolumeKeys, VolumeParams,
};
use zeroize::Zeroizing;

const PASSPHRASE: &str = "correct horse battery staple";
/// Volume ids of the checked-in headers.
const PASSPHRASE_VOLUME_ID: &str = "a5e055a8987fc4b909518340fb4057e3";
const KEYFILE_VOLUME_ID: &str = "de771faf7005a1b763faea329df433a4";
const SNAPSHOT_PLAINTEXT: &[u8] = b"cryptbucket format vector: snapshot record, format version 1\n";
const STAGING_PLAINTEXT: &[u8] = b"cryptbucket format vector: staging record, format version 1\n";

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(vectors().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn chunk_params(cipher: Cipher) -> VolumeParams {
    VolumeParams {
        cipher,
        chunk_size: 64 * 1024,
        block_size: 4096,
        padding: 0,
    }
}

fn chunk_keys(cipher: Cipher) -> VolumeKeys {
    let master: [u8; 32] = std::array::from_fn(|i| i as u8);
    let volume_id: [u8; 16] = std::array::from_fn(|i| 0xa0 + i as u8);
    VolumeKeys::from_parts_for_tests(master, volume_id, chunk_params(cipher))
}

fn vector_chunk_id() -> ChunkId {
    ChunkId(std::array::from_fn(|i| 0xc0 + i as u8))
}

/// 5000 bytes: one full 4096-byte block and a 904-byte last block.
fn chunk_plaintext() -> Vec<u8> {
    (0..5000u32).map(|i| (i % 251) as u8).collect()
}

fn passphrase() -> KeySource {
    KeySource::Passphrase(Zeroizing::new(PASSPHRASE.to_string()))
}

fn keyfile() -> KeySource {
    KeySource::Keyfile(Zeroizing::new(read("keyfile.bin")))
}

#[test]
fn chunk_vectors_both_ciphers() {
    for cipher in [Cipher::Aes256Gcm, Cipher::XChaCha20Poly1305] {
        let keys = chunk_keys(cipher);
        let id = vector_chunk_id();
        let pt = chunk_plaintext();
        let sealed = keys.seal_chunk(&id, &pt).unwrap();
        let want = read(&format!("chunk-{cipher}.hex"));
        let want = hex::decode(String::from_utf8(want).unwrap().trim()).unwrap();
        assert_eq!(
            hex::encode(&sealed.bytes),
            hex::encode(&want),
            "{cipher} chunk bytes changed"
        );
        assert_eq!(
            sealed.bytes.len() as u64,
            chunk_stored_len(keys.params(), 5000)
        );
        assert_eq!(&sealed.digest[..], &want[want.len() - 16..]);
        assert_eq!(
            keys.open_chunk(&id, 5000, &sealed.digest, &want).unwrap(),
            pt
        );
    }
}

#[test]
fn passphrase_header_opens() {
    let bytes = read("header-passphrase.json");
    let info = peek_header(&bytes).unwrap();
    assert_eq!(info.format_version, 1);
    assert_eq!(hex::encode(info.volume_id), PASSPHRASE_VOLUME_ID);
    assert_eq!(info.slot_kinds, ["passphrase"]);
    assert_eq!(info.params, VolumeParams::default());
    let keys = open_header(&bytes, &passphrase()).unwrap();
    assert_eq!(hex::encode(keys.volume_id()), PASSPHRASE_VOLUME_ID);
    let snap = keys
        .open_record(RecordKind::Snapshot, &read("record-snapshot.bin"))
        .unwrap();
    assert_eq!(snap, SNAPSHOT_PLAINTEXT);
    let staging = keys
        .open_record(RecordKind::Staging, &read("record-staging.bin"))
        .unwrap();
    assert_eq!(staging, STAGING_PLAINTEXT);
    // Kinds are not interchangeable, even for frozen records.
    assert!(matches!(
        keys.open_record(RecordKind::Journal, &read("record-snapshot.bin")),
        Err(CryptoError::Tampered(_))
    ));
    let wrong = KeySource::Passphrase(Zeroizing::new("Tr0ub4dor&3".to_string()));
    assert!(matches!(
        open_header(&bytes, &wrong),
        Err(CryptoError::WrongKey)
    ));
}

#[test]
fn keyfile_header_opens() {
    let bytes = read("header-keyfile.json");
    let info = peek_header(&bytes).unwrap();
    assert_eq!(hex::encode(info.volume_id), KEYFILE_VOLUME_ID);
    assert_eq!(info.slot_kinds, ["keyfile"]);
    assert_eq!(info.params.cipher, Cipher::XChaCha20Poly1305);
    let keys = open_header(&bytes, &keyfile()).unwrap();
    assert_eq!(hex::encode(keys.volume_id()), KEYFILE_VOLUME_ID);
    assert!(matches!(
        open_header(&bytes, &passphrase()),
        Err(CryptoError::WrongKey)
    ));
    // The snapshot record of the other volume does not open here.
    assert!(matches!(
        keys.open_record(RecordKind::Snapshot, &read("record-snapshot.bin")),
        Err(CryptoError::Tampered(_))
    ));
}

/// Writes the fixtures. Run once per format version:
/// `CRYPTBUCKET_WRITE_VECTORS=1 cargo test --test format_vectors -- --ignored`
/// then paste the printed volume ids into the constants above.
#[test]
#[ignore]
fn generate_vectors() {
    if std::env::var("CRYPTBUCKET_WRITE_VECTORS").as_deref() != Ok("1") {
        eprintln!("set CRYPTBUCKET_WRITE_VECTORS=1 to overwrite tests/vectors");
        return;
    }
    let dir = vectors();
    std::fs::create_dir_all(&dir).unwrap();
    for cipher in [Cipher::Aes256Gcm, Cipher::XChaCha20Poly1305] {
        let sealed = chunk_keys(cipher)
            .seal_chunk(&vector_chunk_id(), &chunk_plaintext())
            .unwrap();
        std::fs::write(
            dir.join(format!("chunk-{cipher}.hex")),
            hex::encode(&sealed.bytes) + "\n",
        )
        .unwrap();
    }
    let kdf = Argon2Params::MINIMUM;
    let (h, keys) =
        cryptbucket::crypto::create_header(VolumeParams::default(), &passphrase(), kdf).unwrap();
    std::fs::write(dir.join("header-passphrase.json"), &h).unwrap();
    let snap = keys
        .seal_record(RecordKind::Snapshot, SNAPSHOT_PLAINTEXT)
        .unwrap();
    std::fs::write(dir.join("record-snapshot.bin"), snap).unwrap();
    let staging = keys
        .seal_record(RecordKind::Staging, STAGING_PLAINTEXT)
        .unwrap();
    std::fs::write(dir.join("record-staging.bin"), staging).unwrap();
    println!("PASSPHRASE_VOLUME_ID = {}", hex::encode(keys.volume_id()));

    let kf = cryptbucket::crypto::generate_keyfile_bytes();
    std::fs::write(dir.join("keyfile.bin"), &*kf).unwrap();
    let params = VolumeParams {
        cipher: Cipher::XChaCha20Poly1305,
        ..VolumeParams::default()
    };
    let (h, keys) =
        cryptbucket::crypto::create_header(params, &KeySource::Keyfile(kf), kdf).unwrap();
    std::fs::write(dir.join("header-keyfile.json"), &h).unwrap();
    println!("KEYFILE_VOLUME_ID = {}", hex::encode(keys.volume_id()));
}
