//! End-to-end tests for emulator users: the `xsk-client exec` sock-fds
//! launcher, sock-fds validation, and the UDP bridge example run the way QEMU
//! would be, all as uid nobody with no capabilities, on real veth pairs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use xsk_broker_protocol::{ErrorCode, OpenRequest};
use xsk_client::BrokerClient;
use xsk_testbed::{
    cap_eff, nobody_ids, proc_fds, proc_socket_domain, proc_status_uid, require_root, serial_guard,
    BrokerProcess, ClientProcess, TempDir, Testbed,
};

const READY: Duration = Duration::from_secs(15);

/// A test bed with a broker. Fields drop in order: broker before namespaces.
struct Env {
    broker: BrokerProcess,
    tb: Testbed,
    dir: TempDir,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

fn setup(test: &str, queues: u32) -> Option<Env> {
    if !require_root(test) {
        return None;
    }
    let lock = serial_guard().expect("e2e lock");
    let tb = Testbed::new(queues).expect("building the veth test bed");
    let dir = TempDir::new("xsk-emu").expect("temp dir");
    let broker = BrokerProcess::spawn(&tb.xsk, dir.path()).expect("starting xsk-brokerd");
    Some(Env {
        broker,
        tb,
        dir,
        _lock: lock,
    })
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Try to lease `queues` queues from `start`; the broker's error code on refusal.
fn try_open(env: &Env, queues: u32, start: u32) -> Result<xsk_client::Lease, Option<ErrorCode>> {
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
fn launch(env: &Env, queues: u32, start: u32, argv: &[&str]) -> ClientProcess {
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
    let Some(env) = setup(
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
        let fds = proc_fds(pid).unwrap();
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
    let Some(env) = setup("exec_launcher_refusal_never_starts_program", 2) else {
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
