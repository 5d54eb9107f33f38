//! systemd socket activation: take the listening control socket passed as
//! fd 3 with `LISTEN_FDS`/`LISTEN_PID` (and optionally `LISTEN_FDNAMES`),
//! as `sd_listen_fds(3)` describes.
//!
//! The one `unsafe` block here takes ownership of fd 3, after checking that
//! the variables name this process and that fd 3 is open.

use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, SockaddrLike, SockaddrStorage};

/// First fd passed by socket activation (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// What the socket-activation variables said.
#[derive(Debug)]
pub enum Activation {
    /// No `LISTEN_FDS`, or `LISTEN_FDS=0`.
    None,
    /// The variables are for another process (`LISTEN_PID` names another
    /// pid, e.g. they were inherited); they are ignored.
    ForOtherProcess {
        /// The pid they name.
        listen_pid: String,
    },
    /// A listening Unix stream socket passed to this process.
    Socket {
        /// The listener (close-on-exec).
        listener: UnixListener,
        /// Its path, if it is bound to one (not abstract or unnamed).
        path: Option<PathBuf>,
        /// Its name from `LISTEN_FDNAMES` (systemd's `FileDescriptorName=`).
        name: Option<String>,
    },
}

/// Read and unset `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`, and take
/// the passed socket if they name this process. Call once, early in `main`
/// while the process has one thread and before it opens any file.
pub fn take_listener() -> Result<Activation> {
    let fds = std::env::var("LISTEN_FDS").ok();
    let pid = std::env::var("LISTEN_PID").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    // Unset them so nothing we start inherits them (as sd_listen_fds(1) does).
    for v in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        std::env::remove_var(v);
    }
    let Some(fds) = fds else {
        return Ok(Activation::None);
    };
    let n: u32 = fds.trim().parse().with_context(|| {
        format!("socket activation: LISTEN_FDS={fds:?} is not a number of file descriptors")
    })?;
    let Some(pid) = pid else {
        bail!(
            "socket activation: LISTEN_FDS={n} is set but LISTEN_PID is not; \
             the service manager must set both"
        );
    };
    let me = std::process::id();
    if pid.trim().parse::<u32>().ok() != Some(me) {
        return Ok(Activation::ForOtherProcess { listen_pid: pid });
    }
    match n {
        0 => return Ok(Activation::None),
        1 => {}
        _ => bail!(
            "socket activation passed {n} file descriptors (LISTEN_FDS={n}); xsk-brokerd takes \
             exactly one listening Unix stream socket: give the .socket unit a single \
             ListenStream= line"
        ),
    }
    let name = names
        .and_then(|n| n.split(':').next().map(str::to_owned))
        .filter(|n| !n.is_empty());
    let fd = LISTEN_FDS_START;
    let flags = fcntl(fd, FcntlArg::F_GETFD)
        .with_context(|| format!("socket activation: LISTEN_FDS=1 but fd {fd} is not open"))?;
    // SAFETY: LISTEN_PID names this process, so the service manager passed
    // fd 3 to it; fcntl just showed it is open; the variables are unset, so
    // this is the only place that takes it, and it runs before the process
    // opens files of its own. From here the OwnedFd is its only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // The service manager passes it inheritable; the broker execs nothing,
    // but keep it from leaking anyway.
    fcntl(
        fd,
        FcntlArg::F_SETFD(FdFlag::from_bits_truncate(flags) | FdFlag::FD_CLOEXEC),
    )
    .context("socket activation: setting FD_CLOEXEC on fd 3")?;
    let (listener, path) = check_listener(owned)?;
    Ok(Activation::Socket {
        listener,
        path,
        name,
    })
}

/// Check that `fd` is a listening Unix stream socket; return it as a
/// listener and its path.
fn check_listener(fd: OwnedFd) -> Result<(UnixListener, Option<PathBuf>)> {
    let what = "socket activation: fd 3";
    let ty = getsockopt(&fd.as_fd(), sockopt::SockType).map_err(|e| {
        anyhow::anyhow!(
            "{what} is not a socket ({e}); the .socket unit must use ListenStream= with a path"
        )
    })?;
    let addr: SockaddrStorage =
        getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd)).context("getsockname on fd 3")?;
    let Some(unix) = addr.as_unix_addr() else {
        bail!(
            "{what} is not a Unix socket (address family {:?}); use ListenStream=/run/xsk-broker/broker.sock",
            addr.family()
        );
    };
    if ty != SockType::Stream {
        bail!("{what} is a Unix {ty:?} socket, not a stream socket; use ListenStream=, not ListenDatagram= or ListenSequentialPacket=");
    }
    if !getsockopt(&fd.as_fd(), sockopt::AcceptConn).context("SO_ACCEPTCONN on fd 3")? {
        bail!("{what} is a Unix stream socket that is not listening; pass a listening socket (Accept=no)");
    }
    let path = unix.path().map(|p| p.to_path_buf());
    Ok((UnixListener::from(fd), path))
}
