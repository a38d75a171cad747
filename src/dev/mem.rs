//! A `BlockDevice` in memory: the replicas and meta-disks of the mirror's simulation, and unit
//! tests that need a device without a file.

use parking_lot::Mutex;

use super::{check_range, BlockDevice, Result};

pub struct MemDevice {
    bytes: Mutex<Vec<u8>>,
}

impl MemDevice {
    /// A zero-filled device of `size` bytes.
    pub fn new(size: u64) -> MemDevice {
        MemDevice { bytes: Mutex::new(vec![0; size as usize]) }
    }

    /// A copy of the whole contents.
    pub fn contents(&self) -> Vec<u8> {
        self.bytes.lock().clone()
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.bytes.lock().len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let bytes = self.bytes.lock();
        check_range("read", offset, buf.len() as u64, bytes.len() as u64)?;
        buf.copy_from_slice(&bytes[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let mut bytes = self.bytes.lock();
        check_range("write", offset, buf.len() as u64, bytes.len() as u64)?;
        bytes[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
