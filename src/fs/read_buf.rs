//! Buffers for file reads, reused per thread. A READ of up to a MiB would otherwise allocate
//! and zero a fresh buffer every time — from the heap, where such buffers fragment it, or
//! (above the allocator's mmap threshold) from new pages that each fault on first touch. A
//! reused buffer still holds the bytes of an earlier read: its filler overwrites or zeroes all
//! of it.

use std::cell::Cell;
use std::ops::Deref;

thread_local! {
    /// The buffer the last read on this thread gave back.
    static SPARE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// File bytes read for one request; the buffer goes back to its thread's spare when dropped.
pub struct ReadBuf(Vec<u8>);

impl ReadBuf {
    /// `len` bytes of unspecified content (an earlier read's, or zeros), in this thread's
    /// spare buffer when it has one: the caller fills every byte.
    pub fn unfilled(len: usize) -> ReadBuf {
        let mut buf = SPARE.with(Cell::take);
        buf.resize(len, 0);
        ReadBuf(buf)
    }

    /// Bytes that are already at hand (inline data).
    pub fn from_vec(bytes: Vec<u8>) -> ReadBuf {
        ReadBuf(bytes)
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.0
    }

    pub fn into_vec(mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

impl Deref for ReadBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for ReadBuf {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        // Keep the larger of the two, so the spare settles at the largest read size.
        SPARE.with(|s| {
            let old = s.take();
            s.set(if buf.capacity() >= old.capacity() { buf } else { old });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_buffer_is_reused() {
        let mut a = ReadBuf::unfilled(4096);
        a.as_mut_slice().fill(7);
        let ptr = a.as_ptr();
        drop(a);
        let b = ReadBuf::unfilled(1000);
        assert_eq!((b.as_ptr(), b.len()), (ptr, 1000), "the spare buffer was not reused");
    }
}
