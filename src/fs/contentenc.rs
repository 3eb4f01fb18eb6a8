//! File content format: the header, then fixed 4 KiB plaintext blocks, each AES-256-GCM with its own
//! random nonce. This module owns the offset arithmetic (pure functions) and the block cipher.
//!
//! Block `i` is stored at `HEADER_LEN + i * CIPHER_BLOCK` as `nonce (12) || ciphertext || tag (16)`.
//! Its AAD is `file id (16) || i (u64) || last (u8)`: a block moved within or between files fails,
//! and the final block carries `last = 1`, so cutting whole blocks off the end is detected (age's
//! STREAM construction). Every file has at least one block; an empty file is one empty final block.
//! A backing block of all zeros is a hole and reads as zeros.

use crate::cryptocore::{self, KEY_LEN, NONCE_LEN, TAG_LEN};
use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use zeroize::Zeroize;

pub const BLOCK: u64 = 4096;
pub const OVERHEAD: u64 = (NONCE_LEN + TAG_LEN) as u64;
pub const CIPHER_BLOCK: u64 = BLOCK + OVERHEAD;
pub const HEADER_LEN: u64 = crate::fs::header::HEADER_LEN as u64;
/// Random 96-bit nonces: at most 2^32 block encryptions per data key.
pub const MAX_BLOCK_ENCRYPTIONS: u64 = 1 << 32;
/// Runs of at least this many blocks are encrypted and decrypted on several threads.
const PARALLEL_BLOCKS: usize = 64;
/// Blocks per piece when a long run is sealed and handed on piece by piece (128 KiB).
pub const PIECE_BLOCKS: usize = 32;
// Each piece is sealed on one thread (the streamed run supplies the parallelism).
const _: () = assert!(PIECE_BLOCKS < PARALLEL_BLOCKS);

/// Backing bytes of consecutive blocks: each one's plaintext with its nonce and tag.
pub fn sealed_len(blocks: &[(&[u8], bool)]) -> usize {
    blocks
        .iter()
        .map(|(p, _)| p.len() + OVERHEAD as usize)
        .sum()
}

/// The first `n` bytes of `scratch`, grown to that length if shorter, for ciphertext (sealed
/// output, or blocks read from a file). The bytes there are overwritten, so a caller that keeps
/// `scratch` from run to run saves zeroing a fresh buffer each time; it is left holding
/// ciphertext only (not secret).
pub fn sized(scratch: &mut Vec<u8>, n: usize) -> &mut [u8] {
    if scratch.len() < n {
        scratch.resize(n, 0);
    }
    &mut scratch[..n]
}

/// Nonces for `n` blocks, from one call to the random source.
fn nonces_for(n: usize) -> Result<Vec<u8>, cryptocore::RandomError> {
    let mut nonces = vec![0u8; n * NONCE_LEN];
    cryptocore::fill_random(&mut nonces)?;
    Ok(nonces)
}

/// Why a streamed run stopped: the random source, or the sink.
#[derive(Debug)]
pub enum StreamError<E> {
    Random(cryptocore::RandomError),
    Sink(E),
}

/// A piece of a streamed run: its first block's position in the run, its plaintext blocks and
/// nonces, and where its sealed bytes go.
struct Piece<'a, 'p> {
    k0: usize,
    blocks: &'a [(&'p [u8], bool)],
    nonces: &'a [u8],
    out: &'a mut [u8],
}

/// What a backing file's length says about its plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Plaintext size in bytes.
    pub size: u64,
    /// False if the length cannot be a valid file (header missing, or a block shorter than its
    /// nonce and tag); reads then fail with EIO.
    pub valid: bool,
}

/// Plaintext size of a backing file of `len` bytes.
pub fn layout(len: u64) -> Layout {
    if len < HEADER_LEN + OVERHEAD {
        return Layout {
            size: 0,
            valid: false,
        };
    }
    let data = len - HEADER_LEN;
    let full = data / CIPHER_BLOCK;
    let rem = data % CIPHER_BLOCK;
    match rem {
        0 => Layout {
            size: full * BLOCK,
            valid: true,
        },
        r if r >= OVERHEAD => Layout {
            size: full * BLOCK + r - OVERHEAD,
            valid: true,
        },
        _ => Layout {
            size: full * BLOCK,
            valid: false,
        },
    }
}

/// Number of blocks a file of `size` plaintext bytes has (at least one).
pub fn block_count(size: u64) -> u64 {
    size.div_ceil(BLOCK).max(1)
}

/// Backing length of a file of `size` plaintext bytes.
pub fn backing_len(size: u64) -> u64 {
    let n = block_count(size);
    let last_plain = size - (n - 1) * BLOCK;
    HEADER_LEN + (n - 1) * CIPHER_BLOCK + last_plain + OVERHEAD
}

/// Backing offset of block `i`.
pub fn block_offset(i: u64) -> u64 {
    HEADER_LEN + i * CIPHER_BLOCK
}

/// Plaintext length of block `i` in a file of `size` bytes (0 for blocks past the end).
pub fn block_plain_len(i: u64, size: u64) -> u64 {
    let start = i * BLOCK;
    if i >= block_count(size) {
        0
    } else {
        (size - start.min(size)).min(BLOCK)
    }
}

/// Backing length of an empty file: its header and one empty final block.
pub const EMPTY_LEN: u64 = HEADER_LEN + OVERHEAD;
// The empty block lies inside the first page, where a killed writer cannot tear a write.
const _: () = assert!(EMPTY_LEN <= 4096);

/// The longest backing file whose first write can have gone tail first: two blocks.
pub const TAIL_FIRST_MAX: u64 = HEADER_LEN + 2 * CIPHER_BLOCK;

/// For a write of sealed bytes `start..end` into a backing file of `len` bytes: how many of
/// its first bytes replace existing ones, when all they replace is an empty file's block and
/// the write is at most two blocks (a small file's first write). Those bytes (where the empty
/// block's nonce and tag are, inside the first page, so a killed writer cannot tear them) are
/// then written last: until then the empty block is intact, for `torn_tail` to cut back to, so
/// the write needs no undo record. None when the write replaces anything else.
pub fn empty_block_overlap(start: u64, end: u64, len: u64) -> Option<usize> {
    (start == HEADER_LEN && len == EMPTY_LEN && end > len && end <= TAIL_FIRST_MAX)
        .then_some(OVERHEAD as usize)
}

/// Indexes of the blocks that bytes `[offset, offset + len)` touch (len > 0).
pub fn blocks_touched(offset: u64, len: u64) -> std::ops::RangeInclusive<u64> {
    offset / BLOCK..=(offset + len - 1) / BLOCK
}

/// Where a read of `len` bytes (> 0) at `offset` looks before it knows the file's length: every
/// block the range touches, read whole, and one byte more, whose presence says the file goes
/// on past them. What comes back sizes the read, so it needs no fstat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadWindow {
    pub first: u64,
    pub last: u64,
    /// Backing offset of block `first`.
    pub start: u64,
    /// Bytes to ask for.
    pub len: usize,
}

/// None when the window would end past the largest file offset (no file reaches there: the
/// read is past its end).
pub fn read_window(offset: u64, len: u64) -> Option<ReadWindow> {
    let blocks = blocks_touched(offset, len);
    let (first, last) = (*blocks.start(), *blocks.end());
    let start = first.checked_mul(CIPHER_BLOCK)?.checked_add(HEADER_LEN)?;
    let n = (last - first + 1) * CIPHER_BLOCK + 1;
    (start.checked_add(n)? <= i64::MAX as u64).then_some(ReadWindow {
        first,
        last,
        start,
        len: n as usize,
    })
}

/// What a read of `len` bytes at `offset` has to decrypt, given that its window came back
/// with `got` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The read starts at or past the end of the file.
    End,
    /// The blocks in the window's first `raw_len` bytes, the one numbered `final_index` being
    /// the file's final block (if among them), and the read ends at plaintext offset `end`.
    Blocks {
        raw_len: usize,
        final_index: u64,
        end: u64,
    },
    /// The file ends where no valid file can end (cut or damaged).
    Invalid,
}

pub fn seen(offset: u64, len: u64, w: &ReadWindow, got: usize) -> Seen {
    if got >= w.len {
        // All the window's blocks are whole, and not final: more follows.
        return Seen::Blocks {
            raw_len: w.len - 1,
            final_index: w.last + 1,
            end: offset + len,
        };
    }
    // The file ends inside the window (or before it, when nothing came back: then the
    // length below is the window's start, a block boundary, which reads as the end).
    let l = layout(w.start + got as u64);
    if !l.valid {
        return Seen::Invalid;
    }
    if offset >= l.size {
        return Seen::End;
    }
    let end = l.size.min(offset + len);
    let last = (end - 1) / BLOCK;
    Seen::Blocks {
        raw_len: (block_offset(last) + block_plain_len(last, l.size) + OVERHEAD - w.start) as usize,
        final_index: block_count(l.size) - 1,
        end,
    }
}

/// Plaintext bytes in a run of `raw_len` bytes of consecutive encrypted blocks.
pub fn plain_len(raw_len: usize) -> usize {
    let full = raw_len / CIPHER_BLOCK as usize;
    let rest = raw_len % CIPHER_BLOCK as usize;
    full * BLOCK as usize + rest.saturating_sub(OVERHEAD as usize)
}

/// A block that failed authentication: tampered, moved, torn, or cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockError {
    pub index: u64,
}

/// Splits `buf` into consecutive slots of the given lengths.
fn carve<'a>(mut buf: &'a mut [u8], lens: &[usize]) -> Vec<&'a mut [u8]> {
    let mut slots = Vec::with_capacity(lens.len());
    for &n in lens {
        let (slot, tail) = buf.split_at_mut(n);
        slots.push(slot);
        buf = tail;
    }
    slots
}

/// Runs `f(k, job)` for each job of a run: on several threads for long runs, in order for short
/// ones (where starting threads costs more than it saves).
fn for_each_block<J: Send, E: Send>(
    jobs: Vec<J>,
    f: impl Fn(usize, J) -> Result<(), E> + Sync,
) -> Result<(), E> {
    use rayon::prelude::*;
    if jobs.len() >= PARALLEL_BLOCKS {
        jobs.into_par_iter()
            .enumerate()
            .try_for_each(|(k, j)| f(k, j))
    } else {
        jobs.into_iter().enumerate().try_for_each(|(k, j)| f(k, j))
    }
}

/// AES-256-GCM over one file's blocks.
pub struct ContentCipher {
    aead: Aes256Gcm,
    file_id: [u8; 16],
}

impl ContentCipher {
    pub fn new(content_key: &[u8; KEY_LEN], file_id: [u8; 16]) -> Self {
        ContentCipher {
            aead: Aes256Gcm::new(&(*content_key).into()),
            file_id,
        }
    }

    fn aad(&self, index: u64, last: bool) -> [u8; 25] {
        let mut a = [0u8; 25];
        a[..16].copy_from_slice(&self.file_id);
        a[16..24].copy_from_slice(&index.to_be_bytes());
        a[24] = u8::from(last);
        a
    }

    /// Appends the encryption of one block (at most BLOCK bytes) to `out`.
    pub fn encrypt_block(
        &self,
        index: u64,
        last: bool,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), cryptocore::RandomError> {
        let mut nonce = [0u8; NONCE_LEN];
        cryptocore::fill_random(&mut nonce)?;
        self.encrypt_block_with(nonce, index, last, plaintext, out)
    }

    fn encrypt_block_with(
        &self,
        nonce: [u8; NONCE_LEN],
        index: u64,
        last: bool,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), cryptocore::RandomError> {
        let start = out.len();
        out.resize(start + plaintext.len() + OVERHEAD as usize, 0);
        self.seal_into(&nonce, index, last, plaintext, &mut out[start..])
    }

    /// Encrypts one block into `slot` (exactly `plaintext.len() + OVERHEAD` bytes) as
    /// nonce || ciphertext || tag.
    fn seal_into(
        &self,
        nonce: &[u8],
        index: u64,
        last: bool,
        plaintext: &[u8],
        slot: &mut [u8],
    ) -> Result<(), cryptocore::RandomError> {
        let (n, rest) = slot.split_at_mut(NONCE_LEN);
        n.copy_from_slice(nonce);
        let (body, tag_out) = rest.split_at_mut(plaintext.len());
        let nonce = Nonce::try_from(nonce).map_err(|_| cryptocore::RandomError)?;
        // Straight from the plaintext into the slot, without copying it there first.
        let buf = InOutBuf::new(plaintext, body).map_err(|_| cryptocore::RandomError)?;
        let tag = self
            .aead
            .encrypt_inout_detached(&nonce, &self.aad(index, last), buf)
            .map_err(|_| cryptocore::RandomError)?;
        tag_out.copy_from_slice(&tag);
        Ok(())
    }

    /// Seals consecutive blocks `first, first + 1, ...` (each at most BLOCK bytes, with its last
    /// flag) into `scratch` and returns the sealed bytes: one call to the random source for all
    /// nonces, and large runs spread over the CPUs. See `sized` for `scratch`.
    pub fn encrypt_run<'s>(
        &self,
        first: u64,
        blocks: &[(&[u8], bool)],
        scratch: &'s mut Vec<u8>,
    ) -> Result<&'s [u8], cryptocore::RandomError> {
        let nonces = nonces_for(blocks.len())?;
        let out = sized(scratch, sealed_len(blocks));
        self.seal_blocks(first, blocks, &nonces, out)?;
        Ok(out)
    }

    /// Seals `blocks` (block `first` on), with one nonce each from `nonces`, into `out`, which
    /// is exactly their sealed length: on several threads for long runs.
    fn seal_blocks(
        &self,
        first: u64,
        blocks: &[(&[u8], bool)],
        nonces: &[u8],
        out: &mut [u8],
    ) -> Result<(), cryptocore::RandomError> {
        let lens: Vec<usize> = blocks
            .iter()
            .map(|(p, _)| p.len() + OVERHEAD as usize)
            .collect();
        let jobs: Vec<_> = blocks
            .iter()
            .zip(nonces.chunks(NONCE_LEN))
            .zip(carve(out, &lens))
            .collect();
        for_each_block(jobs, |k, ((&(plain, last), nonce), slot)| {
            self.seal_into(nonce, first + k as u64, last, plain, slot)
        })
    }

    /// Seals a run as `encrypt_run` does, handing each piece of `PIECE_BLOCKS` blocks to
    /// `sink(byte offset in the run, sealed bytes)` in order as soon as it is sealed. The first
    /// piece is sealed on this thread and the rest, one after the other, on one crypto worker,
    /// so that the sink's work on one piece (writing it out) overlaps the sealing of the next.
    /// A failing sink stops the run. Must not be called from a crypto worker: it waits for one.
    /// The pieces are sealed into `scratch` (see `sized`).
    pub fn seal_run_streamed<E>(
        &self,
        first: u64,
        blocks: &[(&[u8], bool)],
        scratch: &mut Vec<u8>,
        mut sink: impl FnMut(usize, &[u8]) -> Result<(), E>,
    ) -> Result<(), StreamError<E>> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let nonces = nonces_for(blocks.len()).map_err(StreamError::Random)?;
        let piece_lens: Vec<usize> = blocks.chunks(PIECE_BLOCKS).map(sealed_len).collect();
        let mut pieces = blocks
            .chunks(PIECE_BLOCKS)
            .zip(nonces.chunks(PIECE_BLOCKS * NONCE_LEN))
            .zip(carve(sized(scratch, sealed_len(blocks)), &piece_lens))
            .enumerate()
            .map(|(p, ((blocks, nonces), out))| Piece {
                k0: p * PIECE_BLOCKS,
                blocks,
                nonces,
                out,
            });
        let Some(head) = pieces.next() else {
            return Ok(());
        };
        let rest: Vec<Piece<'_, '_>> = pieces.collect();
        let stop = AtomicBool::new(false);
        rayon::in_place_scope(|s| {
            let (tx, rx) = std::sync::mpsc::channel();
            let stop = &stop;
            s.spawn(move |_| {
                for p in rest {
                    if stop.load(Ordering::Relaxed) || tx.send(self.seal_piece(first, p)).is_err() {
                        break;
                    }
                }
            });
            let mut at = 0;
            for r in std::iter::once(self.seal_piece(first, head)).chain(rx) {
                let step = r.map_err(StreamError::Random).and_then(|sealed| {
                    sink(at, sealed).map_err(StreamError::Sink)?;
                    at += sealed.len();
                    Ok(())
                });
                if step.is_err() {
                    // The worker stops before its next piece (or when its send fails).
                    stop.store(true, Ordering::Relaxed);
                    return step;
                }
            }
            Ok(())
        })
    }

    /// Seals a piece (on this thread: a piece is shorter than a parallel run) and hands back its
    /// sealed bytes.
    fn seal_piece<'a>(
        &self,
        first: u64,
        p: Piece<'a, '_>,
    ) -> Result<&'a [u8], cryptocore::RandomError> {
        self.seal_blocks(first + p.k0 as u64, p.blocks, p.nonces, &mut *p.out)?;
        Ok(p.out)
    }

    /// Decrypts consecutive blocks of `raw` (each CIPHER_BLOCK long but the file's final one),
    /// the first being block `first` and `final_index` the file's final block, appending the
    /// plaintext to `out`. Large runs are spread over the CPUs. On failure nothing is appended
    /// (and no partial plaintext stays behind).
    pub fn decrypt_run(
        &self,
        first: u64,
        final_index: u64,
        raw: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), BlockError> {
        let start = out.len();
        out.resize(start + plain_len(raw.len()), 0);
        let r = self.decrypt_run_into(first, final_index, raw, &mut out[start..]);
        if r.is_err() {
            out.truncate(start);
        }
        r
    }

    /// `decrypt_run` into the front of `out`, which must hold `plain_len(raw.len())` bytes
    /// (a shorter one fails as the first block). Wiped again if a block fails.
    pub fn decrypt_run_into(
        &self,
        first: u64,
        final_index: u64,
        raw: &[u8],
        out: &mut [u8],
    ) -> Result<(), BlockError> {
        let chunks: Vec<&[u8]> = raw.chunks(CIPHER_BLOCK as usize).collect();
        let lens: Vec<usize> = chunks
            .iter()
            .map(|c| c.len().saturating_sub(OVERHEAD as usize))
            .collect();
        let out = out
            .get_mut(..lens.iter().sum::<usize>())
            .ok_or(BlockError { index: first })?;
        let jobs: Vec<_> = chunks.into_iter().zip(carve(out, &lens)).collect();
        let r = for_each_block(jobs, |k, (chunk, slot)| {
            let i = first + k as u64;
            self.decrypt_block_into(i, i == final_index, chunk, slot)
        });
        if r.is_err() {
            out.zeroize();
        }
        r
    }

    /// Authenticates and decrypts `body` into `out` (same length), without copying it there
    /// first.
    fn open(
        &self,
        index: u64,
        last: bool,
        nonce: &[u8],
        body: &[u8],
        out: &mut [u8],
        tag: &[u8],
    ) -> bool {
        let (Ok(nonce), Ok(tag), Ok(buf)) = (
            <[u8; NONCE_LEN]>::try_from(nonce),
            <[u8; TAG_LEN]>::try_from(tag),
            InOutBuf::new(body, out),
        ) else {
            return false;
        };
        self.aead
            .decrypt_inout_detached(
                &Nonce::from(nonce),
                &self.aad(index, last),
                buf,
                &Tag::from(tag),
            )
            .is_ok()
    }

    /// Decrypts block `index` into `out` (appending its plaintext). `is_final` says whether the
    /// file's length makes this its last block: that one must carry the last flag. A non-final
    /// block may carry either flag (a crash can land between an append and the rewrite of the old
    /// final block). A non-final all-zero full block is a hole.
    pub fn decrypt_block(
        &self,
        index: u64,
        is_final: bool,
        block: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), BlockError> {
        let start = out.len();
        out.resize(start + block.len().saturating_sub(OVERHEAD as usize), 0);
        self.decrypt_block_into(index, is_final, block, &mut out[start..])
            .inspect_err(|_| out.truncate(start))
    }

    /// `decrypt_block` into `slot`, which is exactly the block's plaintext length.
    fn decrypt_block_into(
        &self,
        index: u64,
        is_final: bool,
        block: &[u8],
        slot: &mut [u8],
    ) -> Result<(), BlockError> {
        let err = BlockError { index };
        if block.len() < OVERHEAD as usize
            || block.len() > CIPHER_BLOCK as usize
            || slot.len() != block.len() - OVERHEAD as usize
        {
            return Err(err);
        }
        if !is_final && block.len() == CIPHER_BLOCK as usize && block.iter().all(|b| *b == 0) {
            slot.fill(0);
            return Ok(());
        }
        let (nonce, rest) = block.split_at(NONCE_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        let ok = if is_final {
            self.open(index, true, nonce, body, slot, tag)
        } else {
            self.open(index, false, nonce, body, slot, tag)
                || self.open(index, true, nonce, body, slot, tag)
        };
        if ok { Ok(()) } else { Err(err) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs long enough to go parallel give the same blocks as one-by-one encryption, and a
    /// damaged block fails the whole run with its index and leaves no plaintext behind.
    #[test]
    fn runs_match_single_blocks_and_fail_whole() {
        let c = ContentCipher::new(&[4u8; 32], [2u8; 16]);
        let plains: Vec<Vec<u8>> = (0..100u8)
            .map(|i| vec![i; if i == 99 { 1000 } else { BLOCK as usize }])
            .collect();
        let blocks: Vec<(&[u8], bool)> = plains
            .iter()
            .enumerate()
            .map(|(i, p)| (&p[..], i == 99))
            .collect();
        // A kept buffer, longer than the run and holding old bytes: only the run comes back.
        let mut scratch = vec![0xa5u8; 200 * CIPHER_BLOCK as usize];
        let raw = c.encrypt_run(7, &blocks, &mut scratch).unwrap().to_vec();
        assert_eq!(raw.len(), sealed_len(&blocks));
        for (k, chunk) in raw.chunks(CIPHER_BLOCK as usize).enumerate() {
            let mut one = Vec::new();
            c.decrypt_block(7 + k as u64, k == 99, chunk, &mut one)
                .unwrap();
            assert_eq!(one, plains[k]);
        }
        let mut all = vec![1u8];
        c.decrypt_run(7, 106, &raw, &mut all).unwrap();
        assert_eq!(&all[1..], &plains.concat()[..]);
        let mut bad = raw.clone();
        bad[70 * CIPHER_BLOCK as usize + 40] ^= 1;
        let mut out = vec![1u8];
        assert_eq!(
            c.decrypt_run(7, 106, &bad, &mut out),
            Err(BlockError { index: 77 })
        );
        assert_eq!(out, [1u8]);
        let mut short = Vec::new();
        assert!(
            c.decrypt_run(7, 106, &raw[..10 * CIPHER_BLOCK as usize], &mut short)
                .is_ok()
        );
        assert_eq!(short.len(), 10 * BLOCK as usize);
    }

    /// A streamed run reaches the sink piece by piece, in order and contiguous, and decrypts
    /// like one sealed in one go; a failing sink stops it at once with its error.
    #[test]
    fn streamed_runs_arrive_in_order_and_stop_at_a_failing_sink() {
        let c = ContentCipher::new(&[4u8; 32], [2u8; 16]);
        let n = 2 * PIECE_BLOCKS + 5;
        let plains: Vec<Vec<u8>> = (0..n)
            .map(|i| vec![i as u8; if i == n - 1 { 1000 } else { BLOCK as usize }])
            .collect();
        let blocks: Vec<(&[u8], bool)> = plains
            .iter()
            .enumerate()
            .map(|(i, p)| (&p[..], i == n - 1))
            .collect();
        let mut raw = Vec::new();
        let mut calls = Vec::new();
        // A reused buffer, longer than the run and holding old bytes, changes nothing.
        let mut scratch = vec![0xa5u8; 2 * n * CIPHER_BLOCK as usize];
        let r: Result<(), StreamError<()>> =
            c.seal_run_streamed(3, &blocks, &mut scratch, |at, sealed| {
                assert_eq!(at, raw.len());
                calls.push(sealed.len());
                raw.extend_from_slice(sealed);
                Ok(())
            });
        assert!(r.is_ok());
        let piece = PIECE_BLOCKS * CIPHER_BLOCK as usize;
        assert_eq!(calls, [piece, piece, raw.len() - 2 * piece]);
        let mut all = Vec::new();
        c.decrypt_run(3, 3 + n as u64 - 1, &raw, &mut all).unwrap();
        assert_eq!(all, plains.concat());

        let mut seen = 0;
        let r = c.seal_run_streamed(3, &blocks, &mut Vec::new(), |_, _| {
            seen += 1;
            if seen == 2 { Err("disk full") } else { Ok(()) }
        });
        assert!(matches!(r, Err(StreamError::Sink("disk full"))));
        assert_eq!(seen, 2);
        // Nothing to seal: the sink is never called.
        let r: Result<(), StreamError<()>> =
            c.seal_run_streamed(0, &[], &mut Vec::new(), |_, _| panic!("called"));
        assert!(r.is_ok());
    }

    #[test]
    fn only_writes_over_an_empty_files_block_go_tail_first() {
        let o = OVERHEAD as usize;
        // The first write into an empty file, and the growth that rewrites its block 0.
        assert_eq!(
            empty_block_overlap(HEADER_LEN, EMPTY_LEN + 1, EMPTY_LEN),
            Some(o)
        );
        assert_eq!(
            empty_block_overlap(HEADER_LEN, block_offset(1), EMPTY_LEN),
            Some(o)
        );
        assert_eq!(
            empty_block_overlap(HEADER_LEN, TAIL_FIRST_MAX, EMPTY_LEN),
            Some(o)
        );
        // Not when the block has content, the write starts elsewhere, does not extend it, or
        // is longer than two blocks.
        assert_eq!(
            empty_block_overlap(HEADER_LEN, TAIL_FIRST_MAX + 1, EMPTY_LEN),
            None
        );
        assert_eq!(
            empty_block_overlap(HEADER_LEN, EMPTY_LEN + 9, EMPTY_LEN + 1),
            None
        );
        assert_eq!(
            empty_block_overlap(block_offset(1), block_offset(2), EMPTY_LEN),
            None
        );
        assert_eq!(empty_block_overlap(HEADER_LEN, EMPTY_LEN, EMPTY_LEN), None);
        assert_eq!(empty_block_overlap(HEADER_LEN, EMPTY_LEN + 5, 0), None);
    }

    #[test]
    fn layout_arithmetic() {
        let h = HEADER_LEN;
        assert_eq!(backing_len(0), h + 28);
        assert_eq!(backing_len(1), h + 29);
        assert_eq!(backing_len(4096), h + 4124);
        assert_eq!(backing_len(4097), h + 4124 + 29);
        assert_eq!(
            layout(h + 28),
            Layout {
                size: 0,
                valid: true
            }
        );
        assert_eq!(
            layout(h + 4124),
            Layout {
                size: 4096,
                valid: true
            }
        );
        assert!(!layout(h).valid);
        assert!(!layout(0).valid);
        assert!(!layout(h + 4124 + 5).valid);
        assert_eq!(block_count(0), 1);
        assert_eq!(block_count(4096), 1);
        assert_eq!(block_count(4097), 2);
        assert_eq!(block_plain_len(1, 4097), 1);
        assert_eq!(block_plain_len(0, 4097), 4096);
        assert_eq!(block_plain_len(2, 4097), 0);
        assert_eq!(blocks_touched(4095, 2), 0..=1);
        assert_eq!(blocks_touched(4096, 4096), 1..=1);
    }

    proptest! {
        #[test]
        fn layout_inverts_backing_len(size in 0u64..(1 << 40)) {
            prop_assert_eq!(layout(backing_len(size)), Layout { size, valid: true });
        }

        /// A read sized by what its window brought back decrypts exactly what a read sized by
        /// the file's length would: the same bytes, the same reply end, the same final block.
        #[test]
        fn a_read_sized_by_its_window_matches_one_sized_by_the_length(
            size in 0u64..5 * BLOCK,
            offset in 0u64..6 * BLOCK,
            len in 1u64..3 * BLOCK,
        ) {
            let w = read_window(offset, len).unwrap();
            prop_assert_eq!(w.start, block_offset(w.first));
            let got = (backing_len(size).saturating_sub(w.start) as usize).min(w.len);
            let want = if offset >= size {
                Seen::End
            } else {
                let end = size.min(offset + len);
                let last = (end - 1) / BLOCK;
                prop_assert!(last <= w.last);
                Seen::Blocks {
                    raw_len: (block_offset(last) + block_plain_len(last, size) + OVERHEAD
                        - w.start) as usize,
                    final_index: block_count(size) - 1,
                    end,
                }
            };
            match (seen(offset, len, &w, got), want) {
                // Past the window the final block's number is unknown, and not needed.
                (
                    Seen::Blocks { raw_len, final_index, end },
                    Seen::Blocks { raw_len: r, final_index: f, end: e },
                ) if f > w.last => {
                    prop_assert_eq!((raw_len, end), (r, e));
                    prop_assert!(final_index > w.last);
                }
                (a, b) => prop_assert_eq!(a, b),
            }
        }
    }

    #[test]
    fn a_read_that_finds_a_damaged_end_says_so() {
        let w = read_window(0, 100).unwrap();
        // A file whose final block is shorter than its nonce and tag, or whose header is cut.
        assert_eq!(seen(0, 100, &w, 5), Seen::Invalid);
        assert_eq!(seen(0, 100, &w, 0), Seen::Invalid);
        // One that ends with a whole empty block is an empty file.
        assert_eq!(seen(0, 100, &w, OVERHEAD as usize), Seen::End);
        // A cut inside the window's second block, read from the first: found at that read.
        let w = read_window(4000, 200).unwrap();
        assert_eq!(
            seen(4000, 200, &w, CIPHER_BLOCK as usize + 3),
            Seen::Invalid
        );
        // No window reaches past the largest file offset (pread would refuse it).
        let top = i64::MAX as u64;
        assert_eq!(read_window(top - 4096, 4096), None);
        assert_eq!(read_window(u64::MAX - 10, 5), None);
        let w = read_window(top / CIPHER_BLOCK * BLOCK - 2 * BLOCK, 1).unwrap();
        assert!(w.start + w.len as u64 <= top);
    }

    fn cipher(id: u8) -> ContentCipher {
        ContentCipher::new(&[7u8; 32], [id; 16])
    }

    #[test]
    fn blocks_bind_index_file_and_last_flag() {
        let c = cipher(1);
        let mut b = Vec::new();
        c.encrypt_block(3, false, b"hello", &mut b).unwrap();
        let mut out = Vec::new();
        c.decrypt_block(3, false, &b, &mut out).unwrap();
        assert_eq!(out, b"hello");
        assert!(
            c.decrypt_block(4, false, &b, &mut Vec::new()).is_err(),
            "moved block"
        );
        assert!(
            cipher(2)
                .decrypt_block(3, false, &b, &mut Vec::new())
                .is_err(),
            "other file"
        );
        assert!(
            c.decrypt_block(3, true, &b, &mut Vec::new()).is_err(),
            "cut after it"
        );
        let mut last = Vec::new();
        c.encrypt_block(5, true, b"end", &mut last).unwrap();
        let mut out = Vec::new();
        c.decrypt_block(5, true, &last, &mut out).unwrap();
        c.decrypt_block(5, false, &last, &mut out).unwrap();
        assert_eq!(out, b"endend");
        for i in 0..b.len() {
            let mut t = b.clone();
            t[i] ^= 0x80;
            let mut out = Vec::new();
            assert!(c.decrypt_block(3, false, &t, &mut out).is_err());
            assert!(out.is_empty(), "no partial plaintext on failure");
        }
    }

    /// Known-answer vector: content key 07 x 32, file id 01 x 16, block 3, last = 1,
    /// nonce 000102..0b, plaintext "kmsfs". Cross-checked with Python cryptography's AESGCM
    /// (AAD = id || 3 as u64 BE || 01), so the format cannot drift unnoticed.
    #[test]
    fn block_test_vector() {
        let c = cipher(1);
        let nonce: [u8; 12] = std::array::from_fn(|i| i as u8);
        let mut out = Vec::new();
        c.encrypt_block_with(nonce, 3, true, b"kmsfs", &mut out)
            .unwrap();
        assert_eq!(hex::encode(&out), BLOCK_VECTOR);
        let mut plain = Vec::new();
        c.decrypt_block(3, true, &out, &mut plain).unwrap();
        assert_eq!(plain, b"kmsfs");
    }

    const BLOCK_VECTOR: &str = "000102030405060708090a0b73ec9a166e4db08fc99c57448eb481110e57052d12";

    #[test]
    fn zero_blocks_are_holes_unless_final() {
        let c = cipher(1);
        let z = vec![0u8; CIPHER_BLOCK as usize];
        let mut out = Vec::new();
        c.decrypt_block(0, false, &z, &mut out).unwrap();
        assert_eq!(out, vec![0u8; 4096]);
        assert!(c.decrypt_block(0, true, &z, &mut Vec::new()).is_err());
        assert!(
            c.decrypt_block(0, false, &z[..100], &mut Vec::new())
                .is_err()
        );
    }
}
