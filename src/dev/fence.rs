//! A device that can be fenced: once `fence()` is called every write and flush fails, for good.
//! A cluster node that lost quorum must not write to the shared volume again until restarted
//! (DESIGN.md "Membership, heartbeat, fencing"); fencing at the device makes that hold for every
//! writer above it, including ones already in flight.

use super::{BlockDevice, DevError, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct FenceableDevice {
    inner: Arc<dyn BlockDevice>,
    fenced: AtomicBool,
}

impl FenceableDevice {
    pub fn new(inner: Arc<dyn BlockDevice>) -> FenceableDevice {
        FenceableDevice { inner, fenced: AtomicBool::new(false) }
    }

    pub fn fence(&self) {
        self.fenced.store(true, Ordering::SeqCst);
    }

    fn check(&self) -> Result<()> {
        if self.fenced.load(Ordering::SeqCst) {
            Err(DevError::Fenced)
        } else {
            Ok(())
        }
    }
}

impl BlockDevice for FenceableDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check()?;
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.check()?;
        self.inner.flush()
    }
    fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        self.check()?;
        self.inner.zero_range(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_fail_after_fencing_reads_go_on() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(8192).unwrap();
        let dev = FenceableDevice::new(Arc::new(crate::dev::FileDevice::open(f.path(), true).unwrap()));
        dev.write_at(&[1; 512], 0).unwrap();
        dev.fence();
        assert!(matches!(dev.write_at(&[2; 512], 0), Err(DevError::Fenced)));
        assert!(matches!(dev.flush(), Err(DevError::Fenced)));
        let mut b = [0u8; 512];
        dev.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [1; 512]);
    }
}
