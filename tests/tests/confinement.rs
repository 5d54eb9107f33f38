//! An admitted peer gets exactly what the policy granted and nothing more.
//! Each test runs an attack from issue 11 as uid `nobody` with no
//! capabilities (`xsk-attack`, a hand-made client) against a broker whose
//! policy grants nobody **one interface only**, and checks that the attack is
//! refused and says why:
//!
//! * a lease ended while its socket stays bound keeps the queue from the next
//!   holder (`queue_busy` naming the previous holder), and a socket kept
//!   unbound cannot be bound to the interface after the release;
//! * a connection is granted once (an inherited lease connection cannot be
//!   reused with its first holder's credentials);
//! * the policy sees canonical interface names, never altnames;
//! * log lines cannot be forged with control characters;
//! * status shows a tenant only its own leases (unless `--status-group`);
//! * queues are counted per uid, and root keeps reserved connections.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use serde_json::Value;
use xsk_broker_protocol::{ErrorCode, OpenRequest, Request, Response, StatusRequest};
use xsk_testbed::{
    expect_error, line_reader, nobody_ids, serial_guard, spawn_unprivileged, wait_until,
    workspace_bin, BrokerProcess, RawPeer, TempDir, Testbed,
};

const STEP: Duration = Duration::from_secs(15);

/// A policy that grants nobody exactly `ifname`, at most 2 queues per lease,
/// copy mode only, no map flow.
fn one_interface_policy(ifname: &str) -> String {
    format!(
        r#"{{"version": 1, "rules": [{{"name": "one-interface", "users": ["nobody"],
            "interfaces": ["{ifname}"], "max_queues": 2, "copy": ["auto", "copy"],
            "map_flow": false}}]}}"#
    )
}

/// A test bed with `queues` queues, and a broker whose policy is
/// [`one_interface_policy`] of the test bed's interface, with `extra` options.
struct Bed {
    broker: BrokerProcess,
    tb: Testbed,
    _dir: TempDir,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Bed {
    fn start(test: &str, queues: u32, extra: &[&str]) -> Option<Bed> {
        if !xsk_testbed::require_root(test) {
            return None;
        }
        let lock = serial_guard().expect("e2e lock");
        let tb = Testbed::new(queues).expect("building the veth test bed");
        let dir = TempDir::new("xsk-confine").expect("temp dir");
        let broker = Bed::spawn_broker(&tb, dir.path(), "policy.json", extra);
        Some(Bed {
            broker,
            tb,
            _dir: dir,
            _lock: lock,
        })
    }

    fn spawn_broker(tb: &Testbed, dir: &Path, policy_name: &str, extra: &[&str]) -> BrokerProcess {
        let policy = dir.join(policy_name);
        std::fs::write(&policy, one_interface_policy(&tb.xsk_if)).expect("writing the policy");
        let mut args = vec!["--policy", policy.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        BrokerProcess::spawn_with_args(&tb.xsk, dir, &args).expect("starting xsk-brokerd")
    }

    fn attack(&self, steps: &[&str]) -> Attack {
        let socket = self.broker.socket_path().to_str().expect("utf-8 path");
        let mut args = vec!["--socket", socket];
        args.extend_from_slice(steps);
        Attack::spawn(&args)
    }

    /// Make a second veth pair, both ends in the broker's namespace; returns
    /// the first end's name (`PREFIX` + the test bed's token).
    fn second_interface(&self, prefix: &str) -> String {
        let name = format!("{prefix}{}", &self.tb.xsk_if[2..]);
        self.tb
            .add_local_veth(&name, 2)
            .expect("adding a second veth pair");
        name
    }
}

/// `xsk-attack` running as nobody with no capabilities; its JSON lines are
/// read one step at a time.
struct Attack {
    child: Child,
    lines: Receiver<String>,
}

impl Attack {
    fn spawn(args: &[&str]) -> Attack {
        let mut cmd = Command::new(workspace_bin("xsk-attack").expect("xsk-attack built"));
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let child = spawn_unprivileged(&mut cmd).expect("starting xsk-attack as nobody");
        Attack::reading(child)
    }

    fn reading(mut child: Child) -> Attack {
        let lines = line_reader(child.stdout.take().expect("piped stdout"));
        Attack { child, lines }
    }

    /// The next step's result (lines that are not a step, such as a
    /// launcher's own output before it execs, are skipped).
    fn next(&mut self) -> Value {
        loop {
            let line = self.lines.recv_timeout(STEP).unwrap_or_else(|e| {
                let status = self.child.try_wait();
                panic!("xsk-attack printed no step within {STEP:?} ({e}); status {status:?}")
            });
            match serde_json::from_str::<Value>(&line) {
                Ok(v) if v.get("step").is_some() => return v,
                _ => eprintln!("(not a step) {line}"),
            }
        }
    }

    /// The next step's result, which must be `step` (and `ok` if given).
    fn expect(&mut self, step: &str, ok: Option<bool>) -> Value {
        let v = self.next();
        assert_eq!(v["step"], step, "{v}");
        if let Some(ok) = ok {
            assert_eq!(v["ok"], ok, "{v}");
        }
        v
    }

    /// Check that the attacker runs as nobody with no capabilities.
    fn expect_unprivileged(&mut self) {
        let v = self.expect("whoami", None);
        let (uid, _) = nobody_ids().unwrap();
        assert_eq!(v["uid"], uid.as_raw().to_string(), "{v}");
        assert_eq!(v["cap_eff"], "0000000000000000", "{v}");
    }

    fn resume(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        stdin.write_all(b"go\n").expect("resuming xsk-attack");
    }

    fn finish(mut self) {
        let status = self.child.wait().expect("waiting for xsk-attack");
        assert!(status.success(), "xsk-attack failed: {status}");
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn refused(v: &Value, code: &str, needle: &str) {
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["code"], code, "{v}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
}

/// Finding 2: `release` used to free the queue in the broker's table while
/// the holder's socket stayed bound; the next holder was granted the queue
/// and its bind failed with EBUSY. Now the broker asks the kernel (a probe
/// bind) and refuses naming the previous holder, until that socket is gone.
#[test]
fn a_released_lease_whose_socket_stays_bound_keeps_its_queue_from_others() {
    let Some(env) = Bed::start(
        "a_released_lease_whose_socket_stays_bound_keeps_its_queue_from_others",
        2,
        &[],
    ) else {
        return;
    };
    let ifname = env.tb.xsk_if.as_str();
    let mut holder = env.attack(&[
        "whoami", "open", ifname, "0", "bind", "0", "0", "2", "release", "hold",
    ]);
    holder.expect_unprivileged();
    let v = holder.expect("open", Some(true));
    // The policy allows no zero-copy: the "auto" request is a copy lease.
    assert_eq!(v["copy"], "copy", "{v}");
    holder.expect("bind", Some(true));
    assert_eq!(
        holder.expect("release", Some(true))["queues"],
        serde_json::json!([0])
    );
    holder.expect("hold", None);

    let mut next = env.attack(&["open", ifname, "0", "open2", ifname, "0"]);
    let v = next.expect("open", None);
    refused(
        &v,
        "queue_busy",
        &format!("queue 0 of {ifname} is not free"),
    );
    refused(
        &v,
        "queue_busy",
        &format!("previous holder (pid {}", holder.child.id()),
    );
    // A lease that takes the busy queue with another one is refused whole.
    refused(&next.expect("open", None), "queue_busy", "queue 0");
    next.finish();
    // Queue 1 is free.
    let mut other = env.attack(&["open", ifname, "1", "bind", "0", "1", "2"]);
    other.expect("open", Some(true));
    other.expect("bind", Some(true));
    other.finish();

    // Once the holder exits the kernel frees its socket (in deferred work:
    // a moment later) and the queue is granted again.
    drop(holder);
    let mut after = wait_until(
        "queue 0 to be granted again",
        Duration::from_secs(5),
        || {
            let mut a = env.attack(&["open", ifname, "0", "bind", "0", "0", "2"]);
            let v = a.expect("open", None);
            if v["ok"] == true {
                assert_eq!(v["queues"], serde_json::json!([0]));
                Some(a)
            } else {
                refused(&v, "queue_busy", "previous holder");
                None
            }
        },
    );
    after.expect("bind", Some(true));
    after.finish();
}

/// The other half of finding 2: a holder that keeps an *unbound* socket
/// after its release cannot bind it to the interface once the queue is
/// someone else's (the broker confines released sockets to `lo`).
#[test]
fn a_socket_kept_unbound_after_release_cannot_take_the_queue_later() {
    let Some(env) = Bed::start(
        "a_socket_kept_unbound_after_release_cannot_take_the_queue_later",
        1,
        &[],
    ) else {
        return;
    };
    let ifname = env.tb.xsk_if.as_str();
    let mut old = env.attack(&[
        "open", ifname, "0", "release", "wait", "bind", "0", "0", "2",
    ]);
    old.expect("open", Some(true));
    old.expect("release", Some(true));
    old.expect("wait", None);

    let mut new = env.attack(&["open", ifname, "0", "wait", "bind", "0", "0", "2", "hold"]);
    new.expect("open", Some(true));
    new.expect("wait", None);
    // The old holder tries first, with the same ifindex and queue it was
    // leased: the kernel refuses (the socket is bound to lo now).
    old.resume();
    old.expect("waited", None);
    let v = old.expect("bind", Some(false));
    assert_eq!(v["error"], "EINVAL", "{v}");
    old.finish();
    new.resume();
    new.expect("waited", None);
    new.expect("bind", Some(true));
}

/// Finding 3: under `xsk-client exec` run as root, a child that dropped to
/// nobody sent `release` and then `open` on the inherited connection for an
/// interface the policy forbids nobody, and was granted as uid 0. A
/// connection is now granted once.
#[test]
fn an_inherited_lease_connection_cannot_be_granted_again() {
    let Some(env) = Bed::start(
        "an_inherited_lease_connection_cannot_be_granted_again",
        2,
        &[],
    ) else {
        return;
    };
    let other = env.second_interface("xo");
    let (uid, gid) = nobody_ids().unwrap();
    let (uid, gid) = (uid.as_raw().to_string(), gid.as_raw().to_string());
    let attack = workspace_bin("xsk-attack").unwrap();
    let client = workspace_bin("xsk-client").unwrap();
    // Root runs the launcher; the program it execs drops to nobody with no
    // capabilities (setpriv) and abuses the inherited connection.
    let child = Command::new(&client)
        .args(["exec", "--socket"])
        .arg(env.broker.socket_path())
        .args(["--ifname", &env.tb.xsk_if, "--queues", "1", "--", "setpriv"])
        .args(["--reuid", &uid, "--regid", &gid, "--clear-groups"])
        .args(["--inh-caps=-all", "--bounding-set=-all", "--"])
        .arg(&attack)
        .args([
            "--lease-fd",
            "{lease-fd}",
            "whoami",
            "release",
            "open",
            &other,
            "0",
        ])
        .args(["open", &env.tb.xsk_if, "1", "status"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting xsk-client exec as root");
    let mut a = Attack::reading(child);
    a.expect_unprivileged();
    a.expect("release", Some(true));
    refused(
        &a.expect("open", None),
        "bad_request",
        "a connection is granted once",
    );
    // Not even the interface nobody may have: a new lease needs a new connection.
    refused(
        &a.expect("open", None),
        "bad_request",
        "open a new connection",
    );
    // Status still works after the release.
    a.expect("status", Some(true));
    a.finish();
    let log = env.broker.log();
    assert!(
        log.lines()
            .any(|l| l.contains("refused") && l.contains("granted once")),
        "the refusal is logged: {log}"
    );
    let grants: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(r#"event="grant""#))
        .collect();
    assert_eq!(
        grants.len(),
        1,
        "only the launcher's lease was granted: {log}"
    );
    assert!(!grants[0].contains(&other), "{log}");
}

/// Finding 4: with the policy granting one interface, an altname of another
/// interface that matches the policy's name must not be granted: the policy,
/// the log and the reply use the canonical name. An altname of the granted
/// interface is resolved to it.
#[test]
fn the_policy_sees_canonical_names_not_altnames() {
    let Some(env) = Bed::start("the_policy_sees_canonical_names_not_altnames", 2, &[]) else {
        return;
    };
    let ifname = env.tb.xsk_if.clone();
    // The policy grants `xxTOKEN` exactly; give another interface the
    // altname the policy would match if altnames counted... which cannot be
    // the same string (names and altnames share one namespace), so the
    // policy is a glob here.
    let glob_dir = TempDir::new("xsk-confine-glob").unwrap();
    let policy = glob_dir.path().join("policy.json");
    std::fs::write(
        &policy,
        format!(
            r#"{{"version": 1, "rules": [{{"name": "glob", "users": ["nobody"],
                "interfaces": ["{ifname}*"], "max_queues": 2}}]}}"#
        ),
    )
    .unwrap();
    let broker = BrokerProcess::spawn_with_args(
        &env.tb.xsk,
        glob_dir.path(),
        &["--policy", policy.to_str().unwrap()],
    )
    .unwrap();
    let other = env.second_interface("xo");
    let alt_other = format!("{ifname}alt");
    env.tb
        .xsk
        .ip([
            "link", "property", "add", "dev", &other, "altname", &alt_other,
        ])
        .expect("adding an altname");
    let alt_granted = format!("yy{}", &ifname[2..]);
    env.tb
        .xsk
        .ip([
            "link",
            "property",
            "add",
            "dev",
            &ifname,
            "altname",
            &alt_granted,
        ])
        .expect("adding an altname");

    let socket = broker.socket_path().to_str().unwrap().to_owned();
    let mut a = Attack::spawn(&["--socket", &socket, "open", &alt_other, "0"]);
    refused(&a.expect("open", None), "not_permitted", &other);
    a.finish();
    let mut b = Attack::spawn(&[
        "--socket",
        &socket,
        "open",
        &alt_granted,
        "0",
        "bind",
        "0",
        "0",
        "2",
    ]);
    let v = b.expect("open", Some(true));
    assert_eq!(v["ifname"], ifname.as_str(), "{v}");
    // This policy allows zero-copy: "auto" stays "auto".
    assert_eq!(v["copy"], "auto", "{v}");
    b.expect("bind", Some(true));
    b.finish();
    let log = broker.log();
    let grants: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(r#"event="grant""#))
        .collect();
    assert!(
        grants.len() == 1 && grants[0].contains(&format!("ifname={ifname}")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("refused") && l.contains(&format!("ifname={other}"))),
        "the refusal names the canonical interface: {log}"
    );
}

/// Finding 6: an `ifname` holding a newline and a fake grant line was
/// written verbatim into the human log. Every format escapes it now.
#[test]
fn log_lines_cannot_be_forged() {
    let Some(env) = Bed::start("log_lines_cannot_be_forged", 1, &[]) else {
        return;
    };
    let forged = "x\nFORGED INFO granted uid=0 ifname=eth0\r\x1b[2J";
    for (i, extra) in [&[][..], &["--log-format", "json"][..]].iter().enumerate() {
        let dir = TempDir::new("xsk-confine-log").unwrap();
        let policy = dir.path().join("policy.json");
        std::fs::write(&policy, one_interface_policy(&env.tb.xsk_if)).unwrap();
        let mut args = vec!["--policy", policy.to_str().unwrap(), "--log-level", "debug"];
        args.extend_from_slice(extra);
        let broker = BrokerProcess::spawn_with_args(&env.tb.xsk, dir.path(), &args).unwrap();
        let socket = broker.socket_path().to_str().unwrap().to_owned();
        let mut a = Attack::spawn(&["--socket", &socket, "open", forged, "0", "status"]);
        a.expect("open", Some(false));
        a.expect("status", Some(true));
        a.finish();
        let log = broker.log();
        assert!(
            log.contains("FORGED"),
            "format {i}: the attempt is logged: {log}"
        );
        for line in log.lines() {
            assert!(
                !line.starts_with("FORGED"),
                "format {i}: forged line: {log}"
            );
            assert!(
                !line.contains('\x1b') && !line.contains('\r'),
                "format {i}: {line:?}"
            );
            if i == 1 {
                serde_json::from_str::<Value>(line)
                    .unwrap_or_else(|e| panic!("not one JSON object per line: {line:?}: {e}"));
            }
        }
    }
}

/// Finding 8 (status): any admitted peer saw every tenant's pid, uid and
/// queues. A non-root peer now sees only its own leases; root, or a member
/// of `--status-group`, sees all.
#[test]
fn status_shows_a_tenant_only_its_own_leases() {
    let Some(env) = Bed::start("status_shows_a_tenant_only_its_own_leases", 2, &[]) else {
        return;
    };
    let root = RawPeer::hello(env.broker.socket_path());
    let mut req = OpenRequest::new(env.tb.xsk_if.clone(), 1);
    req.start_queue = 1;
    assert!(matches!(
        root.call(&Request::Open(req)),
        Response::Opened(_)
    ));
    let ifname = env.tb.xsk_if.as_str();
    let mut a = env.attack(&["status", "open", ifname, "0", "status", "hold"]);
    let (uid, _) = nobody_ids().unwrap();
    let v = a.expect("status", Some(true));
    assert_eq!(v["leases"], 0, "a tenant with no lease sees none: {v}");
    a.expect("open", Some(true));
    let v = a.expect("status", Some(true));
    assert_eq!(v["holders"], serde_json::json!([uid.as_raw()]), "{v}");
    a.expect("hold", None);
    match RawPeer::hello(env.broker.socket_path()).call(&Request::Status(StatusRequest::default()))
    {
        Response::Status(s) => assert_eq!(s.leases.len(), 2, "root sees every lease"),
        other => panic!("{other:?}"),
    }
    drop(a);
    drop(root);

    // With --status-group nogroup, nobody (primary group nogroup) sees all.
    let (_, gid) = nobody_ids().unwrap();
    let group = nix::unistd::Group::from_gid(gid).unwrap().unwrap().name;
    let dir = TempDir::new("xsk-confine-status").unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, one_interface_policy(ifname)).unwrap();
    let broker = BrokerProcess::spawn_with_args(
        &env.tb.xsk,
        dir.path(),
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--status-group",
            &group,
        ],
    )
    .unwrap();
    let root = RawPeer::hello(broker.socket_path());
    let mut req = OpenRequest::new(env.tb.xsk_if.clone(), 1);
    req.start_queue = 1;
    assert!(matches!(
        root.call(&Request::Open(req)),
        Response::Opened(_)
    ));
    let socket = broker.socket_path().to_str().unwrap().to_owned();
    let mut b = Attack::spawn(&["--socket", &socket, "status"]);
    let v = b.expect("status", Some(true));
    assert_eq!(v["holders"], serde_json::json!([0]), "{v}");
    b.finish();
}

/// Finding 8 (limits): limits counted leases per uid, not queues; and four
/// uids' idle connections could fill `--max-connections` and lock root out.
#[test]
fn queues_are_counted_per_uid_and_root_keeps_reserved_connections() {
    let Some(env) = Bed::start(
        "queues_are_counted_per_uid_and_root_keeps_reserved_connections",
        4,
        &[
            "--max-queues-per-uid",
            "3",
            "--max-connections",
            "6",
            "--max-connections-per-uid",
            "6",
            "--reserved-root-connections",
            "2",
        ],
    ) else {
        return;
    };
    let ifname = env.tb.xsk_if.as_str();
    let mut a = env.attack(&["open2", ifname, "0", "hold"]);
    a.expect("open", Some(true));
    a.expect("hold", None);
    let mut b = env.attack(&["open2", ifname, "2", "open", ifname, "2", "hold"]);
    refused(
        &b.expect("open", None),
        "not_permitted",
        "--max-queues-per-uid 3",
    );
    // One more queue fits.
    b.expect("open", Some(true));
    b.expect("hold", None);
    // Two more idle nobody connections fill the 4 not reserved for root.
    let mut idle: Vec<Attack> = (0..2).map(|_| env.attack(&["hold"])).collect();
    for i in &mut idle {
        i.expect("hold", None);
    }
    let socket = env.broker.socket_path().to_str().unwrap().to_owned();
    let mut cmd = Command::new(workspace_bin("xsk-attack").unwrap());
    cmd.args(["--socket", &socket, "hold"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = spawn_unprivileged(&mut cmd)
        .unwrap()
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("reserved for root"), "{stderr}");
    // Root still gets in, twice.
    let r1 = RawPeer::hello(env.broker.socket_path());
    let r2 = RawPeer::hello(env.broker.socket_path());
    for r in [&r1, &r2] {
        assert!(matches!(
            r.call(&Request::Status(StatusRequest::default())),
            Response::Status(_)
        ));
    }
    let third = RawPeer::connect(env.broker.socket_path());
    expect_error(
        third.answer(),
        ErrorCode::NotPermitted,
        "--max-connections 6",
    );
}
