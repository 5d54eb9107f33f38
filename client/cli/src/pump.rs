//! The loop `rx` and `echo` run over their sockets: one step per socket
//! until a limit (`--count`, `--duration`, `--idle-exit`) or a signal stops
//! it, waiting in poll when there is no traffic, and failing when a socket
//! or the broker says the lease is over. Also the transmit drain `tx` and
//! `echo` end with.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use xsk_client::XskSocket;

use crate::args::Common;
use crate::lease::Session;

/// Loop control shared by rx and echo.
pub struct Limits {
    count: Option<u64>,
    deadline: Option<Instant>,
    idle: Option<Duration>,
}

impl Limits {
    /// The limits `--count`, `--duration` and `--idle-exit` set, from now.
    pub fn new(c: &Common) -> Self {
        Limits {
            count: c.count,
            deadline: c
                .duration
                .map(|d| Instant::now() + Duration::from_secs_f64(d.max(0.0))),
            idle: c.idle_exit.map(|d| Duration::from_secs_f64(d.max(0.0))),
        }
    }
}

/// Run `step` (queue index, socket; returns the frames it handled) over
/// every socket in turn until `limits` or `stop` end it; returns the frames
/// handled.
pub fn run_loop(
    s: &mut Session,
    limits: &Limits,
    stop: &AtomicBool,
    mut step: impl FnMut(usize, &mut XskSocket) -> Result<usize>,
) -> Result<u64> {
    let mut total: u64 = 0;
    let mut last_traffic: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut did = 0;
        for (i, sock) in s.sockets.iter_mut().enumerate() {
            did += step(i, sock)?;
        }
        total += did as u64;
        let now = Instant::now();
        if did > 0 {
            last_traffic = Some(now);
        }
        if limits.count.is_some_and(|c| total >= c) || limits.deadline.is_some_and(|d| now >= d) {
            break;
        }
        if let (Some(idle), Some(last)) = (limits.idle, last_traffic) {
            if now - last >= idle {
                break;
            }
        }
        if did == 0 {
            wait_any(s, Duration::from_millis(50))?;
        }
    }
    Ok(total)
}

/// Reclaim outstanding transmissions for up to a second.
pub fn drain_tx(sockets: &mut [XskSocket]) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(1);
    while sockets.iter().any(|s| s.outstanding_tx() > 0) && Instant::now() < until {
        for s in sockets.iter_mut() {
            s.flush_tx()?;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Wait until any socket is readable, up to `timeout`; fail if a socket
/// reports an error (its interface was deleted) or the broker ended the
/// lease with a message on the control connection.
fn wait_any(s: &mut Session, timeout: Duration) -> Result<()> {
    let control = if s.control_closed {
        None
    } else {
        s.held.control_fd()
    };
    let mut fds: Vec<PollFd<'_>> = s
        .sockets
        .iter()
        .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN))
        .collect();
    fds.extend(control.map(|c| PollFd::new(c, PollFlags::POLLIN)));
    let ms = PollTimeout::from(timeout.as_millis().min(60_000) as u16);
    match poll(&mut fds, ms) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => return Err(e).context("poll on the AF_XDP sockets"),
    }
    let control_ready = control.is_some()
        && fds
            .last()
            .and_then(|f| f.revents())
            .is_some_and(|r| !r.is_empty());
    drop(fds);
    for sock in &s.sockets {
        if let Some(e) = sock.take_error()? {
            bail!(
                "queue {} of {}: the AF_XDP socket reports an error: {e} (the interface was \
                 deleted or moved away; the socket is unbound and carries no more traffic)",
                sock.queue_id(),
                s.info.ifname
            );
        }
    }
    if control_ready {
        if let Some(c) = control {
            match broker_notice(c)? {
                Some(msg) => bail!("the broker ended the lease: {msg}"),
                None => {
                    eprintln!(
                        "xsk-client: the broker closed the lease connection (it stopped or is \
                         restarting); the sockets keep working"
                    );
                    s.control_closed = true;
                }
            }
        }
    }
    Ok(())
}

/// Read what the broker sent on a lease's control connection: `Some(message)`
/// for an error it sent (e.g. the interface disappeared), `None` if it
/// closed the connection without one.
fn broker_notice(control: BorrowedFd<'_>) -> Result<Option<String>> {
    use xsk_broker_protocol::{decode_response, Channel, Response, TransportError};
    let dup = control
        .try_clone_to_owned()
        .context("duplicating the lease's control connection")?;
    let stream = std::os::unix::net::UnixStream::from(dup);
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    match Channel::new(stream).recv() {
        Ok(got) => Ok(Some(match decode_response(&got.body) {
            Ok(Response::Error(e)) => format!("{}: {}", e.code, e.message),
            Ok(Response::Event(e)) => format!("{}: {}", e.event.as_str(), e.message),
            Ok(other) => format!("unexpected message {other:?}"),
            Err(e) => format!("unreadable message: {e}"),
        })),
        Err(TransportError::Closed) => Ok(None),
        Err(e) => Ok(Some(format!("the control connection failed: {e}"))),
    }
}
