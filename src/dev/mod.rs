//! Block device layer: the `BlockDevice` trait every layer above writes through, and the
//! image-file backend. The mirror (`dev::mirror`) is another implementation of the same trait.

pub mod fence;
pub mod file;
pub mod mem;
pub mod mirror;

pub use fence::FenceableDevice;
pub use file::FileDevice;

/// Errors of a block device, naming the operation and the byte range.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("{op} of {len} bytes at offset {offset}: {source}")]
    Io { op: &'static str, offset: u64, len: u64, source: std::io::Error },
    #[error("{op} of {len} bytes at offset {offset} is past the end of the device ({size} bytes)")]
    OutOfRange { op: &'static str, offset: u64, len: u64, size: u64 },
    #[error("device is read-only")]
    ReadOnly,
    #[error("this node is fenced: it writes nothing more until restarted")]
    Fenced,
    /// The device refuses the request in its present role (a mirror node that is secondary);
    /// `errno` is what a caller that needs one reports: EROFS for a write, EMEDIUMTYPE for a
    /// read (what DRBD 8 answers to an open of a Secondary).
    #[error("{op} of {len} bytes at offset {offset}: {reason}")]
    Refused { op: &'static str, offset: u64, len: u64, errno: i32, reason: String },
}

pub type Result<T> = std::result::Result<T, DevError>;

/// A byte-addressed device of fixed size. Filesystem blocks are `block_size`-aligned ranges.
pub trait BlockDevice: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<()>;
    /// Starts writing `[offset, offset+len)` back to stable storage without waiting for it, so
    /// that a later `flush` has less left to do. Best effort: a failure shows at that flush.
    /// Backends without a cache of their own have nothing to do.
    fn start_writeback(&self, _offset: u64, _len: u64) {}
    /// Makes `[offset, offset+len)` read as zeros. Backends override this with something
    /// cheaper than writing zeros (a hole punch).
    fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        write_zeros(self, offset, len)
    }
    /// The parts `(offset, len)` of `[offset, offset+len)` that may hold data, in order; the
    /// rest reads as zeros (holes of a sparse file), so a reader may skip it. Backends that
    /// cannot tell return the whole range.
    fn data_ranges(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        check_range("seek", offset, len, self.size())?;
        Ok(if len == 0 { Vec::new() } else { vec![(offset, len)] })
    }

    /// Reads block `blkno` of `buf.len()` bytes.
    fn read_block(&self, blkno: u64, buf: &mut [u8]) -> Result<()> {
        self.read_at(buf, blkno * buf.len() as u64)
    }
    fn write_block(&self, blkno: u64, buf: &[u8]) -> Result<()> {
        self.write_at(buf, blkno * buf.len() as u64)
    }
}

/// Checks that `[offset, offset+len)` lies inside a device of `size` bytes.
pub fn check_range(op: &'static str, offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(DevError::OutOfRange { op, offset, len, size }),
    }
}

/// Zeroes a range by writing zero buffers (the slow path of `zero_range`).
pub fn write_zeros<D: BlockDevice + ?Sized>(dev: &D, offset: u64, len: u64) -> Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done);
        dev.write_at(&zeros[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}
