//! The holder's side: this node's own locks, the requests it sends to masters and the answers it
//! takes from them. Giving up rights never waits: a down-conversion is applied here first (VMS
//! grants it at once) and the master is told afterwards, which leaves the master's view of this
//! node's rights at least as strong as the truth.

use super::msg::{Msg, VersionedLvb};
use super::{Dlm, DlmError, Event, LockError, LockId, Lvb, Mode, NodeId, ResName};

#[derive(Debug)]
pub(super) struct LocalLock {
    pub res: ResName,
    pub granted: Option<Mode>,
    /// The mode of the waiting request or up-conversion.
    pub wanted: Option<Mode>,
    pub noqueue: bool,
    pub cancelling: bool,
    /// Unlock sent; the lock is gone when the master answers.
    pub unlocking: bool,
    /// The value block of the last grant, or the one this node wrote since.
    pub lvb: VersionedLvb,
}

impl LocalLock {
    pub fn new(res: ResName, mode: Mode, noqueue: bool) -> LocalLock {
        LocalLock {
            res,
            granted: None,
            wanted: Some(mode),
            noqueue,
            cancelling: false,
            unlocking: false,
            lvb: VersionedLvb::default(),
        }
    }

    /// A PW/EX holder's write when it converts down or unlocks: the next version of the block.
    fn write_lvb(&mut self, lvb: Option<Lvb>) -> Option<VersionedLvb> {
        let lvb = lvb.filter(|_| self.granted.is_some_and(Mode::writes_lvb))?;
        self.lvb = VersionedLvb { version: self.lvb.version + 1, lvb };
        Some(self.lvb.clone())
    }
}

impl Dlm {
    pub(super) fn epoch_now(&self) -> u64 {
        self.view.as_ref().map_or(0, |v| v.epoch)
    }

    /// Sends to the master of `res` if this node is a member; otherwise the next rebuild carries it.
    fn send_to_master(&mut self, res: &ResName, msg: Msg) {
        if let Some(master) = self.master(res) {
            self.send(master, msg);
        }
    }

    pub(super) fn request(&mut self, id: LockId, lock: LocalLock) {
        let (res, mode, noqueue) = (lock.res.clone(), lock.wanted.unwrap_or(Mode::Nl), lock.noqueue);
        self.locks.insert(id, lock);
        let epoch = self.epoch_now();
        self.send_to_master(&res.clone(), Msg::Request { epoch, res, id, mode, noqueue });
    }

    fn idle_lock(&mut self, id: LockId) -> Result<&mut LocalLock, DlmError> {
        let lock = self.locks.get_mut(&id).ok_or(DlmError::UnknownLock(id))?;
        match lock.wanted.is_some() || lock.unlocking || lock.granted.is_none() {
            true => Err(DlmError::Busy(id)),
            false => Ok(lock),
        }
    }

    pub(super) fn local_convert(
        &mut self,
        id: LockId,
        mode: Mode,
        noqueue: bool,
        lvb: Option<Lvb>,
    ) -> Result<(), DlmError> {
        let epoch = self.epoch_now();
        let lock = self.idle_lock(id)?;
        let res = lock.res.clone();
        let from = lock.granted.unwrap_or(Mode::Nl);
        if !from.is_down_to(mode) && !from.is_up_to(mode) {
            return Err(DlmError::Sideways { from, to: mode });
        }
        let msg = if from.is_down_to(mode) {
            let lvb = lock.write_lvb(lvb);
            lock.granted = Some(mode);
            let granted = Event::Granted { id, mode, lvb: lock.lvb.lvb.clone() };
            self.emit(granted);
            Msg::Down { epoch, res: res.clone(), id, mode, lvb }
        } else {
            lock.wanted = Some(mode);
            lock.noqueue = noqueue;
            Msg::Request { epoch, res: res.clone(), id, mode, noqueue }
        };
        self.send_to_master(&res, msg);
        Ok(())
    }

    pub(super) fn local_unlock(&mut self, id: LockId, lvb: Option<Lvb>) -> Result<(), DlmError> {
        let epoch = self.epoch_now();
        let lock = self.idle_lock(id)?;
        let lvb = lock.write_lvb(lvb);
        lock.unlocking = true;
        let res = lock.res.clone();
        self.send_to_master(&res.clone(), Msg::Unlock { epoch, res, id, lvb });
        Ok(())
    }

    pub(super) fn local_cancel(&mut self, id: LockId) -> Result<(), DlmError> {
        let epoch = self.epoch_now();
        let lock = self.locks.get(&id).ok_or(DlmError::UnknownLock(id))?;
        if lock.wanted.is_none() {
            return Err(DlmError::NotWaiting(id));
        }
        let (res, already) = (lock.res.clone(), lock.cancelling);
        if self.master(&res).is_none() {
            // Not sent anywhere yet: the next rebuild would carry it.
            self.end_wait(id, Err(LockError::Cancelled));
        } else if !already {
            self.locks.entry(id).and_modify(|l| l.cancelling = true);
            self.send_to_master(&res.clone(), Msg::Cancel { epoch, res, id });
        }
        Ok(())
    }

    /// Ends the wait of `id`: granted with a value block, or failed (a never-granted lock is gone).
    pub(super) fn end_wait(&mut self, id: LockId, outcome: Result<(Mode, VersionedLvb), LockError>) {
        let Some(lock) = self.locks.get_mut(&id) else { return };
        lock.wanted = None;
        lock.cancelling = false;
        lock.noqueue = false;
        let event = match outcome {
            Ok((mode, lvb)) => {
                lock.granted = Some(mode);
                lock.lvb = lvb;
                Event::Granted { id, mode, lvb: lock.lvb.lvb.clone() }
            }
            Err(error) => {
                if lock.granted.is_none() {
                    self.locks.remove(&id);
                }
                Event::Failed { id, error }
            }
        };
        self.emit(event);
    }

    /// The lock `id` on `res`, if `from` masters `res` (answers from anyone else are dropped).
    fn answered_lock(&self, from: NodeId, res: &ResName, id: LockId) -> Option<&LocalLock> {
        let lock = self.locks.get(&id).filter(|l| &l.res == res && self.master(res) == Some(from));
        if lock.is_none() {
            tracing::debug!(from, %res, id = id.0, "dlm: answer for an unknown lock; dropped");
        }
        lock
    }

    pub(super) fn on_grant(&mut self, from: NodeId, res: ResName, id: LockId, mode: Mode, lvb: VersionedLvb) {
        if self.answered_lock(from, &res, id).is_some_and(|l| l.wanted == Some(mode)) {
            self.end_wait(id, Ok((mode, lvb)));
        }
    }

    pub(super) fn on_fail(&mut self, from: NodeId, res: ResName, id: LockId, error: LockError) {
        if self.answered_lock(from, &res, id).is_some_and(|l| l.wanted.is_some()) {
            self.end_wait(id, Err(error));
        }
    }

    pub(super) fn on_bast(&mut self, from: NodeId, res: ResName, id: LockId, wanted: Mode) {
        if self.answered_lock(from, &res, id).is_some_and(|l| l.granted.is_some() && !l.unlocking) {
            self.emit(Event::Blocking { id, wanted });
        }
    }

    pub(super) fn on_unlock_done(&mut self, from: NodeId, res: ResName, id: LockId) {
        if self.answered_lock(from, &res, id).is_some_and(|l| l.unlocking) {
            self.locks.remove(&id);
            self.emit(Event::Unlocked { id });
        }
    }
}
