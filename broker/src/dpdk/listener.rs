//! The DPDK endpoint's listening socket (`SOCK_SEQPACKET`): bound with a
//! mode, owner and group, a stale socket file replaced.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

/// Bind the DPDK socket (`SOCK_SEQPACKET`) at `path` with `mode`, owner and
/// group, replacing a stale socket file but never a live listener or a file
/// that is not a socket.
pub fn bind_dpdk_socket(
    path: &Path,
    mode: u32,
    owner: Option<&str>,
    group: Option<&str>,
) -> anyhow::Result<OwnedFd> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                bail!(
                    "--dpdk-socket {} exists and is not a socket; refusing to replace it",
                    path.display()
                );
            }
            let probe = seqpacket()?;
            let addr = UnixAddr::new(path).context("--dpdk-socket: socket address")?;
            match socket::connect(probe.as_raw_fd(), &addr) {
                Ok(()) => bail!(
                    "--dpdk-socket {}: another process is listening there",
                    path.display()
                ),
                Err(nix::errno::Errno::ECONNREFUSED) | Err(nix::errno::Errno::EPROTOTYPE) => {
                    std::fs::remove_file(path).with_context(|| {
                        format!("--dpdk-socket: removing stale socket {}", path.display())
                    })?;
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("--dpdk-socket: probing {}", path.display()))
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("--dpdk-socket: inspecting {}", path.display()))
        }
    }
    let fd = seqpacket()?;
    let addr = UnixAddr::new(path).context("--dpdk-socket: socket address")?;
    socket::bind(fd.as_raw_fd(), &addr)
        .with_context(|| format!("--dpdk-socket: binding {}", path.display()))?;
    let cleanup = |e: anyhow::Error| {
        let _ = std::fs::remove_file(path);
        e
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("--dpdk-socket: setting mode {mode:o} on {}", path.display()))
        .map_err(cleanup)?;
    chown(path, owner, group).map_err(cleanup)?;
    socket::listen(
        &fd,
        socket::Backlog::new(128).unwrap_or(socket::Backlog::MAXCONN),
    )
    .with_context(|| format!("--dpdk-socket: listening on {}", path.display()))
    .map_err(cleanup)?;
    Ok(fd)
}

fn seqpacket() -> anyhow::Result<OwnedFd> {
    socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("--dpdk-socket: creating a SOCK_SEQPACKET Unix socket")
}

fn chown(path: &Path, owner: Option<&str>, group: Option<&str>) -> anyhow::Result<()> {
    let (uid, gid) = crate::control::owner_and_group(owner, group, "--dpdk-socket")?;
    if uid.is_some() || gid.is_some() {
        nix::unistd::chown(path, uid, gid).with_context(|| {
            format!(
                "--dpdk-socket: giving {} to the owner/group asked for",
                path.display()
            )
        })?;
    }
    Ok(())
}
