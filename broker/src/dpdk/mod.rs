//! The DPDK endpoint (`--dpdk-socket`): DPDK's AF_XDP driver (`net_af_xdp`
//! with `use_cni=1,dp_path=PATH`) asks for an interface's XSKMAP here with
//! the handshake of the AF_XDP device plugin for Kubernetes, over a
//! `SOCK_SEQPACKET` Unix socket, one message per packet, no NUL terminators:
//!
//! | client                 | broker                                       |
//! | ---------------------- | -------------------------------------------- |
//! | `/connect,<hostname>`  | `/host_ok`                                   |
//! | `/version`             | `0.1`                                        |
//! | `/xsk_map_fd,<ifname>` | `/fd_ack` + the XSKMAP (SCM_RIGHTS), or `/fd_nak` and the connection is closed |
//! | `/fin`                 | `/fin_ack`, and the connection is closed     |
//! | anything else          | `/nak`                                       |
//!
//! **Identity** is the peer's `SO_PEERCRED` (the hostname is logged, never
//! trusted), checked with the policy's map-flow rule (`Ask::Map`, which
//! needs `"map_flow": true`); the grant takes the one grant path for maps
//! ([`Broker::open_map`]'s, as [`Broker::open_map_already_bound`], see
//! below), with the same limits, logs and counters as the control socket. DPDK checks only the reply's prefix, and treats
//! `/fd_nak` like `/fd_ack`; so a refusal is `/fd_nak` *and* closing the
//! connection, which DPDK sees as a failed request.
//!
//! **Queues.** DPDK opens one connection per receive queue, in queue order,
//! without saying which queue, and it binds each queue's socket *before*
//! asking for the map. Each granted `/xsk_map_fd` reserves *one* queue: the
//! lowest queue of the interface that no lease holds (a socket bound to it
//! is not a refusal here: it is normally the requester's own, see
//! [`Broker::open_map_already_bound`]). With DPDK's `start_queue` equal to
//! the lowest unleased queue (0 on an interface nobody else uses),
//! connection *i* reserves exactly the queue DPDK bound. The policy's
//! `max_queues` applies to each connection (one queue);
//! `--max-queues-per-uid` and `--max-leases-per-uid` bound the total.
//! Connections count against `--max-connections` while they are open (a
//! connection over a limit is closed at once); a lease outliving its
//! connection keeps one thread waiting on the process's pidfd.
//!
//! **Lifetime.** DPDK closes the connection right after `/fin_ack` and only
//! then inserts its socket into the map, so a lease that ended with the
//! connection would take the program away under it. A DPDK lease lasts as
//! long as the *process* that connected (its pidfd, from `SO_PEERPIDFD`):
//! when it exits the broker clears the queue's map entry and detaches the
//! program once no lease uses the interface. A connection that ends before
//! `/xsk_map_fd` was granted holds nothing.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag};
use tracing::{debug, info, warn};
use xsk_broker_protocol::{ErrorCode, OpenMapRequest, XdpMode};

use crate::error::GrantError;
use crate::kernel::Kernel;
use crate::peercred::{peer_of, peer_pidfd};
use crate::policy::{Ask, Identity, Policy};
use crate::state::{Broker, Lease, Peer};

mod handshake;
mod listener;
#[cfg(test)]
mod tests;

use handshake::reply;
pub use handshake::{
    parse_request, DpRequest, Malformed, MAX_HOSTNAME_LEN, MAX_MESSAGES, MAX_REQUEST_LEN,
};
pub use listener::bind_dpdk_socket;

/// Accept DPDK connections forever, one thread each.
pub fn serve<K: Kernel + 'static>(
    listener: OwnedFd,
    broker: Arc<Broker<K>>,
    policy: Arc<Policy>,
) -> std::io::Result<()> {
    let mut last_report: Option<std::time::Instant> = None;
    loop {
        let conn = match socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            // SAFETY: accept4 returned a new fd that nothing else owns.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::ECONNABORTED) => continue,
            Err(e) => {
                if last_report.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    warn!(errno = %e, "cannot accept a connection on the DPDK socket: {e}");
                    last_report = Some(std::time::Instant::now());
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let (peer, identity) = peer_of(conn.as_fd());
        let slot = match broker.connections().admit(peer.uid, broker.limits()) {
            Ok(slot) => slot,
            Err(e) => {
                let e = xsk_broker_protocol::ErrorReply::from(e);
                debug!(pid = peer.pid, uid = peer.uid, code = %e.code,
                    "DPDK connection refused: {}", e.message);
                broker.counters().refusal(e.code);
                // Closing is the answer: DPDK's next read fails.
                continue;
            }
        };
        let broker = Arc::clone(&broker);
        let policy = Arc::clone(&policy);
        let spawned = std::thread::Builder::new()
            .name("xsk-dpdk".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let held = DpConnection {
                    conn,
                    broker: &broker,
                    policy: &policy,
                    peer,
                    identity,
                    hostname: None,
                }
                .run();
                // The connection is closed and its place freed; a lease
                // granted on it lives on with the process.
                drop(slot);
                if let Some(held) = held {
                    held.hold(&broker);
                }
            });
        if let Err(e) = spawned {
            warn!("cannot start a DPDK connection thread: {e}");
        }
    }
}

/// One DPDK connection, during the handshake.
struct DpConnection<'a, K: Kernel> {
    conn: OwnedFd,
    broker: &'a Arc<Broker<K>>,
    policy: &'a Policy,
    peer: Peer,
    identity: Identity,
    hostname: Option<String>,
}

/// What receiving one message gave.
enum Received {
    Message(Vec<u8>),
    /// Longer than the buffer: the rest was cut off.
    Truncated(usize),
    Closed,
}

impl<K: Kernel> DpConnection<'_, K> {
    /// Run the handshake; returns the lease granted, if any, with what it
    /// needs to outlive the connection.
    fn run(mut self) -> Option<Held> {
        let p = self.peer;
        debug!(
            pid = p.pid,
            uid = p.uid,
            gid = p.gid,
            "DPDK connection opened"
        );
        // A silent peer does not keep a thread for ever.
        let t = self.broker.limits().idle_timeout;
        if let Err(e) = socket::setsockopt(
            &self.conn,
            socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(
                t.as_secs() as libc::time_t,
                t.subsec_micros() as libc::suseconds_t,
            ),
        ) {
            warn!("cannot set the read timeout of a DPDK connection: {e}");
        }
        let mut held: Option<Held> = None;
        for _ in 0..MAX_MESSAGES {
            let msg = match self.recv() {
                Ok(Received::Message(m)) => m,
                Ok(Received::Closed) => return held,
                Ok(Received::Truncated(len)) => {
                    self.nak(&Malformed::TooLong { len }.to_string());
                    continue;
                }
                Err(e) => {
                    debug!(pid = p.pid, "DPDK connection: {e}; closing it");
                    return held;
                }
            };
            let request = match parse_request(&msg) {
                Ok(r) => r,
                Err(e) => {
                    self.nak(&e.to_string());
                    continue;
                }
            };
            match request {
                DpRequest::Connect { hostname } => {
                    if self.hostname.is_some() {
                        self.nak("a second /connect");
                        continue;
                    }
                    self.hostname = Some(hostname);
                    if !self.send(reply::HOST_OK, None) {
                        return held;
                    }
                }
                _ if self.hostname.is_none() => {
                    self.nak("the first message must be /connect,HOSTNAME");
                }
                DpRequest::Version => {
                    if !self.send(reply::VERSION, None) {
                        return held;
                    }
                }
                DpRequest::XskMapFd { .. } if held.is_some() => {
                    self.nak("this connection already holds a queue; open another connection");
                }
                DpRequest::XskMapFd { ifname } => match self.grant(&ifname) {
                    Some(h) => held = Some(h),
                    // `/fd_nak` was sent; DPDK would take it for an ack.
                    None => return held,
                },
                DpRequest::Fin => {
                    self.send(reply::FIN_ACK, None);
                    return held;
                }
            }
        }
        debug!(
            pid = p.pid,
            "DPDK connection sent {MAX_MESSAGES} messages without /fin; closing it"
        );
        held
    }

    /// Check and grant `/xsk_map_fd,IFNAME`: answer `/fd_ack` with the map,
    /// or log the refusal and answer `/fd_nak` (and the caller closes).
    fn grant(&mut self, asked: &str) -> Option<Held> {
        let p = self.peer;
        let ifname = match self.broker.resolve_interface(asked) {
            Ok((_, canonical)) => canonical,
            Err(e) => {
                self.refuse(asked, e.code(), &e.to_string());
                return None;
            }
        };
        let ask = Ask::Map {
            ifname: &ifname,
            queues: 1,
            mode: XdpMode::Auto,
        };
        if let Err(denied) = self.policy.check(&self.identity, ask) {
            self.refuse(&ifname, ErrorCode::NotPermitted, &denied.to_string());
            return None;
        }
        // The lease must end when the process does: know it before granting.
        let pidfd = match peer_pidfd(self.conn.as_fd(), p.pid) {
            Ok(fd) => fd,
            Err(e) => {
                self.refuse(
                    &ifname,
                    ErrorCode::Internal,
                    &format!("cannot watch the peer process (pidfd): {e}"),
                );
                return None;
            }
        };
        let (lease, opened, map_fd) = match open_lowest_unleased(self.broker, &ifname, p) {
            Ok(g) => g,
            Err(e) => {
                self.refuse(&ifname, e.code(), &e.to_string());
                return None;
            }
        };
        info!(
            event = "grant", pid = p.pid, uid = p.uid, gid = p.gid,
            ifname = %opened.ifname, queues = ?lease.queues(),
            mode = %opened.mode, program_id = opened.program_id,
            hostname = self.hostname.as_deref().unwrap_or("-"),
            "granted the XSKMAP to a DPDK client (until its process exits)"
        );
        self.broker.counters().grant();
        let held = Held::new(lease, pidfd, p);
        // If the reply cannot be sent the process still lives: its lease
        // ends with it, like any other.
        self.send(reply::FD_ACK, Some(map_fd.as_fd()));
        drop(map_fd);
        Some(held)
    }

    fn refuse(&self, ifname: &str, code: ErrorCode, message: &str) {
        let p = self.peer;
        info!(
            event = "refuse", pid = p.pid, uid = p.uid, gid = p.gid,
            ifname = %ifname, code = %code,
            hostname = self.hostname.as_deref().unwrap_or("-"),
            "refused a DPDK client: {message}"
        );
        self.broker.counters().refusal(code);
        self.send(reply::FD_NAK, None);
    }

    fn nak(&self, why: &str) {
        let p = self.peer;
        debug!(
            pid = p.pid,
            uid = p.uid,
            "DPDK connection: malformed request: {why}"
        );
        self.broker.counters().refusal(ErrorCode::BadRequest);
        self.send(reply::NAK, None);
    }

    fn send(&self, msg: &[u8], fd: Option<BorrowedFd<'_>>) -> bool {
        let iov = [IoSlice::new(msg)];
        let fds;
        let cmsgs: &[ControlMessage<'_>] = match &fd {
            Some(f) => {
                fds = [f.as_raw_fd()];
                &[ControlMessage::ScmRights(&fds)]
            }
            None => &[],
        };
        match socket::sendmsg::<()>(
            self.conn.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => true,
            Err(e) => {
                debug!(pid = self.peer.pid, "cannot answer a DPDK client: {e}");
                false
            }
        }
    }

    /// One message. File descriptors a peer sends are closed at once.
    fn recv(&self) -> nix::Result<Received> {
        let mut buf = [0u8; 128];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let (len, truncated) = loop {
            match socket::recvmsg::<()>(
                self.conn.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_TRUNC,
            ) {
                Ok(r) => {
                    if let Ok(cmsgs) = r.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(fds) = c {
                                for fd in fds {
                                    // SAFETY: the kernel just installed `fd`
                                    // for this call; nothing else owns it.
                                    drop(unsafe { OwnedFd::from_raw_fd(fd) });
                                }
                            }
                        }
                    }
                    break (r.bytes, r.flags.contains(MsgFlags::MSG_TRUNC));
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        };
        if len == 0 {
            return Ok(Received::Closed);
        }
        match buf.get(..len) {
            Some(msg) if !truncated => Ok(Received::Message(msg.to_vec())),
            _ => Ok(Received::Truncated(len)),
        }
    }
}

/// Reserve for `peer` the lowest queue of `ifname` (a canonical name) that
/// no lease holds, as a one-queue map lease: DPDK opens its connections in
/// queue order, each after binding its socket to that queue (so a bound
/// queue is not refused here, see [`Broker::open_map_already_bound`]).
pub fn open_lowest_unleased<K: Kernel>(
    broker: &Arc<Broker<K>>,
    ifname: &str,
    peer: Peer,
) -> Result<(Lease, xsk_broker_protocol::MapOpened, OwnedFd), GrantError> {
    let mut busy: Option<GrantError> = None;
    for queue in 0.. {
        let req = OpenMapRequest {
            ifname: ifname.to_owned(),
            queues: 1,
            start_queue: queue,
            mode: XdpMode::Auto,
            pin: false,
        };
        match broker.open_map_already_bound(&req, peer) {
            Ok(g) => return Ok(g),
            Err(e @ GrantError::QueueLeased { .. }) => busy = Some(e),
            // Past the last queue: every queue was leased.
            Err(GrantError::QueueOutOfRange { count, .. }) if queue > 0 => {
                let last = busy.map_or(String::new(), |e| format!(" (queue {}: {e})", queue - 1));
                return Err(GrantError::Request(xsk_broker_protocol::ErrorReply::new(
                    ErrorCode::QueueBusy,
                    format!(
                        "every queue of {ifname} (0..{count}) is leased{last}; wait for one \
                         to be released"
                    ),
                )));
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns before queue ids run out: the device has fewer queues")
}

/// A DPDK lease after its connection closed: held until the process exits
/// (its pidfd becomes readable) or the broker revokes it.
struct Held {
    lease: Lease,
    pidfd: OwnedFd,
    /// The first is readable once the broker revoked the lease (it shuts
    /// it down for reading); the second keeps the pair open till then.
    wake: Option<(
        std::os::unix::net::UnixStream,
        std::os::unix::net::UnixStream,
    )>,
    peer: Peer,
}

impl Held {
    /// Hold `lease` for the process behind `pidfd`, and ask the broker to
    /// wake the holder if it ends the lease itself (the interface
    /// vanished): it shuts `wake` down for reading.
    fn new(lease: Lease, pidfd: OwnedFd, peer: Peer) -> Held {
        let wake = match std::os::unix::net::UnixStream::pair() {
            Ok((a, b)) => match a.try_clone() {
                Ok(watched) => {
                    lease.watch_connection(watched);
                    Some((a, b))
                }
                Err(e) => {
                    warn!("cannot watch a DPDK lease for revocation: {e}");
                    None
                }
            },
            Err(e) => {
                warn!("cannot watch a DPDK lease for revocation: {e}");
                None
            }
        };
        Held {
            lease,
            pidfd,
            wake,
            peer,
        }
    }

    /// Wait until the process exits or the broker revokes the lease, then
    /// release it; returns why.
    fn hold<K: Kernel>(self, broker: &Broker<K>) -> String {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let p = self.peer;
        let why = loop {
            let mut fds = vec![PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
            if let Some((w, _)) = &self.wake {
                fds.push(PollFd::new(w.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => break format!("cannot wait for the process (poll: {e})"),
            }
            if fds[0].any().unwrap_or(false) {
                break "its process exited".to_owned();
            }
            if let Some(reason) = self.lease.revoked() {
                break reason.to_owned();
            }
            if fds.get(1).and_then(|f| f.any()).unwrap_or(false) {
                // Woken, but not revoked: should not happen; stop watching
                // the wake-up socket rather than spin.
                break "woken without a revocation".to_owned();
            }
        };
        info!(
            event = "release", pid = p.pid, uid = p.uid, gid = p.gid,
            ifname = %self.lease.ifname(), queues = ?self.lease.queues(),
            "released a DPDK client's queue: {why}"
        );
        broker.counters().release();
        drop(self.lease);
        why
    }
}
