//! Who holds what: interfaces with the XSK program attached, their leased
//! queues, and the sockets of each lease.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tracing::{info, warn};
use xsk_broker_protocol::{
    AttachMode, CopyMode, ErrorCode, ErrorReply, Holder, LeaseStatus, MapOpened, OpenMapRequest,
    OpenRequest, Opened, SocketInfo, SocketStatus, XdpMode,
};

use crate::confine::{Confinement, SocketGrant};
use crate::limits::{Connections, Limits};
use crate::persist::{self, InterfaceState, LeaseKind, LeaseState, StateDir, StateFile};
use crate::probe;
use crate::stats::{Counters, Snapshot, SnapshotSource};
use crate::xdp::{self, XskProgram};
use xsk_broker_protocol::ConfinementLevel;

/// Identifies a lease (one control connection's grant).
pub type LeaseId = u64;

/// How long a grant waits for the kernel to free a queue whose last socket
/// was just closed: the kernel unbinds a closed AF_XDP socket's buffer pool
/// in deferred work, a moment after the holder exits.
const UNBIND_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

/// A leased socket: its queue and the broker's copy of its fd.
type LeasedSocket = (u32, Arc<OwnedFd>);

/// The peer holding a lease, from SO_PEERCRED.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Sockets granted to one connection. Dropping it does not release it: pass
/// it to [`Broker::release`].
#[derive(Debug)]
pub struct Lease {
    id: LeaseId,
    ifname: String,
    ifindex: u32,
    /// Shared with the broker's lease table, which reads their statistics.
    sockets: Vec<(u32, Arc<OwnedFd>)>,
    /// For a map lease (`open_map`): its queues and pin.
    map: Option<MapGrant>,
    /// Set when the broker ends the lease itself (its interface vanished).
    revocation: Arc<Revocation>,
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
}

struct Interface {
    name: String,
    program: XskProgram,
    /// Queue id -> holder.
    queues: BTreeMap<u32, (LeaseId, Peer)>,
}

/// What the broker remembers of a granted lease, for status and metrics.
struct LeaseRecord {
    ifname: String,
    ifindex: u32,
    peer: Peer,
    granted: Instant,
    sockets: Vec<(u32, Arc<OwnedFd>)>,
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

#[derive(Default)]
struct Inner {
    interfaces: HashMap<u32, Interface>,
    next_lease: LeaseId,
    /// Every granted lease by id (so oldest first).
    leases: BTreeMap<LeaseId, LeaseRecord>,
    /// The last holder of each (ifindex, queue) whose lease ended, to name
    /// it when a socket it kept bound still holds the queue.
    previous: HashMap<(u32, u32), Peer>,
}

/// The broker's shared state.
#[derive(Default)]
pub struct Broker {
    inner: Mutex<Inner>,
    /// Where map pins go (`--bpffs-dir`), if anywhere.
    bpffs_dir: Option<PathBuf>,
    /// Connection, lease and queue limits.
    limits: Limits,
    /// Open connections, counted against `limits`.
    connections: Arc<Connections>,
    /// Where the state survives a restart (`--state-dir`, `--pin-dir`).
    persist: Option<Persist>,
    /// Asks the kernel whether a queue has an AF_XDP socket bound; None
    /// where the kernel cannot tell (then only the lease table is checked).
    probe: Option<probe::QueueProbe>,
    /// Interfaces a grant is being prepared on (see [`Broker::turn`]).
    granting: Mutex<std::collections::HashSet<u32>>,
    /// Signalled when an interface leaves `granting`.
    granted: std::sync::Condvar,
    /// Grants, releases and refusals since start.
    counters: Counters,
    /// What the kernel is made to enforce on every socket handed out.
    confinement: Option<Arc<Confinement>>,
}

/// One grant's turn on an interface: grants on one interface are made one at
/// a time, so that a program can be attached without the broker's lock (a
/// slow attach on one interface never holds up grants on another). Dropping
/// it hands the interface to the next grant.
struct Turn<'a> {
    broker: &'a Broker,
    ifindex: u32,
}

impl Drop for Turn<'_> {
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

/// A grant ready to be made: the broker's lock, with the interface's program
/// attached and every check passed for the request.
struct Prepared<'a> {
    inner: MutexGuard<'a, Inner>,
    ifindex: u32,
    /// The program was attached for this request (detach it if the grant
    /// fails after all).
    newly_attached: bool,
    _turn: Turn<'a>,
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

fn err(code: ErrorCode, msg: impl Into<String>) -> ErrorReply {
    ErrorReply::new(code, msg)
}

impl Broker {
    /// Use `limits` (connections, leases per uid, queues per lease, idle timeout).
    pub fn with_limits(mut self, limits: Limits) -> Broker {
        self.limits = limits;
        self
    }

    /// Check with `probe` that a queue has no AF_XDP socket bound before
    /// granting it.
    pub fn with_queue_probe(mut self, probe: probe::QueueProbe) -> Broker {
        self.probe = Some(probe);
        self
    }

    /// Grants, releases and refusals since start.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Hold every socket created from now on to its grant with `confinement`.
    pub fn with_confinement(mut self, confinement: Arc<Confinement>) -> Broker {
        self.confinement = Some(confinement);
        self
    }

    /// The confinement level in force, if confinement was set up.
    pub fn confinement_level(&self) -> Option<ConfinementLevel> {
        self.confinement.as_ref().map(|c| c.level())
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Open connections, counted against the limits.
    pub fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    /// Refuse a lease the limits do not allow `peer` (call with the lock held,
    /// so two requests of one uid cannot both pass).
    fn check_lease_limits(&self, inner: &Inner, queues: u32, peer: Peer) -> Result<(), ErrorReply> {
        self.limits.check_queues(queues)?;
        let held = inner
            .leases
            .values()
            .filter(|l| l.peer.uid == peer.uid)
            .count();
        let held_queues: usize = inner
            .leases
            .values()
            .filter(|l| l.peer.uid == peer.uid)
            .map(|l| l.sockets.len() + l.map_queues.len())
            .sum();
        if held_queues + queues as usize > self.limits.max_queues_per_uid {
            return Err(err(
                ErrorCode::NotPermitted,
                format!(
                    "uid {} holds {held_queues} queue(s) and asked for {queues} more; one user \
                     may hold at most {} (--max-queues-per-uid {}); release some first",
                    peer.uid, self.limits.max_queues_per_uid, self.limits.max_queues_per_uid
                ),
            ));
        }
        if held >= self.limits.max_leases_per_uid {
            return Err(err(
                ErrorCode::NotPermitted,
                format!(
                    "uid {} already holds {held} leases, the most one user may hold \
                     (--max-leases-per-uid {}); release one first",
                    peer.uid, self.limits.max_leases_per_uid
                ),
            ));
        }
        Ok(())
    }

    /// End every lease on an interface that no longer exists (deleted, or
    /// moved to another network namespace): the kernel has already detached
    /// its XDP program and unbound its sockets. Their state is cleared, each
    /// holder's connection is woken to be told and closed, and the number of
    /// leases ended is returned. Called every second by the watcher thread.
    pub fn reap_vanished_interfaces(&self) -> usize {
        // The interfaces are listed (netlink) without the broker's lock; only
        // those known before the listing can be missing from it.
        let known: Vec<u32> = self.lock().interfaces.keys().copied().collect();
        if known.is_empty() {
            return 0;
        }
        let present: std::collections::HashSet<u32> = match nix::net::if_::if_nameindex() {
            Ok(list) => list.iter().map(|i| i.index()).collect(),
            Err(e) => {
                warn!("cannot list the network interfaces: {e}");
                return 0;
            }
        };
        let gone: Vec<u32> = known
            .into_iter()
            .filter(|ifindex| !present.contains(ifindex))
            .collect();
        if gone.is_empty() {
            return 0;
        }
        let mut inner = self.lock();
        let mut ended = 0;
        for ifindex in gone {
            let Some(iface) = inner.interfaces.remove(&ifindex) else {
                continue;
            };
            let ids: Vec<LeaseId> = inner
                .leases
                .iter()
                .filter(|(_, r)| r.ifindex == ifindex)
                .map(|(id, _)| *id)
                .collect();
            warn!(
                ifname = %iface.name, ifindex, leases = ids.len(),
                "interface {} (ifindex {ifindex}) disappeared; ending its {} lease(s)",
                iface.name, ids.len()
            );
            for id in ids {
                if let Some(rec) = inner.leases.remove(&id) {
                    let mut queues: Vec<u32> = rec.sockets.iter().map(|(q, _)| *q).collect();
                    queues.extend(&rec.map_queues);
                    if rec.restored {
                        // No connection thread will release it: its pin
                        // goes now.
                        remove_pin(rec.map_pin.as_deref());
                    }
                    rec.revocation.revoke(format!(
                        "interface {} (ifindex {ifindex}) disappeared from the broker's network \
                         namespace; the lease on queues {queues:?} has ended",
                        iface.name
                    ));
                    ended += 1;
                }
            }
            inner.previous.retain(|(i, _), _| *i != ifindex);
            // The program went with the device; close the broker's handles
            // without trying to detach.
            if let Some(p) = &self.persist {
                p.unpin(ifindex, iface.program.mode());
            }
            drop(iface);
        }
        let _ = self.save(&inner);
        ended
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock would be a bug; keep serving with the
        // state as it was left rather than poisoning every later request.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Grant `req` to `peer`: attach the program if needed, create one socket
    /// per queue and insert it into the XSKMAP. On any failure nothing is left
    /// behind (no socket, map entry or program of this request).
    pub fn open(&self, req: &OpenRequest, peer: Peer) -> Result<(Lease, Opened), ErrorReply> {
        req.validate()?;
        let Prepared {
            mut inner,
            ifindex,
            newly_attached,
            _turn,
        } = self.prepare_grant(req, peer)?;
        let id = inner.next_lease;
        inner.next_lease += 1;
        let iface = inner
            .interfaces
            .get_mut(&ifindex)
            .expect("present: prepare_grant attached it or found it");
        match create_sockets(iface, req, ifindex, self.confinement.as_deref()) {
            Ok(sockets) => {
                let sockets: Vec<(u32, Arc<OwnedFd>)> = sockets
                    .into_iter()
                    .map(|(q, fd)| (q, Arc::new(fd)))
                    .collect();
                for (q, _) in &sockets {
                    iface.queues.insert(*q, (id, peer));
                }
                let opened = Opened {
                    ifname: req.ifname.clone(),
                    ifindex,
                    mode: iface.program.mode(),
                    program_id: iface.program.attached_id(),
                    copy: req.copy,
                    sockets: sockets
                        .iter()
                        .map(|(q, _)| SocketInfo {
                            queue_id: *q,
                            ifindex,
                        })
                        .collect(),
                };
                let lease = Lease {
                    id,
                    ifname: req.ifname.clone(),
                    ifindex,
                    sockets,
                    map: None,
                    revocation: Arc::new(Revocation::default()),
                };
                let lease = self.record_grant(&mut inner, lease, peer)?;
                Ok((lease, opened))
            }
            Err(e) => {
                if newly_attached {
                    detach_if_unused(&mut inner, ifindex, self.persist.as_ref());
                }
                Err(e)
            }
        }
    }

    /// Wait for and take the interface's turn (see [`Turn`]).
    fn turn(&self, ifindex: u32) -> Turn<'_> {
        let mut busy = self.granting.lock().unwrap_or_else(|p| p.into_inner());
        while busy.contains(&ifindex) {
            busy = self.granted.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        busy.insert(ifindex);
        Turn {
            broker: self,
            ifindex,
        }
    }

    /// The one path every grant (sockets or map) takes up to making it: the
    /// interface and its queues, the interface's turn, the kernel's view of
    /// the queues, the limits, the lease table, the mode; then the program,
    /// attached if the interface has none of the broker's yet. The broker's
    /// lock is not held while the kernel is asked or the program attached.
    fn prepare_grant(&self, req: &OpenRequest, peer: Peer) -> Result<Prepared<'_>, ErrorReply> {
        let (ifindex, counts) = check_queues(req)?;
        let turn = self.turn(ifindex);
        {
            let inner = self.lock();
            self.check_lease_limits(&inner, req.queues, peer)?;
            if let Some(iface) = inner.interfaces.get(&ifindex) {
                check_free(iface, req)?;
                check_mode(req, iface.program.mode())?;
            }
        }
        // No grant on this interface can happen meanwhile (the turn is
        // ours), and releases only free queues: the checks above hold.
        self.check_unbound(ifindex, req)?;
        let inner = self.lock();
        // Grants on other interfaces may have used up this uid's quota.
        self.check_lease_limits(&inner, req.queues, peer)?;
        if inner.interfaces.contains_key(&ifindex) {
            return Ok(Prepared {
                inner,
                ifindex,
                newly_attached: false,
                _turn: turn,
            });
        }
        drop(inner);
        let program = attach(req, ifindex, counts.max, self.persist.as_ref())?;
        info!(
            ifname = %req.ifname, ifindex, mode = %program.mode(),
            program_id = program.attached_id(), "attached the XSK program"
        );
        let mut inner = self.lock();
        inner.interfaces.insert(
            ifindex,
            Interface {
                name: req.ifname.clone(),
                program,
                queues: BTreeMap::new(),
            },
        );
        // The lock was let go for the attach: grants on other interfaces
        // may have used up this uid's quota meanwhile.
        if let Err(e) = self.check_lease_limits(&inner, req.queues, peer) {
            detach_if_unused(&mut inner, ifindex, self.persist.as_ref());
            return Err(e);
        }
        Ok(Prepared {
            inner,
            ifindex,
            newly_attached: true,
            _turn: turn,
        })
    }

    /// Refuse if an AF_XDP socket is still bound to any asked-for queue (a
    /// holder whose lease ended but who kept its bound socket, or a program
    /// the broker does not know), as the kernel reports it
    /// ([`probe::QueueProbe`]). Names the queue's previous holder when known.
    fn check_unbound(&self, ifindex: u32, req: &OpenRequest) -> Result<(), ErrorReply> {
        let Some(probe) = &self.probe else {
            return Ok(());
        };
        for q in req.queue_ids() {
            match probe.queue_use_settled(ifindex, q, UNBIND_GRACE) {
                Ok(probe::QueueUse::Free) => {}
                Ok(probe::QueueUse::Bound) => {
                    let by = match self.lock().previous.get(&(ifindex, q)) {
                        Some(p) => format!(
                            "its previous holder (pid {}, uid {}) still has a socket bound to \
                             it although its lease ended",
                            p.pid, p.uid
                        ),
                        None => {
                            "an AF_XDP socket the broker did not grant is bound to it".to_owned()
                        }
                    };
                    return Err(err(
                        ErrorCode::QueueBusy,
                        format!(
                            "queue {q} of {} is not free: {by}; ask for other queues, or wait \
                             until that socket is closed",
                            req.ifname
                        ),
                    ));
                }
                Err(e) => {
                    return Err(err(
                        ErrorCode::Internal,
                        format!(
                            "cannot check that queue {q} of {} is free: {e}; try again",
                            req.ifname
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// End a lease: clear its map entries, close the broker's copies of its
    /// sockets, and detach the program if no lease uses the interface any more.
    pub fn release(&self, lease: Lease) {
        // A holder that kept an unbound socket of this lease must not bind it
        // to the interface once the queue is someone else's.
        for (q, fd) in &lease.sockets {
            if let Err(e) = probe::confine_to_loopback(fd.as_fd()) {
                warn!(
                    "cannot confine the released socket of queue {q} of {} to lo: {e}",
                    lease.ifname
                );
            }
        }
        let mut inner = self.lock();
        if let Some(rec) = inner.leases.remove(&lease.id) {
            for q in lease.queues() {
                inner.previous.insert((lease.ifindex, q), rec.peer);
            }
        }
        if let Some(iface) = inner.interfaces.get_mut(&lease.ifindex) {
            for q in &lease.queues() {
                if iface.queues.get(q).map(|(id, _)| *id) == Some(lease.id) {
                    iface.queues.remove(q);
                    if let Err(e) = iface.program.remove(*q) {
                        warn!("{e}");
                    }
                }
            }
        }
        if let Some(pin) = lease.map.as_ref().and_then(|m| m.pin.as_ref()) {
            if let Err(e) = std::fs::remove_file(pin) {
                warn!("cannot remove the map pin {}: {e}", pin.display());
            }
        }
        let ifindex = lease.ifindex;
        drop(lease);
        let unused = inner
            .interfaces
            .get(&ifindex)
            .is_some_and(|i| i.queues.is_empty());
        let _ = self.save(&inner);
        drop(inner);
        if unused {
            self.detach_unused(ifindex);
        }
    }

    /// Detach the program of an interface no lease uses any more, in the
    /// interface's turn (so no grant attaches meanwhile) but without the
    /// broker's lock (so grants on other interfaces go on).
    fn detach_unused(&self, ifindex: u32) {
        let _turn = self.turn(ifindex);
        let taken = {
            let mut inner = self.lock();
            let taken = take_if_unused(&mut inner, ifindex, self.persist.as_ref());
            if taken.is_some() {
                let _ = self.save(&inner);
            }
            taken
        };
        if let Some(iface) = taken {
            detach(iface, ifindex);
        }
    }

    /// Every lease, oldest first, with each socket's kernel statistics read
    /// on the broker's own copy of its fd; only those of uid `only_uid` when
    /// given (a peer that may not see the other tenants).
    pub fn lease_status(&self, only_uid: Option<u32>) -> Vec<LeaseStatus> {
        // The table is copied under the lock; the sockets' statistics are
        // read after it is let go, so a status never holds up a grant.
        let snapshot: Vec<(LeaseStatus, Vec<LeasedSocket>)> = {
            let inner = self.lock();
            inner
                .leases
                .iter()
                .filter(|(_, rec)| only_uid.is_none_or(|uid| rec.peer.uid == uid))
                .map(|(id, rec)| {
                    let program = inner.interfaces.get(&rec.ifindex).map(|i| &i.program);
                    let status = LeaseStatus {
                        id: *id,
                        ifname: rec.ifname.clone(),
                        ifindex: rec.ifindex,
                        queues: rec
                            .sockets
                            .iter()
                            .map(|(q, _)| *q)
                            .chain(rec.map_queues.iter().copied())
                            .collect(),
                        holder: Holder {
                            pid: rec.peer.pid,
                            uid: rec.peer.uid,
                            gid: rec.peer.gid,
                        },
                        mode: program.map_or(AttachMode::Skb, |p| p.mode()),
                        program_id: program.map_or(0, |p| p.attached_id()),
                        age_ms: u64::try_from(rec.granted.elapsed().as_millis())
                            .unwrap_or(u64::MAX),
                        sockets: Vec::new(),
                    };
                    (status, rec.sockets.clone())
                })
                .collect()
        };
        snapshot
            .into_iter()
            .map(|(mut status, sockets)| {
                status.sockets = sockets
                    .iter()
                    .map(|(q, fd)| match xdp::xsk_statistics(fd.as_fd()) {
                        Ok(st) => SocketStatus {
                            queue_id: *q,
                            statistics: Some(st),
                            error: None,
                        },
                        Err(e) => SocketStatus {
                            queue_id: *q,
                            statistics: None,
                            error: Some(format!("getsockopt(XDP_STATISTICS): {e}")),
                        },
                    })
                    .collect();
                status
            })
            .collect()
    }

    /// A broker that pins maps under `dir` (a directory it owns on a bpffs)
    /// when a client asks for a pin.
    /// With `persist`, every attached program and its XSKMAP are pinned and
    /// the state file is rewritten after every grant and release.
    pub fn new(dir: Option<PathBuf>, persist: Option<Persist>) -> Broker {
        Broker {
            bpffs_dir: dir,
            persist,
            ..Broker::default()
        }
    }

    /// Grant a map lease (the map-path flow): check and reserve the queues
    /// exactly as [`Broker::open`] does, attach the program if needed, and
    /// return a duplicate of the XSKMAP fd, pinned (owned by the peer's uid,
    /// mode 0600) if asked. The client inserts its own sockets; the broker
    /// clears those entries when the lease ends. On failure nothing is left
    /// behind (no pin, reservation or program of this request).
    pub fn open_map(
        &self,
        mreq: &OpenMapRequest,
        peer: Peer,
    ) -> Result<(Lease, MapOpened, OwnedFd), ErrorReply> {
        mreq.validate()?;
        let req = mreq.as_open();
        if mreq.pin && self.bpffs_dir.is_none() {
            return Err(err(
                ErrorCode::NotPermitted,
                "this broker pins no maps: it was started without --bpffs-dir; ask for the \
                 map fd only (pin: false), or start xsk-brokerd with --bpffs-dir DIR on a \
                 bpffs mount (e.g. /sys/fs/bpf/xsk-broker)",
            ));
        }
        let Prepared {
            mut inner,
            ifindex,
            newly_attached,
            _turn,
        } = self.prepare_grant(&req, peer)?;
        let id = inner.next_lease;
        inner.next_lease += 1;
        let iface = inner
            .interfaces
            .get_mut(&ifindex)
            .expect("present: prepare_grant attached it or found it");
        let granted = (|| {
            let fd = iface.program.map_fd_dup().map_err(|e| {
                err(
                    ErrorCode::Internal,
                    format!("cannot duplicate the XSKMAP fd of {}: {e}", req.ifname),
                )
            })?;
            let pin = match (&self.bpffs_dir, mreq.pin) {
                (Some(dir), true) => Some(pin_map(&fd, dir, &req.ifname, id, peer)?),
                _ => None,
            };
            Ok((fd, pin))
        })();
        let (fd, pin) = match granted {
            Ok(g) => g,
            Err(e) => {
                if newly_attached {
                    detach_if_unused(&mut inner, ifindex, self.persist.as_ref());
                }
                return Err(e);
            }
        };
        let queues: Vec<u32> = req.queue_ids().collect();
        for q in &queues {
            iface.queues.insert(*q, (id, peer));
        }
        let opened = MapOpened {
            ifname: req.ifname.clone(),
            ifindex,
            mode: iface.program.mode(),
            program_id: iface.program.attached_id(),
            start_queue: req.start_queue,
            queues: req.queues,
            pin_path: pin.as_ref().map(|p| p.display().to_string()),
        };
        let lease = Lease {
            id,
            ifname: req.ifname.clone(),
            ifindex,
            sockets: Vec::new(),
            map: Some(MapGrant { queues, pin }),
            revocation: Arc::new(Revocation::default()),
        };
        let lease = self.record_grant(&mut inner, lease, peer)?;
        Ok((lease, opened, fd))
    }

    /// Number of interfaces with the program attached and queues leased, for logs and tests.
    pub fn summary(&self) -> (usize, usize) {
        let inner = self.lock();
        let queues = inner.interfaces.values().map(|i| i.queues.len()).sum();
        (inner.interfaces.len(), queues)
    }
}

/// Resolve an interface name a peer sent (its name or one of its alternative
/// names) to its index and canonical name. Policy, logs and replies use the
/// canonical name only: an altname never stands for the interface there.
pub fn resolve_interface(name: &str) -> Result<(u32, String), ErrorReply> {
    xsk_broker_protocol::message::validate_ifname(name)?;
    let lookup = |e: nix::errno::Errno| match e {
        nix::errno::Errno::ENODEV | nix::errno::Errno::ENXIO => err(
            ErrorCode::NoSuchInterface,
            format!(
                "interface {name:?} not found in the broker's network namespace ({e}); check \
                 the name with `ip link`"
            ),
        ),
        e => err(
            ErrorCode::Internal,
            format!(
                "cannot look up interface {name:?}: {} ({e}); try again",
                e.desc()
            ),
        ),
    };
    let ifindex = nix::net::if_::if_nametoindex(name).map_err(lookup)?;
    let canonical = nix::net::if_::if_indextoname(ifindex)
        .map_err(lookup)?
        .to_string_lossy()
        .into_owned();
    Ok((ifindex, canonical))
}

/// The interface's index and queue counts, with the asked-for queues checked
/// against the device. `req.ifname` must be the interface's canonical name
/// (see [`resolve_interface`]).
fn check_queues(req: &OpenRequest) -> Result<(u32, xdp::QueueCounts), ErrorReply> {
    let (ifindex, canonical) = resolve_interface(&req.ifname)?;
    if canonical != req.ifname {
        return Err(err(
            ErrorCode::NoSuchInterface,
            format!(
                "{:?} names interface {canonical} (ifindex {ifindex}) by another name, or it \
                 was renamed meanwhile; ask for {canonical}",
                req.ifname
            ),
        ));
    }
    let counts = xdp::queue_counts(&req.ifname).map_err(|e| {
        err(
            ErrorCode::Internal,
            format!("cannot read the queue count of {}: {e}", req.ifname),
        )
    })?;
    let last = req.start_queue + req.queues - 1;
    if last >= counts.current {
        return Err(err(
            ErrorCode::QueueOutOfRange,
            format!(
                "{} has {} rx queue(s) (ids 0..={}); queues {}..={} were asked for",
                req.ifname,
                counts.current,
                counts.current - 1,
                req.start_queue,
                last
            ),
        ));
    }
    Ok((ifindex, counts))
}

/// Refuse if any asked-for queue is held by another lease.
fn check_free(iface: &Interface, req: &OpenRequest) -> Result<(), ErrorReply> {
    for q in req.queue_ids() {
        if let Some((_, holder)) = iface.queues.get(&q) {
            return Err(err(
                ErrorCode::QueueBusy,
                format!(
                    "queue {q} of {} is leased by pid {} (uid {}); \
                     ask for other queues or wait for its release",
                    req.ifname, holder.pid, holder.uid
                ),
            ));
        }
    }
    Ok(())
}

/// Pin `fd` as `DIR/IFNAME-lease-ID`, owned by the peer's uid and gid with
/// mode 0600. On failure no pin is left.
fn pin_map(
    fd: &OwnedFd,
    dir: &Path,
    ifname: &str,
    id: LeaseId,
    peer: Peer,
) -> Result<PathBuf, ErrorReply> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("{ifname}-lease-{id}"));
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        err(
            ErrorCode::Internal,
            format!("cannot {what} the XSKMAP pin {}: {e}", path.display()),
        )
    };
    // A stale pin of the same name (left by a killed broker) is replaced.
    let _ = std::fs::remove_file(&path);
    xdp::pin(fd.as_fd(), &path).map_err(|e| fail("create", &e))?;
    let owned = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| fail("chmod 0600", &e))
        .and_then(|()| {
            std::os::unix::fs::chown(&path, Some(peer.uid), Some(peer.gid)).map_err(|e| {
                fail(
                    &format!("chown to uid {} gid {}", peer.uid, peer.gid),
                    &format!("{e} (the broker needs CAP_CHOWN for --bpffs-dir)"),
                )
            })
        });
    if let Err(e) = owned {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

fn check_mode(req: &OpenRequest, have: AttachMode) -> Result<(), ErrorReply> {
    let conflict = matches!(
        (req.mode, have),
        (XdpMode::Native, AttachMode::Skb) | (XdpMode::Skb, AttachMode::Native)
    );
    if conflict {
        return Err(err(
            ErrorCode::ModeNotSupported,
            format!(
                "{} already has the XSK program attached in {have} mode for other leases; \
                 ask for mode {have} or auto",
                req.ifname
            ),
        ));
    }
    if req.copy == CopyMode::ZeroCopy && have == AttachMode::Skb {
        return Err(err(
            ErrorCode::ModeNotSupported,
            format!(
                "{} runs XDP in skb mode, which cannot do zero-copy; ask for copy or auto",
                req.ifname
            ),
        ));
    }
    Ok(())
}

fn attach(
    req: &OpenRequest,
    ifindex: u32,
    map_entries: u32,
    persist: Option<&Persist>,
) -> Result<XskProgram, ErrorReply> {
    if let Some((mode, id)) = xdp::any_attached_prog(ifindex) {
        return Err(err(
            ErrorCode::QueueBusy,
            format!(
                "{} already has XDP program id {id} attached in {mode} mode by someone else; \
                 the broker will not replace it (remove it with `ip link set dev {} xdp off` \
                 if it is stale)",
                req.ifname, req.ifname
            ),
        ));
    }
    let modes: &[AttachMode] = match req.mode {
        XdpMode::Auto => &[AttachMode::Native, AttachMode::Skb],
        XdpMode::Native => &[AttachMode::Native],
        XdpMode::Skb => &[AttachMode::Skb],
    };
    let mut failures = Vec::new();
    for &mode in modes {
        if mode == AttachMode::Skb && req.copy == CopyMode::ZeroCopy {
            failures.push("skb mode cannot do zero-copy".to_owned());
            continue;
        }
        match XskProgram::attach(&req.ifname, ifindex, mode, map_entries) {
            Ok(p) => {
                let Some(persist) = persist else {
                    return Ok(p);
                };
                let (prog_pin, map_pin) = (
                    persist.prog_pin(ifindex, mode),
                    persist.map_pin(ifindex, mode),
                );
                return match p.pin_to(&prog_pin, &map_pin) {
                    Ok(()) => Ok(p),
                    Err(e) => {
                        if let Err(d) = p.detach() {
                            warn!("{d}");
                        }
                        Err(err(
                            ErrorCode::Internal,
                            format!(
                                "cannot pin the XSK program of {} as {} (needed to find it \
                                 again after a broker restart): {e}",
                                req.ifname,
                                prog_pin.display()
                            ),
                        ))
                    }
                };
            }
            Err(e) => {
                warn!("{mode} mode: {e}");
                failures.push(format!("{mode} mode: {}", e.source));
            }
        }
    }
    Err(err(
        ErrorCode::ModeNotSupported,
        format!(
            "cannot attach the XSK program to {}: {}",
            req.ifname,
            failures.join("; ")
        ),
    ))
}

fn create_sockets(
    iface: &Interface,
    req: &OpenRequest,
    ifindex: u32,
    confinement: Option<&Confinement>,
) -> Result<Vec<(u32, OwnedFd)>, ErrorReply> {
    let mut sockets: Vec<(u32, OwnedFd)> = Vec::with_capacity(req.queues as usize);
    let result = (|| {
        for q in req.queue_ids() {
            let fd = xdp::create_xsk_socket().map_err(|e| {
                err(
                    ErrorCode::Internal,
                    format!("cannot create an AF_XDP socket for queue {q}: {e}"),
                )
            })?;
            if let Some(c) = confinement {
                let grant = SocketGrant {
                    ifindex,
                    queue: q,
                    copy: req.copy,
                    shared_umem: false,
                };
                c.confine(fd.as_fd(), grant)
                    .map_err(|e| err(ErrorCode::Internal, format!("queue {q}: {e}")))?;
            }
            iface
                .program
                .insert(q, fd.as_fd())
                .map_err(|e| err(ErrorCode::Internal, format!("queue {q}: {e}")))?;
            sockets.push((q, fd));
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(sockets),
        Err(e) => {
            for (q, _) in &sockets {
                let _ = iface.program.remove(*q);
            }
            Err(e)
        }
    }
}

/// [`detach_if_unused`] for every interface no lease uses any more.
fn detach_all_unused(inner: &mut Inner, persist: Option<&Persist>) {
    let unused: Vec<u32> = inner
        .interfaces
        .iter()
        .filter(|(_, i)| i.queues.is_empty())
        .map(|(k, _)| *k)
        .collect();
    for ifindex in unused {
        detach_if_unused(inner, ifindex, persist);
    }
}

fn detach_if_unused(inner: &mut Inner, ifindex: u32, persist: Option<&Persist>) {
    if let Some(iface) = take_if_unused(inner, ifindex, persist) {
        detach(iface, ifindex);
    }
}

/// Take an interface no lease uses out of the table, and its pins away; the
/// caller detaches its program ([`detach`]).
fn take_if_unused(inner: &mut Inner, ifindex: u32, persist: Option<&Persist>) -> Option<Interface> {
    if !inner
        .interfaces
        .get(&ifindex)
        .is_some_and(|i| i.queues.is_empty())
    {
        return None;
    }
    let iface = inner.interfaces.remove(&ifindex)?;
    if let Some(p) = persist {
        p.unpin(ifindex, iface.program.mode());
    }
    Some(iface)
}

/// Detach the program of an interface taken out of the table.
fn detach(iface: Interface, ifindex: u32) {
    let name = iface.name;
    match iface.program.detach() {
        Ok(()) => info!(ifname = %name, ifindex, "detached the XSK program (no lease uses it)"),
        Err(e) => warn!("{e}; the program may still be attached"),
    }
}

/// Whether the process recorded as a lease's holder still runs: an fd that
/// becomes readable when it exits, or None if it is gone (or its pid now
/// names another process).
fn holder_pidfd(pid: i32, start_time: Option<u64>) -> Option<OwnedFd> {
    if pid <= 0 {
        return None;
    }
    let fd = xdp::pidfd_open(pid).ok()?;
    // Checked after opening: the pidfd then refers to the process checked.
    // Where /proc hides other users' processes (systemd ProtectProc=invisible)
    // the start time cannot be read: the pid alone is trusted then, which
    // errs on the side of keeping the queues reserved.
    match (start_time, persist::start_time(pid)) {
        (Some(want), Some(have)) => (want == have).then_some(fd),
        _ => Some(fd),
    }
}

impl Broker {
    /// Write the state file (if persisting). A failure is logged and
    /// returned: a grant that cannot be recorded is undone (a restart would
    /// not know it); after a release the stale entry is harmless (its holder
    /// is checked at start).
    fn save(&self, inner: &Inner) -> Result<(), persist::StateError> {
        let Some(p) = &self.persist else {
            return Ok(());
        };
        let state = StateFile {
            version: persist::STATE_VERSION,
            interfaces: inner
                .interfaces
                .iter()
                .map(|(ifindex, i)| InterfaceState {
                    ifindex: *ifindex,
                    ifname: i.name.clone(),
                    mode: i.program.mode(),
                    program_id: i.program.attached_id(),
                    prog_pin: p.prog_pin(*ifindex, i.program.mode()),
                    map_pin: p.map_pin(*ifindex, i.program.mode()),
                })
                .collect(),
            leases: inner
                .leases
                .iter()
                .map(|(id, r)| LeaseState {
                    id: *id,
                    kind: r.kind,
                    ifindex: r.ifindex,
                    ifname: r.ifname.clone(),
                    queues: r
                        .sockets
                        .iter()
                        .map(|(q, _)| *q)
                        .chain(r.map_queues.iter().copied())
                        .collect(),
                    pid: r.peer.pid,
                    start_time: r.start_time,
                    uid: r.peer.uid,
                    gid: r.peer.gid,
                    map_pin: r.map_pin.clone(),
                })
                .collect(),
        };
        p.state.save(&state).inspect_err(|e| {
            warn!("cannot save the broker state: {e}");
        })
    }

    /// Record `lease`, just granted to `peer` under this lock (its queues
    /// already reserved in `inner`), in the lease table and save the state.
    /// A [`LeaseKind::Map`] lease is one with a [`MapGrant`], whose queues
    /// and pin are recorded; otherwise its sockets are. If the state cannot
    /// be saved the grant is undone with [`Broker::undo_grant`] (queues, map
    /// entries, map pin, and the program if unused) and refused with
    /// [`not_recorded`]; the lease's sockets are dropped with it.
    fn record_grant(
        &self,
        inner: &mut Inner,
        lease: Lease,
        peer: Peer,
    ) -> Result<Lease, ErrorReply> {
        let (kind, map_queues, map_pin) = match &lease.map {
            Some(m) => (LeaseKind::Map, m.queues.clone(), m.pin.clone()),
            None => (LeaseKind::Sockets, Vec::new(), None),
        };
        inner.leases.insert(
            lease.id,
            LeaseRecord {
                ifname: lease.ifname.clone(),
                ifindex: lease.ifindex,
                peer,
                granted: Instant::now(),
                sockets: lease.sockets.clone(),
                map_queues,
                revocation: Arc::clone(&lease.revocation),
                kind,
                start_time: persist::start_time(peer.pid),
                map_pin,
                restored: false,
            },
        );
        if let Err(e) = self.save(inner) {
            self.undo_grant(inner, lease.id);
            return Err(not_recorded(e));
        }
        Ok(lease)
    }

    /// Take back a grant just made under this lock (its state could not be
    /// saved): queues, map entries, map pin, and the program if unused.
    fn undo_grant(&self, inner: &mut Inner, id: LeaseId) {
        let Some(rec) = inner.leases.remove(&id) else {
            return;
        };
        if let Some(iface) = inner.interfaces.get_mut(&rec.ifindex) {
            let held: Vec<u32> = iface
                .queues
                .iter()
                .filter(|(_, (holder, _))| *holder == id)
                .map(|(q, _)| *q)
                .collect();
            for q in held {
                iface.queues.remove(&q);
                if let Err(e) = iface.program.remove(q) {
                    warn!("{e}");
                }
            }
        }
        remove_pin(rec.map_pin.as_deref());
        detach_if_unused(inner, rec.ifindex, self.persist.as_ref());
    }

    /// At start, take over from an earlier run of the broker: reopen the
    /// programs it attached (from their pins), keep the queues of leases whose
    /// holder still runs (released when it exits, watched with a pidfd),
    /// release those of holders that died meanwhile, detach programs no lease
    /// uses any more and remove stale pins. Returns (leases kept, leases
    /// released). An unreadable or invalid state file is an error.
    pub fn restore(self: &Arc<Self>) -> Result<(usize, usize), persist::StateError> {
        let Some(p) = &self.persist else {
            return Ok((0, 0));
        };
        let state = p.state.load()?.unwrap_or_default();
        let mut inner = self.lock();
        let mut keep_pins: Vec<PathBuf> = Vec::new();
        for is in &state.interfaces {
            let same_name = nix::net::if_::if_indextoname(is.ifindex)
                .ok()
                .is_some_and(|n| n.to_string_lossy() == is.ifname);
            let reopened = if same_name {
                XskProgram::reopen(&is.ifname, is.ifindex, is.mode, &is.prog_pin, &is.map_pin)
                    .map_err(|e| e.to_string())
            } else {
                Err(format!(
                    "interface {} (index {}) is gone",
                    is.ifname, is.ifindex
                ))
            };
            match reopened {
                Ok(program) => {
                    info!(
                        ifname = %is.ifname, ifindex = is.ifindex, mode = %is.mode,
                        program_id = program.attached_id(),
                        "reopened the XSK program attached by an earlier run"
                    );
                    keep_pins.extend([is.prog_pin.clone(), is.map_pin.clone()]);
                    inner.interfaces.insert(
                        is.ifindex,
                        Interface {
                            name: is.ifname.clone(),
                            program,
                            queues: BTreeMap::new(),
                        },
                    );
                }
                Err(e) => warn!(
                    "forgetting {} from the state file, and its leases: {e}",
                    is.ifname
                ),
            }
        }
        let (mut kept, mut released) = (0, 0);
        let mut watch = Vec::new();
        for l in &state.leases {
            inner.next_lease = inner.next_lease.max(l.id + 1);
            let peer = Peer {
                pid: l.pid,
                uid: l.uid,
                gid: l.gid,
            };
            let Some(iface) = inner.interfaces.get_mut(&l.ifindex) else {
                release_restored(l, "its interface or program is gone", &self.counters);
                released += 1;
                continue;
            };
            let busy = l.queues.iter().any(|q| iface.queues.contains_key(q));
            match holder_pidfd(l.pid, l.start_time).filter(|_| !busy) {
                Some(pidfd) => {
                    for q in &l.queues {
                        iface.queues.insert(*q, (l.id, peer));
                    }
                    inner.leases.insert(
                        l.id,
                        LeaseRecord {
                            ifname: l.ifname.clone(),
                            ifindex: l.ifindex,
                            peer,
                            granted: Instant::now(),
                            sockets: Vec::new(),
                            map_queues: l.queues.clone(),
                            kind: l.kind,
                            start_time: l.start_time,
                            map_pin: l.map_pin.clone(),
                            restored: true,
                            revocation: Arc::new(Revocation::default()),
                        },
                    );
                    info!(
                        event = "restore", pid = l.pid, uid = l.uid, gid = l.gid,
                        ifname = %l.ifname, queues = ?l.queues,
                        "kept a lease of an earlier run: its holder still runs"
                    );
                    kept += 1;
                    watch.push((l.id, pidfd));
                }
                None => {
                    for q in &l.queues {
                        if let Err(e) = iface.program.remove(*q) {
                            warn!("{e}");
                        }
                    }
                    for q in &l.queues {
                        inner.previous.insert((l.ifindex, *q), peer);
                    }
                    release_restored(
                        l,
                        "the holder exited while the broker was down",
                        &self.counters,
                    );
                    released += 1;
                }
            }
        }
        detach_all_unused(&mut inner, Some(p));
        remove_stale_pins(p, &keep_pins);
        let _ = self.save(&inner);
        drop(inner);
        for (id, pidfd) in watch {
            let broker = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("xsk-holder".into())
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut fds = [nix::poll::PollFd::new(
                        pidfd.as_fd(),
                        nix::poll::PollFlags::POLLIN,
                    )];
                    while let Err(nix::errno::Errno::EINTR) =
                        nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE)
                    {
                    }
                    // Closed before the release is saved: once the state
                    // shows the lease gone, nothing of it is left open.
                    let _ = fds;
                    drop(pidfd);
                    broker.release_restored(id);
                });
            if let Err(e) = spawned {
                warn!("cannot watch the holder of lease {id}: {e}; its queues stay reserved");
            }
        }
        Ok((kept, released))
    }

    /// End a lease restored at start whose holder has exited.
    fn release_restored(&self, id: LeaseId) {
        let mut inner = self.lock();
        let Some(rec) = inner.leases.remove(&id) else {
            return;
        };
        if let Some(iface) = inner.interfaces.get_mut(&rec.ifindex) {
            for q in &rec.map_queues {
                if iface.queues.get(q).map(|(i, _)| *i) == Some(id) {
                    iface.queues.remove(q);
                    if let Err(e) = iface.program.remove(*q) {
                        warn!("{e}");
                    }
                }
            }
        }
        remove_pin(rec.map_pin.as_deref());
        let p = rec.peer;
        info!(
            event = "release", pid = p.pid, uid = p.uid, gid = p.gid,
            ifname = %rec.ifname, queues = ?rec.map_queues,
            "released: the holder of a lease kept across a restart exited"
        );
        self.counters.release();
        detach_if_unused(&mut inner, rec.ifindex, self.persist.as_ref());
        let _ = self.save(&inner);
    }
}

/// The refusal of a grant whose state could not be written.
fn not_recorded(e: persist::StateError) -> ErrorReply {
    err(
        ErrorCode::Internal,
        format!(
            "the broker could not record the lease in its state file, so it was not granted \
             (a restart would forget it): {e}"
        ),
    )
}

/// End a lease of an earlier run at start (its map entries are already gone
/// or are removed by the caller): remove its map pin, log and count it.
fn release_restored(l: &persist::LeaseState, why: &str, counters: &Counters) {
    remove_pin(l.map_pin.as_deref());
    info!(
        event = "release", pid = l.pid, uid = l.uid, gid = l.gid,
        ifname = %l.ifname, queues = ?l.queues,
        "released: {why}"
    );
    counters.release();
}

fn remove_pin(pin: Option<&Path>) {
    if let Some(pin) = pin {
        match std::fs::remove_file(pin) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!("cannot remove the map pin {}: {e}", pin.display()),
        }
    }
}

/// Remove pins in the pin directory that no kept interface uses. A program
/// pinned there but missing from the state (the broker died between attaching
/// and saving) is detached first if it is still attached: the pin proves it
/// is the broker's.
fn remove_stale_pins(p: &Persist, keep: &[PathBuf]) {
    let Ok(dir) = std::fs::read_dir(&p.pins) else {
        return;
    };
    let mut stale: Vec<PathBuf> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|path| !keep.contains(path) && !crate::confine::is_pin(path))
        .collect();
    stale.sort();
    for path in &stale {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut parts = name.splitn(3, '-');
        if let (Some(ifindex), Some(mode), Some("prog")) =
            (parts.next(), parts.next(), parts.next())
        {
            let mode = match mode {
                "native" => Some(AttachMode::Native),
                "skb" => Some(AttachMode::Skb),
                _ => None,
            };
            if let (Ok(ifindex), Some(mode)) = (ifindex.parse::<u32>(), mode) {
                let map = p.map_pin(ifindex, mode);
                if let Ok(prog) = XskProgram::reopen(&name, ifindex, mode, path, &map) {
                    match prog.detach() {
                        Ok(()) => info!(ifindex, "detached an XSK program no lease uses"),
                        Err(e) => warn!("{e}"),
                    }
                }
            }
        }
    }
    for path in stale {
        match std::fs::remove_file(&path) {
            Ok(()) => info!(pin = %path.display(), "removed a stale pin"),
            Err(e) => warn!("cannot remove the stale pin {}: {e}", path.display()),
        }
    }
}

impl SnapshotSource for Broker {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            uptime: self.counters.uptime(),
            grants: self.counters.grants(),
            releases: self.counters.releases(),
            refusals: self.counters.refusals(),
            leases: self.lease_status(None),
            confinement: self.confinement_level(),
        }
    }
}
