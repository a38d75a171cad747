//! Test support: an in-memory block device with a volatile write cache (a crash keeps only what
//! was flushed, plus a random part of the rest), and a small formatted journal on it.

use super::{Journal, JournalMap};
use crate::dev::{check_range, BlockDevice, DevError, Result};
use crate::format::jbd2::*;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    /// What reads see.
    current: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// Writes since the last flush, in order.
    unflushed: Vec<(u64, Vec<u8>)>,
    /// Offsets of every write, for checking where a replay wrote.
    written: Vec<(u64, usize)>,
    /// Writes fail once this many more have succeeded.
    fail_after: Option<usize>,
    /// Flushes fail (making nothing durable) once this many more have succeeded.
    fail_flushes_after: Option<usize>,
    /// Flushes that succeeded.
    flushes: u64,
}

pub struct MemDevice {
    state: Mutex<State>,
    size: u64,
}

impl MemDevice {
    pub fn new(size: u64) -> Arc<MemDevice> {
        let data = vec![0u8; size as usize];
        Arc::new(MemDevice {
            state: Mutex::new(State { current: data.clone(), durable: data, ..Default::default() }),
            size,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s)
    }

    /// A new device holding what a power failure now would leave: the flushed contents plus
    /// each 512-byte sector of the unflushed writes with probability 1/2 (chosen by `seed`;
    /// `None` keeps none): a device keeps a sector whole, and nothing larger.
    pub fn crash(&self, seed: Option<u64>) -> Arc<MemDevice> {
        self.with(|s| {
            let mut data = s.durable.clone();
            let mut x = seed.unwrap_or(0) | 1;
            for (off, bytes) in &s.unflushed {
                for (i, sector) in bytes.chunks(512).enumerate() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if seed.is_some() && x & 1 == 1 {
                        let at = *off as usize + i * 512;
                        data[at..at + sector.len()].copy_from_slice(sector);
                    }
                }
            }
            Arc::new(MemDevice {
                state: Mutex::new(State { current: data.clone(), durable: data, ..Default::default() }),
                size: self.size,
            })
        })
    }

    pub fn block(&self, blkno: u64, bs: usize) -> Vec<u8> {
        self.with(|s| s.current[blkno as usize * bs..(blkno as usize + 1) * bs].to_vec())
    }

    pub fn set_block(&self, blkno: u64, data: &[u8]) {
        self.with(|s| {
            let off = blkno as usize * data.len();
            s.current[off..off + data.len()].copy_from_slice(data);
            s.durable[off..off + data.len()].copy_from_slice(data);
        })
    }

    /// Blocks (of `bs` bytes) touched by writes since the last call.
    pub fn take_written_blocks(&self, bs: usize) -> HashSet<u64> {
        self.with(|s| {
            let mut out = HashSet::new();
            for (off, len) in s.written.drain(..) {
                let first = off / bs as u64;
                let last = (off + len as u64).div_ceil(bs as u64);
                out.extend(first..last);
            }
            out
        })
    }

    pub fn fail_writes_after(&self, n: usize) {
        self.with(|s| s.fail_after = Some(n));
    }

    pub fn fail_flushes_after(&self, n: usize) {
        self.with(|s| s.fail_flushes_after = Some(n));
    }

    /// Flushes that succeeded so far.
    pub fn flushes(&self) -> u64 {
        self.with(|s| s.flushes)
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range("read", offset, buf.len() as u64, self.size)?;
        self.with(|s| buf.copy_from_slice(&s.current[offset as usize..offset as usize + buf.len()]));
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        check_range("write", offset, buf.len() as u64, self.size)?;
        self.with(|s| {
            if let Some(n) = s.fail_after.as_mut() {
                if *n == 0 {
                    return Err(DevError::Io {
                        op: "write",
                        offset,
                        len: buf.len() as u64,
                        source: std::io::Error::other("injected failure"),
                    });
                }
                *n -= 1;
            }
            s.current[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
            s.unflushed.push((offset, buf.to_vec()));
            s.written.push((offset, buf.len()));
            Ok(())
        })
    }

    fn flush(&self) -> Result<()> {
        self.with(|s| {
            if let Some(n) = s.fail_flushes_after.as_mut() {
                if *n == 0 {
                    let source = std::io::Error::other("injected flush failure");
                    return Err(DevError::Io { op: "flush", offset: 0, len: 0, source });
                }
                *n -= 1;
            }
            s.durable = s.current.clone();
            s.unflushed.clear();
            s.flushes += 1;
            Ok(())
        })
    }
}

/// Geometry of the test volume: `fs_blocks` ordinary blocks, then the journal in two runs
/// (to exercise the map), with `maxlen` journal blocks.
#[derive(Clone, Copy)]
pub struct Layout {
    pub bs: usize,
    pub is_64bit: bool,
    pub maxlen: u32,
    pub fs_blocks: u64,
}

impl Layout {
    pub fn new(bs: usize, is_64bit: bool) -> Self {
        Layout { bs, is_64bit, maxlen: 1024, fs_blocks: 256 }
    }

    /// Journal blocks `[0, split)` at `fs_blocks`, the rest 8 blocks further on.
    pub fn map(&self) -> JournalMap {
        let split = self.maxlen as u64 / 3;
        JournalMap::new(vec![
            (0, self.fs_blocks, split),
            (split, self.fs_blocks + split + 8, self.maxlen as u64 - split),
        ])
    }

    pub fn device_blocks(&self) -> u64 {
        self.fs_blocks + self.maxlen as u64 + 8
    }

    pub fn first(&self) -> u32 {
        if self.bs == 512 {
            2
        } else {
            1
        }
    }

    /// A zeroed device with a freshly formatted journal (`s_start` = `start`, `s_sequence` =
    /// `sequence`).
    pub fn device(&self, start: u32, sequence: u32) -> Arc<MemDevice> {
        let dev = MemDevice::new(self.device_blocks() * self.bs as u64);
        let sb = JournalSuperblock {
            block_size: self.bs as u32,
            maxlen: self.maxlen,
            first: self.first(),
            sequence,
            start,
            feature_incompat: if self.is_64bit { FEATURE_INCOMPAT_64BIT } else { 0 },
            uuid: *b"o2fs-journal-tst",
            nr_users: 1,
            ..Default::default()
        };
        let n = SUPERBLOCK_SIZE.div_ceil(self.bs);
        let mut buf = vec![0u8; n * self.bs];
        sb.encode(&mut buf);
        let map = self.map();
        for (j, chunk) in buf.chunks(self.bs).enumerate() {
            let fs = map.fs_block(j as u64).unwrap_or(0);
            dev.set_block(fs, chunk);
        }
        dev
    }

    pub fn open(&self, dev: &Arc<MemDevice>) -> super::Result<Journal> {
        Journal::open(dev.clone(), self.map(), self.bs)
    }

    /// A block whose bytes are a function of `(blkno, version)`.
    pub fn pattern(&self, blkno: u64, version: u32) -> Vec<u8> {
        (0..self.bs).map(|i| (blkno as usize * 31 + version as usize * 7 + i) as u8).collect()
    }
}
