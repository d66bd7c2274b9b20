//! Metadata: inodes, directory entries, chunk maps and xattrs in an embedded SQLite
//! database, plus its sealed snapshot form that is stored in the bucket.

pub mod journal;
pub mod lease;
pub mod records;
pub mod remote;
pub mod snapshot;
pub mod sqlite;

pub use sqlite::SqliteMeta;

/// Inode number. 1 is the root directory; numbers are never reused within a volume.
pub type Ino = u64;

/// Told (rows done, rows in all) while a mount loads the store's metadata into the local
/// database, so `cryptbucket mount` can show progress on a big volume.
#[derive(Clone)]
pub struct LoadProgress(pub std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>);

impl std::fmt::Debug for LoadProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoadProgress")
    }
}
pub const ROOT_INO: Ino = 1;

/// Files at most this long live inside the metadata instead of in their own chunk object.
pub const INLINE_MAX: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("invalid operation: {0}")]
    Invalid(&'static str),
    #[error("local metadata database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("metadata is corrupt: {0}")]
    Corrupt(String),
    #[error("store: {0}")]
    Store(#[from] crate::backend::BackendError),
    #[error("metadata record: {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
    #[error("{0}")]
    Refused(String),
}

pub type Result<T> = std::result::Result<T, MetaError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    pub fn to_i64(self) -> i64 {
        match self {
            FileKind::File => 1,
            FileKind::Dir => 2,
            FileKind::Symlink => 3,
            FileKind::Fifo => 4,
            FileKind::Socket => 5,
            FileKind::CharDevice => 6,
            FileKind::BlockDevice => 7,
        }
    }
    pub fn from_i64(v: i64) -> Result<Self> {
        match v {
            1 => Ok(FileKind::File),
            2 => Ok(FileKind::Dir),
            3 => Ok(FileKind::Symlink),
            4 => Ok(FileKind::Fifo),
            5 => Ok(FileKind::Socket),
            6 => Ok(FileKind::CharDevice),
            7 => Ok(FileKind::BlockDevice),
            _ => Err(MetaError::Corrupt(format!("unknown inode kind {v}"))),
        }
    }
}

/// Attributes of one inode as stored. Times are nanoseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Inode {
    pub ino: Ino,
    pub kind: FileKind,
    /// Permission bits only (07777); the type lives in `kind`.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: i64,
    pub mtime: i64,
    pub ctime: i64,
    pub nlink: u32,
    /// Device number of character and block devices.
    #[serde(default)]
    pub rdev: u32,
}

/// Where one chunk of a file lives and how to check it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkRef {
    /// Chunk index within the file (byte offset / chunk_size).
    pub idx: u64,
    #[serde(with = "hex_array16")]
    pub id: [u8; 16],
    pub plain_len: u64,
    pub stored_len: u64,
    #[serde(with = "hex_array16")]
    pub digest: [u8; 16],
    /// Set when the object is a pack: several small chunks (of any files) sealed as one
    /// object, so a tree of small files costs a few PUTs and GETs instead of one per file.
    /// `stored_len` and `digest` are then the whole object's; `plain_len` is this chunk's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<PackSlot>,
}

/// Version of a snapshot or journal segment without packed chunks.
pub const RECORD_VERSION_PLAIN: u32 = 1;
/// Version of one that holds a packed chunk: a reader that predates packs would ignore
/// `pack` and serve another chunk's bytes, so it must refuse the record instead.
pub const RECORD_VERSION_PACKS: u32 = 2;

/// The version a snapshot or segment holding these chunks is written with (the lowest that
/// can express them, so volumes that never packed stay readable by older releases).
pub fn record_version<'a>(mut chunks: impl Iterator<Item = &'a ChunkRef>) -> u32 {
    if chunks.any(|c| c.pack.is_some()) {
        RECORD_VERSION_PACKS
    } else {
        RECORD_VERSION_PLAIN
    }
}

/// Check a decoded record's version against what it holds, and each chunk reference.
pub fn check_record<'a>(
    what: &str,
    version: u32,
    chunks: impl Iterator<Item = &'a ChunkRef>,
) -> Result<()> {
    if version != RECORD_VERSION_PLAIN && version != RECORD_VERSION_PACKS {
        return Err(MetaError::Corrupt(format!(
            "unsupported {what} version {version}"
        )));
    }
    for c in chunks {
        c.check()?;
        if c.pack.is_some() && version < RECORD_VERSION_PACKS {
            return Err(MetaError::Corrupt(format!(
                "{what} version {version} cannot hold packed chunks"
            )));
        }
    }
    Ok(())
}

/// Where a chunk sits inside a pack object's plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PackSlot {
    /// Offset of the chunk's first byte in the object's plaintext.
    pub off: u64,
    /// Plaintext length of the whole object.
    pub len: u64,
}

impl ChunkRef {
    /// Plaintext length of the object holding this chunk (its own length unless packed).
    pub fn obj_len(&self) -> u64 {
        self.pack.map_or(self.plain_len, |p| p.len)
    }

    /// Offset of this chunk's first byte in its object's plaintext.
    pub fn obj_off(&self) -> u64 {
        self.pack.map_or(0, |p| p.off)
    }

    /// Structural check of a reference read from the store or the local database.
    pub fn check(&self) -> Result<()> {
        // No volume has chunks above this: lengths past it are corrupt, and bounding them
        // keeps block arithmetic and sums far from overflow.
        let max = u64::from(crate::crypto::VolumeParams::MAX_CHUNK_SIZE);
        if self.plain_len > max || self.pack.is_some_and(|p| p.len > max) {
            return Err(MetaError::Corrupt(format!(
                "chunk reference longer than the largest chunk ({} bytes)",
                self.obj_len()
            )));
        }
        if let Some(p) = self.pack {
            if p.off
                .checked_add(self.plain_len)
                .is_none_or(|end| end > p.len)
            {
                return Err(MetaError::Corrupt(format!(
                    "packed chunk {}+{} lies outside its object of {} bytes",
                    p.off, self.plain_len, p.len
                )));
            }
        }
        Ok(())
    }
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Stable position cookie: entries are listed in cookie order, so an offset stays valid
    /// while other entries come and go.
    pub cookie: u64,
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileKind,
}

pub(crate) mod hex_array16 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 16], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(&s).map_err(serde::de::Error::custom)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("expected 16 bytes"))
    }
}

pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(&s).map_err(serde::de::Error::custom)
    }
}

pub(crate) mod hex_opt_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| hex::decode(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_holding_packs_need_version_2_and_packs_must_fit_their_object() {
        let solo = ChunkRef {
            idx: 0,
            id: [1; 16],
            plain_len: 100,
            stored_len: 200,
            digest: [2; 16],
            pack: None,
        };
        let packed = ChunkRef {
            pack: Some(PackSlot { off: 50, len: 150 }),
            ..solo.clone()
        };
        assert_eq!(record_version([&solo].into_iter()), RECORD_VERSION_PLAIN);
        assert_eq!(
            record_version([&solo, &packed].into_iter()),
            RECORD_VERSION_PACKS
        );
        assert!(check_record("snapshot", 1, [&solo].into_iter()).is_ok());
        assert!(check_record("snapshot", 2, [&solo, &packed].into_iter()).is_ok());
        // An older reader ignores `pack`: a version 1 record must not carry one.
        assert!(check_record("snapshot", 1, [&packed].into_iter()).is_err());
        assert!(check_record("snapshot", 3, [&solo].into_iter()).is_err());
        let outside = ChunkRef {
            pack: Some(PackSlot { off: 51, len: 150 }),
            ..solo.clone()
        };
        assert!(check_record("snapshot", 2, [&outside].into_iter()).is_err());
        let overflow = ChunkRef {
            pack: Some(PackSlot {
                off: u64::MAX,
                len: 150,
            }),
            ..solo
        };
        assert!(check_record("snapshot", 2, [&overflow].into_iter()).is_err());
        let huge = ChunkRef {
            idx: 0,
            id: [1; 16],
            plain_len: 1 << 40,
            stored_len: 200,
            digest: [2; 16],
            pack: None,
        };
        assert!(check_record("snapshot", 1, [&huge].into_iter()).is_err());
    }
}
