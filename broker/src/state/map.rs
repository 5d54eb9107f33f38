//! The map flow's grant (`open_map`, and the DPDK endpoint's): the same
//! checks and reservation as sockets ([`super::grant`]), then the XSKMAP
//! fd, pinned for the peer if asked.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use xsk_broker_protocol::{MapOpened, OpenMapRequest};

use super::grant::{Bound, Prepared};
use super::{Broker, Lease, LeaseId, MapGrant, Peer, Revocation};
use crate::error::GrantError;
use crate::kernel::{Kernel, Program};

impl<K: Kernel> Broker<K> {
    /// Grant a map lease (the map-path flow): check and reserve the queues
    /// exactly as [`Broker::open`] does, attach the program if needed, and
    /// return a duplicate of the XSKMAP fd, pinned (owned by the peer's uid,
    /// mode 0600) if asked. The client inserts its own sockets; the broker
    /// clears those entries when the lease ends. On failure nothing is left
    /// behind (no pin, reservation or program of this request).
    pub fn open_map(
        self: &Arc<Self>,
        mreq: &OpenMapRequest,
        peer: Peer,
    ) -> Result<(Lease, MapOpened, OwnedFd), GrantError> {
        self.open_map_with(mreq, peer, Bound::Refuse)
    }

    /// [`Broker::open_map`] for a client that binds its sockets *before* it
    /// asks for the map (DPDK's af_xdp driver, see [`crate::dpdk`]): a
    /// queue with an AF_XDP socket bound is granted if no lease holds it.
    /// Every other check is the same. The map is the interface's either way
    /// (its holder can overwrite any queue's entry), so the bound check
    /// protected little in the map flow.
    pub fn open_map_already_bound(
        self: &Arc<Self>,
        mreq: &OpenMapRequest,
        peer: Peer,
    ) -> Result<(Lease, MapOpened, OwnedFd), GrantError> {
        self.open_map_with(mreq, peer, Bound::Allow)
    }

    fn open_map_with(
        self: &Arc<Self>,
        mreq: &OpenMapRequest,
        peer: Peer,
        bound: Bound,
    ) -> Result<(Lease, MapOpened, OwnedFd), GrantError> {
        mreq.validate()?;
        let req = mreq.as_open();
        if mreq.pin && self.bpffs_dir.is_none() {
            return Err(GrantError::NoPinDir);
        }
        let Prepared {
            mut inner,
            id,
            ifindex,
            newly_attached,
            _turn,
        } = self.prepare_grant(&req, peer, bound)?;
        let iface = inner
            .interfaces
            .get_mut(&ifindex)
            .expect("present: prepare_grant attached it or found it");
        let granted = (|| {
            let fd = iface
                .program
                .map_fd_dup()
                .map_err(|source| GrantError::MapFd {
                    ifname: req.ifname.clone(),
                    source,
                })?;
            let pin = match (&self.bpffs_dir, mreq.pin) {
                (Some(dir), true) => Some(self.pin_map(&fd, dir, &req.ifname, id, peer)?),
                _ => None,
            };
            Ok((fd, pin))
        })();
        let (fd, pin) = match granted {
            Ok(g) => g,
            Err(e) => {
                if newly_attached {
                    self.detach_if_unused(&mut inner, ifindex);
                }
                return Err(e);
            }
        };
        let queues: Vec<u32> = req.queue_ids().collect();
        for q in &queues {
            iface.queues.insert(*q, (id, peer));
        }
        let opened = MapOpened {
            ifname: req.ifname.clone(),
            ifindex,
            mode: iface.program.mode(),
            program_id: iface.program.attached_id(),
            start_queue: req.start_queue,
            queues: req.queues,
            pin_path: pin.as_ref().map(|p| p.display().to_string()),
        };
        let lease = Lease {
            id,
            ifname: req.ifname.clone(),
            ifindex,
            sockets: Vec::new(),
            map: Some(MapGrant { queues, pin }),
            revocation: Arc::new(Revocation::default()),
            owner: None,
        };
        let lease = self.record_grant(&mut inner, lease, peer)?;
        Ok((lease, opened, fd))
    }

    /// Pin `fd` as `DIR/IFNAME-lease-ID`, owned by the peer's uid and gid
    /// with mode 0600. On failure no pin is left.
    fn pin_map(
        &self,
        fd: &OwnedFd,
        dir: &Path,
        ifname: &str,
        id: LeaseId,
        peer: Peer,
    ) -> Result<PathBuf, GrantError> {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(format!("{ifname}-lease-{id}"));
        let fail = |what: &str, detail: String| GrantError::PinMap {
            what: what.to_owned(),
            path: path.clone(),
            detail,
        };
        // A stale pin of the same name (left by a killed broker) is replaced.
        let _ = std::fs::remove_file(&path);
        self.kernel
            .pin(fd.as_fd(), &path)
            .map_err(|e| fail("create", e.to_string()))?;
        let owned = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| fail("chmod 0600", e.to_string()))
            .and_then(|()| {
                std::os::unix::fs::chown(&path, Some(peer.uid), Some(peer.gid)).map_err(|e| {
                    fail(
                        &format!("chown to uid {} gid {}", peer.uid, peer.gid),
                        format!("{e} (the broker needs CAP_CHOWN for --bpffs-dir)"),
                    )
                })
            });
        if let Err(e) = owned {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(path)
    }
}
