//! Open files: dirty chunk buffers, reads that merge buffered and stored data, and the
//! flush that turns buffers into sealed chunk objects (or inline data for tiny files).

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{now_ns, Attr, Result, Vfs, VfsError};
use crate::meta::{ChunkRef, FileKind, Ino, INLINE_MAX};

/// Above this many buffered bytes in one file, its dirty chunks are uploaded.
const DIRTY_LIMIT: usize = 64 << 20;
/// Largest file offset we accept (keeps chunk arithmetic far from overflow).
const MAX_FILE_SIZE: u64 = 1 << 50;

pub(super) struct OpenFile {
    st: Mutex<FileState>,
}

struct FileState {
    opens: usize,
    size: u64,
    /// mtime of unflushed changes (None when nothing changed since the last flush).
    mtime: Option<i64>,
    dirty: BTreeMap<u64, Vec<u8>>,
    refs: BTreeMap<u64, ChunkRef>,
    /// Lowest size the file was truncated to since the metadata last recorded its chunks:
    /// stored chunks from there on are stale even if the file grew again.
    trunc_to: Option<u64>,
    inline: Option<Vec<u8>>,
}

impl FileState {
    fn dirty_bytes(&self) -> usize {
        self.dirty.values().map(|b| b.len()).sum()
    }
}

impl OpenFile {
    pub(super) fn overlay(&self, a: &mut Attr) {
        let st = self.st.lock();
        a.size = st.size;
        if let Some(m) = st.mtime {
            a.mtime = m;
            a.ctime = a.ctime.max(m);
        }
    }

    pub(super) fn set_mtime(&self, m: i64) {
        let mut st = self.st.lock();
        if st.mtime.is_some() {
            st.mtime = Some(m);
        }
    }

    pub(super) fn size(&self) -> u64 {
        self.st.lock().size
    }

    pub(super) fn dirty_bytes(&self) -> u64 {
        self.st.lock().dirty_bytes() as u64
    }
}

/// One piece of a read: bytes already in memory, a range of a stored chunk, or a hole.
enum Piece {
    Bytes(Vec<u8>),
    Stored(ChunkRef, u64, u64),
    Zeros(u64),
}

impl Vfs {
    fn chunk_size(&self) -> u64 {
        self.data.chunk_size()
    }

    /// Get the open state of `ino`, creating it (with `opens` = 0) if needed.
    fn file_state(&self, ino: Ino) -> Result<Arc<OpenFile>> {
        if let Some(of) = self.open.lock().get(&ino) {
            return Ok(of.clone());
        }
        let inode = self.meta.get_inode(ino)?;
        match inode.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(VfsError::IsDir),
            _ => return Err(VfsError::Invalid("not a regular file")),
        }
        let refs = self
            .meta
            .chunks(ino)?
            .into_iter()
            .map(|c| (c.idx, c))
            .collect();
        let inline = self.meta.inline_data(ino)?;
        let mut open = self.open.lock();
        let of = open.entry(ino).or_insert_with(|| {
            Arc::new(OpenFile {
                st: Mutex::new(FileState {
                    opens: 0,
                    size: inode.size,
                    mtime: None,
                    dirty: BTreeMap::new(),
                    refs,
                    trunc_to: None,
                    inline,
                }),
            })
        });
        Ok(of.clone())
    }

    pub fn open(&self, ino: Ino) -> Result<u64> {
        let of = self.file_state(ino)?;
        of.st.lock().opens += 1;
        let fh = self
            .next_fh
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.handles.lock().insert(fh, ino);
        Ok(fh)
    }

    fn handle(&self, fh: u64) -> Result<(Ino, Arc<OpenFile>)> {
        let ino = *self.handles.lock().get(&fh).ok_or(VfsError::BadHandle)?;
        let of = self
            .open
            .lock()
            .get(&ino)
            .cloned()
            .ok_or(VfsError::BadHandle)?;
        Ok((ino, of))
    }

    pub fn read(&self, fh: u64, off: u64, len: u32) -> Result<Vec<u8>> {
        let (_, of) = self.handle(fh)?;
        let cs = self.chunk_size();
        let pieces = {
            let st = of.st.lock();
            let end = (off + len as u64).min(st.size);
            let mut pieces = Vec::new();
            let mut pos = off;
            while pos < end {
                let idx = pos / cs;
                let in_off = pos % cs;
                let n = (cs - in_off).min(end - pos);
                if let Some(buf) = st.dirty.get(&idx) {
                    pieces.push(slice_or_zeros(buf, in_off, n));
                } else if let Some(c) = st.refs.get(&idx) {
                    pieces.push(Piece::Stored(c.clone(), in_off, n));
                } else if let (0, Some(data)) = (idx, st.inline.as_ref()) {
                    pieces.push(slice_or_zeros(data, in_off, n));
                } else {
                    pieces.push(Piece::Zeros(n));
                }
                pos += n;
            }
            pieces
        };
        let mut out = Vec::with_capacity(len as usize);
        for p in pieces {
            match p {
                Piece::Bytes(b) => out.extend_from_slice(&b),
                Piece::Zeros(n) => out.resize(out.len() + n as usize, 0),
                Piece::Stored(c, in_off, n) => {
                    let got = self.data.read(&c, in_off, n).inspect_err(|e| {
                        tracing::error!("read failed: {e}");
                    })?;
                    let want = out.len() + n as usize;
                    out.extend_from_slice(&got);
                    out.resize(want, 0);
                }
            }
        }
        Ok(out)
    }

    /// Make chunk `idx` a dirty buffer holding its current contents.
    fn load_chunk(&self, st: &mut FileState, idx: u64) -> Result<()> {
        if st.dirty.contains_key(&idx) {
            return Ok(());
        }
        let buf = if let Some(c) = st.refs.get(&idx) {
            self.data.read(c, 0, c.plain_len).inspect_err(|e| {
                tracing::error!("read before write failed: {e}");
            })?
        } else if let (0, Some(d)) = (idx, st.inline.as_ref()) {
            d.clone()
        } else {
            Vec::new()
        };
        st.dirty.insert(idx, buf);
        Ok(())
    }

    pub fn write(&self, fh: u64, off: u64, data: &[u8]) -> Result<u32> {
        self.writable()?;
        let (ino, of) = self.handle(fh)?;
        let end = off
            .checked_add(data.len() as u64)
            .filter(|e| *e <= MAX_FILE_SIZE)
            .ok_or(VfsError::TooBig)?;
        let cs = self.chunk_size();
        let mut st = of.st.lock();
        let mut pos = off;
        let mut rest = data;
        while !rest.is_empty() {
            let idx = pos / cs;
            let in_off = (pos % cs) as usize;
            let n = rest.len().min(cs as usize - in_off);
            self.load_chunk(&mut st, idx)?;
            let buf = st
                .dirty
                .get_mut(&idx)
                .ok_or(VfsError::Io("chunk buffer vanished".into()))?;
            if buf.len() < in_off + n {
                buf.resize(in_off + n, 0);
            }
            buf[in_off..in_off + n].copy_from_slice(&rest[..n]);
            pos += n as u64;
            rest = &rest[n..];
        }
        st.size = st.size.max(end);
        st.mtime = Some(now_ns());
        // A write that completes a chunk (a sequential stream) uploads it now, so an
        // append stream never re-uploads a tail; random writes stay buffered.
        let full: Vec<u64> = if end % cs == 0 {
            vec![end / cs - 1]
        } else {
            Vec::new()
        };
        let over = st.dirty_bytes() > DIRTY_LIMIT;
        if over {
            self.upload_dirty(ino, &mut st, None)?;
        } else if !full.is_empty() && st.dirty.get(&full[0]).is_some_and(|b| b.len() as u64 == cs) {
            self.upload_dirty(ino, &mut st, Some(&full))?;
        }
        Ok(data.len() as u32)
    }

    /// Upload dirty chunks (all, or those listed) and record them in the metadata.
    fn upload_dirty(&self, ino: Ino, st: &mut FileState, only: Option<&[u64]>) -> Result<()> {
        let cs = self.chunk_size();
        let keep_below = st.size.div_ceil(cs);
        let meta_keep = st
            .trunc_to
            .map_or(keep_below, |t| t.div_ceil(cs).min(keep_below));
        if st.size <= INLINE_MAX {
            return self.store_inline(ino, st);
        }
        // Growing out of inline storage: chunk 0 must be uploaded in this same update.
        let was_inline = st.inline.is_some();
        if let Some(d) = st.inline.take() {
            st.dirty.entry(0).or_insert(d);
        }
        let idxs: Vec<u64> = st
            .dirty
            .keys()
            .copied()
            .filter(|i| only.is_none_or(|o| o.contains(i)) || (was_inline && *i == 0))
            .collect();
        let mut items = Vec::new();
        let mut emptied = Vec::new();
        for i in idxs {
            if let Some(buf) = st.dirty.remove(&i) {
                if buf.is_empty() || i >= keep_below {
                    emptied.push(i);
                } else {
                    items.push((i, buf));
                }
            }
        }
        let refs = match self.data.write_many(items.clone()) {
            Ok(r) => r,
            Err(e) => {
                // Keep the data buffered so a later flush can retry.
                for (i, b) in items {
                    st.dirty.insert(i, b);
                }
                tracing::error!("upload failed: {e}");
                return Err(e.into());
            }
        };
        let mut inode = self.meta.get_inode(ino)?;
        inode.size = st.size;
        if let Some(m) = st.mtime {
            inode.mtime = m;
            inode.ctime = inode.ctime.max(m);
        }
        for i in emptied {
            st.refs.remove(&i);
        }
        self.meta.update_file(&inode, &refs, meta_keep, None)?;
        st.trunc_to = None;
        st.refs.retain(|i, _| *i < keep_below);
        for r in refs {
            st.refs.insert(r.idx, r);
        }
        if st.dirty.is_empty() {
            st.mtime = None;
        }
        Ok(())
    }

    fn store_inline(&self, ino: Ino, st: &mut FileState) -> Result<()> {
        let size = st.size as usize;
        let mut content = if let Some(b) = st.dirty.get(&0) {
            b.clone()
        } else if let Some(c) = st.refs.get(&0) {
            self.data.read(c, 0, c.plain_len)?
        } else {
            st.inline.clone().unwrap_or_default()
        };
        content.resize(size, 0);
        let mut inode = self.meta.get_inode(ino)?;
        inode.size = st.size;
        if let Some(m) = st.mtime {
            inode.mtime = m;
            inode.ctime = inode.ctime.max(m);
        }
        self.meta.update_file(&inode, &[], 0, Some(&content))?;
        st.refs.clear();
        st.dirty.clear();
        st.inline = Some(content);
        st.mtime = None;
        st.trunc_to = None;
        Ok(())
    }

    pub(super) fn flush_file(&self, ino: Ino, of: &OpenFile) -> Result<()> {
        let mut st = of.st.lock();
        if st.dirty.is_empty() && st.mtime.is_none() {
            return Ok(());
        }
        match self.meta.get_inode(ino) {
            Ok(i) if i.nlink == 0 => return Ok(()),
            Err(crate::meta::MetaError::NotFound) => return Ok(()),
            _ => {}
        }
        self.upload_dirty(ino, &mut st, None)
    }

    /// close(): upload this file's buffered data and record it in the local metadata.
    pub fn flush(&self, fh: u64) -> Result<()> {
        let (ino, of) = self.handle(fh)?;
        self.flush_file(ino, &of)?;
        if self.sync_on_close() {
            self.commit()?;
        }
        Ok(())
    }

    /// fsync(): the file's data and the metadata that references it reach the store.
    pub fn fsync(&self, fh: u64) -> Result<()> {
        self.flush(fh)?;
        self.commit()
    }

    pub fn release(&self, fh: u64) -> Result<()> {
        let ino = self.handles.lock().remove(&fh).ok_or(VfsError::BadHandle)?;
        let of = match self.open.lock().get(&ino).cloned() {
            Some(of) => of,
            None => return Ok(()),
        };
        let res = self.flush_file(ino, &of);
        let unlinked = matches!(self.meta.get_inode(ino), Ok(i) if i.nlink == 0);
        let last = {
            let mut st = of.st.lock();
            st.opens = st.opens.saturating_sub(1);
            if st.opens == 0 && unlinked {
                // Nobody can reach this file any more: its buffered data goes with it.
                st.dirty.clear();
            }
            st.opens == 0 && st.dirty.is_empty()
        };
        if last {
            self.open.lock().remove(&ino);
            if let Ok(i) = self.meta.get_inode(ino) {
                if i.nlink == 0 {
                    self.meta.delete_inode(ino)?;
                }
            }
        }
        res
    }

    /// fallocate: mode 0 extends the file (the new range reads as zeros and, being a
    /// hole, costs no storage); other modes are not supported.
    pub fn fallocate(&self, fh: u64, off: u64, len: u64, mode: i32) -> Result<()> {
        self.writable()?;
        if mode != 0 {
            return Err(VfsError::NotSupported);
        }
        let (ino, of) = self.handle(fh)?;
        let end = off
            .checked_add(len)
            .filter(|e| *e <= MAX_FILE_SIZE)
            .ok_or(VfsError::TooBig)?;
        if end > of.size() {
            self.truncate(ino, end)?;
        }
        Ok(())
    }

    pub(super) fn truncate(&self, ino: Ino, size: u64) -> Result<()> {
        if size > MAX_FILE_SIZE {
            return Err(VfsError::TooBig);
        }
        let of = self.file_state(ino)?;
        let cs = self.chunk_size();
        {
            let mut st = of.st.lock();
            if size < st.size {
                st.trunc_to = Some(st.trunc_to.map_or(size, |t| t.min(size)));
                let keep = size.div_ceil(cs);
                st.dirty.retain(|i, _| *i < keep);
                st.refs.retain(|i, _| *i < keep);
                let in_off = size % cs;
                if in_off != 0 {
                    let idx = size / cs;
                    let stored_longer = st.refs.get(&idx).is_some_and(|c| c.plain_len > in_off);
                    if stored_longer {
                        self.load_chunk(&mut st, idx)?;
                    }
                    if let Some(b) = st.dirty.get_mut(&idx) {
                        b.truncate(in_off as usize);
                    }
                }
                if let Some(d) = st.inline.as_mut() {
                    d.truncate(size as usize);
                }
            }
            st.size = size;
            st.mtime = Some(now_ns());
            if st.opens == 0 {
                self.upload_dirty(ino, &mut st, None)?;
            }
        }
        let idle = of.st.lock().opens == 0;
        if idle {
            self.open.lock().remove(&ino);
        }
        Ok(())
    }
}

fn slice_or_zeros(buf: &[u8], off: u64, n: u64) -> Piece {
    let mut v = vec![0u8; n as usize];
    let lo = (off as usize).min(buf.len());
    let hi = ((off + n) as usize).min(buf.len());
    v[..hi - lo].copy_from_slice(&buf[lo..hi]);
    Piece::Bytes(v)
}
