//! The control socket: one thread per connection, so a slow or silent client
//! never holds up another. A connection's lease ends with the connection.

use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use tracing::{debug, info, warn};
use xsk_broker_protocol::{
    decode_request, Channel, ErrorCode, ErrorReply, HelloReply, Request, Response, StatusReply,
    TransportError, MAX_MESSAGE_LEN, PROTOCOL_VERSION,
};

use crate::peercred::peer_of;
use crate::policy::{Ask, Identity, Policy};
use crate::state::{Broker, Lease, Peer};

/// When the broker started serving, for the uptime in status replies.
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Accept connections forever.
pub fn serve(
    listener: UnixListener,
    broker: Arc<Broker>,
    policy: Arc<Policy>,
) -> std::io::Result<()> {
    STARTED.get_or_init(std::time::Instant::now);
    loop {
        let (stream, _) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE and friends: log, back off briefly, keep serving.
                warn!("accept failed: {e}");
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

struct Connection {
    chan: Channel,
    broker: Arc<Broker>,
    policy: Arc<Policy>,
    identity: Identity,
    peer: Peer,
    greeted: bool,
    lease: Option<Lease>,
}

impl Connection {
    fn new(stream: UnixStream, broker: Arc<Broker>, policy: Arc<Policy>) -> Self {
        let (peer, identity) = peer_of(stream.as_fd());
        Connection {
            chan: Channel::new(stream),
            broker,
            policy,
            identity,
            peer,
            greeted: false,
            lease: None,
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
        // The broker itself ended the lease (its interface vanished): say why.
        let revoked = self
            .lease
            .as_ref()
            .and_then(|l| l.revoked())
            .map(str::to_owned);
        if let Some(reason) = &revoked {
            self.reply_error(ErrorReply::new(ErrorCode::NoSuchInterface, reason.clone()));
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
                self.send(
                    &Response::Hello(HelloReply {
                        version: PROTOCOL_VERSION,
                        server: format!("xsk-brokerd/{}", env!("CARGO_PKG_VERSION")),
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
                let ask = Ask::Sockets {
                    ifname: &req.ifname,
                    queues: req.queues,
                    mode: req.mode,
                    copy: req.copy,
                };
                if let Err(e) = self.admit(ask) {
                    return self.refuse(&req.ifname, e);
                }
                let p = self.peer;
                match self.broker.open(&req, p) {
                    Ok((lease, opened)) => {
                        info!(
                            event = "grant", pid = p.pid, uid = p.uid, gid = p.gid,
                            ifname = %opened.ifname, queues = ?lease.queues(),
                            mode = %opened.mode, program_id = opened.program_id, "granted"
                        );
                        self.watch(&lease);
                        crate::metrics::COUNTERS.grant();
                        let fds = lease.fds();
                        let sent = self.send(&Response::Opened(opened), &fds);
                        drop(fds);
                        self.lease = Some(lease);
                        self.on_leased();
                        sent
                    }
                    Err(e) => self.refuse(&req.ifname, e),
                }
            }
            Request::Release => {
                let queues = self.lease.as_ref().map(|l| l.queues()).unwrap_or_default();
                self.end_lease("released by the client");
                self.send(&Response::Released { queues }, &[])
            }
            Request::OpenMap(req) => {
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
                        crate::metrics::COUNTERS.grant();
                        let sent = self.send(&Response::MapOpened(opened), &[map_fd.as_fd()]);
                        drop(map_fd);
                        self.lease = Some(lease);
                        self.on_leased();
                        sent
                    }
                    Err(e) => self.refuse(&req.ifname, e),
                }
            }
            Request::Status(_) => {
                debug!(pid = self.peer.pid, uid = self.peer.uid, "status requested");
                if let Err(e) = self.policy.check(&self.identity, Ask::Status) {
                    return self.refuse("-", e);
                }
                let reply = status_reply(&self.broker);
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
        self.policy.check(&self.identity, ask)
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
            let p = self.peer;
            info!(
                event = "release", pid = p.pid, uid = p.uid, gid = p.gid,
                ifname = %lease.ifname(), queues = ?lease.queues(), "released: {why}"
            );
            crate::metrics::COUNTERS.release();
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

    fn reply_error(&self, e: ErrorReply) {
        crate::metrics::COUNTERS.refusal(e.code);
        self.send(&Response::Error(e), &[]);
    }
}

/// Build a status reply that fits the message size limit: if every lease does
/// not fit, the newest are left out and counted in `omitted_leases`.
fn status_reply(broker: &Broker) -> StatusReply {
    let mut reply = StatusReply {
        server: format!("xsk-brokerd/{}", env!("CARGO_PKG_VERSION")),
        pid: std::process::id(),
        uptime_ms: STARTED.get().map_or(0, |t| {
            u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
        }),
        leases: Vec::new(),
        omitted_leases: u32::MAX, // the widest value, so the size estimate is an upper bound
        confinement: broker.confinement_level(),
    };
    let leases = broker.lease_status();
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
            debug!(pid, uid, code = %e.code, "connection refused: {}", e.message);
            crate::metrics::COUNTERS.refusal(e.code);
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
