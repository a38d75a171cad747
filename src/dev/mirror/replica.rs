//! The local replica as the mirror uses it: a device that knows whether anything was written
//! since its last flush, so that a flush with nothing to make durable costs no fdatasync (on
//! ext4 even a clean fdatasync flushes the disk's cache). The driver flushes the replica outside
//! the engine's lock while the peer flushes; the engine's own flush then finds it clean.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::dev::{BlockDevice, Result};

/// Writes from this size on start their writeback at once (a filesystem's small writes, often
/// rewritten before the next flush, stay in the page cache until then).
const WRITE_BEHIND_MIN: usize = 256 << 10;

pub struct Replica<D> {
    dev: D,
    /// Written since the last flush began.
    dirty: AtomicBool,
    /// Held through a flush: a flush that finds the replica clean may be clean only because
    /// another one is still under way, and must wait for it.
    flushing: Mutex<()>,
}

impl<D: BlockDevice> Replica<D> {
    pub fn new(dev: D) -> Self {
        Replica { dev, dirty: AtomicBool::new(false), flushing: Mutex::new(()) }
    }
}

impl<D: BlockDevice> BlockDevice for Replica<D> {
    fn size(&self) -> u64 {
        self.dev.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.dev.read_at(buf, offset)
    }

    // Marked once the write is done: a flush that began before the mark began before this
    // write returned, so it need not cover it, and the mark makes the next flush do so. A large
    // write starts its writeback at once: a streaming writer's data then reaches the disk while
    // the next write crosses the network, rather than all at its flush.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let r = self.dev.write_at(buf, offset);
        if r.is_ok() && buf.len() >= WRITE_BEHIND_MIN {
            self.dev.start_writeback(offset, buf.len() as u64);
        }
        self.dirty.store(true, Ordering::Release);
        r
    }

    fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        let r = self.dev.zero_range(offset, len);
        self.dirty.store(true, Ordering::Release);
        r
    }

    fn data_ranges(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        self.dev.data_ranges(offset, len)
    }

    fn flush(&self) -> Result<()> {
        let _flushing = self.flushing.lock();
        if self.dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.dev.flush() {
                self.dirty.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::mem::MemDevice;
    use std::sync::atomic::{AtomicU32, AtomicU64};

    /// Counts the flushes that reach the device, and the bytes whose writeback was started.
    struct Counting(MemDevice, AtomicU32, AtomicU64);

    impl BlockDevice for Counting {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            self.0.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
            self.0.write_at(buf, offset)
        }
        fn flush(&self) -> Result<()> {
            self.1.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        fn start_writeback(&self, _offset: u64, len: u64) {
            self.2.fetch_add(len, Ordering::Relaxed);
        }
    }

    fn counting(size: u64) -> Replica<Counting> {
        Replica::new(Counting(MemDevice::new(size), AtomicU32::new(0), AtomicU64::new(0)))
    }

    #[test]
    fn only_large_writes_start_their_writeback() {
        let r = counting(4 << 20);
        r.write_at(&[1; 4096], 0).unwrap();
        r.write_at(&vec![2; WRITE_BEHIND_MIN - 1], 4096).unwrap();
        assert_eq!(r.dev.2.load(Ordering::Relaxed), 0);
        r.write_at(&vec![3; 1 << 20], 1 << 20).unwrap();
        assert_eq!(r.dev.2.load(Ordering::Relaxed), 1 << 20);
        // A failed write starts nothing.
        assert!(r.write_at(&vec![4; 1 << 20], 4 << 20).is_err());
        assert_eq!(r.dev.2.load(Ordering::Relaxed), 1 << 20);
    }

    #[test]
    fn only_a_flush_after_a_write_reaches_the_device() {
        let r = counting(1 << 16);
        let flushes = || r.dev.1.load(Ordering::Relaxed);
        r.flush().unwrap();
        assert_eq!(flushes(), 0);
        r.write_at(&[1; 512], 0).unwrap();
        r.flush().unwrap();
        r.flush().unwrap();
        assert_eq!(flushes(), 1);
        r.zero_range(0, 512).unwrap();
        r.flush().unwrap();
        assert_eq!(flushes(), 2);
    }

    /// A device whose flush waits until the test lets it finish.
    struct Gated {
        started: std::sync::mpsc::SyncSender<()>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
        done: AtomicBool,
    }

    impl BlockDevice for Gated {
        fn size(&self) -> u64 {
            1 << 16
        }
        fn read_at(&self, _: &mut [u8], _: u64) -> Result<()> {
            Ok(())
        }
        fn write_at(&self, _: &[u8], _: u64) -> Result<()> {
            Ok(())
        }
        fn flush(&self) -> Result<()> {
            let _ = self.started.send(());
            let _ = self.release.lock().recv();
            self.done.store(true, Ordering::Release);
            Ok(())
        }
    }

    /// A flush that finds the replica clean while another flush is under way returns only once
    /// that one has made the writes durable.
    #[test]
    fn a_clean_flush_waits_for_the_flush_under_way() {
        let (started, started_rx) = std::sync::mpsc::sync_channel(1);
        let (release_tx, release) = std::sync::mpsc::channel();
        let r = Replica::new(Gated { started, release: Mutex::new(release), done: AtomicBool::new(false) });
        r.write_at(&[1; 512], 0).unwrap();
        std::thread::scope(|s| {
            let first = s.spawn(|| r.flush());
            started_rx.recv().unwrap();
            let second = s.spawn(|| {
                r.flush().unwrap();
                r.dev.done.load(Ordering::Acquire)
            });
            // Room for the second flush to reach the lock before the first ends.
            std::thread::sleep(std::time::Duration::from_millis(20));
            release_tx.send(()).unwrap();
            first.join().unwrap().unwrap();
            assert!(second.join().unwrap(), "the second flush returned before the first had finished");
        });
    }
}
