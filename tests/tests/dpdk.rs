//! End-to-end tests of the DPDK endpoint (`--dpdk-socket`) with a real DPDK:
//! Debian trixie's `dpdk-testpmd` 24.11 and its `net_af_xdp` driver, in a
//! root built by `scripts/build-dpdk-root` (cached under target/dpdk-root),
//! run inside the test bed's network namespace as uid nobody with only
//! CAP_NET_RAW and CAP_IPC_LOCK (never CAP_NET_ADMIN or CAP_BPF). testpmd
//! forwards in `macswap` mode: every frame the peer sends must come back
//! with its Ethernet addresses swapped.
//!
//! - `use_cni=1,dp_path=SOCK`: the XSKMAP from the broker's DPDK socket,
//!   one connection (and one queue) per receive queue; one and two queues.
//! - `use_pinned_map=1,dp_path=PIN`: the XSKMAP pinned by the broker for a
//!   lease held by `xsk-client exec --map`.
//! - The handshake itself against a raw client: `/nak` for malformed
//!   messages, `/fd_nak` and a closed connection for a refusal.

use std::ffi::CString;
use std::io::{IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use xsk_testbed::{
    cap_eff, parse_udp_frame, proc_status_uid, require_root, roundtrip_payload, send_udp,
    serial_guard, spawn_nobody_with_caps, wait_until, workspace_bin,
    xdp_attachments_from_link_json, BpfFs, BrokerProcess, Capture, TempDir, Testbed,
    FLOW_SRC_PORT_BASE,
};

const CAP_NET_RAW: u32 = 13;
const CAP_IPC_LOCK: u32 = 14;
/// Frames the peer sends; all must come back.
const FRAMES: u32 = 100;
/// Flows they are spread over (so two queues both get some).
const FLOWS: u16 = 20;

/// The trixie root with dpdk-testpmd, built once (1–2 minutes) and cached.
/// `None` (skip) when it cannot be built, except under CI=true, where that
/// fails the test.
fn dpdk_root(test: &str) -> Option<PathBuf> {
    // The tests of this file run in parallel: one builds, the others wait.
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = here.join("target").join("dpdk-root");
    if root.join(".ready").exists() {
        return Some(root);
    }
    let script = here.join("scripts").join("build-dpdk-root");
    let started = Instant::now();
    let out = Command::new(&script).arg(&root).output();
    let why = match out {
        Ok(o) if o.status.success() && root.join(".ready").exists() => {
            eprintln!(
                "{test}: built {} in {:.0} s",
                root.display(),
                started.elapsed().as_secs_f64()
            );
            return Some(root);
        }
        Ok(o) => format!(
            "{} failed ({}): {}",
            script.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("cannot run {}: {e}", script.display()),
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: the DPDK root is needed and could not be built: {why}");
    }
    eprintln!("SKIP {test}: no DPDK root: {why}");
    None
}

/// Fields drop in order: testpmd is stopped by the test, then the broker,
/// namespaces, bpffs, directory.
struct Env {
    broker: BrokerProcess,
    tb: Testbed,
    root: PathBuf,
    _bpffs: Option<BpfFs>,
    dir: TempDir,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

fn setup(test: &str, queues: u32, with_bpffs: bool) -> Option<Env> {
    if !require_root(test) {
        return None;
    }
    let root = dpdk_root(test)?;
    let lock = serial_guard().expect("e2e lock");
    let tb = Testbed::new(queues).expect("building the veth test bed");
    let dir = TempDir::new("xsk-dpdk").expect("temp dir");
    // The DPDK user (nobody) may have the test interface's map, nothing else.
    let policy = dir.join("policy.json");
    std::fs::write(
        &policy,
        format!(
            r#"{{"version":1,"rules":[{{"name":"dpdk","users":["nobody"],"interfaces":["{}"],"map_flow":true}}]}}"#,
            tb.xsk_if
        ),
    )
    .unwrap();
    let sock = dir.join("dpdk.sock");
    let bpffs = with_bpffs.then(|| BpfFs::mount(dir.join("bpffs")));
    let pins = dir.join("bpffs").join("xsk-broker");
    let mut args = vec![
        "--policy",
        policy.to_str().unwrap(),
        "--dpdk-socket",
        sock.to_str().unwrap(),
        "--dpdk-socket-mode",
        "0666",
    ];
    if with_bpffs {
        args.extend_from_slice(&["--bpffs-dir", pins.to_str().unwrap()]);
    }
    let broker = BrokerProcess::spawn_with_args(&tb.xsk, dir.path(), &args)
        .expect("starting xsk-brokerd with --dpdk-socket");
    Some(Env {
        broker,
        tb,
        root,
        _bpffs: bpffs,
        dir,
        _lock: lock,
    })
}

fn cstr(p: impl AsRef<std::ffi::OsStr>) -> CString {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_ref().as_bytes()).unwrap()
}

/// Start dpdk-testpmd from the DPDK root in the interface's network
/// namespace, as nobody with CAP_NET_RAW and CAP_IPC_LOCK only, forwarding
/// in macswap mode on `vdev`. In a mount namespace of its own: proc, sysfs
/// (of that network namespace), /dev, a tmpfs on /tmp and the test
/// directory (under /tmp) at its own path are mounted in the root, which
/// becomes its `/`: the broker's sockets and pins have the same paths
/// inside and outside. With `launcher`, testpmd is started through it
/// (`launcher... dpdk-testpmd ARGS`, e.g. `xsk-client exec ... --`).
fn spawn_testpmd(env: &Env, launcher: &[String], vdevs: &[String]) -> (Child, PathBuf) {
    let netns = std::fs::File::open(env.tb.xsk.path()).expect("opening the netns");
    let root = &env.root;
    let (proc_, sys, dev, tmp) = (
        cstr(root.join("proc")),
        cstr(root.join("sys")),
        cstr(root.join("dev")),
        cstr(root.join("tmp")),
    );
    assert_eq!(
        env.dir.path().parent(),
        Some(Path::new("/tmp")),
        "the test directory must be directly under /tmp"
    );
    let broker_dir = cstr(root.join(env.dir.path().strip_prefix("/").unwrap()));
    let test_dir = cstr(env.dir.path());
    let root_c = cstr(root);
    let log_path = env.dir.join("testpmd.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // Line-buffered, so its log shows when it forwards (stdbuf execs it:
    // same process).
    let mut cmd = match launcher.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg("/usr/bin/stdbuf");
            c
        }
        None => Command::new("/usr/bin/stdbuf"),
    };
    cmd.args([
        "-oL",
        "/usr/bin/dpdk-testpmd",
        "-l",
        "0,1",
        "--no-huge",
        "-m",
        "512",
        "--no-pci",
    ]);
    for v in vdevs {
        cmd.args(["--vdev", v]);
    }
    cmd.args([
        "--",
        "--forward-mode=macswap",
        // Each port sends back what it receives.
        "--port-topology=loop",
        "--auto-start",
        "--nb-cores=1",
        "--total-num-mbufs=16384",
    ])
    .env_clear()
    .env("PATH", "/usr/bin:/bin")
    .env("XDG_RUNTIME_DIR", "/tmp")
    .stdin(Stdio::piped())
    .stdout(log.try_clone().unwrap())
    .stderr(log);
    let netns_fd = netns.as_raw_fd();
    // SAFETY: the hook makes only system calls (setns, unshare, mount,
    // mkdir, chroot, chdir) on data prepared before fork; it does not
    // allocate or lock. It runs before the test bed's hook, which then
    // drops to nobody with the two capabilities.
    unsafe {
        cmd.pre_exec(move || {
            let fail = |_: &str| std::io::Error::last_os_error();
            let null = std::ptr::null::<libc::c_char>();
            if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(fail("setns"));
            }
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(fail("unshare"));
            }
            let slash = c"/";
            if libc::mount(
                null,
                slash.as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(fail("private"));
            }
            let mounts: [(&std::ffi::CStr, &CString, &std::ffi::CStr, libc::c_ulong); 4] = [
                (c"proc", &proc_, c"proc", 0),
                (c"sysfs", &sys, c"sysfs", 0),
                (c"/dev", &dev, c"", libc::MS_BIND | libc::MS_REC),
                (c"tmpfs", &tmp, c"tmpfs", 0),
            ];
            for (src, target, fstype, flags) in mounts {
                let fstype = if fstype.is_empty() {
                    null
                } else {
                    fstype.as_ptr()
                };
                let data = if flags == 0 && target == &tmp {
                    c"mode=1777".as_ptr().cast()
                } else {
                    std::ptr::null()
                };
                if libc::mount(src.as_ptr(), target.as_ptr(), fstype, flags, data) != 0 {
                    return Err(fail("mount"));
                }
            }
            if libc::mkdir(broker_dir.as_ptr(), 0o755) != 0 {
                return Err(fail("mkdir"));
            }
            if libc::mount(
                test_dir.as_ptr(),
                broker_dir.as_ptr(),
                null,
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ) != 0
            {
                return Err(fail("bind"));
            }
            if libc::chroot(root_c.as_ptr()) != 0 || libc::chdir(slash.as_ptr()) != 0 {
                return Err(fail("chroot"));
            }
            Ok(())
        });
    }
    let child =
        spawn_nobody_with_caps(&mut cmd, &[CAP_NET_RAW, CAP_IPC_LOCK]).expect("starting testpmd");
    drop(netns);
    (child, log_path)
}

/// Wait until testpmd forwards (or fail with its log).
fn wait_forwarding(child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("Press enter to exit") {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("testpmd exited ({status}) before forwarding:\n{text}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("testpmd did not start forwarding within 90 s:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stop testpmd (enter on its standard input) and return its log.
fn stop_testpmd(mut child: Child, log: &Path) -> String {
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"\n");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "testpmd did not exit cleanly ({status:?}):\n{text}"
    );
    text
}

/// testpmd runs as nobody with exactly CAP_NET_RAW and CAP_IPC_LOCK.
fn check_privileges(child: &Child) {
    let pid = child.id();
    assert_eq!(
        proc_status_uid(pid).unwrap(),
        65534,
        "testpmd must run as nobody"
    );
    assert_eq!(
        cap_eff(pid).unwrap(),
        (1 << CAP_NET_RAW) | (1 << CAP_IPC_LOCK),
        "testpmd must hold CAP_NET_RAW and CAP_IPC_LOCK and nothing else"
    );
}

/// Send [`FRAMES`] frames from the peer and count those that came back
/// with their Ethernet addresses swapped (each distinct flow and sequence
/// number once).
fn frames_swapped_back(tb: &Testbed) -> usize {
    let cap = Capture::start(tb).expect("capture on the peer end");
    cap.drain().unwrap();
    send_udp(tb, FLOWS, FRAMES / u32::from(FLOWS), roundtrip_payload)
        .expect("sending from the peer");
    let mut seen = std::collections::BTreeSet::new();
    let matches = |f: &[u8]| -> Option<(u16, Vec<u8>)> {
        let u = parse_udp_frame(f)?;
        let ok = u.dst_mac == tb.peer_mac
            && u.src_mac == tb.xsk_mac
            && u.src_ip == tb.peer_ip
            && u.dst_ip == tb.xsk_ip
            && u.src_port >= FLOW_SRC_PORT_BASE
            && u.src_port < FLOW_SRC_PORT_BASE + FLOWS;
        ok.then_some((u.src_port, u.payload))
    };
    let frames = cap
        .collect(
            |fs| fs.iter().filter(|f| matches(f).is_some()).count() >= FRAMES as usize,
            Duration::from_secs(10),
        )
        .unwrap();
    for f in &frames {
        if let Some((port, payload)) = matches(f) {
            let flow = port - FLOW_SRC_PORT_BASE;
            // The payload is exactly what the peer sent as some seq of that flow.
            if let Some(seq) = (0..FRAMES).find(|&s| roundtrip_payload(flow, s) == payload) {
                seen.insert((flow, seq));
            }
        }
    }
    seen.len()
}

fn grants_in_log(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("granted the XSKMAP to a DPDK client"))
        .map(str::to_owned)
        .collect()
}

fn dpdk_forwards(test: &str, queues: u32) {
    let Some(env) = setup(test, queues, false) else {
        return;
    };
    // One port per queue: DPDK takes a port's queue count from the
    // interface's *combined* channels, which a veth does not have (ethtool
    // shows "Combined: n/a"), so a port on a veth has one queue. Each port
    // connects once, as each queue of a multi-queue port would.
    let vdevs: Vec<String> = (0..queues)
        .map(|q| {
            format!(
                "net_af_xdp{q},iface={},start_queue={q},queue_count=1,use_cni=1,dp_path={}/dpdk.sock",
                env.tb.xsk_if,
                env.dir.path().display()
            )
        })
        .collect();
    let fds_before = env.broker.open_fds().unwrap();
    let started = Instant::now();
    let (mut child, log) = spawn_testpmd(&env, &[], &vdevs);
    wait_forwarding(&mut child, &log);
    eprintln!(
        "{test}: testpmd forwarding after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    check_privileges(&child);
    let prog = env.tb.xdp_prog_id().unwrap();
    assert!(prog.is_some(), "the broker attached the XSK program");

    // One grant per queue, each its own queue, in order.
    let broker_log = env.broker.log();
    let grants = grants_in_log(&broker_log);
    assert_eq!(grants.len(), queues as usize, "{broker_log}");
    for (q, g) in grants.iter().enumerate() {
        assert!(g.contains(&format!("queues=[{q}]")), "grant {q}: {g}");
        assert!(g.contains("uid=65534"), "{g}");
    }

    let back = frames_swapped_back(&env.tb);
    let per_queue = env.tb.xsk_rx_queue_xdp_packets().unwrap_or_default();
    let text = stop_testpmd(child, &log);
    eprintln!(
        "{test}: {back} of {FRAMES} frames back swapped; XDP packets per rx queue {per_queue:?}"
    );
    assert_eq!(
        back, FRAMES as usize,
        "frames forwarded back swapped; XDP packets per rx queue {per_queue:?}\n{text}"
    );
    if queues > 1 {
        assert!(
            per_queue.iter().take(queues as usize).all(|&n| n > 0),
            "every queue must have carried frames: {per_queue:?}"
        );
    }

    // The leases lasted as long as testpmd, and ended with it.
    wait_until("the DPDK leases released", Duration::from_secs(10), || {
        let log = env.broker.log();
        (log.matches("released a DPDK client's queue: its process exited")
            .count()
            == queues as usize)
            .then_some(())
    });
    wait_until("the XSK program detached", Duration::from_secs(10), || {
        env.tb.xdp_prog_id().unwrap().is_none().then_some(())
    });
    // No fd left behind (map copies, pidfds, connections): every fd open
    // now was open before testpmd (some of those, e.g. the start-up
    // readiness probe's connection, may have closed since).
    let mut fds_after = Vec::new();
    let back_to_before = (0..100).any(|_| {
        fds_after = env.broker.open_fds().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        fds_after.iter().all(|fd| fds_before.contains(fd))
    });
    assert!(
        back_to_before,
        "the broker's fds: before {fds_before:?}, after {fds_after:?}"
    );
}

#[test]
fn dpdk_testpmd_one_queue_forwards_with_the_brokers_xskmap() {
    dpdk_forwards("dpdk_testpmd_one_queue_forwards_with_the_brokers_xskmap", 1);
}

#[test]
fn dpdk_testpmd_two_queues_forwards_with_the_brokers_xskmap() {
    dpdk_forwards(
        "dpdk_testpmd_two_queues_forwards_with_the_brokers_xskmap",
        2,
    );
}

/// `use_pinned_map=1`, as the README tells an operator: `xsk-client exec
/// --map` leases the map pinned (the pin is the caller's: uid nobody, 0600)
/// and execs testpmd with `dp_path={map-path}`; the lease, and the pin,
/// last as long as testpmd.
#[test]
fn dpdk_testpmd_forwards_with_a_pinned_xskmap() {
    let test = "dpdk_testpmd_forwards_with_a_pinned_xskmap";
    let Some(env) = setup(test, 1, true) else {
        return;
    };
    let pins = env.dir.join("bpffs").join("xsk-broker");
    assert!(pins.is_dir(), "the broker made its pin directory");
    // The launcher runs inside the DPDK root too: copy it into the test
    // directory, which is mounted there at the same path.
    let client = env.dir.join("xsk-client");
    std::fs::copy(workspace_bin("xsk-client").unwrap(), &client).unwrap();
    let launcher: Vec<String> = [
        client.to_str().unwrap(),
        "exec",
        "--socket",
        env.broker.socket_path().to_str().unwrap(),
        "--map",
        "--ifname",
        &env.tb.xsk_if,
        "--queues",
        "1",
        "--",
    ]
    .map(str::to_owned)
    .to_vec();
    let vdev = format!(
        "net_af_xdp0,iface={},start_queue={{start-queue}},queue_count={{queues}},use_pinned_map=1,dp_path={{map-path}}",
        env.tb.xsk_if
    );
    let (mut child, log) = spawn_testpmd(&env, &launcher, &[vdev]);
    wait_forwarding(&mut child, &log);
    check_privileges(&child);
    let pin = std::fs::read_dir(&pins)
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .expect("a pin while testpmd runs");
    let meta = std::fs::metadata(&pin).unwrap();
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert_eq!(
            (meta.uid(), meta.permissions().mode() & 0o777),
            (65534, 0o600)
        );
    }
    // The launcher exec'd testpmd in place, with the pin's path.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id()))
        .unwrap()
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let back = frames_swapped_back(&env.tb);
    let text = stop_testpmd(child, &log);
    eprintln!("{test}: {back} of {FRAMES} frames back swapped");
    assert_eq!(
        back, FRAMES as usize,
        "frames forwarded back swapped\n{text}"
    );
    assert!(
        cmdline.contains(&format!("dp_path={}", pin.display())) && cmdline.contains("dpdk-testpmd"),
        "the launcher execs testpmd with the pin: {cmdline}"
    );
    assert!(
        grants_in_log(&env.broker.log()).is_empty(),
        "no DPDK socket grant in the pinned flow"
    );
    wait_until("the pin removed", Duration::from_secs(10), || {
        (!pin.exists()).then_some(())
    });
    wait_until("the XSK program detached", Duration::from_secs(10), || {
        env.tb.xdp_prog_id().unwrap().is_none().then_some(())
    });
}

/// A raw client of the handshake (root, which the policy always admits):
/// malformed messages get `/nak` and the connection stays; a refusal is
/// `/fd_nak` and the connection is closed; `/fin` gets `/fin_ack` and the
/// connection is closed.
#[test]
fn dpdk_socket_answers_malformed_and_refused_requests() {
    let test = "dpdk_socket_answers_malformed_and_refused_requests";
    if !require_root(test) {
        return;
    }
    let lock = serial_guard().expect("e2e lock");
    let tb = Testbed::new(1).expect("test bed");
    let dir = TempDir::new("xsk-dpdk").expect("temp dir");
    let sock = dir.join("dpdk.sock");
    let broker = BrokerProcess::spawn_with_args(
        &tb.xsk,
        dir.path(),
        &["--dpdk-socket", sock.to_str().unwrap()],
    )
    .expect("broker");
    let connect = || -> OwnedFd {
        use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        connect(fd.as_raw_fd(), &UnixAddr::new(&sock).unwrap()).unwrap();
        let tv = nix::sys::time::TimeVal::new(5, 0);
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv).unwrap();
        fd
    };
    // Returns the answer and how many fds came with it ("" when closed).
    let ask = |fd: &OwnedFd, msg: &[u8]| -> (String, usize) {
        use nix::sys::socket::{recvmsg, sendmsg, ControlMessageOwned, MsgFlags};
        // A closed connection: the send fails (EPIPE) or the answer is empty.
        if sendmsg::<()>(
            fd.as_raw_fd(),
            &[IoSlice::new(msg)],
            &[],
            MsgFlags::empty(),
            None,
        )
        .is_err()
        {
            return (String::new(), 0);
        }
        let mut buf = [0u8; 128];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 2]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let r = match recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty()) {
            Ok(r) => r,
            // The broker closed with this message unread.
            Err(nix::errno::Errno::ECONNRESET) => return (String::new(), 0),
            Err(e) => panic!("no answer to {:?}: {e}", String::from_utf8_lossy(msg)),
        };
        let mut fds = 0;
        for c in r.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(v) = c {
                fds += v.len();
                for f in v {
                    nix::unistd::close(f).unwrap();
                }
            }
        }
        let n = r.bytes;
        (String::from_utf8_lossy(&buf[..n]).into_owned(), fds)
    };
    let a = connect();
    assert_eq!(ask(&a, b"/version").0, "/nak", "before /connect");
    assert_eq!(ask(&a, b"/connect,host").0, "/host_ok");
    assert_eq!(ask(&a, b"/version").0, "0.1");
    assert_eq!(ask(&a, &[b'x'; 200]).0, "/nak", "oversized");
    assert_eq!(ask(&a, b"/xsk_map_fd,\x01").0, "/nak", "control byte");
    assert_eq!(
        ask(&a, b"/xsk_socket,eth0").0,
        "/nak",
        "unsupported command"
    );
    assert_eq!(ask(&a, b"/xsk_map_fd,nosuchif0"), ("/fd_nak".into(), 0));
    assert_eq!(ask(&a, b"/fin").0, "", "a refusal closes the connection");

    let b = connect();
    assert_eq!(ask(&b, b"/connect,host").0, "/host_ok");
    assert_eq!(ask(&b, b"/fin").0, "/fin_ack");
    assert_eq!(ask(&b, b"/version").0, "", "/fin closes the connection");

    let log = broker.log();
    assert!(
        log.contains("refused a DPDK client") && log.contains("nosuchif0"),
        "{log}"
    );
    assert!(tb.xdp_prog_id().unwrap().is_none(), "nothing was attached");
    drop(broker);
    drop(lock);
}

/// The policy decides, by SO_PEERCRED: testpmd (uid nobody) asking for an
/// interface its rule does not name gets nothing (`/fd_nak`, connection
/// closed): the refusal is logged as not_permitted and no program is
/// attached there.
#[test]
fn dpdk_testpmd_is_refused_an_interface_the_policy_does_not_grant() {
    let test = "dpdk_testpmd_is_refused_an_interface_the_policy_does_not_grant";
    let Some(env) = setup(test, 1, false) else {
        return;
    };
    let other = "xdpdkno0";
    let other_index = env.tb.add_local_veth(other, 1).expect("a second veth");
    let vdev = format!(
        "net_af_xdp0,iface={other},start_queue=0,queue_count=1,use_cni=1,dp_path={}/dpdk.sock",
        env.dir.path().display()
    );
    let (mut child, log) = spawn_testpmd(&env, &[], &[vdev]);
    let refusal = wait_until(
        "the refusal in the broker's log",
        Duration::from_secs(30),
        || {
            env.broker
                .log()
                .lines()
                .find(|l| l.contains("refused a DPDK client"))
                .map(str::to_owned)
        },
    );
    assert!(
        refusal.contains("code=not_permitted")
            && refusal.contains(&format!("ifname={other}"))
            && refusal.contains("uid=65534"),
        "{refusal}"
    );
    // testpmd never forwards on it (24.11 even crashes on this error path).
    std::thread::sleep(Duration::from_millis(500));
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("Failed to receive xskmap fd"),
        "testpmd must have failed to get the map:\n{text}"
    );
    assert!(grants_in_log(&env.broker.log()).is_empty());
    let link = env
        .tb
        .xsk
        .ip(["-d", "-j", "link", "show", "dev", other])
        .expect("ip link");
    let link: serde_json::Value = serde_json::from_str(&link).unwrap();
    assert_eq!(
        xdp_attachments_from_link_json(&link[0]),
        vec![],
        "no XDP program on {other} (ifindex {other_index})"
    );
}
