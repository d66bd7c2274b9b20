//! Unit tests of the volume header: round trips, wrong keys, tampering, bounds.

use super::*;
use crate::crypto::{Cipher, RecordKind};

fn pass(s: &str) -> KeySource {
    KeySource::Passphrase(Zeroizing::new(s.to_string()))
}

fn keyfile(b: u8) -> KeySource {
    KeySource::Keyfile(Zeroizing::new(vec![b; 32]))
}

const FAST: Argon2Params = Argon2Params::MINIMUM;

/// Rewrite the header JSON: `f` edits (outer, body) as JSON values; the MAC is kept.
fn edit(bytes: &[u8], f: impl FnOnce(&mut Value, &mut Value)) -> Vec<u8> {
    let mut outer: Value = serde_json::from_slice(bytes).unwrap();
    let mut body: Value = serde_json::from_str(outer["body"].as_str().unwrap()).unwrap();
    f(&mut outer, &mut body);
    outer["body"] = Value::String(serde_json::to_string(&body).unwrap());
    serde_json::to_vec(&outer).unwrap()
}

fn err<T: std::fmt::Debug>(r: Result<T, CryptoError>) -> CryptoError {
    r.unwrap_err()
}

#[test]
fn create_open_round_trip() {
    for cipher in [Cipher::Aes256Gcm, Cipher::XChaCha20Poly1305] {
        let params = VolumeParams {
            cipher,
            ..VolumeParams::default()
        };
        for src in [pass("correct horse"), keyfile(7)] {
            let (bytes, keys) = create_header(params.clone(), &src, FAST).unwrap();
            let opened = open_header(&bytes, &src).unwrap();
            assert_eq!(opened.volume_id(), keys.volume_id());
            assert_eq!(opened.params(), &params);
            let rec = keys.seal_record(RecordKind::Head, b"hello").unwrap();
            assert_eq!(
                opened.open_record(RecordKind::Head, &rec).unwrap(),
                b"hello"
            );
            let info = peek_header(&bytes).unwrap();
            assert_eq!(info.format_version, 1);
            assert_eq!(info.volume_id, keys.volume_id());
            assert_eq!(info.params, params);
            assert_eq!(info.slot_kinds, vec![src.kind().to_string()]);
            assert!(info.created_unix > 1_600_000_000);
            // Whitespace around the outer object does not matter; the body bytes do.
            let compact =
                serde_json::to_vec(&serde_json::from_slice::<Value>(&bytes).unwrap()).unwrap();
            assert_ne!(compact, bytes);
            open_header(&compact, &src).unwrap();
        }
    }
}

#[test]
fn wrong_key() {
    let (bytes, _) = create_header(VolumeParams::default(), &pass("right"), FAST).unwrap();
    assert!(matches!(
        err(open_header(&bytes, &pass("wrong"))),
        CryptoError::WrongKey
    ));
    assert!(matches!(
        err(open_header(&bytes, &keyfile(1))),
        CryptoError::WrongKey
    ));
    let (bytes, _) = create_header(VolumeParams::default(), &keyfile(1), FAST).unwrap();
    assert!(matches!(
        err(open_header(&bytes, &keyfile(2))),
        CryptoError::WrongKey
    ));
    assert!(matches!(
        err(open_header(&bytes, &pass("x"))),
        CryptoError::WrongKey
    ));
    let msg = CryptoError::WrongKey.to_string();
    assert_eq!(msg, "wrong passphrase or keyfile: no key slot accepts it");
}

#[test]
fn tampered_fields() {
    let src = pass("pw");
    let (bytes, _) = create_header(VolumeParams::default(), &src, FAST).unwrap();
    let tampered = |b: Vec<u8>| {
        let e = err(open_header(&b, &src));
        assert!(
            matches!(&e, CryptoError::Tampered(m) if m == "volume header"),
            "{e:?}"
        );
    };
    tampered(edit(&bytes, |_, b| {
        b["params"]["chunk_size"] = (8 * 1024 * 1024).into()
    }));
    tampered(edit(&bytes, |_, b| b["params"]["padding"] = 0.into()));
    tampered(edit(&bytes, |_, b| {
        b["params"]["cipher"] = "xchacha20poly1305".into()
    }));
    tampered(edit(&bytes, |_, b| b["created_unix"] = 1.into()));
    tampered(edit(&bytes, |_, b| {
        b["ext"] = serde_json::json!({"sse": "none"})
    }));
    tampered(edit(&bytes, |o, _| {
        let mut m = hex_array::<32>(o["mac"].as_str().unwrap(), "m").unwrap();
        m[0] ^= 1;
        o["mac"] = hex::encode(m).into();
    }));
    // Reordering keys in the body changes its bytes: also Tampered (the MAC covers bytes).
    tampered(edit(&bytes, |_, b| {
        let p = b["params"].take();
        b.as_object_mut().unwrap().remove("params");
        b["params"] = p;
    }));
    // A second slot added by someone without the key.
    let other = create_header(VolumeParams::default(), &pass("attacker"), FAST)
        .unwrap()
        .0;
    let other_slot = serde_json::from_str::<Value>(
        serde_json::from_slice::<Value>(&other).unwrap()["body"]
            .as_str()
            .unwrap(),
    )
    .unwrap()["slots"][0]
        .clone();
    let grafted = edit(&bytes, |_, b| {
        b["slots"].as_array_mut().unwrap().push(other_slot)
    });
    tampered(grafted.clone());
    // The attacker's passphrase does not even unwrap it (slot AAD binds the volume id).
    assert!(matches!(
        err(open_header(&grafted, &pass("attacker"))),
        CryptoError::WrongKey
    ));
    // Changing the volume id breaks every slot (AAD and commitment).
    let e = err(open_header(
        &edit(&bytes, |_, b| b["volume_id"] = "00".repeat(16).into()),
        &src,
    ));
    assert!(matches!(e, CryptoError::WrongKey));
    // A changed commitment makes the slot refuse.
    let e = err(open_header(
        &edit(&bytes, |_, b| {
            b["slots"][0]["commitment"] = "00".repeat(32).into()
        }),
        &src,
    ));
    assert!(matches!(e, CryptoError::WrongKey));
}

#[test]
fn bounds_checked_before_use() {
    let src = pass("pw");
    let (bytes, _) = create_header(VolumeParams::default(), &src, FAST).unwrap();
    let kdf = |b: Vec<u8>| {
        assert!(matches!(err(peek_header(&b)), CryptoError::KdfParams(_)));
        assert!(matches!(
            err(open_header(&b, &src)),
            CryptoError::KdfParams(_)
        ));
    };
    kdf(edit(&bytes, |_, b| {
        b["slots"][0]["kdf"]["m_kib"] = (100u64 << 20).into()
    }));
    kdf(edit(&bytes, |_, b| {
        b["slots"][0]["kdf"]["m_kib"] = 8.into()
    }));
    kdf(edit(&bytes, |_, b| b["slots"][0]["kdf"]["t"] = 0.into()));
    kdf(edit(&bytes, |_, b| b["slots"][0]["kdf"]["p"] = 1000.into()));
    let format = |b: Vec<u8>| {
        let e = err(peek_header(&b));
        assert!(matches!(e, CryptoError::Format(_)), "{e:?}");
        assert!(matches!(err(open_header(&b, &src)), CryptoError::Format(_)));
    };
    format(edit(&bytes, |_, b| b["params"]["block_size"] = 3000.into()));
    format(edit(&bytes, |_, b| {
        b["params"]["chunk_size"] = (1u64 << 30).into()
    }));
    format(edit(&bytes, |_, b| {
        b["params"]["padding"] = (8u64 << 20).into()
    }));
    format(edit(&bytes, |_, b| b["params"]["cipher"] = "des".into()));
    format(edit(&bytes, |_, b| b["params"]["extra"] = 1.into()));
    format(edit(&bytes, |_, b| b["volume_id"] = "abcd".into()));
    format(edit(&bytes, |_, b| b["slots"] = serde_json::json!([])));
    format(edit(&bytes, |_, b| {
        let s = b["slots"][0].clone();
        b["slots"] = Value::Array(vec![s; 33]);
    }));
    format(edit(&bytes, |_, b| b["slots"][0]["salt"] = "00".into()));
    format(edit(&bytes, |_, b| b["slots"][0]["kind"] = "kms".into()));
    format(edit(&bytes, |_, b| b["format_version"] = 2.into()));
    format(edit(&bytes, |o, _| o["format_version"] = 2.into()));
    format(edit(&bytes, |o, _| o["mac"] = "00".into()));
    format(edit(&bytes, |o, _| o["extra"] = 1.into()));
    format(b"not json".to_vec());
    format(b"[]".to_vec());
    format(vec![b' '; MAX_HEADER_LEN + 1]);
    // Bad parameters at creation are the caller's fault.
    let bad = VolumeParams {
        block_size: 3000,
        ..VolumeParams::default()
    };
    assert!(matches!(
        err(create_header(bad, &src, FAST)),
        CryptoError::InvalidArgument(_)
    ));
    let weak = Argon2Params { t: 0, ..FAST };
    assert!(matches!(
        err(create_header(VolumeParams::default(), &src, weak)),
        CryptoError::KdfParams(_)
    ));
}

#[test]
fn slot_management() {
    let (bytes, keys) = create_header(VolumeParams::default(), &pass("one"), FAST).unwrap();
    let bytes = add_key_slot(&bytes, &keys, &keyfile(9), FAST).unwrap();
    let bytes = add_key_slot(&bytes, &keys, &pass("two"), FAST).unwrap();
    assert_eq!(
        peek_header(&bytes).unwrap().slot_kinds,
        ["passphrase", "keyfile", "passphrase"]
    );
    for src in [pass("one"), keyfile(9), pass("two")] {
        assert_eq!(
            open_header(&bytes, &src).unwrap().volume_id(),
            keys.volume_id()
        );
    }
    let h = Header::parse(&bytes).unwrap();
    assert_eq!(h.unlock_slot(&pass("two")).unwrap().0, 2);
    // passwd: replace slot 0.
    let bytes = h.with_replaced_slot(&keys, 0, &pass("uno"), FAST).unwrap();
    assert!(matches!(
        err(open_header(&bytes, &pass("one"))),
        CryptoError::WrongKey
    ));
    open_header(&bytes, &pass("uno")).unwrap();
    let bytes = remove_key_slot(&bytes, &keys, 1).unwrap();
    assert!(matches!(
        err(open_header(&bytes, &keyfile(9))),
        CryptoError::WrongKey
    ));
    let bytes = remove_key_slot(&bytes, &keys, 0).unwrap();
    assert!(matches!(
        err(remove_key_slot(&bytes, &keys, 0)),
        CryptoError::InvalidArgument(_)
    ));
    assert!(matches!(
        err(remove_key_slot(&bytes, &keys, 5)),
        CryptoError::InvalidArgument(_)
    ));
    open_header(&bytes, &pass("two")).unwrap();
    // Another volume's keys cannot edit this header.
    let (_, other) = create_header(VolumeParams::default(), &pass("x"), FAST).unwrap();
    assert!(matches!(
        err(add_key_slot(&bytes, &other, &pass("y"), FAST)),
        CryptoError::Tampered(_)
    ));
}

#[test]
fn ext_fields_are_authenticated() {
    let mut ext = Map::new();
    ext.insert("sse".into(), "sse-s3".into());
    let src = keyfile(3);
    let (bytes, keys) =
        create_header_with_ext(VolumeParams::default(), &src, FAST, ext.clone()).unwrap();
    let h = Header::parse(&bytes).unwrap();
    h.unlock(&src).unwrap();
    assert_eq!(h.ext(), &ext);
    let bytes2 = add_key_slot(&bytes, &keys, &pass("p"), FAST).unwrap();
    assert_eq!(Header::parse(&bytes2).unwrap().ext(), &ext);
    let bad = edit(&bytes, |_, b| b["ext"]["sse"] = "none".into());
    assert!(matches!(
        err(open_header(&bad, &src)),
        CryptoError::Tampered(_)
    ));
}

#[test]
fn rekeyed_header_has_a_new_key_and_keeps_the_rest() {
    let kdf = Argon2Params::MINIMUM;
    let one = KeySource::Passphrase(Zeroizing::new("one".into()));
    let two = KeySource::Keyfile(Zeroizing::new(vec![3u8; 32]));
    let mut ext = Map::new();
    ext.insert("x".into(), Value::from(1));
    let (bytes, keys) = create_header_with_ext(VolumeParams::default(), &one, kdf, ext).unwrap();
    let bytes = add_key_slot(&bytes, &keys, &two, kdf).unwrap();
    let h = Header::parse(&bytes).unwrap();
    let (new_bytes, new_keys) = h.rekeyed(&keys, &[(Some(0), &one)], kdf).unwrap();
    let nh = Header::parse(&new_bytes).unwrap();
    assert_eq!(nh.slot_count(), 1);
    assert_eq!(nh.volume_id(), h.volume_id());
    assert_eq!(nh.ext(), h.ext());
    let opened = nh.unlock(&one).unwrap();
    assert_eq!(*opened.master, *new_keys.master);
    assert_ne!(*opened.master, *keys.master);
    assert!(nh.unlock(&two).is_err());
    // Chunk ids move deterministically under the new key.
    let id = crate::crypto::ChunkId([1; 16]);
    assert_eq!(new_keys.rekeyed_chunk_id(&id), opened.rekeyed_chunk_id(&id));
    assert_ne!(new_keys.rekeyed_chunk_id(&id), keys.rekeyed_chunk_id(&id));
    // Keys that do not open the header cannot rekey it.
    assert!(nh.rekeyed(&keys, &[(None, &one)], kdf).is_err());
}
