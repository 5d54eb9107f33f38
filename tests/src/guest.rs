//! Test guests: a Debian distribution kernel and a busybox initramfs built by
//! `scripts/build-guest`, booted under TCG (`/dev/kvm` hangs on this machine
//! kind), running one script and powering off. The serial console is the
//! result.
//!
//! ```no_run
//! use std::time::Duration;
//! use xsk_testbed::{Guest, GuestSpec};
//! let spec = GuestSpec::new()
//!     .module("veth")
//!     .bin("/usr/bin/ip")
//!     .file("tests/guest/lsm.sh", "/guest/lsm.sh");
//! let guest = Guest::build("lsm", &spec).unwrap();
//! let log = guest
//!     .boot("lsm=lockdown,landlock,bpf guest.run=/guest/lsm.sh", &[], Duration::from_secs(240))
//!     .unwrap();
//! assert!(log.contains("GUEST-EXIT rc=0"));
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// What goes into a guest's initramfs besides busybox.
#[derive(Debug, Clone, Default)]
pub struct GuestSpec {
    modules: Vec<String>,
    bins: Vec<PathBuf>,
    files: Vec<(PathBuf, String)>,
}

impl GuestSpec {
    /// An empty spec: busybox and the /init of `scripts/build-guest` only.
    pub fn new() -> GuestSpec {
        GuestSpec::default()
    }

    /// A kernel module, loaded at boot with its dependencies (e.g. `veth`,
    /// `virtio_net`).
    pub fn module(mut self, name: &str) -> GuestSpec {
        self.modules.push(name.to_owned());
        self
    }

    /// An executable copied to `/usr/bin` with the shared libraries `ldd`
    /// lists. Call it by that path in guest scripts: busybox's sh prefers its
    /// own applets to anything in PATH.
    pub fn bin(mut self, path: impl Into<PathBuf>) -> GuestSpec {
        self.bins.push(path.into());
        self
    }

    /// A file copied into the guest at `dest` (absolute). A relative `src` is
    /// relative to the repository root.
    pub fn file(mut self, src: impl Into<PathBuf>, dest: &str) -> GuestSpec {
        self.files.push((src.into(), dest.to_owned()));
        self
    }
}

/// A built guest: `target/guest/NAME/{vmlinuz,initrd.img}`.
#[derive(Debug)]
pub struct Guest {
    dir: PathBuf,
}

/// The repository root (the tests crate's parent).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Whether a serial log shows a guest kernel crash.
pub fn guest_crashed(log: &str) -> bool {
    log.contains("Kernel panic") || log.contains("Oops:")
}

impl Guest {
    /// Build (or refresh: the kernel is downloaded once and cached) the guest
    /// `name` under `target/guest/NAME` with `scripts/build-guest`.
    pub fn build(name: &str, spec: &GuestSpec) -> Result<Guest> {
        let root = repo_root();
        let dir = root.join("target/guest").join(name);
        let mut cmd = Command::new(root.join("scripts/build-guest"));
        cmd.arg(&dir);
        for m in &spec.modules {
            cmd.arg("--module").arg(m);
        }
        for b in &spec.bins {
            cmd.arg("--bin").arg(b);
        }
        for (src, dest) in &spec.files {
            let src = if src.is_absolute() {
                src.clone()
            } else {
                root.join(src)
            };
            cmd.arg("--file").arg(format!("{}={dest}", src.display()));
        }
        let out = cmd.output().context("running scripts/build-guest")?;
        if !out.status.success() {
            bail!(
                "scripts/build-guest failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Guest { dir })
    }

    /// The guest's directory (vmlinuz, initrd.img, kernel-version, serial.log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Boot the guest with `qemu-system-x86_64 -accel tcg`, kernel command
    /// line `console=ttyS0 panic=-1 quiet APPEND` (`guest.run=SCRIPT` names
    /// what /init runs), `extra` QEMU arguments (e.g. a `-netdev`), and
    /// return the serial console output once it powers off. A guest kernel
    /// crash ends the boot at once (the log shows it, see [`guest_crashed`]);
    /// a guest still running after `timeout` is killed and is an error.
    pub fn boot(&self, append: &str, extra: &[&str], timeout: Duration) -> Result<String> {
        let log = self.dir.join("serial.log");
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        // `-cx16`: QEMU 7.2's TCG now and then corrupts EFLAGS on the slab
        // allocator's `cmpxchg16b %gs:...` and the guest double-faults (seen
        // with the qemu64 and max models); without CX16 the kernel avoids it.
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-cpu", "max,-cx16", "-m", "512"])
            .args(["-nographic", "-no-reboot"])
            .arg("-kernel")
            .arg(self.dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(self.dir.join("initrd.img"))
            .arg("-append")
            .arg(format!("console=ttyS0 panic=-1 quiet {append}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(file.try_clone().context("duplicating the serial log fd")?)
            .stderr(file)
            .spawn()
            .context("starting qemu-system-x86_64")?;
        let deadline = Instant::now() + timeout;
        let read =
            || String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
        loop {
            if child.try_wait().context("waiting for qemu")?.is_some() {
                break;
            }
            if guest_crashed(&read()) {
                // A panicked guest may never power off; let the trace finish.
                std::thread::sleep(Duration::from_millis(500));
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the guest did not power off within {timeout:?}; serial log:\n{}",
                    read()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(read())
    }
}

/// Decide whether a test that needs a guest can run: `qemu-system-x86_64`
/// must be on PATH. Like [`crate::require_root`]: under `CI=true` a missing
/// piece panics (CI must run it), else it prints `SKIP` and returns false.
pub fn require_guest(test: &str) -> bool {
    let found = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| d.join("qemu-system-x86_64").is_file())
    });
    if found {
        return true;
    }
    guest_unavailable(test, "qemu-system-x86_64 is not installed")
}

/// Report that a guest cannot be had for `why`: panics under `CI=true`,
/// else prints `SKIP` and returns false (so `if !guest_unavailable(..)`
/// reads as "skip").
pub fn guest_unavailable(test: &str, why: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{test}: {why}; CI must be able to build and boot the test guest \
             (scripts/install-deps installs qemu-system-x86 and busybox-static)"
        );
    }
    eprintln!("SKIP {test}: {why}");
    false
}

/// The networking guest (kernel and initramfs) the QEMU and vhost-user tests
/// boot: the virtio-net modules, iperf3 and tests/guest/qemu-net.sh (it pings
/// `net.peer=` and runs iperf3 both ways). Built once per test process by
/// `scripts/build-guest` into target/guest/qemu-net; panics (a test helper)
/// if it cannot be built.
pub fn net_guest() -> &'static Path {
    static GUEST: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    GUEST.get_or_init(|| {
        let iperf3 = ["/usr/bin/iperf3", "/bin/iperf3"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("iperf3 is not installed (scripts/install-deps installs it)");
        let spec = GuestSpec::new()
            .module("virtio_pci")
            .module("virtio_net")
            .bin(iperf3)
            .file("tests/guest/qemu-net.sh", "/guest/qemu-net.sh");
        let g = Guest::build("qemu-net", &spec).unwrap_or_else(|e| panic!("{e:#}"));
        g.dir().to_path_buf()
    })
}

/// The networking guest's address on the test bed's subnet (the xsk end has
/// .1, the peer .2).
pub const NET_GUEST_IP: &str = "198.18.0.3";
/// The networking guest NIC's MAC address.
pub const NET_GUEST_MAC: &str = "52:54:00:00:00:03";

/// The QEMU machine of the vhost-user tests and the VM benchmark: TCG (KVM
/// guests hang on the test machine; `-cx16`: QEMU's TCG now and then
/// corrupts a cmpxchg16b-using kernel), `smp` vCPUs, and 256 MiB of shared
/// memory (`memory-backend-memfd,share=on`), which a vhost-user backend maps.
pub fn tcg_shared_memory_machine_args(smp: u32) -> Vec<String> {
    [
        "-accel",
        "tcg",
        "-cpu",
        "max,-cx16",
        "-smp",
        &smp.to_string(),
        "-m",
        "256",
        "-object",
        "memory-backend-memfd,id=mem,size=256M,share=on",
        "-numa",
        "node,memdev=mem",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The QEMU arguments that boot the networking guest in `dir` (from
/// [`net_guest`]) the same way for every test and benchmark: no default
/// devices, no display, the serial console on stdio, no reboot, Debian's
/// firmware (`-L`: the +ds QEMU source has none), the kernel and initramfs,
/// and a command line that runs tests/guest/qemu-net.sh with
/// [`NET_GUEST_IP`], the peer [`crate::PEER_IP`] and `extra` (more `net.*=`
/// words). Machine, memory and NIC options are the caller's.
pub fn net_guest_boot_args(dir: &Path, extra: &str) -> Vec<String> {
    let d = dir.display();
    let mut v: Vec<String> = [
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-L",
        "/usr/share/seabios",
        "-L",
        "/usr/share/qemu",
    ]
    .map(str::to_owned)
    .to_vec();
    v.extend([
        "-kernel".to_owned(),
        format!("{d}/vmlinuz"),
        "-initrd".to_owned(),
        format!("{d}/initrd.img"),
        "-append".to_owned(),
        format!(
            "console=ttyS0 panic=-1 quiet guest.run=/guest/qemu-net.sh \
             net.ip={NET_GUEST_IP}/24 net.peer={} {extra}",
            crate::PEER_IP
        ),
    ]);
    v
}

/// `scripts/build-qemu FLAVOR` (`sock-fds`: QEMU 10.0 from Debian trixie's
/// source with the af-xdp and vhost-user netdevs; `map-path`: 10.1+ from sid):
/// the path of that QEMU, built once and cached under target/qemu. Its
/// progress goes to stderr. Panics (a test helper: the test fails) when it
/// cannot be built.
pub fn built_qemu(flavor: &str) -> PathBuf {
    let script = repo_root().join("scripts/build-qemu");
    let started = Instant::now();
    let out = Command::new(&script)
        .arg(flavor)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} {flavor} failed ({}):\n{stdout}",
        script.display(),
        out.status
    );
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(
        path.is_file(),
        "build-qemu {flavor} printed no QEMU path:\n{stdout}"
    );
    eprintln!(
        "qemu {flavor}: {} (ready after {:.1}s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    path
}

/// Mbit/s of the networking guest's `NET-IPERF DIR streams=N mbits=X` line;
/// panics (a test helper) if the line has none.
pub fn iperf_mbits(line: &str) -> f64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("mbits="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no throughput in {line:?}"))
}
