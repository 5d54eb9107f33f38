//! Who holds what: interfaces with the XSK program attached, their leased
//! queues, and the sockets of each lease.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tracing::{info, warn};
use xsk_broker_protocol::{
    AttachMode, CopyMode, ErrorCode, ErrorReply, Holder, LeaseStatus, OpenRequest, Opened,
    SocketInfo, SocketStatus, XdpMode,
};

use crate::xdp::{self, XskProgram};

/// Identifies a lease (one control connection's grant).
pub type LeaseId = u64;

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
}

impl Lease {
    /// The socket fds, in queue order, to send to the client.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.sockets.iter().map(|(_, fd)| fd.as_fd()).collect()
    }

    /// Queue ids held.
    pub fn queues(&self) -> Vec<u32> {
        self.sockets.iter().map(|(q, _)| *q).collect()
    }

    /// A short description for messages.
    pub fn describe(&self) -> String {
        format!("{} queues {:?}", self.ifname, self.queues())
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
}

#[derive(Default)]
struct Inner {
    interfaces: HashMap<u32, Interface>,
    next_lease: LeaseId,
    /// Every granted lease by id (so oldest first).
    leases: BTreeMap<LeaseId, LeaseRecord>,
}

/// The broker's shared state.
#[derive(Default)]
pub struct Broker {
    inner: Mutex<Inner>,
}

fn err(code: ErrorCode, msg: impl Into<String>) -> ErrorReply {
    ErrorReply::new(code, msg)
}

impl Broker {
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
        let ifindex = nix::net::if_::if_nametoindex(req.ifname.as_str()).map_err(|e| {
            err(
                ErrorCode::NoSuchInterface,
                format!(
                    "interface {:?} not found in the broker's network namespace ({e}); \
                     check the name with `ip link`",
                    req.ifname
                ),
            )
        })?;
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

        let mut inner = self.lock();
        if let Some(iface) = inner.interfaces.get(&ifindex) {
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
            check_mode(req, iface.program.mode())?;
        }
        let id = inner.next_lease;
        inner.next_lease += 1;
        let (iface, newly_attached) = match inner.interfaces.entry(ifindex) {
            Entry::Occupied(e) => (e.into_mut(), false),
            Entry::Vacant(e) => {
                let program = attach(req, ifindex, counts.max)?;
                info!(
                    ifname = %req.ifname, ifindex, mode = %program.mode(),
                    program_id = program.attached_id(), "attached the XSK program"
                );
                let iface = e.insert(Interface {
                    name: req.ifname.clone(),
                    program,
                    queues: BTreeMap::new(),
                });
                (iface, true)
            }
        };
        match create_sockets(iface, req) {
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
                inner.leases.insert(
                    id,
                    LeaseRecord {
                        ifname: req.ifname.clone(),
                        ifindex,
                        peer,
                        granted: Instant::now(),
                        sockets: sockets.clone(),
                    },
                );
                let lease = Lease {
                    id,
                    ifname: req.ifname.clone(),
                    ifindex,
                    sockets,
                };
                Ok((lease, opened))
            }
            Err(e) => {
                if newly_attached {
                    detach_if_unused(&mut inner, ifindex);
                }
                Err(e)
            }
        }
    }

    /// End a lease: clear its map entries, close the broker's copies of its
    /// sockets, and detach the program if no lease uses the interface any more.
    pub fn release(&self, lease: Lease) {
        let mut inner = self.lock();
        inner.leases.remove(&lease.id);
        if let Some(iface) = inner.interfaces.get_mut(&lease.ifindex) {
            for (q, _fd) in &lease.sockets {
                if iface.queues.get(q).map(|(id, _)| *id) == Some(lease.id) {
                    iface.queues.remove(q);
                    if let Err(e) = iface.program.remove(*q) {
                        warn!("{e}");
                    }
                }
            }
        }
        drop(lease);
        let unused: Vec<u32> = inner
            .interfaces
            .iter()
            .filter(|(_, i)| i.queues.is_empty())
            .map(|(k, _)| *k)
            .collect();
        for ifindex in unused {
            detach_if_unused(&mut inner, ifindex);
        }
    }

    /// Every lease, oldest first, with each socket's kernel statistics read
    /// on the broker's own copy of its fd.
    pub fn lease_status(&self) -> Vec<LeaseStatus> {
        let inner = self.lock();
        inner
            .leases
            .iter()
            .map(|(id, rec)| {
                let program = inner.interfaces.get(&rec.ifindex).map(|i| &i.program);
                LeaseStatus {
                    id: *id,
                    ifname: rec.ifname.clone(),
                    ifindex: rec.ifindex,
                    queues: rec.sockets.iter().map(|(q, _)| *q).collect(),
                    holder: Holder {
                        pid: rec.peer.pid,
                        uid: rec.peer.uid,
                        gid: rec.peer.gid,
                    },
                    mode: program.map_or(AttachMode::Skb, |p| p.mode()),
                    program_id: program.map_or(0, |p| p.attached_id()),
                    age_ms: u64::try_from(rec.granted.elapsed().as_millis()).unwrap_or(u64::MAX),
                    sockets: rec
                        .sockets
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
                        .collect(),
                }
            })
            .collect()
    }

    /// Number of interfaces with the program attached and queues leased, for logs and tests.
    pub fn summary(&self) -> (usize, usize) {
        let inner = self.lock();
        let queues = inner.interfaces.values().map(|i| i.queues.len()).sum();
        (inner.interfaces.len(), queues)
    }
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

fn attach(req: &OpenRequest, ifindex: u32, map_entries: u32) -> Result<XskProgram, ErrorReply> {
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
            Ok(p) => return Ok(p),
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

fn create_sockets(iface: &Interface, req: &OpenRequest) -> Result<Vec<(u32, OwnedFd)>, ErrorReply> {
    let mut sockets: Vec<(u32, OwnedFd)> = Vec::with_capacity(req.queues as usize);
    let result = (|| {
        for q in req.queue_ids() {
            let fd = xdp::create_xsk_socket().map_err(|e| {
                err(
                    ErrorCode::Internal,
                    format!("cannot create an AF_XDP socket for queue {q}: {e}"),
                )
            })?;
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

fn detach_if_unused(inner: &mut Inner, ifindex: u32) {
    if inner
        .interfaces
        .get(&ifindex)
        .is_some_and(|i| i.queues.is_empty())
    {
        let iface = inner
            .interfaces
            .remove(&ifindex)
            .expect("entry checked just above");
        let name = iface.name;
        match iface.program.detach() {
            Ok(()) => info!(ifname = %name, ifindex, "detached the XSK program (no lease uses it)"),
            Err(e) => warn!("{e}; the program may still be attached"),
        }
    }
}
