//! Packaging: the systemd units in packaging/systemd are valid for systemd
//! and grant the broker only what it needs.

use std::path::{Path, PathBuf};
use std::process::Command;

use xsk_testbed::{workspace_bin, TempDir};

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd")
}

/// `systemd-analyze` is in Debian's `systemd` package (scripts/install-deps).
fn have_systemd_analyze(test: &str) -> bool {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        return true;
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "{test}: systemd-analyze is missing; scripts/install-deps installs package systemd"
    );
    eprintln!("SKIP {test}: systemd-analyze not installed");
    false
}

/// Copies of the units whose ExecStart= points at the freshly built broker
/// (`systemd-analyze verify` checks that the command exists).
fn units_for_verify(dir: &Path) -> Vec<PathBuf> {
    let brokerd = workspace_bin("xsk-brokerd").unwrap();
    ["xsk-broker.socket", "xsk-broker.service"]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(units_dir().join(name)).unwrap();
            let text = text.replace("/usr/bin/xsk-brokerd", brokerd.to_str().unwrap());
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

/// Run `systemd-analyze verify --man=no UNITS...`; it exits 0 even for
/// unknown keys and bad values, so what it prints is returned too.
fn verify(units: &[PathBuf]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(units)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let test = "systemd_units_pass_systemd_analyze_verify";
    if !have_systemd_analyze(test) {
        return;
    }
    let dir = TempDir::new("xsk-units").unwrap();
    let units = units_for_verify(dir.path());
    let (ok, text) = verify(&units);
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );

    // The check would catch a mistake: a misspelt value and an unknown key.
    let service = &units[1];
    let text = std::fs::read_to_string(service).unwrap();
    let broken = text.replace("ProtectHome=yes", "ProtectHome=yse\nFrobnicate=1");
    std::fs::write(service, broken).unwrap();
    let (_, text) = verify(&units);
    assert!(
        text.contains("ProtectHome") || text.contains("yse"),
        "{text}"
    );
    assert!(text.contains("Frobnicate"), "{text}");
}

fn directive(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

/// The service holds exactly CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF and
/// CAP_PERFMON (for the confinement LSM program), the
/// sandbox directives the design asks for are there, and systemd's own
/// exposure score for it is low.
#[test]
fn systemd_service_grants_only_what_the_broker_needs() {
    let test = "systemd_service_grants_only_what_the_broker_needs";
    let unit = std::fs::read_to_string(units_dir().join("xsk-broker.service")).unwrap();
    let caps = "CAP_NET_ADMIN CAP_NET_RAW CAP_BPF CAP_PERFMON";
    assert_eq!(directive(&unit, "CapabilityBoundingSet"), [caps]);
    assert_eq!(directive(&unit, "AmbientCapabilities"), [caps]);
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_NETLINK AF_XDP"),
        ("SystemCallFilter", "@system-service bpf"),
        ("RuntimeDirectory", "xsk-broker"),
        ("RuntimeDirectoryPreserve", "yes"),
        ("ReadWritePaths", "-/sys/fs/bpf/xsk-broker"),
    ] {
        assert_eq!(directive(&unit, key), [want], "{key}");
    }
    // State and pins are kept by default: the state in the runtime
    // directory (kept across restarts, gone at reboot like the leases), the
    // pins in the one writable directory of the bpffs.
    let exec = directive(&unit, "ExecStart").join(" ");
    let argv: Vec<String> = exec.split_whitespace().map(str::to_owned).collect();
    assert_eq!(
        option_value(&argv, "--state-dir"),
        Some("/run/xsk-broker/state"),
        "{exec}"
    );
    assert_eq!(
        option_value(&argv, "--pin-dir"),
        Some("/sys/fs/bpf/xsk-broker"),
        "{exec}"
    );
    assert_eq!(
        option_value(&argv, "--policy"),
        Some("/etc/xsk-broker/policy.json"),
        "{exec}"
    );
    let socket = std::fs::read_to_string(units_dir().join("xsk-broker.socket")).unwrap();
    assert_eq!(
        directive(&socket, "ListenStream"),
        ["/run/xsk-broker/broker.sock"]
    );

    if !have_systemd_analyze(test) {
        return;
    }
    let dir = TempDir::new("xsk-units").unwrap();
    // The tmpfiles.d entry makes the pin directory, 0700, before the
    // service starts (ReadWritePaths= needs it to exist).
    let root = dir.join("root");
    run(Command::new("systemd-tmpfiles")
        .arg("--create")
        .arg(format!("--root={}", root.display()))
        .arg(units_dir().join("xsk-broker.tmpfile")));
    let pins = std::fs::metadata(root.join("sys/fs/bpf/xsk-broker")).unwrap();
    assert!(pins.is_dir());
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&pins.permissions()) & 0o7777,
        0o700
    );
    let units = units_for_verify(dir.path());
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&units[1])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for xsk-broker.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(score <= 3.0, "exposure {score} (0 best, 10 worst):\n{text}");
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

fn package_installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "xsk-broker"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("installed"))
}

/// Purges the package if a test installed it and failed half way.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        if package_installed() {
            let _ = Command::new("dpkg").args(["-P", "xsk-broker"]).output();
        }
    }
}

/// The Debian package, built (packaging/deb/build, cargo-deb, from the
/// binaries `cargo test` already built) and installed with dpkg for one
/// test. Dropping it purges the package (if the test has not), then releases
/// the end-to-end lock.
struct Installed {
    /// The regular files the package installed (`dpkg -L`).
    files: Vec<PathBuf>,
    _purge: Purge,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Build and install the package; `None` when the test should skip (not
/// root, or systemd-analyze or cargo-deb missing outside CI). Panics if the
/// package is installed already: the test never touches an installation it
/// did not make.
fn install_package(test: &str) -> Option<Installed> {
    use xsk_testbed::{require_root, serial_guard};
    if !require_root(test) || !have_systemd_analyze(test) {
        return None;
    }
    if Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .map_or(true, |o| !o.status.success())
    {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "{test}: cargo-deb is missing; scripts/install-deps installs it"
        );
        eprintln!("SKIP {test}: cargo-deb not installed");
        return None;
    }
    // Held from here: another test run must not install or purge meanwhile.
    let lock = serial_guard().unwrap();
    if package_installed() {
        panic!("{test}: package xsk-broker is already installed on this machine; not touching it");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = run(Command::new(root.join("packaging/deb/build"))
        .args(["--profile", "dev", "--no-build"])
        .current_dir(&root));
    let deb = out
        .lines()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no .deb named in:\n{out}"));
    assert!(deb.is_file(), "{}", deb.display());

    let purge = Purge;
    run(Command::new("dpkg").arg("-i").arg(&deb));
    let files: Vec<PathBuf> = run(Command::new("dpkg").args(["-L", "xsk-broker"]))
        .lines()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect();
    Some(Installed {
        files,
        _purge: purge,
        _lock: lock,
    })
}

/// The Debian package (packaging/deb/build, cargo-deb) installs with dpkg,
/// its binaries, man pages, units and group are there and work (a lease
/// through the installed broker), its policy admits no one but root until
/// the administrator adds a rule, and `dpkg -P` removes every trace.
///
/// Cost: about 10 s here; it packages the binaries `cargo test` already
/// built (dev profile, `--no-build`). scripts/install-deps installs
/// cargo-deb (one to two minutes, once).
#[test]
fn debian_package_installs_runs_and_purges() {
    use xsk_client::{BrokerClient, OpenRequest};
    use xsk_testbed::{BrokerProcess, Testbed};
    let test = "debian_package_installs_runs_and_purges";
    let Some(installed) = install_package(test) else {
        return;
    };
    let files = &installed.files;
    for want in [
        "/usr/bin/xsk-brokerd",
        "/usr/bin/xsk-brokerctl",
        "/usr/bin/xsk-client",
        "/usr/bin/xsk-vhost-user",
        "/usr/share/man/man8/xsk-brokerd.8.gz",
        "/usr/share/man/man1/xsk-brokerctl.1.gz",
        "/usr/share/man/man1/xsk-brokerctl-status.1.gz",
        "/usr/share/man/man1/xsk-client.1.gz",
        "/usr/share/man/man1/xsk-vhost-user.1.gz",
        "/usr/lib/systemd/system/xsk-broker.service",
        "/usr/lib/systemd/system/xsk-broker.socket",
        "/usr/lib/tmpfiles.d/xsk-broker.conf",
        "/etc/default/xsk-broker",
        "/etc/xsk-broker/policy.json",
        "/usr/share/doc/xsk-broker/policy.example.json",
    ] {
        assert!(
            files.contains(&PathBuf::from(want)),
            "{want} not installed (a dpkg path-exclude for /usr/share/doc drops the example): \
             {files:?}"
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    for bin in [
        "xsk-brokerd",
        "xsk-brokerctl",
        "xsk-client",
        "xsk-vhost-user",
    ] {
        let v = run(Command::new(format!("/usr/bin/{bin}")).arg("--version"));
        assert_eq!(v.trim(), format!("{bin} {version}"));
        let help = run(Command::new(format!("/usr/bin/{bin}")).arg("--help"));
        assert!(help.contains("Usage:"), "{bin} --help:\n{help}");
    }
    // The man page is the --help text.
    let man = run(Command::new("sh").args(["-c", "gzip -dc /usr/share/man/man8/xsk-brokerd.8.gz"]));
    for opt in ["socket\\-mode", "log\\-format", "metrics\\-listen"] {
        assert!(man.contains(opt), "xsk-brokerd.8 lacks {opt}:\n{man}");
    }
    let man = run(Command::new("sh").args(["-c", "gzip -dc /usr/share/man/man1/xsk-client.1.gz"]));
    for sub in ["rx", "tx", "echo", "exec"] {
        assert!(man.contains(sub), "xsk-client.1 lacks {sub}:\n{man}");
    }
    let man =
        run(Command::new("sh").args(["-c", "gzip -dc /usr/share/man/man1/xsk-vhost-user.1.gz"]));
    for opt in ["socket", "ifname", "queues", "reconnect"] {
        assert!(man.contains(opt), "xsk-vhost-user.1 lacks {opt}:\n{man}");
    }
    // The installed units verify against the installed binary.
    let (ok, text) = verify(&[
        PathBuf::from("/usr/lib/systemd/system/xsk-broker.socket"),
        PathBuf::from("/usr/lib/systemd/system/xsk-broker.service"),
    ]);
    assert!(ok && text.trim().is_empty(), "{text}");
    // The installed service keeps its state and pins (a restart keeps leases).
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/xsk-broker.service").unwrap();
    let argv = service_command(&unit).argv;
    assert_eq!(
        option_value(&argv, "--state-dir"),
        Some("/run/xsk-broker/state"),
        "{argv:?}"
    );
    assert_eq!(
        option_value(&argv, "--pin-dir"),
        Some("/sys/fs/bpf/xsk-broker"),
        "{argv:?}"
    );
    let group = run(Command::new("getent").args(["group", "xsk-broker"]));
    assert!(group.starts_with("xsk-broker:"), "{group}");

    // A lease through the installed broker, in a test bed.
    {
        let tb = Testbed::new(1).unwrap();
        let dir = TempDir::new("xsk-deb").unwrap();
        // With the packaged policy, which has no rules: root only.
        let policy: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string("/etc/xsk-broker/policy.json").unwrap())
                .unwrap();
        assert_eq!(policy["rules"], serde_json::json!([]), "{policy}");
        let broker = BrokerProcess::spawn_bin(
            Path::new("/usr/bin/xsk-brokerd"),
            &tb.xsk,
            dir.path(),
            &["--policy", "/etc/xsk-broker/policy.json"],
        )
        .unwrap();
        let outsider = xsk_testbed::ClientProcess::spawn(
            "rx",
            broker.socket_path(),
            &["--ifname", &tb.xsk_if, "--frames", "256"],
            None,
        )
        .unwrap();
        let (err, status) = outsider
            .wait_failure(std::time::Duration::from_secs(10))
            .unwrap();
        assert_eq!(status.code(), Some(1), "{err}");
        assert!(
            err.contains("not_permitted")
                && err.contains("no rule of /etc/xsk-broker/policy.json admits uid 65534")
                && err.contains("the policy has no rules, so it admits no one but root"),
            "{err}"
        );
        let log = broker.log();
        assert!(
            log.contains("/etc/xsk-broker/policy.json (0 rules: it admits no one but root"),
            "{log}"
        );
        let lease = BrokerClient::connect(broker.socket_path())
            .unwrap()
            .open(OpenRequest::new(tb.xsk_if.clone(), 1))
            .unwrap();
        assert_eq!(lease.info().sockets.len(), 1);
        let status = run(Command::new("/usr/bin/xsk-brokerctl")
            .args(["status", "--socket"])
            .arg(broker.socket_path()));
        assert!(status.contains("1 lease(s), 1 queue(s)"), "{status}");
        drop(lease);
        drop(broker);
    }

    run(Command::new("dpkg").args(["-P", "xsk-broker"]));
    assert!(!package_installed());
    let left: Vec<&PathBuf> = files.iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "left behind after dpkg -P: {left:?}");
    let dirs: Vec<&str> = ["/etc/systemd", "/var/lib/systemd"]
        .into_iter()
        .filter(|d| Path::new(d).is_dir())
        .collect();
    let traces = if dirs.is_empty() {
        String::new()
    } else {
        run(Command::new("find")
            .args(&dirs)
            .args(["-name", "*xsk-broker*"]))
    };
    assert!(traces.trim().is_empty(), "systemd traces left: {traces}");
    let group = Command::new("getent")
        .args(["group", "xsk-broker"])
        .output()
        .unwrap();
    assert!(!group.status.success(), "group xsk-broker left behind");
}

/// Expand a systemd syscall filter (`@group` names and syscalls) into the
/// syscalls it allows, with `systemd-analyze syscall-filter`.
fn expand_syscall_filter(items: &[&str]) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut todo: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    while let Some(item) = todo.pop() {
        if !item.starts_with('@') {
            out.insert(item);
            continue;
        }
        if !seen.insert(item.clone()) {
            continue;
        }
        let text = run(Command::new("systemd-analyze").args(["syscall-filter", &item]));
        for line in text.lines().skip(1) {
            let w = line.trim();
            if w.is_empty() || w.starts_with('#') {
                continue;
            }
            todo.push(w.to_owned());
        }
    }
    out
}

/// Runs the broker under strace; kills it on drop.
struct Traced(std::process::Child);

impl Drop for Traced {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every system call and address family the broker uses while it serves
/// (start, a two-queue lease with traffic, status, a metrics scrape, a
/// refusal, release, SIGTERM) and while it is restarted with a lease held
/// (the state and pins the unit keeps: writing them, taking the lease over,
/// releasing it when its holder exits) is allowed by the service's
/// `SystemCallFilter=` and `RestrictAddressFamilies=`: the sandbox does not
/// break the broker. Traced with strace on the real broker.
#[test]
fn service_sandbox_allows_every_syscall_and_family_the_broker_uses() {
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};
    use xsk_testbed::{
        require_root, serial_guard, udp_roundtrip, BpfFs, ClientProcess, Testbed, TEST_FRAMES,
    };
    let test = "service_sandbox_allows_every_syscall_and_family_the_broker_uses";
    if !require_root(test) || !have_systemd_analyze(test) {
        return;
    }
    if Command::new("strace").arg("-V").output().is_err() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "{test}: strace is missing; scripts/install-deps installs it"
        );
        eprintln!("SKIP {test}: strace not installed");
        return;
    }
    let unit = std::fs::read_to_string(units_dir().join("xsk-broker.service")).unwrap();
    let filter = directive(&unit, "SystemCallFilter").join(" ");
    let allowed = expand_syscall_filter(&filter.split_whitespace().collect::<Vec<_>>());
    assert!(
        allowed.contains("bpf") && allowed.contains("read"),
        "{allowed:?}"
    );
    let families = directive(&unit, "RestrictAddressFamilies").join(" ");

    let _lock = serial_guard().unwrap();
    let tb = Testbed::new(2).unwrap();
    let dir = TempDir::new("xsk-strace").unwrap();
    let sock = dir.join("broker.sock");
    let msock = dir.join("metrics.sock");
    let policy = dir.join("policy.json");
    std::fs::write(&policy, xsk_testbed::TEST_POLICY).unwrap();
    let bpf = BpfFs::mount(dir.join("bpffs"));
    let log = dir.join("xsk-brokerd.log");
    let restored = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(RESTORED)
            .count()
    };
    // The broker as the unit runs it (state and pins), under strace.
    let start = |trace: &Path| {
        let before = restored();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = tb.xsk.exec_command(["strace", "-f", "-qq", "-o"]);
        cmd.arg(trace)
            .arg(workspace_bin("xsk-brokerd").unwrap())
            .arg("--socket")
            .arg(&sock)
            .arg("--policy")
            .arg(&policy)
            .args(["--socket-mode", "0666", "--metrics-socket"])
            .arg(&msock)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--pin-dir")
            .arg(bpf.0.join("xsk-broker"))
            .stdout(std::process::Stdio::null())
            .stderr(out);
        let mut traced = Traced(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&sock).is_err() || restored() == before {
            assert!(
                traced.0.try_wait().unwrap().is_none(),
                "the traced broker exited:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            assert!(
                Instant::now() < deadline,
                "the traced broker never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        traced
    };
    let status = || {
        let out = run(Command::new(workspace_bin("xsk-brokerctl").unwrap())
            .args(["status", "--json", "--socket"])
            .arg(&sock));
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()
    };
    let stop = |mut traced: Traced, pid: i64| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let st = traced.0.wait().unwrap();
        assert!(st.success(), "the traced broker: {st}");
    };
    let traces = [dir.join("strace.log"), dir.join("strace-restarted.log")];
    let traced = start(&traces[0]);

    let frames = TEST_FRAMES.to_string();
    let args = [
        "--ifname",
        tb.xsk_if.as_str(),
        "--queues",
        "2",
        "--frames",
        &frames,
    ];
    let mut c = ClientProcess::spawn("echo", &sock, &args, None).unwrap();
    c.wait_event("ready", Duration::from_secs(20)).unwrap();
    udp_roundtrip(&tb, 8, 4, Duration::from_secs(10))
        .unwrap()
        .verify()
        .unwrap();
    let refused = ClientProcess::spawn("rx", &sock, &args, None).unwrap();
    refused.wait_failure(Duration::from_secs(20)).unwrap();
    let status1 = status();
    {
        let mut m = UnixStream::connect(&msock).unwrap();
        std::io::Write::write_all(&mut m, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        std::io::Read::read_to_string(&mut m, &mut body).unwrap();
        assert!(body.contains("xsk_broker_xdp_rx_dropped_total"), "{body}");
    }
    c.stop().unwrap();
    // A lease held across a restart (SIGTERM, start again), released when
    // its holder exits.
    let one = [
        "--ifname",
        tb.xsk_if.as_str(),
        "--queues",
        "1",
        "--frames",
        &frames,
    ];
    let mut holder = ClientProcess::spawn("rx", &sock, &one, None).unwrap();
    holder.wait_event("ready", Duration::from_secs(20)).unwrap();
    stop(traced, status1["pid"].as_i64().unwrap());
    let traced = start(&traces[1]);
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("1 lease(s) kept"), "{log_text}");
    let busy = ClientProcess::spawn("rx", &sock, &one, None).unwrap();
    let (err, _) = busy.wait_failure(Duration::from_secs(20)).unwrap();
    assert!(err.contains("queue_busy"), "{err}");
    holder.stop().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status2 = loop {
        let s = status();
        if s["leases"].as_array().is_some_and(Vec::is_empty) {
            break s;
        }
        assert!(Instant::now() < deadline, "the lease was not released: {s}");
        std::thread::sleep(Duration::from_millis(20));
    };
    stop(traced, status2["pid"].as_i64().unwrap());

    let mut used = std::collections::BTreeSet::new();
    let mut used_families = std::collections::BTreeSet::new();
    let log = traces
        .iter()
        .map(|t| std::fs::read_to_string(t).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    for line in log.lines() {
        let Some((_pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let Some((name, args)) = rest.split_once('(') else {
            continue;
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // "<... x resumed>", "--- SIGTERM", "+++ exited"
        }
        used.insert(name.to_owned());
        if name == "socket" || name == "socketpair" {
            let fam = args.split([',', ' ']).next().unwrap_or("").to_owned();
            used_families.insert(if fam == "44" {
                "AF_XDP".to_owned()
            } else {
                fam
            });
        }
    }
    // The state written atomically (rename, fsync) and the restarted
    // broker watching the holder it took over (pidfd_open) are in it.
    assert!(
        ["bpf", "sendmsg", "rename", "fsync", "pidfd_open"]
            .iter()
            .all(|s| used.contains(*s)),
        "the trace looks incomplete: {used:?}"
    );
    let denied: Vec<&String> = used.iter().filter(|s| !allowed.contains(*s)).collect();
    assert!(
        denied.is_empty(),
        "SystemCallFilter={filter} would deny {denied:?}"
    );
    for fam in &used_families {
        assert!(
            families.split_whitespace().any(|f| f == fam),
            "RestrictAddressFamilies={families} would deny {fam} (used: {used_families:?})"
        );
    }
    assert!(used_families.contains("AF_XDP"), "{used_families:?}");
}

/// A service's environment and command line as systemd builds them from
/// its unit.
struct ServiceCommand {
    /// `Environment=` settings, then those of each `EnvironmentFile=`
    /// (which override them), in order.
    env: Vec<(String, String)>,
    /// `ExecStart=` split into words, `$NAME` replaced by the words of the
    /// variable's value and `${NAME}` by its value as one word.
    argv: Vec<String>,
}

/// A value from an environment file, with one pair of surrounding quotes
/// removed (systemd's `EnvironmentFile=` syntax for the simple cases the
/// package's file uses; anything else fails the test).
fn env_value(raw: &str) -> String {
    let raw = raw.trim();
    for q in ['"', '\''] {
        if let Some(inner) = raw.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            assert!(
                !inner.contains(['"', '\'', '\\', '$']),
                "value {raw:?} needs more than this test's parser"
            );
            return inner.to_owned();
        }
    }
    assert!(
        !raw.contains(['"', '\'', '\\', '$']),
        "value {raw:?} needs more than this test's parser"
    );
    raw.to_owned()
}

/// [`ServiceCommand`] of `unit`, reading its `EnvironmentFile=`s (a leading
/// `-` makes a missing file fine, as in systemd). The command line must be
/// plain words and variables: quoting, escapes and `ExecStart=` prefixes
/// fail the test rather than being half understood.
fn service_command(unit: &str) -> ServiceCommand {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| {
        env.retain(|(key, _)| key != k);
        env.push((k.to_owned(), v));
    };
    for line in directive(unit, "Environment") {
        for word in line.split_whitespace() {
            let (k, v) = word
                .split_once('=')
                .unwrap_or_else(|| panic!("Environment={line}: {word:?} is not KEY=VALUE"));
            set(k, env_value(v));
        }
    }
    for file in directive(unit, "EnvironmentFile") {
        let (optional, path) = match file.strip_prefix('-') {
            Some(p) => (true, p.to_owned()),
            None => (false, file.clone()),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("EnvironmentFile={file}: {e}"),
        };
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{path}: {line:?} is not KEY=VALUE"));
            set(k.trim(), env_value(v));
        }
    }
    let exec = directive(unit, "ExecStart");
    assert_eq!(exec.len(), 1, "one ExecStart= expected: {exec:?}");
    let exec = &exec[0];
    assert!(
        !exec.contains(['"', '\'', '\\', ';']) && !exec.starts_with(['-', '@', '+', '!', ':']),
        "ExecStart={exec} needs more than this test's parser"
    );
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut argv = Vec::new();
    for word in exec.split_whitespace() {
        if let Some(name) = word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
            argv.push(lookup(name));
        } else if let Some(name) = word.strip_prefix('$') {
            argv.extend(lookup(name).split_whitespace().map(str::to_owned));
        } else {
            assert!(!word.contains('$'), "ExecStart={exec}: {word:?}");
            argv.push(word.to_owned());
        }
    }
    ServiceCommand { env, argv }
}

/// The value after `option` in `argv` (`--option VALUE` or `--option=VALUE`).
fn option_value<'a>(argv: &'a [String], option: &str) -> Option<&'a str> {
    argv.iter().enumerate().find_map(|(i, a)| {
        if a == option {
            argv.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(option)
                .and_then(|rest| rest.strip_prefix('='))
        }
    })
}

#[test]
fn service_command_follows_systemd_expansion() {
    let dir = TempDir::new("xsk-envfile").unwrap();
    let file = dir.join("default");
    std::fs::write(
        &file,
        "# comment\nXSK_BROKERD_ARGS=\"--log-format json --pin-dir=/p\"\nXSK_BROKER_LOG='debug'\n",
    )
    .unwrap();
    let unit = format!(
        "[Service]\nEnvironment=XSK_BROKER_LOG=info A=1\nEnvironmentFile=-{}\n\
         EnvironmentFile=-/nonexistent/xsk\nExecStart=/bin/b --x $XSK_BROKERD_ARGS ${{A}} $NONE\n",
        file.display()
    );
    let cmd = service_command(&unit);
    assert_eq!(
        cmd.argv,
        ["/bin/b", "--x", "--log-format", "json", "--pin-dir=/p", "1"]
    );
    assert_eq!(option_value(&cmd.argv, "--pin-dir"), Some("/p"));
    assert_eq!(option_value(&cmd.argv, "--log-format"), Some("json"));
    assert_eq!(option_value(&cmd.argv, "--state-dir"), None);
    let env: Vec<(&str, &str)> = cmd
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        env,
        [
            ("A", "1"),
            ("XSK_BROKERD_ARGS", "--log-format json --pin-dir=/p"),
            ("XSK_BROKER_LOG", "debug"),
        ]
    );
}

/// What the test does around the installed `ExecStart=` to stand in for
/// systemd, which this machine may not run as PID 1. Arguments: the
/// directory standing for the service's `RuntimeDirectory=`
/// (/run/xsk-broker), the bpffs standing for /sys/fs/bpf, the unit's
/// `UMask=`, its socket's `FileDescriptorName=`, the unit's
/// `CapabilityBoundingSet=` for setpriv, the installed tmpfiles.d entry, the
/// unit's `ProtectProc=` as a hidepid= value; then the command line. In a
/// mount namespace of its own (the broker's view only), /run is a fresh
/// tmpfs with the runtime directory bound to /run/xsk-broker, the bpffs is
/// bound to /sys/fs/bpf and /proc hides other users' processes: the broker
/// runs with the unit's own paths, and both outlive it as they do under
/// systemd.
/// The listening socket comes in as stdin and is handed over as fd 3 with
/// LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES (`$$` is the broker's pid: every step
/// execs in place). Not reproduced: the rest of the sandbox
/// (ProtectSystem=, SystemCallFilter=, ...; see the strace test above).
const SERVICE_WRAPPER: &str = r#"set -e
run_dir=$1 bpffs=$2 umask_=$3 fdname=$4 caps=$5 tmpfiles=$6 hidepid=$7
shift 7
mount -t proc -o hidepid="$hidepid" proc /proc
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -m 0755 /run/xsk-broker
mount --bind "$run_dir" /run/xsk-broker
mount --bind "$bpffs" /sys/fs/bpf
systemd-tmpfiles --create "$tmpfiles"
exec 3<&0 </dev/null
umask "$umask_"
export LISTEN_FDS=1 LISTEN_PID=$$ LISTEN_FDNAMES="$fdname"
exec setpriv --bounding-set "$caps" --no-new-privs -- "$@"
"#;

/// The installed service's command line running in a test bed (see
/// [`SERVICE_WRAPPER`]); killed on drop, its log printed if the test failed.
struct Service {
    child: std::process::Child,
    log: PathBuf,
}

const RESTORED: &str = "restored the state of an earlier run";

impl Service {
    /// Start `svc` in `ns` with `listener` as its socket and wait until it
    /// has taken over the earlier run's state (it logs [`RESTORED`]).
    fn start(
        ns: &xsk_testbed::Netns,
        unit: &str,
        svc: &ServiceCommand,
        listener: &std::os::unix::net::UnixListener,
        run_dir: &Path,
        bpffs: &Path,
        log: &Path,
    ) -> Service {
        use std::time::{Duration, Instant};
        let one = |key: &str| {
            let v = directive(unit, key);
            assert_eq!(v.len(), 1, "{key}= {v:?}");
            v[0].clone()
        };
        let caps: Vec<String> = one("CapabilityBoundingSet")
            .split_whitespace()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect();
        let caps = format!("-all,{}", caps.join(","));
        let socket_unit =
            std::fs::read_to_string("/usr/lib/systemd/system/xsk-broker.socket").unwrap();
        let fdname = directive(&socket_unit, "FileDescriptorName").join("");
        let restored = || {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .matches(RESTORED)
                .count()
        };
        let before = restored();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let fd: std::os::fd::OwnedFd = listener.try_clone().unwrap().into();
        let mut cmd = ns.exec_command(["unshare", "--mount", "--propagation", "private"]);
        cmd.args(["sh", "-c", SERVICE_WRAPPER, "sh"])
            .arg(run_dir)
            .arg(bpffs)
            .arg(one("UMask"))
            .arg(fdname)
            .arg(caps)
            .arg("/usr/lib/tmpfiles.d/xsk-broker.conf")
            .arg(match one("ProtectProc").as_str() {
                "default" => "off".to_owned(),
                other => other.to_owned(),
            })
            .args(&svc.argv)
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin")
            .envs(svc.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::from(fd))
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let mut service = Service {
            child: cmd.spawn().unwrap(),
            log: log.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = service.child.try_wait().unwrap() {
                panic!("the service exited ({st}):\n{}", service.log());
            }
            let exe = std::fs::read_link(format!("/proc/{}/exe", service.pid())).ok();
            if restored() > before && exe.as_deref() == Some(Path::new(&svc.argv[0])) {
                return service;
            }
            assert!(
                Instant::now() < deadline,
                "the service did not log {RESTORED:?} (pid {} runs {exe:?}):\n{}",
                service.pid(),
                service.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as `systemctl stop`/`restart` sends; it must exit 0.
    fn stop(mut self) {
        use std::time::{Duration, Instant};
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let st = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "the service ignored SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(st.success(), "the service: {st}\n{}", self.log());
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- service log ----\n{}\n---- end ----", self.log());
        }
    }
}

/// `systemctl restart xsk-broker.service` with a lease held does not wedge
/// the interface: the installed unit's `ExecStart=` (with
/// /etc/default/xsk-broker's options, run in the test bed's namespace as
/// [`SERVICE_WRAPPER`] describes) grants an unprivileged client a queue of
/// the one interface the policy names, is stopped with SIGTERM and started
/// again with the same command line; then the held queue is still refused
/// to another client with `queue_busy` naming the holder, a free queue of
/// the same interface is granted, and once the holder exits its queue is
/// granted again.
///
/// The policy is the administrator's step: the packaged example with the
/// test bed's interface and nobody's group, written to
/// /etc/xsk-broker/policy.json; the socket's group is nobody's too (as
/// `SocketGroup=` in `systemctl edit xsk-broker.socket` would make it).
#[test]
fn installed_service_restarts_with_leases_held() {
    use std::time::Duration;
    use xsk_testbed::{nobody_ids, BpfFs, ClientProcess, Testbed, TEST_FRAMES};
    let test = "installed_service_restarts_with_leases_held";
    let Some(_installed) = install_package(test) else {
        return;
    };
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/xsk-broker.service").unwrap();
    let socket_unit = std::fs::read_to_string("/usr/lib/systemd/system/xsk-broker.socket").unwrap();
    let svc = service_command(&unit);
    // The unit's own paths, which the wrapper provides.
    assert_eq!(directive(&unit, "RuntimeDirectory"), ["xsk-broker"]);
    assert_eq!(
        directive(&socket_unit, "ListenStream"),
        ["/run/xsk-broker/broker.sock"]
    );
    assert_eq!(
        option_value(&svc.argv, "--state-dir"),
        Some("/run/xsk-broker/state")
    );
    assert_eq!(
        option_value(&svc.argv, "--pin-dir"),
        Some("/sys/fs/bpf/xsk-broker")
    );

    let tb = Testbed::new(2).unwrap();
    let dir = TempDir::new("xsk-deb-restart").unwrap();
    let run_dir = dir.join("run");
    std::fs::create_dir(&run_dir).unwrap();
    let bpf = BpfFs::mount(dir.join("bpffs"));
    let log = dir.join("service.log");

    let (_, gid) = nobody_ids().unwrap();
    let group = nix::unistd::Group::from_gid(gid).unwrap().unwrap().name;
    let mut policy: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("/usr/share/doc/xsk-broker/policy.example.json").unwrap(),
    )
    .unwrap();
    assert_eq!(
        policy["rules"].as_array().map(Vec::len),
        Some(1),
        "{policy}"
    );
    policy["rules"][0]["interfaces"] = serde_json::json!([tb.xsk_if]);
    policy["rules"][0]["groups"] = serde_json::json!([group]);
    std::fs::write("/etc/xsk-broker/policy.json", policy.to_string()).unwrap();

    // The listening socket, held across the restart as systemd holds it.
    let sock = run_dir.join("broker.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mode = directive(&socket_unit, "SocketMode").join("");
    let mode = u32::from_str_radix(&mode, 8).unwrap();
    std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    std::os::unix::fs::chown(&sock, Some(0), Some(gid.as_raw())).unwrap();

    let start = || Service::start(&tb.xsk, &unit, &svc, &listener, &run_dir, &bpf.0, &log);
    let frames = TEST_FRAMES.to_string();
    let client = |sub: &str, queue: u32| {
        let queue = queue.to_string();
        ClientProcess::spawn(
            sub,
            &sock,
            &[
                "--ifname",
                &tb.xsk_if,
                "--queues",
                "1",
                "--start-queue",
                &queue,
                "--copy",
                "copy",
                "--frames",
                &frames,
                "--require-unprivileged",
            ],
            None,
        )
        .unwrap()
    };
    let ready = Duration::from_secs(15);

    let service = start();
    assert!(
        service
            .log()
            .contains("/etc/xsk-broker/policy.json (1 rule(s))"),
        "{}",
        service.log()
    );
    let mut holder = client("echo", 0);
    holder.wait_event("ready", ready).unwrap();
    // Kept where the unit says: the state under /run/xsk-broker, the pins
    // in the directory tmpfiles.d made on the bpffs, both 0700.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("state/state.json")).unwrap()).unwrap();
    assert_eq!(state["leases"][0]["pid"], holder.pid(), "{state}");
    let prog_pin = state["interfaces"][0]["prog_pin"].as_str().unwrap();
    let pin_name = prog_pin
        .strip_prefix("/sys/fs/bpf/xsk-broker/")
        .unwrap_or_else(|| panic!("{state}"));
    assert!(bpf.0.join("xsk-broker").join(pin_name).exists(), "{state}");
    for d in [run_dir.join("state"), bpf.0.join("xsk-broker")] {
        let m = std::fs::metadata(&d).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777,
            0o700,
            "{}",
            d.display()
        );
    }

    // systemctl restart: SIGTERM, then the same command line again.
    service.stop();
    let service = start();
    let after = service.log();
    assert!(after.contains("1 lease(s) kept, 0 released"), "{after}");

    // The held queue is still the holder's.
    let (err, status) = client("rx", 0).wait_failure(ready).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("queue_busy")
            && err.contains(&format!(
                "queue 0 of {} is leased by pid {}",
                tb.xsk_if,
                holder.pid()
            )),
        "{err}"
    );
    // A free queue of the same interface is granted: no "attached by
    // someone else" wedge.
    let mut other = client("rx", 1);
    other.wait_event("ready", ready).unwrap();
    other.stop().unwrap();
    // The holder exits: its queue is free again.
    holder.stop().unwrap();
    let deadline = std::time::Instant::now() + ready;
    let again = loop {
        let mut c = client("rx", 0);
        match c.wait_event("ready", ready) {
            Ok(_) => break c,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "queue 0 was not granted again after its holder exited: {e:#}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    again.stop().unwrap();
    let log = service.log();
    assert!(!log.contains("someone else"), "{log}");
    service.stop();
}
