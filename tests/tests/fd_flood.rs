//! End-to-end test of the fd flood (issue 11, finding 5): an unprivileged
//! peer says hello, sends a frame header declaring a 1000-byte body and no
//! fds, then 400 one-byte `sendmsg` calls carrying 64 fds each. A broker
//! that kept those fds until the frame completed reached its open-file limit
//! in half a second, failed `accept` with EMFILE and answered good clients
//! `no_such_interface` (ENOENT from socket creation) until the frame timed
//! out. Here the flood runs from one connection and then from several, as
//! uid nobody, against a broker whose policy grants nobody only the test
//! bed's interface; meanwhile the broker's fd count must stay bounded, a good
//! client (nobody, no capabilities) must get its lease and read the status,
//! and the broker must never log `Too many open files`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;
use xsk_testbed::{
    require_root, serial_guard, spawn_unprivileged, wait_until, workspace_bin, BrokerProcess,
    ClientProcess, TempDir, Testbed,
};

/// One-byte sends per connection, and fds per send.
const SENDS: usize = 400;
const FDS_PER_SEND: usize = 64;
/// fds the broker may open beyond its baseline and one per flood connection
/// while the flood runs: the good client's connection, its duplicate for the
/// lease, its socket, the XSK program and map, the status connection and a
/// little room for netlink and ethtool sockets. Far below the flood's 25,600.
const SLACK: usize = 32;

/// The attack helper running as nobody, and its JSON lines.
struct Flood {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Value>,
}

impl Flood {
    fn start(socket: &std::path::Path, conns: usize) -> Flood {
        let mut cmd = Command::new(workspace_bin("xsk-fd-flood").unwrap());
        cmd.arg(socket)
            .args([
                conns.to_string(),
                SENDS.to_string(),
                FDS_PER_SEND.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = spawn_unprivileged(&mut cmd).expect("starting xsk-fd-flood as nobody");
        assert_eq!(
            xsk_testbed::cap_eff(child.id()).unwrap(),
            0,
            "the attacker must have no capabilities"
        );
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| panic!("xsk-fd-flood printed {line:?}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Flood {
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }

    fn next(&self, what: &str, timeout: Duration) -> Value {
        self.lines
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("no {what} line from xsk-fd-flood within {timeout:?}: {e}"))
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sets its flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Raise this process's open-file soft limit to the hard limit (the attacker
/// inherits it: the kernel bounds a user's fds in flight by it).
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
}

/// `xsk-brokerctl status --json` as nobody: its output, or why it failed.
fn status_as_nobody(socket: &std::path::Path) -> Result<Value, String> {
    let out = xsk_testbed::brokerctl(socket, &["status", "--json"], true)?;
    serde_json::from_str(&out).map_err(|e| format!("{e}"))
}

/// Run the flood from `conns` connections; while it holds, a good client
/// leases and reads the status. Returns the most fds the broker had open.
fn flood_round(broker: &BrokerProcess, ifname: &str, conns: usize, baseline: usize) -> usize {
    let stop = AtomicBool::new(false);
    let most = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = broker.open_fd_count() {
                    most.fetch_max(n, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        // Stops the sampler however this ends (an assertion may fail).
        let _stop = SetOnDrop(&stop);
        let flood = Flood::start(broker.socket_path(), conns);
        let t0 = Instant::now();
        for _ in 0..conns {
            let v = flood.next("flooded", Duration::from_secs(60));
            assert_eq!(v["event"], "flooded", "{v}");
            assert!(v["error"].is_null(), "the attacker failed: {v}");
            assert_eq!(v["fds"], SENDS * FDS_PER_SEND, "{v}");
        }
        assert_eq!(
            flood.next("holding", Duration::from_secs(10))["event"],
            "holding"
        );
        let flooded_in = t0.elapsed();
        let during = broker.open_fd_count().unwrap();

        // While the flood holds its frames open: a good client gets its lease
        // on the granted interface, and the status answers.
        let started = Instant::now();
        let mut good = ClientProcess::spawn_on("rx", broker.socket_path(), ifname, 1, 0, &[]);
        let ready = good.wait_event("ready", Duration::from_secs(15));
        let leased_in = started.elapsed();
        let status = status_as_nobody(broker.socket_path());
        stop.store(true, Ordering::Relaxed);
        let most = most.load(Ordering::Relaxed);
        eprintln!(
            "flood from {conns} connection(s) x {SENDS} sends x {FDS_PER_SEND} fds, sent in \
             {flooded_in:?}: broker fds {baseline} before, {during} after the flood, at most \
             {most} while it ran; good client ready in {leased_in:?}"
        );
        let ready = ready.unwrap_or_else(|e| panic!("the good client got no lease: {e:#}"));
        assert_eq!(ready["queues"], serde_json::json!([0]));
        let status = status.unwrap_or_else(|e| panic!("status as nobody failed: {e}"));
        let leases = status["leases"].as_array().expect("a leases array");
        assert!(
            leases.iter().any(|l| l["ifname"] == ifname),
            "the status lacks the good client's lease on {ifname}: {status}"
        );
        assert!(
            most <= baseline + conns + SLACK,
            "the broker's fd count reached {most} during the flood (baseline {baseline}, \
             {conns} flood connection(s))"
        );
        good.stop().unwrap();

        // The flood's frames, once completed, are refused, naming why.
        writeln!(flood.stdin.as_ref().unwrap(), "finish").unwrap();
        for _ in 0..conns {
            let v = flood.next("answer", Duration::from_secs(15));
            assert_eq!(v["event"], "answer", "{v}");
            let answer = v["answer"].as_str().unwrap();
            assert!(
                answer.starts_with("bad_request") && answer.contains("accepts no file descriptors"),
                "the flooded frame was answered {answer:?}"
            );
        }
        drop(flood);
        most
    })
}

#[test]
fn fd_flood_does_not_exhaust_the_broker() {
    if !require_root("fd_flood_does_not_exhaust_the_broker") {
        return;
    }
    raise_nofile();
    let _lock = serial_guard().expect("e2e lock");
    let tb = Testbed::new(2).expect("building the veth test bed");
    let dir = TempDir::new("xsk-e2e").expect("temp dir");
    // nobody may lease the test bed's interface and nothing else.
    let policy = dir.join("policy.json");
    let rules = serde_json::json!({
        "version": 1,
        "rules": [{ "name": "only-the-test-bed", "users": ["nobody"], "interfaces": [tb.xsk_if] }]
    });
    std::fs::write(&policy, rules.to_string()).unwrap();
    let broker = BrokerProcess::spawn_with_args(
        &tb.xsk,
        dir.path(),
        // The flood's frames must stay open while the good client is served.
        &["--policy", policy.to_str().unwrap(), "--idle-timeout", "60"],
    )
    .expect("starting xsk-brokerd");
    // The policy really is that narrow: another interface is refused.
    let other = ClientProcess::spawn_on("rx", broker.socket_path(), "lo", 1, 0, &[]);
    let (err, st) = other.wait_failure(Duration::from_secs(15)).unwrap();
    assert!(
        !st.success() && err.contains("not_permitted"),
        "{st}: {err}"
    );

    // Let the readiness probe's and the refused client's connections close.
    let baseline = wait_until("the broker to be idle", Duration::from_secs(5), || {
        std::thread::sleep(Duration::from_millis(100));
        let a = broker.open_fd_count().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        (broker.open_fd_count().unwrap() == a).then_some(a)
    });

    for conns in [1, 4] {
        flood_round(&broker, &tb.xsk_if, conns, baseline);
        let after = wait_until(
            "the broker's fd count to return to its baseline",
            Duration::from_secs(10),
            || {
                let n = broker.open_fd_count().unwrap();
                (n <= baseline).then_some(n)
            },
        );
        eprintln!("after the flood from {conns} connection(s): {after} fds (baseline {baseline})");
    }
    let log = broker.log();
    assert!(
        log.contains("open-file budget: "),
        "the start log must state the fd budget:\n{log}"
    );
    assert!(
        !log.contains("Too many open files"),
        "the broker ran out of fds:\n{log}"
    );
    assert!(!log.contains("EMFILE"), "the broker ran out of fds:\n{log}");
}

/// Limits whose connections alone cannot fit the open-file limit are refused
/// at start, naming the options; the broker never starts only to run out of
/// fds later.
#[test]
fn limits_past_the_open_file_limit_are_refused_at_start() {
    if !require_root("limits_past_the_open_file_limit_are_refused_at_start") {
        return;
    }
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    // Two fds per connection (its stream, and the broker's duplicate while it
    // holds a lease) plus the reserve: this many connections cannot fit.
    let too_many = (hard / 2).to_string();
    let _lock = serial_guard().expect("e2e lock");
    let tb = Testbed::new(1).expect("building the veth test bed");
    let dir = TempDir::new("xsk-e2e").expect("temp dir");
    let err = BrokerProcess::spawn_with_args(
        &tb.xsk,
        dir.path(),
        &[
            "--max-connections",
            &too_many,
            "--max-connections-per-uid",
            "16",
        ],
    )
    .expect_err("the broker must refuse to start");
    let err = format!("{err:#}");
    for needle in [
        format!("(RLIMIT_NOFILE hard limit {hard}) is too low for --max-connections {too_many}"),
        "LimitNOFILE=".to_owned(),
        format!("lower --max-connections to at most {}", (hard - 64) / 2),
    ] {
        assert!(err.contains(&needle), "{err}\nlacks {needle:?}");
    }
}

/// Set the open-file limits of process `pid` (`prlimit(2)`).
fn set_nofile(pid: u32, soft: u64, hard: u64) {
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `new` is a valid rlimit; no old value is asked for.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(
        rc,
        0,
        "prlimit({pid}, RLIMIT_NOFILE): {}",
        std::io::Error::last_os_error()
    );
}

/// A broker whose fd table is full (its limit lowered from outside) says
/// so once, naming EMFILE, its fds and limit and the options, not once per
/// retry; it serves again once fds are free.
#[test]
fn accept_out_of_fds_is_logged_once_as_what_it_is() {
    if !require_root("accept_out_of_fds_is_logged_once_as_what_it_is") {
        return;
    }
    let _lock = serial_guard().expect("e2e lock");
    let tb = Testbed::new(1).expect("building the veth test bed");
    let dir = TempDir::new("xsk-e2e").expect("temp dir");
    let broker =
        BrokerProcess::spawn_with_args(&tb.xsk, dir.path(), &[]).expect("starting xsk-brokerd");
    std::thread::sleep(Duration::from_millis(300));
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    // Room for one more fd: the lowest free number, and none above it.
    let open: Vec<u64> = broker
        .open_fds()
        .unwrap()
        .iter()
        .map(|(fd, _)| u64::from(*fd))
        .collect();
    let free = (0..).find(|n| !open.contains(n)).unwrap();
    let limit = free + 1;
    set_nofile(broker.pid(), limit, hard);
    let waiting: Vec<UnixStream> = (0..50)
        .map(|_| UnixStream::connect(broker.socket_path()).unwrap())
        .collect();
    let line = wait_until("the broker to log EMFILE", Duration::from_secs(5), || {
        broker
            .log()
            .lines()
            .find(|l| l.contains("cannot accept connections: EMFILE"))
            .map(str::to_owned)
    });
    for needle in [
        format!("its limit (RLIMIT_NOFILE) is {limit}"),
        "fds open".to_owned(),
        "LimitNOFILE=".to_owned(),
        "--max-connections".to_owned(),
    ] {
        assert!(line.contains(&needle), "{line:?} lacks {needle:?}");
    }
    eprintln!("{line}");
    // The accept loop retries every 50 ms; the log says it once.
    std::thread::sleep(Duration::from_secs(2));
    let reports = broker
        .log()
        .lines()
        .filter(|l| l.contains("cannot accept"))
        .count();
    assert_eq!(reports, 1, "{}", broker.log());
    set_nofile(broker.pid(), hard, hard);
    drop(waiting);
    let r = xsk_testbed::RawPeer::hello(broker.socket_path());
    assert!(matches!(
        r.call(&xsk_broker_protocol::Request::Status(
            xsk_broker_protocol::StatusRequest {}
        )),
        xsk_broker_protocol::Response::Status(_)
    ));
}
