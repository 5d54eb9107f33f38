//! The grant rules against a kernel in memory ([`FakeKernel`]): conflicts,
//! quotas, modes, queues still bound, release on drop (and on a panic),
//! restore of a saved state against a world that changed. No root needed;
//! the end-to-end suite proves the same rules on real veth pairs.

use std::sync::Arc;

use xsk_broker_protocol::{AttachMode, CopyMode, ErrorCode, OpenMapRequest, OpenRequest, XdpMode};

use super::{Broker, Lease, Peer, Persist};
use crate::error::GrantError;
use crate::kernel::fake::FakeKernel;
use crate::limits::Limits;
use crate::persist::StateDir;

const ETH0: u32 = 2;
const ETH1: u32 = 3;

fn peer(pid: i32, uid: u32) -> Peer {
    Peer { pid, uid, gid: uid }
}

fn kernel() -> FakeKernel {
    FakeKernel::with_interfaces(&[(ETH0, "eth0", 4), (ETH1, "eth1", 4)])
}

fn broker(k: &FakeKernel) -> Arc<Broker<FakeKernel>> {
    Arc::new(Broker::new(k.clone(), None, None))
}

fn req(ifname: &str, queues: u32, start: u32) -> OpenRequest {
    OpenRequest {
        start_queue: start,
        ..OpenRequest::new(ifname, queues)
    }
}

fn open(b: &Arc<Broker<FakeKernel>>, r: OpenRequest, p: Peer) -> Result<Lease, GrantError> {
    b.open(&r, p).map(|(lease, _)| lease)
}

fn code(e: &GrantError) -> ErrorCode {
    e.code()
}

#[test]
fn a_grant_confines_each_socket_and_fills_the_map() {
    let k = kernel();
    let b = broker(&k);
    let (lease, opened) = b.open(&req("eth0", 2, 1), peer(10, 1000)).unwrap();
    assert_eq!(lease.queues(), vec![1, 2]);
    assert_eq!(opened.ifindex, ETH0);
    assert_eq!(opened.mode, AttachMode::Native);
    let w = k.world();
    assert_eq!(
        w.sockets
            .iter()
            .map(|g| (g.ifindex, g.queue))
            .collect::<Vec<_>>(),
        vec![(ETH0, 1), (ETH0, 2)]
    );
    assert!(w.map.contains_key(&(ETH0, 1)) && w.map.contains_key(&(ETH0, 2)));
    assert_eq!(w.attached[&ETH0].0, AttachMode::Native);
}

#[test]
fn two_leases_never_hold_one_queue() {
    let k = kernel();
    let b = broker(&k);
    let _a = open(&b, req("eth0", 2, 0), peer(10, 1000)).unwrap();
    let e = open(&b, req("eth0", 2, 1), peer(11, 1001)).unwrap_err();
    assert_eq!(code(&e), ErrorCode::QueueBusy);
    assert!(
        e.to_string()
            .contains("queue 1 of eth0 is leased by pid 10 (uid 1000)"),
        "{e}"
    );
    // Nothing of the refused request is left: queue 2 and 3 are free.
    let _c = open(&b, req("eth0", 2, 2), peer(11, 1001)).unwrap();
}

#[test]
fn dropping_a_lease_releases_it_and_detaches_the_unused_program() {
    let k = kernel();
    let b = broker(&k);
    let lease = open(&b, req("eth0", 2, 0), peer(10, 1000)).unwrap();
    let other = open(&b, req("eth1", 1, 0), peer(10, 1000)).unwrap();
    drop(lease);
    {
        let w = k.world();
        assert!(
            !w.map.keys().any(|(i, _)| *i == ETH0),
            "map entries cleared"
        );
        assert!(!w.attached.contains_key(&ETH0), "program detached");
        assert!(
            w.attached.contains_key(&ETH1),
            "the other interface keeps its program"
        );
        assert_eq!(w.retired, 2, "both sockets confined to lo");
    }
    assert_eq!(b.summary(), (1, 1));
    b.release(other);
    assert_eq!(b.summary(), (0, 0));
    assert!(k.world().attached.is_empty());
}

#[test]
fn a_connection_thread_that_panics_releases_its_lease() {
    let k = kernel();
    let b = broker(&k);
    let b2 = Arc::clone(&b);
    let died = std::thread::spawn(move || {
        let _lease = open(&b2, req("eth0", 4, 0), peer(10, 1000)).unwrap();
        panic!("a bug in a connection thread");
    })
    .join();
    assert!(died.is_err());
    assert_eq!(b.summary(), (0, 0));
    let _again = open(&b, req("eth0", 4, 0), peer(11, 1001)).unwrap();
}

#[test]
fn quotas_count_queues_and_leases_per_uid() {
    let k = kernel();
    let b = Arc::new(Broker::new(k.clone(), None, None).with_limits(Limits {
        max_queues_per_uid: 3,
        max_leases_per_uid: 2,
        ..Limits::default()
    }));
    let _a = open(&b, req("eth0", 2, 0), peer(10, 1000)).unwrap();
    let e = open(&b, req("eth1", 2, 0), peer(11, 1000)).unwrap_err();
    assert_eq!(code(&e), ErrorCode::LimitReached);
    assert!(e.to_string().contains("--max-queues-per-uid 3"), "{e}");
    let _b = open(&b, req("eth1", 1, 0), peer(11, 1000)).unwrap();
    let e = open(&b, req("eth1", 1, 1), peer(12, 1000)).unwrap_err();
    assert!(e.to_string().contains("--max-queues-per-uid 3"), "{e}");
    // Another uid has its own quota.
    let _c = open(&b, req("eth1", 2, 2), peer(13, 1001)).unwrap();
    let b2 = Arc::new(Broker::new(kernel(), None, None).with_limits(Limits {
        max_leases_per_uid: 1,
        ..Limits::default()
    }));
    let _d = open(&b2, req("eth0", 1, 2), peer(10, 1002)).unwrap();
    let e = open(&b2, req("eth0", 1, 3), peer(10, 1002)).unwrap_err();
    assert!(e.to_string().contains("--max-leases-per-uid 1"), "{e}");
}

#[test]
fn someone_elses_program_is_never_replaced() {
    let k = kernel();
    k.world().attached.insert(ETH0, (AttachMode::Skb, 7, false));
    let b = broker(&k);
    let e = open(&b, req("eth0", 1, 0), peer(10, 1000)).unwrap_err();
    assert_eq!(code(&e), ErrorCode::ForeignProgram);
    assert_eq!(code(&e).legacy(), ErrorCode::QueueBusy);
    assert!(
        e.to_string()
            .contains("XDP program id 7 attached in skb mode"),
        "{e}"
    );
    assert_eq!(k.world().attached[&ETH0], (AttachMode::Skb, 7, false));
}

#[test]
fn a_queue_with_a_socket_still_bound_is_not_granted() {
    let k = kernel();
    let b = broker(&k);
    k.world().bound.insert((ETH0, 1));
    let e = open(&b, req("eth0", 2, 0), peer(10, 1000)).unwrap_err();
    assert_eq!(code(&e), ErrorCode::QueueBusy);
    assert!(
        e.to_string()
            .contains("an AF_XDP socket the broker did not grant is bound to it"),
        "{e}"
    );
    k.world().bound.clear();
    // A holder binds, releases, keeps its socket: the queue stays busy and
    // the refusal names it.
    let lease = open(&b, req("eth0", 1, 3), peer(20, 1000)).unwrap();
    k.world().bound.insert((ETH0, 3));
    drop(lease);
    let e = open(&b, req("eth0", 1, 3), peer(21, 1001)).unwrap_err();
    assert!(
        e.to_string().contains("previous holder (pid 20, uid 1000)"),
        "{e}"
    );
}

#[test]
fn modes_auto_falls_back_to_skb_and_conflicts_are_refused() {
    let k = kernel();
    k.world().interfaces.get_mut(&ETH0).unwrap().native = false;
    let b = broker(&k);
    let (_a, opened) = b.open(&req("eth0", 1, 0), peer(10, 1000)).unwrap();
    assert_eq!(opened.mode, AttachMode::Skb);
    let native = OpenRequest {
        mode: XdpMode::Native,
        ..req("eth0", 1, 1)
    };
    let e = open(&b, native, peer(10, 1000)).unwrap_err();
    assert_eq!(code(&e), ErrorCode::ModeNotSupported);
    assert!(
        e.to_string()
            .contains("attached in skb mode for other leases"),
        "{e}"
    );
    let zc = OpenRequest {
        copy: CopyMode::ZeroCopy,
        ..req("eth0", 1, 1)
    };
    let e = open(&b, zc, peer(10, 1000)).unwrap_err();
    assert!(e.to_string().contains("cannot do zero-copy"), "{e}");
    let native_only = OpenRequest {
        mode: XdpMode::Native,
        ..req("eth0", 1, 0)
    };
    drop(_a);
    let e = open(&b, native_only, peer(10, 1000)).unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot attach the XSK program to eth0"),
        "{e}"
    );
    assert!(k.world().attached.is_empty(), "nothing left attached");
}

#[test]
fn names_resolve_to_the_canonical_interface_and_ranges_are_checked() {
    let k = kernel();
    k.world()
        .interfaces
        .get_mut(&ETH0)
        .unwrap()
        .altnames
        .push("uplink".into());
    let b = broker(&k);
    assert_eq!(
        b.resolve_interface("uplink").unwrap(),
        (ETH0, "eth0".into())
    );
    let e = b.resolve_interface("nope0").unwrap_err();
    assert_eq!(code(&e), ErrorCode::NoSuchInterface);
    // The server resolves first; a grant by altname is refused.
    let e = open(&b, req("uplink", 1, 0), peer(10, 1000)).unwrap_err();
    assert!(e.to_string().contains("ask for eth0"), "{e}");
    let e = open(&b, req("eth0", 2, 3), peer(10, 1000)).unwrap_err();
    assert_eq!(code(&e), ErrorCode::QueueOutOfRange);
    assert!(e.to_string().contains("queues 3..=4 were asked for"), "{e}");
}

#[test]
fn a_map_lease_reserves_its_queues_like_sockets() {
    let k = kernel();
    let b = broker(&k);
    let mreq = OpenMapRequest {
        ifname: "eth0".into(),
        queues: 2,
        start_queue: 0,
        mode: XdpMode::Auto,
        pin: false,
    };
    let (lease, opened, _fd) = b.open_map(&mreq, peer(10, 1000)).unwrap();
    assert_eq!((opened.start_queue, opened.queues), (0, 2));
    let e = open(&b, req("eth0", 1, 1), peer(11, 1001)).unwrap_err();
    assert!(e.to_string().contains("leased by pid 10"), "{e}");
    let pinned = OpenMapRequest { pin: true, ..mreq };
    let e = b.open_map(&pinned, peer(11, 1001)).unwrap_err();
    assert_eq!(code(&e), ErrorCode::NotPermitted);
    drop(lease);
    assert_eq!(b.summary(), (0, 0));
}

/// A broker that keeps its state in `dir`, over `k`.
fn persistent(k: &FakeKernel, dir: &std::path::Path) -> Arc<Broker<FakeKernel>> {
    let persist = Persist {
        state: StateDir::open(&dir.join("state")).unwrap(),
        pins: dir.join("pins"),
    };
    std::fs::create_dir_all(dir.join("pins")).unwrap();
    Arc::new(Broker::new(k.clone(), None, Some(persist)))
}

#[test]
fn restore_keeps_live_holders_and_releases_the_rest_of_a_changed_world() {
    let dir = tempdir();
    let k = kernel();
    {
        let mut w = k.world();
        w.processes.insert(10, 500);
        w.processes.insert(11, 600);
        w.processes.insert(12, 700);
        w.processes.insert(20, 800);
    }
    let first = persistent(&k, &dir);
    let live = open(&first, req("eth0", 1, 0), peer(10, 1000)).unwrap();
    let dies = open(&first, req("eth0", 1, 1), peer(11, 1001)).unwrap();
    let gone_if = open(&first, req("eth1", 1, 0), peer(12, 1002)).unwrap();
    // The broker dies: its leases are not released (their owner is gone).
    drop(first);
    drop((live, dies, gone_if));
    assert_eq!(k.world().map.len(), 3, "the kernel keeps the map entries");

    // Meanwhile pid 11 exits, and pid 12's interface is deleted.
    k.exit(11);
    {
        let mut w = k.world();
        w.interfaces.remove(&ETH1);
        w.attached.remove(&ETH1);
        w.map.retain(|(i, _), _| *i != ETH1);
    }
    let second = persistent(&k, &dir);
    assert_eq!(second.restore().unwrap(), (1, 2));
    // Pid 10 still holds queue 0; queue 1 is free again (its map entry gone).
    let e = open(&second, req("eth0", 1, 0), peer(20, 1003)).unwrap_err();
    assert!(e.to_string().contains("leased by pid 10"), "{e}");
    assert!(!k.world().map.contains_key(&(ETH0, 1)));
    let _q1 = open(&second, req("eth0", 1, 1), peer(20, 1003)).unwrap();

    // A holder whose pid was reused (another start time) is not the holder.
    drop(second);
    k.world().processes.insert(10, 501);
    let third = persistent(&k, &dir);
    let (kept, _) = third.restore().unwrap();
    assert_eq!(kept, 1, "only the lease of pid 20 (this test's) is kept");

    // When a kept holder exits, its queues are released.
    k.exit(20);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while third.summary() != (0, 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            third.summary()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        k.world().attached.is_empty(),
        "the unused program is detached"
    );
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "xsk-state-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The packets each socket moved, as status reports them: `(queue, rx, tx)`.
fn traffic(b: &Broker<FakeKernel>) -> Vec<(u32, Option<u64>, Option<u64>)> {
    b.lease_status(None)
        .iter()
        .flat_map(|l| l.sockets.iter())
        .map(|s| (s.queue_id, s.rx_packets, s.tx_packets))
        .collect()
}

#[test]
fn status_counts_ring_positions_from_creation_across_the_wrap() {
    use crate::ring::RingKind::{Rx, Tx};
    let k = kernel();
    let b = broker(&k);
    let lease = open(&b, req("eth0", 2, 0), peer(10, 1000)).unwrap();
    // No rings yet: no counts, no mapping, no error.
    b.sample_traffic();
    assert_eq!(traffic(&b), vec![(0, None, None), (1, None, None)]);
    assert_eq!(k.ring_mappings(), 0);
    assert!(b.lease_status(None)[0].sockets[0].traffic_error.is_none());
    // Queue 0's holder creates both rings and moves traffic; queue 1's only
    // an RX ring. Status maps nothing itself: the tick maps the new rings,
    // and frames before it count (rings start at 0).
    k.set_ring(ETH0, 0, Rx, 7);
    k.set_ring(ETH0, 0, Tx, 3);
    k.set_ring(ETH0, 1, Rx, 0);
    assert_eq!(traffic(&b), vec![(0, None, None), (1, None, None)]);
    b.sample_traffic();
    assert_eq!(k.ring_mappings(), 3);
    assert_eq!(traffic(&b), vec![(0, Some(7), Some(3)), (1, Some(0), None)]);
    // The rx producer runs towards the u32 wrap and past it; the watcher's
    // tick sees the steps between two status requests.
    for pos in [1u32 << 30, 1 << 31, 3 << 30, u32::MAX - 1] {
        k.set_ring(ETH0, 0, Rx, pos);
        b.sample_traffic();
    }
    k.set_ring(ETH0, 0, Rx, 5);
    k.set_ring(ETH0, 0, Tx, 10);
    assert_eq!(
        traffic(&b),
        vec![(0, Some((1 << 32) + 5), Some(10)), (1, Some(0), None)]
    );
    // A holder that writes its producer word back gains nothing.
    k.set_ring(ETH0, 0, Rx, 1);
    assert_eq!(traffic(&b)[0].1, Some((1 << 32) + 5));
    // Release unmaps every ring and the lease leaves the status.
    drop(lease);
    assert_eq!(k.ring_mappings(), 0);
    assert!(traffic(&b).is_empty());
}

#[test]
fn a_ring_that_cannot_be_mapped_is_named_and_status_goes_on() {
    use crate::ring::RingKind::Rx;
    let k = kernel();
    let b = broker(&k);
    let _lease = open(&b, req("eth0", 2, 0), peer(10, 1000)).unwrap();
    let fd = k.world().map[&(ETH0, 0)];
    k.world().ring_errors.insert(fd, libc::ENOMEM);
    k.set_ring(ETH0, 1, Rx, 4);
    b.sample_traffic();
    let st = b.lease_status(None);
    let s0 = &st[0].sockets[0];
    assert_eq!((s0.rx_packets, s0.tx_packets), (None, None));
    let e = s0.traffic_error.as_deref().unwrap();
    assert!(
        e.contains("cannot map the rx ring") && e.contains("cannot map the tx ring"),
        "{e}"
    );
    assert!(s0.statistics.is_some(), "the statistics are still read");
    assert_eq!(st[0].sockets[1].rx_packets, Some(4));
    // Once the kernel lets it, the ring is mapped and the error goes.
    k.world().ring_errors.clear();
    k.set_ring(ETH0, 0, Rx, 2);
    b.sample_traffic();
    assert_eq!(traffic(&b)[0], (0, Some(2), None));
    assert!(b.lease_status(None)[0].sockets[0].traffic_error.is_none());
}
