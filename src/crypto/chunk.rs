//! Chunk sealing: a chunk is a run of independently sealed blocks, so a range read fetches
//! and opens only the blocks it needs.
//!
//! Layout: `prefix(6) || block_0 || ... || block_{n-1} || random padding`, where
//! `block_i = ciphertext_i || tag_i(16)`. Each block holds `block_size` plaintext bytes
//! except the last (1..=block_size). Nonce = block index as u32 LE, zero-padded to the
//! cipher's nonce length; AAD = version || volume id || chunk id || block index (u32 LE) ||
//! last-block flag (0/1). The key is per chunk, and a chunk id is sealed exactly once.

use std::ops::Range;

use subtle::ConstantTimeEq;

use super::cipher::Aead;
use super::prefix::{check_prefix, prefix, KIND_CHUNK, PREFIX_LEN};
use super::{fill_random, ChunkId, CryptoError, VolumeKeys, VolumeParams, FORMAT_VERSION, TAG_LEN};

/// A sealed chunk ready to upload, with what the metadata must pin about it.
#[derive(Clone, Debug)]
pub struct SealedChunk {
    /// The object's bytes (prefix, blocks, padding); `bytes.len()` is the stored length.
    pub bytes: Vec<u8>,
    /// Tag of the last block: pins this exact chunk content (checked on every read of it).
    pub digest: [u8; 16],
    /// Plaintext length.
    pub plain_len: u64,
}

/// Length of the AAD of a chunk block.
const AAD_LEN: usize = 1 + 16 + 16 + 4 + 1;

fn block_aad(volume_id: &[u8; 16], id: &ChunkId, index: u32, last: bool) -> [u8; AAD_LEN] {
    let mut a = [0u8; AAD_LEN];
    a[0] = FORMAT_VERSION;
    a[1..17].copy_from_slice(volume_id);
    a[17..33].copy_from_slice(&id.0);
    a[33..37].copy_from_slice(&index.to_le_bytes());
    a[37] = u8::from(last);
    a
}

/// Stored length without padding: prefix + plaintext + one tag per block.
fn unpadded_len(params: &VolumeParams, plain_len: u64) -> u64 {
    PREFIX_LEN as u64 + plain_len + TAG_LEN as u64 * params.blocks_in(plain_len)
}

/// Plaintext length of block `index` of a chunk of `plain_len` bytes.
fn block_plain_len(params: &VolumeParams, plain_len: u64, index: u64) -> u64 {
    let bs = u64::from(params.block_size);
    plain_len.saturating_sub(index * bs).min(bs)
}

/// Stored length of a chunk of `plain_len` bytes including prefix and padding.
pub fn chunk_stored_len(params: &VolumeParams, plain_len: u64) -> u64 {
    let u = unpadded_len(params, plain_len);
    match u64::from(params.padding) {
        0 => u,
        p => u.div_ceil(p) * p,
    }
}

/// Stored byte range (relative to the object start) holding blocks `[first, first + n)` of
/// a chunk of `plain_len` bytes. Blocks past the end are clamped away, so the range may be
/// shorter than `n` blocks (empty if `first` is past the last block). The prefix and the
/// padding are never included.
pub fn chunk_block_range(
    params: &VolumeParams,
    plain_len: u64,
    first_block: u32,
    n: u32,
) -> Range<u64> {
    let nb = params.blocks_in(plain_len);
    let first = u64::from(first_block).min(nb);
    let last = (u64::from(first_block) + u64::from(n)).min(nb);
    let stride = u64::from(params.block_size) + TAG_LEN as u64;
    // Offset of block i; "block nb" starts where the last block ends (before padding).
    let offset = |i: u64| {
        if i >= nb {
            unpadded_len(params, plain_len)
        } else {
            PREFIX_LEN as u64 + i * stride
        }
    };
    let start = offset(first);
    let end = offset(last.max(first));
    start..end
}

impl VolumeKeys {
    /// Seal one whole chunk (1..=chunk_size bytes of plaintext, never empty).
    ///
    /// The caller guarantees `id` is fresh: it has never been sealed before with other
    /// contents (re-sealing the same bytes under the same id is harmless but pointless).
    pub fn seal_chunk(&self, id: &ChunkId, plaintext: &[u8]) -> Result<SealedChunk, CryptoError> {
        let p = &self.params;
        if plaintext.is_empty() || plaintext.len() as u64 > u64::from(p.chunk_size) {
            return Err(CryptoError::InvalidArgument(format!(
                "chunk plaintext must be 1..={} bytes, got {}",
                p.chunk_size,
                plaintext.len()
            )));
        }
        let plain_len = plaintext.len() as u64;
        let stored_len = chunk_stored_len(p, plain_len) as usize;
        let key = self.chunk_key(id);
        let aead = Aead::new(p.cipher, &key);
        let nb = p.blocks_in(plain_len) as usize;
        let mut out = Vec::with_capacity(stored_len);
        out.extend_from_slice(&prefix(KIND_CHUNK));
        let mut digest = [0u8; 16];
        for (i, block) in plaintext.chunks(p.block_size as usize).enumerate() {
            let last = i + 1 == nb;
            let index = i as u32;
            let start = out.len();
            out.extend_from_slice(block);
            let aad = block_aad(&self.volume_id, id, index, last);
            let tag = aead.seal_in_place(&aead.counter_nonce(index), &aad, &mut out[start..]);
            out.extend_from_slice(&tag);
            if last {
                digest = tag;
            }
        }
        let end = out.len();
        out.resize(stored_len, 0);
        fill_random(&mut out[end..]);
        Ok(SealedChunk {
            bytes: out,
            digest,
            plain_len,
        })
    }

    /// Open blocks `[first_block, first_block + n)` of a chunk whose plaintext length is
    /// `plain_len`, given exactly the stored bytes of those blocks (as fetched with
    /// [`chunk_block_range`]); `n` is implied by `stored.len()`. Verifies the last block's
    /// tag against `digest` if the last block is included.
    ///
    /// `stored` must end on a block boundary, so a truncated block is `Tampered`; but a
    /// response cut exactly at a block boundary simply yields fewer blocks: check the
    /// returned length, or use [`VolumeKeys::open_chunk_range`], which does.
    pub fn open_chunk_blocks(
        &self,
        id: &ChunkId,
        plain_len: u64,
        digest: &[u8; 16],
        first_block: u32,
        stored: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let p = &self.params;
        let what = || format!("chunk {}", id.to_hex());
        if plain_len == 0 || plain_len > u64::from(p.chunk_size) {
            return Err(CryptoError::Format(format!(
                "{}: plaintext length {plain_len} is outside 1..={}",
                what(),
                p.chunk_size
            )));
        }
        let nb = p.blocks_in(plain_len);
        if u64::from(first_block) >= nb {
            return Err(CryptoError::InvalidArgument(format!(
                "{}: block {first_block} is past the last block {}",
                what(),
                nb - 1
            )));
        }
        if stored.is_empty() {
            return Err(CryptoError::Tampered(format!(
                "{} (no stored bytes)",
                what()
            )));
        }
        let key = self.chunk_key(id);
        let aead = Aead::new(p.cipher, &key);
        let mut out = Vec::with_capacity(stored.len());
        let mut pos = 0usize;
        let mut index = u64::from(first_block);
        while pos < stored.len() {
            if index >= nb {
                return Err(CryptoError::Tampered(format!(
                    "{} (bytes past its last block)",
                    what()
                )));
            }
            let pl = block_plain_len(p, plain_len, index) as usize;
            let rest = &stored[pos..];
            if rest.len() < pl + TAG_LEN {
                return Err(CryptoError::Tampered(format!(
                    "{} (block {index} truncated)",
                    what()
                )));
            }
            let (ct, tag) = rest[..pl + TAG_LEN].split_at(pl);
            let last = index + 1 == nb;
            if last && !bool::from(tag.ct_eq(digest)) {
                return Err(CryptoError::Tampered(format!(
                    "{} (last block does not match the digest in the metadata)",
                    what()
                )));
            }
            let idx32 = index as u32;
            let aad = block_aad(&self.volume_id, id, idx32, last);
            let start = out.len();
            out.resize(start + pl, 0);
            aead.open_into(&aead.counter_nonce(idx32), &aad, ct, tag, &mut out[start..])
                .map_err(|_| CryptoError::Tampered(format!("{} block {index}", what())))?;
            pos += pl + TAG_LEN;
            index += 1;
        }
        Ok(out)
    }

    /// Like [`VolumeKeys::open_chunk_blocks`] for exactly `n >= 1` blocks (clamped to the
    /// chunk's end): `stored` must be exactly the [`chunk_block_range`] of them, so a short
    /// response is `Tampered`, never fewer bytes.
    pub fn open_chunk_range(
        &self,
        id: &ChunkId,
        plain_len: u64,
        digest: &[u8; 16],
        first_block: u32,
        n: u32,
        stored: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let r = chunk_block_range(&self.params, plain_len, first_block, n);
        if n == 0 || stored.len() as u64 != r.end - r.start {
            return Err(CryptoError::Tampered(format!(
                "chunk {} (stored range has {} bytes, expected {})",
                id.to_hex(),
                stored.len(),
                r.end - r.start
            )));
        }
        self.open_chunk_blocks(id, plain_len, digest, first_block, stored)
    }

    /// Open a whole stored chunk object (prefix, all blocks, padding), checking its stored
    /// length against `chunk_stored_len` (for fsck, disk cache verification, full reads).
    pub fn open_chunk(
        &self,
        id: &ChunkId,
        plain_len: u64,
        digest: &[u8; 16],
        object: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let what = format!("chunk {}", id.to_hex());
        check_prefix(object, KIND_CHUNK, &what)?;
        let want = chunk_stored_len(&self.params, plain_len);
        if object.len() as u64 != want {
            return Err(CryptoError::Tampered(format!(
                "{what} (stored length {} where {want} was expected)",
                object.len()
            )));
        }
        let r = chunk_block_range(&self.params, plain_len, 0, u32::MAX);
        self.open_chunk_blocks(
            id,
            plain_len,
            digest,
            0,
            &object[r.start as usize..r.end as usize],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Cipher;

    fn params(cipher: Cipher, padding: u32) -> VolumeParams {
        VolumeParams {
            cipher,
            chunk_size: 64 * 1024,
            block_size: 4096,
            padding,
        }
    }

    fn keys(cipher: Cipher, padding: u32) -> VolumeKeys {
        VolumeKeys::from_parts_for_tests([9; 32], [4; 16], params(cipher, padding))
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    const CIPHERS: [Cipher; 2] = [Cipher::Aes256Gcm, Cipher::XChaCha20Poly1305];

    #[test]
    fn lengths_and_ranges() {
        let p = params(Cipher::Aes256Gcm, 0);
        assert_eq!(chunk_stored_len(&p, 1), 6 + 1 + 16);
        assert_eq!(chunk_stored_len(&p, 4096), 6 + 4096 + 16);
        assert_eq!(chunk_stored_len(&p, 4097), 6 + 4097 + 32);
        assert_eq!(chunk_block_range(&p, 4097, 0, 1), 6..6 + 4112);
        assert_eq!(chunk_block_range(&p, 4097, 1, 1), 6 + 4112..6 + 4112 + 17);
        assert_eq!(chunk_block_range(&p, 4097, 0, 9), 6..6 + 4112 + 17);
        assert_eq!(
            chunk_block_range(&p, 4097, 2, 1),
            6 + 4112 + 17..6 + 4112 + 17
        );
        assert_eq!(chunk_block_range(&p, 4097, 0, 0), 6..6);
        let padded = params(Cipher::Aes256Gcm, 4096);
        assert_eq!(chunk_stored_len(&padded, 1), 4096);
        assert_eq!(chunk_stored_len(&padded, 4096), 8192);
        assert_eq!(chunk_block_range(&padded, 1, 0, 1), 6..23);
    }

    #[test]
    fn round_trip_all_sizes_and_ranges() {
        for c in CIPHERS {
            for pad in [0, 4096, 1000] {
                let k = keys(c, pad);
                for len in [1usize, 100, 4095, 4096, 4097, 3 * 4096 + 5, 64 * 1024] {
                    let id = ChunkId::random();
                    let pt = data(len);
                    let s = k.seal_chunk(&id, &pt).unwrap();
                    assert_eq!(s.plain_len, len as u64);
                    assert_eq!(
                        s.bytes.len() as u64,
                        chunk_stored_len(k.params(), len as u64)
                    );
                    assert_eq!(&s.bytes[..6], b"CBKT\x01\x01");
                    assert_eq!(
                        k.open_chunk(&id, s.plain_len, &s.digest, &s.bytes).unwrap(),
                        pt
                    );
                    let nb = k.params().blocks_in(len as u64) as u32;
                    for first in 0..nb {
                        for n in 1..=(nb - first).min(3) {
                            let r = chunk_block_range(k.params(), len as u64, first, n);
                            let got = k
                                .open_chunk_range(
                                    &id,
                                    len as u64,
                                    &s.digest,
                                    first,
                                    n,
                                    &s.bytes[r.start as usize..r.end as usize],
                                )
                                .unwrap();
                            let lo = first as usize * 4096;
                            let hi = ((first + n) as usize * 4096).min(len);
                            assert_eq!(got, pt[lo..hi]);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bad_arguments() {
        let k = keys(Cipher::Aes256Gcm, 0);
        let id = ChunkId::random();
        assert!(matches!(
            k.seal_chunk(&id, &[]),
            Err(CryptoError::InvalidArgument(_))
        ));
        assert!(matches!(
            k.seal_chunk(&id, &data(64 * 1024 + 1)),
            Err(CryptoError::InvalidArgument(_))
        ));
        let s = k.seal_chunk(&id, &data(10)).unwrap();
        assert!(matches!(
            k.open_chunk_blocks(&id, 0, &s.digest, 0, &s.bytes[6..]),
            Err(CryptoError::Format(_))
        ));
        assert!(matches!(
            k.open_chunk_blocks(&id, 10, &s.digest, 1, &s.bytes[6..]),
            Err(CryptoError::InvalidArgument(_))
        ));
        assert!(matches!(
            k.open_chunk_blocks(&id, 10, &s.digest, 0, &[]),
            Err(CryptoError::Tampered(_))
        ));
    }

    fn tampered<T: std::fmt::Debug>(r: Result<T, CryptoError>) {
        assert!(matches!(r, Err(CryptoError::Tampered(_))), "{r:?}");
    }

    #[test]
    fn tamper_every_way() {
        for c in CIPHERS {
            let k = keys(c, 0);
            let id = ChunkId::random();
            let len = 3 * 4096 + 100;
            let pt = data(len);
            let s = k.seal_chunk(&id, &pt).unwrap();
            let (l, d) = (len as u64, s.digest);
            let body = &s.bytes[6..];
            // Flip bytes all over the blocks (every block's first/last ct byte and tag bytes).
            let mut positions: Vec<usize> = (0..body.len()).step_by(53).collect();
            for b in 0..4usize {
                let start = b * 4112;
                positions.extend([start, start + 1, (start + 4095).min(body.len() - 17)]);
                positions.extend([
                    (start + 4111).min(body.len() - 1),
                    (start + 4100).min(body.len() - 1),
                ]);
            }
            positions.push(body.len() - 1);
            for pos in positions {
                let mut bad = body.to_vec();
                bad[pos] ^= 0x80;
                tampered(k.open_chunk_blocks(&id, l, &d, 0, &bad));
            }
            // Swap blocks 0 and 1 (same length).
            let mut swapped = body.to_vec();
            swapped[..4112].copy_from_slice(&body[4112..8224]);
            swapped[4112..8224].copy_from_slice(&body[..4112]);
            tampered(k.open_chunk_blocks(&id, l, &d, 0, &swapped));
            // Block 1's bytes served as block 0.
            tampered(k.open_chunk_blocks(&id, l, &d, 0, &body[4112..8224]));
            // Truncate the last block by one byte, or drop it.
            tampered(k.open_chunk_blocks(&id, l, &d, 0, &body[..body.len() - 1]));
            tampered(k.open_chunk_range(&id, l, &d, 0, 4, &body[..3 * 4112]));
            tampered(k.open_chunk(&id, l, &d, &s.bytes[..s.bytes.len() - 1]));
            tampered(k.open_chunk(&id, l, &d, &s.bytes[..6 + 3 * 4112]));
            // Extension: an extra byte after the last block.
            let mut ext = body.to_vec();
            ext.push(0);
            tampered(k.open_chunk_blocks(&id, l, &d, 0, &ext));
            // A shorter plain_len claimed for the same bytes: the block flagged "last" moves.
            tampered(k.open_chunk_blocks(&id, 3 * 4096, &d, 0, &body[..3 * 4112]));
            // Wrong digest.
            let mut d2 = d;
            d2[0] ^= 1;
            tampered(k.open_chunk_blocks(&id, l, &d2, 0, body));
            // Non-last blocks need no digest but are bound to the chunk id and key.
            assert!(k.open_chunk_blocks(&id, l, &d2, 0, &body[..4112]).is_ok());
            // Chunk A's bytes served as chunk B.
            let other = ChunkId::random();
            tampered(k.open_chunk_blocks(&other, l, &d, 0, body));
            tampered(k.open_chunk_blocks(&other, l, &d, 0, &body[..4112]));
            // Another volume's key (same master, other volume id).
            let k2 = VolumeKeys::from_parts_for_tests([9; 32], [5; 16], params(c, 0));
            tampered(k2.open_chunk_blocks(&id, l, &d, 0, body));
            // A chunk of the other cipher.
            let other_cipher = if c == Cipher::Aes256Gcm {
                Cipher::XChaCha20Poly1305
            } else {
                Cipher::Aes256Gcm
            };
            tampered(keys(other_cipher, 0).open_chunk_blocks(&id, l, &d, 0, body));
            // A record served as a chunk: wrong kind in the prefix.
            let rec = k
                .seal_record(crate::crypto::RecordKind::Snapshot, &pt)
                .unwrap();
            tampered(k.open_chunk(&id, l, &d, &rec));
        }
    }
}
