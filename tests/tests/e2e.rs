//! End-to-end tests: the real broker in its own network namespace, real veth
//! pairs, real XDP programs and AF_XDP sockets, and the real `xsk-client` tool
//! running as uid nobody with no capabilities.
//!
//! Each test builds a fresh test bed with unique names; everything is torn
//! down by RAII even when an assertion fails. Tests take a lock so they run
//! one at a time (they share uid nobody's locked-memory budget).

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use xsk_broker_protocol::{
    ErrorCode, FrameHeader, Hello, OpenRequest, Request, Response, TransportError,
};
use xsk_client::{BrokerClient, SocketConfig};
use xsk_testbed::{
    build_udp_frame, cap_eff, expect_error, frame_checksums_ok, nobody_ids, parse_udp_frame,
    proc_status_uid, require_root, send_udp, serial_guard, spawn_unprivileged, udp_roundtrip,
    wait_until, workspace_bin, BrokerBed, BrokerProcess, Capture, ClientProcess, RawPeer as Raw,
    TempDir, Testbed, DEFAULT_DST_PORT, TEST_FRAMES,
};

const READY: Duration = Duration::from_secs(15);

fn frames_arg() -> String {
    TEST_FRAMES.to_string()
}

/// Check what a user would check first: the client has no capabilities, runs
/// as nobody, could not create an AF_XDP socket itself, and got what it asked.
fn assert_unprivileged(c: &ClientProcess, ready: &Value) {
    let (nobody, _) = nobody_ids().unwrap();
    assert_eq!(cap_eff(c.pid()).unwrap(), 0, "client CapEff must be 0");
    assert_eq!(proc_status_uid(c.pid()).unwrap(), nobody.as_raw());
    assert_eq!(ready["privileges"]["cap_eff"], 0, "{ready}");
    let own = ready["privileges"]["af_xdp_socket_error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        own.starts_with("EPERM"),
        "the client's own socket(AF_XDP) must fail with EPERM, got {own:?}"
    );
}

fn udp_payload(flow: u16, seq: u32) -> Vec<u8> {
    format!("xsk-broker e2e flow {flow} seq {seq} ")
        .repeat(3)
        .into_bytes()
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// 1. A client with CapEff 0 whose own socket(AF_XDP) fails with EPERM
///    receives N UDP packets sent from the peer; payloads verified.
#[test]
fn unprivileged_client_receives_udp_from_peer() {
    let Some(env) = BrokerBed::start("unprivileged_client_receives_udp_from_peer", 1) else {
        return;
    };
    const N: u32 = 200;
    // 1024 frames give a 256-entry fill ring: the whole burst fits, so no
    // datagram can be dropped for want of a buffer.
    let mut c = env.client(
        "rx",
        1,
        0,
        &[
            "--frames",
            "1024",
            "--print-frames",
            "--require-unprivileged",
        ],
    );
    let ready = c.wait_event("ready", READY).unwrap();
    assert_unprivileged(&c, &ready);
    assert_eq!(ready["ifindex"], env.tb.xsk_ifindex);
    assert_eq!(ready["queues"], serde_json::json!([0]));

    send_udp(&env.tb, 1, N, udp_payload).unwrap();
    let is_ours = |f: &Value| {
        parse_udp_frame(&hex_decode(f["hex"].as_str().unwrap_or("")))
            .is_some_and(|u| u.dst_port == DEFAULT_DST_PORT)
    };
    let frames = c
        .collect_frames(
            |fr| fr.iter().filter(|f| is_ours(f)).count() >= N as usize,
            Duration::from_secs(10),
        )
        .unwrap();
    let got: Vec<Vec<u8>> = frames
        .iter()
        .filter_map(|f| parse_udp_frame(&hex_decode(f["hex"].as_str()?)))
        .filter(|u| u.dst_port == DEFAULT_DST_PORT)
        .map(|u| {
            assert_eq!(u.src_mac, env.tb.peer_mac);
            assert_eq!(u.dst_mac, env.tb.xsk_mac);
            assert_eq!((u.src_ip, u.dst_ip), (env.tb.peer_ip, env.tb.xsk_ip));
            u.payload
        })
        .collect();
    let want: Vec<Vec<u8>> = (0..N).map(|s| udp_payload(0, s)).collect();
    assert_eq!(
        got.len(),
        want.len(),
        "received {} of {N} datagrams",
        got.len()
    );
    assert_eq!(
        got, want,
        "payloads must arrive intact and in order on one queue"
    );

    let (done, status) = c.stop().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        done["rx_packets"].as_u64().unwrap() >= u64::from(N),
        "{done}"
    );
}

/// 2. The unprivileged client transmits N frames that arrive at the peer,
///    verified by a capture there.
#[test]
fn unprivileged_client_transmits_to_peer() {
    let Some(env) = BrokerBed::start("unprivileged_client_transmits_to_peer", 1) else {
        return;
    };
    const N: usize = 300;
    let tb = &env.tb;
    let cap = Capture::start(tb).unwrap();
    let payload = |i: usize| format!("from the sandbox, frame {i:04}").into_bytes();
    let frames: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            build_udp_frame(
                tb.xsk_mac,
                tb.peer_mac,
                tb.xsk_ip,
                tb.peer_ip,
                7000,
                7001,
                &payload(i),
            )
        })
        .collect();
    let stdin: String = frames
        .iter()
        .map(|f| f.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
        .collect();
    let f = frames_arg();
    let mut c = ClientProcess::spawn(
        "tx",
        env.broker.socket_path(),
        &[
            "--ifname",
            &tb.xsk_if,
            "--frames",
            &f,
            "--require-unprivileged",
        ],
        Some(stdin.into_bytes()),
    )
    .unwrap();
    let ready = c.wait_event("ready", READY).unwrap();
    assert_unprivileged(&c, &ready);
    let (done, status) = c.wait(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(done["tx_packets"], N as u64, "{done}");

    let ours = |f: &Vec<u8>| parse_udp_frame(f).is_some_and(|u| u.dst_port == 7001);
    let got = cap
        .collect(
            |fs| fs.iter().filter(|f| ours(f)).count() >= N,
            Duration::from_secs(10),
        )
        .unwrap();
    let got: Vec<Vec<u8>> = got.into_iter().filter(ours).collect();
    assert_eq!(
        got.len(),
        N,
        "the peer captured {} of {N} frames",
        got.len()
    );
    for (i, f) in got.iter().enumerate() {
        assert!(frame_checksums_ok(f), "frame {i} has bad checksums");
    }
    let got_payloads: BTreeSet<Vec<u8>> = got
        .iter()
        .map(|f| parse_udp_frame(f).unwrap().payload)
        .collect();
    let want: BTreeSet<Vec<u8>> = (0..N).map(payload).collect();
    assert_eq!(got_payloads, want);
}

/// 3. On a multi-queue veth every leased queue carries traffic both ways.
fn every_queue_carries_traffic(test: &str, queues: u32) {
    let Some(env) = BrokerBed::start(test, queues) else {
        return;
    };
    let mut c = env.client("echo", queues, 0, &["--require-unprivileged"]);
    let ready = c.wait_event("ready", READY).unwrap();
    assert_unprivileged(&c, &ready);
    let want: Vec<u32> = (0..queues).collect();
    assert_eq!(ready["queues"], serde_json::json!(want));

    // 32 flows hash over the peer's tx queues, hence over our rx queues.
    let rt = udp_roundtrip(&env.tb, 32, 8, Duration::from_secs(5)).unwrap();
    let per_queue_xdp = env.tb.xsk_rx_queue_xdp_packets().unwrap();
    let (done, status) = c.stop().unwrap();
    if let Err(e) = rt.verify() {
        panic!("{e:#}\nclient: {done:#}\nkernel xdp packets per rx queue: {per_queue_xdp:?}");
    }
    assert!(status.success());
    let qs = done["queues"].as_array().unwrap();
    assert_eq!(qs.len(), queues as usize);
    for q in qs {
        let rx = q["counters"]["rx_packets"].as_u64().unwrap();
        let tx = q["counters"]["tx_packets"].as_u64().unwrap();
        assert!(
            rx > 0 && tx > 0,
            "queue {} carried no traffic: {q}",
            q["queue_id"]
        );
    }
    for (i, n) in per_queue_xdp.iter().take(queues as usize).enumerate() {
        assert!(
            *n > 0,
            "kernel saw no XDP packets on rx queue {i}: {per_queue_xdp:?}"
        );
    }
}

#[test]
fn two_queues_each_carry_traffic() {
    every_queue_carries_traffic("two_queues_each_carry_traffic", 2);
}

#[test]
fn four_queues_each_carry_traffic() {
    every_queue_carries_traffic("four_queues_each_carry_traffic", 4);
}

/// Forced skb (generic) mode works as well, and is what is reported.
#[test]
fn skb_mode_echo_roundtrip() {
    let Some(env) = BrokerBed::start("skb_mode_echo_roundtrip", 1) else {
        return;
    };
    let mut c = env.client("echo", 1, 0, &["--mode", "skb"]);
    let ready = c.wait_event("ready", READY).unwrap();
    assert_eq!(ready["mode"], "skb");
    let attached = env.tb.xdp_attachments().unwrap();
    assert_eq!(attached.len(), 1, "{attached:?}");
    assert_eq!(attached[0].1, ready["program_id"].as_u64().unwrap() as u32);
    udp_roundtrip(&env.tb, 4, 16, Duration::from_secs(5))
        .unwrap()
        .verify()
        .unwrap();
    c.stop().unwrap();
}

/// 4. A second client asking for a leased queue gets "queue busy".
#[test]
fn leased_queue_is_busy_for_others() {
    let Some(env) = BrokerBed::start("leased_queue_is_busy_for_others", 4) else {
        return;
    };
    let mut a = env.client("echo", 2, 0, &[]);
    a.wait_event("ready", READY).unwrap();

    // The tool, unprivileged: exits 1 with the code and the queue named.
    let b = env.client("rx", 1, 1, &[]);
    let (stderr, status) = b.wait_failure(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("queue_busy"), "{stderr}");
    assert!(stderr.contains("queue 1 of"), "{stderr}");

    // The library: a typed code.
    let err = BrokerClient::connect(env.broker.socket_path())
        .unwrap()
        .open(OpenRequest::new(env.tb.xsk_if.clone(), 3))
        .unwrap_err();
    assert_eq!(err.broker_code(), Some(ErrorCode::QueueBusy), "{err}");

    // Queues nobody holds are still granted.
    let mut c = env.client("rx", 2, 2, &[]);
    let ready = c.wait_event("ready", READY).unwrap();
    assert_eq!(ready["queues"], serde_json::json!([2, 3]));
    c.stop().unwrap();
    a.stop().unwrap();
}

/// 5. SIGKILL of a client frees its queues, and after the last lease ends no
///    XDP program is left on the interface.
#[test]
fn sigkill_frees_queues_and_last_lease_detaches() {
    let Some(env) = BrokerBed::start("sigkill_frees_queues_and_last_lease_detaches", 2) else {
        return;
    };
    assert_eq!(env.tb.xdp_prog_id().unwrap(), None);
    let mut a = env.client("echo", 2, 0, &[]);
    let ready = a.wait_event("ready", READY).unwrap();
    let prog = env.tb.xdp_prog_id().unwrap().expect("XDP program attached");
    assert_eq!(u64::from(prog), ready["program_id"].as_u64().unwrap());
    a.kill().unwrap();

    let lease = wait_until(
        "the killed client's queues to be free",
        Duration::from_secs(5),
        || {
            BrokerClient::connect(env.broker.socket_path())
                .unwrap()
                .open(OpenRequest::new(env.tb.xsk_if.clone(), 2))
                .ok()
        },
    );
    assert_eq!(lease.info().sockets.len(), 2);
    assert!(env.tb.xdp_prog_id().unwrap().is_some());
    drop(lease);
    wait_until(
        "the XDP program to be detached",
        Duration::from_secs(5),
        || env.tb.xdp_prog_id().unwrap().is_none().then_some(()),
    );
    let log = env.broker.log();
    assert!(log.contains("released: connection closed"), "{log}");
    assert!(log.contains("detached the XSK program"), "{log}");
}

fn open_req(env: &BrokerBed, queues: u32, start: u32) -> Request {
    Request::Open(OpenRequest {
        start_queue: start,
        ..OpenRequest::new(env.tb.xsk_if.clone(), queues)
    })
}

/// 6. Bad input gets its clear error and the broker keeps serving; over 1,000
///    open/close cycles its open fd count does not grow.
#[test]
fn bad_input_gets_clear_errors_and_nothing_leaks() {
    let Some(env) = BrokerBed::start("bad_input_gets_clear_errors_and_nothing_leaks", 2) else {
        return;
    };
    let r = Raw::connect(env.broker.socket_path());
    expect_error(
        r.call(&open_req(&env, 1, 0)),
        ErrorCode::BadRequest,
        "first message must be hello",
    );
    expect_error(
        r.call(&Request::Hello(Hello {
            version: 99,
            features: Vec::new(),
        })),
        ErrorCode::UnsupportedVersion,
        "version 99",
    );
    let r = Raw::hello(env.broker.socket_path());
    expect_error(
        r.raw(b"{\"op\": \"open\", "),
        ErrorCode::BadRequest,
        "malformed JSON",
    );
    expect_error(r.raw(b"\xff\xfe"), ErrorCode::BadRequest, "malformed JSON");
    expect_error(
        r.raw(br#"{"op":"format_disk"}"#),
        ErrorCode::BadRequest,
        "unknown operation \"format_disk\"",
    );
    expect_error(
        r.raw(br#"{"op":"open","ifname":"x","queues":1,"queues":2}"#),
        ErrorCode::BadRequest,
        "duplicate field",
    );
    expect_error(
        r.call(&open_req(&env, 0, 0)),
        ErrorCode::QueueOutOfRange,
        "got 0",
    );
    expect_error(
        r.call(&open_req(&env, 65, 0)),
        ErrorCode::QueueOutOfRange,
        "got 65",
    );
    expect_error(
        r.call(&open_req(&env, 1, 2)),
        ErrorCode::QueueOutOfRange,
        "has 2 rx queue(s)",
    );
    expect_error(
        r.call(&Request::Open(OpenRequest::new("xsk-nonesuch", 1))),
        ErrorCode::NoSuchInterface,
        "\"xsk-nonesuch\" not found",
    );
    // A declared fd count that does not match: refused, stream stays usable.
    r.0.send_raw(br#"{"op":"release"}"#, 3, &[]).unwrap();
    expect_error(
        r.answer(),
        ErrorCode::BadRequest,
        "declared 3 fds but carried 0",
    );
    // fds sent to the broker are closed and refused.
    let before = env.broker.open_fd_count().unwrap();
    let f = std::fs::File::open("/dev/null").unwrap();
    r.0.send(&Request::Release, &[f.as_fd(), f.as_fd()])
        .unwrap();
    expect_error(
        r.answer(),
        ErrorCode::BadRequest,
        "accepts no file descriptors",
    );
    assert_eq!(env.broker.open_fd_count().unwrap(), before);
    // Still serving on the same connection.
    assert!(matches!(r.call(&open_req(&env, 1, 0)), Response::Opened(_)));
    drop(r);

    // An oversize frame: an error, then the connection is closed.
    let r = Raw::hello(env.broker.socket_path());
    let big = FrameHeader {
        len: 1 << 20,
        fds: 0,
    };
    std::io::Write::write_all(&mut r.0.stream(), &big.encode()).unwrap();
    expect_error(r.answer(), ErrorCode::BadRequest, "exceeds the limit");
    assert!(matches!(r.0.recv(), Err(TransportError::Closed)));

    // The broker keeps serving everyone else. (Queue 0 is free once the
    // broker has seen the first connection above close: it releases
    // asynchronously, so wait for that.)
    let holder = wait_until("queue 0 released", Duration::from_secs(5), || {
        BrokerClient::connect(env.broker.socket_path())
            .unwrap()
            .open(OpenRequest::new(env.tb.xsk_if.clone(), 1))
            .ok()
    });

    // 1,000 open/close cycles on queue 1 while queue 0 is held.
    let settle = |target: usize| {
        wait_until(
            "the broker's fd count to settle",
            Duration::from_secs(5),
            || {
                let n = env.broker.open_fd_count().unwrap();
                (n <= target).then_some(n)
            },
        )
    };
    let baseline = env.broker.open_fd_count().unwrap();
    for i in 0..1000 {
        let lease = BrokerClient::connect(env.broker.socket_path())
            .unwrap()
            .open(OpenRequest {
                start_queue: 1,
                ..OpenRequest::new(env.tb.xsk_if.clone(), 1)
            });
        let lease = match lease {
            Ok(l) => l,
            // The previous cycle's close may not be processed yet.
            Err(e) if e.broker_code() == Some(ErrorCode::QueueBusy) => {
                settle(baseline);
                BrokerClient::connect(env.broker.socket_path())
                    .unwrap()
                    .open(OpenRequest {
                        start_queue: 1,
                        ..OpenRequest::new(env.tb.xsk_if.clone(), 1)
                    })
                    .unwrap_or_else(|e| panic!("cycle {i}: {e}"))
            }
            Err(e) => panic!("cycle {i}: {e}"),
        };
        assert_eq!(lease.info().sockets[0].queue_id, 1);
        drop(lease);
    }
    let after = settle(baseline);
    eprintln!("broker open fds: {baseline} before 1,000 open/close cycles, {after} after");
    assert!(after <= baseline, "fds grew from {baseline} to {after}");
    drop(holder);
    wait_until(
        "the XDP program to be detached",
        Duration::from_secs(5),
        || env.tb.xdp_prog_id().unwrap().is_none().then_some(()),
    );
}

/// The broker never replaces an XDP program it did not attach.
#[test]
fn foreign_xdp_program_is_left_alone() {
    let Some(env) = BrokerBed::start("foreign_xdp_program_is_left_alone", 1) else {
        return;
    };
    let foreign = env.tb.attach_xdp_pass().unwrap();
    let id = foreign.prog_id().unwrap();
    let err = BrokerClient::connect(env.broker.socket_path())
        .unwrap()
        .open(OpenRequest::new(env.tb.xsk_if.clone(), 1))
        .unwrap_err();
    // foreign_program (error-codes-2, which the library negotiates; a 1.0
    // client gets queue_busy, tests/tests/compat.rs).
    assert_eq!(err.broker_code(), Some(ErrorCode::ForeignProgram), "{err}");
    assert!(
        err.to_string().contains(&format!("program id {id}")),
        "{err}"
    );
    assert_eq!(env.tb.xdp_prog_id().unwrap(), Some(id));
    drop(foreign);
    let lease = BrokerClient::connect(env.broker.socket_path())
        .unwrap()
        .open(OpenRequest::new(env.tb.xsk_if.clone(), 1))
        .unwrap();
    assert_ne!(lease.info().program_id, id);
}

/// The broker names the capabilities it lacks, and what each is for.
#[test]
fn broker_without_capabilities_names_what_is_missing() {
    if !require_root("broker_without_capabilities_names_what_is_missing") {
        return;
    }
    let dir = TempDir::new("xsk-caps").unwrap();
    let sock = dir.join("b.sock");
    let mut cmd = std::process::Command::new(workspace_bin("xsk-brokerd").unwrap());
    cmd.arg("--socket")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let out = spawn_unprivileged(&mut cmd)
        .unwrap()
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "CAP_NET_ADMIN (to attach and detach XDP programs",
        "CAP_NET_RAW (to create AF_XDP sockets)",
        "CAP_BPF or CAP_SYS_ADMIN",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in: {err}");
    }
    assert!(!sock.exists(), "the socket file must not be left behind");
}

/// The broker keeps only the capabilities it needs.
#[test]
fn broker_drops_capabilities_it_does_not_need() {
    let Some(env) = BrokerBed::start("broker_drops_capabilities_it_does_not_need", 1) else {
        return;
    };
    // NET_ADMIN, NET_RAW, BPF, and PERFMON (kept when held, for the
    // confinement LSM program; the test runs as root, which holds it).
    let want = (1u64 << 12) | (1 << 13) | (1 << 38) | (1 << 39);
    // The socket accepts connections (into its backlog) a moment before the
    // broker drops the rest and starts serving: wait for the drop.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut eff = cap_eff(env.broker.pid()).unwrap();
    while eff != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        eff = cap_eff(env.broker.pid()).unwrap();
    }
    assert_eq!(eff, want, "CapEff {eff:016x}");
}

/// Several clients are served at once: silent or half-sent connections never
/// hold up a well-behaved client.
#[test]
fn silent_and_half_sent_clients_do_not_block_others() {
    let Some(env) = BrokerBed::start("silent_and_half_sent_clients_do_not_block_others", 2) else {
        return;
    };
    // Connected and silent; a partial header; a full header with half a body;
    // a client holding a lease that never reads again.
    let silent = UnixStream::connect(env.broker.socket_path()).unwrap();
    let mut partial = UnixStream::connect(env.broker.socket_path()).unwrap();
    std::io::Write::write_all(&mut partial, &[40, 0]).unwrap();
    let mut half = UnixStream::connect(env.broker.socket_path()).unwrap();
    let header = FrameHeader { len: 100, fds: 0 }.encode();
    std::io::Write::write_all(&mut half, &header).unwrap();
    std::io::Write::write_all(&mut half, br#"{"op":"hel"#).unwrap();
    let holder = Raw::hello(env.broker.socket_path());
    assert!(matches!(
        holder.call(&open_req(&env, 1, 0)),
        Response::Opened(_)
    ));

    let started = Instant::now();
    let lease = BrokerClient::connect(env.broker.socket_path())
        .unwrap()
        .open(OpenRequest {
            start_queue: 1,
            ..OpenRequest::new(env.tb.xsk_if.clone(), 1)
        })
        .unwrap();
    let took = started.elapsed();
    assert_eq!(lease.info().sockets[0].queue_id, 1);
    assert!(
        took < Duration::from_secs(2),
        "a good client waited {took:?}"
    );
    drop((silent, partial, half, holder));
}

/// Start an unprivileged `xsk-client rx` with `args` and return its failure text.
fn refused(socket: &std::path::Path, args: &[&str]) -> String {
    let c = ClientProcess::spawn("rx", socket, args, None).unwrap();
    let (stderr, status) = c.wait_failure(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not_permitted"), "{stderr}");
    stderr
}

/// The policy file decides who may lease what, and a denial names the rule.
#[test]
fn policy_decides_who_leases_what_and_names_the_rule() {
    if !require_root("policy_decides_who_leases_what_and_names_the_rule") {
        return;
    }
    let _lock = serial_guard().unwrap();
    let tb = Testbed::new(2).unwrap();
    let dir = TempDir::new("xsk-policy").unwrap();
    let policy = dir.join("policy.json");
    std::fs::write(
        &policy,
        format!(
            r#"{{"version": 1, "rules": [
                {{"name": "one-queue", "users": ["nobody"], "interfaces": ["{}"],
                  "max_queues": 1, "modes": ["auto", "native"], "copy": ["auto", "copy"]}}
            ]}}"#,
            tb.xsk_if
        ),
    )
    .unwrap();
    let broker = BrokerProcess::spawn_with_args(
        &tb.xsk,
        dir.path(),
        &["--policy", policy.to_str().unwrap()],
    )
    .unwrap();
    let sock = broker.socket_path();
    let f = frames_arg();
    let base = ["--ifname", tb.xsk_if.as_str(), "--frames", f.as_str()];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    let e = refused(sock, &with(&["--queues", "2"]));
    assert!(
        e.contains("rule \"one-queue\" allows at most 1 queue(s) per lease; 2 were asked for"),
        "{e}"
    );
    let e = refused(sock, &with(&["--mode", "skb"]));
    assert!(
        e.contains("rule \"one-queue\" does not allow XDP mode skb (allowed: auto, native)"),
        "{e}"
    );
    let e = refused(sock, &with(&["--copy", "zero-copy"]));
    assert!(e.contains("does not allow copy setting zero-copy"), "{e}");
    let e = refused(sock, &with(&["--via-map", "fd"]));
    assert!(
        e.contains("rule \"one-queue\" does not allow the map flow"),
        "{e}"
    );
    let e = refused(sock, &["--ifname", "lo", "--frames", f.as_str()]);
    assert!(e.contains("does not allow interface \"lo\""), "{e}");

    // What the rule allows is granted.
    let mut c = ClientProcess::spawn("rx", sock, &with(&["--queues", "1"]), None).unwrap();
    let ready = c.wait_event("ready", READY).unwrap();
    assert_eq!(ready["queues"], serde_json::json!([0]));
    c.stop().unwrap();

    // Every decision is logged with the peer's identity (the release is
    // logged as the broker notices the closed connection).
    let log = wait_until("the release to be logged", Duration::from_secs(5), || {
        let log = broker.log();
        log.contains("released").then_some(log)
    });
    let (nobody, _) = nobody_ids().unwrap();
    let refusals = log
        .lines()
        .filter(|l| l.contains("refused") && l.contains(&format!("uid={}", nobody.as_raw())))
        .count();
    assert_eq!(refusals, 5, "{log}");
    assert!(log.contains("granted"), "{log}");
    assert!(log.contains("released"), "{log}");
}

/// Without a policy file only root may lease or read the status.
#[test]
fn without_a_policy_only_root_may_lease() {
    if !require_root("without_a_policy_only_root_may_lease") {
        return;
    }
    let _lock = serial_guard().unwrap();
    let tb = Testbed::new(1).unwrap();
    let dir = TempDir::new("xsk-rootonly").unwrap();
    let broker = BrokerProcess::spawn_without_policy(&tb.xsk, dir.path(), &[]).unwrap();
    let f = frames_arg();
    let e = refused(
        broker.socket_path(),
        &["--ifname", &tb.xsk_if, "--frames", &f],
    );
    assert!(
        e.contains("no policy is loaded, so only root may use this broker"),
        "{e}"
    );
    // Root is served.
    let lease = BrokerClient::connect(broker.socket_path())
        .unwrap()
        .open(OpenRequest::new(tb.xsk_if.clone(), 1))
        .unwrap();
    assert_eq!(lease.info().sockets.len(), 1);
    assert!(broker.log().contains("no policy file: only root may lease"));
}

/// The control socket's owner, group and mode come from the options.
#[test]
fn socket_owner_group_and_mode_are_set_by_options() {
    if !require_root("socket_owner_group_and_mode_are_set_by_options") {
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let _lock = serial_guard().unwrap();
    let tb = Testbed::new(1).unwrap();
    let dir = TempDir::new("xsk-owner").unwrap();
    let sock = dir.join("owned.sock");
    let policy = dir.join("policy.json");
    std::fs::write(&policy, xsk_testbed::TEST_POLICY).unwrap();
    let (nobody, nogroup) = nobody_ids().unwrap();
    let mut broker = tb
        .xsk
        .exec_command([workspace_bin("xsk-brokerd").unwrap().as_os_str()])
        .arg("--socket")
        .arg(&sock)
        .args(["--socket-owner", "nobody", "--socket-group"])
        .arg(nogroup.as_raw().to_string())
        .args(["--socket-mode", "0600", "--policy"])
        .arg(&policy)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the broker's socket", Duration::from_secs(10), || {
        UnixStream::connect(&sock).ok().map(|_| ())
    });
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.permissions().mode() & 0o777),
        (nobody.as_raw(), nogroup.as_raw(), 0o600)
    );
    // nobody, the owner, can connect through mode 0600 and lease.
    let f = frames_arg();
    let mut c =
        ClientProcess::spawn("rx", &sock, &["--ifname", &tb.xsk_if, "--frames", &f], None).unwrap();
    c.wait_event("ready", READY).unwrap();
    c.stop().unwrap();
    let _ = broker.kill();
    let _ = broker.wait();
}

/// The library raises the kernel's copy-mode transmit budget to its batch
/// (Linux 6.17+), so one `transmit` of a whole batch makes one `sendto` and
/// every frame reaches the peer; a budget the kernel refuses is a clear
/// error that names the range.
#[test]
fn one_wakeup_sends_a_whole_batch() {
    let Some(env) = BrokerBed::start("one_wakeup_sends_a_whole_batch", 1) else {
        return;
    };
    let tb = &env.tb;
    let cap = Capture::start(tb).unwrap();
    let mut lease = BrokerClient::connect(env.broker.socket_path())
        .unwrap()
        .open(OpenRequest::new(tb.xsk_if.clone(), 1))
        .unwrap();
    let config = SocketConfig::with_frame_count(512); // rings of 128, batch 64
    let mut socks = lease.adopt_all(&config).unwrap();
    let sock = &mut socks[0];
    assert_eq!(
        sock.tx_budget(),
        64,
        "adopt should raise the budget to the batch"
    );

    let err = sock.set_tx_budget(16).unwrap_err().to_string();
    assert!(
        err.contains("tx budget 16") && err.contains("between 32 and the tx ring size (128)"),
        "{err}"
    );
    assert_eq!(sock.tx_budget(), 64, "a refused budget changes nothing");

    let frames: Vec<Vec<u8>> = (0..64u16)
        .map(|i| {
            let payload = format!("batch frame {i:02}").into_bytes();
            build_udp_frame(
                tb.xsk_mac,
                tb.peer_mac,
                tb.xsk_ip,
                tb.peer_ip,
                7000,
                7002,
                &payload,
            )
        })
        .collect();
    let before = sock.counters().wakeups;
    assert_eq!(sock.transmit(&frames).unwrap(), 64);
    assert_eq!(
        sock.counters().wakeups - before,
        1,
        "64 frames with a budget of 64 need one sendto"
    );
    let ours = |f: &Vec<u8>| parse_udp_frame(f).is_some_and(|u| u.dst_port == 7002);
    let got = cap
        .collect(
            |fs| fs.iter().filter(|f| ours(f)).count() >= 64,
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(got.into_iter().filter(ours).count(), 64);
    wait_until("all 64 completions", Duration::from_secs(5), || {
        sock.complete_tx();
        (sock.outstanding_tx() == 0).then_some(())
    });
}
