//! Volume parameters fixed at `init` (cipher, chunk and block size, size padding).

use super::{Cipher, CryptoError, DEFAULT_CIPHER};

/// Parameters of a volume, stored (authenticated) in the header.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VolumeParams {
    /// Cipher for chunks and records.
    pub cipher: Cipher,
    /// Maximum plaintext bytes per chunk; in [64 KiB, 64 MiB], a multiple of `block_size`.
    pub chunk_size: u32,
    /// Plaintext bytes per sealed block; a power of two in [4 KiB, 1 MiB].
    pub block_size: u32,
    /// 0 = no padding; otherwise the stored size of every chunk is rounded up to a multiple
    /// of this many bytes (at most `chunk_size`). Padding bytes are random.
    pub padding: u32,
}

impl VolumeParams {
    pub const MIN_CHUNK_SIZE: u32 = 64 * 1024;
    pub const MAX_CHUNK_SIZE: u32 = 64 * 1024 * 1024;
    pub const MIN_BLOCK_SIZE: u32 = 4 * 1024;
    pub const MAX_BLOCK_SIZE: u32 = 1024 * 1024;

    /// Check every bound; `Format` names the offending value.
    pub fn check(&self) -> Result<(), CryptoError> {
        let bad = |m: String| Err(CryptoError::Format(format!("volume parameters: {m}")));
        if self.chunk_size < Self::MIN_CHUNK_SIZE || self.chunk_size > Self::MAX_CHUNK_SIZE {
            return bad(format!(
                "chunk_size {} is outside [{}, {}]",
                self.chunk_size,
                Self::MIN_CHUNK_SIZE,
                Self::MAX_CHUNK_SIZE
            ));
        }
        if self.block_size < Self::MIN_BLOCK_SIZE
            || self.block_size > Self::MAX_BLOCK_SIZE
            || !self.block_size.is_power_of_two()
        {
            return bad(format!(
                "block_size {} is not a power of two in [{}, {}]",
                self.block_size,
                Self::MIN_BLOCK_SIZE,
                Self::MAX_BLOCK_SIZE
            ));
        }
        if !self.chunk_size.is_multiple_of(self.block_size) {
            return bad(format!(
                "chunk_size {} is not a multiple of block_size {}",
                self.chunk_size, self.block_size
            ));
        }
        if self.padding > self.chunk_size {
            return bad(format!(
                "padding {} exceeds chunk_size {}",
                self.padding, self.chunk_size
            ));
        }
        Ok(())
    }

    /// Number of blocks in a chunk of `plain_len` bytes (0 for an empty chunk).
    pub fn blocks_in(&self, plain_len: u64) -> u64 {
        plain_len.div_ceil(u64::from(self.block_size))
    }
}

impl Default for VolumeParams {
    /// AES-256-GCM, 4 MiB chunks, 64 KiB blocks, stored sizes padded to 4 KiB.
    ///
    /// Padding 4096 hides a chunk's exact length at a cost of at most 4 KiB per chunk
    /// (0.1% of a full chunk); small tails of files are where exact sizes leak most.
    fn default() -> Self {
        VolumeParams {
            cipher: DEFAULT_CIPHER,
            chunk_size: 4 * 1024 * 1024,
            block_size: 64 * 1024,
            padding: 4096,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        VolumeParams::default().check().unwrap();
        let p = VolumeParams::default();
        assert_eq!(p.blocks_in(0), 0);
        assert_eq!(p.blocks_in(1), 1);
        assert_eq!(p.blocks_in(65536), 1);
        assert_eq!(p.blocks_in(65537), 2);
    }

    #[test]
    fn bounds() {
        let d = VolumeParams::default();
        let ok = [
            VolumeParams {
                chunk_size: 64 * 1024,
                block_size: 4096,
                ..d.clone()
            },
            VolumeParams {
                chunk_size: 64 << 20,
                block_size: 1 << 20,
                ..d.clone()
            },
            VolumeParams {
                chunk_size: 3 * 65536,
                padding: 0,
                ..d.clone()
            },
            VolumeParams {
                padding: 4 << 20,
                ..d.clone()
            },
        ];
        for p in ok {
            p.check().unwrap();
        }
        let bad = [
            VolumeParams {
                chunk_size: 32 * 1024,
                block_size: 4096,
                ..d.clone()
            },
            VolumeParams {
                chunk_size: (64 << 20) + 65536,
                ..d.clone()
            },
            VolumeParams {
                block_size: 2048,
                ..d.clone()
            },
            VolumeParams {
                block_size: 2 << 20,
                ..d.clone()
            },
            VolumeParams {
                block_size: 3 * 4096,
                ..d.clone()
            },
            VolumeParams {
                chunk_size: 65536 * 3 + 4096,
                ..d.clone()
            },
            VolumeParams {
                padding: (4 << 20) + 1,
                ..d.clone()
            },
        ];
        for p in bad {
            assert!(matches!(p.check(), Err(CryptoError::Format(_))), "{p:?}");
        }
    }
}
