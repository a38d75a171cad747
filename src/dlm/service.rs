//! The lock service of one node: drives the [`Dlm`] engine from the cluster runtime's events
//! and serves this node's users through the lock cache ([`glue`](super::glue)).
//!
//! One mutex guards the engine and the cache, so re-taking a cached lock costs one uncontended
//! mutex and no message. Waiting users hold a one-shot channel (async users await it, the
//! filesystem's threads block on it). A downconvert callback, when the owner registered one,
//! runs outside the mutex before the DLM is told to downconvert (the filesystem flushes there).
//!
//! With a bound on idle locks ([`LockService::set_idle_cap`], see [`glue::Lru`](super::glue::Lru))
//! the least recently used idle locks over it are given up by a thread of the service's own,
//! through the same callback; a releasing user helps only when that thread falls behind by more
//! than [`TRIM_INLINE_AFTER`] locks (so the bound holds however fast locks are taken).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::glue::{Action, Cached, Lru};
use super::{Dlm, Event, LockFlags, LockId, Lvb, Mode, Msg, NodeId, ResName, ResourceDump};
use crate::cluster::node::{ClusterEvent, ClusterHandle};

thread_local! {
    /// Set on the thread running a recovery hook: its lock requests go past the wait for
    /// recovery (it is the recovery).
    static IN_RECOVERY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs the filesystem's recovery of a dead node (replay its journal...), on a blocking thread.
pub type RecoveryHook = Arc<dyn Fn(NodeId) + Send + Sync>;
/// Called before the cached lock on a resource is downconverted to the given mode.
pub type DownconvertHook = Arc<dyn Fn(&ResName, Mode) + Send + Sync>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("this node is fenced: {0}")]
    Fenced(String),
    #[error("held elsewhere")]
    HeldElsewhere,
    #[error("cannot wait for the lock: {0}")]
    Runtime(String),
}

/// Locks over the bound on idle locks that the service's own thread may be behind by before a
/// releasing user gives up the excess itself.
pub const TRIM_INLINE_AFTER: usize = 32;

/// At most this many locks are given up per pass of the service's thread (the mutex is not held
/// long; users come in between passes).
const TRIM_BATCH: usize = 64;

/// How long a try-lock lets a node that only caches the lock yield it (a few round trips and a
/// downconvert) before the lock counts as held elsewhere.
pub const TRY_FOR: Duration = Duration::from_millis(300);

/// Between lock services (inside the cluster runtime's messages).
#[derive(Debug, Serialize, Deserialize)]
enum SvcMsg {
    Dlm(Msg),
    DumpRequest(u64),
    DumpReply(u64, Vec<ResourceDump>),
}

struct Inner {
    dlm: Dlm,
    cache: HashMap<ResName, Cached>,
    by_id: HashMap<LockId, ResName>,
    tickets: HashMap<u64, oneshot::Sender<Result<(), ServiceError>>>,
    next_ticket: u64,
    dumps: HashMap<u64, mpsc::UnboundedSender<(NodeId, Vec<ResourceDump>)>>,
    fenced: Option<String>,
    /// Downconverts and drops waiting for the owner's callback to run outside the mutex.
    downconverts: Vec<GiveUp>,
    /// The bound on idle cached locks, if the owner set one.
    lru: Option<Lru>,
    members: BTreeSet<NodeId>,
    /// Recoveries of dead nodes running on this node.
    recovering: u32,
    /// This node's direct locks (outside the cache), each with whoever waits for its grant or
    /// its unlock.
    direct: HashMap<LockId, Option<std::sync::mpsc::Sender<Result<(), ServiceError>>>>,
}

/// A cached lock going down to `mode` after the owner's callback: converted, or with `dropped`
/// (the mode it was granted) unlocked.
struct GiveUp {
    res: ResName,
    id: LockId,
    mode: Mode,
    lvb: Option<Lvb>,
    dropped: Option<Mode>,
}

pub struct LockService {
    me: NodeId,
    /// Itself, for the recovery threads it starts.
    this: Weak<LockService>,
    inner: Mutex<Inner>,
    /// Signalled when a recovery on this node ends.
    recovered: Condvar,
    cluster: ClusterHandle,
    started: Instant,
    fenced: watch::Sender<Option<String>>,
    /// The members of the latest view.
    members: watch::Sender<BTreeSet<NodeId>>,
    recovery: RecoveryHook,
    downconvert: Option<DownconvertHook>,
    /// Messages handed to the cluster runtime since the start.
    sent: AtomicU64,
    /// Cached locks given up under the bound on idle locks since the start.
    dropped: AtomicU64,
    /// Signalled when the cached locks go over the bound on idle locks.
    trim_wanted: Condvar,
    /// How long a lock granted up is kept against blocked peers (ms; see `glue`): 0 unless an
    /// owner sets it.
    min_hold_ms: AtomicU64,
    /// The runtime the service was started on (its timers run there).
    rt: tokio::runtime::Handle,
}

/// A held lock; dropping it releases the local hold (the DLM lock stays cached).
pub struct LockGuard {
    svc: Arc<LockService>,
    res: ResName,
    mode: Mode,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.svc.release(&self.res, self.mode);
    }
}

impl LockGuard {
    pub fn mode(&self) -> Mode {
        self.mode
    }
}

/// A direct lock ([`LockService::lock_direct`]); dropping it unlocks it.
pub struct DirectLock {
    svc: Arc<LockService>,
    /// None once unlocked.
    id: Option<LockId>,
}

impl DirectLock {
    /// Unlocks and waits until the master has let the lock go, so that a request another node
    /// makes after hearing from this one no longer finds it.
    pub fn unlock(mut self) {
        if let Some(rx) = self.id.take().and_then(|id| self.svc.unlock_direct(id)) {
            let _ = rx.recv();
        }
    }
}

impl Drop for DirectLock {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.svc.unlock_direct(id);
        }
    }
}

/// A request waiting in the cache. Dropped before its outcome was taken (the user gave up: a
/// try-lock timed out, a client went away), it withdraws the request — or, if the grant came
/// in meanwhile, gives the hold back. Both under the service mutex, so no grant is lost.
struct Pending {
    svc: Arc<LockService>,
    res: ResName,
    mode: Mode,
    ticket: u64,
    /// Taken by a blocking wait (which then always finishes).
    rx: Option<oneshot::Receiver<Result<(), ServiceError>>>,
    done: bool,
}

impl Pending {
    fn finish(
        mut self,
        outcome: Result<Result<(), ServiceError>, oneshot::error::RecvError>,
    ) -> Result<LockGuard, ServiceError> {
        self.done = true;
        match outcome {
            Ok(Ok(())) => Ok(self.svc.guard(&self.res, self.mode)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ServiceError::Fenced("the lock service stopped".into())),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let svc = &self.svc;
        let mut inner = svc.inner.lock();
        inner.tickets.remove(&self.ticket);
        let granted = matches!(self.rx.as_mut().map(|rx| rx.try_recv()), Some(Ok(Ok(()))));
        if let Some(c) = inner.cache.get_mut(&self.res) {
            let actions = if granted {
                c.release(self.mode);
                Vec::new()
            } else {
                c.abandon(self.ticket)
            };
            svc.perform(&mut inner, &self.res, actions);
        }
        svc.step(&mut inner, &self.res);
        drop(inner);
        svc.run_downconverts();
    }
}

impl LockService {
    /// Starts the service on the current tokio runtime, consuming the cluster runtime's events.
    pub fn start(
        me: NodeId,
        cluster: ClusterHandle,
        mut events: mpsc::UnboundedReceiver<ClusterEvent>,
        recovery: RecoveryHook,
        downconvert: Option<DownconvertHook>,
    ) -> Arc<LockService> {
        let svc = Arc::new_cyclic(|this| LockService {
            me,
            this: this.clone(),
            inner: Mutex::new(Inner {
                dlm: Dlm::new(me),
                cache: HashMap::new(),
                by_id: HashMap::new(),
                tickets: HashMap::new(),
                next_ticket: 1,
                dumps: HashMap::new(),
                fenced: None,
                downconverts: Vec::new(),
                lru: None,
                members: BTreeSet::new(),
                recovering: 0,
                direct: HashMap::new(),
            }),
            recovered: Condvar::new(),
            cluster,
            started: Instant::now(),
            fenced: watch::channel(None).0,
            members: watch::channel(BTreeSet::new()).0,
            recovery,
            downconvert,
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            trim_wanted: Condvar::new(),
            min_hold_ms: AtomicU64::new(0),
            rt: tokio::runtime::Handle::current(),
        });
        let s = svc.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                s.cluster_event(ev);
            }
        });
        svc
    }

    /// Keeps every lock granted up for at least `hold` against blocked peers (see `glue`).
    pub fn set_min_hold(&self, hold: Duration) {
        self.min_hold_ms.store(hold.as_millis() as u64, Ordering::Relaxed);
    }

    /// Bounds the locks this node keeps cached with no local user: of the resources `capped`
    /// says are subject to it, at most `max` stay cached; the least recently used idle ones
    /// over that are given up (the downconvert callback runs as for a downconvert to NL, then
    /// the lock is unlocked). Set before the first lock is taken (entries already cached are not
    /// subject to it). Starts the thread that gives them up.
    pub fn set_idle_cap(&self, max: usize, capped: Box<dyn Fn(&ResName) -> bool + Send>) {
        self.inner.lock().lru = Some(Lru::new(max, capped));
        let this = self.this.clone();
        let spawned = std::thread::Builder::new().name("lock-trim".into()).spawn(move || {
            while let Some(svc) = this.upgrade() {
                svc.trim_pass();
            }
        });
        if let Err(e) = spawned {
            warn!("starting the thread that bounds idle locks: {e}; releasing users give them up");
        }
    }

    /// How many resources the DLM of this node masters, and how many locks it has (cached and
    /// direct).
    pub fn dlm_sizes(&self) -> (usize, usize) {
        self.inner.lock().dlm.sizes()
    }

    /// Cached locks given up under the bound on idle locks since the start.
    pub fn locks_dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// How many locks over the bound may be given up now (none while fenced or recovering: a
    /// recovery's locks must not go under it).
    fn excess(inner: &Inner) -> usize {
        match &inner.lru {
            Some(lru) if inner.fenced.is_none() && inner.recovering == 0 => lru.excess(),
            _ => 0,
        }
    }

    /// One pass of the service's thread: waits (up to a second) for the cached locks to go
    /// over the bound, then gives up at most a batch of the excess.
    fn trim_pass(&self) {
        let mut inner = self.inner.lock();
        if Self::excess(&inner) == 0 {
            self.trim_wanted.wait_for(&mut inner, Duration::from_secs(1));
        }
        let n = Self::excess(&inner).min(TRIM_BATCH);
        self.trim(&mut inner, n);
        drop(inner);
        self.run_downconverts();
    }

    /// Starts giving up `n` of the least recently used idle locks (their callbacks run in
    /// `run_downconverts`).
    fn trim(&self, inner: &mut Inner, n: usize) {
        let Some(lru) = inner.lru.as_mut().filter(|_| n > 0) else { return };
        let chosen = lru.choose(&mut inner.cache, n);
        self.dropped.fetch_add(chosen.len() as u64, Ordering::Relaxed);
        for (res, action) in chosen {
            self.perform(inner, &res, vec![action]);
        }
        self.pump(inner);
    }

    /// The service's clock, in milliseconds since it started.
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Messages this node's lock service sent to others since it started.
    pub fn messages_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Watch this to learn that the node fenced (then every held lock is void).
    pub fn fenced(&self) -> watch::Receiver<Option<String>> {
        self.fenced.subscribe()
    }

    /// Watch this to follow the membership (the members of each view, as the DLM gets it).
    pub fn members(&self) -> watch::Receiver<BTreeSet<NodeId>> {
        self.members.subscribe()
    }

    /// Takes `res` at `mode` (Pr or Ex for local users). With `try_for`, gives up with
    /// [`ServiceError::HeldElsewhere`] if the lock is not granted within that time — long enough
    /// for a peer that merely caches the lock to yield it, short enough to mean "in use".
    pub async fn lock(
        self: &Arc<Self>,
        res: &ResName,
        mode: Mode,
        try_for: Option<Duration>,
    ) -> Result<LockGuard, ServiceError> {
        let Some(mut pending) = self.begin(res, mode)? else { return Ok(self.guard(res, mode)) };
        let Some(rx) = pending.rx.as_mut() else { return Err(ServiceError::Fenced("the lock service stopped".into())) };
        let outcome = match try_for {
            None => rx.await,
            Some(limit) => match tokio::time::timeout(limit, rx).await {
                Ok(r) => r,
                Err(_) => return Err(ServiceError::HeldElsewhere),
            },
        };
        pending.finish(outcome)
    }

    /// [`lock`](Self::lock) for synchronous callers (not on a tokio worker).
    ///
    /// While this node recovers a dead one, its other users wait: the DLM lets the recovery
    /// node's requests past the dead node's locks (its recovery needs them), so without this a
    /// user here could see the volume before the dead node's journal is replayed (as OCFS2 makes
    /// lock takers wait for recovery).
    pub fn lock_blocking(self: &Arc<Self>, res: &ResName, mode: Mode) -> Result<LockGuard, ServiceError> {
        loop {
            self.wait_for_recovery();
            let guard = match self.begin(res, mode)? {
                None => self.guard(res, mode),
                Some(mut pending) => {
                    let outcome = match pending.rx.take() {
                        Some(rx) => rx.blocking_recv(),
                        None => return Err(ServiceError::Fenced("the lock service stopped".into())),
                    };
                    pending.finish(outcome)?
                }
            };
            if IN_RECOVERY.get() || self.inner.lock().recovering == 0 {
                return Ok(guard);
            }
        }
    }

    /// A try-lock for synchronous callers (not on a tokio worker): [`lock`](Self::lock) given
    /// [`TRY_FOR`], waited for on a small runtime of the caller's own.
    pub fn try_lock_blocking(self: &Arc<Self>, res: &ResName, mode: Mode) -> Result<LockGuard, ServiceError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| ServiceError::Runtime(e.to_string()))?;
        rt.block_on(self.lock(res, mode, Some(TRY_FOR)))
    }

    /// Takes `res` at `mode` only if that needs neither a wait nor a message: the cache covers it,
    /// or this node masters `res` and nothing is in the way (a lock nobody else can know yet,
    /// such as a new inode's). Never runs a downconvert callback on this thread, so a caller may
    /// hold what those callbacks take (the filesystem's core, in the middle of a request).
    pub fn try_lock_now(self: &Arc<Self>, res: &ResName, mode: Mode) -> Option<LockGuard> {
        {
            let inner = self.inner.lock();
            if inner.fenced.is_some() || (inner.recovering > 0 && !IN_RECOVERY.get()) {
                return None;
            }
            let cached = inner.cache.get(res);
            if !cached.is_none_or(|c| c.free_for(mode)) {
                return None;
            }
            let from_cache = cached.is_some_and(|c| c.covers(mode));
            if !from_cache && !inner.dlm.grants_at_once(res, cached.and_then(|c| c.id), mode) {
                return None;
            }
        }
        let pending = self.begin_quiet(res, mode).ok()?;
        let guard = match pending {
            None => Some(self.guard(res, mode)),
            Some(mut p) => match p.rx.as_mut().map(|rx| rx.try_recv()) {
                Some(Ok(Ok(()))) => p.finish(Ok(Ok(()))).ok(),
                // Not expected after the checks above; withdrawing may run callbacks: elsewhere.
                _ => {
                    std::thread::spawn(move || drop(p));
                    None
                }
            },
        };
        if !self.inner.lock().downconverts.is_empty() {
            let this = self.clone();
            std::thread::spawn(move || this.run_downconverts());
        }
        guard
    }

    /// Whether this node holds `res` cached at EX.
    pub fn cached_exclusive(&self, res: &ResName) -> bool {
        self.inner.lock().cache.get(res).is_some_and(|c| c.covers(Mode::Ex))
    }

    /// Whether this node masters `res` in the current view.
    pub fn masters(&self, res: &ResName) -> bool {
        self.inner.lock().dlm.masters(res)
    }

    /// Blocks while this node recovers a dead node, unless called by that recovery.
    fn wait_for_recovery(&self) {
        if IN_RECOVERY.get() {
            return;
        }
        let mut inner = self.inner.lock();
        while inner.recovering > 0 {
            self.recovered.wait(&mut inner);
        }
    }

    fn guard(self: &Arc<Self>, res: &ResName, mode: Mode) -> LockGuard {
        LockGuard { svc: self.clone(), res: res.clone(), mode }
    }

    /// Granted from the cache (`None`), or a pending request that hears the outcome.
    fn begin(self: &Arc<Self>, res: &ResName, mode: Mode) -> Result<Option<Pending>, ServiceError> {
        let pending = self.begin_quiet(res, mode)?;
        self.run_downconverts();
        Ok(pending)
    }

    /// [`begin`](Self::begin) without running the downconverts it may have queued.
    fn begin_quiet(self: &Arc<Self>, res: &ResName, mode: Mode) -> Result<Option<Pending>, ServiceError> {
        let mut inner = self.inner.lock();
        if let Some(why) = &inner.fenced {
            return Err(ServiceError::Fenced(why.clone()));
        }
        let ticket = inner.next_ticket;
        inner.next_ticket += 1;
        let Inner { cache, lru, .. } = &mut *inner;
        let cached = match cache.entry(res.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let c = e.insert(Cached::default());
                if let Some(lru) = lru {
                    lru.created(res, c);
                }
                c
            }
        };
        tracing::trace!(res = res.as_str(), ticket, ?mode, state = ?cached, "acquire");
        if cached.acquire(ticket, mode, self.now_ms()) {
            return Ok(None);
        }
        let (tx, rx) = oneshot::channel();
        inner.tickets.insert(ticket, tx);
        self.step(&mut inner, res);
        drop(inner);
        Ok(Some(Pending { svc: self.clone(), res: res.clone(), mode, ticket, rx: Some(rx), done: false }))
    }

    fn release(&self, res: &ResName, mode: Mode) {
        let mut inner = self.inner.lock();
        let Inner { cache, lru, .. } = &mut *inner;
        if let Some(c) = cache.get_mut(res) {
            c.release(mode);
            if let Some(lru) = lru {
                lru.touch(res, c);
            }
        }
        self.step(&mut inner, res);
        // The bound on idle locks: the service's thread gives up the excess; this user helps
        // only when that thread is far behind.
        let excess = Self::excess(&inner);
        if excess > 0 {
            self.trim_wanted.notify_one();
        }
        self.trim(&mut inner, excess.saturating_sub(TRIM_INLINE_AFTER));
        drop(inner);
        self.run_downconverts();
    }

    /// Lets the cache of `res` act, then everything the engine produced.
    fn step(&self, inner: &mut Inner, res: &ResName) {
        let now = self.now_ms();
        let actions = inner.cache.get_mut(res).map(|c| c.step(now)).unwrap_or_default();
        self.perform(inner, res, actions);
        self.pump(inner);
    }

    fn perform(&self, inner: &mut Inner, res: &ResName, actions: Vec<Action>) {
        for a in actions {
            tracing::trace!(res = res.as_str(), action = ?a, "lock cache");
            match a {
                Action::Request { mode } => {
                    let id = inner.dlm.lock(res, mode, LockFlags::default());
                    inner.by_id.insert(id, res.clone());
                    if let Some(c) = inner.cache.get_mut(res) {
                        c.id = Some(id);
                    }
                }
                Action::Convert { id, mode } => {
                    if let Err(e) = inner.dlm.convert(id, mode, LockFlags::default(), None) {
                        warn!(res = res.as_str(), "converting to {mode}: {e}");
                    }
                }
                Action::Downconvert { id, mode, lvb } => match self.downconvert {
                    Some(_) => inner.downconverts.push(GiveUp { res: res.clone(), id, mode, lvb, dropped: None }),
                    None => {
                        if let Err(e) = inner.dlm.convert(id, mode, LockFlags::default(), lvb) {
                            warn!(res = res.as_str(), "downconverting to {mode}: {e}");
                        }
                    }
                },
                // Nothing is cached under NL: no callback.
                Action::Drop { id, from, lvb } if self.downconvert.is_some() && from != Mode::Nl => {
                    inner.downconverts.push(GiveUp { res: res.clone(), id, mode: Mode::Nl, lvb, dropped: Some(from) })
                }
                Action::Drop { id, from, lvb } => Self::unlock_dropped(inner, res, id, from, lvb),
                Action::Cancel { id } => {
                    if let Err(e) = inner.dlm.cancel(id) {
                        debug!(res = res.as_str(), "withdrawing a request: {e}");
                    }
                }
                Action::Wake { ticket } => {
                    if let Some(tx) = inner.tickets.remove(&ticket) {
                        let _ = tx.send(Ok(()));
                    }
                }
                Action::Recheck { at } => {
                    let wait = Duration::from_millis(at.saturating_sub(self.now_ms()));
                    let (this, res) = (self.this.clone(), res.clone());
                    self.rt.spawn(async move {
                        tokio::time::sleep(wait).await;
                        // The recheck may downconvert, whose callback blocks: not on a worker.
                        tokio::task::spawn_blocking(move || this.upgrade().map(|svc| svc.recheck(&res)));
                    });
                }
            }
        }
    }

    /// A hold on `res` ended: act on what waited for it.
    fn recheck(&self, res: &ResName) {
        let mut inner = self.inner.lock();
        if let Some(c) = inner.cache.get_mut(res) {
            c.rechecked();
        }
        self.step(&mut inner, res);
        drop(inner);
        self.run_downconverts();
    }

    /// Runs owners' downconvert callbacks outside the mutex, then tells the DLM.
    fn run_downconverts(&self) {
        let Some(hook) = &self.downconvert else { return };
        loop {
            let pending = std::mem::take(&mut self.inner.lock().downconverts);
            if pending.is_empty() {
                return;
            }
            for GiveUp { res, id, mode, lvb, dropped } in pending {
                hook(&res, mode);
                let mut inner = self.inner.lock();
                match dropped {
                    Some(from) => Self::unlock_dropped(&mut inner, &res, id, from, lvb),
                    None => {
                        if let Err(e) = inner.dlm.convert(id, mode, LockFlags::default(), lvb) {
                            warn!(res = res.as_str(), "downconverting to {mode}: {e}");
                        }
                    }
                }
                self.pump(&mut inner);
            }
        }
    }

    /// Unlocks a cached lock being given up (granted `from`); if the DLM refuses, it is kept.
    fn unlock_dropped(inner: &mut Inner, res: &ResName, id: LockId, from: Mode, lvb: Option<Lvb>) {
        if let Err(e) = inner.dlm.unlock(id, lvb) {
            warn!(res = res.as_str(), "giving up an idle lock: {e}; kept");
            if let Some(c) = inner.cache.get_mut(res) {
                c.kept(from);
            }
        }
    }

    /// The unlock of cached lock `id` on `res` is done: the entry goes, unless users queued
    /// meanwhile (they ask for a new lock).
    fn cached_unlocked(&self, inner: &mut Inner, res: &ResName, id: LockId, now: u64) {
        let Some(c) = inner.cache.get_mut(res).filter(|c| c.id == Some(id)) else { return };
        c.unlocked();
        let actions = c.step(now);
        if c.forgettable() {
            inner.cache.remove(res);
        }
        self.perform(inner, res, actions);
    }

    /// Handles every engine output until there is none.
    fn pump(&self, inner: &mut Inner) {
        let now = self.now_ms();
        inner.dlm.set_time(now);
        let hold_until = now + self.min_hold_ms.load(Ordering::Relaxed);
        while let Some(ev) = inner.dlm.poll_event() {
            tracing::trace!(event = ?ev, "dlm");
            let (id, event) = match ev {
                Event::Send { to, msg } => {
                    self.send(to, &SvcMsg::Dlm(msg));
                    continue;
                }
                Event::RecoverNode { dead } => {
                    self.recover(inner, dead);
                    continue;
                }
                Event::Granted { id, .. } | Event::Failed { id, .. } | Event::Blocking { id, .. } => (id, ev),
                Event::Unlocked { id } => {
                    let res = inner.by_id.remove(&id);
                    if let Some(Some(tx)) = inner.direct.remove(&id) {
                        let _ = tx.send(Ok(()));
                    }
                    if let Some(res) = res {
                        self.cached_unlocked(inner, &res, id, now);
                    }
                    continue;
                }
            };
            if inner.direct.contains_key(&id) {
                Self::direct_event(inner, id, &event);
                continue;
            }
            let Some(res) = inner.by_id.get(&id).cloned() else {
                debug!(lock = id.0, "event for a lock no longer cached");
                continue;
            };
            let Some(c) = inner.cache.get_mut(&res) else { continue };
            let mut actions = match event {
                Event::Granted { mode, lvb, .. } => {
                    c.granted(mode, lvb, hold_until);
                    Vec::new()
                }
                Event::Failed { error, .. } => {
                    debug!(res = res.as_str(), "request ended: {error}");
                    c.failed();
                    Vec::new()
                }
                Event::Blocking { wanted, .. } => {
                    c.blocking(wanted);
                    Vec::new()
                }
                _ => Vec::new(),
            };
            actions.extend(c.step(now));
            self.perform(inner, &res, actions);
        }
    }

    fn send(&self, to: NodeId, msg: &SvcMsg) {
        match bincode::serde::encode_to_vec(msg, bincode::config::standard()) {
            Ok(bytes) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
                self.cluster.send(to, bytes)
            }
            Err(e) => warn!("encoding a lock message: {e}"),
        }
    }

    /// The filesystem's recovery runs on its own thread; the DLM releases the dead node's locks
    /// only once it returned.
    fn recover(&self, inner: &mut Inner, dead: NodeId) {
        info!(dead, "recovering node");
        inner.recovering += 1;
        let hook = self.recovery.clone();
        let svc = self.this.upgrade();
        std::thread::spawn(move || {
            IN_RECOVERY.set(true);
            hook(dead);
            if let Some(svc) = svc {
                let mut inner = svc.inner.lock();
                inner.recovering -= 1;
                svc.recovered.notify_all();
                if let Err(e) = inner.dlm.recovery_done(dead) {
                    warn!(dead, "finishing recovery: {e}");
                }
                svc.pump(&mut inner);
                drop(inner);
                svc.run_downconverts();
                info!(dead, "recovery done");
            }
        });
    }

    fn cluster_event(self: &Arc<Self>, ev: ClusterEvent) {
        let mut inner = self.inner.lock();
        if inner.fenced.is_some() {
            return;
        }
        match ev {
            ClusterEvent::View(view) => {
                let members = view.nodes();
                inner.dlm.set_view(view.epoch, &members);
                self.members.send_replace(members.clone());
                inner.members = members;
            }
            ClusterEvent::Message { from, payload } => {
                match bincode::serde::decode_from_slice::<SvcMsg, _>(&payload, bincode::config::standard()) {
                    Ok((SvcMsg::Dlm(msg), _)) => inner.dlm.receive(from, msg),
                    Ok((SvcMsg::DumpRequest(req), _)) => {
                        let dump = inner.dlm.dump();
                        self.send(from, &SvcMsg::DumpReply(req, dump));
                    }
                    Ok((SvcMsg::DumpReply(req, dump), _)) => {
                        if let Some(tx) = inner.dumps.get(&req) {
                            let _ = tx.send((from, dump));
                        }
                    }
                    Err(e) => warn!(from, "undecodable lock message: {e}"),
                }
            }
            ClusterEvent::Fenced(why) => {
                inner.fenced = Some(why.clone());
                for (_, tx) in inner.tickets.drain() {
                    let _ = tx.send(Err(ServiceError::Fenced(why.clone())));
                }
                for tx in inner.direct.drain().filter_map(|(_, tx)| tx) {
                    let _ = tx.send(Err(ServiceError::Fenced(why.clone())));
                }
                self.fenced.send_replace(Some(why));
                return;
            }
        }
        self.pump(&mut inner);
        drop(inner);
        // Owners' downconvert callbacks block (a filesystem checkpoints there): not on a
        // runtime worker.
        if self.downconvert.is_some() {
            let this = self.clone();
            tokio::task::spawn_blocking(move || this.run_downconverts());
        }
    }

    /// Takes a direct lock on `res` at `mode`: one outside the lock cache, held from its grant
    /// until unlocked and never given up for another node (blocking callbacks are ignored), so
    /// that its grant says exactly what its user does (OCFS2's open locks). With `noqueue` it is
    /// a try-lock: `None` at once when another lock is in the way, and nobody is asked to yield.
    pub fn lock_direct(
        self: &Arc<Self>,
        res: &ResName,
        mode: Mode,
        noqueue: bool,
    ) -> Result<Option<DirectLock>, ServiceError> {
        self.wait_for_recovery();
        let (id, rx) = {
            let mut inner = self.inner.lock();
            if let Some(why) = &inner.fenced {
                return Err(ServiceError::Fenced(why.clone()));
            }
            let id = inner.dlm.lock(res, mode, LockFlags { noqueue });
            let (tx, rx) = std::sync::mpsc::channel();
            inner.direct.insert(id, Some(tx));
            self.pump(&mut inner);
            (id, rx)
        };
        self.run_downconverts();
        match rx.recv() {
            Ok(Ok(())) => Ok(Some(DirectLock { svc: self.clone(), id: Some(id) })),
            Ok(Err(ServiceError::HeldElsewhere)) => Ok(None),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ServiceError::Fenced("the lock service stopped".into())),
        }
    }

    /// [`lock_direct`](Self::lock_direct) only if that needs neither a wait nor a message: this
    /// node masters `res` and nothing is in the way (the open lock of an inode just created
    /// here, which nobody else can know yet). Like [`try_lock_now`](Self::try_lock_now) it never
    /// waits (not for a recovery either) and never runs a downconvert callback on this thread.
    pub fn lock_direct_now(self: &Arc<Self>, res: &ResName, mode: Mode) -> Option<DirectLock> {
        let (mut lock, rx, downconverts) = {
            let mut inner = self.inner.lock();
            if inner.fenced.is_some()
                || (inner.recovering > 0 && !IN_RECOVERY.get())
                || !inner.dlm.grants_at_once(res, None, mode)
            {
                return None;
            }
            let id = inner.dlm.lock(res, mode, LockFlags { noqueue: true });
            let (tx, rx) = std::sync::mpsc::channel();
            inner.direct.insert(id, Some(tx));
            self.pump(&mut inner);
            (DirectLock { svc: self.clone(), id: Some(id) }, rx, !inner.downconverts.is_empty())
        };
        if downconverts {
            let this = self.clone();
            std::thread::spawn(move || this.run_downconverts());
        }
        match rx.try_recv() {
            Ok(Ok(())) => Some(lock),
            // Refused at once: the lock is gone already.
            Ok(Err(_)) | Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                lock.id.take();
                None
            }
            // Not expected after the check above: given up once its outcome comes, elsewhere.
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                std::thread::spawn(move || {
                    if !matches!(rx.recv(), Ok(Ok(()))) {
                        lock.id.take();
                    }
                });
                None
            }
        }
    }

    /// A grant or failure of a direct lock reaches its waiter; a failed lock is gone.
    fn direct_event(inner: &mut Inner, id: LockId, event: &Event) {
        let outcome = match event {
            Event::Granted { .. } => Ok(()),
            Event::Failed { .. } => Err(ServiceError::HeldElsewhere),
            _ => return,
        };
        let waiter = if outcome.is_err() {
            inner.direct.remove(&id).flatten()
        } else {
            inner.direct.get_mut(&id).and_then(Option::take)
        };
        if let Some(tx) = waiter {
            let _ = tx.send(outcome);
        }
    }

    /// Unlocks direct lock `id`; the receiver hears when the master has let it go.
    fn unlock_direct(&self, id: LockId) -> Option<std::sync::mpsc::Receiver<Result<(), ServiceError>>> {
        let rx = {
            let mut inner = self.inner.lock();
            if inner.fenced.is_some() {
                return None;
            }
            let (tx, rx) = std::sync::mpsc::channel();
            inner.direct.insert(id, Some(tx));
            if let Err(e) = inner.dlm.unlock(id, None) {
                warn!("unlocking direct lock {}: {e}", id.0);
                inner.direct.remove(&id);
                return None;
            }
            self.pump(&mut inner);
            rx
        };
        self.run_downconverts();
        Some(rx)
    }

    /// Every member's view of the locks it masters or holds, gathered over the cluster.
    pub async fn dump_cluster(&self, timeout: Duration) -> Vec<(NodeId, Vec<ResourceDump>)> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (req, members, mine) = {
            let mut inner = self.inner.lock();
            let req = inner.next_ticket;
            inner.next_ticket += 1;
            inner.dumps.insert(req, tx);
            (req, inner.members.clone(), inner.dlm.dump())
        };
        let others: BTreeSet<NodeId> = members.into_iter().filter(|&n| n != self.me).collect();
        for &n in &others {
            self.send(n, &SvcMsg::DumpRequest(req));
        }
        let mut out = vec![(self.me, mine)];
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() <= others.len() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(reply)) => out.push(reply),
                _ => break,
            }
        }
        self.inner.lock().dumps.remove(&req);
        out.sort_by_key(|(n, _)| *n);
        out
    }

    /// This node's own lock cache, for status output: resource, granted mode, local holders.
    pub fn cached(&self) -> Vec<(String, Option<Mode>, u32, bool)> {
        let inner = self.inner.lock();
        let mut v: Vec<_> =
            inner.cache.iter().map(|(r, c)| (r.as_str().to_owned(), c.granted, c.readers, c.writer)).collect();
        v.sort();
        v
    }
}
