//! End-to-end tests of the broker facing hostile or careless peers: connection,
//! lease and queue limits; idle and stalled connections; malformed frames at
//! and past the limits, fds sent to the broker, truncated control messages; and
//! an interface that disappears while leased. Each runs the real broker in a
//! fresh network namespace and checks what an operator would check: the error
//! a peer gets (code, and the limit or field named), that the broker keeps
//! serving, and that it leaks no fd.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use xsk_broker_protocol::{
    decode_response, Channel, ErrorCode, EventKind, FrameHeader, OpenRequest, Request, Response,
    StatusRequest, TransportError, MAX_MESSAGE_LEN,
};
use xsk_client::BrokerClient;
use xsk_testbed::{expect_error, wait_until, BrokerBed, RawPeer as Raw};

const READY: Duration = Duration::from_secs(15);

fn open_req(env: &BrokerBed, queues: u32, start: u32) -> Request {
    Request::Open(OpenRequest {
        start_queue: start,
        ..OpenRequest::new(env.tb.xsk_if.clone(), queues)
    })
}

/// Wait until the broker's open fd count is back to `baseline` (connection
/// threads finish a moment after their peers go).
fn settle_fds(env: &BrokerBed, baseline: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = env.broker.open_fd_count().unwrap();
        if n <= baseline {
            return n;
        }
        if Instant::now() > deadline {
            panic!(
                "the broker has {n} fds open, {baseline} before: {:#?}",
                env.broker.open_fds().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the broker answered with an error and then closed the connection
/// (EOF), within the read timeout.
fn error_then_eof(r: &Raw) -> String {
    let e = match r.0.recv() {
        Ok(got) => match decode_response(&got.body).unwrap() {
            Response::Error(e) => e.message,
            other => panic!("expected an error, got {other:?}"),
        },
        Err(e) => panic!("expected an error reply, got {e}"),
    };
    assert!(
        matches!(r.0.recv(), Err(TransportError::Closed)),
        "the broker must close the connection after: {e}"
    );
    e
}

/// Connections without a lease that send nothing, half a header, half a
/// body, or trickle a frame byte by byte are answered and closed after
/// `--idle-timeout`; a connection holding a lease is never closed for being
/// silent.
#[test]
fn idle_and_stalled_connections_are_closed_but_lease_holders_are_not() {
    let Some(env) = BrokerBed::start_with_args(
        "idle_and_stalled_connections_are_closed_but_lease_holders_are_not",
        2,
        &["--idle-timeout", "1"],
    ) else {
        return;
    };
    let baseline = env.broker.open_fd_count().unwrap();
    let holder = Raw::hello(env.broker.socket_path());
    assert!(matches!(
        holder.call(&open_req(&env, 1, 0)),
        Response::Opened(_)
    ));

    let started = Instant::now();
    let silent = Raw::connect(env.broker.socket_path());
    let greeted = Raw::hello(env.broker.socket_path()); // said hello, then nothing
    let half_header = Raw::connect(env.broker.socket_path());
    half_header.write(&[40, 0]);
    let half_body = Raw::connect(env.broker.socket_path());
    half_body.write(&FrameHeader { len: 100, fds: 0 }.encode());
    half_body.write(br#"{"op":"hel"#);
    // A slow loris: one byte every 300 ms, never finishing within 1 s.
    let loris = Raw::connect(env.broker.socket_path());
    let loris_stream = loris.0.stream().try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        let frame = [
            &FrameHeader { len: 17, fds: 0 }.encode()[..],
            b"{\"op\":\"status\"}  ",
        ]
        .concat();
        for b in frame {
            if (&loris_stream).write_all(&[b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });

    for (what, r, needle) in [
        ("silent", &silent, "no request within 1 s"),
        ("greeted", &greeted, "no request within 1 s"),
        ("half header", &half_header, "sent 2 of 8 bytes"),
        ("half body", &half_body, "sent 10 of 100 bytes"),
        ("slow loris", &loris, "bytes of a frame and then nothing"),
    ] {
        let msg = error_then_eof(r);
        assert!(msg.contains(needle), "{what}: {msg:?} lacks {needle:?}");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "closing idle connections took {took:?}"
    );
    trickle.join().unwrap();

    // The lease holder, silent for longer than the timeout, still holds its
    // queue and is still served.
    std::thread::sleep(Duration::from_millis(1500));
    let other = BrokerClient::connect(env.broker.socket_path())
        .unwrap()
        .open(OpenRequest::new(env.tb.xsk_if.clone(), 1))
        .unwrap_err();
    assert_eq!(other.broker_code(), Some(ErrorCode::QueueBusy), "{other}");
    assert!(matches!(
        holder.call(&Request::Status(StatusRequest {})),
        Response::Status(_)
    ));
    // After release the connection is lease-less again and times out.
    assert!(matches!(
        holder.call(&Request::Release),
        Response::Released { .. }
    ));
    let msg = error_then_eof(&holder);
    assert!(msg.contains("no request within 1 s"), "{msg}");
    drop((silent, greeted, half_header, half_body, loris, holder));
    settle_fds(&env, baseline);
}

/// Raise this process's open-file soft limit to the hard limit.
fn raise_nofile(need: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard >= need,
        "this test needs {need} open files, but the hard RLIMIT_NOFILE is {hard}"
    );
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
}

/// 1,000 connections that connect and send nothing (or half a frame) do not
/// keep a well-behaved client from its sockets: it gets them promptly; a
/// connection over the per-uid limit is answered `not_permitted` naming the
/// limit and closed at once (never left hanging), and the good client, of
/// another uid, still gets in.
#[test]
fn thousand_idle_connections_do_not_lock_out_a_good_client() {
    const IDLE: usize = 1000;
    raise_nofile(IDLE as u64 + 200);
    let Some(env) = BrokerBed::start_with_args(
        "thousand_idle_connections_do_not_lock_out_a_good_client",
        2,
        // Long enough that none of the flood times out during the test.
        &[
            "--idle-timeout",
            "60",
            "--max-connections-per-uid",
            "1000",
            "--max-connections",
            "1100",
        ],
    ) else {
        return;
    };
    // Let the readiness probe's connection close first.
    std::thread::sleep(Duration::from_millis(300));
    let baseline = env.broker.open_fd_count().unwrap();
    let t0 = Instant::now();
    let mut flood = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let mut s = UnixStream::connect(env.broker.socket_path())
            .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
        if i % 3 == 1 {
            s.write_all(&FrameHeader { len: 200, fds: 0 }.encode())
                .unwrap();
        }
        flood.push(s);
    }
    // Every one of them is admitted and held by the broker.
    wait_until(
        "the broker to hold 1,000 idle connections",
        Duration::from_secs(20),
        || (env.broker.open_fd_count().unwrap() >= baseline + IDLE).then_some(()),
    );
    eprintln!("1,000 idle connections open in {:?}", t0.elapsed());

    // One more of the same uid is refused at once, with the limit named.
    let started = Instant::now();
    let over = Raw::connect(env.broker.socket_path());
    let msg = error_then_eof(&over);
    assert!(msg.contains("--max-connections-per-uid 1000"), "{msg}");
    let refused_in = started.elapsed();
    assert!(
        refused_in < Duration::from_secs(2),
        "refusal took {refused_in:?}"
    );

    // A good client (uid nobody, no capabilities) gets its sockets promptly.
    let started = Instant::now();
    let mut c = env.client("rx", 2, 0, &[]);
    let ready = c.wait_event("ready", READY).unwrap();
    let took = started.elapsed();
    eprintln!(
        "with {IDLE} idle connections: the good client was ready in {took:?} (process start, \
         connect, lease, umem setup and bind); an over-limit connection was refused in \
         {refused_in:?}"
    );
    assert_eq!(ready["queues"], serde_json::json!([0, 1]));
    assert!(
        took < Duration::from_secs(3),
        "the good client waited {took:?}"
    );
    c.stop().unwrap();

    drop(flood);
    settle_fds(&env, baseline);
}

/// `--max-leases-per-uid` and `--max-queues-per-lease` refuse with
/// `not_permitted` naming the limit and its value; freeing a lease makes room.
#[test]
fn lease_and_queue_limits_name_the_limit() {
    let Some(env) = BrokerBed::start_with_args(
        "lease_and_queue_limits_name_the_limit",
        4,
        &["--max-leases-per-uid", "2", "--max-queues-per-lease", "2"],
    ) else {
        return;
    };
    let a = Raw::hello(env.broker.socket_path());
    expect_error(
        a.call(&open_req(&env, 3, 0)),
        ErrorCode::NotPermitted,
        "at most 2 queues per lease (--max-queues-per-lease 2)",
    );
    assert!(matches!(a.call(&open_req(&env, 2, 0)), Response::Opened(_)));
    let b = Raw::hello(env.broker.socket_path());
    assert!(matches!(b.call(&open_req(&env, 1, 2)), Response::Opened(_)));
    let c = Raw::hello(env.broker.socket_path());
    expect_error(
        c.call(&open_req(&env, 1, 3)),
        ErrorCode::NotPermitted,
        "already holds 2 leases, the most one user may hold (--max-leases-per-uid 2)",
    );
    drop(b);
    let opened = wait_until(
        "a lease slot to free up",
        Duration::from_secs(5),
        || match c.call(&open_req(&env, 1, 3)) {
            Response::Opened(o) => Some(o),
            _ => None,
        },
    );
    assert_eq!(opened.sockets[0].queue_id, 3);
    drop((a, c));
}

/// A pipe whose write end is sent away: once every copy of it is closed,
/// reading the read end gives EOF instead of blocking.
fn pipe() -> (std::fs::File, OwnedFd) {
    let (r, w) = nix::unistd::pipe().unwrap();
    nix::fcntl::fcntl(
        r.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    (std::fs::File::from(r), w)
}

fn closed_everywhere(r: &mut std::fs::File) -> bool {
    let mut b = [0u8; 1];
    matches!(std::io::Read::read(r, &mut b), Ok(0))
}

/// Send one frame whose first bytes carry `fds` (any number, past the
/// protocol's limit) with `declared` in its header.
fn send_with_fds(r: &Raw, body: &[u8], declared: u32, fds: &[std::os::fd::RawFd]) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let header = FrameHeader {
        len: body.len() as u32,
        fds: declared,
    }
    .encode();
    let iov = [std::io::IoSlice::new(&header), std::io::IoSlice::new(body)];
    let sent = sendmsg::<()>(
        r.0.stream().as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(fds)],
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    assert_eq!(sent, header.len() + body.len());
}

/// Malformed and oversized frames, invalid UTF-8, deep nesting, duplicate
/// keys, fds sent to the broker (within and past the 64-fd limit): each
/// gets a `bad_request` error naming what is wrong, not a crash; fds sent
/// are closed; the broker keeps serving and its fd count returns to where
/// it was.
#[test]
fn hostile_frames_get_errors_and_leak_nothing() {
    let Some(env) =
        BrokerBed::start_with_args("hostile_frames_get_errors_and_leak_nothing", 1, &[])
    else {
        return;
    };
    let baseline = env.broker.open_fd_count().unwrap();
    let r = Raw::hello(env.broker.socket_path());

    // A body of exactly 64 KiB is read and judged on its content.
    let pad = MAX_MESSAGE_LEN - br#"{"op":"status","x":""}"#.len();
    let exact = format!(r#"{{"op":"status","x":"{}"}}"#, "a".repeat(pad));
    assert_eq!(exact.len(), MAX_MESSAGE_LEN);
    expect_error(
        r.raw(exact.as_bytes()),
        ErrorCode::BadRequest,
        "unknown field `x`",
    );
    // Invalid UTF-8 inside a string, and as the whole body.
    expect_error(
        r.raw(b"{\"op\":\"open\",\"ifname\":\"e\xc3\x28\",\"queues\":1}"),
        ErrorCode::BadRequest,
        "invalid unicode code point",
    );
    expect_error(r.raw(&[0xff; 64]), ErrorCode::BadRequest, "malformed JSON");
    // Nesting as deep as 64 KiB allows, in arrays and in objects.
    let deep = format!(
        "{}{}",
        "[".repeat(MAX_MESSAGE_LEN / 2),
        "]".repeat(MAX_MESSAGE_LEN / 2)
    );
    expect_error(
        r.raw(deep.as_bytes()),
        ErrorCode::BadRequest,
        "nested deeper than 32 levels",
    );
    let deep_obj = format!(
        r#"{{"op":"open","ifname":{}1{}}}"#,
        r#"{"a":"#.repeat(10_000),
        "}".repeat(10_000)
    );
    expect_error(
        r.raw(deep_obj.as_bytes()),
        ErrorCode::BadRequest,
        "nested deeper than 32 levels",
    );
    // Duplicate keys, including a duplicate "op".
    expect_error(
        r.raw(br#"{"op":"open","ifname":"a","ifname":"b","queues":1}"#),
        ErrorCode::BadRequest,
        "duplicate field `ifname`",
    );
    expect_error(
        r.raw(br#"{"op":"status","op":"open"}"#),
        ErrorCode::BadRequest,
        "duplicate field",
    );
    // A long unknown op with a character across the 64-byte cut (the
    // fuzzer found that this panicked the connection thread).
    let long_op = format!(r#"{{"op":"{}é{}"}}"#, "a".repeat(63), "b".repeat(100));
    expect_error(
        r.raw(long_op.as_bytes()),
        ErrorCode::BadRequest,
        &format!("unknown operation \"{}\"", "a".repeat(63)),
    );
    // NUL bytes and a huge number.
    expect_error(r.raw(b"{\"op\":\"st\0atus\"}"), ErrorCode::BadRequest, "");
    expect_error(
        r.raw(br#"{"op":"open","ifname":"a","queues":99999999999999999999999}"#),
        ErrorCode::BadRequest,
        "invalid \"open\" message",
    );

    // fds sent to the broker, as declared: closed and refused (the broker
    // takes no fds, so the kernel closes them before they reach it).
    let (mut rd, w) = pipe();
    let raw_fds: Vec<_> = std::iter::repeat_n(w.as_raw_fd(), 64).collect();
    send_with_fds(&r, br#"{"op":"status"}"#, 64, &raw_fds);
    expect_error(
        r.answer(),
        ErrorCode::BadRequest,
        "accepts no file descriptors on this connection; the ones sent with this message \
         (which declared 64) were closed",
    );
    // More than the protocol's 64, likewise.
    let raw_fds: Vec<_> = std::iter::repeat_n(w.as_raw_fd(), 200).collect();
    send_with_fds(&r, br#"{"op":"status"}"#, 64, &raw_fds);
    expect_error(
        r.answer(),
        ErrorCode::BadRequest,
        "accepts no file descriptors",
    );
    drop(w);
    assert!(
        closed_everywhere(&mut rd),
        "the broker kept a copy of an fd it was sent: {:#?}",
        env.broker.open_fds().unwrap()
    );
    // The same connection is still in step and served.
    assert!(matches!(
        r.call(&Request::Status(StatusRequest {})),
        Response::Status(_)
    ));
    assert!(matches!(r.call(&open_req(&env, 1, 0)), Response::Opened(_)));
    assert!(matches!(
        r.call(&Request::Release),
        Response::Released { .. }
    ));

    // One byte over 64 KiB: refused from the header alone, then closed.
    let r2 = Raw::hello(env.broker.socket_path());
    r2.write(
        &FrameHeader {
            len: MAX_MESSAGE_LEN as u32 + 1,
            fds: 0,
        }
        .encode(),
    );
    let msg = error_then_eof(&r2);
    assert!(
        msg.contains("65537 bytes exceeds the limit of 65536"),
        "{msg}"
    );
    // An empty body and a declared fd count past the limit, likewise.
    let r3 = Raw::hello(env.broker.socket_path());
    r3.write(&FrameHeader { len: 0, fds: 0 }.encode());
    assert!(error_then_eof(&r3).contains("empty message body"));
    let r4 = Raw::hello(env.broker.socket_path());
    r4.write(&FrameHeader { len: 2, fds: 65 }.encode());
    assert!(error_then_eof(&r4).contains("declares 65 fds, more than the limit of 64"));

    drop((r, r2, r3, r4));
    // Everyone else is still served, and nothing leaked.
    let lease = BrokerClient::connect(env.broker.socket_path())
        .unwrap()
        .open(OpenRequest::new(env.tb.xsk_if.clone(), 1))
        .unwrap();
    drop(lease);
    wait_until(
        "the XDP program to be detached",
        Duration::from_secs(5),
        || env.tb.xdp_prog_id().unwrap().is_none().then_some(()),
    );
    let after = settle_fds(&env, baseline);
    eprintln!("broker fds: {baseline} before the hostile frames, {after} after");
}

/// Deleting a leased veth ends its leases: the broker logs it, clears them
/// (the queues and the interface are free in its state, no fd is kept), tells
/// each holder on its control connection and closes it; an unprivileged
/// `xsk-client rx` exits non-zero saying why instead of waiting for ever; and
/// a new lease on another interface works afterwards.
#[test]
fn vanished_interface_ends_its_leases_and_the_broker_keeps_serving() {
    let Some(env) = BrokerBed::start_with_args(
        "vanished_interface_ends_its_leases_and_the_broker_keeps_serving",
        2,
        &[],
    ) else {
        return;
    };
    // A second interface in the broker's namespace, for afterwards.
    let other_if = format!("{}o", &env.tb.xsk_if[..env.tb.xsk_if.len().min(13)]);
    let other_peer = format!("{}q", &env.tb.xsk_if[..env.tb.xsk_if.len().min(13)]);
    env.tb
        .xsk
        .ip([
            "link",
            "add",
            &other_if,
            "type",
            "veth",
            "peer",
            "name",
            &other_peer,
        ])
        .unwrap();
    env.tb.xsk.ip(["link", "set", &other_if, "up"]).unwrap();
    env.tb.xsk.ip(["link", "set", &other_peer, "up"]).unwrap();
    let baseline = env.broker.open_fd_count().unwrap();

    // An unprivileged datapath on queue 0, and a library lease on queue 1.
    let mut c = env.client("rx", 1, 0, &[]);
    c.wait_event("ready", READY).unwrap();
    let lease = BrokerClient::connect(env.broker.socket_path())
        .unwrap()
        .open(OpenRequest {
            start_queue: 1,
            ..OpenRequest::new(env.tb.xsk_if.clone(), 1)
        })
        .unwrap();

    // Delete the pair from the peer's side.
    let deleted = Instant::now();
    env.tb.peer.ip(["link", "del", &env.tb.peer_if]).unwrap();

    // The client's datapath fails with a clear message instead of hanging.
    let (stderr, status) = c.wait_failure(Duration::from_secs(10)).unwrap();
    let failed_in = deleted.elapsed();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Network is down") || stderr.contains("disappeared"),
        "{stderr}"
    );
    assert!(stderr.contains(&env.tb.xsk_if), "{stderr}");

    // The library lease's connection carries the broker's reason, then EOF.
    let fd = lease.control_fd().try_clone_to_owned().unwrap();
    let conn = UnixStream::from(fd);
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let chan = Channel::new(conn);
    let got = chan.recv().unwrap();
    // The library's session has the events feature: a revoked event (a 1.0
    // client gets a no_such_interface error, tests/tests/compat.rs).
    match decode_response(&got.body).unwrap() {
        Response::Event(e) => {
            assert_eq!(e.event, EventKind::Revoked, "{}", e.message);
            assert_eq!(e.queues, vec![1]);
            assert!(
                e.message.contains(&format!("interface {}", env.tb.xsk_if))
                    && e.message.contains("disappeared")
                    && e.message.contains("queues [1]"),
                "{}",
                e.message
            );
        }
        other => panic!("expected the broker's notice, got {other:?}"),
    }
    assert!(matches!(chan.recv(), Err(TransportError::Closed)));
    let noticed_in = deleted.elapsed();
    drop((chan, lease));
    eprintln!(
        "after deleting the veth: the client failed in {failed_in:?}, the lease holder was told \
         in {noticed_in:?}\nclient stderr: {stderr}"
    );
    let log = env.broker.log();
    assert!(
        log.contains(&format!("interface {} (ifindex", env.tb.xsk_if))
            && log.contains("disappeared; ending its"),
        "{log}"
    );

    // The broker kept serving: status shows no lease, and a new lease on
    // the other interface works.
    let r = Raw::hello(env.broker.socket_path());
    match r.call(&Request::Status(StatusRequest {})) {
        Response::Status(s) => assert!(s.leases.is_empty(), "{s:?}"),
        other => panic!("{other:?}"),
    }
    let other = BrokerClient::connect(env.broker.socket_path())
        .unwrap()
        .open(OpenRequest::new(other_if.clone(), 1))
        .unwrap();
    assert_eq!(other.info().ifname, other_if);
    drop((other, r));
    settle_fds(&env, baseline);
}
