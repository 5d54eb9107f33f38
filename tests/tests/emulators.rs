//! End-to-end tests for emulator users: the `xsk-client exec` sock-fds
//! launcher, sock-fds validation, and the UDP bridge example run the way QEMU
//! would be, all as uid nobody with no capabilities, on real veth pairs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use std::net::{SocketAddr, UdpSocket};
use xsk_broker_protocol::{ErrorCode, OpenRequest};
use xsk_client::BrokerClient;

use xsk_testbed::{
    build_udp_frame, cap_eff, frame_checksums_ok, nobody_ids, parse_udp_frame, proc_fds,
    proc_socket_domain, proc_status_uid, send_udp, wait_until, workspace_bin, BrokerBed, Capture,
    ClientProcess, DEFAULT_DST_PORT, TEST_FRAMES,
};

const READY: Duration = Duration::from_secs(15);

/// Try to lease `queues` queues from `start`; the broker's error code on refusal.
fn try_open(
    env: &BrokerBed,
    queues: u32,
    start: u32,
) -> Result<xsk_client::Lease, Option<ErrorCode>> {
    BrokerClient::connect(env.broker.socket_path())
        .unwrap()
        .open(OpenRequest {
            start_queue: start,
            ..OpenRequest::new(env.tb.xsk_if.clone(), queues)
        })
        .map_err(|e| e.broker_code())
}

/// `xsk-client exec --json --socket S --ifname IF --queues Q --start-queue S0 -- argv...`
/// as nobody.
fn launch(env: &BrokerBed, queues: u32, start: u32, argv: &[&str]) -> ClientProcess {
    let q = queues.to_string();
    let s = start.to_string();
    let mut args = vec![
        "--ifname",
        env.tb.xsk_if.as_str(),
        "--queues",
        &q,
        "--start-queue",
        &s,
        "--",
    ];
    args.extend_from_slice(argv);
    ClientProcess::spawn("exec", env.broker.socket_path(), &args, None)
        .expect("spawning xsk-client exec")
}

/// The shell program the launcher runs: it starts a background child that
/// holds every inherited fd, reports itself as a JSON line, and exits 7 once
/// the test creates the file `go`.
const SCRIPT: &str = r#"
sleep 60 </dev/null >/dev/null 2>&1 &
printf '{"event":"started","pid":%d,"child":%d,"sock_fds":"%s","queues":"%s","start":"%s","ifindex":"%s","lease_fd":"%s","env_fds":"%s"}\n' \
  $$ $! "$2" "$3" "$4" "$5" "$6" "$XSK_BROKER_SOCK_FDS"
while [ ! -e "$1/go" ]; do sleep 0.02; done
exit 7
"#;

/// Kills a process on drop (the backgrounded child, if an assertion fails first).
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// 1. The launcher execs PROGRAM in place with exactly the leased socket fds
///    and the lease fd inherited, placeholders substituted, PROGRAM's exit
///    status passed on, and the lease held until PROGRAM *and* its
///    backgrounded child are gone, then reclaimed (queue free, XDP detached).
#[test]
fn exec_launcher_passes_exactly_the_leased_fds_and_lease_follows_program() {
    let Some(env) = BrokerBed::start(
        "exec_launcher_passes_exactly_the_leased_fds_and_lease_follows_program",
        4,
    ) else {
        return;
    };
    let dir = env.dir.path().to_str().unwrap().to_owned();
    let mut p = launch(
        &env,
        2,
        1,
        &[
            "/bin/sh",
            "-c",
            SCRIPT,
            "sh",
            &dir,
            "{sock-fds}",
            "{queues}",
            "{start-queue}",
            "{ifindex}",
            "{lease-fd}",
        ],
    );
    let exec = p.wait_event("exec", READY).unwrap();
    let started = p.wait_event("started", READY).unwrap();
    let pid = started["pid"].as_u64().unwrap() as u32;
    let child = KillOnDrop(started["child"].as_u64().unwrap() as i32);

    // exec in place: the launcher's pid is PROGRAM's, running as nobody with no capabilities.
    assert_eq!(pid, p.pid(), "the launcher must exec PROGRAM, not fork it");
    assert_eq!(exec["pid"].as_u64(), Some(u64::from(pid)));
    let (nobody, _) = nobody_ids().unwrap();
    assert_eq!(proc_status_uid(pid).unwrap(), nobody.as_raw());
    assert_eq!(cap_eff(pid).unwrap(), 0);

    // Placeholders.
    let sock_fds: Vec<i32> = started["sock_fds"]
        .as_str()
        .unwrap()
        .split(':')
        .map(|f| f.parse().unwrap())
        .collect();
    assert_eq!(sock_fds.len(), 2, "{started}");
    assert_eq!(started["queues"], "2");
    assert_eq!(started["start"], "1");
    assert_eq!(started["ifindex"], env.tb.xsk_ifindex.to_string());
    assert_eq!(started["env_fds"], started["sock_fds"]);
    assert_eq!(exec["queues"], serde_json::json!([1, 2]));
    let lease_fd: i32 = started["lease_fd"].as_str().unwrap().parse().unwrap();

    // Exactly stdin/stdout/stderr, the sockets and the lease fd, in PROGRAM
    // and in its child.
    // (The child is looked at once it runs `sleep`: between fork and exec the
    // shell juggles fds for the redirections.)
    wait_until("the child to exec sleep", Duration::from_secs(5), || {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", child.0)).ok()?;
        (comm.trim() == "sleep").then_some(())
    });
    let mut want: BTreeSet<i32> = [0, 1, 2, lease_fd].into();
    want.extend(&sock_fds);
    for (who, pid) in [("PROGRAM", pid), ("its child", child.0 as u32)] {
        // `sleep` opens (and closes) locale files as it starts: an inherited
        // fd stays, a transient one goes, so compare until it settles.
        let deadline = Instant::now() + Duration::from_secs(2);
        let fds = loop {
            let fds = proc_fds(pid).unwrap();
            let got: BTreeSet<i32> = fds.keys().copied().collect();
            if got == want || Instant::now() > deadline {
                break fds;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let got: BTreeSet<i32> = fds.keys().copied().collect();
        assert_eq!(got, want, "{who} inherited {fds:?}");
        for &fd in &sock_fds {
            assert_eq!(
                proc_socket_domain(pid, fd).unwrap(),
                libc::AF_XDP,
                "fd {fd} of {who}"
            );
        }
        assert_eq!(proc_socket_domain(pid, lease_fd).unwrap(), libc::AF_UNIX);
    }

    // The lease is held while PROGRAM runs.
    assert_eq!(
        try_open(&env, 1, 1).unwrap_err(),
        Some(ErrorCode::QueueBusy)
    );

    // PROGRAM exits 7: the status comes through.
    std::fs::write(env.dir.join("go"), b"").unwrap();
    let (stderr, status) = p.wait_failure(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(7), "{stderr}");

    // Its backgrounded child still holds the lease.
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        assert_eq!(
            try_open(&env, 1, 2).unwrap_err(),
            Some(ErrorCode::QueueBusy),
            "the lease must outlive PROGRAM while its child lives"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(env.tb.xdp_prog_id().unwrap().is_some());

    // Once the child is gone too, the broker reclaims everything.
    drop(child);
    wait_until(
        "the XDP program to be detached after the last holder exited",
        Duration::from_secs(5),
        || env.tb.xdp_prog_id().unwrap().is_none().then_some(()),
    );
    let lease = try_open(&env, 2, 1).expect("queues 1 and 2 are free again");
    assert_eq!(lease.info().sockets.len(), 2);
    let log = env.broker.log();
    assert!(log.contains("released: connection closed"), "{log}");
}

/// 1b. A refusal is printed with its reason and PROGRAM never runs; a missing
///     PROGRAM is exit status 127 and its lease is given back at once.
#[test]
fn exec_launcher_refusal_never_starts_program() {
    let Some(env) = BrokerBed::start("exec_launcher_refusal_never_starts_program", 2) else {
        return;
    };
    let holder = try_open(&env, 1, 0).unwrap();
    let marker = env.dir.join("ran");
    let touch = format!("touch {}", marker.display());
    let p = launch(&env, 1, 0, &["/bin/sh", "-c", &touch]);
    let (stderr, status) = p.wait_failure(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("queue_busy"), "{stderr}");
    assert!(stderr.contains("queue 0 of"), "{stderr}");
    assert!(stderr.contains("/bin/sh was not started"), "{stderr}");
    assert!(!marker.exists(), "PROGRAM ran although the broker refused");

    // An interface the broker does not know: refused the same way.
    let mut cmd = std::process::Command::new(xsk_testbed::workspace_bin("xsk-client").unwrap());
    cmd.args(["exec", "--socket"])
        .arg(env.broker.socket_path())
        .args(["--ifname", "xsk-nonesuch", "--", "/bin/sh", "-c"])
        .arg(&touch)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let out = xsk_testbed::spawn_unprivileged(&mut cmd)
        .unwrap()
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("no_such_interface"), "{err}");
    assert!(!marker.exists());

    // A PROGRAM that does not exist: 127, and the lease it had is released.
    let p = launch(&env, 1, 1, &["/nonexistent/qemu-system-x86_64"]);
    let (stderr, status) = p.wait_failure(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(127), "{stderr}");
    assert!(stderr.contains("cannot execute"), "{stderr}");
    let again = wait_until("queue 1 to be free", Duration::from_secs(5), || {
        try_open(&env, 1, 1).ok()
    });
    drop(again);
    drop(holder);
}

/// The example bridge's path, as a string for argv.
fn bridge_bin() -> String {
    workspace_bin("xsk-udp-bridge")
        .expect("the xsk-udp-bridge example (cargo test builds it)")
        .display()
        .to_string()
}

/// `n` UDP sockets on consecutive ports of 127.0.0.1; returns them and the first port.
fn consecutive_udp_sockets(n: u16) -> (Vec<UdpSocket>, u16) {
    let seed = std::process::id() as u16;
    for attempt in 0..200u16 {
        let base = 20000 + (seed.wrapping_add(attempt.wrapping_mul(97)) % 30000);
        let socks: Result<Vec<UdpSocket>, _> = (0..n)
            .map(|i| UdpSocket::bind(("127.0.0.1", base + i)))
            .collect();
        if let Ok(socks) = socks {
            for s in &socks {
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
            }
            return (socks, base);
        }
    }
    panic!("no {n} free consecutive UDP ports on 127.0.0.1");
}

/// 3. The emulator-like example, started by the launcher as nobody with no
///    capabilities and given its sockets as `--sock-fds {sock-fds}` like QEMU,
///    bridges every queue to its UDP socket both ways: frames from the peer
///    arrive as datagrams at the test's socket of the queue they came in on,
///    and datagrams the test sends to a queue's socket leave on that queue and
///    are captured at the peer.
#[test]
fn udp_bridge_under_launcher_carries_frames_both_ways_on_every_queue() {
    const QUEUES: u16 = 4;
    let Some(env) = BrokerBed::start(
        "udp_bridge_under_launcher_carries_frames_both_ways_on_every_queue",
        u32::from(QUEUES),
    ) else {
        return;
    };
    let tb = &env.tb;
    let (socks, base) = consecutive_udp_sockets(QUEUES);
    let remote = format!("127.0.0.1:{base}");
    let frames = TEST_FRAMES.to_string();
    let bridge = bridge_bin();
    let mut p = launch(
        &env,
        u32::from(QUEUES),
        0,
        &[
            &bridge,
            "--ifname",
            &tb.xsk_if,
            "--ifindex",
            "{ifindex}",
            "--queues",
            "{queues}",
            "--start-queue",
            "{start-queue}",
            "--sock-fds",
            "{sock-fds}",
            "--udp-remote",
            &remote,
            "--frames",
            &frames,
        ],
    );
    p.wait_event("exec", READY).unwrap();
    let ready = p.wait_event("ready", READY).unwrap();
    let pid = p.pid();
    let (nobody, _) = nobody_ids().unwrap();
    assert_eq!(proc_status_uid(pid).unwrap(), nobody.as_raw());
    assert_eq!(cap_eff(pid).unwrap(), 0);
    assert_eq!(ready["privileges"]["cap_eff"], 0);
    assert!(ready["privileges"]["af_xdp_socket_error"]
        .as_str()
        .unwrap_or_default()
        .starts_with("EPERM"));
    let locals: Vec<SocketAddr> = (0..usize::from(QUEUES))
        .map(|i| {
            let q = &ready["queues"][i];
            assert_eq!(q["queue_id"], i as u64, "{ready}");
            assert_eq!(q["remote"], format!("127.0.0.1:{}", base + i as u16));
            q["local"].as_str().unwrap().parse().unwrap()
        })
        .collect();

    // Peer -> xsk queue -> datagram at the queue's UDP socket.
    const FLOWS: u16 = 32;
    const PER_FLOW: u32 = 4;
    let payload =
        |flow: u16, seq: u32| format!("peer to bridge flow {flow} seq {seq}").into_bytes();
    send_udp(tb, FLOWS, PER_FLOW, payload).unwrap();
    let mut got: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut per_queue = vec![0usize; usize::from(QUEUES)];
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < usize::from(FLOWS) * PER_FLOW as usize && Instant::now() < deadline {
        for (i, s) in socks.iter().enumerate() {
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                assert_eq!(
                    from, locals[i],
                    "datagram for queue {i} from the wrong socket"
                );
                let Some(u) = parse_udp_frame(&buf[..n]) else {
                    continue; // e.g. IPv6 neighbour discovery
                };
                if u.dst_port != DEFAULT_DST_PORT {
                    continue;
                }
                assert_eq!((u.src_mac, u.dst_mac), (tb.peer_mac, tb.xsk_mac));
                assert_eq!((u.src_ip, u.dst_ip), (tb.peer_ip, tb.xsk_ip));
                assert!(got.insert(u.payload), "a frame arrived twice");
                per_queue[i] += 1;
            }
        }
    }
    let want: BTreeSet<Vec<u8>> = (0..FLOWS)
        .flat_map(|f| (0..PER_FLOW).map(move |s| payload(f, s)))
        .collect();
    assert_eq!(got, want, "frames per queue: {per_queue:?}");
    assert!(
        per_queue.iter().all(|&n| n > 0),
        "every queue must carry frames to its UDP socket: {per_queue:?}"
    );

    // Datagram at queue i's socket -> frame transmitted on queue i -> peer.
    const PER_QUEUE: usize = 8;
    let cap = Capture::start(tb).unwrap();
    let to_peer = |q: usize, k: usize| format!("bridge queue {q} to peer #{k}").into_bytes();
    for k in 0..PER_QUEUE {
        for (q, s) in socks.iter().enumerate() {
            let frame = build_udp_frame(
                tb.xsk_mac,
                tb.peer_mac,
                tb.xsk_ip,
                tb.peer_ip,
                7000 + q as u16,
                7100,
                &to_peer(q, k),
            );
            s.send_to(&frame, locals[q]).unwrap();
        }
    }
    let ours = |f: &Vec<u8>| parse_udp_frame(f).is_some_and(|u| u.dst_port == 7100);
    let captured = cap
        .collect(
            |fs| fs.iter().filter(|f| ours(f)).count() >= PER_QUEUE * usize::from(QUEUES),
            Duration::from_secs(10),
        )
        .unwrap();
    let captured: Vec<Vec<u8>> = captured.into_iter().filter(ours).collect();
    for f in &captured {
        assert!(frame_checksums_ok(f), "a frame arrived with bad checksums");
    }
    let got: BTreeSet<Vec<u8>> = captured
        .iter()
        .map(|f| parse_udp_frame(f).unwrap().payload)
        .collect();
    let want: BTreeSet<Vec<u8>> = (0..usize::from(QUEUES))
        .flat_map(|q| (0..PER_QUEUE).map(move |k| to_peer(q, k)))
        .collect();
    assert_eq!(got, want, "the peer captured {} frames", captured.len());

    // The bridge's own per-queue counters agree: each queue sent its 8.
    let (done, status) = p.stop().unwrap();
    assert!(status.success(), "{status}");
    for (i, q) in done["queues"].as_array().unwrap().iter().enumerate() {
        assert_eq!(q["queue_id"], i as u64);
        assert_eq!(q["frames_from_udp"], PER_QUEUE as u64, "{done}");
        assert_eq!(q["counters"]["tx_packets"], PER_QUEUE as u64, "{done}");
        assert!(
            q["frames_to_udp"].as_u64().unwrap() >= per_queue[i] as u64,
            "{done}"
        );
    }
    wait_until(
        "the XDP program to be detached",
        Duration::from_secs(5),
        || env.tb.xdp_prog_id().unwrap().is_none().then_some(()),
    );
}

/// 2. A program given a bad sock-fds list says exactly what is wrong with it.
#[test]
fn sock_fds_faults_are_named_by_the_receiving_program() {
    let Some(env) = BrokerBed::start("sock_fds_faults_are_named_by_the_receiving_program", 2)
    else {
        return;
    };
    let bridge = bridge_bin();
    let cases: [(u32, &str, &str, &str); 5] = [
        (2, "{sock-fds}", "1", "sock-fds has 1 fd(s) but queues=2"),
        (
            1,
            "{lease-fd}",
            "1",
            "is a socket of address family 1 (AF_UNIX), not AF_XDP",
        ),
        (2, "{sock-fds}:{sock-fds}", "1", "twice"),
        (
            1,
            "0",
            "1",
            "fd 0 is a character device, not an AF_XDP socket",
        ),
        (1, "999", "1", "fd 999 is not open in this process (EBADF)"),
    ];
    for (queues, list, lease_queues, needle) in cases {
        let q = queues.to_string();
        let p = launch(
            &env,
            lease_queues.parse().unwrap(),
            0,
            &[
                &bridge,
                "--ifname",
                &env.tb.xsk_if,
                "--ifindex",
                "{ifindex}",
                "--queues",
                &q,
                "--sock-fds",
                list,
                "--udp-remote",
                "127.0.0.1:9",
            ],
        );
        let (stderr, status) = p.wait_failure(Duration::from_secs(10)).unwrap();
        assert_eq!(status.code(), Some(1), "{list}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{list}: {needle:?} not in {stderr}"
        );
    }
    // The lease of every run ended with its program.
    wait_until(
        "the XDP program to be detached",
        Duration::from_secs(5),
        || env.tb.xdp_prog_id().unwrap().is_none().then_some(()),
    );
}
