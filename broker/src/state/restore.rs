//! The state file and taking over from an earlier run of the broker: the
//! programs it attached (from their pins), the leases whose holders still
//! run (watched with a pidfd), and everything else released.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};
use xsk_broker_protocol::AttachMode;

use super::{Broker, Inner, Interface, LeaseId, LeaseRecord, Peer, Persist, Revocation};
use crate::kernel::{Kernel, Program};
use crate::persist::{self, InterfaceState, LeaseState, StateFile};
use crate::stats::Counters;

impl<K: Kernel> Broker<K> {
    /// Write the state file (if persisting). A failure is logged and
    /// returned: a grant that cannot be recorded is undone (a restart would
    /// not know it); after a release the stale entry is harmless (its holder
    /// is checked at start).
    pub(super) fn save(&self, inner: &Inner<K::Program>) -> Result<(), persist::StateError> {
        let Some(p) = &self.persist else {
            return Ok(());
        };
        let state = StateFile {
            version: persist::STATE_VERSION,
            interfaces: inner
                .interfaces
                .iter()
                .map(|(ifindex, i)| InterfaceState {
                    ifindex: *ifindex,
                    ifname: i.name.clone(),
                    mode: i.program.mode(),
                    program_id: i.program.attached_id(),
                    prog_pin: p.prog_pin(*ifindex, i.program.mode()),
                    map_pin: p.map_pin(*ifindex, i.program.mode()),
                })
                .collect(),
            leases: inner
                .leases
                .iter()
                .map(|(id, r)| LeaseState {
                    id: *id,
                    kind: r.kind,
                    ifindex: r.ifindex,
                    ifname: r.ifname.clone(),
                    queues: r.queues(),
                    pid: r.peer.pid,
                    start_time: r.start_time,
                    uid: r.peer.uid,
                    gid: r.peer.gid,
                    map_pin: r.map_pin.clone(),
                })
                .collect(),
        };
        p.state.save(&state).inspect_err(|e| {
            warn!("cannot save the broker state: {e}");
        })
    }

    /// At start, take over from an earlier run of the broker: reopen the
    /// programs it attached (from their pins), keep the queues of leases whose
    /// holder still runs (released when it exits, watched with a pidfd),
    /// release those of holders that died meanwhile, detach programs no lease
    /// uses any more and remove stale pins. Returns (leases kept, leases
    /// released). An unreadable or invalid state file is an error.
    pub fn restore(self: &Arc<Self>) -> Result<(usize, usize), persist::StateError> {
        let Some(p) = &self.persist else {
            return Ok((0, 0));
        };
        let state = p.state.load()?.unwrap_or_default();
        let mut inner = self.lock();
        let mut keep_pins: Vec<PathBuf> = Vec::new();
        for is in &state.interfaces {
            let same_name = self.kernel.name_of(is.ifindex).as_deref() == Some(is.ifname.as_str());
            let reopened = if same_name {
                self.kernel
                    .reopen(&is.ifname, is.ifindex, is.mode, &is.prog_pin, &is.map_pin)
                    .map_err(|e| e.to_string())
            } else {
                Err(format!(
                    "interface {} (index {}) is gone",
                    is.ifname, is.ifindex
                ))
            };
            match reopened {
                Ok(program) => {
                    info!(
                        ifname = %is.ifname, ifindex = is.ifindex, mode = %is.mode,
                        program_id = program.attached_id(),
                        "reopened the XSK program attached by an earlier run"
                    );
                    keep_pins.extend([is.prog_pin.clone(), is.map_pin.clone()]);
                    inner.interfaces.insert(
                        is.ifindex,
                        Interface {
                            name: is.ifname.clone(),
                            program,
                            queues: BTreeMap::new(),
                        },
                    );
                }
                Err(e) => warn!(
                    "forgetting {} from the state file, and its leases: {e}",
                    is.ifname
                ),
            }
        }
        let (mut kept, mut released) = (0, 0);
        let mut watch = Vec::new();
        for l in &state.leases {
            inner.next_lease = inner.next_lease.max(l.id + 1);
            let peer = Peer {
                pid: l.pid,
                uid: l.uid,
                gid: l.gid,
            };
            let Some(iface) = inner.interfaces.get_mut(&l.ifindex) else {
                release_restored(l, "its interface or program is gone", &self.counters);
                released += 1;
                continue;
            };
            let busy = l.queues.iter().any(|q| iface.queues.contains_key(q));
            match self.kernel.holder(l.pid, l.start_time).filter(|_| !busy) {
                Some(pidfd) => {
                    for q in &l.queues {
                        iface.queues.insert(*q, (l.id, peer));
                    }
                    inner.leases.insert(
                        l.id,
                        LeaseRecord {
                            ifname: l.ifname.clone(),
                            ifindex: l.ifindex,
                            peer,
                            granted: Instant::now(),
                            sockets: Vec::new(),
                            traffic: Vec::new(),
                            map_queues: l.queues.clone(),
                            kind: l.kind,
                            start_time: l.start_time,
                            map_pin: l.map_pin.clone(),
                            restored: true,
                            revocation: Arc::new(Revocation::default()),
                        },
                    );
                    info!(
                        event = "restore", pid = l.pid, uid = l.uid, gid = l.gid,
                        ifname = %l.ifname, queues = ?l.queues,
                        "kept a lease of an earlier run: its holder still runs"
                    );
                    kept += 1;
                    watch.push((l.id, pidfd));
                }
                None => {
                    for q in &l.queues {
                        if let Err(e) = iface.program.remove(*q) {
                            warn!("{e}");
                        }
                    }
                    for q in &l.queues {
                        inner.previous.insert((l.ifindex, *q), peer);
                    }
                    release_restored(
                        l,
                        "the holder exited while the broker was down",
                        &self.counters,
                    );
                    released += 1;
                }
            }
        }
        self.detach_all_unused(&mut inner);
        self.remove_stale_pins(p, &keep_pins);
        let _ = self.save(&inner);
        drop(inner);
        for (id, pidfd) in watch {
            let broker = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("xsk-holder".into())
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut fds = [nix::poll::PollFd::new(
                        pidfd.as_fd(),
                        nix::poll::PollFlags::POLLIN,
                    )];
                    while let Err(nix::errno::Errno::EINTR) =
                        nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE)
                    {
                    }
                    // Closed before the release is saved: once the state
                    // shows the lease gone, nothing of it is left open.
                    let _ = fds;
                    drop(pidfd);
                    broker.release_restored(id);
                });
            if let Err(e) = spawned {
                warn!("cannot watch the holder of lease {id}: {e}; its queues stay reserved");
            }
        }
        Ok((kept, released))
    }

    /// End a lease restored at start whose holder has exited.
    pub(super) fn release_restored(&self, id: LeaseId) {
        let mut inner = self.lock();
        let Some(rec) = inner.leases.remove(&id) else {
            return;
        };
        if let Some(iface) = inner.interfaces.get_mut(&rec.ifindex) {
            for q in &rec.map_queues {
                if iface.queues.get(q).map(|(i, _)| *i) == Some(id) {
                    iface.queues.remove(q);
                    if let Err(e) = iface.program.remove(*q) {
                        warn!("{e}");
                    }
                }
            }
        }
        remove_pin(rec.map_pin.as_deref());
        let p = rec.peer;
        info!(
            event = "release", pid = p.pid, uid = p.uid, gid = p.gid,
            ifname = %rec.ifname, queues = ?rec.map_queues,
            "released: the holder of a lease kept across a restart exited"
        );
        self.counters.release();
        self.detach_if_unused(&mut inner, rec.ifindex);
        let _ = self.save(&inner);
    }

    /// Remove pins in the pin directory that no kept interface uses. A
    /// program pinned there but missing from the state (the broker died
    /// between attaching and saving) is detached first if it is still
    /// attached: the pin proves it is the broker's. The confinement
    /// program's pins are not the lease table's and stay.
    fn remove_stale_pins(&self, p: &Persist, keep: &[PathBuf]) {
        let Ok(dir) = std::fs::read_dir(&p.pins) else {
            return;
        };
        let mut stale: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|path| !keep.contains(path) && !crate::confine::is_pin(path))
            .collect();
        stale.sort();
        for path in &stale {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut parts = name.splitn(3, '-');
            if let (Some(ifindex), Some(mode), Some("prog")) =
                (parts.next(), parts.next(), parts.next())
            {
                let mode = match mode {
                    "native" => Some(AttachMode::Native),
                    "skb" => Some(AttachMode::Skb),
                    _ => None,
                };
                if let (Ok(ifindex), Some(mode)) = (ifindex.parse::<u32>(), mode) {
                    let map = p.map_pin(ifindex, mode);
                    if let Ok(prog) = self.kernel.reopen(&name, ifindex, mode, path, &map) {
                        match prog.detach() {
                            Ok(()) => info!(ifindex, "detached an XSK program no lease uses"),
                            Err(e) => warn!("{e}"),
                        }
                    }
                }
            }
        }
        for path in stale {
            match std::fs::remove_file(&path) {
                Ok(()) => info!(pin = %path.display(), "removed a stale pin"),
                Err(e) => warn!("cannot remove the stale pin {}: {e}", path.display()),
            }
        }
    }
}

/// End a lease of an earlier run at start (its map entries are already gone
/// or are removed by the caller): remove its map pin, log and count it.
fn release_restored(l: &LeaseState, why: &str, counters: &Counters) {
    remove_pin(l.map_pin.as_deref());
    info!(
        event = "release", pid = l.pid, uid = l.uid, gid = l.gid,
        ifname = %l.ifname, queues = ?l.queues,
        "released: {why}"
    );
    counters.release();
}

/// Remove a map pin, if there is one (absent is fine).
pub(super) fn remove_pin(pin: Option<&Path>) {
    if let Some(pin) = pin {
        match std::fs::remove_file(pin) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!("cannot remove the map pin {}: {e}", pin.display()),
        }
    }
}
