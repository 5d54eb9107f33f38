//! The vhost-user-net device: one queue pair per AF_XDP socket, each served
//! by its own worker thread (the library's epoll loop), which polls the
//! pair's two kick eventfds and the socket.
//!
//! Each frame is copied once: guest buffer → umem on transmit, umem → guest
//! buffer on receive. The 12-byte virtio-net header
//! (`virtio_net_hdr_mrg_rxbuf`) is skipped on transmit and written (all zero
//! but `num_buffers = 1`) on receive.
//!
//! No checksum or segmentation offload is offered: AF_XDP in copy mode hands
//! the kernel complete frames and has no way to say "fill in the checksum"
//! or "segment this" (tx metadata checksum offload exists only in zero-copy
//! mode on some drivers), so a guest must send finished frames no larger
//! than the MTU, and receives frames as they were on the wire.

use std::io;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::QueueT;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use xsk_client::XskSocket;

use crate::guest;

/// The virtio-net header with `VIRTIO_NET_F_MRG_RXBUF` (and with
/// `VIRTIO_F_VERSION_1`, which has the same layout).
pub const HDR_LEN: usize = 12;
/// Largest virtqueue the device accepts (QEMU's and the virtio spec's
/// maximum for a split ring is 1024; QEMU 10 asks for 1024 with
/// vhost-user, QEMU 7.2 for 256).
pub const QUEUE_SIZE: usize = 1024;
/// The device's MTU.
pub const MTU: u16 = 1500;
/// Frames moved per batch.
const BATCH: usize = 64;
/// Largest frame this device handles (a umem frame).
const MAX_FRAME: usize = 2048;

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

/// One queue pair's AF_XDP side.
struct Pair {
    sock: XskSocket,
    /// Per-worker gather buffers for a guest frame scattered over several
    /// descriptors (allocated once).
    scratch: Box<[[u8; MAX_FRAME]]>,
    /// Frames dropped: guest buffers too small, chains malformed or frames
    /// too long.
    dropped: u64,
    /// The epoll of the worker serving this pair (the current VMM
    /// connection's daemon), where the socket is registered; weak, since
    /// the handler holds the backend.
    poller: Weak<VringEpollHandler<NetBackend>>,
    /// Whether the socket's readable events wake the worker. Off while the
    /// guest has no receive buffer (frames wait in the AF_XDP rx ring, the
    /// kernel drops what does not fit) until its next rx kick.
    rx_armed: bool,
}

/// A worker's exit event: the library signals the notifier when the daemon
/// is dropped, the worker sees it on the consumer and ends.
type ExitEvent = (EventConsumer, EventNotifier);

struct Inner {
    pairs: Vec<Mutex<Pair>>,
    mac: [u8; 6],
    event_idx: AtomicBool,
    mem: Mutex<Option<Mem>>,
    /// The next daemon's exit events, made by [`NetBackend::prepare_exit_events`]
    /// and handed out by `exit_event`.
    exit_events: Mutex<Vec<ExitEvent>>,
}

/// The vhost-user-net backend (cheap to clone: it is shared with the
/// library's worker threads).
#[derive(Clone)]
pub struct NetBackend(Arc<Inner>);

impl NetBackend {
    /// A device with one queue pair per socket, in queue order.
    pub fn new(socks: Vec<XskSocket>, mac: [u8; 6]) -> NetBackend {
        let pairs = socks
            .into_iter()
            .map(|sock| {
                Mutex::new(Pair {
                    sock,
                    scratch: vec![[0u8; MAX_FRAME]; BATCH].into_boxed_slice(),
                    dropped: 0,
                    poller: Weak::new(),
                    rx_armed: false,
                })
            })
            .collect();
        NetBackend(Arc::new(Inner {
            pairs,
            mac,
            event_idx: AtomicBool::new(false),
            mem: Mutex::new(None),
            exit_events: Mutex::new(Vec::new()),
        }))
    }

    /// Make the exit events of the next daemon's workers, one per queue
    /// pair, before the daemon is made: a worker without one could never be
    /// told to end, and dropping its daemon would wait for it for ever, so
    /// failing to make them (e.g. out of fds) must fail the connection
    /// before any worker exists.
    pub fn prepare_exit_events(&self) -> io::Result<()> {
        let events = (0..self.pairs())
            .map(|_| new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC))
            .collect::<io::Result<Vec<_>>>()?;
        *self.0.exit_events.lock().unwrap() = events;
        Ok(())
    }

    /// Queue pairs.
    pub fn pairs(&self) -> usize {
        self.0.pairs.len()
    }

    /// The epoll event id of the sockets (one per worker thread's epoll).
    pub fn socket_event(&self) -> u64 {
        2 * self.pairs() as u64 + 1
    }

    /// Register the socket of queue pair `i` with `handler`, the epoll of
    /// the worker that serves it on this VMM connection: readable and
    /// writable, edge-triggered. The worker later drops and restores the
    /// readable interest itself (see [`Pair::set_rx_interest`]).
    pub fn attach(&self, i: usize, handler: &Arc<VringEpollHandler<NetBackend>>) -> io::Result<()> {
        let pair = self.0.pairs.get(i).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("no queue pair {i}"))
        })?;
        let mut pair = pair.lock().unwrap();
        let fd = pair.sock.as_raw_fd();
        handler.register_listener(fd, interest(true), self.socket_event())?;
        pair.poller = Arc::downgrade(handler);
        pair.rx_armed = true;
        Ok(())
    }

    /// Counters per pair: (rx_packets, tx_packets, dropped); zeros for a
    /// pair whose worker is busy.
    pub fn counters(&self) -> Vec<(u64, u64, u64)> {
        self.0
            .pairs
            .iter()
            .map(|p| match p.try_lock() {
                Ok(p) => {
                    let c = p.sock.counters();
                    (c.rx_packets, c.tx_packets, p.dropped)
                }
                Err(_) => (0, 0, 0),
            })
            .collect()
    }
}

/// The socket's epoll interest: writable always (transmits that waited for
/// ring space or free frames), readable when `rx`.
fn interest(rx: bool) -> EventSet {
    let ev = EventSet::OUT | EventSet::EDGE_TRIGGERED;
    if rx {
        ev | EventSet::IN
    } else {
        ev
    }
}

impl Pair {
    /// Start or stop being woken by the socket's readable events, by
    /// re-registering it with the worker's epoll (the library offers add
    /// and delete only). Registering checks the socket's state at once, so
    /// re-arming brings one wake-up if frames wait; the caller drains the
    /// ring anyway. A no-op once the daemon is gone.
    fn set_rx_interest(&mut self, rx: bool, event: u64) -> io::Result<()> {
        if self.rx_armed == rx {
            return Ok(());
        }
        let Some(h) = self.poller.upgrade() else {
            return Ok(());
        };
        let fd: RawFd = self.sock.as_raw_fd();
        h.unregister_listener(fd, interest(self.rx_armed), event)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "epoll: dropping the AF_XDP socket of queue {}: {e}",
                        self.sock.queue_id()
                    ),
                )
            })?;
        h.register_listener(fd, interest(rx), event).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "epoll: adding the AF_XDP socket of queue {}: {e}",
                    self.sock.queue_id()
                ),
            )
        })?;
        self.rx_armed = rx;
        Ok(())
    }
}

fn bit(b: u32) -> u64 {
    1u64 << b
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2 * self.pairs()
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        let mut f = bit(VIRTIO_F_VERSION_1)
            | bit(VIRTIO_NET_F_MAC)
            | bit(VIRTIO_NET_F_MTU)
            | bit(VIRTIO_NET_F_STATUS)
            | bit(VIRTIO_NET_F_MRG_RXBUF)
            | bit(VIRTIO_RING_F_EVENT_IDX)
            | bit(VIRTIO_RING_F_INDIRECT_DESC)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.pairs() > 1 {
            f |= bit(VIRTIO_NET_F_MQ);
        }
        f
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // The vhost crate adds REPLY_ACK itself; proxy.rs answers the early
        // SET_VRING_ENABLE that asks for a reply (QEMU 10).
        VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&self, enabled: bool) {
        self.0.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // struct virtio_net_config: mac[6], status, max_virtqueue_pairs, mtu.
        let mut c = Vec::with_capacity(12);
        c.extend_from_slice(&self.0.mac);
        c.extend_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c.extend_from_slice(&(self.pairs() as u16).to_le_bytes());
        c.extend_from_slice(&MTU.to_le_bytes());
        let start = (offset as usize).min(c.len());
        let end = (offset as usize).saturating_add(size as usize).min(c.len());
        c[start..end].to_vec()
    }

    fn update_memory(&self, mem: Mem) -> io::Result<()> {
        *self.0.mem.lock().unwrap() = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.pairs()).map(|i| 0b11u64 << (2 * i)).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // One of those made for this daemon (the library asks once per
        // worker, as it makes it); dropping the daemon signals it and joins
        // the worker.
        self.0.exit_events.lock().unwrap().pop()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        let Some(mem) = self.0.mem.lock().unwrap().clone() else {
            return Ok(());
        };
        let Some(pair) = self.0.pairs.get(thread_id) else {
            return Ok(());
        };
        // The library hands each worker its own rings (queues_per_thread:
        // pair i's rx and tx), and numbers their kick events 0 and 1.
        let (Some(rxq), Some(txq)) = (vrings.first(), vrings.get(1)) else {
            return Ok(());
        };
        let mut pair = pair.lock().unwrap();
        let ev = u64::from(device_event);

        let is_sock = ev == self.socket_event();
        if is_sock || ev % 2 == 1 {
            transmit(&mut pair, txq, &mem)?;
        }
        if ev % 2 == 0 {
            // An rx kick (or the ring just enabled): the guest posted
            // buffers. Hear the socket again, then drain what waited in the
            // rx ring meanwhile (it brought no edge while unheard).
            pair.set_rx_interest(true, self.socket_event())?;
            receive(&mut pair, rxq, &mem)?;
        } else if is_sock && pair.rx_armed {
            // The socket woke us (it may be writable only, after we stopped
            // hearing it). Out of guest buffers: stop hearing the socket's
            // readable events until the guest kicks the rx queue (it will:
            // `receive` enabled its notifications before giving up).
            if receive(&mut pair, rxq, &mem)? == Rx::NoBuffers {
                pair.set_rx_interest(false, self.socket_event())?;
            }
        }
        Ok(())
    }
}

fn qerr(e: virtio_queue::Error) -> io::Error {
    io::Error::other(format!("virtqueue: {e}"))
}

/// Frames available in the guest's avail ring.
fn available(q: &virtio_queue::Queue, mem: &GuestMemoryMmap) -> io::Result<u16> {
    let idx = q.avail_idx(mem, Ordering::Acquire).map_err(qerr)?;
    Ok((idx - Wrapping(q.next_avail())).0)
}

/// How many descriptors (at most [`BATCH`]) the guest has made available,
/// with notifications off while they are processed; `None` when there are
/// none, after asking the guest for a kick when it adds some (and checking
/// once more, so one added meanwhile is not missed).
fn next_batch(q: &mut virtio_queue::Queue, mem: &GuestMemoryMmap) -> io::Result<Option<usize>> {
    loop {
        let n = available(q, mem)?;
        if n == 0 {
            if q.enable_notification(mem).map_err(qerr)? {
                continue;
            }
            return Ok(None);
        }
        q.disable_notification(mem).map_err(qerr)?;
        return Ok(Some(usize::from(n).min(BATCH)));
    }
}

fn usable(vring: &VringRwLock) -> bool {
    let st = vring.get_ref();
    st.is_enabled() && st.get_queue().ready()
}

/// Why [`receive`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rx {
    /// The rx queue is not set up or not enabled.
    Unusable,
    /// The AF_XDP rx ring is empty.
    Drained,
    /// The guest has no receive buffer left (its notifications are on).
    NoBuffers,
}

/// Move frames from the AF_XDP rx ring into the guest's receive buffers,
/// as many as both sides have, signalling the guest as event-idx says.
fn receive(pair: &mut Pair, vring: &VringRwLock, atomic: &Mem) -> io::Result<Rx> {
    if !usable(vring) {
        return Ok(Rx::Unusable);
    }
    let mem = atomic.memory();
    let mut st = vring.get_mut();
    loop {
        let q = st.get_queue_mut();
        // Out of guest buffers: frames wait in the AF_XDP rx ring meanwhile.
        let Some(max) = next_batch(q, &mem)? else {
            return Ok(Rx::NoBuffers);
        };
        let mut dropped = 0u64;
        let mut err = None;
        let got = pair.sock.receive(max, |frame| {
            let Some(chain) = q.pop_descriptor_chain(&*mem) else {
                dropped += 1;
                return;
            };
            let head = chain.head_index();
            let mut hdr = [0u8; HDR_LEN];
            hdr[10..12].copy_from_slice(&1u16.to_le_bytes());
            let parts: [&[u8]; 2] = [&hdr, frame];
            let (mut part, mut off) = (0usize, 0usize);
            let mut written = 0u32;
            for d in chain {
                if !d.is_write_only() {
                    continue;
                }
                let mut at = 0usize;
                let cap = d.len() as usize;
                while at < cap && part < 2 {
                    let src = &parts[part][off..];
                    let n = src.len().min(cap - at);
                    let Some(to) = d.addr().checked_add(at as u64) else {
                        part = 3;
                        break;
                    };
                    if mem.write_slice(&src[..n], to).is_err() {
                        part = 3;
                        break;
                    }
                    at += n;
                    off += n;
                    written += n as u32;
                    if off == parts[part].len() {
                        part += 1;
                        off = 0;
                    }
                }
                if part >= 2 {
                    break;
                }
            }
            if part != 2 {
                // Buffer too small or outside guest memory: drop the frame.
                dropped += 1;
                written = 0;
            }
            if let Err(e) = q.add_used(&*mem, head, written) {
                err = Some(e);
            }
        });
        pair.dropped += dropped;
        if let Some(e) = err {
            return Err(qerr(e));
        }
        if st.get_queue_mut().needs_notification(&*mem).map_err(qerr)? {
            st.signal_used_queue()?;
        }
        if got < max {
            // The AF_XDP rx ring is empty: the socket's next readable edge
            // brings us back.
            return Ok(Rx::Drained);
        }
    }
}

/// Where one guest tx frame is.
#[derive(Clone, Copy)]
enum Src {
    /// Malformed or too long: completed with length 0, dropped.
    Bad,
    /// In one descriptor of guest memory.
    Guest(GuestAddress, usize),
    /// Gathered into the scratch buffer with this index, this long.
    Scratch(usize, usize),
}

/// Move frames from the guest's transmit queue onto the AF_XDP tx ring.
/// Frames the socket cannot take now (free frames or tx ring space ran
/// out) stay in the guest's ring; the socket's next writable or readable
/// edge brings us back.
fn transmit(pair: &mut Pair, vring: &VringRwLock, atomic: &Mem) -> io::Result<()> {
    if !usable(vring) {
        return Ok(());
    }
    let mem = atomic.memory();
    let mut st = vring.get_mut();
    let max_tx = pair.sock.max_tx_frame().min(MAX_FRAME);
    loop {
        let q = st.get_queue_mut();
        let Some(want) = next_batch(q, &mem)? else {
            break;
        };
        let mut heads = [0u16; BATCH];
        let mut srcs = [Src::Bad; BATCH];
        let mut popped = 0usize;
        let mut scratch_used = 0usize;
        while popped < want {
            let Some(chain) = q.pop_descriptor_chain(&*mem) else {
                break;
            };
            heads[popped] = chain.head_index();
            // Walk the readable descriptors: skip the header, then the
            // frame is either one piece (borrowed) or gathered.
            let mut skip = HDR_LEN;
            let mut pieces: [(GuestAddress, usize); 8] = [(GuestAddress(0), 0); 8];
            let mut np = 0usize;
            let mut total = 0usize;
            let mut bad = false;
            for d in chain {
                if d.is_write_only() {
                    continue;
                }
                let mut len = d.len() as usize;
                let mut addr = d.addr();
                let s = skip.min(len);
                skip -= s;
                len -= s;
                let Some(a) = addr.checked_add(s as u64) else {
                    bad = true;
                    break;
                };
                addr = a;
                if len == 0 {
                    continue;
                }
                if np == pieces.len() {
                    bad = true;
                    break;
                }
                pieces[np] = (addr, len);
                np += 1;
                total += len;
            }
            srcs[popped] = if bad || skip > 0 || total == 0 || total > max_tx {
                Src::Bad
            } else if np == 1 {
                Src::Guest(pieces[0].0, pieces[0].1)
            } else {
                let buf = &mut pair.scratch[scratch_used];
                let mut at = 0usize;
                let mut ok = true;
                for &(a, l) in &pieces[..np] {
                    ok &= mem.read_slice(&mut buf[at..at + l], a).is_ok();
                    at += l;
                }
                if ok {
                    scratch_used += 1;
                    Src::Scratch(scratch_used - 1, total)
                } else {
                    Src::Bad
                }
            };
            popped += 1;
        }
        if popped == 0 {
            // The avail index promised chains the ring did not give (a
            // malformed ring, or the VMM going away): wait for the next kick.
            break;
        }
        // The frames to send, by index into `srcs` (bad ones left out).
        let mut frames = [0usize; BATCH];
        let mut nf = 0usize;
        for (i, s) in srcs[..popped].iter_mut().enumerate() {
            match *s {
                Src::Bad => continue,
                Src::Guest(a, l) if !guest::in_memory(&mem, a, l) => {
                    *s = Src::Bad;
                    continue;
                }
                _ => {}
            }
            frames[nf] = i;
            nf += 1;
        }
        let sent = if nf == 0 {
            0
        } else {
            // Each frame is copied once, into its umem frame.
            let fill = |i: usize, buf: &mut [u8]| match srcs[frames[i]] {
                Src::Guest(a, l) => guest::copy(&mem, a, buf.get_mut(..l).unwrap_or_default()),
                Src::Scratch(k, l) => {
                    let to = buf.get_mut(..l).unwrap_or_default();
                    to.copy_from_slice(&pair.scratch[k][..to.len()]);
                    to.len()
                }
                Src::Bad => 0,
            };
            match pair.sock.transmit_with(nf, fill) {
                Ok(k) => k,
                Err(e) => {
                    eprintln!(
                        "xsk-vhost-user: transmit on queue {}: {e}",
                        pair.sock.queue_id()
                    );
                    0
                }
            }
        };
        // Complete, in order, the bad chains and the sent frames; give the
        // rest back to the avail ring.
        let q = st.get_queue_mut();
        let mut done = 0usize;
        let mut sent_left = sent;
        for (i, s) in srcs[..popped].iter().enumerate() {
            match s {
                Src::Bad => pair.dropped += 1,
                _ if sent_left == 0 => break,
                _ => sent_left -= 1,
            }
            q.add_used(&*mem, heads[i], 0).map_err(qerr)?;
            done += 1;
        }
        let back = popped - done;
        if back > 0 {
            q.set_next_avail(q.next_avail().wrapping_sub(back as u16));
        }
        if done > 0 && q.needs_notification(&*mem).map_err(qerr)? {
            st.signal_used_queue()?;
        }
        if back > 0 {
            let _ = pair.sock.flush_tx();
            break;
        }
    }
    Ok(())
}
