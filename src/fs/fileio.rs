//! Reading and writing one open regular file: block-aligned read-modify-write over the backing
//! file, in single pread/pwrite calls per request. The caller serializes writers (and readers
//! against writers) per file, so no reader sees a half-written run of blocks.

use crate::cryptocore::PlainBuf;
use crate::fs::contentenc::{self as ce, BLOCK, BlockError, CIPHER_BLOCK, ContentCipher};
use crate::fs::errno::{Errno, FsResult};
use crate::fs::header::{self, COUNTER_OFFSET, DataKeys};
use crate::fs::undo::{Journal, Record, UndoLog};
use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::thread::LocalKey;
use zeroize::Zeroize;

/// Block encryptions reserved in the header at a time (4 GiB of writes).
const RESERVATION: u64 = 1 << 20;
/// Runs of at least this many blocks (256 KiB) are sealed and written piece by piece.
const STREAM_BLOCKS: usize = 64;

/// Writes `sealed` at `start` through `put`, its first `head` bytes last (in one call).
fn write_head_last(
    sealed: &[u8],
    start: u64,
    head: usize,
    mut put: impl FnMut(&[u8], u64) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if head == 0 {
        return put(sealed, start);
    }
    put(&sealed[head..], start + head as u64)?;
    put(&sealed[..head], start)
}

thread_local! {
    /// Ciphertext read for decryption (reused: it needs no wiping, nor zeroing first).
    static RAW: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Reads into all of `buf` at `pos`, or up to the end of the file: returns the bytes read.
fn fill_at(file: &File, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], pos + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Runs `f` with this thread's buffer in `cell`, kept from call to call so that a large read or
/// write does not allocate and zero a fresh one (a nested use gets a buffer of its own). The
/// buffers hold ciphertext only.
fn with_buffer<T>(
    cell: &'static LocalKey<RefCell<Vec<u8>>>,
    f: impl FnOnce(&mut Vec<u8>) -> T,
) -> T {
    cell.with(|c| match c.try_borrow_mut() {
        Ok(mut b) => f(&mut b),
        Err(_) => f(&mut Vec::new()),
    })
}

pub struct FileContent {
    file: File,
    /// None once the CMK behind the data key stopped being usable: the key is gone from memory.
    cipher: Option<ContentCipher>,
    /// Seals the file's `user.*` xattr values.
    xattr: Option<crate::cryptocore::SecretKey>,
    pub id: [u8; 16],
    /// The CMK that wraps this file's data key, where the provider says.
    pub key: Option<String>,
    /// Block encryptions this data key has done or reserved.
    used: u64,
    reserved: u64,
    /// Write `used` back to the header when done (false once a new header replaced ours).
    persist_counter: bool,
    /// Backing path, for log messages.
    pub label: String,
    /// Where in-place rewrites save the bytes they replace (None: read-only use, as in fsck).
    undo: Option<UndoLog>,
}

impl FileContent {
    /// `header` is the first HEADER_LEN bytes of the file, already authenticated by the caller.
    pub fn new(
        file: File,
        keys: &DataKeys,
        id: [u8; 16],
        header: &[u8],
        label: String,
        key: Option<String>,
    ) -> Self {
        let reserved = header::counter(header);
        FileContent {
            file,
            cipher: Some(ContentCipher::new(&keys.content, id)),
            xattr: Some(keys.xattr.clone()),
            id,
            key,
            used: reserved,
            reserved,
            persist_counter: true,
            label,
            undo: None,
        }
    }

    /// For a file that is thrown away if a crash interrupts its writing (a reencrypt temporary).
    pub fn unjournaled(&mut self) {
        self.undo = None;
    }

    /// Makes the undo record's last emptying durable (before the data is synced).
    pub fn sync_undo(&self) -> FsResult<()> {
        if let Some(u) = &self.undo {
            u.sync()?;
        }
        Ok(())
    }

    /// Makes in-place rewrites crash-safe through `journal` (see `fs::undo`).
    pub fn journal_to(&mut self, journal: std::sync::Arc<Journal>) {
        self.undo = Some(UndoLog::new(journal, self.id));
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// A new header (new id and key) replaced this content's: leave its counter alone.
    pub fn supersede(&mut self) {
        self.persist_counter = false;
    }

    /// Drops (and so wipes) the content key: reads and writes fail with EACCES from now on.
    pub fn revoke(&mut self) {
        self.cipher = None;
        self.xattr = None;
    }

    /// The key that seals this file's xattr values.
    pub fn xattr_key(&self) -> FsResult<&crate::cryptocore::SecretKey> {
        self.xattr.as_ref().ok_or(Errno::EACCES)
    }

    pub fn is_revoked(&self) -> bool {
        self.cipher.is_none()
    }

    fn cipher(&self) -> FsResult<&ContentCipher> {
        self.cipher.as_ref().ok_or(Errno::EACCES)
    }

    fn backing_len(&self) -> FsResult<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Plaintext size; EIO if the backing length cannot belong to a valid file.
    pub fn size(&self) -> FsResult<u64> {
        let l = ce::layout(self.backing_len()?);
        if !l.valid {
            return Err(self.invalid_length());
        }
        Ok(l.size)
    }

    fn invalid_length(&self) -> Errno {
        log::error!(
            "{}: backing length is not a valid kmsfs file (truncated or damaged)",
            self.label
        );
        Errno::EIO
    }

    fn corrupt(&self, e: BlockError) -> Errno {
        log::error!(
            "{}: block {} failed authentication (corrupted, moved or cut)",
            self.label,
            e.index
        );
        Errno::EIO
    }

    /// Runs `f` on the encrypted blocks `first..=last` of a file of `size` bytes, read in one
    /// call into this thread's buffer (reused: ciphertext needs no wiping, nor zeroing first).
    fn with_raw<T>(
        &self,
        first: u64,
        last: u64,
        size: u64,
        f: impl FnOnce(&[u8]) -> FsResult<T>,
    ) -> FsResult<T> {
        let start = ce::block_offset(first);
        let end = ce::block_offset(last) + ce::block_plain_len(last, size) + ce::OVERHEAD;
        let n = (end - start) as usize;
        with_buffer(&RAW, |buf| {
            let raw = ce::sized(buf, n);
            self.file.read_exact_at(raw, start).map_err(|e| {
                log::error!("{}: reading blocks {first}..={last}: {e}", self.label);
                Errno::EIO
            })?;
            f(raw)
        })
    }

    fn read_blocks(&self, first: u64, last: u64, size: u64) -> FsResult<PlainBuf> {
        let final_index = ce::block_count(size) - 1;
        let cipher = self.cipher()?;
        self.with_raw(first, last, size, |raw| {
            let mut out = PlainBuf::with_capacity(((last - first + 1) * BLOCK) as usize);
            cipher
                .decrypt_run(first, final_index, raw, &mut out)
                .map_err(|e| self.corrupt(e))?;
            Ok(out)
        })
    }

    /// `read` into `dst`, which needs room for every block the range touches (`len` plus two
    /// blocks is always enough); returns the bytes read. Saves the copy out of a buffer.
    pub fn read_into(&self, offset: u64, len: u32, dst: &mut [u8]) -> FsResult<usize> {
        if len == 0 {
            return Ok(0);
        }
        let cipher = self.cipher()?;
        let Some(w) = ce::read_window(offset, u64::from(len)) else {
            return Ok(0);
        };
        // The end of the reply and how much was decrypted; None at or past the end of the file.
        let found = with_buffer(&RAW, |buf| {
            let raw = ce::sized(buf, w.len);
            let got = fill_at(&self.file, raw, w.start).map_err(|e| {
                log::error!("{}: reading blocks from {}: {e}", self.label, w.first);
                Errno::EIO
            })?;
            let (raw_len, final_index, end) = match ce::seen(offset, u64::from(len), &w, got) {
                ce::Seen::End => return Ok(None),
                ce::Seen::Invalid => return Err(self.invalid_length()),
                ce::Seen::Blocks {
                    raw_len,
                    final_index,
                    end,
                } => (raw_len, final_index, end),
            };
            let raw = &raw[..raw_len];
            let decrypted = ce::plain_len(raw.len());
            if dst.len() < decrypted {
                return Err(Errno::ERANGE);
            }
            cipher
                .decrypt_run_into(w.first, final_index, raw, dst)
                .map_err(|e| self.corrupt(e))?;
            Ok(Some((end, decrypted)))
        })?;
        let Some((end, decrypted)) = found else {
            return Ok(0);
        };
        let from = (offset - w.first * BLOCK) as usize;
        let to = (end - w.first * BLOCK) as usize;
        if from > 0 {
            dst.copy_within(from..to, 0);
        }
        // Plaintext of the whole blocks beyond the reply is not the caller's to keep.
        if let Some(rest) = dst.get_mut(to - from..decrypted) {
            rest.zeroize();
        }
        Ok(to - from)
    }

    /// `read_into` a buffer of its own, sized for the whole blocks the range touches.
    pub fn read(&self, offset: u64, len: u32) -> FsResult<PlainBuf> {
        if len == 0 {
            return Ok(PlainBuf::new());
        }
        let room = len as usize + 2 * BLOCK as usize;
        let mut plain = PlainBuf::with_capacity(room);
        plain.resize(room, 0);
        let n = self.read_into(offset, len, &mut plain)?;
        plain.truncate(n);
        Ok(plain)
    }

    /// Takes `n` block encryptions from the data key's budget, reserving more in the header.
    fn spend(&mut self, n: u64) -> FsResult<()> {
        let want = self.used + n;
        if want > ce::MAX_BLOCK_ENCRYPTIONS {
            log::error!(
                "{}: its data key has encrypted 2^32 blocks; `kmsfs reencrypt` gives it a fresh one",
                self.label
            );
            return Err(Errno::EFBIG);
        }
        if want > self.reserved {
            let next = (want + RESERVATION).min(ce::MAX_BLOCK_ENCRYPTIONS);
            self.file
                .write_all_at(&next.to_be_bytes(), COUNTER_OFFSET as u64)?;
            self.reserved = next;
        }
        self.used = want;
        Ok(())
    }

    /// Encrypts and writes consecutive blocks starting at `first` in one call.
    fn write_run(&mut self, first: u64, blocks: &[(&[u8], bool)]) -> FsResult<()> {
        if blocks.is_empty() {
            return Ok(());
        }
        self.cipher()?;
        self.spend(blocks.len() as u64)?;
        let start = ce::block_offset(first);
        let end = start + ce::sealed_len(blocks) as u64;
        thread_local! {
            static SEALED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        // Long runs are written piece by piece while the next piece is sealed (not from a
        // crypto worker, which must never wait for another).
        if blocks.len() >= STREAM_BLOCKS && rayon::current_thread_index().is_none() {
            return self.in_place(start, end, |s| {
                let file = &s.file;
                let cipher = s.cipher()?;
                with_buffer(&SEALED, |scratch| {
                    cipher
                        .seal_run_streamed(first, blocks, scratch, |at, sealed| {
                            file.write_all_at(sealed, start + at as u64)
                        })
                        .map_err(|e| match e {
                            ce::StreamError::Random(_) => Errno::EIO,
                            ce::StreamError::Sink(e) => Errno::from(e),
                        })
                })
            });
        }
        with_buffer(&SEALED, |scratch| {
            let sealed = self
                .cipher()?
                .encrypt_run(first, blocks, scratch)
                .map_err(|_| Errno::EIO)?;
            self.overwrite(start, end, true, |s, head| {
                Ok(write_head_last(sealed, start, head, |b, at| {
                    s.file.write_all_at(b, at)
                })?)
            })
        })
    }

    /// Runs `f`, which overwrites bytes `start..end` (and may change the length), so that a
    /// crash inside it leaves an undo record of what was there. Bytes at or past the current end
    /// need none: the old length brings the file back. The undo log is taken out meanwhile, so
    /// nested calls run under the outer record. If `f` fails, the old bytes are put back at once.
    fn in_place<T>(
        &mut self,
        start: u64,
        end: u64,
        f: impl FnOnce(&mut Self) -> FsResult<T>,
    ) -> FsResult<T> {
        self.overwrite(start, end, false, |s, _| f(s))
    }

    /// `in_place` for an `f` that can write its first `head` bytes last (given to it; 0 for
    /// any order). If `tail_first` and the write replaces only an empty file's block, `head`
    /// is that block's length and the write takes no record (see `ce::empty_block_overlap`).
    fn overwrite<T>(
        &mut self,
        start: u64,
        end: u64,
        tail_first: bool,
        f: impl FnOnce(&mut Self, usize) -> FsResult<T>,
    ) -> FsResult<T> {
        let Some(mut undo) = self.undo.take() else {
            // No journal, or a write nested in one whose record covers it: no record to skip.
            return f(self, 0);
        };
        let result = self.under_record(&mut undo, start, end, tail_first, f);
        self.undo = Some(undo);
        result
    }

    fn under_record<T>(
        &mut self,
        undo: &mut UndoLog,
        start: u64,
        end: u64,
        tail_first: bool,
        f: impl FnOnce(&mut Self, usize) -> FsResult<T>,
    ) -> FsResult<T> {
        undo.ready().map_err(|e| {
            log::error!("{}: {e}", self.label);
            Errno::EIO
        })?;
        let len = self.backing_len()?;
        if start >= len {
            return f(self, 0);
        }
        let mut old = vec![0u8; (end.min(len) - start) as usize];
        self.file.read_exact_at(&mut old, start)?;
        let head = if tail_first {
            ce::empty_block_overlap(start, end, len).unwrap_or(0)
        } else {
            0
        };
        let recorded = head == 0;
        if recorded {
            undo.begin(start, len, &old)?;
        }
        let result = f(self, head);
        if result.is_err() {
            let rec = Record {
                id: self.id,
                offset: start,
                old_len: len,
                bytes: old,
            };
            if let Err(e) = rec.apply(&self.file) {
                // The record stays (or, for an empty file's block, the block does): the next
                // open restores the file.
                log::error!("{}: could not undo a failed write: {e}", self.label);
                undo.abandon();
                return result;
            }
        }
        if recorded {
            undo.end()?;
        }
        result
    }

    /// Plaintext of block `i` of a file of `size` bytes (empty past the end).
    fn block_plain(&self, i: u64, size: u64) -> FsResult<PlainBuf> {
        if i >= ce::block_count(size) {
            return Ok(PlainBuf::new());
        }
        self.read_blocks(i, i, size)
    }

    /// Before the file grows past its final block: makes that block full-length (still flagged
    /// last), so the layout stays valid whatever happens next. Returns its index if it must be
    /// re-flagged once the new blocks are written.
    fn prepare_growth(
        &mut self,
        size: u64,
        new_size: u64,
        first_written: u64,
    ) -> FsResult<Option<u64>> {
        let old_final = ce::block_count(size) - 1;
        if ce::block_count(new_size) - 1 <= old_final || first_written <= old_final {
            return Ok(None);
        }
        if ce::block_plain_len(old_final, size) < BLOCK {
            let mut p = self.block_plain(old_final, size)?;
            p.resize(BLOCK as usize, 0);
            self.write_run(old_final, &[(&p[..], true)])?;
        }
        Ok(Some(old_final))
    }

    /// Clears the last flag of a block that is no longer final.
    fn finish_growth(&mut self, old_final: Option<u64>, new_size: u64) -> FsResult<()> {
        if let Some(i) = old_final {
            let p = self.read_blocks(i, i, new_size)?;
            self.write_run(i, &[(&p[..], false)])?;
        }
        Ok(())
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> FsResult<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        let size = self.size()?;
        let new_size = size.max(end);
        let new_final = ce::block_count(new_size) - 1;
        let blocks = ce::blocks_touched(offset, data.len() as u64);
        let (first, last) = (*blocks.start(), *blocks.end());
        let reflag = self.prepare_growth(size, new_size, first)?;
        // After prepare_growth the old final block is full, so `grown` reads it correctly.
        let grown = if reflag.is_some() {
            ce::block_count(size) * BLOCK
        } else {
            size
        };
        // Whole blocks are encrypted straight from `data`; partial ones are merged first.
        let mut merged: Vec<PlainBuf> = Vec::new();
        let mut plan = Vec::with_capacity((last - first + 1) as usize);
        for i in first..=last {
            let bstart = i * BLOCK;
            let lo = offset.max(bstart) - bstart;
            let hi = end.min(bstart + BLOCK) - bstart;
            let src = (bstart + lo - offset) as usize..(bstart + hi - offset) as usize;
            let len = if i < new_final {
                BLOCK
            } else {
                ce::block_plain_len(i, new_size)
            };
            if lo == 0 && hi == BLOCK && len == BLOCK {
                plan.push((Ok(src), i == new_final));
                continue;
            }
            let mut p = if bstart >= grown {
                PlainBuf::with_capacity(BLOCK as usize)
            } else {
                self.block_plain(i, grown)?
            };
            p.resize(len as usize, 0);
            p[lo as usize..hi as usize].copy_from_slice(&data[src]);
            merged.push(p);
            plan.push((Err(merged.len() - 1), i == new_final));
        }
        let run: Vec<(&[u8], bool)> = plan
            .iter()
            .map(|(src, last)| match src {
                Ok(r) => (&data[r.clone()], *last),
                Err(k) => (&merged[*k][..], *last),
            })
            .collect();
        self.write_run(first, &run)?;
        self.finish_growth(reflag, new_size)?;
        Ok(data.len())
    }

    /// Sets the plaintext size (size 0 is handled by the caller: it gets a new id and key).
    pub fn truncate(&mut self, new_size: u64) -> FsResult<()> {
        let size = self.size()?;
        if new_size == size {
            return Ok(());
        }
        let new_final = ce::block_count(new_size) - 1;
        if new_size > size {
            let reflag = self.prepare_growth(size, new_size, new_final)?;
            let grown = if reflag.is_some() {
                ce::block_count(size) * BLOCK
            } else {
                size
            };
            let mut p = self.block_plain(new_final, grown)?;
            p.resize(ce::block_plain_len(new_final, new_size) as usize, 0);
            self.write_run(new_final, &[(&p[..], true)])?;
            return self.finish_growth(reflag, new_size);
        }
        let mut p = self.block_plain(new_final, size)?;
        p.truncate(ce::block_plain_len(new_final, new_size) as usize);
        if new_final < ce::block_count(size) - 1 {
            // The kept bytes first become a full-length final block, and the blocks after it
            // go: a crash from here on leaves a valid file holding every kept byte.
            let mut full = PlainBuf::with_capacity(BLOCK as usize);
            full.extend_from_slice(&p);
            full.resize(BLOCK as usize, 0);
            self.write_run(new_final, &[(&full[..], true)])?;
            self.file.set_len(ce::block_offset(new_final + 1))?;
        }
        // Then the final block at its exact length, both steps under one undo record.
        if p.len() < BLOCK as usize {
            self.in_place(ce::block_offset(new_final), u64::MAX, |s| {
                s.write_run(new_final, &[(&p[..], true)])?;
                Ok(s.file.set_len(ce::backing_len(new_size))?)
            })?;
        }
        Ok(())
    }

    /// Whether block `i` verifies as the final block (flagged last) at its full length.
    fn verifies_as_final(&self, i: u64, len: u64) -> bool {
        let Ok(cipher) = self.cipher() else {
            return false;
        };
        let start = ce::block_offset(i);
        let n = (len.min(start + CIPHER_BLOCK) - start.min(len)) as usize;
        let mut raw = vec![0u8; n];
        let mut out = PlainBuf::with_capacity(BLOCK as usize);
        n > 0
            && self.file.read_exact_at(&mut raw, start).is_ok()
            && cipher.decrypt_block(i, true, &raw, &mut out).is_ok()
    }

    /// A write interrupted by a crash (the kernel may stop a large write at a page boundary when
    /// the daemon is killed) can leave an incomplete tail after the last intact final block. If
    /// the file does not end in a block that verifies as final, this looks back (at most 512
    /// blocks: one write's worth) for a complete block flagged final and returns the length that
    /// ends there. Tampering does not produce such a block: outside a crash, only the true final
    /// block carries the flag.
    pub fn torn_tail(&self) -> FsResult<Option<u64>> {
        let len = self.backing_len()?;
        // A small file's first write leaves the empty block it replaces until its last step
        // (see `ce::empty_block_overlap`): if that block is still there, the write did not
        // finish, even if the rest of it did. Only that block verifies there: the file's own,
        // left by a crash, or replayed from an old copy (a rollback to empty, no more than
        // cutting the file to 0 bytes does).
        if (ce::EMPTY_LEN + 1..=ce::TAIL_FIRST_MAX).contains(&len)
            && self.verifies_as_final(0, ce::EMPTY_LEN)
        {
            return Ok(Some(ce::EMPTY_LEN));
        }
        let l = ce::layout(len);
        if l.valid && self.verifies_as_final(ce::block_count(l.size) - 1, len) {
            return Ok(None);
        }
        let complete = len.saturating_sub(ce::HEADER_LEN) / CIPHER_BLOCK;
        for i in (complete.saturating_sub(512)..complete).rev() {
            let end = ce::block_offset(i + 1);
            if self.verifies_as_final(i, end) {
                return Ok(Some(end));
            }
        }
        Ok(None)
    }

    /// The blocks that fail authentication, checked one by one (fsck); EIO if the backing
    /// length itself is invalid.
    pub fn bad_blocks(&self) -> FsResult<Vec<u64>> {
        let len = self.backing_len()?;
        let l = ce::layout(len);
        if !l.valid {
            return Err(Errno::EIO);
        }
        let cipher = self.cipher()?;
        let final_index = ce::block_count(l.size) - 1;
        let mut bad = Vec::new();
        let mut raw = vec![0u8; CIPHER_BLOCK as usize];
        let mut out = Vec::with_capacity(BLOCK as usize);
        for i in 0..=final_index {
            let n = (ce::block_plain_len(i, l.size) + ce::OVERHEAD) as usize;
            out.clear();
            let ok = self
                .file
                .read_exact_at(&mut raw[..n], ce::block_offset(i))
                .is_ok()
                && cipher
                    .decrypt_block(i, i == final_index, &raw[..n], &mut out)
                    .is_ok();
            if !ok {
                bad.push(i);
            }
        }
        Ok(bad)
    }
}

impl Drop for FileContent {
    /// Hands unused reservations back, so reopening a file does not use up its key's budget.
    fn drop(&mut self) {
        if self.persist_counter && self.used < self.reserved {
            if let Err(e) = self
                .file
                .write_all_at(&self.used.to_be_bytes(), COUNTER_OFFSET as u64)
            {
                log::warn!("{}: could not record its block count: {e}", self.label);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::header::HEADER_LEN;

    /// A file content over a temp file, with the header's block counter preset.
    fn content(counter: u64) -> (tempfile::NamedTempFile, FileContent) {
        let t = tempfile::NamedTempFile::new().unwrap();
        let mut h = vec![0u8; HEADER_LEN];
        h[COUNTER_OFFSET..COUNTER_OFFSET + 8].copy_from_slice(&counter.to_be_bytes());
        let keys = DataKeys::derive(&[9u8; 32], &[1u8; 16]);
        let c = FileContent::new(
            t.reopen().unwrap(),
            &keys,
            [1u8; 16],
            &h,
            "test".into(),
            None,
        );
        c.file.write_all_at(&h, 0).unwrap();
        let mut empty = Vec::new();
        c.cipher()
            .unwrap()
            .encrypt_block(0, true, &[], &mut empty)
            .unwrap();
        c.file.write_all_at(&empty, HEADER_LEN as u64).unwrap();
        (t, c)
    }

    /// `content` with an undo journal (kept in the returned directory).
    fn journaled_content() -> (
        tempfile::TempDir,
        std::sync::Arc<Journal>,
        tempfile::NamedTempFile,
        FileContent,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), true).unwrap().unwrap();
        let (t, mut c) = content(0);
        c.journal_to(j.clone());
        (dir, j, t, c)
    }

    #[test]
    fn write_read_truncate_on_a_plain_file() {
        let (_t, mut c) = content(0);
        assert_eq!(c.size().unwrap(), 0);
        c.write(5000, b"abc").unwrap();
        assert_eq!(c.size().unwrap(), 5003);
        assert_eq!(&c.read(4998, 10).unwrap()[..], &[0, 0, b'a', b'b', b'c']);
        c.truncate(5001).unwrap();
        assert_eq!(&c.read(4999, 10).unwrap()[..], &[0, b'a']);
        c.truncate(20000).unwrap();
        assert_eq!(c.size().unwrap(), 20000);
        assert!(c.bad_blocks().unwrap().is_empty());
    }

    #[test]
    fn read_into_matches_read_and_wipes_what_it_decrypted_beyond_the_reply() {
        let (_t, mut c) = content(0);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8 + 1).collect();
        c.write(0, &data).unwrap();
        for (offset, len) in [
            (0u64, 10_000u32),
            (5_000, 3_000),
            (4_095, 2),
            (9_999, 100),
            (12_000, 5),
        ] {
            let mut dst = vec![0xAAu8; 4 * BLOCK as usize];
            let n = c.read_into(offset, len, &mut dst).unwrap();
            assert_eq!(
                &dst[..n],
                &c.read(offset, len).unwrap()[..],
                "at {offset}+{len}"
            );
            let end = (offset + u64::from(len)).min(10_000);
            assert_eq!(n as u64, end.saturating_sub(offset));
            if n > 0 {
                // Blocks first..=last were decrypted into dst; all of it past the reply is zero.
                let first = offset / BLOCK;
                let last = (end - 1) / BLOCK;
                let decrypted =
                    ((last - first) * BLOCK) as usize + ce::block_plain_len(last, 10_000) as usize;
                assert!(
                    dst[n..decrypted].iter().all(|b| *b == 0),
                    "at {offset}+{len}"
                );
                assert!(
                    dst[decrypted..].iter().all(|b| *b == 0xAA),
                    "at {offset}+{len}"
                );
            }
        }
        // Too small a buffer for whole blocks is an error, never a short or wrong read.
        let mut small = vec![0u8; 100];
        assert_eq!(c.read_into(5_000, 100, &mut small), Err(Errno::ERANGE));
    }

    /// A read learns the file's end from what it reads: a length no valid file has fails the
    /// reads that reach it (and `size`), while blocks before it still authenticate as they are.
    #[test]
    fn a_read_that_reaches_a_damaged_end_fails_and_earlier_blocks_still_read() {
        let (_t, mut c) = content(0);
        let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        c.write(0, &data).unwrap();
        assert_eq!(&c.read(4000, 200).unwrap()[..], &data[4000..4200]);
        assert_eq!(c.read(3 * 4096 + 100, 10).unwrap().len(), 0, "at the end");
        assert_eq!(c.read(1 << 40, 10).unwrap().len(), 0, "far past it");
        let top = i64::MAX as u64 - 5;
        assert_eq!(c.read(top, 4).unwrap().len(), 0, "past any file offset");
        // The final block cut short of its nonce and tag.
        c.file.set_len(ce::block_offset(3) + 5).unwrap();
        assert_eq!(c.size(), Err(Errno::EIO));
        assert_eq!(c.read(3 * 4096 - 10, 20).map(|b| b.len()), Err(Errno::EIO));
        assert_eq!(&c.read(0, 8192).unwrap()[..], &data[..8192]);
        // Cut at a block boundary: block 2 is now the last one, but not flagged final.
        c.file.set_len(ce::block_offset(3)).unwrap();
        assert_eq!(c.read(2 * 4096, 4096).map(|b| b.len()), Err(Errno::EIO));
        assert_eq!(&c.read(4096, 4096).unwrap()[..], &data[4096..8192]);
    }

    #[test]
    fn in_place_rewrites_leave_an_undo_record_until_they_finish() {
        use crate::fs::undo::Pending;
        let (_dir, j, t, mut c) = journaled_content();
        c.write(0, &[1u8; 3 * 4096]).unwrap();
        c.write(100, &[3u8; 10]).unwrap();
        assert_eq!(j.pending(&c.id).unwrap(), Pending::Empty, "finished writes");
        let before = std::fs::read(t.path()).unwrap();
        // A data write that fails after its record is out (a read-only descriptor), and whose
        // undo fails too: the record must hold exactly the bytes it was about to replace.
        let writable = std::mem::replace(&mut c.file, std::fs::File::open(t.path()).unwrap());
        assert!(c.write(4096 + 7, &[2u8; 5000]).is_err());
        let Pending::Restore(r) = j.pending(&c.id).unwrap() else {
            panic!("no undo record")
        };
        let (b1, b3) = (ce::block_offset(1) as usize, before.len());
        assert_eq!((r.offset, r.old_len), (b1 as u64, b3 as u64));
        assert_eq!(r.bytes, before[b1..b3]);
        // The crash tore the rewrite: half of block 1 changed, the file grew.
        writable
            .write_all_at(&[0x55; 3000], b1 as u64 + 500)
            .unwrap();
        writable.set_len(b3 as u64 + 9000).unwrap();
        c.file = writable;
        // Until the file is opened again (and restored), this state takes no more writes, not
        // even appends: a later write could otherwise be undone by the stale record.
        assert_eq!(
            c.write(b3 as u64 * 10, b"append").map_err(|e| e.0),
            Err(libc::EIO)
        );
        assert!(c.read(0, 3 * 4096).is_err());
        assert!(j.recover(&c.id, &c.file, "test").unwrap());
        assert_eq!(std::fs::read(t.path()).unwrap(), before);
        let mut want = vec![1u8; 3 * 4096];
        want[100..110].fill(3);
        assert_eq!(&c.read(0, 3 * 4096).unwrap()[..], &want[..]);
    }

    /// Long runs take the streamed path (sealed and written piece by piece): appends and
    /// rewrites read back, and a rewrite that fails leaves the record of what it replaced.
    #[test]
    fn long_runs_written_piece_by_piece_read_back_and_fail_under_their_record() {
        use crate::fs::undo::Pending;
        let (_dir, j, t, mut c) = journaled_content();
        let n = (STREAM_BLOCKS + 3 * ce::PIECE_BLOCKS) * BLOCK as usize + 123;
        let data: Vec<u8> = (0..n).map(|i| (i % 253) as u8).collect();
        c.write(0, &data).unwrap();
        // Shorter than the first run: sealed into this thread's buffer, longer and holding
        // the first run's ciphertext.
        let patch = vec![7u8; STREAM_BLOCKS * BLOCK as usize + 10];
        c.write(5 * BLOCK + 1, &patch).unwrap();
        let mut want = data.clone();
        want[5 * BLOCK as usize + 1..][..patch.len()].copy_from_slice(&patch);
        assert_eq!(&c.read(0, n as u32).unwrap()[..], &want[..]);
        assert!(c.bad_blocks().unwrap().is_empty());
        assert_eq!(j.pending(&c.id).unwrap(), Pending::Empty);
        let before = std::fs::read(t.path()).unwrap();
        let writable = std::mem::replace(&mut c.file, std::fs::File::open(t.path()).unwrap());
        assert!(c.write(BLOCK, &patch).is_err());
        let Pending::Restore(r) = j.pending(&c.id).unwrap() else {
            panic!("no undo record")
        };
        let b1 = ce::block_offset(1) as usize;
        assert_eq!(r.offset, b1 as u64);
        assert_eq!(r.bytes, before[b1..][..r.bytes.len()]);
        c.file = writable;
        assert!(j.recover(&c.id, &c.file, "test").unwrap());
        assert_eq!(std::fs::read(t.path()).unwrap(), before);
    }

    /// A streamed rewrite whose backing write fails after two pieces went out is undone at once
    /// from its record, also where it reached past the old end.
    #[test]
    fn a_streamed_rewrite_failing_midway_is_undone_at_once() {
        use crate::fs::undo::Pending;
        let (_dir, j, t, mut c) = journaled_content();
        let blocks = STREAM_BLOCKS + 2 * ce::PIECE_BLOCKS;
        c.write(0, &vec![1u8; blocks * BLOCK as usize]).unwrap();
        let before = std::fs::read(t.path()).unwrap();
        let patch = [9u8; BLOCK as usize];
        let run: Vec<(&[u8], bool)> = (0..blocks).map(|_| (&patch[..], false)).collect();
        let piece = ce::PIECE_BLOCKS * CIPHER_BLOCK as usize;
        for first in [2, blocks as u64 - 3] {
            let start = ce::block_offset(first);
            let end = start + (blocks as u64) * CIPHER_BLOCK;
            let mut written = 0;
            let r = c.in_place(start, end, |s| {
                let file = &s.file;
                s.cipher()?
                    .seal_run_streamed(first, &run, &mut Vec::new(), |at, sealed| {
                        if at >= 2 * piece {
                            return Err(std::io::Error::other("disk full"));
                        }
                        written += 1;
                        file.write_all_at(sealed, start + at as u64)
                    })
                    .map_err(|_| Errno::EIO)
            });
            assert_eq!(r, Err(Errno::EIO));
            assert_eq!(written, 2, "two pieces went out first");
            assert_eq!(
                std::fs::read(t.path()).unwrap(),
                before,
                "from block {first}"
            );
            assert_eq!(j.pending(&c.id).unwrap(), Pending::Empty);
        }
    }

    #[test]
    fn a_torn_append_is_cut_back_to_the_last_intact_end() {
        let (t, mut c) = content(0);
        c.write(0, &[1u8; 3 * 4096]).unwrap();
        let before = std::fs::read(t.path()).unwrap();
        c.write(3 * 4096, &[2u8; 5 * 4096]).unwrap();
        let after = std::fs::read(t.path()).unwrap();
        // The crash: the run of new blocks cut at a page boundary, the old final still flagged.
        let mut torn = after[..7 * 4096].to_vec();
        let b2 = ce::block_offset(2) as usize;
        torn[b2..b2 + CIPHER_BLOCK as usize]
            .copy_from_slice(&before[b2..b2 + CIPHER_BLOCK as usize]);
        std::fs::write(t.path(), &torn).unwrap();
        assert_eq!(c.torn_tail().unwrap(), Some(ce::block_offset(3)));
        c.file.set_len(ce::block_offset(3)).unwrap();
        assert_eq!(&c.read(0, 4 * 4096).unwrap()[..], &[1u8; 3 * 4096][..]);
        // A clean file cut inside its final block has no intact end to go back to.
        std::fs::write(t.path(), &after[..after.len() - 100]).unwrap();
        assert_eq!(c.torn_tail().unwrap(), None);
        std::fs::write(t.path(), &after).unwrap();
        assert_eq!(c.torn_tail().unwrap(), None);
    }

    /// A small file's first write takes no undo record: what replaces the empty block goes
    /// last, and a crash before that leaves the empty block for `torn_tail` to cut back to.
    #[test]
    fn a_first_write_goes_tail_first_and_a_torn_one_is_cut_back_to_empty() {
        use crate::fs::undo::Pending;
        for size in [1usize, 3000, 4096, 5000, 8192] {
            let (dir, j, t, mut c) = journaled_content();
            let empty = std::fs::read(t.path()).unwrap();
            assert_eq!(empty.len() as u64, ce::EMPTY_LEN);
            c.write(0, &vec![7u8; size]).unwrap();
            let after = std::fs::read(t.path()).unwrap();
            assert_eq!(c.torn_tail().unwrap(), None, "{size}: a finished write");
            assert_eq!(&c.read(0, size as u32).unwrap()[..], &vec![7u8; size][..]);
            // No record was ever made for it.
            let records = std::fs::read_dir(dir.path().join(crate::fs::undo::JOURNAL_DIR))
                .map_or(0, |d| d.count());
            assert_eq!(records, 0, "{size}");
            assert_eq!(j.pending(&c.id).unwrap(), Pending::None);
            // Killed before the last step, at any page boundary of the rest or after all of
            // it: the old empty block is still at the start.
            let h = ce::HEADER_LEN as usize;
            let cuts = (1..=after.len() / 4096)
                .map(|p| p * 4096)
                .filter(|&p| p > ce::EMPTY_LEN as usize)
                .chain([after.len()]);
            for cut in cuts {
                let mut torn = after[..cut.min(after.len())].to_vec();
                torn[h..ce::EMPTY_LEN as usize].copy_from_slice(&empty[h..]);
                std::fs::write(t.path(), &torn).unwrap();
                assert_eq!(
                    c.torn_tail().unwrap(),
                    Some(ce::EMPTY_LEN),
                    "{size} cut at {cut}"
                );
            }
            c.file.set_len(ce::EMPTY_LEN).unwrap();
            assert_eq!(c.size().unwrap(), 0);
            assert!(c.bad_blocks().unwrap().is_empty());
        }
    }

    /// A first write past the first block of an empty file fills block 0 out first (the growth
    /// step goes tail first too), and growing an empty file by truncation: both read back.
    #[test]
    fn growing_an_empty_file_reads_back() {
        let (_dir, _j, _t, mut c) = journaled_content();
        c.write(5000, b"abc").unwrap();
        assert_eq!(c.torn_tail().unwrap(), None);
        let mut want = vec![0u8; 5003];
        want[5000..].copy_from_slice(b"abc");
        assert_eq!(&c.read(0, 6000).unwrap()[..], &want[..]);
        assert!(c.bad_blocks().unwrap().is_empty());
        let (_dir, _j, _t, mut c) = journaled_content();
        c.truncate(6000).unwrap();
        assert_eq!(&c.read(0, 7000).unwrap()[..], &[0u8; 6000][..]);
        assert_eq!(c.torn_tail().unwrap(), None);
        assert!(c.bad_blocks().unwrap().is_empty());
    }

    #[test]
    fn the_head_goes_last_and_whole() {
        let mut calls = Vec::new();
        write_head_last(b"abcdef", 100, 2, |b, at| {
            calls.push((b.to_vec(), at));
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, [(b"cdef".to_vec(), 102), (b"ab".to_vec(), 100)]);
        calls.clear();
        write_head_last(b"abc", 7, 0, |b, at| {
            calls.push((b.to_vec(), at));
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, [(b"abc".to_vec(), 7)]);
        // A failed first step writes no head.
        let mut n = 0;
        let r = write_head_last(b"abc", 0, 1, |_, _| {
            n += 1;
            Err(std::io::Error::other("full"))
        });
        assert!(r.is_err());
        assert_eq!(n, 1);
    }

    /// Writes over anything but an empty file's block still go under a record: a first write
    /// of more than two blocks, and a rewrite of a block with content.
    #[test]
    fn longer_first_writes_and_rewrites_still_take_a_record() {
        let (dir, _j, _t, mut c) = journaled_content();
        c.write(0, &[1u8; 3 * 4096]).unwrap();
        let record = dir
            .path()
            .join(crate::fs::undo::JOURNAL_DIR)
            .join(hex::encode(c.id));
        assert!(record.exists(), "a three-block first write");
        let (dir, _j, _t, mut c) = journaled_content();
        c.write(0, b"abc").unwrap();
        c.write(1, b"x").unwrap();
        let record = dir
            .path()
            .join(crate::fs::undo::JOURNAL_DIR)
            .join(hex::encode(c.id));
        assert!(record.exists(), "a rewrite of a block with content");
    }

    #[test]
    fn revoked_content_refuses_reads_and_writes() {
        let (_t, mut c) = content(0);
        c.write(0, b"secret").unwrap();
        c.revoke();
        assert!(c.is_revoked());
        assert_eq!(c.read(0, 6).err(), Some(Errno::EACCES));
        assert_eq!(c.write(0, b"x").err(), Some(Errno::EACCES));
    }

    #[test]
    fn block_budget_is_reserved_ahead_and_enforced() {
        let (_t, mut c) = content(0);
        c.write(0, b"x").unwrap();
        assert_eq!(
            header::counter(&read_header(&c)),
            1 + RESERVATION,
            "reserved before use"
        );
        drop(c);
        assert_eq!(
            header::counter(&std::fs::read(_t.path()).unwrap()),
            1,
            "given back on close"
        );
        let (_t2, mut near) = content(ce::MAX_BLOCK_ENCRYPTIONS - 1);
        near.write(0, b"y").unwrap();
        assert_eq!(
            near.write(0, b"z"),
            Err(Errno::EFBIG),
            "2^32 blocks per data key at most"
        );
    }

    fn read_header(c: &FileContent) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        c.file.read_exact_at(&mut h, 0).unwrap();
        h
    }
}
