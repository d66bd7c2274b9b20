//! cryptbucket: an encrypted FUSE filesystem over an object store.
//!
//! Layers, top to bottom: fuse -> vfs -> (meta, data) -> crypto -> backend.

pub mod admin;
pub mod backend;
pub mod crypto;
pub mod data;
pub mod fsck;
pub mod fuse;
pub mod gc;
pub mod meta;
pub mod pool;
pub mod rekey;
pub mod vfs;
pub mod volume;
