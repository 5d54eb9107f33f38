//! End-to-end tests of the map flow (QEMU 10.1 `map-path=` / `map-start-index=`):
//! the broker hands out the XSKMAP, as an fd and as a pin in its bpffs
//! directory, and a client holding CAP_NET_RAW only (uid nobody) creates,
//! binds and inserts its own sockets. Real veth pairs, real traffic.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use xsk_broker_protocol::{ErrorCode, OpenMapRequest, OpenRequest};
use xsk_client::BrokerClient;
use xsk_testbed::{
    cap_eff, nobody_ids, proc_status_uid, require_root, serial_guard, udp_roundtrip, wait_until,
    workspace_bin, BpfFs, BrokerProcess, ClientProcess, TempDir, Testbed, TEST_FRAMES,
};

const READY: Duration = Duration::from_secs(15);
const CAP_NET_RAW: u32 = 13;

/// Fields drop in order: broker, namespaces, bpffs, directory.
struct Env {
    broker: BrokerProcess,
    tb: Testbed,
    pins: PathBuf,
    _bpffs: Option<BpfFs>,
    _dir: TempDir,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

fn setup(test: &str, queues: u32, with_bpffs: bool) -> Option<Env> {
    if !require_root(test) {
        return None;
    }
    let lock = serial_guard().expect("e2e lock");
    let tb = Testbed::new(queues).expect("building the veth test bed");
    let dir = TempDir::new("xsk-map").expect("temp dir");
    let pins = dir.join("bpffs").join("xsk-broker");
    let (bpffs, broker) = if with_bpffs {
        let fs = BpfFs::mount(dir.join("bpffs"));
        let arg = pins.to_str().unwrap().to_owned();
        let b = BrokerProcess::spawn_with_args(&tb.xsk, dir.path(), &["--bpffs-dir", &arg])
            .expect("starting xsk-brokerd with --bpffs-dir");
        (Some(fs), b)
    } else {
        let b = BrokerProcess::spawn(&tb.xsk, dir.path()).expect("starting xsk-brokerd");
        (None, b)
    };
    Some(Env {
        broker,
        tb,
        pins,
        _bpffs: bpffs,
        _dir: dir,
        _lock: lock,
    })
}

fn map_client(env: &Env, via: &str, queues: u32, caps: Option<&[u32]>) -> ClientProcess {
    let q = queues.to_string();
    let f = TEST_FRAMES.to_string();
    // The map flow's client creates its own sockets, which bind in its own
    // network namespace: it runs in the broker's (the interface's).
    let caps: Option<Vec<u32>> = caps.map(<[u32]>::to_vec);
    env.tb
        .xsk
        .enter_thread(move || {
            ClientProcess::spawn_with_caps(
                "echo",
                env.broker.socket_path(),
                &[
                    "--ifname",
                    &env.tb.xsk_if,
                    "--queues",
                    &q,
                    "--frames",
                    &f,
                    "--via-map",
                    via,
                ],
                None,
                caps.as_deref(),
            )
        })
        .expect("entering the xsk namespace")
        .expect("spawning xsk-client echo --via-map")
}

/// [`map_client`] in the test's own network namespace, not the interface's.
fn map_client_here(env: &Env, via: &str, queues: u32, caps: Option<&[u32]>) -> ClientProcess {
    let q = queues.to_string();
    let f = TEST_FRAMES.to_string();
    ClientProcess::spawn_with_caps(
        "echo",
        env.broker.socket_path(),
        &[
            "--ifname",
            &env.tb.xsk_if,
            "--queues",
            &q,
            "--frames",
            &f,
            "--via-map",
            via,
        ],
        None,
        caps,
    )
    .expect("spawning xsk-client echo --via-map")
}

/// The map flow end to end with a client holding exactly CAP_NET_RAW: traffic
/// both ways on every queue through the client's own sockets; for `pin`, the
/// pin is the client's (uid nobody, 0600) while the lease lives and is gone after.
fn map_flow_carries_traffic(test: &str, via: &str) {
    const QUEUES: u32 = 2;
    let Some(env) = setup(test, QUEUES, true) else {
        return;
    };
    let mut c = map_client(&env, via, QUEUES, Some(&[CAP_NET_RAW]));
    let ready = c.wait_event("ready", READY).unwrap();
    let (nobody, nogroup) = nobody_ids().unwrap();
    assert_eq!(proc_status_uid(c.pid()).unwrap(), nobody.as_raw());
    assert_eq!(
        cap_eff(c.pid()).unwrap(),
        1 << CAP_NET_RAW,
        "the client must hold CAP_NET_RAW and nothing else"
    );
    assert_eq!(ready["privileges"]["cap_eff"], 1u64 << CAP_NET_RAW);
    assert_eq!(ready["queues"], serde_json::json!([0, 1]));
    let prog = env.tb.xdp_prog_id().unwrap().expect("XDP program attached");
    assert_eq!(ready["program_id"], prog);

    let pin = ready["map_pin"].as_str().map(PathBuf::from);
    if via == "pin" {
        let pin = pin.as_ref().expect("a pin path in the ready line");
        assert_eq!(pin.parent(), Some(env.pins.as_path()), "{}", pin.display());
        let meta = std::fs::metadata(pin).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (nobody.as_raw(), nogroup.as_raw())
        );
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        let dir = std::fs::metadata(&env.pins).unwrap();
        assert_eq!(dir.permissions().mode() & 0o7777, 0o711);
    } else {
        assert!(pin.is_none(), "{ready}");
    }

    let rt = udp_roundtrip(&env.tb, 32, 8, Duration::from_secs(5)).unwrap();
    let (done, status) = c.stop().unwrap();
    if let Err(e) = rt.verify() {
        panic!("{e:#}\nclient: {done:#}");
    }
    assert!(status.success());
    for q in done["queues"].as_array().unwrap() {
        let rx = q["counters"]["rx_packets"].as_u64().unwrap();
        let tx = q["counters"]["tx_packets"].as_u64().unwrap();
        assert!(
            rx > 0 && tx > 0,
            "queue {} carried no traffic: {q}",
            q["queue_id"]
        );
    }

    // The lease ended with the client: pin removed, program detached.
    wait_until(
        "the XDP program to be detached",
        Duration::from_secs(5),
        || env.tb.xdp_prog_id().unwrap().is_none().then_some(()),
    );
    if let Some(pin) = pin {
        assert!(!pin.exists(), "{} must be removed", pin.display());
    }
    assert_eq!(std::fs::read_dir(&env.pins).unwrap().count(), 0);
}

#[test]
fn map_flow_fd_with_net_raw_only() {
    map_flow_carries_traffic("map_flow_fd_with_net_raw_only", "fd");
}

#[test]
fn map_flow_pin_with_net_raw_only() {
    map_flow_carries_traffic("map_flow_pin_with_net_raw_only", "pin");
}

/// Map leases reserve queues like socket leases, and each refusal says what to do.
#[test]
fn map_flow_refusals_are_clear() {
    let Some(env) = setup("map_flow_refusals_are_clear", 2, false) else {
        return;
    };
    // Without CAP_NET_RAW the client cannot create its sockets, and says so.
    let c = map_client(&env, "fd", 1, None);
    let (stderr, status) = c.wait_failure(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("creating AF_XDP sockets needs CAP_NET_RAW"),
        "{stderr}"
    );

    // With CAP_NET_RAW but in another network namespace than the interface:
    // the client's own sockets could not bind there, and it says so.
    let c = map_client_here(&env, "fd", 1, Some(&[CAP_NET_RAW]));
    let (stderr, status) = c.wait_failure(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("run it in the broker's (the interface's) network namespace"),
        "{stderr}"
    );

    // A broker started without --bpffs-dir pins nothing, and says how to fix it.
    let err = BrokerClient::connect(env.broker.socket_path())
        .unwrap()
        .open_map(OpenMapRequest {
            pin: true,
            ..OpenMapRequest::new(env.tb.xsk_if.clone(), 1)
        })
        .unwrap_err();
    assert_eq!(err.broker_code(), Some(ErrorCode::NotPermitted), "{err}");
    assert!(err.to_string().contains("--bpffs-dir"), "{err}");

    // A map lease holds its queues against socket leases and other map leases.
    let map_lease = BrokerClient::connect(env.broker.socket_path())
        .unwrap()
        .open_map(OpenMapRequest::new(env.tb.xsk_if.clone(), 1))
        .unwrap();
    assert_eq!(map_lease.info().ifindex, env.tb.xsk_ifindex);
    let busy = BrokerClient::connect(env.broker.socket_path())
        .unwrap()
        .open(OpenRequest::new(env.tb.xsk_if.clone(), 2))
        .unwrap_err();
    assert_eq!(busy.broker_code(), Some(ErrorCode::QueueBusy), "{busy}");
    assert!(busy.to_string().contains("queue 0 of"), "{busy}");
    let busy = BrokerClient::connect(env.broker.socket_path())
        .unwrap()
        .open_map(OpenMapRequest::new(env.tb.xsk_if.clone(), 1))
        .unwrap_err();
    assert_eq!(busy.broker_code(), Some(ErrorCode::QueueBusy), "{busy}");
    // Queue 1 is still free for sockets.
    let other = BrokerClient::connect(env.broker.socket_path())
        .unwrap()
        .open(OpenRequest {
            start_queue: 1,
            ..OpenRequest::new(env.tb.xsk_if.clone(), 1)
        })
        .unwrap();
    drop(other);
    drop(map_lease);
    wait_until(
        "the XDP program to be detached",
        Duration::from_secs(5),
        || env.tb.xdp_prog_id().unwrap().is_none().then_some(()),
    );
}

/// `--bpffs-dir` somewhere that is not a bpffs: the broker refuses to start and says why.
#[test]
fn broker_refuses_a_bpffs_dir_not_on_bpffs() {
    if !require_root("broker_refuses_a_bpffs_dir_not_on_bpffs") {
        return;
    }
    let _lock = serial_guard().unwrap();
    let tb = Testbed::new(1).unwrap();
    let dir = TempDir::new("xsk-map").unwrap();
    let not_bpffs = dir.join("pins");
    let arg = not_bpffs.to_str().unwrap().to_owned();
    let err =
        BrokerProcess::spawn_with_args(&tb.xsk, dir.path(), &["--bpffs-dir", &arg]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("is not on a bpf filesystem"), "{msg}");
    assert!(!Path::new(&not_bpffs).exists());
}

/// The map-path launcher, as QEMU 10.1 would be run: `xsk-client exec --map`
/// holds the lease, pins the XSKMAP for the program's uid and execs a program
/// that takes `--map-path {map-path}` and `map-start-index` like QEMU and
/// creates its own sockets with CAP_NET_RAW only. Traffic flows both ways on
/// every queue; when the program exits the pin and the program are gone.
#[test]
fn exec_map_launcher_feeds_a_map_path_program() {
    const QUEUES: u32 = 2;
    let Some(env) = setup("exec_map_launcher_feeds_a_map_path_program", QUEUES, true) else {
        return;
    };
    let client = workspace_bin("xsk-client").unwrap();
    let client = client.to_str().unwrap().to_owned();
    let q = QUEUES.to_string();
    let f = TEST_FRAMES.to_string();
    let mut p = env
        .tb
        .xsk
        .enter_thread(|| {
            ClientProcess::spawn_with_caps(
                "exec",
                env.broker.socket_path(),
                &[
                    "--map",
                    "--ifname",
                    &env.tb.xsk_if,
                    "--queues",
                    &q,
                    "--",
                    &client,
                    "echo",
                    "--json",
                    "--ifname",
                    &env.tb.xsk_if,
                    "--queues",
                    "{queues}",
                    "--start-queue",
                    "{map-start-index}",
                    "--map-path",
                    "{map-path}",
                    "--frames",
                    &f,
                ],
                None,
                Some(&[CAP_NET_RAW]),
            )
        })
        .unwrap()
        .unwrap();
    let exec = p.wait_event("exec", READY).unwrap();
    let ready = p.wait_event("ready", READY).unwrap();
    let pin = PathBuf::from(exec["map_path"].as_str().unwrap());
    assert_eq!(pin.parent(), Some(env.pins.as_path()));
    assert_eq!(ready["map_pin"], exec["map_path"]);
    assert_eq!(exec["pid"], ready["pid"], "the launcher must exec in place");
    let (nobody, _) = nobody_ids().unwrap();
    let meta = std::fs::metadata(&pin).unwrap();
    assert_eq!(meta.uid(), nobody.as_raw());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(cap_eff(p.pid()).unwrap(), 1 << CAP_NET_RAW);
    assert_eq!(ready["queues"], serde_json::json!([0, 1]));

    let rt = udp_roundtrip(&env.tb, 32, 8, Duration::from_secs(5)).unwrap();
    let (done, status) = p.stop().unwrap();
    if let Err(e) = rt.verify() {
        panic!("{e:#}\nprogram: {done:#}");
    }
    assert!(status.success(), "{status}");
    for q in done["queues"].as_array().unwrap() {
        let rx = q["counters"]["rx_packets"].as_u64().unwrap();
        let tx = q["counters"]["tx_packets"].as_u64().unwrap();
        assert!(
            rx > 0 && tx > 0,
            "queue {} carried no traffic: {q}",
            q["queue_id"]
        );
    }
    wait_until(
        "the XDP program to be detached",
        Duration::from_secs(5),
        || env.tb.xdp_prog_id().unwrap().is_none().then_some(()),
    );
    assert!(!pin.exists(), "{} must be removed", pin.display());

    // A placeholder of the other flow is refused before anything starts.
    let p = ClientProcess::spawn(
        "exec",
        env.broker.socket_path(),
        &[
            "--map",
            "--ifname",
            &env.tb.xsk_if,
            "--",
            "/bin/echo",
            "{sock-fds}",
        ],
        None,
    )
    .unwrap();
    let (stderr, status) = p.wait_failure(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("{sock-fds} is only available without --map"),
        "{stderr}"
    );
}

/// 300 map leases with pins, opened and closed: the broker's fd count and the
/// pin directory come back to where they were, and the program is detached.
#[test]
fn map_leases_leak_no_fd_or_pin() {
    let Some(env) = setup("map_leases_leak_no_fd_or_pin", 2, true) else {
        return;
    };
    // Hold queue 1 so the program stays attached through the cycles.
    let holder = BrokerClient::connect(env.broker.socket_path())
        .unwrap()
        .open(OpenRequest {
            start_queue: 1,
            ..OpenRequest::new(env.tb.xsk_if.clone(), 1)
        })
        .unwrap();
    let baseline = env.broker.open_fd_count().unwrap();
    let open = || {
        BrokerClient::connect(env.broker.socket_path())
            .unwrap()
            .open_map(OpenMapRequest {
                pin: true,
                ..OpenMapRequest::new(env.tb.xsk_if.clone(), 1)
            })
    };
    for i in 0..300 {
        let lease = match open() {
            Ok(l) => l,
            // The previous cycle's close may not be processed yet.
            Err(e) if e.broker_code() == Some(ErrorCode::QueueBusy) => {
                wait_until("queue 0 to be free", Duration::from_secs(5), || open().ok())
            }
            Err(e) => panic!("cycle {i}: {e}"),
        };
        let pin = PathBuf::from(lease.info().pin_path.clone().unwrap());
        assert!(pin.exists(), "cycle {i}: {}", pin.display());
        drop(lease);
    }
    let after = wait_until("the broker's fds to settle", Duration::from_secs(5), || {
        let n = env.broker.open_fd_count().unwrap();
        (n <= baseline).then_some(n)
    });
    assert!(after <= baseline, "fds grew from {baseline} to {after}");
    wait_until("the pins to be removed", Duration::from_secs(5), || {
        (std::fs::read_dir(&env.pins).unwrap().count() == 0).then_some(())
    });
    drop(holder);
    wait_until(
        "the XDP program to be detached",
        Duration::from_secs(5),
        || env.tb.xdp_prog_id().unwrap().is_none().then_some(()),
    );
}
