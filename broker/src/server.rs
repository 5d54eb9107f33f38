//! The control socket: one thread per connection, so a slow or silent client
//! never holds up another. A connection's lease ends with the connection.

use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use tracing::{debug, info, warn};
use xsk_broker_protocol::{
    decode_request, features, Channel, CopyMode, ErrorCode, ErrorReply, Event, EventKind,
    HelloReply, OpenMapRequest, OpenRequest, Request, Response, SocketStatus, StatusReply,
    TransportError, MAX_MESSAGE_LEN, PROTOCOL_VERSION,
};

use crate::kernel::Kernel;
use crate::peercred::peer_of;
use crate::policy::{Ask, Identity, Policy};
use crate::state::{Broker, Lease, Peer};

/// Accept connections forever. `failures` is made before the socket is
/// ready ([`AcceptFailures::new`] opens its spare fd), so that the broker's fd
/// table does not change after clients can connect.
pub fn serve(
    listener: UnixListener,
    broker: Arc<Broker>,
    policy: Arc<Policy>,
    mut failures: AcceptFailures,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE and friends: say what it is (once in a while, not
                // per retry), back off briefly, keep serving. The peer
                // waits in the listen queue meanwhile.
                failures.report(&e);
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        let Some(slot) = admit(&broker, &stream) else {
            continue;
        };
        let broker = Arc::clone(&broker);
        let policy = Arc::clone(&policy);
        let spawned = std::thread::Builder::new()
            .name("xsk-conn".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let _slot = slot;
                Connection::new(stream, broker, policy).run()
            });
        if let Err(e) = spawned {
            warn!("cannot start a connection thread: {e}");
        }
    }
}

/// How often a failing `accept` is logged at most.
const ACCEPT_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Logs `accept` failures as what they are, at most once per
/// [`ACCEPT_REPORT_EVERY`], counting the ones in between.
pub struct AcceptFailures {
    last: Option<std::time::Instant>,
    suppressed: u64,
    /// An fd kept open to be given up when the fd table is full, so that
    /// the broker can still count its open fds for the report.
    spare: Option<std::fs::File>,
}

impl Default for AcceptFailures {
    fn default() -> Self {
        Self::new()
    }
}

impl AcceptFailures {
    /// No failure yet; opens the spare fd (`/dev/null`).
    pub fn new() -> Self {
        AcceptFailures {
            last: None,
            suppressed: 0,
            spare: std::fs::File::open("/dev/null").ok(),
        }
    }

    /// Whether a failure at `now` is to be logged: `Some(failures not
    /// logged since the last report)`, or `None` (counted, not logged).
    fn due(&mut self, now: std::time::Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < ACCEPT_REPORT_EVERY)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    fn report(&mut self, e: &std::io::Error) {
        let again = match self.due(std::time::Instant::now()) {
            None => return,
            Some(0) => String::new(),
            Some(n) => format!(" ({n} more failures since the last report)"),
        };
        let errno = e.raw_os_error().unwrap_or(0);
        if errno == libc::EMFILE || errno == libc::ENFILE {
            // Counting needs an fd of its own: give up the spare for it.
            drop(self.spare.take());
            let open = std::fs::read_dir("/proc/self/fd")
                .map_or("an unknown number of".to_owned(), |d| {
                    d.count().saturating_sub(1).to_string()
                });
            self.spare = std::fs::File::open("/dev/null").ok();
            let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_or("unknown".to_owned(), |(soft, _)| soft.to_string());
            if errno == libc::EMFILE {
                warn!(
                    errno = "EMFILE", open_fds = %open, limit = %limit,
                    "cannot accept connections: EMFILE, the broker has {open} fds open, its \
                     limit (RLIMIT_NOFILE) is {limit}; new connections wait until fds are \
                     freed; raise LimitNOFILE= (ulimit -n) or lower --max-connections or \
                     --max-queues-per-lease{again}"
                );
            } else {
                warn!(
                    errno = "ENFILE", open_fds = %open, limit = %limit,
                    "cannot accept connections: ENFILE, the system-wide table of open files \
                     is full (sysctl fs.file-max; the broker has {open} fds open); new \
                     connections wait until fds are freed{again}"
                );
            }
        } else {
            warn!(
                errno = %nix::errno::Errno::from_raw(errno),
                "cannot accept a connection: {e}{again}"
            );
        }
    }
}

struct Connection {
    chan: Channel,
    broker: Arc<Broker>,
    policy: Arc<Policy>,
    identity: Identity,
    peer: Peer,
    greeted: bool,
    /// The optional protocol features this session uses (negotiated in
    /// hello; none for a client of version 1.0).
    features: Vec<String>,
    lease: Option<Lease>,
    /// The lease this connection once held and ended, if any: a connection
    /// is granted at most once (its credentials were taken at connect, and
    /// may no longer be those of whoever holds it now).
    ended: Option<String>,
}

impl Connection {
    fn new(stream: UnixStream, broker: Arc<Broker>, policy: Arc<Policy>) -> Self {
        let (peer, identity) = peer_of(stream.as_fd());
        // Requests carry no fds: none sent is ever installed here (the
        // kernel closes them), so a peer cannot fill the broker's fd table.
        let mut chan = Channel::new(stream);
        chan.set_max_fds_in(0);
        Connection {
            chan,
            broker,
            policy,
            identity,
            peer,
            greeted: false,
            features: Vec::new(),
            lease: None,
            ended: None,
        }
    }

    fn run(mut self) {
        let p = self.peer;
        debug!(pid = p.pid, uid = p.uid, gid = p.gid, "connection opened");
        self.apply_idle_timeout();
        loop {
            let received = match self.chan.recv() {
                Ok(r) => r,
                Err(TransportError::Closed) => break,
                Err(TransportError::TimedOut) if self.lease.is_some() => continue,
                Err(TransportError::TimedOut) => {
                    self.close_idle();
                    break;
                }
                Err(e) if e.stream_in_step() => {
                    self.reply_error(ErrorReply::new(ErrorCode::BadRequest, e.to_string()));
                    continue;
                }
                Err(e) => {
                    // The framing cannot be trusted any more: answer, then close.
                    debug!(pid = p.pid, "dropping connection: {e}");
                    self.reply_error(ErrorReply::new(
                        ErrorCode::BadRequest,
                        format!("{e}; closing the connection"),
                    ));
                    break;
                }
            };
            if !received.fds.is_empty() {
                let n = received.fds.len();
                drop(received.fds);
                self.reply_error(ErrorReply::new(
                    ErrorCode::BadRequest,
                    format!("the broker accepts no file descriptors; the {n} sent were closed"),
                ));
                continue;
            }
            let request = match decode_request(&received.body) {
                Ok(r) => r,
                Err(e) => {
                    self.reply_error(e.into());
                    continue;
                }
            };
            if !self.handle(request) {
                break;
            }
        }
        // The broker is stopping: say so (the session takes events) and
        // leave the lease in the kernel for a restarted broker.
        if self.lease.as_ref().is_some_and(|l| l.stopping()) {
            if let Some(lease) = self.lease.take() {
                self.send(
                    &Response::Event(Event {
                        event: EventKind::Stopping,
                        message: "the broker is stopping; this lease's queues stay in the kernel \
                                  and traffic keeps flowing, and a broker restarted with \
                                  --state-dir keeps the lease until this process exits; the \
                                  connection is closed"
                            .to_owned(),
                        queues: lease.queues(),
                    }),
                    &[],
                );
                lease.keep_in_kernel();
            }
            self.broker.stop_notice_sent();
            debug!(pid = p.pid, "connection closed: the broker is stopping");
            return;
        }
        // The broker itself ended the lease (its interface vanished): say why.
        let revoked = self
            .lease
            .as_ref()
            .and_then(|l| l.revoked())
            .map(str::to_owned);
        if let Some(reason) = &revoked {
            if self.uses(features::EVENTS) {
                let queues = self.lease.as_ref().map(|l| l.queues()).unwrap_or_default();
                self.send(
                    &Response::Event(Event {
                        event: EventKind::Revoked,
                        message: reason.clone(),
                        queues,
                    }),
                    &[],
                );
            } else {
                self.reply_error(ErrorReply::new(ErrorCode::NoSuchInterface, reason.clone()));
            }
        }
        self.end_lease(revoked.as_deref().unwrap_or("connection closed"));
        debug!(pid = p.pid, "connection closed");
    }

    /// Handle one request; false ends the connection.
    fn handle(&mut self, request: Request) -> bool {
        match request {
            Request::Hello(h) => {
                if h.version != PROTOCOL_VERSION {
                    self.reply_error(ErrorReply::new(
                        ErrorCode::UnsupportedVersion,
                        format!(
                            "client speaks protocol version {}, this broker speaks {PROTOCOL_VERSION}",
                            h.version
                        ),
                    ));
                    return true;
                }
                self.greeted = true;
                // The session uses the features both sides have; a client
                // that lists none gets the version 1.0 reply, unchanged.
                self.features = h
                    .features
                    .into_iter()
                    .filter(|f| features::ALL.contains(&f.as_str()))
                    .collect();
                self.send(
                    &Response::Hello(HelloReply {
                        version: PROTOCOL_VERSION,
                        server: format!("xsk-brokerd/{}", env!("CARGO_PKG_VERSION")),
                        features: self.features.clone(),
                    }),
                    &[],
                )
            }
            _ if !self.greeted => {
                self.reply_error(ErrorReply::new(
                    ErrorCode::BadRequest,
                    "the first message must be hello",
                ));
                true
            }
            Request::Open(req) => {
                let req = match self.canonical(req.ifname.clone()) {
                    Ok(ifname) => OpenRequest { ifname, ..req },
                    Err(e) => return self.refuse(&req.ifname, e),
                };
                let ask = Ask::Sockets {
                    ifname: &req.ifname,
                    queues: req.queues,
                    mode: req.mode,
                    copy: req.copy,
                };
                if let Err(e) = self.admit(ask) {
                    return self.refuse(&req.ifname, e);
                }
                // `auto` where the policy does not allow zero-copy is a copy
                // lease: the kernel then holds the socket to XDP_COPY (at the
                // `kernel` confinement level), and the reply tells the client.
                let zero_copy = Ask::Sockets {
                    ifname: &req.ifname,
                    queues: req.queues,
                    mode: req.mode,
                    copy: CopyMode::ZeroCopy,
                };
                let req = if req.copy == CopyMode::Auto
                    && self.policy.check(&self.identity, zero_copy).is_err()
                {
                    OpenRequest {
                        copy: CopyMode::Copy,
                        ..req
                    }
                } else {
                    req
                };
                let p = self.peer;
                match self.broker.open(&req, p) {
                    Ok((lease, opened)) => {
                        info!(
                            event = "grant", pid = p.pid, uid = p.uid, gid = p.gid,
                            ifname = %opened.ifname, queues = ?lease.queues(),
                            mode = %opened.mode, program_id = opened.program_id, "granted"
                        );
                        self.watch(&lease);
                        if self.uses(features::EVENTS) {
                            lease.wants_events();
                        }
                        self.broker.counters().grant();
                        let fds = lease.fds();
                        let sent = self.send(&Response::Opened(opened), &fds);
                        drop(fds);
                        self.lease = Some(lease);
                        self.on_leased();
                        sent
                    }
                    Err(e) => self.refuse(&req.ifname, e.into()),
                }
            }
            Request::Release => {
                let queues = self.lease.as_ref().map(|l| l.queues()).unwrap_or_default();
                self.end_lease("released by the client");
                self.send(&Response::Released { queues }, &[])
            }
            Request::OpenMap(req) => {
                let req = match self.canonical(req.ifname.clone()) {
                    Ok(ifname) => OpenMapRequest { ifname, ..req },
                    Err(e) => return self.refuse(&req.ifname, e),
                };
                let ask = Ask::Map {
                    ifname: &req.ifname,
                    queues: req.queues,
                    mode: req.mode,
                };
                if let Err(e) = self.admit(ask) {
                    return self.refuse(&req.ifname, e);
                }
                let p = self.peer;
                match self.broker.open_map(&req, p) {
                    Ok((lease, opened, map_fd)) => {
                        info!(
                            event = "grant", pid = p.pid, uid = p.uid, gid = p.gid,
                            ifname = %opened.ifname, queues = ?lease.queues(),
                            mode = %opened.mode, program_id = opened.program_id,
                            pin = opened.pin_path.as_deref().unwrap_or("-"), "granted the XSKMAP"
                        );
                        self.watch(&lease);
                        if self.uses(features::EVENTS) {
                            lease.wants_events();
                        }
                        self.broker.counters().grant();
                        let sent = self.send(&Response::MapOpened(opened), &[map_fd.as_fd()]);
                        drop(map_fd);
                        self.lease = Some(lease);
                        self.on_leased();
                        sent
                    }
                    Err(e) => self.refuse(&req.ifname, e.into()),
                }
            }
            Request::Status(_) => {
                debug!(pid = self.peer.pid, uid = self.peer.uid, "status requested");
                if let Err(e) = self.policy.check(&self.identity, Ask::Status) {
                    return self.refuse("-", e.into());
                }
                let only = (!self.policy.sees_all_leases(&self.identity)).then_some(self.peer.uid);
                let mut reply = status_reply(&self.broker, only);
                if !self.uses(features::STATUS_CONFINEMENT) {
                    reply.confinement = None;
                }
                if !self.uses(features::STATUS_TRAFFIC) {
                    reply
                        .leases
                        .iter_mut()
                        .flat_map(|l| l.sockets.iter_mut())
                        .for_each(SocketStatus::without_traffic);
                }
                self.send(&Response::Status(reply), &[])
            }
        }
    }

    /// Refuse a second lease on one connection, and whatever the policy does
    /// not allow this peer.
    fn admit(&self, ask: Ask<'_>) -> Result<(), ErrorReply> {
        if let Some(lease) = &self.lease {
            return Err(ErrorReply::new(
                ErrorCode::BadRequest,
                format!(
                    "this connection already holds a lease on {}; release it or open \
                     another connection",
                    lease.describe()
                ),
            ));
        }
        if let Some(ended) = &self.ended {
            return Err(ErrorReply::new(
                ErrorCode::BadRequest,
                format!(
                    "this connection already had a lease ({ended}), which ended; a connection \
                     is granted once (the broker knows its holder only as it was at connect): \
                     open a new connection for a new lease"
                ),
            ));
        }
        self.policy
            .check(&self.identity, ask)
            .map_err(ErrorReply::from)
    }

    /// The canonical name of the interface a peer named (by its name or an
    /// alternative name): what the policy, the logs and the reply use.
    fn canonical(&self, asked: String) -> Result<String, ErrorReply> {
        let (ifindex, canonical) = self
            .broker
            .resolve_interface(&asked)
            .map_err(ErrorReply::from)?;
        if canonical != asked {
            debug!(
                pid = self.peer.pid, asked = ?asked, ifname = %canonical, ifindex,
                "resolved an alternative interface name"
            );
        }
        Ok(canonical)
    }

    /// Log a refusal with the peer's identity and answer it; keeps the connection.
    fn refuse(&self, ifname: &str, e: ErrorReply) -> bool {
        let p = self.peer;
        info!(
            event = "refuse", pid = p.pid, uid = p.uid, gid = p.gid,
            ifname = %ifname, code = %e.code, "refused: {}", e.message
        );
        self.reply_error(e);
        true
    }

    fn end_lease(&mut self, why: &str) {
        if let Some(lease) = self.lease.take() {
            self.ended = Some(lease.describe());
            let p = self.peer;
            info!(
                event = "release", pid = p.pid, uid = p.uid, gid = p.gid,
                ifname = %lease.ifname(), queues = ?lease.queues(), "released: {why}"
            );
            self.broker.counters().release();
            self.broker.release(lease);
            self.apply_idle_timeout();
        }
    }

    fn send(&self, msg: &Response, fds: &[std::os::fd::BorrowedFd<'_>]) -> bool {
        match self.chan.send(msg, fds) {
            Ok(()) => true,
            Err(e) => {
                debug!(pid = self.peer.pid, "cannot answer the client: {e}");
                false
            }
        }
    }

    /// Whether the session uses optional feature `f`.
    fn uses(&self, f: &str) -> bool {
        self.features.iter().any(|have| have == f)
    }

    fn reply_error(&self, mut e: ErrorReply) {
        self.broker.counters().refusal(e.code);
        if !self.uses(features::ERROR_CODES_2) {
            e.code = e.code.legacy();
        }
        self.send(&Response::Error(e), &[]);
    }
}

/// Build a status reply that fits the message size limit: if every lease does
/// not fit, the newest are left out and counted in `omitted_leases`. With
/// `only_uid`, only that uid's leases are shown.
fn status_reply(broker: &Broker, only_uid: Option<u32>) -> StatusReply {
    let mut reply = StatusReply {
        server: format!("xsk-brokerd/{}", env!("CARGO_PKG_VERSION")),
        pid: std::process::id(),
        uptime_ms: u64::try_from(broker.counters().uptime().as_millis()).unwrap_or(u64::MAX),
        leases: Vec::new(),
        omitted_leases: u32::MAX, // the widest value, so the size estimate is an upper bound
        confinement: broker.kernel().confinement_level(),
    };
    let leases = broker.lease_status(only_uid);
    // `{...,"leases":[a,b,c],...}`: the envelope plus each lease and a comma.
    let mut size =
        serde_json::to_vec(&Response::Status(reply.clone())).map_or(MAX_MESSAGE_LEN, |b| b.len());
    let mut fit = 0;
    for lease in &leases {
        size += serde_json::to_vec(lease).map_or(MAX_MESSAGE_LEN, |b| b.len()) + 1;
        if size > MAX_MESSAGE_LEN {
            break;
        }
        fit += 1;
    }
    reply.omitted_leases = u32::try_from(leases.len() - fit).unwrap_or(u32::MAX);
    reply.leases = leases;
    reply.leases.truncate(fit);
    reply
}

/// Admit a new connection under the connection limits, or answer it with the
/// limit it is over and close it (at once: it never waits in a queue).
fn admit(broker: &Broker, stream: &UnixStream) -> Option<crate::limits::ConnectionSlot> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    // Unknown credentials count as one unknown user.
    let (pid, uid) =
        getsockopt(&stream.as_fd(), PeerCredentials).map_or((-1, u32::MAX), |c| (c.pid(), c.uid()));
    match broker.connections().admit(uid, broker.limits()) {
        Ok(slot) => Some(slot),
        Err(e) => {
            let mut e = ErrorReply::from(e);
            debug!(pid, uid, code = %e.code, "connection refused: {}", e.message);
            broker.counters().refusal(e.code);
            // Before hello no feature is known: the version 1.0 code.
            e.code = e.code.legacy();
            // Never block the accept loop on a peer that does not read.
            if stream.set_nonblocking(true).is_ok() {
                if let Ok(c) = stream.try_clone() {
                    let _ = Channel::new(c).send(&Response::Error(e), &[]);
                }
            }
            None
        }
    }
}

impl Connection {
    /// Without a lease, a connection must send a complete request within the
    /// idle timeout; with one, it may stay silent for ever. Any message must
    /// arrive within the idle timeout of its first byte either way.
    fn apply_idle_timeout(&mut self) {
        let t = self.broker.limits().idle_timeout;
        self.chan.set_frame_timeout(Some(t));
        let read = if self.lease.is_some() { None } else { Some(t) };
        if let Err(e) = self.chan.stream().set_read_timeout(read) {
            warn!("cannot set the read timeout of a connection: {e}");
        }
    }

    /// A lease is being granted: let the broker wake this connection if it
    /// ends the lease on its own (before the reply, so the client never sees
    /// the grant before the broker is ready to end it).
    fn watch(&self, lease: &Lease) {
        match self.chan.stream().try_clone() {
            Ok(dup) => lease.watch_connection(dup),
            Err(e) => warn!("cannot watch a lease's connection: {e}"),
        }
    }

    /// A lease was just granted: no idle timeout any more.
    fn on_leased(&mut self) {
        self.apply_idle_timeout();
    }

    /// Answer and close a connection that sent nothing complete in time.
    fn close_idle(&self) {
        let t = self.broker.limits().idle_timeout.as_secs_f64();
        debug!(
            pid = self.peer.pid,
            uid = self.peer.uid,
            "closing an idle connection"
        );
        self.reply_error(ErrorReply::new(
            ErrorCode::BadRequest,
            format!(
                "no request within {t} s on a connection without a lease (--idle-timeout); \
                 closing the connection"
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_are_reported_at_most_every_ten_seconds() {
        let mut f = AcceptFailures::new();
        let t0 = std::time::Instant::now();
        assert_eq!(f.due(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(f.due(t0 + std::time::Duration::from_secs(i)), None);
        }
        assert_eq!(f.due(t0 + ACCEPT_REPORT_EVERY), Some(5));
        assert_eq!(f.due(t0 + ACCEPT_REPORT_EVERY), None);
    }
}
