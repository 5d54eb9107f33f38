//! End-to-end tests of a broker restart (`--state-dir`, `--pin-dir`): while
//! two unprivileged echo clients carry request/response traffic from the peer,
//! the broker is stopped (SIGTERM) or killed (SIGKILL) and started again.
//! Traffic keeps flowing with no loss, leased queues stay refused to others,
//! queues of clients that died while the broker was down are reclaimed,
//! programs no lease uses are detached at start, and the state file survives
//! a crash mid-write. Real namespaces, veth, XDP programs and processes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use xsk_broker_protocol::{ErrorCode, OpenMapRequest, OpenRequest};
use xsk_client::BrokerClient;
use xsk_testbed::{
    require_root, serial_guard, udp_roundtrip, BpfFs, BrokerProcess, ClientProcess, TempDir,
    Testbed, TEST_FRAMES,
};

const READY: Duration = Duration::from_secs(15);

/// Fields drop in order: clients and broker before the namespaces and dirs.
struct Env {
    broker: Option<BrokerProcess>,
    tb: Testbed,
    _bpf: BpfFs,
    dir: TempDir,
    /// More broker arguments.
    extra: Vec<String>,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Env {
    fn new(test: &str) -> Option<Env> {
        Env::with_maps(test, false)
    }

    /// With `maps`, the broker also pins XSKMAPs for clients (`--bpffs-dir`).
    fn with_maps(test: &str, maps: bool) -> Option<Env> {
        if !require_root(test) {
            return None;
        }
        let lock = serial_guard().expect("e2e lock");
        let tb = Testbed::new(4).expect("building the veth test bed");
        let dir = TempDir::new("xsk-restart").expect("temp dir");
        let bpf = BpfFs::mount(dir.path().join("bpffs"));
        let extra = if maps {
            let d = dir.path().join("bpffs/maps");
            vec!["--bpffs-dir".to_owned(), d.to_str().unwrap().to_owned()]
        } else {
            Vec::new()
        };
        let mut env = Env {
            broker: None,
            tb,
            _bpf: bpf,
            dir,
            extra,
            _lock: lock,
        };
        env.start().expect("starting xsk-brokerd");
        Some(env)
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn pin_dir(&self) -> PathBuf {
        self.dir.path().join("bpffs/xsk-broker")
    }

    /// Start the broker (again) on the same socket, state and pin directories.
    fn start(&mut self) -> anyhow::Result<()> {
        let (state, pins) = (self.state_dir(), self.pin_dir());
        let mut args = vec![
            "--state-dir",
            state.to_str().unwrap(),
            "--pin-dir",
            pins.to_str().unwrap(),
        ];
        args.extend(self.extra.iter().map(String::as_str));
        const RESTORED: &str = "restored the state of an earlier run";
        let log = self.dir.path().join("xsk-brokerd.log");
        let restored = || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches(RESTORED)
                .count()
        };
        let before = restored();
        let broker = BrokerProcess::spawn_with_args(&self.tb.xsk, self.dir.path(), &args)?;
        // The socket accepts connections (queued) before the broker has
        // taken over the earlier run's state; wait for that.
        let deadline = Instant::now() + READY;
        while restored() == before {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the broker did not log {RESTORED:?}; log:\n{}",
                broker.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        self.broker = Some(broker);
        Ok(())
    }

    fn broker(&mut self) -> &mut BrokerProcess {
        self.broker.as_mut().expect("a broker is running")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("xsk-brokerd.sock")
    }

    fn echo(&self, queues: u32, start: u32) -> ClientProcess {
        let (q, s, f) = (
            queues.to_string(),
            start.to_string(),
            TEST_FRAMES.to_string(),
        );
        let mut c = ClientProcess::spawn(
            "echo",
            &self.socket(),
            &[
                "--ifname",
                &self.tb.xsk_if,
                "--queues",
                &q,
                "--start-queue",
                &s,
                "--frames",
                &f,
                "--require-unprivileged",
            ],
            None,
        )
        .expect("spawning xsk-client echo");
        c.wait_event("ready", READY).expect("client ready");
        c
    }

    /// What a new client asking for `queues` from `start` gets.
    fn try_open(&self, queues: u32, start: u32) -> Result<xsk_client::Lease, xsk_client::Error> {
        let mut req = OpenRequest::new(self.tb.xsk_if.clone(), queues);
        req.start_queue = start;
        BrokerClient::connect(self.socket())?.open(req)
    }

    fn state_json(&self) -> serde_json::Value {
        let p = self.state_dir().join("state.json");
        serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
    }

    /// The interfaces' pins (the confinement LSM program's pins, present on
    /// kernels that run it, stay for the broker's lifetime and are not listed).
    fn pins(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.pin_dir())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with("xsk-confine-"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn assert_busy(env: &Env, queue: u32) {
    let err = env.try_open(1, queue).expect_err("queue must be busy");
    assert_eq!(err.broker_code(), Some(ErrorCode::QueueBusy), "{err}");
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One short request/response run from the peer (16 flows, 2 rounds).
///
/// Binding the flows' ports can fail with EADDRINUSE for a moment while the
/// test forks the new broker: the child holds copies of the previous run's
/// sockets until it execs (they are close-on-exec). Nothing was sent then,
/// so that bind is retried; any other error fails the test.
fn round_trip(tb: &Testbed) -> xsk_testbed::RoundTrip {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match udp_roundtrip(tb, 16, 2, Duration::from_secs(5)) {
            Ok(rt) => return rt,
            Err(e)
                if Instant::now() < deadline
                    && e.chain().any(|c| {
                        c.downcast_ref::<std::io::Error>()
                            .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
                    }) =>
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("round trip: {e:#}"),
        }
    }
}

/// Two clients with traffic; stop the broker with `stop` and start it again
/// while the traffic flows; check nothing was lost and the queues stayed
/// theirs; then after the clients exit everything is released and detached.
fn traffic_survives_restart(test: &str, kill: bool) {
    let Some(mut env) = Env::new(test) else {
        return;
    };
    let a = env.echo(2, 0);
    let b = env.echo(2, 2);
    let program = env.tb.xdp_prog_id().unwrap().expect("program attached");
    udp_roundtrip(&env.tb, 16, 4, Duration::from_secs(5))
        .unwrap()
        .verify()
        .expect("traffic before the restart");

    let stop = AtomicBool::new(false);
    let (sent, lost, problems, down_for) = std::thread::scope(|s| {
        let tb = &env.tb;
        let stop = &stop;
        let traffic = s.spawn(move || {
            let (mut sent, mut lost, mut problems) = (0u64, 0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let rt = round_trip(tb);
                sent += rt.sent;
                lost += rt.lost();
                if let Err(e) = rt.verify() {
                    problems.push(format!("{e:#}"));
                }
            }
            (sent, lost, problems)
        });
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        let broker = env.broker.as_mut().unwrap();
        let st = if kill {
            broker.kill().unwrap()
        } else {
            broker.terminate().unwrap()
        };
        if !kill {
            assert!(st.success(), "SIGTERM must stop the broker cleanly: {st}");
        }
        // The broker is down for a while: traffic must not notice.
        std::thread::sleep(Duration::from_millis(500));
        let (state, pins) = (env.state_dir(), env.pin_dir());
        let broker = BrokerProcess::spawn_with_args(
            &env.tb.xsk,
            env.dir.path(),
            &[
                "--state-dir",
                state.to_str().unwrap(),
                "--pin-dir",
                pins.to_str().unwrap(),
            ],
        )
        .expect("restarting xsk-brokerd");
        let down_for = t0.elapsed();
        env.broker = Some(broker);
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let (sent, lost, problems) = traffic.join().unwrap();
        (sent, lost, problems, down_for)
    });
    eprintln!(
        "{test}: broker down for {down_for:?}; {sent} datagrams sent during the restart, {lost} lost"
    );
    assert!(sent > 0, "no traffic was sent during the restart");
    assert_eq!(lost, 0, "datagrams lost across the restart: {problems:?}");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        env.tb.xdp_prog_id().unwrap(),
        Some(program),
        "the same program stays attached"
    );

    // The clients' queues are still theirs; the new broker says so.
    for q in 0..4 {
        assert_busy(&env, q);
    }
    let log = env.broker().log();
    assert!(log.contains("2 lease(s) kept"), "{log}");
    let state = env.state_json();
    assert_eq!(state["leases"].as_array().unwrap().len(), 2, "{state}");
    udp_roundtrip(&env.tb, 16, 4, Duration::from_secs(5))
        .unwrap()
        .verify()
        .expect("traffic after the restart");

    // A client that exits after the restart releases its queues (watched by
    // pidfd: it has no connection to the new broker).
    a.kill().unwrap();
    let mut lease = None;
    wait_until("queues 0-1 released", Duration::from_secs(5), || {
        lease = env.try_open(2, 0).ok();
        lease.is_some()
    });
    assert_busy(&env, 2);
    drop(lease);
    b.kill().unwrap();
    wait_until("the program detached", Duration::from_secs(5), || {
        env.tb.xdp_prog_id().unwrap().is_none()
    });
    assert_eq!(env.pins(), Vec::<String>::new(), "no pin is left");
    wait_until("the state emptied", Duration::from_secs(5), || {
        env.state_json()["leases"].as_array().unwrap().is_empty()
    });
    // Nothing of the restored leases stays open in the broker: no program or
    // map fd, no pidfd.
    let fds = env.broker().open_fds().unwrap();
    assert!(
        !fds.iter()
            .any(|(_, t)| t.contains("bpf") || t.contains("pidfd")),
        "the broker leaks: {fds:?}"
    );
}

/// SIGTERM: the broker stops cleanly, leaves the program and the clients'
/// sockets in place; the next one takes over with no loss.
#[test]
fn traffic_survives_broker_sigterm_and_restart() {
    traffic_survives_restart("traffic_survives_broker_sigterm_and_restart", false);
}

/// SIGKILL (a crash): the same.
#[test]
fn traffic_survives_broker_sigkill_and_restart() {
    traffic_survives_restart("traffic_survives_broker_sigkill_and_restart", true);
}

/// A client that dies while the broker is down: its queues are free after
/// the restart; when the last one dies, the program is detached at start.
#[test]
fn holders_that_died_while_the_broker_was_down_are_released_at_start() {
    let Some(mut env) =
        Env::new("holders_that_died_while_the_broker_was_down_are_released_at_start")
    else {
        return;
    };
    let a = env.echo(2, 0);
    let b = env.echo(1, 2);
    env.broker().kill().unwrap();
    a.kill().unwrap();
    env.start().unwrap();
    let lease = env
        .try_open(2, 0)
        .expect("queues of the dead client are free");
    assert_busy(&env, 2);
    drop(lease);
    wait_until("the lease released", Duration::from_secs(5), || {
        env.try_open(1, 0).is_ok()
    });
    let log = env.broker().log();
    assert!(
        log.contains("the holder exited while the broker was down"),
        "{log}"
    );
    assert!(env.tb.xdp_prog_id().unwrap().is_some());

    // Now the last holder dies while the broker is down: at start nothing
    // uses the program any more, so it is detached and its pins removed.
    env.broker().terminate().unwrap();
    b.kill().unwrap();
    assert!(env.tb.xdp_prog_id().unwrap().is_some(), "still attached");
    env.start().unwrap();
    assert_eq!(env.tb.xdp_prog_id().unwrap(), None, "detached at start");
    assert_eq!(env.pins(), Vec::<String>::new());
    let state = env.state_json();
    assert!(state["leases"].as_array().unwrap().is_empty(), "{state}");
    assert!(
        state["interfaces"].as_array().unwrap().is_empty(),
        "{state}"
    );
    // And the broker serves as before.
    let mut c = env.echo(4, 0);
    udp_roundtrip(&env.tb, 16, 2, Duration::from_secs(5))
        .unwrap()
        .verify()
        .unwrap();
    c.wait_event("ready", Duration::ZERO).ok();
    c.stop().unwrap();
}

/// A crash in the middle of writing the state leaves the previous state whole
/// (it is written to a temporary file and renamed): a truncated temporary
/// file is ignored and removed at start. A state file that is not valid
/// (which the atomic write never produces) stops the start with a clear error.
#[test]
fn state_survives_a_crash_mid_write() {
    let Some(mut env) = Env::new("state_survives_a_crash_mid_write") else {
        return;
    };
    let a = env.echo(1, 1);
    env.broker().kill().unwrap();
    let state = env.state_dir().join("state.json");
    let good = std::fs::read(&state).unwrap();
    // What a crash mid-write leaves: part of the next state in the temporary file.
    let tmp = env.state_dir().join("state.json.tmp");
    std::fs::write(&tmp, &good[..good.len() / 2]).unwrap();
    env.start().unwrap();
    assert!(!tmp.exists(), "the leftover temporary file is removed");
    assert_busy(&env, 1);
    assert!(env
        .broker()
        .log()
        .contains("state write that did not complete"));

    // A state file cut short by something else: a clear error, no start.
    env.broker().kill().unwrap();
    std::fs::write(&state, &good[..good.len() / 2]).unwrap();
    let err = format!("{:#}", env.start().unwrap_err());
    assert!(err.contains("is not valid"), "{err}");
    assert!(err.contains(state.to_str().unwrap()), "{err}");
    assert!(err.contains("move it aside"), "{err}");
    // Put back, it starts and still knows the lease.
    std::fs::write(&state, &good).unwrap();
    env.start().unwrap();
    assert_busy(&env, 1);
    a.stop().unwrap();
    wait_until("queue 1 released", Duration::from_secs(5), || {
        env.try_open(1, 1).is_ok()
    });
}

/// The broker died between attaching (and pinning) a program and saving the
/// state that names it: at start the pinned program is recognised as the
/// broker's, detached, and its pins removed.
#[test]
fn a_pinned_program_missing_from_the_state_is_detached_at_start() {
    let Some(mut env) = Env::new("a_pinned_program_missing_from_the_state_is_detached_at_start")
    else {
        return;
    };
    let a = env.echo(1, 0);
    env.broker().kill().unwrap();
    a.kill().unwrap();
    std::fs::write(
        env.state_dir().join("state.json"),
        br#"{"version":1,"interfaces":[],"leases":[]}"#,
    )
    .unwrap();
    assert!(env.tb.xdp_prog_id().unwrap().is_some());
    assert_eq!(env.pins().len(), 2, "{:?}", env.pins());
    env.start().unwrap();
    assert_eq!(env.tb.xdp_prog_id().unwrap(), None, "detached at start");
    assert_eq!(env.pins(), Vec::<String>::new());
    env.try_open(4, 0).expect("every queue is free");
}

/// `--pin-dir` must be on a bpffs, and the error says how to get one.
#[test]
fn pin_dir_off_bpffs_is_refused() {
    let Some(mut env) = Env::new("pin_dir_off_bpffs_is_refused") else {
        return;
    };
    env.broker().terminate().unwrap();
    let (state, off) = (env.state_dir(), env.dir.path().join("not-bpffs"));
    let err = BrokerProcess::spawn_with_args(
        &env.tb.xsk,
        env.dir.path(),
        &[
            "--state-dir",
            state.to_str().unwrap(),
            "--pin-dir",
            off.to_str().unwrap(),
        ],
    )
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("--pin-dir"), "{err}");
    assert!(err.contains("is not on a bpf filesystem"), "{err}");
}

/// A map lease (the XSKMAP pinned for a client holding CAP_NET_RAW only) is
/// kept across a restart with its pin while its holder runs, and released,
/// pin removed, when it exits.
#[test]
fn map_lease_and_its_pin_survive_a_restart() {
    const CAP_NET_RAW: u32 = 13;
    let Some(mut env) = Env::with_maps("map_lease_and_its_pin_survive_a_restart", true) else {
        return;
    };
    let f = TEST_FRAMES.to_string();
    let socket = env.socket();
    let ifname = env.tb.xsk_if.clone();
    let mut m = env
        .tb
        .xsk
        .enter_thread(move || {
            ClientProcess::spawn_with_caps(
                "echo",
                &socket,
                &[
                    "--ifname",
                    &ifname,
                    "--queues",
                    "2",
                    "--frames",
                    &f,
                    "--via-map",
                    "pin",
                ],
                None,
                Some(&[CAP_NET_RAW]),
            )
        })
        .expect("entering the xsk namespace")
        .expect("spawning xsk-client echo --via-map pin");
    m.wait_event("ready", READY).expect("map client ready");
    let s = env.echo(2, 2);
    let pin = env
        .dir
        .path()
        .join(format!("bpffs/maps/{}-lease-0", env.tb.xsk_if));
    assert!(pin.exists(), "{}", pin.display());

    env.broker().kill().unwrap();
    env.start().unwrap();
    assert!(pin.exists(), "the live holder's pin is kept");
    assert_busy(&env, 0);
    assert_busy(&env, 1);
    udp_roundtrip(&env.tb, 16, 4, Duration::from_secs(5))
        .unwrap()
        .verify()
        .expect("traffic through the map client's own sockets after the restart");

    m.kill().unwrap();
    wait_until("the map lease released", Duration::from_secs(5), || {
        !pin.exists() && env.try_open(2, 0).is_ok()
    });
    s.kill().unwrap();
}

/// A grant the broker cannot record in its state file is refused and undone
/// (a restart would forget it): the client gets `internal` with the reason,
/// and no program, pin or reservation is left.
#[test]
fn a_grant_that_cannot_be_recorded_is_refused() {
    let Some(env) = Env::new("a_grant_that_cannot_be_recorded_is_refused") else {
        return;
    };
    refused_while_state_unwritable(&env, || env.try_open(2, 0));
    let lease = env
        .try_open(2, 0)
        .expect("granted once the state can be written");
    drop(lease);
}

/// Make the state directory unwritable, ask for a grant with `open`, and
/// restore the directory: the grant must be refused with `internal` naming
/// the lease record, and leave no program attached and no program pin.
fn refused_while_state_unwritable<T: std::fmt::Debug>(
    env: &Env,
    open: impl Fn() -> Result<T, xsk_client::Error>,
) {
    use std::os::unix::fs::PermissionsExt;
    // The broker runs as root without CAP_DAC_OVERRIDE: mode 0500 stops it.
    let mode = |m| std::fs::set_permissions(env.state_dir(), PermissionsExt::from_mode(m));
    mode(0o500).unwrap();
    let err = open().expect_err("must be refused");
    mode(0o700).unwrap();
    assert_eq!(err.broker_code(), Some(ErrorCode::Internal), "{err}");
    assert!(
        err.to_string().contains("could not record the lease"),
        "{err}"
    );
    assert_eq!(env.tb.xdp_prog_id().unwrap(), None, "nothing left attached");
    assert_eq!(env.pins(), Vec::<String>::new());
}

/// The same for the map flow: a map lease whose state cannot be saved is
/// refused and leaves no program, program pin or map pin behind.
#[test]
fn a_map_grant_that_cannot_be_recorded_is_refused() {
    let Some(env) = Env::with_maps("a_map_grant_that_cannot_be_recorded_is_refused", true) else {
        return;
    };
    let map_pins = || -> Vec<String> {
        std::fs::read_dir(env.dir.path().join("bpffs/maps"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let open_map = || {
        let mut req = OpenMapRequest::new(env.tb.xsk_if.clone(), 2);
        req.pin = true;
        BrokerClient::connect(env.socket())?.open_map(req)
    };
    refused_while_state_unwritable(&env, open_map);
    assert_eq!(map_pins(), Vec::<String>::new(), "no map pin left");
    let lease = open_map().expect("granted once the state can be written");
    assert_eq!(map_pins().len(), 1, "the granted lease's pin");
    drop(lease);
}

/// A pid now used by another process is not the holder: the state records
/// the holder's start time, and a live pid with another start time does not
/// keep the queues.
#[test]
fn a_reused_pid_is_not_taken_for_the_holder() {
    let Some(mut env) = Env::new("a_reused_pid_is_not_taken_for_the_holder") else {
        return;
    };
    let a = env.echo(1, 0);
    env.broker().kill().unwrap();
    // Same pid, another start time: what a reused pid looks like.
    let path = env.state_dir().join("state.json");
    let mut state = env.state_json();
    let lease = &mut state["leases"][0];
    assert_eq!(lease["pid"], a.pid());
    let started = lease["start_time"].as_u64().expect("start time recorded");
    lease["start_time"] = (started + 1).into();
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    env.start().unwrap();
    // The broker takes the holder for gone and drops its lease; but the
    // holder's socket is still bound to the queue, and the kernel says so:
    // the queue is not granted while that socket lives.
    let err = env
        .try_open(1, 0)
        .expect_err("queue 0 is still bound by the live client");
    assert_eq!(err.broker_code(), Some(ErrorCode::QueueBusy), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("previous holder (pid {}", a.pid())),
        "{err}"
    );
    a.kill().unwrap();
    wait_until(
        "the queue of a holder that is gone to be free",
        READY,
        || env.try_open(1, 0).is_ok(),
    );
}
