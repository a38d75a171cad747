//! An image file (or a block device node) as a `BlockDevice`: positional reads and writes,
//! fdatasync for flush, hole punching for zeroing, SEEK_DATA/SEEK_HOLE for finding holes.

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

    /// lseek(SEEK_DATA) and lseek(SEEK_HOLE) from `offset` on (the file offset they move is
    /// not used: reads and writes are positional). Where the file cannot tell (a block device,
    /// a filesystem without the calls) the whole range counts as data.
    fn data_ranges(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        use nix::errno::Errno;
        use nix::unistd::{lseek, Whence};
        use std::os::fd::AsRawFd;
        check_range("seek", offset, len, self.size)?;
        let (fd, end) = (self.file.as_raw_fd(), offset + len);
        let mut ranges = Vec::new();
        let mut at = offset;
        while at < end {
            let data = match lseek(fd, at as i64, Whence::SeekData) {
                Ok(data) => (data as u64).max(at),
                // No data from `at` to the end of the file.
                Err(Errno::ENXIO) => break,
                Err(_) => {
                    ranges.push((at, end - at));
                    break;
                }
            };
            if data >= end {
                break;
            }
            let hole = match lseek(fd, data as i64, Whence::SeekHole) {
                Ok(hole) if hole as u64 > data => (hole as u64).min(end),
                _ => end,
            };
            ranges.push((data, hole - data));
            at = hole;
        }
        Ok(ranges)
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

    /// Exact on ext4 and tmpfs (4 KiB allocation); a filesystem allocating in larger units
    /// reports more data around what was written, never less.
    #[test]
    fn data_ranges_skip_the_holes_of_a_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let dev = FileDevice::create(&dir.path().join("x.img"), Some(4 << 20)).unwrap();
        assert_eq!(dev.data_ranges(0, 4 << 20).unwrap(), vec![]);
        let written = [(64 << 10, 8192), (2 << 20, 4096)];
        for (offset, len) in written {
            dev.write_at(&vec![1; len as usize], offset).unwrap();
        }
        let covered = |ranges: &[(u64, u64)], (offset, len): (u64, u64)| {
            ranges.iter().any(|&(o, l)| o <= offset && offset + len <= o + l)
        };
        let ranges = dev.data_ranges(0, 4 << 20).unwrap();
        assert!(written.iter().all(|&w| covered(&ranges, w)), "{ranges:?}");
        assert!(ranges.iter().map(|r| r.1).sum::<u64>() <= 1 << 20, "{ranges:?}");
        // A range that starts inside data and ends inside a hole is clipped to itself.
        let ranges = dev.data_ranges(68 << 10, 1 << 20).unwrap();
        assert!(covered(&ranges, (68 << 10, 4096)), "{ranges:?}");
        assert!(ranges.iter().all(|&(o, l)| o >= 68 << 10 && o + l <= (68 << 10) + (1 << 20)), "{ranges:?}");
        assert!(dev.data_ranges(0, (4 << 20) + 1).is_err());
    }
}
