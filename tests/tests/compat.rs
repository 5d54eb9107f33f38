//! Protocol compatibility with frozen transcripts (protocol/PROTOCOL.md):
//!
//! * a client of version 1.0 (hello without features, every reply decoded
//!   strictly, as 1.0 clients did) against this broker: it gets 1.0 replies,
//!   1.0 error codes, and a revocation as an error reply;
//! * this client library (and `xsk-brokerctl`) against a broker of version
//!   1.0, which refuses the `features` field: the session falls back to none.
//!
//! Beside them, this broker's own features: refined error codes and events.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use serde::Deserialize;
use xsk_broker_protocol::{
    decode_response, features, Channel, ErrorCode, EventKind, Hello, OpenRequest, Request, Response,
};
use xsk_client::BrokerClient;
use xsk_testbed::{wait_until, workspace_bin, BrokerBed, RawPeer, TempDir};

/// The replies of version 1.0, as its clients decoded them: every field
/// known, nothing else accepted, only the codes 1.0 had.
mod v1_0 {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(tag = "op", rename_all = "snake_case")]
    pub enum Response {
        Hello(HelloReply),
        Opened(Opened),
        Released {
            #[allow(dead_code)]
            queues: Vec<u32>,
        },
        Status(StatusReply),
        Error(ErrorReply),
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct HelloReply {
        pub version: u32,
        #[allow(dead_code)]
        pub server: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    pub struct Opened {
        pub ifname: String,
        pub ifindex: u32,
        pub mode: String,
        pub program_id: u32,
        pub copy: String,
        pub sockets: Vec<SocketInfo>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    pub struct SocketInfo {
        pub queue_id: u32,
        pub ifindex: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    pub struct StatusReply {
        pub server: String,
        pub pid: u32,
        pub uptime_ms: u64,
        pub leases: Vec<serde_json::Value>,
        #[serde(default)]
        pub omitted_leases: u32,
    }

    #[derive(Debug, Deserialize, PartialEq, Eq)]
    #[serde(rename_all = "snake_case")]
    pub enum ErrorCode {
        NoSuchInterface,
        QueueOutOfRange,
        QueueBusy,
        ModeNotSupported,
        NotPermitted,
        BadRequest,
        UnsupportedVersion,
        Internal,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ErrorReply {
        pub code: ErrorCode,
        pub message: String,
    }
}

/// A raw connection that speaks as a 1.0 client: `body` sent as it is,
/// the answer decoded with the 1.0 types.
fn v1_call(peer: &RawPeer, body: &str) -> (v1_0::Response, Vec<OwnedFd>) {
    peer.0
        .send_raw(body.as_bytes(), 0, &[])
        .expect("sending a request");
    let got = peer.0.recv().expect("reading the answer");
    let text = String::from_utf8_lossy(&got.body).into_owned();
    let resp = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("a 1.0 client cannot decode {text}: {e}"));
    (resp, got.fds)
}

fn v1_hello(socket: &std::path::Path) -> RawPeer {
    let peer = RawPeer::connect(socket);
    match v1_call(&peer, r#"{"op":"hello","version":1}"#).0 {
        v1_0::Response::Hello(h) => assert_eq!(h.version, 1),
        other => panic!("{other:?}"),
    }
    peer
}

#[test]
fn a_client_of_version_1_0_gets_version_1_0_replies() {
    let Some(env) = BrokerBed::start_with_args(
        "a_client_of_version_1_0_gets_version_1_0_replies",
        2,
        &["--max-queues-per-uid", "1"],
    ) else {
        return;
    };
    let socket = env.broker.socket_path();
    let ifname = env.tb.xsk_if.clone();
    let vanishing = format!("cv{}", &ifname[2..]);
    env.tb.add_local_veth(&vanishing, 1).unwrap();

    // The transcript of a 1.0 client: hello, status, open, then a second
    // connection over the quota, then the interface vanishes.
    let holder = v1_hello(socket);
    match v1_call(&holder, r#"{"op":"status"}"#).0 {
        v1_0::Response::Status(s) => assert!(s.leases.is_empty()),
        other => panic!("{other:?}"),
    }
    let open = format!(r#"{{"op":"open","ifname":"{vanishing}","queues":1}}"#);
    let leased = match v1_call(&holder, &open) {
        (v1_0::Response::Opened(o), fds) => {
            assert_eq!(
                (o.ifname.as_str(), o.sockets.len(), fds.len()),
                (vanishing.as_str(), 1, 1)
            );
            fds
        }
        other => panic!("{other:?}"),
    };
    // The holder creates an rx ring, whose producer this broker reads; a 1.0
    // session still sees only the socket fields of 1.0.
    let entries: u32 = 16;
    // SAFETY: a leased AF_XDP socket this test holds; the value is a u32 on
    // the stack that lives for the call.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&leased[0]),
            libc::SOL_XDP,
            libc::XDP_RX_RING,
            (&entries as *const u32).cast(),
            4,
        )
    };
    assert_eq!(rc, 0, "XDP_RX_RING: {}", std::io::Error::last_os_error());
    // A session that negotiated status-traffic sees the ring counted (the
    // broker maps new rings once a second)...
    let current = RawPeer::connect(socket);
    assert!(matches!(
        current.call(&Request::Hello(Hello::current())),
        Response::Hello(_)
    ));
    wait_until(
        "the rx ring to be counted",
        Duration::from_secs(10),
        || match current.call(&Request::Status(Default::default())) {
            Response::Status(s) => s.leases[0].sockets[0].rx_packets.map(drop),
            other => panic!("{other:?}"),
        },
    );
    // ... and the 1.0 session does not.
    match v1_call(&holder, r#"{"op":"status"}"#).0 {
        v1_0::Response::Status(s) => {
            assert_eq!(s.leases.len(), 1);
            let sock = s.leases[0]["sockets"][0].as_object().unwrap();
            let keys: Vec<&str> = sock.keys().map(String::as_str).collect();
            assert_eq!(keys, ["queue_id", "statistics"], "{sock:?}");
        }
        other => panic!("{other:?}"),
    }
    // Over --max-queues-per-uid: limit_reached for this broker, sent to a
    // 1.0 client as the 1.0 code it refines.
    let second = v1_hello(socket);
    let open = format!(r#"{{"op":"open","ifname":"{ifname}","queues":1}}"#);
    match v1_call(&second, &open).0 {
        v1_0::Response::Error(e) => {
            assert_eq!(e.code, v1_0::ErrorCode::NotPermitted, "{}", e.message);
            assert!(
                e.message.contains("--max-queues-per-uid 1"),
                "{}",
                e.message
            );
        }
        other => panic!("{other:?}"),
    }
    // The client library negotiates error-codes-2 and sees the refinement.
    let client = BrokerClient::connect(socket).unwrap();
    assert_eq!(
        client.features().len(),
        features::ALL.len(),
        "{:?}",
        client.features()
    );
    let err = client
        .open(OpenRequest::new(ifname.clone(), 1))
        .unwrap_err();
    assert_eq!(err.broker_code(), Some(ErrorCode::LimitReached), "{err}");

    // The interface disappears: a 1.0 client is told with an error reply.
    env.tb.xsk.ip(["link", "del", &vanishing]).unwrap();
    holder
        .0
        .stream()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let got = holder.0.recv().expect("the revocation");
    let text = String::from_utf8_lossy(&got.body).into_owned();
    match serde_json::from_str::<v1_0::Response>(&text) {
        Ok(v1_0::Response::Error(e)) => {
            assert_eq!(e.code, v1_0::ErrorCode::NoSuchInterface, "{}", e.message);
            assert!(e.message.contains("disappeared"), "{}", e.message);
        }
        other => panic!("{text}: {other:?}"),
    }
}

#[test]
fn a_session_with_events_is_told_of_a_revocation_by_an_event() {
    let Some(env) = BrokerBed::start(
        "a_session_with_events_is_told_of_a_revocation_by_an_event",
        1,
    ) else {
        return;
    };
    let vanishing = format!("ce{}", &env.tb.xsk_if[2..]);
    env.tb.add_local_veth(&vanishing, 1).unwrap();
    let peer = RawPeer::connect(env.broker.socket_path());
    match peer.call(&Request::Hello(Hello::current())) {
        Response::Hello(h) => assert_eq!(h.features.len(), features::ALL.len(), "{h:?}"),
        other => panic!("{other:?}"),
    }
    match peer.call(&Request::Open(OpenRequest::new(vanishing.clone(), 1))) {
        Response::Opened(_) => {}
        other => panic!("{other:?}"),
    }
    match peer.call(&Request::Status(Default::default())) {
        Response::Status(s) => assert!(s.confinement.is_some(), "{s:?}"),
        other => panic!("{other:?}"),
    }
    env.tb.xsk.ip(["link", "del", &vanishing]).unwrap();
    match peer.answer() {
        Response::Event(e) => {
            assert_eq!(e.event, EventKind::Revoked, "{e:?}");
            assert_eq!(e.queues, vec![0]);
            assert!(e.message.contains("disappeared"), "{}", e.message);
        }
        other => panic!("expected a revoked event, got {other:?}"),
    }
}

/// What a broker of version 1.0 answered, frozen.
const V1_0_REFUSES_FEATURES: &str = r#"{"op":"error","code":"bad_request","message":"invalid \"hello\" message: unknown field `features`, expected `version` at line 1 column 33"}"#;
const V1_0_HELLO: &str = r#"{"op":"hello","version":1,"server":"xsk-brokerd/0.1.0"}"#;
const V1_0_STATUS: &str = r#"{"op":"status","server":"xsk-brokerd/0.1.0","pid":1,"uptime_ms":5,"leases":[],"omitted_leases":0}"#;

/// A broker of version 1.0 for one connection: it refuses hello with
/// features as 1.0 did, then answers from the frozen transcript.
fn v1_0_broker(listener: UnixListener, open_reply: String) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let chan = Channel::new(stream);
        let mut seen = Vec::new();
        while let Ok(got) = chan.recv() {
            let body = String::from_utf8_lossy(&got.body).into_owned();
            #[derive(Deserialize)]
            struct Op {
                op: String,
            }
            let op: Op = serde_json::from_str(&body).unwrap();
            seen.push(body.clone());
            let (reply, fds): (&str, Vec<OwnedFd>) = match op.op.as_str() {
                "hello" if body.contains("features") => (V1_0_REFUSES_FEATURES, Vec::new()),
                "hello" => (V1_0_HELLO, Vec::new()),
                "status" => (V1_0_STATUS, Vec::new()),
                "open" => {
                    // SAFETY: socket(2); the result is checked before use.
                    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW, 0) };
                    assert!(fd >= 0, "socket(AF_XDP)");
                    // SAFETY: a fresh fd nothing else owns.
                    (
                        open_reply.as_str(),
                        vec![unsafe { OwnedFd::from_raw_fd(fd) }],
                    )
                }
                other => panic!("the 1.0 broker got {other}"),
            };
            let borrowed: Vec<_> = fds.iter().map(std::os::fd::AsFd::as_fd).collect();
            chan.send_raw(reply.as_bytes(), borrowed.len() as u32, &borrowed)
                .unwrap();
        }
        seen
    })
}

#[test]
fn the_client_library_and_brokerctl_work_with_a_broker_of_version_1_0() {
    if !xsk_testbed::require_root(
        "the_client_library_and_brokerctl_work_with_a_broker_of_version_1_0",
    ) {
        return;
    }
    let dir = TempDir::new("xsk-compat").unwrap();
    let path = dir.path().join("v1.sock");
    let open_reply = r#"{"op":"opened","ifname":"eth9","ifindex":9,"mode":"native","program_id":7,"copy":"auto","sockets":[{"queue_id":0,"ifindex":9}]}"#;
    let broker = v1_0_broker(UnixListener::bind(&path).unwrap(), open_reply.to_owned());
    let client = BrokerClient::connect(&path).unwrap();
    assert!(client.features().is_empty(), "{:?}", client.features());
    assert_eq!(client.server(), "xsk-brokerd/0.1.0");
    let lease = client.open(OpenRequest::new("eth9", 1)).unwrap();
    assert_eq!(lease.info().ifindex, 9);
    drop(lease);
    let seen = broker.join().unwrap();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[0].contains("features"), "{seen:?}");
    assert_eq!(
        seen[1], r#"{"op":"hello","version":1}"#,
        "the 1.0 hello, byte for byte"
    );

    // xsk-brokerctl too.
    let path2 = dir.path().join("v1b.sock");
    let broker = v1_0_broker(UnixListener::bind(&path2).unwrap(), String::new());
    let out = std::process::Command::new(workspace_bin("xsk-brokerctl").unwrap())
        .args(["status", "--json", "--socket"])
        .arg(&path2)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["server"], "xsk-brokerd/0.1.0");
    assert!(status.get("confinement").is_none(), "{status}");
    wait_until(
        "the 1.0 broker's connection to end",
        Duration::from_secs(5),
        || broker.is_finished().then_some(()),
    );
    // Decoding stays lenient for what newer brokers add.
    let newer = r#"{"op":"hello","version":1,"server":"x","features":[],"shiny":true}"#;
    assert!(matches!(
        decode_response(newer.as_bytes()),
        Ok(Response::Hello(_))
    ));
}

/// A broker that stops tells the holders whose sessions take events, and
/// leaves their leases in the kernel; a 1.0 session just sees the
/// connection close, as before.
#[test]
fn a_stopping_broker_tells_sessions_with_events() {
    let Some(mut env) = BrokerBed::start("a_stopping_broker_tells_sessions_with_events", 2) else {
        return;
    };
    let socket = env.broker.socket_path().to_owned();
    let with_events = RawPeer::connect(&socket);
    assert!(matches!(
        with_events.call(&Request::Hello(Hello::current())),
        Response::Hello(_)
    ));
    match with_events.call(&Request::Open(OpenRequest::new(env.tb.xsk_if.clone(), 1))) {
        Response::Opened(_) => {}
        other => panic!("{other:?}"),
    }
    let old = v1_hello(&socket);
    let open = format!(
        r#"{{"op":"open","ifname":"{}","queues":1,"start_queue":1}}"#,
        env.tb.xsk_if
    );
    assert!(matches!(v1_call(&old, &open).0, v1_0::Response::Opened(_)));

    env.broker.terminate().unwrap();
    match with_events.answer() {
        Response::Event(e) => {
            assert_eq!(e.event, EventKind::Stopping, "{e:?}");
            assert_eq!(e.queues, vec![0]);
            assert!(e.message.contains("stay in the kernel"), "{}", e.message);
        }
        other => panic!("expected a stopping event, got {other:?}"),
    }
    assert!(
        old.0.recv().is_err(),
        "a 1.0 session gets no event, only the closed connection"
    );
    let log = env.broker.log();
    assert!(
        !log.lines().any(|l| l.contains("event=\"release\"")),
        "the leases stay in the kernel, none is released: {log}"
    );
}
