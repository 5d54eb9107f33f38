//! Confinement level `kernel`, on a distribution kernel that runs BPF LSM
//! programs: Debian's 6.12 cloud kernel booted under TCG with
//! `lsm=lockdown,landlock,bpf` (scripts/build-guest), running the real broker
//! on a one-interface policy and `xsk-attack` as uid 65534 with no
//! capabilities (tests/guest/lsm.sh). The host kernel refuses LSM programs,
//! so this is where the queue and copy-mode confinement is proven.
//!
//! Needs qemu-system-x86_64, busybox-static and Debian's apt archive (the
//! kernel package is downloaded once into target/guest/); without them the
//! test skips, except under CI=true, where it fails.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use xsk_testbed::{
    guest_crashed, guest_unavailable, require_guest, workspace_bin, Guest, GuestSpec,
};

/// The whole guest run (boot, broker twice, nine attacks, power off) takes
/// about 10 s under TCG here; this bounds a hung guest.
const GUEST_TIMEOUT: Duration = Duration::from_secs(240);

const APPEND: &str = "lsm=lockdown,landlock,bpf guest.run=/guest/lsm.sh";

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

fn spec() -> anyhow::Result<GuestSpec> {
    let ip = which("ip").ok_or_else(|| anyhow::anyhow!("no `ip` (iproute2) on PATH"))?;
    let mut spec = GuestSpec::new().module("veth").bin(ip);
    for bin in ["xsk-brokerd", "xsk-brokerctl", "xsk-attack"] {
        spec = spec.bin(workspace_bin(bin)?);
    }
    Ok(spec.file("tests/guest/lsm.sh", "/guest/lsm.sh"))
}

/// The JSON of the last `RESULT NAME` line (an attack's final step).
fn result(log: &str, name: &str) -> Value {
    let prefix = format!("RESULT {name} ");
    let line = log
        .lines()
        .rev()
        .find_map(|l| after(l, &prefix))
        .unwrap_or_else(|| panic!("no result for {name} in the serial log:\n{log}"));
    serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("result {name}: {line:?} is not JSON ({e}); log:\n{log}"))
}

/// What follows `prefix` in `line` (the console may put escape sequences
/// before it).
fn after<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    line.find(prefix).map(|i| &line[i + prefix.len()..])
}

fn line_with<'a>(log: &'a str, prefix: &str) -> &'a str {
    log.lines()
        .find_map(|l| after(l, prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in the serial log:\n{log}"))
}

fn assert_refused(log: &str, name: &str, errno: i32) {
    let r = result(log, name);
    assert_eq!(
        r["ok"], false,
        "{name}: the bind was not refused: {r}\n{log}"
    );
    assert_eq!(r["errno"], errno, "{name}: wrong errno: {r}\n{log}");
}

#[test]
fn bpf_lsm_holds_leased_sockets_to_queue_and_copy_mode() {
    let test = "bpf_lsm_holds_leased_sockets_to_queue_and_copy_mode";
    if !require_guest(test) {
        return;
    }
    let started = Instant::now();
    let guest = match spec().and_then(|s| Guest::build("lsm", &s)) {
        Ok(g) => g,
        Err(e) => {
            guest_unavailable(test, &format!("{e:#}"));
            return;
        }
    };
    let built = started.elapsed();
    let boot = || {
        guest
            .boot(APPEND, &[], GUEST_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e:#}"))
    };
    let mut log = boot();
    if guest_crashed(&log) {
        // TCG is not a perfect CPU: one more boot before calling it a failure.
        eprintln!("{test}: the guest kernel crashed; booting once more. Serial log:\n{log}");
        log = boot();
    }
    eprintln!(
        "{test}: guest built in {:.1}s, booted and ran in {:.1}s",
        built.as_secs_f64(),
        (started.elapsed() - built).as_secs_f64()
    );
    assert!(
        !guest_crashed(&log),
        "the guest kernel crashed (twice):\n{log}"
    );
    let init = line_with(&log, "GUEST-INIT ");
    assert!(
        init.contains("6.12.") && init.split("lsm=").nth(1).is_some_and(|l| l.contains("bpf")),
        "not the 6.12 kernel with the bpf LSM active: {init}"
    );

    // The attacker: uid 65534, no capabilities at all.
    for (field, want) in [
        ("Uid:", "65534 65534 65534 65534"),
        ("CapPrm:", "0000000000000000"),
        ("CapEff:", "0000000000000000"),
        ("CapAmb:", "0000000000000000"),
    ] {
        let got = line_with(&log, &format!("INFO attacker {field} "));
        assert_eq!(got.trim(), want, "attacker {field}\n{log}");
    }

    // The broker proved level kernel, said so, and reports it.
    assert!(
        log.contains("confinement: kernel (interface, queue and copy mode")
            && log.contains("canary bind to a queue outside its lease was refused with EPERM"),
        "no start log line naming level kernel and the canary:\n{log}"
    );
    let status: Value = serde_json::from_str(line_with(&log, "STATUS ")).unwrap();
    assert_eq!(status["confinement"], "kernel", "status: {status}");
    assert!(
        line_with(&log, "STATUSTEXT ").starts_with("confinement: kernel"),
        "xsk-brokerctl status\n{log}"
    );

    // The bind the lease grants works; every other is refused by the LSM.
    let granted = result(&log, "granted");
    assert_eq!(
        granted["ok"], true,
        "the granted bind failed: {granted}\n{log}"
    );
    assert_refused(&log, "other-queue", libc::EPERM);
    assert_refused(&log, "zerocopy", libc::EPERM);
    assert_refused(&log, "no-mode-flag", libc::EPERM);
    assert_refused(&log, "auto-zerocopy", libc::EPERM);
    let auto_copy = result(&log, "auto-copy");
    assert_eq!(
        auto_copy["ok"], true,
        "an auto lease under a copy-only policy binds with XDP_COPY: {auto_copy}\n{log}"
    );
    assert_refused(&log, "shared-umem", libc::EPERM);
    // Another interface: the LSM answers (EPERM) before xsk_bind's own
    // SO_BINDTOIFINDEX check would (EINVAL, as on a kernel at level interface).
    assert_refused(&log, "other-interface", libc::EPERM);
    let other: Value = result(&log, "other-interface");
    let vtc = line_with(&log, "INFO ifindex ")
        .split_whitespace()
        .find_map(|w| w.strip_prefix("vtc="))
        .and_then(|n| n.parse::<u64>().ok())
        .expect("vtc's ifindex");
    assert_eq!(
        other["ifindex"], vtc,
        "the attack did not aim at vtc: {other}"
    );
    let not_granted = result(&log, "not-granted");
    assert_eq!(not_granted["code"], "not_permitted", "{not_granted}");

    // A socket leased before the broker stopped, bound while no broker runs:
    // the pinned program still refuses another queue.
    let no_broker = result(&log, "no-broker");
    assert_eq!(no_broker["step"], "bind", "{no_broker}\n{log}");
    assert_refused(&log, "no-broker", libc::EPERM);
    // (The script stops the broker, checked here, before letting it bind.)
    line_with(&log, "INFO broker stopped");

    // Pinned in --pin-dir, reused by the restarted broker (not loaded twice),
    // which still enforces (and starts under --confinement kernel).
    let pins = line_with(&log, "INFO pins ");
    assert!(
        pins.contains("xsk-confine-v1-link") && pins.contains("xsk-confine-v1-map"),
        "pins after the first broker stopped: {pins}"
    );
    assert!(
        log.contains("reusing the BPF LSM program pinned by an earlier run"),
        "the restarted broker did not reuse the pinned program:\n{log}"
    );
    let status2: Value = serde_json::from_str(line_with(&log, "STATUS2 ")).unwrap();
    assert_eq!(
        status2["confinement"], "kernel",
        "status after restart: {status2}"
    );
    assert_refused(&log, "restarted-other-queue", libc::EPERM);
    assert_eq!(result(&log, "restarted-granted")["ok"], true, "{log}");
    assert!(
        log.contains("GUEST-EXIT rc=0"),
        "the guest script did not finish:\n{log}"
    );
}
