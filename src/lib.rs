//! cryptbucket: an encrypted FUSE filesystem over an object store.
//!
//! Layers, top to bottom: fuse -> vfs -> (meta, data) -> crypto -> backend.

pub mod backend;
pub mod crypto;
