//! Ending leases: a lease's map entries and queues, its sockets confined to
//! `lo`, the program detached once no lease uses the interface; and the
//! leases of interfaces that disappear.

use std::os::fd::AsFd;

use tracing::{info, warn};

use super::{Broker, Inner, Interface, Lease, LeaseId};
use crate::kernel::{Kernel, Program};

impl<K: Kernel> Broker<K> {
    /// What dropping a granted [`Lease`] does: clear its map entries, close
    /// the broker's copies of its sockets (confined to `lo` first, so a
    /// holder that kept an unbound one cannot bind it to the interface once
    /// the queue is someone else's), remember its holder per queue, and
    /// detach the program if no lease uses the interface any more.
    pub(super) fn end_lease(&self, lease: &mut Lease) {
        for (q, fd) in &lease.sockets {
            if let Err(e) = self.kernel.retire_socket(fd.as_fd()) {
                warn!(
                    "cannot confine the released socket of queue {q} of {} to lo: {e}",
                    lease.ifname
                );
            }
        }
        let mut inner = self.lock();
        if let Some(rec) = inner.leases.remove(&lease.id) {
            for q in lease.queues() {
                inner.previous.insert((lease.ifindex, q), rec.peer);
            }
        }
        if let Some(iface) = inner.interfaces.get_mut(&lease.ifindex) {
            for q in &lease.queues() {
                if iface.queues.get(q).map(|(id, _)| *id) == Some(lease.id) {
                    iface.queues.remove(q);
                    if let Err(e) = iface.program.remove(*q) {
                        warn!("{e}");
                    }
                }
            }
        }
        if let Some(pin) = lease.map.as_ref().and_then(|m| m.pin.as_ref()) {
            if let Err(e) = std::fs::remove_file(pin) {
                warn!("cannot remove the map pin {}: {e}", pin.display());
            }
        }
        lease.sockets.clear();
        let ifindex = lease.ifindex;
        let unused = inner
            .interfaces
            .get(&ifindex)
            .is_some_and(|i| i.queues.is_empty());
        let _ = self.save(&inner);
        drop(inner);
        if unused {
            self.detach_unused(ifindex);
        }
    }

    /// Detach the program of an interface no lease uses any more, in the
    /// interface's turn (so no grant attaches meanwhile) but without the
    /// broker's lock (so grants on other interfaces go on).
    fn detach_unused(&self, ifindex: u32) {
        let _turn = self.turn(ifindex);
        let taken = {
            let mut inner = self.lock();
            let taken = self.take_if_unused(&mut inner, ifindex);
            if taken.is_some() {
                let _ = self.save(&inner);
            }
            taken
        };
        if let Some(iface) = taken {
            detach(iface, ifindex);
        }
    }

    /// Detach (under the lock) the program of `ifindex` if no lease uses it.
    pub(super) fn detach_if_unused(&self, inner: &mut Inner<K::Program>, ifindex: u32) {
        if let Some(iface) = self.take_if_unused(inner, ifindex) {
            detach(iface, ifindex);
        }
    }

    /// [`Broker::detach_if_unused`] for every interface no lease uses.
    pub(super) fn detach_all_unused(&self, inner: &mut Inner<K::Program>) {
        let unused: Vec<u32> = inner
            .interfaces
            .iter()
            .filter(|(_, i)| i.queues.is_empty())
            .map(|(k, _)| *k)
            .collect();
        for ifindex in unused {
            self.detach_if_unused(inner, ifindex);
        }
    }

    /// Take an interface no lease uses out of the table, and its pins away;
    /// the caller detaches its program ([`detach`]).
    fn take_if_unused(
        &self,
        inner: &mut Inner<K::Program>,
        ifindex: u32,
    ) -> Option<Interface<K::Program>> {
        if !inner
            .interfaces
            .get(&ifindex)
            .is_some_and(|i| i.queues.is_empty())
        {
            return None;
        }
        let iface = inner.interfaces.remove(&ifindex)?;
        if let Some(p) = &self.persist {
            p.unpin(ifindex, iface.program.mode());
        }
        Some(iface)
    }

    /// End every lease on an interface that no longer exists (deleted, or
    /// moved to another network namespace): the kernel has already detached
    /// its XDP program and unbound its sockets. Their state is cleared, each
    /// holder's connection is woken to be told and closed, and the number of
    /// leases ended is returned. Called every second by the watcher thread.
    pub fn reap_vanished_interfaces(&self) -> usize {
        // The interfaces are listed (netlink) without the broker's lock; only
        // those known before the listing can be missing from it.
        let known: Vec<u32> = self.lock().interfaces.keys().copied().collect();
        if known.is_empty() {
            return 0;
        }
        let present = match self.kernel.interfaces() {
            Ok(p) => p,
            Err(e) => {
                warn!("cannot list the network interfaces: {e}");
                return 0;
            }
        };
        let gone: Vec<u32> = known
            .into_iter()
            .filter(|ifindex| !present.contains(ifindex))
            .collect();
        if gone.is_empty() {
            return 0;
        }
        let mut inner = self.lock();
        let mut ended = 0;
        for ifindex in gone {
            let Some(iface) = inner.interfaces.remove(&ifindex) else {
                continue;
            };
            let ids: Vec<LeaseId> = inner
                .leases
                .iter()
                .filter(|(_, r)| r.ifindex == ifindex)
                .map(|(id, _)| *id)
                .collect();
            warn!(
                ifname = %iface.name, ifindex, leases = ids.len(),
                "interface {} (ifindex {ifindex}) disappeared; ending its {} lease(s)",
                iface.name, ids.len()
            );
            for id in ids {
                if let Some(rec) = inner.leases.remove(&id) {
                    if rec.restored {
                        // No connection thread will release it: its pin
                        // goes now.
                        super::restore::remove_pin(rec.map_pin.as_deref());
                    }
                    rec.revocation.revoke(format!(
                        "interface {} (ifindex {ifindex}) disappeared from the broker's network \
                         namespace; the lease on queues {:?} has ended",
                        iface.name,
                        rec.queues()
                    ));
                    ended += 1;
                }
            }
            inner.previous.retain(|(i, _), _| *i != ifindex);
            // The program went with the device; close the broker's handles
            // without trying to detach.
            if let Some(p) = &self.persist {
                p.unpin(ifindex, iface.program.mode());
            }
            drop(iface);
        }
        let _ = self.save(&inner);
        ended
    }
}

/// Detach the program of an interface taken out of the table.
fn detach<P: Program>(iface: Interface<P>, ifindex: u32) {
    let name = iface.name;
    match iface.program.detach() {
        Ok(()) => info!(ifname = %name, ifindex, "detached the XSK program (no lease uses it)"),
        Err(e) => warn!("{e}; the program may still be attached"),
    }
}
