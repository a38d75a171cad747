//! Disk heartbeat (o2hb, ocfs2-format.md §12.2): each node writes its sector of the volume's
//! `heartbeat` area every interval; a node whose sector stops changing is dead. This module
//! reads and writes the area; where the area lies is the caller's to say (the filesystem
//! layer finds it through the `heartbeat` system file).

use crate::dev::{BlockDevice, DevError};
use crate::format::heartbeat::HeartbeatBlock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One node's slot is one device sector; image files use 512-byte sectors.
pub const SECTOR: usize = 512;
/// o2cb's heartbeat interval and dead threshold (31 missed beats).
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(2000);
pub const DEFAULT_DEAD_BEATS: u32 = 31;

/// The heartbeat area of a volume on a device.
#[derive(Clone)]
pub struct Region {
    dev: Arc<dyn BlockDevice>,
    start: u64,
    nodes: usize,
}

impl Region {
    /// `start`/`len`: byte offset and length of the heartbeat file's data.
    pub fn new(dev: Arc<dyn BlockDevice>, start: u64, len: u64) -> Self {
        let nodes = (len as usize / SECTOR).min(255);
        Region { dev, start, nodes }
    }

    /// Every node's sector, as raw bytes.
    pub fn read_all(&self) -> Result<Vec<Vec<u8>>, DevError> {
        let mut buf = vec![0u8; self.nodes * SECTOR];
        self.dev.read_at(&mut buf, self.start)?;
        Ok(buf.chunks(SECTOR).map(<[u8]>::to_vec).collect())
    }

    fn write_sector(&self, node: u8, sector: &[u8]) -> Result<(), DevError> {
        if node as usize >= self.nodes {
            return Err(DevError::OutOfRange {
                op: "heartbeat",
                offset: node as u64 * SECTOR as u64,
                len: SECTOR as u64,
                size: (self.nodes * SECTOR) as u64,
            });
        }
        self.dev.write_at(sector, self.start + node as u64 * SECTOR as u64)?;
        self.dev.flush()
    }

    /// Writes `node`'s sector. `seq` is o2hb's timestamp in seconds, kept strictly increasing by
    /// the caller so that every beat changes the sector even at sub-second intervals.
    pub fn beat(&self, node: u8, seq: u64, generation: u64, dead_ms: u32) -> Result<(), DevError> {
        let mut sector = vec![0u8; SECTOR];
        HeartbeatBlock { seq, node, cksum: 0, generation, dead_ms }.encode(&mut sector);
        self.write_sector(node, &sector)
    }

    /// Zeroes a node's sector (clean stop: the node is gone, not dead).
    pub fn clear(&self, node: u8) -> Result<(), DevError> {
        self.write_sector(node, &[0u8; SECTOR])
    }

    /// Nodes whose sector changes within one and a half heartbeat `interval`s (a beat may come
    /// a little late; watching exactly one interval could miss it). An all-empty area costs no
    /// wait.
    pub fn live_nodes(&self, interval: Duration) -> Result<Vec<u8>, DevError> {
        let before = self.read_all()?;
        if before.iter().all(|s| HeartbeatBlock::is_empty(s)) {
            return Ok(vec![]);
        }
        std::thread::sleep(interval * 3 / 2);
        let after = self.read_all()?;
        Ok(before
            .iter()
            .zip(&after)
            .enumerate()
            .filter(|(_, (a, b))| a != b && !HeartbeatBlock::is_empty(b))
            .map(|(i, _)| i as u8)
            .collect())
    }

    /// Nodes with a valid, non-empty sector (alive or not), with their last sequence number.
    pub fn written_nodes(&self) -> Result<Vec<(u8, u64)>, DevError> {
        Ok(self
            .read_all()?
            .iter()
            .enumerate()
            .filter(|(_, s)| !HeartbeatBlock::is_empty(s))
            .filter_map(|(i, s)| HeartbeatBlock::decode(s, i as u64).ok().map(|hb| (i as u8, hb.seq)))
            .collect())
    }
}

/// A running heartbeat: a thread beating every interval until stopped; stopping clears the
/// sector.
pub struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    region: Region,
    node: u8,
}

impl Heartbeat {
    pub fn start(region: Region, node: u8, interval: Duration, dead_beats: u32) -> Result<Self, DevError> {
        let mut gen = [0u8; 8];
        let _ = getrandom::getrandom(&mut gen);
        let generation = u64::from_le_bytes(gen);
        let dead_ms = dead_beats.saturating_mul(interval.as_millis() as u32);
        let next_seq = |last: u64| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            now.max(last + 1)
        };
        let mut seq = next_seq(0);
        region.beat(node, seq, generation, dead_ms)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (region, stop) = (region.clone(), stop.clone());
            std::thread::spawn(move || {
                let step = Duration::from_millis(50).min(interval);
                let mut waited = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(step);
                    waited += step;
                    if waited >= interval {
                        waited = Duration::ZERO;
                        seq = next_seq(seq);
                        if let Err(e) = region.beat(node, seq, generation, dead_ms) {
                            tracing::error!("disk heartbeat of node {node}: {e}");
                        }
                    }
                }
            })
        };
        Ok(Heartbeat { stop, thread: Some(thread), region, node })
    }

    /// Clean stop: the sector is cleared, so others see the node gone rather than dead.
    pub fn stop(&mut self) {
        if self.halt() {
            if let Err(e) = self.region.clear(self.node) {
                tracing::error!("clearing the heartbeat of node {}: {e}", self.node);
            }
        }
    }

    /// Stops beating and writes nothing more (fencing): others see the sector go silent.
    /// Returns whether it was still beating.
    pub fn halt(&mut self) -> bool {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => {
                let _ = t.join();
                true
            }
            None => false,
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop();
    }
}
