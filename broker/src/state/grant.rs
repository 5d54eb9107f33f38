//! One grant path for both flows: the checks (interface, queues, limits,
//! lease table, the kernel's view of the queues, mode), the interface's
//! turn, the program (attached if needed, without the broker's lock), then
//! the sockets (or the map) and the record.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, MutexGuard, Weak};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use tracing::{info, warn};
use xsk_broker_protocol::{AttachMode, CopyMode, OpenRequest, Opened, SocketInfo, XdpMode};

use super::{
    Broker, Inner, Interface, Lease, LeaseId, LeaseOwner, LeaseRecord, LeasedSocket, Peer,
    Revocation, Turn,
};
use crate::confine::SocketGrant;
use crate::error::GrantError;
use crate::kernel::{Kernel, Program};
use crate::persist::LeaseKind;
use crate::probe::QueueUse;

/// How long a grant waits for the kernel to free a queue whose last socket
/// was just closed: the kernel unbinds a closed AF_XDP socket's buffer pool
/// in deferred work, a moment after the holder exits.
const UNBIND_GRACE: Duration = Duration::from_millis(250);

/// Whether a grant may include a queue the kernel reports an AF_XDP socket
/// bound to (one no lease holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Bound {
    /// Refuse it (`queue_busy`): its previous holder still has it.
    Refuse,
    /// Grant it: the requester bound it itself before asking.
    Allow,
}

/// A grant ready to be made: the broker's lock, with the interface's program
/// attached and every check passed for the request.
pub(super) struct Prepared<'a, K: Kernel> {
    pub(super) inner: MutexGuard<'a, Inner<K::Program>>,
    /// The new lease's id.
    pub(super) id: LeaseId,
    pub(super) ifindex: u32,
    /// The program was attached for this request (detach it if the grant
    /// fails after all).
    pub(super) newly_attached: bool,
    pub(super) _turn: Turn<'a, K>,
}

impl<K: Kernel> Broker<K> {
    /// Resolve an interface name a peer sent (its name or one of its
    /// alternative names) to its index and canonical name. Policy, logs and
    /// replies use the canonical name only: an altname never stands for the
    /// interface there.
    pub fn resolve_interface(&self, name: &str) -> Result<(u32, String), GrantError> {
        xsk_broker_protocol::message::validate_ifname(name)?;
        self.kernel.resolve(name).map_err(|errno| match errno {
            Errno::ENODEV | Errno::ENXIO => GrantError::NoSuchInterface {
                name: name.to_owned(),
                errno,
            },
            errno => GrantError::Lookup {
                name: name.to_owned(),
                errno,
            },
        })
    }

    /// Grant `req` to `peer`: attach the program if needed, create one socket
    /// per queue and insert it into the XSKMAP. On any failure nothing is left
    /// behind (no socket, map entry or program of this request).
    pub fn open(
        self: &Arc<Self>,
        req: &OpenRequest,
        peer: Peer,
    ) -> Result<(Lease, Opened), GrantError> {
        req.validate()?;
        let Prepared {
            mut inner,
            id,
            ifindex,
            newly_attached,
            _turn,
        } = self.prepare_grant(req, peer, Bound::Refuse)?;
        let iface = inner
            .interfaces
            .get_mut(&ifindex)
            .expect("present: prepare_grant attached it or found it");
        let sockets = match self.create_sockets(iface, req, ifindex) {
            Ok(s) => s,
            Err(e) => {
                if newly_attached {
                    self.detach_if_unused(&mut inner, ifindex);
                }
                return Err(e);
            }
        };
        let sockets: Vec<LeasedSocket> = sockets
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
            owner: None,
        };
        let lease = self.record_grant(&mut inner, lease, peer)?;
        Ok((lease, opened))
    }

    /// Wait for and take the interface's turn (see [`Turn`]).
    pub(super) fn turn(&self, ifindex: u32) -> Turn<'_, K> {
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
    /// interface and its queues, the interface's turn, the limits, the lease
    /// table, the mode, the kernel's view of the queues; then the program,
    /// attached if the interface has none of the broker's yet. The broker's
    /// lock is not held while the kernel is asked or the program attached.
    pub(super) fn prepare_grant(
        &self,
        req: &OpenRequest,
        peer: Peer,
        bound: Bound,
    ) -> Result<Prepared<'_, K>, GrantError> {
        let ifindex = self.check_queues(req)?;
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
        if bound == Bound::Refuse {
            self.check_unbound(ifindex, req)?;
        }
        let mut inner = self.lock();
        // Grants on other interfaces may have used up this uid's quota.
        self.check_lease_limits(&inner, req.queues, peer)?;
        if inner.interfaces.contains_key(&ifindex) {
            let id = next_id(&mut inner);
            return Ok(Prepared {
                inner,
                id,
                ifindex,
                newly_attached: false,
                _turn: turn,
            });
        }
        drop(inner);
        // The XSKMAP is sized for every queue the device supports.
        let counts =
            self.kernel
                .queue_counts(&req.ifname)
                .map_err(|source| GrantError::QueueCount {
                    ifname: req.ifname.clone(),
                    source,
                })?;
        let program = self.attach(req, ifindex, counts.max)?;
        info!(
            ifname = %req.ifname, ifindex, mode = %program.mode(),
            program_id = program.attached_id(), "attached the XSK program"
        );
        crate::offload::warn_if_veth_peer_offloads(ifindex, &req.ifname);
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
            self.detach_if_unused(&mut inner, ifindex);
            return Err(e);
        }
        let id = next_id(&mut inner);
        Ok(Prepared {
            inner,
            id,
            ifindex,
            newly_attached: true,
            _turn: turn,
        })
    }

    /// Refuse a lease the limits do not allow `peer` (call with the lock held,
    /// so two requests of one uid cannot both pass).
    fn check_lease_limits(
        &self,
        inner: &Inner<K::Program>,
        queues: u32,
        peer: Peer,
    ) -> Result<(), GrantError> {
        self.limits.check_queues(queues)?;
        let mine = || inner.leases.values().filter(|l| l.peer.uid == peer.uid);
        let held = mine().count();
        let held_queues: usize = mine().map(|l| l.sockets.len() + l.map_queues.len()).sum();
        if held_queues + queues as usize > self.limits.max_queues_per_uid {
            return Err(GrantError::TooManyQueues {
                uid: peer.uid,
                held: held_queues,
                asked: queues,
                max: self.limits.max_queues_per_uid,
            });
        }
        if held >= self.limits.max_leases_per_uid {
            return Err(GrantError::TooManyLeases {
                uid: peer.uid,
                held,
                max: self.limits.max_leases_per_uid,
            });
        }
        Ok(())
    }

    /// Refuse if an AF_XDP socket is still bound to any asked-for queue (a
    /// holder whose lease ended but who kept its bound socket, or a program
    /// the broker does not know), as the kernel reports it. Names the
    /// queue's previous holder when known.
    fn check_unbound(&self, ifindex: u32, req: &OpenRequest) -> Result<(), GrantError> {
        for queue in req.queue_ids() {
            match self.kernel.queue_use(ifindex, queue, UNBIND_GRACE) {
                None | Some(Ok(QueueUse::Free)) => {}
                Some(Ok(QueueUse::Bound)) => {
                    return Err(GrantError::QueueBound {
                        ifname: req.ifname.clone(),
                        queue,
                        previous: self.lock().previous.get(&(ifindex, queue)).copied(),
                    })
                }
                Some(Err(source)) => {
                    return Err(GrantError::QueueCheck {
                        ifname: req.ifname.clone(),
                        queue,
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// The interface's index, with the asked-for queues checked against the
    /// device's rx queues in use. `req.ifname` must be the interface's
    /// canonical name (see [`Broker::resolve_interface`]).
    fn check_queues(&self, req: &OpenRequest) -> Result<u32, GrantError> {
        let (ifindex, canonical) = self.resolve_interface(&req.ifname)?;
        if canonical != req.ifname {
            return Err(GrantError::NotCanonical {
                asked: req.ifname.clone(),
                canonical,
                ifindex,
            });
        }
        let count =
            self.kernel
                .rx_queues(&req.ifname)
                .map_err(|source| GrantError::QueueCount {
                    ifname: req.ifname.clone(),
                    source,
                })?;
        let last = req.start_queue + req.queues - 1;
        if last >= count {
            return Err(GrantError::QueueOutOfRange {
                ifname: req.ifname.clone(),
                count,
                first: req.start_queue,
                last,
            });
        }
        Ok(ifindex)
    }

    /// Attach the XSK program (auto: native, then skb), unless someone
    /// else's program is there; pinned when the state is kept.
    fn attach(
        &self,
        req: &OpenRequest,
        ifindex: u32,
        map_entries: u32,
    ) -> Result<K::Program, GrantError> {
        if let Some((mode, id)) = self.kernel.attached_program(ifindex) {
            return Err(GrantError::ForeignProgram {
                ifname: req.ifname.clone(),
                mode,
                id,
            });
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
            match self.kernel.attach(&req.ifname, ifindex, mode, map_entries) {
                Ok(p) => return self.pin_program(p, req, ifindex, mode),
                Err(e) => {
                    warn!("{mode} mode: {e}");
                    failures.push(format!("{mode} mode: {}", e.source));
                }
            }
        }
        Err(GrantError::Attach {
            ifname: req.ifname.clone(),
            failures,
        })
    }

    /// Pin a program just attached (if the state is kept); detach it again
    /// if it cannot be pinned.
    fn pin_program(
        &self,
        p: K::Program,
        req: &OpenRequest,
        ifindex: u32,
        mode: AttachMode,
    ) -> Result<K::Program, GrantError> {
        let Some(persist) = &self.persist else {
            return Ok(p);
        };
        let (prog_pin, map_pin) = (
            persist.prog_pin(ifindex, mode),
            persist.map_pin(ifindex, mode),
        );
        match p.pin_to(&prog_pin, &map_pin) {
            Ok(()) => Ok(p),
            Err(source) => {
                if let Err(d) = p.detach() {
                    warn!("{d}");
                }
                Err(GrantError::PinProgram {
                    ifname: req.ifname.clone(),
                    pin: prog_pin,
                    source,
                })
            }
        }
    }

    /// One confined socket per queue, each in the XSKMAP; on failure the
    /// entries made are removed and the sockets closed.
    fn create_sockets(
        &self,
        iface: &Interface<K::Program>,
        req: &OpenRequest,
        ifindex: u32,
    ) -> Result<Vec<(u32, OwnedFd)>, GrantError> {
        let mut sockets: Vec<(u32, OwnedFd)> = Vec::with_capacity(req.queues as usize);
        let result = (|| {
            for queue in req.queue_ids() {
                let grant = SocketGrant {
                    ifindex,
                    queue,
                    copy: req.copy,
                    shared_umem: false,
                };
                let fd = self
                    .kernel
                    .create_socket(grant)
                    .map_err(GrantError::Socket)?;
                iface
                    .program
                    .insert(queue, fd.as_fd())
                    .map_err(|source| GrantError::Map { queue, source })?;
                sockets.push((queue, fd));
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

    /// Record `lease`, just granted to `peer` under this lock (its queues
    /// already reserved in `inner`), in the lease table, save the state and
    /// make the lease end itself when dropped. A map lease is one with a
    /// [`MapGrant`], whose queues and pin are recorded; otherwise its
    /// sockets are. If the state cannot be saved the grant is undone
    /// (queues, map entries, map pin, and the program if unused) and refused;
    /// the lease's sockets are dropped with it.
    pub(super) fn record_grant(
        self: &Arc<Self>,
        inner: &mut Inner<K::Program>,
        mut lease: Lease,
        peer: Peer,
    ) -> Result<Lease, GrantError> {
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
                traffic: lease.sockets.iter().map(|_| Arc::default()).collect(),
                map_queues,
                revocation: Arc::clone(&lease.revocation),
                kind,
                start_time: self.kernel.start_time(peer.pid),
                map_pin,
                restored: false,
            },
        );
        if let Err(e) = self.save(inner) {
            self.undo_grant(inner, lease.id);
            return Err(GrantError::NotRecorded(e));
        }
        let owner: Weak<dyn LeaseOwner> = Arc::downgrade(self) as Weak<dyn LeaseOwner>;
        lease.owner = Some(owner);
        Ok(lease)
    }

    /// Take back a grant just made under this lock (its state could not be
    /// saved): queues, map entries, map pin, and the program if unused.
    fn undo_grant(&self, inner: &mut Inner<K::Program>, id: LeaseId) {
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
        super::restore::remove_pin(rec.map_pin.as_deref());
        self.detach_if_unused(inner, rec.ifindex);
    }
}

/// A new lease id.
fn next_id<P>(inner: &mut Inner<P>) -> LeaseId {
    let id = inner.next_lease;
    inner.next_lease += 1;
    id
}

/// Refuse if any asked-for queue is held by another lease.
fn check_free<P>(iface: &Interface<P>, req: &OpenRequest) -> Result<(), GrantError> {
    for q in req.queue_ids() {
        if let Some((_, holder)) = iface.queues.get(&q) {
            return Err(GrantError::QueueLeased {
                ifname: req.ifname.clone(),
                queue: q,
                holder: *holder,
            });
        }
    }
    Ok(())
}

/// Refuse a mode the interface's program does not run in, and zero-copy in
/// skb mode.
fn check_mode(req: &OpenRequest, have: AttachMode) -> Result<(), GrantError> {
    let conflict = matches!(
        (req.mode, have),
        (XdpMode::Native, AttachMode::Skb) | (XdpMode::Skb, AttachMode::Native)
    );
    if conflict {
        return Err(GrantError::ModeConflict {
            ifname: req.ifname.clone(),
            have,
        });
    }
    if req.copy == CopyMode::ZeroCopy && have == AttachMode::Skb {
        return Err(GrantError::NoZeroCopy {
            ifname: req.ifname.clone(),
        });
    }
    Ok(())
}
