//! Operations: what an operator sees of a running broker. `xsk-brokerctl
//! status` against a live broker with traffic flowing.
//!
//! Same rules as e2e.rs: real namespaces, veth pairs, XDP programs and
//! processes; unique names; RAII cleanup; one test at a time.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use xsk_client::{BrokerClient, OpenRequest, SocketConfig};
use xsk_testbed::{
    nobody_ids, require_root, send_udp, serial_guard, udp_roundtrip, wait_until, workspace_bin,
    BrokerBed, BrokerProcess, ClientProcess, TempDir, Testbed, TEST_FRAMES,
};

const READY: Duration = Duration::from_secs(15);

/// Run `xsk-brokerctl --socket SOCKET ARGS...` as uid nobody with no
/// capabilities (reading status needs none) and return its stdout; fails on
/// a non-zero exit, with its stderr.
/// `xsk-brokerctl --socket S ARGS...` as nobody with no capabilities.
fn brokerctl(env: &BrokerBed, args: &[&str]) -> String {
    xsk_testbed::brokerctl(env.broker.socket_path(), args, true).unwrap_or_else(|e| panic!("{e}"))
}

/// `xsk-brokerctl --socket S ARGS...` as root (who sees every lease).
fn brokerctl_as_root(env: &BrokerBed, args: &[&str]) -> String {
    xsk_testbed::brokerctl(env.broker.socket_path(), args, false).unwrap_or_else(|e| panic!("{e}"))
}

fn status_json(env: &BrokerBed) -> Value {
    let out = brokerctl(env, &["status", "--json"]);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

const STAT_NAMES: [&str; 6] = [
    "rx_dropped",
    "rx_invalid_descs",
    "tx_invalid_descs",
    "rx_ring_full",
    "rx_fill_ring_empty_descs",
    "tx_ring_empty_descs",
];

/// An unprivileged echo client holds two queues and traffic flows; status,
/// asked by another unprivileged process that holds no lease, names the
/// lease, its holder, mode, program, queues and age, and reports for each
/// socket the same XDP_STATISTICS the client reads on its own fd.
#[test]
fn status_shows_leases_holders_and_statistics_with_traffic() {
    let Some(env) = BrokerBed::start("status_shows_leases_holders_and_statistics_with_traffic", 2)
    else {
        return;
    };
    let empty = status_json(&env);
    assert_eq!(empty["leases"], serde_json::json!([]), "{empty}");
    assert_eq!(empty["pid"], env.broker.pid(), "{empty}");
    assert!(
        empty["server"]
            .as_str()
            .unwrap()
            .starts_with("xsk-brokerd/"),
        "{empty}"
    );

    let started = Instant::now();
    let mut c = env.client("echo", 2, 0, &[]);
    let ready = c.wait_event("ready", READY).unwrap();
    udp_roundtrip(&env.tb, 32, 8, Duration::from_secs(5))
        .unwrap()
        .verify()
        .unwrap();

    let st = status_json(&env);
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let leases = st["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 1, "{st:#}");
    let l = &leases[0];
    let (nobody, nogroup) = nobody_ids().unwrap();
    assert_eq!(l["ifname"], env.tb.xsk_if.as_str());
    assert_eq!(l["ifindex"], env.tb.xsk_ifindex);
    assert_eq!(l["queues"], serde_json::json!([0, 1]));
    assert_eq!(l["holder"]["pid"], c.pid(), "the holder is the echo client");
    assert_eq!(l["holder"]["uid"], nobody.as_raw());
    assert_eq!(l["holder"]["gid"], nogroup.as_raw());
    assert_eq!(l["mode"], ready["mode"]);
    let prog = env.tb.xdp_prog_id().unwrap().expect("XDP program attached");
    assert_eq!(l["program_id"], prog);
    let age = l["age_ms"].as_u64().unwrap();
    assert!(
        age > 0 && age <= elapsed_ms,
        "age {age} ms, test ran {elapsed_ms} ms"
    );
    assert!(st["uptime_ms"].as_u64().unwrap() >= age);
    let socks = l["sockets"].as_array().unwrap();
    assert_eq!(socks.len(), 2, "{l:#}");

    // The human table shows the same lease.
    let table = brokerctl(&env, &["status"]);
    assert!(table.contains("1 lease(s), 2 queue(s)"), "{table}");
    let row = table
        .lines()
        .find(|r| r.contains(&format!(" {} ", c.pid())))
        .unwrap_or_else(|| panic!("no row with the client's pid:\n{table}"));
    for cell in [
        env.tb.xsk_if.clone(),
        "0-1".to_owned(),
        prog.to_string(),
        nobody.as_raw().to_string(),
    ] {
        assert!(row.contains(&cell), "{cell:?} missing from {row:?}");
    }
    for header in [
        "RX_DROPPED",
        "RX_FILL_RING_EMPTY_DESCS",
        "TX_RING_EMPTY_DESCS",
    ] {
        assert!(table.contains(header), "{header} missing:\n{table}");
    }

    // The traffic has stopped, so the rx counters are still: the client's own
    // reading of each socket at exit equals what the broker reported. The
    // client's last tx kicks at exit may still count tx_ring_empty_descs, so
    // that one may only have grown; it is not 0, since the echoes were sent.
    let (done, status) = c.stop().unwrap();
    assert!(status.success(), "{status}");
    for q in done["queues"].as_array().unwrap() {
        let qid = q["queue_id"].as_u64().unwrap();
        assert!(
            q["counters"]["rx_packets"].as_u64().unwrap() > 0,
            "queue {qid} carried no traffic: {q}"
        );
        let s = socks
            .iter()
            .find(|s| s["queue_id"] == qid)
            .unwrap_or_else(|| panic!("queue {qid} not in status: {l:#}"));
        for name in STAT_NAMES {
            let broker = s["statistics"][name].as_u64().unwrap();
            let own = q["xdp_statistics"][name].as_u64().unwrap();
            if name == "tx_ring_empty_descs" {
                assert!(
                    broker > 0 && broker <= own,
                    "queue {qid} {name}: {s} vs {q}"
                );
            } else {
                assert_eq!(broker, own, "queue {qid} {name}: broker {s} client {q}");
            }
        }
    }

    // Once the client is gone, so is its lease.
    wait_until("the lease to leave the status", READY, || {
        status_json(&env)["leases"]
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    });
}

/// A socket whose holder does not read it drops what the fill ring cannot
/// take; status shows those drops, and they are the socket's own counters.
#[test]
fn status_counts_drops_of_a_socket_that_is_not_read() {
    let Some(env) = BrokerBed::start("status_counts_drops_of_a_socket_that_is_not_read", 1) else {
        return;
    };
    let mut lease = BrokerClient::connect(env.broker.socket_path())
        .unwrap()
        .open(OpenRequest::new(env.tb.xsk_if.clone(), 1))
        .unwrap();
    // 64 frames: rings of 16, so at most 16 frames are ever on the fill ring.
    let socks = lease
        .adopt_all(&SocketConfig::with_frame_count(64))
        .unwrap();
    const N: u32 = 200;
    send_udp(&env.tb, 1, N, |_, seq| {
        format!("drop me {seq}").into_bytes()
    })
    .unwrap();
    let own = wait_until("the kernel to count the drops", READY, || {
        let s = socks[0].statistics().unwrap();
        (s.rx_dropped >= u64::from(N) - 16).then_some(s)
    });
    // The holder is this (root) process: a tenant would see only its own
    // leases, so root asks.
    let st: Value = serde_json::from_str(&brokerctl_as_root(&env, &["status", "--json"])).unwrap();
    let l = &st["leases"][0];
    assert_eq!(l["holder"]["pid"], std::process::id(), "{st:#}");
    let s = &l["sockets"][0];
    assert_eq!(s["queue_id"], 0);
    let want = serde_json::to_value(own).unwrap();
    for name in STAT_NAMES {
        assert_eq!(s["statistics"][name], want[name], "{name}: {s} vs {want}");
    }
    assert!(
        s["statistics"]["rx_fill_ring_empty_descs"]
            .as_u64()
            .unwrap()
            > 0
    );
    let table = brokerctl_as_root(&env, &["status"]);
    assert!(
        table.contains(&own.rx_dropped.to_string()),
        "rx_dropped {} not in:\n{table}",
        own.rx_dropped
    );
    drop(socks);
    drop(lease);
}

/// Clear errors: no broker at the path, named.
#[test]
fn brokerctl_names_a_socket_it_cannot_reach() {
    let dir = TempDir::new("xsk-ctl").unwrap();
    let path = dir.join("nobody-listens.sock");
    let out = Command::new(workspace_bin("xsk-brokerctl").unwrap())
        .args(["status", "--socket"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot connect to the broker's control socket {}",
            path.display()
        )),
        "{err}"
    );
}

/// `--log-format json`: every line the broker writes is a JSON object, and
/// grants, refusals and releases are events a collector can select, with
/// the holder's pid and uid.
#[test]
fn json_logs_carry_grant_refuse_and_release_events() {
    let test = "json_logs_carry_grant_refuse_and_release_events";
    if !require_root(test) {
        return;
    }
    let _lock = serial_guard().unwrap();
    let tb = Testbed::new(1).unwrap();
    let dir = TempDir::new("xsk-ops").unwrap();
    let broker = BrokerProcess::spawn_with_args(
        &tb.xsk,
        dir.path(),
        &["--log-format", "json", "--log-level", "info"],
    )
    .unwrap();
    let frames = TEST_FRAMES.to_string();
    let args = ["--ifname", tb.xsk_if.as_str(), "--frames", &frames];
    let mut a = ClientProcess::spawn("rx", broker.socket_path(), &args, None).unwrap();
    a.wait_event("ready", READY).unwrap();
    let a_pid = a.pid();
    // A second client for the same queue is refused.
    let b = ClientProcess::spawn("rx", broker.socket_path(), &args, None).unwrap();
    let b_pid = b.pid();
    b.wait_failure(READY).unwrap();
    a.stop().unwrap();

    let (nobody, _) = nobody_ids().unwrap();
    let events = wait_until("the release to be logged", READY, || {
        let lines: Vec<Value> = broker
            .log()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
            .collect();
        lines
            .iter()
            .any(|v| v["event"] == "release")
            .then_some(lines)
    });
    for v in &events {
        for key in ["timestamp", "level", "message", "target"] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
    }
    let find = |event: &str, pid: u32| {
        events
            .iter()
            .find(|v| v["event"] == event && v["pid"] == pid)
            .unwrap_or_else(|| panic!("no {event} event for pid {pid} in {events:#?}"))
    };
    let grant = find("grant", a_pid);
    assert_eq!(grant["uid"], nobody.as_raw());
    assert_eq!(grant["level"], "INFO");
    assert_eq!(grant["ifname"], tb.xsk_if.as_str());
    assert_eq!(grant["queues"], "[0]");
    assert_eq!(grant["message"], "granted");
    let refuse = find("refuse", b_pid);
    assert_eq!(refuse["uid"], nobody.as_raw());
    assert_eq!(refuse["code"], "queue_busy");
    let release = find("release", a_pid);
    assert_eq!(release["uid"], nobody.as_raw());
    assert_eq!(release["queues"], "[0]");
    drop(broker);
}

/// The broker started the way systemd's socket activation starts it
/// (`systemd-socket-activate`: a listening socket as fd 3, LISTEN_FDS,
/// LISTEN_PID, LISTEN_FDNAMES; no --socket) leases sockets through that
/// socket, traffic flows, and at stop it leaves the socket file to its owner.
#[test]
fn socket_activated_broker_leases_sockets() {
    let test = "socket_activated_broker_leases_sockets";
    if !require_root(test) {
        return;
    }
    let _lock = serial_guard().unwrap();
    let tb = Testbed::new(2).unwrap();
    let dir = TempDir::new("xsk-ops").unwrap();
    let mut broker =
        BrokerProcess::spawn_socket_activated(&tb.xsk, dir.path(), &["--log-format", "json"])
            .unwrap();
    let frames = TEST_FRAMES.to_string();
    let mut c = ClientProcess::spawn(
        "echo",
        broker.socket_path(),
        &["--ifname", &tb.xsk_if, "--queues", "2", "--frames", &frames],
        None,
    )
    .unwrap();
    let ready = c.wait_event("ready", READY).unwrap();
    assert_eq!(ready["queues"], serde_json::json!([0, 1]));
    udp_roundtrip(&tb, 32, 8, Duration::from_secs(5))
        .unwrap()
        .verify()
        .unwrap();
    let (done, status) = c.stop().unwrap();
    assert!(status.success(), "{status}");
    for q in done["queues"].as_array().unwrap() {
        assert!(q["counters"]["rx_packets"].as_u64().unwrap() > 0, "{q}");
    }

    let log: Vec<Value> = broker
        .log()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let activated = log
        .iter()
        .find(|v| v["message"] == "using the listening socket passed by socket activation (fd 3)")
        .unwrap_or_else(|| panic!("no activation line in {log:#?}"));
    assert_eq!(activated["fd_name"], "xsk-broker");
    assert_eq!(
        activated["socket"],
        broker.socket_path().display().to_string()
    );
    assert!(log.iter().any(|v| v["event"] == "grant"), "{log:#?}");

    let st = broker.terminate().unwrap();
    assert!(st.success(), "{st}");
    assert!(
        broker.socket_path().exists(),
        "the socket file belongs to the service manager and must stay"
    );
}

/// One HTTP/1.1 request on `conn`; returns (status line, headers, body).
fn http<S: std::io::Read + std::io::Write>(mut conn: S, request: &str) -> (String, String, String) {
    conn.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).unwrap();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {raw:?}"));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_owned(), body.to_owned())
}

/// Parse the Prometheus text format: `name{labels} value` samples, checking
/// that each belongs to a family declared by `# TYPE` and `# HELP` lines.
fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut typed = std::collections::BTreeSet::new();
    let mut helped = std::collections::BTreeSet::new();
    let mut samples = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            typed.insert(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split_once(' ').unwrap().0.to_owned());
        } else if !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert!(
                typed.contains(name) && helped.contains(name),
                "undeclared: {line}"
            );
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value: {line}"));
            assert!(
                samples.insert(series.to_owned(), v).is_none(),
                "duplicate: {line}"
            );
        }
    }
    samples
}

/// `--metrics-socket` and `--metrics-listen` serve Prometheus text: grants,
/// releases, refusals by code, leases and per-queue XDP statistics, scraped
/// with a plain HTTP GET while traffic flows.
#[test]
fn metrics_are_scraped_over_http() {
    use std::os::unix::net::UnixStream;
    let test = "metrics_are_scraped_over_http";
    if !require_root(test) {
        return;
    }
    let _lock = serial_guard().unwrap();
    let tb = Testbed::new(2).unwrap();
    let dir = TempDir::new("xsk-ops").unwrap();
    let msock = dir.join("metrics.sock");
    let broker = BrokerProcess::spawn_with_args(
        &tb.xsk,
        dir.path(),
        &[
            "--log-format",
            "json",
            "--metrics-socket",
            msock.to_str().unwrap(),
            "--metrics-socket-mode",
            "0666",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
    .unwrap();
    let scrape = || {
        let (status, headers, body) = http(
            UnixStream::connect(&msock).unwrap(),
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
        );
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            headers.contains("Content-Type: text/plain; version=0.0.4"),
            "{headers}"
        );
        parse_metrics(&body)
    };
    let m = scrape();
    assert_eq!(m["xsk_broker_grants_total"], 0.0);
    assert_eq!(m["xsk_broker_leases"], 0.0);
    assert_eq!(m["xsk_broker_refusals_total{code=\"queue_busy\"}"], 0.0);

    let frames = TEST_FRAMES.to_string();
    let ifname = tb.xsk_if.as_str();
    let mut c = ClientProcess::spawn(
        "echo",
        broker.socket_path(),
        &["--ifname", ifname, "--queues", "2", "--frames", &frames],
        None,
    )
    .unwrap();
    c.wait_event("ready", READY).unwrap();
    udp_roundtrip(&tb, 32, 8, Duration::from_secs(5))
        .unwrap()
        .verify()
        .unwrap();
    let refused = ClientProcess::spawn(
        "rx",
        broker.socket_path(),
        &["--ifname", ifname, "--frames", &frames],
        None,
    )
    .unwrap();
    refused.wait_failure(READY).unwrap();

    let m = scrape();
    assert_eq!(m["xsk_broker_grants_total"], 1.0, "{m:#?}");
    assert_eq!(m["xsk_broker_leases"], 1.0);
    assert_eq!(
        m[&format!("xsk_broker_leased_queues{{ifname=\"{ifname}\"}}")],
        2.0
    );
    assert_eq!(m["xsk_broker_refusals_total{code=\"queue_busy\"}"], 1.0);
    assert_eq!(m["xsk_broker_releases_total"], 0.0);
    let st = status_json_at(broker.socket_path());
    for q in 0..2 {
        let series = |stat: &str| {
            format!("xsk_broker_xdp_{stat}_total{{ifname=\"{ifname}\",queue=\"{q}\"}}")
        };
        assert!(m[&series("tx_ring_empty_descs")] > 0.0, "queue {q}: {m:#?}");
        // The same socket counters status reports (rx ones are still now).
        let s = &st["leases"][0]["sockets"][q];
        assert_eq!(s["queue_id"], q);
        for stat in [
            "rx_dropped",
            "rx_invalid_descs",
            "rx_ring_full",
            "rx_fill_ring_empty_descs",
        ] {
            assert_eq!(
                m[&series(stat)],
                s["statistics"][stat].as_u64().unwrap() as f64,
                "{stat} queue {q}"
            );
        }
    }

    // The loopback port, from the log, inside the broker's namespace.
    let port_line = broker
        .log()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v.get("metrics_listen").is_some())
        .expect("metrics_listen logged");
    let addr: std::net::SocketAddr = port_line["metrics_listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    c.stop().unwrap();
    let (m, not_found, not_allowed) = tb
        .xsk
        .enter_thread(|| {
            let tcp = || std::net::TcpStream::connect(addr).unwrap();
            let m = wait_until("the release to be counted", READY, || {
                let (status, _, body) = http(tcp(), "GET /metrics HTTP/1.0\r\n\r\n");
                assert_eq!(status, "HTTP/1.1 200 OK");
                let m = parse_metrics(&body);
                (m["xsk_broker_releases_total"] == 1.0).then_some(m)
            });
            let not_found = http(tcp(), "GET /secrets HTTP/1.0\r\n\r\n").0;
            let not_allowed = http(tcp(), "POST /metrics HTTP/1.0\r\n\r\n").0;
            (m, not_found, not_allowed)
        })
        .unwrap();
    assert_eq!(m["xsk_broker_leases"], 0.0);
    assert!(
        !m.keys().any(|k| k.starts_with("xsk_broker_xdp_")),
        "{m:#?}"
    );
    assert_eq!(not_found, "HTTP/1.1 404 Not Found");
    assert_eq!(not_allowed, "HTTP/1.1 405 Method Not Allowed");
    drop(broker);
}

fn status_json_at(socket: &std::path::Path) -> Value {
    let out = Command::new(workspace_bin("xsk-brokerctl").unwrap())
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Under socket activation the .socket unit owns the socket: a --socket-mode
/// is refused, and so is a --socket that is not the passed socket's path.
#[test]
fn socket_activation_refuses_conflicting_socket_options() {
    use std::os::unix::net::UnixStream;
    let test = "socket_activation_refuses_conflicting_socket_options";
    if !require_root(test) {
        return;
    }
    let dir = TempDir::new("xsk-ops").unwrap();
    let bin = workspace_bin("xsk-brokerd").unwrap();
    let other = dir.join("other.sock");
    let cases: [(&[&str], String); 2] = [
        (
            &["--socket-mode", "0600"],
            "--socket-mode does not apply to a socket passed by socket activation".to_owned(),
        ),
        (
            &["--socket", other.to_str().unwrap()],
            format!(
                "--socket {} was given, but the socket passed",
                other.display()
            ),
        ),
    ];
    for (i, (args, want)) in cases.iter().enumerate() {
        let sock = dir.join(format!("a{i}.sock"));
        let child = Command::new("systemd-socket-activate")
            .arg("-l")
            .arg(&sock)
            .arg(&bin)
            .args(*args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _wake = wait_until("the socket to listen", READY, || {
            UnixStream::connect(&sock).ok()
        });
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want.as_str()), "{args:?}: {err}");
        assert!(!other.exists(), "no socket file may be created");
    }
}

/// The capabilities the systemd unit gives (CapabilityBoundingSet= and
/// AmbientCapabilities= CAP_NET_ADMIN CAP_NET_RAW CAP_BPF, NoNewPrivileges=)
/// are enough: a broker started with exactly those by setpriv leases
/// sockets and traffic flows, and it holds nothing else.
#[test]
fn broker_works_with_only_the_units_capabilities() {
    let test = "broker_works_with_only_the_units_capabilities";
    if !require_root(test) {
        return;
    }
    let _lock = serial_guard().unwrap();
    let tb = Testbed::new(1).unwrap();
    let dir = TempDir::new("xsk-ops").unwrap();
    let caps = "-all,+net_admin,+net_raw,+bpf";
    let broker = BrokerProcess::spawn_prefixed(
        &[
            "setpriv",
            "--bounding-set",
            caps,
            "--inh-caps",
            caps,
            "--ambient-caps",
            caps,
            "--no-new-privs",
            "--",
        ],
        &workspace_bin("xsk-brokerd").unwrap(),
        &tb.xsk,
        dir.path(),
        &[],
    )
    .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", broker.pid())).unwrap();
    let field = |name: &str| {
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} missing"));
        u64::from_str_radix(v.trim(), 16).unwrap()
    };
    let want = (1u64 << 12) | (1 << 13) | (1 << 39); // NET_ADMIN, NET_RAW, BPF
    assert_eq!(field("CapBnd:"), want, "{status}");
    assert_eq!(field("CapEff:"), want, "{status}");
    assert_eq!(field("NoNewPrivs:"), 1);

    let frames = TEST_FRAMES.to_string();
    let mut c = ClientProcess::spawn(
        "echo",
        broker.socket_path(),
        &["--ifname", &tb.xsk_if, "--frames", &frames],
        None,
    )
    .unwrap();
    c.wait_event("ready", READY).unwrap();
    udp_roundtrip(&tb, 4, 8, Duration::from_secs(5))
        .unwrap()
        .verify()
        .unwrap();
    let (_, st) = c.stop().unwrap();
    assert!(st.success());
    drop(broker);
}

/// A broker whose policy lets nobody lease the test bed's interface and no
/// other, with metrics on a Unix socket: (test bed, broker dir, broker,
/// metrics socket).
fn narrow_broker_with_metrics(
    queues: u32,
) -> (Testbed, TempDir, BrokerProcess, std::path::PathBuf) {
    let tb = Testbed::new(queues).unwrap();
    let dir = TempDir::new("xsk-ops").unwrap();
    let policy = dir.join("policy.json");
    let rules = serde_json::json!({
        "version": 1,
        "rules": [{ "name": "only-the-test-bed", "users": ["nobody"], "interfaces": [tb.xsk_if] }]
    });
    std::fs::write(&policy, rules.to_string()).unwrap();
    let msock = dir.join("metrics.sock");
    let broker = BrokerProcess::spawn_with_args(
        &tb.xsk,
        dir.path(),
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--metrics-socket",
            msock.to_str().unwrap(),
        ],
    )
    .unwrap();
    (tb, dir, broker, msock)
}

fn scrape(msock: &std::path::Path) -> std::collections::BTreeMap<String, f64> {
    let (status, _, body) = http(
        std::os::unix::net::UnixStream::connect(msock).unwrap(),
        "GET /metrics HTTP/1.0\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    parse_metrics(&body)
}

/// `status --json` at `socket`, as nobody (`unprivileged`) or root.
fn status_as(socket: &std::path::Path, unprivileged: bool) -> Value {
    let out = xsk_testbed::brokerctl(socket, &["status", "--json"], unprivileged)
        .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Per queue: (rx_packets, tx_packets) of the only lease in a status.
fn moved(st: &Value) -> Vec<(u64, Option<u64>, Option<u64>)> {
    let leases = st["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 1, "{st:#}");
    leases[0]["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["queue_id"].as_u64().unwrap(),
                s["rx_packets"].as_u64(),
                s["tx_packets"].as_u64(),
            )
        })
        .collect()
}

/// Issue 15: status shows, for each leased socket, the frames the kernel
/// delivered to its RX ring and took from its TX ring (read by the broker
/// on its own copy of the socket, not reported by the holder). An
/// unprivileged echo client (uid nobody, no capabilities, a policy that
/// grants only this interface) echoes N datagrams: root, the holder's uid
/// (`xsk-brokerctl status`, JSON and table) and the metrics all see at least
/// N frames each way, the same numbers the client counted itself; the
/// counters leave with the lease.
#[test]
fn status_counts_the_frames_each_leased_socket_moved() {
    let test = "status_counts_the_frames_each_leased_socket_moved";
    if !require_root(test) {
        return;
    }
    let _lock = serial_guard().unwrap();
    let (tb, _dir, broker, msock) = narrow_broker_with_metrics(2);
    let sock = broker.socket_path();
    let mut c = ClientProcess::spawn_on("echo", sock, &tb.xsk_if, 2, 0, &[]);
    c.wait_event("ready", READY).unwrap();
    let (nobody, _) = nobody_ids().unwrap();
    assert_eq!(
        xsk_testbed::proc_status_uid(c.pid()).unwrap(),
        nobody.as_raw()
    );
    assert_eq!(
        xsk_testbed::cap_eff(c.pid()).unwrap(),
        0,
        "the holder has no capabilities"
    );
    // The client has created its rings: counts are there (0 or the odd
    // frame the peer's stack sent on its own).
    let before = wait_until("the rings to be counted", READY, || {
        let m = moved(&status_as(sock, false));
        m.iter()
            .all(|(_, rx, tx)| rx.is_some() && tx.is_some())
            .then_some(m)
    });
    let total = |m: &[(u64, Option<u64>, Option<u64>)]| {
        m.iter().fold((0, 0), |(r, t), (_, rx, tx)| {
            (r + rx.unwrap(), t + tx.unwrap())
        })
    };
    let (rx0, tx0) = total(&before);

    const FLOWS: u16 = 16;
    const PER_FLOW: u32 = 25;
    let n = u64::from(FLOWS) * u64::from(PER_FLOW);
    udp_roundtrip(&tb, FLOWS, PER_FLOW, Duration::from_secs(20))
        .unwrap()
        .verify()
        .unwrap();

    // Root sees the lease with its counts; so does the holder's uid.
    let root = status_as(sock, false);
    let after = moved(&root);
    let (rx1, tx1) = total(&after);
    eprintln!("{n} datagrams echoed: rx {rx0} -> {rx1}, tx {tx0} -> {tx1} ({after:?})");
    assert!(
        rx1 - rx0 >= n,
        "rx {rx0} -> {rx1} after {n} datagrams: {root:#}"
    );
    assert!(
        tx1 - tx0 >= n,
        "tx {tx0} -> {tx1} after {n} echoes: {root:#}"
    );
    assert!(
        after.iter().all(|(_, rx, _)| rx.unwrap() > 0),
        "the flows reached both queues: {after:?}"
    );
    let tenant = status_as(sock, true);
    let seen = moved(&tenant);
    assert!(total(&seen).0 >= rx1 && total(&seen).1 >= tx1, "{tenant:#}");
    assert_eq!(tenant["leases"][0]["holder"]["pid"], c.pid());

    // The table shows the columns, and the metrics the same counts.
    let table = xsk_testbed::brokerctl(sock, &["status"], true).unwrap();
    assert!(
        table.contains("RX_PACKETS") && table.contains("TX_PACKETS"),
        "{table}"
    );
    let m = scrape(&msock);
    for (q, rx, tx) in &after {
        let series = |dir: &str| {
            format!(
                "xsk_broker_socket_{dir}_packets_total{{ifname=\"{}\",queue=\"{q}\"}}",
                tb.xsk_if
            )
        };
        let got_rx = m[&series("rx")] as u64;
        let got_tx = m[&series("tx")] as u64;
        assert!(
            got_rx >= rx.unwrap() && got_tx >= tx.unwrap(),
            "queue {q}: {m:?}"
        );
    }

    // The traffic has stopped: the broker's counts are what the client
    // itself received, and what it queued for transmit.
    let last = moved(&status_as(sock, false));
    let (done, status) = c.stop().unwrap();
    assert!(status.success(), "{status}");
    for q in done["queues"].as_array().unwrap() {
        let qid = q["queue_id"].as_u64().unwrap();
        let (_, rx, tx) = last.iter().find(|(id, _, _)| *id == qid).unwrap();
        let own_rx = q["counters"]["rx_packets"].as_u64().unwrap();
        let own_tx = q["counters"]["tx_packets"].as_u64().unwrap();
        // A frame may arrive between the last status and the client's exit.
        assert!(
            rx.unwrap() <= own_rx && own_rx - rx.unwrap() <= 2,
            "queue {qid}: broker rx {rx:?}, client {own_rx}"
        );
        assert!(
            tx.unwrap() <= own_tx && own_tx - tx.unwrap() <= 2,
            "queue {qid}: broker tx {tx:?}, client {own_tx}"
        );
    }

    // The lease is gone, and its counters with it.
    wait_until("the lease to leave the status", READY, || {
        status_as(sock, false)["leases"]
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    });
    let m = scrape(&msock);
    assert!(
        !m.keys().any(|k| k.starts_with("xsk_broker_socket_")),
        "{m:?}"
    );
    assert_eq!(
        socket_mappings(broker.pid()),
        0,
        "the broker unmapped the rings"
    );
}

/// How many mappings of sockets (AF_XDP rings) process `pid` holds.
fn socket_mappings(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("socket:["))
        .count()
}

/// A hostile holder (uid nobody, no capabilities) plays with its socket's
/// rings: none at first, then rings of one entry, then it writes its own
/// RX producer word (backwards, then forwards), then closes its fds while
/// keeping the lease. The broker's status and metrics keep answering
/// throughout: no counts before the rings exist, a step backwards is not
/// counted, and the holder can only ever inflate its own socket's count.
/// When the lease ends the broker holds no mapping of the socket.
#[test]
fn a_holder_cannot_break_status_through_its_rings() {
    use std::io::Write as _;
    let test = "a_holder_cannot_break_status_through_its_rings";
    if !require_root(test) {
        return;
    }
    let _lock = serial_guard().unwrap();
    let (tb, _dir, broker, msock) = narrow_broker_with_metrics(1);
    let sock = broker.socket_path();
    let mut cmd = Command::new(workspace_bin("xsk-attack").unwrap());
    cmd.arg("--socket").arg(sock);
    for step in [
        "whoami",
        "open",
        &tb.xsk_if,
        "0",
        "wait",
        "rings",
        "1",
        "1",
        "wait",
        "scribble",
        "4000000000",
        "wait",
        "scribble",
        "1000",
        "wait",
        "close-sockets",
        "wait",
    ] {
        cmd.arg(step);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = xsk_testbed::spawn_unprivileged(&mut cmd).unwrap();
    let lines = xsk_testbed::line_reader(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let step = |want: &str| -> Value {
        let line = lines
            .recv_timeout(READY)
            .unwrap_or_else(|e| panic!("xsk-attack printed nothing for {want}: {e}"));
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["step"], want, "{v}");
        v
    };
    let who = step("whoami");
    let (nobody, _) = nobody_ids().unwrap();
    assert_eq!(who["uid"], nobody.as_raw().to_string(), "{who}");
    assert_eq!(who["cap_eff"], "0000000000000000", "{who}");
    assert_eq!(step("open")["ok"], true);
    let socket = |st: &Value| st["leases"][0]["sockets"][0].clone();
    let check = |want_rx: Option<u64>, want_tx: Option<u64>, maps: usize| {
        for unprivileged in [false, true] {
            let st = status_as(sock, unprivileged);
            let s = socket(&st);
            assert_eq!(s["queue_id"], 0, "{st:#}");
            assert_eq!(s["rx_packets"].as_u64(), want_rx, "{st:#}");
            assert_eq!(s["tx_packets"].as_u64(), want_tx, "{st:#}");
            assert!(s.get("traffic_error").is_none(), "{st:#}");
        }
        let m = scrape(&msock);
        let rx = format!(
            "xsk_broker_socket_rx_packets_total{{ifname=\"{}\",queue=\"0\"}}",
            tb.xsk_if
        );
        assert_eq!(m.get(&rx).map(|v| *v as u64), want_rx, "{m:?}");
        assert_eq!(
            socket_mappings(broker.pid()),
            maps,
            "mappings of the socket"
        );
    };
    let mut go = || stdin.write_all(b"go\n").unwrap();

    step("wait");
    check(None, None, 0);
    go();
    step("waited");
    assert_eq!(step("rings")["ok"], true);
    step("wait");
    // The broker maps new rings once a second.
    wait_until("the broker to map the rings", READY, || {
        (socket_mappings(broker.pid()) == 2).then_some(())
    });
    check(Some(0), Some(0), 2);
    go();
    step("waited");
    assert_eq!(step("scribble")["ok"], true);
    step("wait");
    check(Some(0), Some(0), 2);
    go();
    step("waited");
    assert_eq!(step("scribble")["ok"], true);
    step("wait");
    check(Some(1000), Some(0), 2);
    go();
    step("waited");
    assert_eq!(step("close-sockets")["closed"], 1);
    step("wait");
    check(Some(1000), Some(0), 2);

    // The holder goes: the lease ends, and the broker unmaps its rings.
    let _ = child.kill();
    let _ = child.wait();
    wait_until("the lease to end", READY, || {
        status_as(sock, false)["leases"]
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    });
    assert_eq!(socket_mappings(broker.pid()), 0);
}
