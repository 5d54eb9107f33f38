//! The control socket: bound by the broker (mode, owner, group) or taken
//! from systemd's socket activation, and removed again at exit.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::activation;
use crate::cli::Args;
use anyhow::{bail, Context, Result};
use tracing::info;
/// Bind the control socket, replacing a stale socket file but never a live
/// broker's or a file that is not a socket.
pub fn bind_socket(path: &Path, mode: u32) -> Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                bail!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                );
            }
            match UnixStream::connect(path) {
                Ok(_) => bail!("another broker is already listening on {}", path.display()),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)
                        .with_context(|| format!("removing stale socket {}", path.display()))?;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("probing {}", path.display()));
                }
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", path.display()))?;
    Ok(listener)
}

/// Where the control socket comes from.
pub struct Control {
    /// The listening socket.
    pub listener: UnixListener,
    /// Its path, for logs.
    pub shown: String,
    /// The socket file to remove at exit: the one the broker bound, never
    /// one the service manager owns.
    pub remove_at_exit: Option<PathBuf>,
}

/// Use the socket passed by socket activation, or bind `--socket`.
pub fn control_socket(args: &Args, activation: activation::Activation) -> Result<Control> {
    use activation::Activation;
    match activation {
        Activation::Socket {
            listener,
            path,
            name,
        } => {
            if args.socket_mode.is_some() {
                bail!(
                    "--socket-mode does not apply to a socket passed by socket activation; set SocketMode= (and SocketGroup=) in the .socket unit instead"
                );
            }
            if args.socket_owner.is_some() || args.socket_group.is_some() {
                bail!(
                    "--socket-owner/--socket-group do not apply to a socket passed by socket activation; set SocketUser= and SocketGroup= in the .socket unit instead"
                );
            }
            if let Some(want) = &args.socket {
                if path.as_deref() != Some(want.as_path()) {
                    bail!(
                        "--socket {} was given, but the socket passed by socket activation is bound to {}; drop --socket or make the .socket unit's ListenStream= match",
                        want.display(),
                        path.as_deref()
                            .map_or("no path".to_owned(), |p| p.display().to_string())
                    );
                }
            }
            let shown = path
                .as_deref()
                .map_or("an unnamed socket".to_owned(), |p| p.display().to_string());
            info!(
                socket = %shown, fd_name = name.as_deref().unwrap_or(""),
                "using the listening socket passed by socket activation (fd 3)"
            );
            Ok(Control {
                listener,
                shown,
                remove_at_exit: None,
            })
        }
        other => {
            let Some(path) = &args.socket else {
                let why = match other {
                    Activation::ForOtherProcess { listen_pid } => format!(
                        " (LISTEN_FDS was set for pid {listen_pid}, not this process, pid {}, so it was ignored)",
                        std::process::id()
                    ),
                    _ => String::new(),
                };
                bail!(
                    "no control socket: pass --socket PATH, or start xsk-brokerd through systemd socket activation (xsk-broker.socket){why}"
                );
            };
            if let Activation::ForOtherProcess { listen_pid } = other {
                tracing::warn!(
                    "ignoring LISTEN_FDS: LISTEN_PID={listen_pid} names another process"
                );
            }
            let mode = args.socket_mode.unwrap_or(0o600);
            let listener = bind_socket(path, mode)?;
            let owner = chown_socket(path, args)?;
            Ok(Control {
                listener,
                shown: format!("{} (mode {mode:o}{owner})", path.display()),
                remove_at_exit: Some(path.clone()),
            })
        }
    }
}

/// Give the control socket the owner and group asked for; returns a note for
/// the start-up log.
fn chown_socket(path: &Path, args: &Args) -> Result<String> {
    let (uid, gid) = owner_and_group(
        args.socket_owner.as_deref(),
        args.socket_group.as_deref(),
        "--socket",
    )?;
    if uid.is_none() && gid.is_none() {
        return Ok(String::new());
    }
    if let Err(e) = nix::unistd::chown(path, uid, gid) {
        let _ = std::fs::remove_file(path);
        return Err(e)
            .with_context(|| format!("giving {} to the owner/group asked for", path.display()));
    }
    Ok(format!(
        ", owner {}, group {}",
        uid.map_or("unchanged".to_owned(), |u| u.to_string()),
        gid.map_or("unchanged".to_owned(), |g| g.to_string())
    ))
}

/// The uid and gid named by `owner` and `group` (numbers or names, resolved
/// now); `option` (e.g. `--socket`) names the options in errors.
pub fn owner_and_group(
    owner: Option<&str>,
    group: Option<&str>,
    option: &str,
) -> Result<(Option<nix::unistd::Uid>, Option<nix::unistd::Gid>)> {
    use nix::unistd::{Gid, Group, Uid, User};
    let uid = match owner {
        None => None,
        Some(u) => Some(match u.parse::<u32>() {
            Ok(n) => Uid::from_raw(n),
            Err(_) => {
                User::from_name(u)
                    .ok()
                    .flatten()
                    .with_context(|| format!("{option}-owner {u:?}: no such user"))?
                    .uid
            }
        }),
    };
    let gid = match group {
        None => None,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => Gid::from_raw(n),
            Err(_) => {
                Group::from_name(g)
                    .ok()
                    .flatten()
                    .with_context(|| format!("{option}-group {g:?}: no such group"))?
                    .gid
            }
        }),
    };
    Ok((uid, gid))
}

/// Removes the files it names when dropped (start-up failed part way).
pub struct RemoveOnDrop(pub Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}
