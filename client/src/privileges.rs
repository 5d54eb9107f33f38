//! What the calling process may do: for sandboxes that want to prove they run
//! without privileges, and for tools that report it.

use std::io;

use serde::Serialize;

/// The process's credentials and whether it could create AF_XDP sockets itself.
#[derive(Debug, Clone, Serialize)]
pub struct PrivilegeReport {
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Effective capability set, as in `/proc/self/status` (`CapEff`).
    pub cap_eff: u64,
    /// `None` if `socket(AF_XDP)` succeeded, else the errno name (e.g. `EPERM`).
    pub af_xdp_socket_error: Option<String>,
}

impl PrivilegeReport {
    /// Inspect the calling process.
    pub fn current() -> io::Result<Self> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        let cap_eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no CapEff line"))?;
        Ok(PrivilegeReport {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            cap_eff,
            af_xdp_socket_error: probe_af_xdp().err(),
        })
    }

    /// True when the process has no effective capabilities and cannot create
    /// AF_XDP sockets of its own.
    pub fn is_unprivileged(&self) -> bool {
        self.cap_eff == 0 && self.af_xdp_socket_error.is_some()
    }
}

/// Try to create (and at once close) an AF_XDP socket.
fn probe_af_xdp() -> Result<(), String> {
    // SAFETY: plain socket(2); the fd, if any, is closed right below.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(nix::errno::Errno::last().to_string());
    }
    // SAFETY: fd is ours and open.
    unsafe { libc::close(fd) };
    Ok(())
}
