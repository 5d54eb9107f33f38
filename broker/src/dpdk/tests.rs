//! Unit tests of the handshake parser and the queue assignment.

use super::*;
use crate::kernel::fake::FakeKernel;

fn peer(pid: i32) -> Peer {
    Peer {
        pid,
        uid: 65534,
        gid: 65534,
    }
}

#[test]
fn each_connection_takes_the_lowest_unleased_queue() {
    let k = FakeKernel::with_interfaces(&[(2, "eth0", 3)]);
    let b = Arc::new(Broker::new(k.clone(), None, None));
    // DPDK binds queue 0, then asks: its own bound socket is no refusal.
    k.world().bound.insert((2, 0));
    let (q0, opened, _fd) = open_lowest_unleased(&b, "eth0", peer(10)).unwrap();
    assert_eq!(
        (q0.queues(), opened.start_queue, opened.queues),
        (vec![0], 0, 1)
    );
    let (q1, _, _fd) = open_lowest_unleased(&b, "eth0", peer(10)).unwrap();
    assert_eq!(q1.queues(), vec![1]);
    // Another process gets the next one; when every queue is leased the
    // refusal says so.
    let (q2, _, _fd) = open_lowest_unleased(&b, "eth0", peer(11)).unwrap();
    assert_eq!(q2.queues(), vec![2]);
    let e = open_lowest_unleased(&b, "eth0", peer(12)).unwrap_err();
    assert_eq!(e.code(), ErrorCode::QueueBusy);
    assert!(
        e.to_string()
            .contains("every queue of eth0 (0..3) is leased"),
        "{e}"
    );
    // A released queue is the next one taken.
    drop(q1);
    let (again, _, _fd) = open_lowest_unleased(&b, "eth0", peer(12)).unwrap();
    assert_eq!(again.queues(), vec![1]);
    // The same path as every map grant: open_map still refuses a bound
    // queue; an unknown interface is refused by name.
    drop((q0, q2, again));
    let mreq = OpenMapRequest {
        ifname: "eth0".into(),
        queues: 1,
        start_queue: 0,
        mode: XdpMode::Auto,
        pin: false,
    };
    assert_eq!(
        b.open_map(&mreq, peer(13)).unwrap_err().code(),
        ErrorCode::QueueBusy
    );
    let e = open_lowest_unleased(&b, "eth9", peer(13)).unwrap_err();
    assert_eq!(e.code(), ErrorCode::NoSuchInterface);
    assert_eq!(b.summary(), (0, 0), "every lease released");
}

#[test]
fn a_held_lease_ends_when_its_process_exits_or_the_interface_vanishes() {
    let k = FakeKernel::with_interfaces(&[(2, "eth0", 2), (3, "eth1", 1)]);
    let b = Arc::new(Broker::new(k.clone(), None, None));
    // The process exits: released.
    let mut child = std::process::Command::new("sleep")
        .arg("0.2")
        .spawn()
        .unwrap();
    let pidfd = crate::peercred::pidfd_open(child.id() as i32).unwrap();
    let (lease, _, _fd) = open_lowest_unleased(&b, "eth0", peer(child.id() as i32)).unwrap();
    let why = Held::new(lease, pidfd, peer(1)).hold(&b);
    assert_eq!(why, "its process exited");
    child.wait().unwrap();
    assert_eq!(b.summary(), (0, 0));
    assert_eq!(b.counters().releases(), 1);
    // The interface vanishes while this (live) process holds a queue:
    // the holder wakes and names the revocation.
    let pidfd = crate::peercred::pidfd_open(std::process::id() as i32).unwrap();
    let (lease, _, _fd) = open_lowest_unleased(&b, "eth1", peer(2)).unwrap();
    let held = Held::new(lease, pidfd, peer(2));
    let b2 = Arc::clone(&b);
    let holder = std::thread::spawn(move || held.hold(&b2));
    k.world().interfaces.remove(&3);
    assert_eq!(b.reap_vanished_interfaces(), 1);
    let why = holder.join().unwrap();
    assert!(why.contains("eth1"), "{why}");
    assert_eq!(b.summary(), (0, 0));
}

#[test]
fn parses_dpdk_handshake() {
    assert_eq!(
        parse_request(b"/connect,node-1.example"),
        Ok(DpRequest::Connect {
            hostname: "node-1.example".into()
        })
    );
    assert_eq!(parse_request(b"/version"), Ok(DpRequest::Version));
    assert_eq!(
        parse_request(b"/xsk_map_fd,eth0"),
        Ok(DpRequest::XskMapFd {
            ifname: "eth0".into()
        })
    );
    assert_eq!(parse_request(b"/fin"), Ok(DpRequest::Fin));
}

#[test]
fn refuses_malformed_messages() {
    assert_eq!(parse_request(b""), Err(Malformed::Empty));
    assert!(matches!(
        parse_request(&[b'a'; 64]),
        Err(Malformed::TooLong { len: 64 })
    ));
    assert!(parse_request(&[b'/'; 63]).is_err());
    // NUL terminators (DPDK sends none), control bytes, non-ASCII.
    assert_eq!(
        parse_request(b"/fin\0"),
        Err(Malformed::BadByte { byte: 0, offset: 4 })
    );
    assert!(matches!(
        parse_request(b"/xsk_map_fd,eth\n0"),
        Err(Malformed::BadByte { byte: b'\n', .. })
    ));
    assert!(matches!(
        parse_request("/connect,h\u{e9}".as_bytes()),
        Err(Malformed::BadByte { .. })
    ));
    for bad in [
        &b"/connect"[..],
        b"/connect,",
        b"/xsk_map_fd",
        b"/xsk_map_fd,",
        b"/xsk_map_fd,eth0,eth1",
        b"/version,1",
        b"/fin,now",
    ] {
        assert!(
            matches!(parse_request(bad), Err(Malformed::BadArgument { .. })),
            "{:?}: {:?}",
            String::from_utf8_lossy(bad),
            parse_request(bad)
        );
    }
    for bad in [
        &b"/xsk_socket,eth0"[..],
        b"connect,h",
        b"/FIN",
        b"/config_busy_poll,1",
    ] {
        assert!(
            matches!(parse_request(bad), Err(Malformed::Unknown(_))),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let long_host = format!("/connect,{}", "h".repeat(54));
    assert!(parse_request(long_host.as_bytes()).is_ok());
}

#[test]
fn replies_fit_dpdks_buffer() {
    for r in [
        reply::HOST_OK,
        reply::VERSION,
        reply::FD_ACK,
        reply::FD_NAK,
        reply::FIN_ACK,
        reply::NAK,
    ] {
        assert!(r.len() < 128 && !r.contains(&0));
    }
}

#[test]
fn never_panics_on_any_short_input() {
    // Every 1- and 2-byte message, and prefixes of the commands with
    // every byte appended.
    for a in 0..=255u8 {
        let _ = parse_request(&[a]);
        for b in 0..=255u8 {
            let _ = parse_request(&[a, b]);
        }
    }
    for cmd in ["/connect,", "/xsk_map_fd,", "/version", "/fin"] {
        for b in 0..=255u8 {
            let mut m = cmd.as_bytes().to_vec();
            m.push(b);
            let _ = parse_request(&m);
        }
    }
}
