//! What `status` and the metrics read: the lease table copied under the
//! lock, the sockets' kernel statistics and ring positions read after it is
//! let go; and the once-a-second tick that maps new rings.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use xsk_broker_protocol::{AttachMode, Holder, LeaseStatus, SocketStatus};

use super::{Broker, LeasedSocket};
use crate::kernel::{Kernel, Program};
use crate::stats::{Snapshot, SnapshotSource};
use crate::traffic::SocketTraffic;

impl<K: Kernel> Broker<K> {
    /// Every lease, oldest first, with each socket's kernel statistics read
    /// on the broker's own copy of its fd; only those of uid `only_uid` when
    /// given (a peer that may not see the other tenants).
    pub fn lease_status(&self, only_uid: Option<u32>) -> Vec<LeaseStatus> {
        // The table is copied under the lock; the sockets' statistics are
        // read after it is let go, so a status never holds up a grant.
        let snapshot: Vec<(LeaseStatus, Vec<LeasedSocket>, Vec<Arc<SocketTraffic>>)> = {
            let inner = self.lock();
            inner
                .leases
                .iter()
                .filter(|(_, rec)| only_uid.is_none_or(|uid| rec.peer.uid == uid))
                .map(|(id, rec)| {
                    let program = inner.interfaces.get(&rec.ifindex).map(|i| &i.program);
                    let status = LeaseStatus {
                        id: *id,
                        ifname: rec.ifname.clone(),
                        ifindex: rec.ifindex,
                        queues: rec.queues(),
                        holder: Holder {
                            pid: rec.peer.pid,
                            uid: rec.peer.uid,
                            gid: rec.peer.gid,
                        },
                        mode: program.map_or(AttachMode::Skb, |p| p.mode()),
                        program_id: program.map_or(0, |p| p.attached_id()),
                        age_ms: u64::try_from(rec.granted.elapsed().as_millis())
                            .unwrap_or(u64::MAX),
                        sockets: Vec::new(),
                    };
                    (status, rec.sockets.clone(), rec.traffic.clone())
                })
                .collect()
        };
        snapshot
            .into_iter()
            .map(|(mut status, sockets, traffic)| {
                status.sockets = sockets
                    .iter()
                    .enumerate()
                    .map(|(i, (q, fd))| {
                        let (statistics, error) = match self.kernel.statistics(fd.as_fd()) {
                            Ok(st) => (Some(st), None),
                            Err(e) => (None, Some(format!("getsockopt(XDP_STATISTICS): {e}"))),
                        };
                        let moved = traffic.get(i).map(|t| t.read()).unwrap_or_default();
                        SocketStatus {
                            queue_id: *q,
                            statistics,
                            error,
                            rx_packets: moved.rx_packets,
                            tx_packets: moved.tx_packets,
                            traffic_error: moved.error,
                        }
                    })
                    .collect();
                status
            })
            .collect()
    }

    /// Map the rings leased sockets have created since the last call and
    /// read every leased socket's ring positions, so that the totals miss no
    /// wrap of the kernel's `u32` positions between two status requests
    /// (called every second by the watcher thread; status only reads the
    /// rings mapped here). Done without the broker's lock.
    pub fn sample_traffic(&self) {
        let sockets: Vec<(Arc<OwnedFd>, Arc<SocketTraffic>)> = {
            let inner = self.lock();
            inner
                .leases
                .values()
                .flat_map(|rec| {
                    rec.sockets
                        .iter()
                        .zip(&rec.traffic)
                        .map(|((_, fd), t)| (Arc::clone(fd), Arc::clone(t)))
                })
                .collect()
        };
        for (fd, traffic) in sockets {
            traffic.sample(&self.kernel, fd.as_fd());
        }
    }

    /// Number of interfaces with the program attached and queues leased,
    /// for logs and tests.
    pub fn summary(&self) -> (usize, usize) {
        let inner = self.lock();
        let queues = inner.interfaces.values().map(|i| i.queues.len()).sum();
        (inner.interfaces.len(), queues)
    }
}

impl<K: Kernel> SnapshotSource for Broker<K> {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            uptime: self.counters.uptime(),
            grants: self.counters.grants(),
            releases: self.counters.releases(),
            refusals: self.counters.refusals(),
            leases: self.lease_status(None),
            confinement: self.kernel.confinement_level(),
        }
    }
}
