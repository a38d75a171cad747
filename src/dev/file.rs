//! An image file (or a block device node) as a `BlockDevice`: positional reads and writes,
//! fdatasync for flush, hole punching for zeroing.

use super::{check_range, BlockDevice, DevError, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

pub struct FileDevice {
    file: File,
    size: u64,
    read_only: bool,
}

impl FileDevice {
    pub fn open(path: &Path, writable: bool) -> std::io::Result<Self> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        let size = device_size(&file)?;
        Ok(FileDevice { file, size, read_only: !writable })
    }

    /// Opens (creating when missing) an image file and makes it exactly `size` bytes when given
    /// (a sparse extension; never shrinks).
    pub fn create(path: &Path, size: Option<u64>) -> std::io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        if let Some(size) = size {
            if file.metadata()?.is_file() && file.metadata()?.len() < size {
                file.set_len(size)?;
            }
        }
        let size = device_size(&file)?;
        Ok(FileDevice { file, size, read_only: false })
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Size of a regular file, or of a block device (its end offset).
fn device_size(file: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::End(0))
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("read", offset, buf.len() as u64, self.size)?;
        self.file.read_exact_at(buf, offset).map_err(|source| DevError::Io {
            op: "read",
            offset,
            len: buf.len() as u64,
            source,
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.read_only {
            return Err(DevError::ReadOnly);
        }
        check_range("write", offset, buf.len() as u64, self.size)?;
        self.file.write_all_at(buf, offset).map_err(|source| DevError::Io {
            op: "write",
            offset,
            len: buf.len() as u64,
            source,
        })
    }

    fn flush(&self) -> Result<()> {
        self.file.sync_data().map_err(|source| DevError::Io { op: "flush", offset: 0, len: 0, source })
    }

    fn start_writeback(&self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        // SAFETY: sync_file_range only reads its integer arguments (nix 0.29 has no wrapper).
        // SYNC_FILE_RANGE_WRITE starts the writeback of dirty pages and waits for none.
        unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE);
        }
    }

    fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        use nix::fcntl::{fallocate, FallocateFlags};
        use std::os::fd::AsRawFd;
        if self.read_only {
            return Err(DevError::ReadOnly);
        }
        check_range("zero", offset, len, self.size)?;
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match fallocate(self.file.as_raw_fd(), flags, offset as i64, len as i64) {
            Ok(()) => Ok(()),
            // Block devices and some filesystems cannot punch holes: write the zeros.
            Err(_) => super::write_zeros(self, offset, len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punched_range_reads_zero_and_bounds_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let dev = FileDevice::create(&dir.path().join("x.img"), Some(1 << 20)).unwrap();
        dev.write_at(&[0xAB; 8192], 4096).unwrap();
        dev.zero_range(4096, 4096).unwrap();
        let mut b = [0u8; 8192];
        dev.read_at(&mut b, 4096).unwrap();
        assert!(b[..4096].iter().all(|&x| x == 0));
        assert!(b[4096..].iter().all(|&x| x == 0xAB));
        assert!(dev.read_at(&mut b, (1 << 20) - 100).is_err());
    }
}
