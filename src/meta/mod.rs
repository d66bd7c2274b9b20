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
