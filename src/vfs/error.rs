//! The vfs error type and its mapping to errno: the one place where errors become errnos.

use crate::data::DataError;
use crate::meta::MetaError;

#[derive(Debug, thiserror::Error)]
pub enum VfsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("file name too long")]
    NameTooLong,
    #[error("bad file handle")]
    BadHandle,
    #[error("no such attribute")]
    NoAttr,
    #[error("attribute value does not fit the buffer")]
    Range,
    #[error("operation not supported")]
    NotSupported,
    #[error("file too large")]
    TooBig,
    /// The cache disk is full and no upload can free staging space.
    #[error("no space left on the cache disk for write-back staging")]
    NoSpace,
    #[error("metadata: {0}")]
    Meta(MetaError),
    #[error("data: {0}")]
    Data(#[from] DataError),
    #[error("read-only mount")]
    ReadOnly,
    #[error("{0}")]
    Io(String),
}

impl From<MetaError> for VfsError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::NotFound => VfsError::NotFound,
            MetaError::Exists => VfsError::Exists,
            MetaError::NotEmpty => VfsError::NotEmpty,
            MetaError::NotDir => VfsError::NotDir,
            MetaError::IsDir => VfsError::IsDir,
            MetaError::Invalid(s) => VfsError::Invalid(s),
            other => VfsError::Meta(other),
        }
    }
}

impl VfsError {
    pub fn errno(&self) -> i32 {
        match self {
            VfsError::NotFound => libc::ENOENT,
            VfsError::Exists => libc::EEXIST,
            VfsError::NotEmpty => libc::ENOTEMPTY,
            VfsError::NotDir => libc::ENOTDIR,
            VfsError::IsDir => libc::EISDIR,
            VfsError::Invalid(_) => libc::EINVAL,
            VfsError::NameTooLong => libc::ENAMETOOLONG,
            VfsError::BadHandle => libc::EBADF,
            VfsError::NoAttr => libc::ENODATA,
            VfsError::Range => libc::ERANGE,
            VfsError::NotSupported => libc::EOPNOTSUPP,
            VfsError::TooBig => libc::EFBIG,
            VfsError::ReadOnly => libc::EROFS,
            VfsError::NoSpace => libc::ENOSPC,
            VfsError::Meta(_) | VfsError::Data(_) | VfsError::Io(_) => libc::EIO,
        }
    }

    /// Errors worth a line in the log (the application only sees an errno).
    pub fn is_serious(&self) -> bool {
        self.errno() == libc::EIO
    }
}

pub type Result<T> = std::result::Result<T, VfsError>;
