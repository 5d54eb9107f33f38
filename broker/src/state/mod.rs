//! Who holds what: interfaces with the XSK program attached, their leased
//! queues, and the sockets of each lease. The rules are plain code over the
//! [`Kernel`] seam, so they are unit-tested against a fake kernel.
//!
//! - `grant`: one path for both flows (sockets and map): checks, the
//!   interface's turn, attach, record.
//! - `map`: the map flow's grant (`open_map`, the DPDK endpoint's).
//! - `release`: ending leases, detaching unused programs, interfaces that
//!   disappear.
//! - `restore`: the state file, and taking over from an earlier run.
//! - `status`: what status and metrics read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Instant;

use tracing::warn;
use xsk_broker_protocol::AttachMode;

use crate::kernel::{Kernel, RealKernel};
use crate::limits::{Connections, Limits};
use crate::persist::{LeaseKind, StateDir};
use crate::stats::Counters;
use crate::traffic::SocketTraffic;

mod grant;
mod map;
mod release;
mod restore;
mod status;
#[cfg(test)]
mod tests;

/// Identifies a lease (one control connection's grant).
pub type LeaseId = u64;

/// A leased socket: its queue and the broker's copy of its fd.
type LeasedSocket = (u32, Arc<OwnedFd>);

/// The peer holding a lease, from SO_PEERCRED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// What ends a lease when its [`Lease`] is dropped: the broker that granted
/// it (held weakly, so a lease never keeps a broker alive).
trait LeaseOwner: Send + Sync {
    fn end(&self, lease: &mut Lease);
}

/// Sockets (or a map) granted to one connection. Dropping it releases it:
/// the broker clears its map entries and queues, and detaches the program
/// once no lease uses the interface, whether the connection ended cleanly or
/// its thread panicked.
pub struct Lease {
    id: LeaseId,
    ifname: String,
    ifindex: u32,
    /// Shared with the broker's lease table, which reads their statistics.
    sockets: Vec<LeasedSocket>,
    /// For a map lease (`open_map`): its queues and pin.
    map: Option<MapGrant>,
    /// Set when the broker ends the lease itself (its interface vanished).
    revocation: Arc<Revocation>,
    /// Set once the grant is recorded.
    owner: Option<Weak<dyn LeaseOwner>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id)
            .field("ifname", &self.ifname)
            .field("queues", &self.queues())
            .finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take().and_then(|w| w.upgrade()) {
            owner.end(self);
        }
    }
}

/// How the broker ends a lease on its own (its interface disappeared): the
/// reason is recorded and the holder's connection is shut down for reading,
/// which wakes its connection thread; that thread tells the client and
/// closes the connection.
#[derive(Debug, Default)]
pub struct Revocation {
    reason: std::sync::OnceLock<String>,
    /// A duplicate of the holder's connection, to shut down.
    conn: Mutex<Option<std::os::unix::net::UnixStream>>,
    /// The holder's session takes events (it is told when the broker stops).
    events: std::sync::atomic::AtomicBool,
    /// The broker is stopping: the holder's connection thread says so and
    /// leaves the lease in the kernel.
    stopping: std::sync::atomic::AtomicBool,
}

impl Revocation {
    fn revoke(&self, reason: String) {
        let _ = self.reason.set(reason);
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = conn.as_ref() {
            let _ = c.shutdown(std::net::Shutdown::Read);
        }
    }
}

/// What a map lease holds besides its queues: the pin to remove at the end.
#[derive(Debug)]
struct MapGrant {
    queues: Vec<u32>,
    pin: Option<PathBuf>,
}

impl Lease {
    /// The socket fds, in queue order, to send to the client.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.sockets.iter().map(|(_, fd)| fd.as_fd()).collect()
    }

    /// Queue ids held.
    pub fn queues(&self) -> Vec<u32> {
        let mut q: Vec<u32> = self.sockets.iter().map(|(q, _)| *q).collect();
        if let Some(m) = &self.map {
            q.extend(&m.queues);
        }
        q
    }

    /// The interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// A short description for messages.
    pub fn describe(&self) -> String {
        format!("{} queues {:?}", self.ifname, self.queues())
    }

    /// Give the broker a way to wake the holder's connection thread if it
    /// ends this lease on its own (see [`Broker::reap_vanished_interfaces`]):
    /// `conn` is a duplicate of the connection, shut down for reading then.
    pub fn watch_connection(&self, conn: std::os::unix::net::UnixStream) {
        let mut slot = self
            .revocation
            .conn
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.revocation.reason.get().is_some() {
            let _ = conn.shutdown(std::net::Shutdown::Read);
        }
        *slot = Some(conn);
    }

    /// Why the broker ended this lease on its own, if it did.
    pub fn revoked(&self) -> Option<&str> {
        self.revocation.reason.get().map(String::as_str)
    }

    /// The holder's session takes events: wake it when the broker stops
    /// ([`Broker::announce_stopping`]).
    pub fn wants_events(&self) {
        self.revocation
            .events
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the broker is stopping and asked this lease's connection to
    /// say so.
    pub fn stopping(&self) -> bool {
        self.revocation
            .stopping
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Let go of the lease without ending it: the broker is stopping, and
    /// the lease's queues and map entries stay in the kernel (a restarted
    /// broker with `--state-dir` takes them over).
    pub fn keep_in_kernel(mut self) {
        self.owner = None;
    }
}

struct Interface<P> {
    name: String,
    program: P,
    /// Queue id -> holder.
    queues: BTreeMap<u32, (LeaseId, Peer)>,
}

/// What the broker remembers of a granted lease, for status and metrics.
struct LeaseRecord {
    ifname: String,
    ifindex: u32,
    peer: Peer,
    granted: Instant,
    sockets: Vec<LeasedSocket>,
    /// The frames each socket moved, in the order of `sockets`; its ring
    /// mappings go with the record when the lease ends.
    traffic: Vec<Arc<SocketTraffic>>,
    /// Queues the broker holds no socket of: a map lease's, or those of a
    /// lease restored from the state file after a restart.
    map_queues: Vec<u32>,
    /// Shared with the [`Lease`], to end it from here.
    revocation: Arc<Revocation>,
    /// Sockets or map.
    kind: LeaseKind,
    /// The holder's start time, to tell it from a process reusing its pid.
    start_time: Option<u64>,
    /// A map lease's pin.
    map_pin: Option<PathBuf>,
    /// Restored from the state file: no connection, its holder is watched.
    restored: bool,
}

impl LeaseRecord {
    /// Every queue the lease holds.
    fn queues(&self) -> Vec<u32> {
        self.sockets
            .iter()
            .map(|(q, _)| *q)
            .chain(self.map_queues.iter().copied())
            .collect()
    }
}

struct Inner<P> {
    interfaces: HashMap<u32, Interface<P>>,
    next_lease: LeaseId,
    /// Every granted lease by id (so oldest first).
    leases: BTreeMap<LeaseId, LeaseRecord>,
    /// The last holder of each (ifindex, queue) whose lease ended, to name
    /// it when a socket it kept bound still holds the queue.
    previous: HashMap<(u32, u32), Peer>,
}

impl<P> Default for Inner<P> {
    fn default() -> Self {
        Inner {
            interfaces: HashMap::new(),
            next_lease: 0,
            leases: BTreeMap::new(),
            previous: HashMap::new(),
        }
    }
}

/// The broker's shared state, over the kernel `K`.
pub struct Broker<K: Kernel = RealKernel> {
    kernel: K,
    inner: Mutex<Inner<K::Program>>,
    /// Where map pins go (`--bpffs-dir`), if anywhere.
    bpffs_dir: Option<PathBuf>,
    /// Connection, lease and queue limits.
    limits: Limits,
    /// Open connections, counted against `limits`.
    connections: Arc<Connections>,
    /// Where the state survives a restart (`--state-dir`, `--pin-dir`).
    persist: Option<Persist>,
    /// Interfaces a grant is being prepared on (see [`Broker::turn`]).
    granting: Mutex<HashSet<u32>>,
    /// Signalled when an interface leaves `granting`.
    granted: Condvar,
    /// Grants, releases and refusals since start.
    counters: Counters,
    /// Connections still to tell that the broker is stopping.
    stop_notices: (Mutex<usize>, Condvar),
}

/// One grant's turn on an interface: grants on one interface are made one at
/// a time, so that a program can be attached without the broker's lock (a
/// slow attach on one interface never holds up grants on another). Dropping
/// it hands the interface to the next grant.
struct Turn<'a, K: Kernel> {
    broker: &'a Broker<K>,
    ifindex: u32,
}

impl<K: Kernel> Drop for Turn<'_, K> {
    fn drop(&mut self) {
        let mut busy = self
            .broker
            .granting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        busy.remove(&self.ifindex);
        self.broker.granted.notify_all();
    }
}

/// The state file and the bpffs directory where each attached program and
/// its XSKMAP are pinned, so a restarted broker can reopen them.
pub struct Persist {
    /// The state file's directory.
    pub state: StateDir,
    /// A directory on a bpffs.
    pub pins: PathBuf,
}

impl Persist {
    fn prog_pin(&self, ifindex: u32, mode: AttachMode) -> PathBuf {
        self.pins.join(format!("{ifindex}-{mode}-prog"))
    }

    fn map_pin(&self, ifindex: u32, mode: AttachMode) -> PathBuf {
        self.pins.join(format!("{ifindex}-{mode}-map"))
    }

    /// Remove an interface's program and map pins.
    fn unpin(&self, ifindex: u32, mode: AttachMode) {
        for p in [self.prog_pin(ifindex, mode), self.map_pin(ifindex, mode)] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!("cannot remove the pin {}: {e}", p.display()),
            }
        }
    }
}

impl<K: Kernel> Broker<K> {
    /// A broker over `kernel` that pins maps under `dir` (a directory it
    /// owns on a bpffs) when a client asks for a pin. With `persist`, every
    /// attached program and its XSKMAP are pinned and the state file is
    /// rewritten after every grant and release.
    pub fn new(kernel: K, dir: Option<PathBuf>, persist: Option<Persist>) -> Self {
        Broker {
            kernel,
            inner: Mutex::new(Inner::default()),
            bpffs_dir: dir,
            limits: Limits::default(),
            connections: Arc::default(),
            persist,
            granting: Mutex::new(HashSet::new()),
            granted: Condvar::new(),
            counters: Counters::default(),
            stop_notices: (Mutex::new(0), Condvar::new()),
        }
    }

    /// Use `limits` (connections, leases per uid, queues per lease, idle timeout).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The kernel the broker works on.
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// Grants, releases and refusals since start.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Open connections, counted against the limits.
    pub fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    fn lock(&self) -> MutexGuard<'_, Inner<K::Program>> {
        // A panic while holding the lock would be a bug; keep serving with the
        // state as it was left rather than poisoning every later request.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The broker is stopping: wake the connection of every lease whose
    /// session takes events, to tell its holder (a `stopping` event) and let
    /// go of the lease without ending it. Returns how many were woken; see
    /// [`Broker::wait_stop_notices`].
    pub fn announce_stopping(&self) -> usize {
        let inner = self.lock();
        let mut woken = 0;
        for rec in inner.leases.values() {
            let r = &rec.revocation;
            if r.events.load(std::sync::atomic::Ordering::Relaxed) {
                r.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
                let conn = r.conn.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(c) = conn.as_ref() {
                    let _ = c.shutdown(std::net::Shutdown::Read);
                    woken += 1;
                }
            }
        }
        *self
            .stop_notices
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = woken;
        woken
    }

    /// A connection woken by [`Broker::announce_stopping`] has told its
    /// holder.
    pub fn stop_notice_sent(&self) {
        let mut left = self
            .stop_notices
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *left = left.saturating_sub(1);
        self.stop_notices.1.notify_all();
    }

    /// Wait (at most `timeout`) until every woken connection has told its
    /// holder that the broker is stopping.
    pub fn wait_stop_notices(&self, timeout: std::time::Duration) {
        let left = self
            .stop_notices
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let _ = self
            .stop_notices
            .1
            .wait_timeout_while(left, timeout, |n| *n > 0);
    }

    /// End a lease: clear its map entries, close the broker's copies of its
    /// sockets, and detach the program if no lease uses the interface any
    /// more. The same as dropping it.
    pub fn release(&self, lease: Lease) {
        drop(lease);
    }
}

impl<K: Kernel> LeaseOwner for Broker<K> {
    fn end(&self, lease: &mut Lease) {
        self.end_lease(lease);
    }
}
