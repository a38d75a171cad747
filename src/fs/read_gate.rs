//! File data is read outside the core's mutex (the kernel sends several reads at once, and the
//! device serves them in parallel). A cluster such a read maps must not be freed and handed to
//! another file before the read is done: reads enter the gate while the core is held (their
//! extent map is current then) and leave once their data is copied; freeing clusters first
//! drains the gate with the core held — reads in flight finish without the core, and new ones
//! cannot map anything until the freeing request ends.

use parking_lot::{Condvar, Mutex};
use std::sync::Arc;

#[derive(Default)]
pub struct ReadGate {
    inflight: Mutex<usize>,
    left: Condvar,
}

/// A read in flight; leaves the gate when dropped.
pub struct InFlight(Arc<ReadGate>);

impl ReadGate {
    pub fn enter(self: &Arc<Self>) -> InFlight {
        *self.inflight.lock() += 1;
        InFlight(self.clone())
    }

    /// Waits until every read in flight has left.
    pub fn drain(&self) {
        let mut n = self.inflight.lock();
        while *n > 0 {
            self.left.wait(&mut n);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut n = self.0.inflight.lock();
        *n -= 1;
        if *n == 0 {
            self.0.left.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn drain_waits_for_the_reads_in_flight() {
        let gate = Arc::new(ReadGate::default());
        gate.drain(); // nothing in flight: returns at once
        let read = gate.enter();
        let drained = Arc::new(AtomicBool::new(false));
        let waiter = std::thread::spawn({
            let (gate, drained) = (gate.clone(), drained.clone());
            move || {
                gate.drain();
                drained.store(true, Ordering::SeqCst);
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!drained.load(Ordering::SeqCst), "drained while a read was in flight");
        drop(read);
        waiter.join().unwrap();
        assert!(drained.load(Ordering::SeqCst));
    }
}
