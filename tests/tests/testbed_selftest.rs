//! Live checks of the test bed itself (needs root; skipped otherwise, fatal in CI).

use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xsk_testbed::*;

fn same_netns(pid: u32, ns: &Netns) -> bool {
    let a = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
    let b = std::fs::metadata(ns.path()).unwrap();
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

fn link_names(ns: &Netns) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&ns.ip(["-j", "link", "show"]).unwrap()).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn testbed_topology_and_cleanup() {
    if !require_root("testbed_topology_and_cleanup") {
        return;
    }
    let tb = Testbed::new(4).unwrap();
    let names = (tb.xsk.name().to_owned(), tb.peer.name().to_owned());
    assert!(tb.xsk_if.len() <= 15 && tb.peer_if.len() <= 15);
    assert!(Netns::exists(&names.0) && Netns::exists(&names.1));

    // Each end is in its own namespace, and only there.
    let xl = link_names(&tb.xsk);
    let pl = link_names(&tb.peer);
    assert!(
        xl.contains(&tb.xsk_if) && !xl.contains(&tb.peer_if),
        "{xl:?}"
    );
    assert!(
        pl.contains(&tb.peer_if) && !pl.contains(&tb.xsk_if),
        "{pl:?}"
    );
    assert!(Command::new("ip")
        .args(["link", "show", "dev", &tb.xsk_if])
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap());

    for (j, mac) in [
        (tb.xsk_link_json().unwrap(), tb.xsk_mac),
        (tb.peer_link_json().unwrap(), tb.peer_mac),
    ] {
        assert_eq!(j["num_rx_queues"], 4, "{j}");
        assert_eq!(j["num_tx_queues"], 4, "{j}");
        assert_eq!(j["operstate"], "UP", "{j}");
        let m: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(j["address"], m.join(":"));
    }
    // /sys/class/net inside the namespace (ip netns exec remounts /sys).
    let q = tb
        .xsk
        .run(["ls", &format!("/sys/class/net/{}/queues", tb.xsk_if)])
        .unwrap();
    let q: HashSet<&str> = q.split_whitespace().collect();
    let want: HashSet<&str> = [
        "rx-0", "rx-1", "rx-2", "rx-3", "tx-0", "tx-1", "tx-2", "tx-3",
    ]
    .into();
    assert_eq!(q, want);

    // Addresses, neighbours, no IPv6 addresses.
    let a = tb
        .xsk
        .ip(["-4", "-o", "addr", "show", "dev", &tb.xsk_if])
        .unwrap();
    assert!(a.contains("198.18.0.1/24"), "{a}");
    let a = tb
        .peer
        .ip(["-o", "addr", "show", "dev", &tb.peer_if])
        .unwrap();
    assert!(a.contains("198.18.0.2/24") && !a.contains("inet6"), "{a}");
    let n = tb.peer.ip(["neigh", "show", "dev", &tb.peer_if]).unwrap();
    assert!(n.contains("198.18.0.1") && n.contains("PERMANENT"), "{n}");
    assert_eq!(tb.xdp_prog_id().unwrap(), None);

    // TX checksum offload off on the peer (cross-check with ethtool when installed).
    if let Ok(out) = tb.peer.run(["ethtool", "-k", &tb.peer_if]) {
        assert!(out.contains("tx-checksumming: off"), "{out}");
    }

    drop(tb);
    assert!(!Netns::exists(&names.0) && !Netns::exists(&names.1));
}

#[test]
fn netns_enter_thread_and_errors() {
    if !require_root("netns_enter_thread_and_errors") {
        return;
    }
    let ns = Netns::new("xtbt").unwrap();
    let name = ns.name().to_owned();
    let me = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
    let (inside, lo) = ns
        .enter_thread(|| {
            let ino = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
            // Only lo exists in a fresh namespace.
            let lo = nix::net::if_::if_nametoindex("lo").unwrap();
            (ino, lo)
        })
        .unwrap();
    assert_eq!(inside, std::fs::metadata(ns.path()).unwrap().ino());
    assert_ne!(inside, me);
    assert_eq!(lo, 1);
    assert_eq!(
        std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino(),
        me
    );

    let err = format!(
        "{:#}",
        ns.ip(["link", "show", "dev", "nonexistent0"]).unwrap_err()
    );
    assert!(err.contains("nonexistent0") && err.contains(&name), "{err}");
    assert!(Netns::create(&name).is_err(), "duplicate name must fail");
    drop(ns);
    assert!(!Netns::exists(&name));
}

#[test]
fn udp_flows_reach_xsk_side_with_full_checksums() {
    if !require_root("udp_flows_reach_xsk_side_with_full_checksums") {
        return;
    }
    let tb = Testbed::new(4).unwrap();
    let cap = Capture::start_xsk(&tb).unwrap();
    let (flows, per_flow) = (8u16, 4u32);
    let total = usize::from(flows) * per_flow as usize;
    let payload = |f: u16, s: u32| format!("flow {f} seq {s}").into_bytes();
    send_udp(&tb, flows, per_flow, payload).unwrap();
    let is_ours = |f: &Vec<u8>| {
        parse_udp_frame(f).is_some_and(|u| u.dst_port == DEFAULT_DST_PORT && u.dst_ip == tb.xsk_ip)
    };
    let frames = cap
        .collect(
            |fs| fs.iter().filter(|f| is_ours(f)).count() >= total,
            Duration::from_secs(3),
        )
        .unwrap();
    let ours: Vec<UdpFrame> = frames
        .iter()
        .filter(|f| is_ours(f))
        .map(|f| parse_udp_frame(f).unwrap())
        .collect();
    assert_eq!(ours.len(), total);
    let mut seen = HashSet::new();
    for (raw, u) in frames.iter().filter(|f| is_ours(f)).zip(&ours) {
        assert!(frame_checksums_ok(raw), "incomplete checksum: {raw:02x?}");
        assert_eq!((u.src_mac, u.dst_mac), (tb.peer_mac, tb.xsk_mac));
        assert_eq!(u.src_ip, tb.peer_ip);
        let flow = u.src_port - FLOW_SRC_PORT_BASE;
        assert!(flow < flows);
        let text = String::from_utf8(u.payload.clone()).unwrap();
        assert!(text.starts_with(&format!("flow {flow} seq ")), "{text}");
        seen.insert(text);
    }
    assert_eq!(seen.len(), total);
}

#[test]
fn flows_spread_over_rx_queues_with_xdp_attached() {
    if !require_root("flows_spread_over_rx_queues_with_xdp_attached") {
        return;
    }
    let tb = Testbed::new(4).unwrap();
    let xdp = tb.attach_xdp_pass().unwrap();
    assert_eq!(tb.xdp_prog_id().unwrap(), Some(xdp.prog_id().unwrap()));
    let att = tb.xdp_attachments().unwrap();
    assert_eq!(att, vec![(XdpMode::Native, xdp.prog_id().unwrap())]);
    // A netlink attach on top of the link must be refused.
    assert!(tb
        .xsk
        .ip(["link", "set", "dev", &tb.xsk_if, "xdp", "off"])
        .is_err());

    let before: u64 = tb.xsk_rx_queue_xdp_packets().unwrap().iter().sum();
    send_udp(&tb, 32, 4, |f, s| vec![f as u8, s as u8]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let per_q = loop {
        let q = tb.xsk_rx_queue_xdp_packets().unwrap();
        if q.iter().sum::<u64>() >= before + 128 || Instant::now() > deadline {
            break q;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(per_q.iter().sum::<u64>() >= before + 128, "{per_q:?}");
    let used = per_q.iter().filter(|&&n| n > 0).count();
    assert!(used >= 2, "32 flows all landed on one queue: {per_q:?}");
    eprintln!("rx_queue_N_xdp_packets: {per_q:?}");

    drop(xdp);
    assert_eq!(tb.xdp_prog_id().unwrap(), None);
}

#[test]
fn capture_sees_injected_frames_and_kernel_accepts_our_checksums() {
    if !require_root("capture_sees_injected_frames_and_kernel_accepts_our_checksums") {
        return;
    }
    let tb = Testbed::new(2).unwrap();
    let cap = Capture::start(&tb).unwrap();
    let inj = Capture::start_xsk(&tb).unwrap();
    let sock = tb
        .peer
        .enter_thread(|| std::net::UdpSocket::bind((tb.peer_ip, 5555)))
        .unwrap()
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();

    let frame = |i: u8| {
        build_udp_frame(
            tb.xsk_mac,
            tb.peer_mac,
            tb.xsk_ip,
            tb.peer_ip,
            9000,
            5555,
            &[i; 33],
        )
    };
    for i in 0..5 {
        inj.send(&frame(i)).unwrap();
    }
    let mut bad = frame(99);
    let n = bad.len();
    bad[n - 1] ^= 0xff; // payload changed, checksum not: the UDP stack must drop it
    inj.send(&bad).unwrap();

    let frames = cap
        .collect(
            |fs| {
                fs.iter()
                    .filter(|f| parse_udp_frame(f).is_some_and(|u| u.dst_port == 5555))
                    .count()
                    >= 6
            },
            Duration::from_secs(2),
        )
        .unwrap();
    let got: Vec<Vec<u8>> = frames
        .into_iter()
        .filter(|f| parse_udp_frame(f).is_some_and(|u| u.dst_port == 5555))
        .collect();
    assert_eq!(got.len(), 6);
    for (i, f) in got[..5].iter().enumerate() {
        assert_eq!(f, &frame(i as u8), "capture must return the frame as sent");
    }
    assert_eq!(got[5], bad);

    let mut buf = [0u8; 100];
    for i in 0..5u8 {
        let (len, from) = sock.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], &[i; 33]);
        assert_eq!(from, std::net::SocketAddr::from((tb.xsk_ip, 9000)));
    }
    assert!(
        sock.recv_from(&mut buf).is_err(),
        "bad checksum was accepted"
    );
}

#[test]
fn roundtrip_through_af_packet_reflector() {
    if !require_root("roundtrip_through_af_packet_reflector") {
        return;
    }
    let tb = Testbed::new(4).unwrap();
    let refl = Capture::start_xsk(&tb).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (flows, per_flow) = (6u16, 20u32);
    let rt = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let frames = refl
                    .collect(|f| !f.is_empty(), Duration::from_millis(50))
                    .unwrap();
                for f in frames {
                    if parse_udp_frame(&f).is_some_and(|u| u.dst_port == DEFAULT_DST_PORT) {
                        refl.send(&reflect_udp_frame(&f).unwrap()).unwrap();
                        n += 1;
                    }
                }
            }
            n
        });
        let rt = udp_roundtrip(&tb, flows, per_flow, Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let n = h.join().unwrap();
        assert_eq!(n, u64::from(flows) * u64::from(per_flow));
        rt
    })
    .unwrap();
    assert_eq!(rt.sent, 120);
    rt.verify().unwrap();

    // Nobody reflecting: everything is lost, quickly, and that is not an error.
    drop(refl);
    let t = Instant::now();
    let rt = udp_roundtrip(&tb, 2, 3, Duration::from_millis(200)).unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!((rt.sent, rt.received, rt.lost()), (6, 0, 6));
    assert!(rt.verify().is_err());
}

#[test]
fn unprivileged_child_has_no_capabilities() {
    if !require_root("unprivileged_child_has_no_capabilities") {
        return;
    }
    let (uid, gid) = nobody_ids().unwrap();
    let mut child = spawn_unprivileged(
        Command::new("cat")
            .arg("/proc/self/status")
            .stdout(Stdio::piped()),
    )
    .unwrap();
    let mut status = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut status)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .unwrap_or_else(|| panic!("no {k} in {status}"))
            .trim()
            .to_owned()
    };
    for k in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(field(k), "0000000000000000", "{k}");
    }
    assert_eq!(field("NoNewPrivs"), "1");
    let u = uid.as_raw().to_string();
    let g = gid.as_raw().to_string();
    assert_eq!(
        field("Uid").split_whitespace().collect::<Vec<_>>(),
        [&u, &u, &u, &u]
    );
    assert_eq!(
        field("Gid").split_whitespace().collect::<Vec<_>>(),
        [&g, &g, &g, &g]
    );
    assert_eq!(field("Groups"), "");

    // A long-lived child checked from outside; it can reach a 0666 socket in a TempDir.
    let dir = TempDir::new("xtb-self-").unwrap();
    let sock_path = dir.join("s.sock");
    let _l = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut sleeper = spawn_unprivileged(Command::new("sleep").arg("5")).unwrap();
    let pid = sleeper.id();
    assert_eq!(cap_eff(pid).unwrap(), 0);
    assert_eq!(proc_status_uid(pid).unwrap(), uid.as_raw());
    assert_eq!(proc_status_uids(pid).unwrap(), [uid.as_raw(); 4]);
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    let ok = spawn_unprivileged(Command::new("test").arg("-w").arg(&sock_path))
        .unwrap()
        .wait()
        .unwrap();
    assert!(ok.success(), "nobody cannot reach {}", sock_path.display());
    assert_ne!(
        cap_eff(std::process::id()).unwrap(),
        0,
        "the test itself is root"
    );
}

const FAKE_BROKER: &str = r#"#!/usr/bin/env python3
import os, socket, sys, time
args = sys.argv[1:]
path = args[args.index("--socket") + 1]
mode = int(args[args.index("--socket-mode") + 1], 8)
if "--fail" in args:
    print("fake broker: failing on purpose", file=sys.stderr, flush=True)
    sys.exit(3)
if "--slow" in args:
    time.sleep(0.3)
try:
    os.unlink(path)
except FileNotFoundError:
    pass
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.chmod(path, mode)
s.listen(16)
print("fake broker ready", args, file=sys.stderr, flush=True)
while True:
    c, _ = s.accept()
    c.close()
"#;

#[test]
fn broker_process_lifecycle_with_a_stand_in() {
    if !require_root("broker_process_lifecycle_with_a_stand_in") {
        return;
    }
    if Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        eprintln!(
            "SKIP broker_process_lifecycle_with_a_stand_in: no python3 for the stand-in broker"
        );
        return;
    }
    let tb = Testbed::new(1).unwrap();
    let dir = TempDir::new("xtb-brk-").unwrap();
    let fake = dir.join("fake-brokerd");
    std::fs::write(&fake, FAKE_BROKER).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut b = BrokerProcess::spawn_bin(&fake, &tb.xsk, dir.path(), &["--slow"]).unwrap();
    let pid = b.pid();
    assert!(
        same_netns(pid, &tb.xsk),
        "broker is not in the xsk namespace"
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("fake-brokerd"),
        "pid is not the broker (ip forked?)"
    );
    let mode = std::fs::metadata(b.socket_path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o666);
    assert!(
        b.open_fd_count().unwrap() >= 4,
        "{:?}",
        b.open_fds().unwrap()
    );
    assert!(b.log().contains("fake broker ready"), "{}", b.log());
    assert!(b.try_wait().unwrap().is_none());
    let st = b.terminate().unwrap();
    assert!(!st.success());
    assert!(b.try_wait().unwrap().is_some());
    drop(b);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists() || {
            // pid reuse is possible in principle; then it is a different process
            let s = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            !s.contains("fake-brokerd")
        }
    );

    // Restart in the same directory over the stale socket file; the log keeps growing.
    let mut b2 = BrokerProcess::spawn_bin(&fake, &tb.xsk, dir.path(), &[]).unwrap();
    assert_eq!(b2.log().matches("fake broker ready").count(), 2);
    b2.kill().unwrap();
    drop(b2);

    let err = format!(
        "{:#}",
        BrokerProcess::spawn_bin(&fake, &tb.xsk, dir.path(), &["--fail"]).unwrap_err()
    );
    assert!(
        err.contains("exited before it was ready") && err.contains("failing on purpose"),
        "{err}"
    );

    let err = workspace_bin("no-such-binary-xtb").unwrap_err().to_string();
    assert!(
        err.contains("no-such-binary-xtb") && err.contains("cargo build --workspace --bins"),
        "{err}"
    );
}

#[test]
fn real_broker_starts_in_the_xsk_namespace() {
    if !require_root("real_broker_starts_in_the_xsk_namespace") {
        return;
    }
    let bin = match workspace_bin("xsk-brokerd") {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIP real_broker_starts_in_the_xsk_namespace: {e}");
            return;
        }
    };
    let tb = Testbed::new(2).unwrap();
    let dir = TempDir::new("xtb-rb-").unwrap();
    let b = BrokerProcess::spawn(&tb.xsk, dir.path()).unwrap();
    assert!(bin.exists());
    assert!(same_netns(b.pid(), &tb.xsk));
    let exe = std::fs::read_link(format!("/proc/{}/exe", b.pid())).unwrap();
    assert_eq!(
        exe,
        std::fs::canonicalize(&bin).unwrap(),
        "ip netns exec must exec in place"
    );
    assert!(b.open_fd_count().unwrap() >= 3);
    assert_eq!(
        std::fs::metadata(b.socket_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o666
    );
}

#[test]
fn stale_namespaces_of_dead_processes_are_cleaned() {
    if !require_root("stale_namespaces_of_dead_processes_are_cleaned") {
        return;
    }
    let live = Testbed::new(1).unwrap();
    let mut c = Command::new("true").spawn().unwrap();
    let dead_pid = c.id();
    c.wait().unwrap();
    let mut pid36 = String::new();
    let mut n = dead_pid;
    while n > 0 {
        pid36.insert(0, std::char::from_digit(n % 36, 36).unwrap());
        n /= 36;
    }
    let stale = format!("xtbx{pid36}zzq9k");
    Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap();
    assert!(Netns::exists(&stale));
    let deleted = Testbed::cleanup_stale().unwrap();
    assert!(deleted.contains(&stale), "{deleted:?}");
    assert!(!Netns::exists(&stale));
    assert!(Netns::exists(live.xsk.name()) && Netns::exists(live.peer.name()));
}
