//! Whole-frame capture (and injection) with an AF_PACKET socket inside a namespace.

use crate::netns::Netns;
use crate::testbed::Testbed;
use anyhow::{bail, Context, Result};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const RCVBUF: libc::c_int = 8 << 20;

/// An AF_PACKET `SOCK_RAW` socket bound to one interface of one namespace, receiving every
/// frame (`ETH_P_ALL`) that arrives on it, Ethernet header included. Frames the interface
/// itself transmits are not seen (`PACKET_IGNORE_OUTGOING`, and `PACKET_OUTGOING` frames
/// are filtered out as well in case the option is missing).
///
/// The socket is created on a thread that entered the namespace and stays in it; the
/// `Capture` can then be used from any thread. Capturing starts at [`Capture::start`]:
/// frames that arrived earlier are not seen.
#[derive(Debug)]
pub struct Capture {
    fd: OwnedFd,
    ifname: String,
    ifindex: u32,
    ns: String,
}

fn os_err(what: impl FnOnce() -> String) -> anyhow::Error {
    anyhow::Error::new(std::io::Error::last_os_error()).context(what())
}

impl Capture {
    /// Capture on the peer end of `tb` (inside the peer namespace).
    pub fn start(tb: &Testbed) -> Result<Capture> {
        Capture::start_in(&tb.peer, &tb.peer_if)
    }

    /// Capture on the xsk end of `tb` (inside the xsk namespace). Note that frames an XDP
    /// program redirects or drops never reach AF_PACKET.
    pub fn start_xsk(tb: &Testbed) -> Result<Capture> {
        Capture::start_in(&tb.xsk, &tb.xsk_if)
    }

    /// Capture on interface `ifname` of namespace `ns`.
    pub fn start_in(ns: &Netns, ifname: &str) -> Result<Capture> {
        let ctx = format!("AF_PACKET capture on {ifname} in netns {}", ns.name());
        let (fd, ifindex) = ns
            .enter_thread(|| open_bound(ifname))?
            .with_context(|| ctx.clone())?;
        Ok(Capture {
            fd,
            ifname: ifname.to_owned(),
            ifindex,
            ns: ns.name().to_owned(),
        })
    }

    /// The interface's ifindex (in its namespace).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Receive frames until `until(&frames_so_far)` is true or `timeout` passes, and return
    /// all frames received. A timeout is not an error: the caller asserts on what came.
    /// `until` is also checked before waiting at all.
    pub fn collect(
        &self,
        until: impl Fn(&[Vec<u8>]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            if until(&frames) {
                return Ok(frames);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(frames);
            }
            if !self.wait_readable(left)? {
                continue;
            }
            // Drain everything queued, then re-check the condition.
            while let Some(f) = self.recv_one(&mut buf)? {
                frames.push(f);
                if until(&frames) {
                    return Ok(frames);
                }
            }
        }
    }

    /// Discard every frame queued so far; returns how many.
    pub fn drain(&self) -> Result<usize> {
        let mut buf = vec![0u8; 65536];
        let mut n = 0;
        while self.recv_one(&mut buf)?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    /// Transmit one whole Ethernet frame on the interface (not seen by this capture).
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        loop {
            // SAFETY: frame is a valid buffer; the socket is bound to the interface.
            let n =
                unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if n >= 0 {
                if n as usize != frame.len() {
                    bail!(
                        "AF_PACKET send on {} in netns {}: short write {n}/{}",
                        self.ifname,
                        self.ns,
                        frame.len()
                    );
                }
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) => {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                _ => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "AF_PACKET send of {} bytes on {} in netns {}",
                        frame.len(),
                        self.ifname,
                        self.ns
                    )))
                }
            }
        }
    }

    fn wait_readable(&self, timeout: Duration) -> Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(
                anyhow::Error::new(e).context(format!("poll on capture of {}", self.ifname))
            );
        }
        Ok(rc > 0)
    }

    /// One frame if one is queued (non-blocking); outgoing frames are skipped.
    fn recv_one(&self, buf: &mut [u8]) -> Result<Option<Vec<u8>>> {
        loop {
            // SAFETY: zeroed sockaddr_ll is a valid out-parameter.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut alen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and sll are valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    (&mut sll as *mut libc::sockaddr_ll).cast(),
                    &mut alen,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EAGAIN) => Ok(None),
                    Some(libc::EINTR) => continue,
                    _ => Err(anyhow::Error::new(e).context(format!(
                        "recvfrom on AF_PACKET capture of {} in netns {}",
                        self.ifname, self.ns
                    ))),
                };
            }
            if sll.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let len = (n as usize).min(buf.len());
            return Ok(Some(buf[..len].to_vec()));
        }
    }
}

/// Runs inside the namespace: socket, options, bind.
fn open_bound(ifname: &str) -> Result<(OwnedFd, u32)> {
    let cname = CString::new(ifname).context("interface name contains NUL")?;
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(os_err(|| format!("if_nametoindex({ifname})")));
    }
    // Protocol 0: receive nothing until bound to the one interface below.
    // SAFETY: plain socket(2); checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_err(|| "socket(AF_PACKET, SOCK_RAW)".to_owned()));
    }
    // SAFETY: fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // Best effort: older kernels lack it; recv_one filters PACKET_OUTGOING anyway.
    // SAFETY: valid int option.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_IGNORE_OUTGOING,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        // A large receive buffer so bursts are not dropped before collect() runs.
        if libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&RCVBUF as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) != 0
        {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&RCVBUF as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    // SAFETY: zeroed sockaddr_ll, then filled in.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a valid sockaddr_ll of the given size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(os_err(|| {
            format!("bind AF_PACKET to {ifname} (ifindex {ifindex})")
        }));
    }
    Ok((fd, ifindex))
}
