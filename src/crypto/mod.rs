//! Key hierarchy, key slots, volume header and its MAC, chunk and record sealing.
//!
//! Everything that touches key material or nonces lives here (see docs/FORMAT.md for the
//! exact bytes). The layers above see opaque types: [`VolumeKeys`] seals and opens chunks
//! and metadata records; the header functions create, open and inspect `cryptbucket.json`.
//!
//! Module map:
//! - [`error`]: the one error type, [`CryptoError`].
//! - [`cipher`]: the two AEADs behind one small interface, [`Cipher`].
//! - [`kdf`]: Argon2id and HKDF wrappers, [`Argon2Params`] and their bounds.
//! - [`keys`]: [`ChunkId`], [`KeySource`], [`VolumeKeys`] (the subkey hierarchy).
//! - [`params`]: [`VolumeParams`] and their bounds.
//! - [`prefix`]: the plaintext prefix every sealed binary object starts with.
//! - [`chunk`]: chunk sealing, block ranges and stored lengths.
//! - [`record`]: metadata/staging record sealing, [`RecordKind`].
//! - [`slot`]: key slots (wrap/unwrap the master key, key commitment).
//! - [`header`]: the volume header (`cryptbucket.json`) and its MAC.

pub mod chunk;
pub mod cipher;
pub mod error;
pub mod header;
pub mod kdf;
pub mod keys;
pub mod params;
pub mod prefix;
pub mod record;
pub mod slot;

pub use chunk::{chunk_block_range, chunk_stored_len, SealedChunk};
pub use cipher::{Cipher, DEFAULT_CIPHER};
pub use error::CryptoError;
pub use header::{
    add_key_slot, create_header, create_header_with_ext, create_header_with_id, new_volume_id,
    open_header, peek_header, remove_key_slot, Header, HeaderInfo,
};
pub use kdf::{argon2_params_from_env, Argon2Params};
pub use keys::{generate_keyfile_bytes, ChunkId, KeySource, KmsKey, VolumeKeys};
pub use params::VolumeParams;
pub use record::{RecordKind, RECORD_OVERHEAD};
pub use slot::KmsSlotRef;

/// Version of the on-bucket format described in docs/FORMAT.md.
pub const FORMAT_VERSION: u8 = 1;

/// Length of every AEAD tag in the format (both ciphers).
pub const TAG_LEN: usize = 16;

/// Fill `buf` from the operating system's CSPRNG.
///
/// Panics if the OS generator fails: there is no safe way to continue without randomness
/// (this matches what `rand::thread_rng` does).
pub(crate) fn fill_random(buf: &mut [u8]) {
    if let Err(e) = getrandom::getrandom(buf) {
        panic!("operating system random number generator failed: {e}");
    }
}

/// `N` fresh random bytes.
pub(crate) fn random_array<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    fill_random(&mut out);
    out
}

/// Decode a hex string into exactly `N` bytes; `what` names the field in the error.
pub(crate) fn hex_array<const N: usize>(s: &str, what: &str) -> Result<[u8; N], CryptoError> {
    if s.len() != 2 * N {
        return Err(CryptoError::Format(format!(
            "{what}: expected {} hex digits, found {}",
            2 * N,
            s.len()
        )));
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out)
        .map_err(|_| CryptoError::Format(format!("{what}: not valid hex")))?;
    Ok(out)
}
