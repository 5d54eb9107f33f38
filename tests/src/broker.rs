//! Running `xsk-brokerd` inside a namespace.

use crate::cmd::describe;
use crate::netns::Netns;
use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long [`BrokerProcess::spawn`] waits for the socket to accept connections.
pub const BROKER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long stopping waits after SIGTERM before SIGKILL.
pub const BROKER_STOP_GRACE: Duration = Duration::from_secs(3);

/// Find a binary of this workspace next to the running executable: the test executable is
/// `target/PROFILE/deps/NAME-HASH` and the demo `target/PROFILE/xsk-demo`, so
/// `target/PROFILE/NAME` is looked for in the executable's directory and its two parents,
/// and then `target/PROFILE/examples/NAME` (examples such as `xsk-udp-bridge`, which
/// `cargo test` builds too).
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe()")?;
    let mut dirs: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(3)
        .map(Path::to_path_buf)
        .collect();
    let examples: Vec<PathBuf> = dirs.iter().map(|d| d.join("examples")).collect();
    dirs.extend(examples);
    for d in &dirs {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "binary {name} not found in {}; run `cargo build --workspace --bins` first",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A broker process, `ip netns exec NS xsk-brokerd --socket DIR/xsk-brokerd.sock
/// --socket-mode 0666 [EXTRA...]`, with stdout and stderr appended to
/// `DIR/xsk-brokerd.log`.
///
/// `ip netns exec` execs the broker in place, so [`BrokerProcess::pid`] is the broker's own
/// pid (checked at spawn through `/proc/PID/exe`). Dropping sends SIGTERM, then SIGKILL
/// after [`BROKER_STOP_GRACE`], and reaps the process; if the thread is panicking (a test
/// failed) the log is printed to stderr.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Child,
    status: Option<ExitStatus>,
    bin: PathBuf,
    socket: PathBuf,
    log_path: PathBuf,
    ns: String,
}

/// The policy test brokers run with unless a test passes its own `--policy`:
/// uid nobody (the test bed's clients) may lease any interface, any number of
/// queues, in any mode, and use the map flow.
pub const TEST_POLICY: &str = r#"{
  "version": 1,
  "rules": [
    { "name": "test-bed", "users": ["nobody"], "interfaces": ["*"], "map_flow": true }
  ]
}
"#;

/// `["--policy", "DIR/test-policy.json"]` with [`TEST_POLICY`] written there,
/// or nothing when `extra` already names a policy.
fn test_policy(dir: &Path, extra: &[&str]) -> Result<Vec<std::ffi::OsString>> {
    if extra
        .iter()
        .any(|a| *a == "--policy" || a.starts_with("--policy="))
    {
        return Ok(Vec::new());
    }
    let path = dir.join("test-policy.json");
    std::fs::write(&path, TEST_POLICY)
        .with_context(|| format!("writing the test policy {}", path.display()))?;
    Ok(vec!["--policy".into(), path.into_os_string()])
}

/// The broker's log, opened for appending, twice (its stdout and stderr), so a
/// restarted broker in the same directory keeps one log.
fn open_log(log_path: &Path) -> Result<(std::fs::File, std::fs::File)> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("opening broker log {}", log_path.display()))?;
    let log2 = log
        .try_clone()
        .with_context(|| format!("duplicating broker log {}", log_path.display()))?;
    Ok((log, log2))
}

impl BrokerProcess {
    /// Start `xsk-brokerd` (from [`workspace_bin`]) in `ns`, with its socket and log in
    /// `dir`, and wait until the socket accepts connections.
    pub fn spawn(ns: &Netns, dir: &Path) -> Result<BrokerProcess> {
        BrokerProcess::spawn_with_args(ns, dir, &[])
    }

    /// [`BrokerProcess::spawn`] with extra command-line arguments appended.
    pub fn spawn_with_args(ns: &Netns, dir: &Path, extra: &[&str]) -> Result<BrokerProcess> {
        let bin = workspace_bin("xsk-brokerd")?;
        BrokerProcess::spawn_bin(&bin, ns, dir, extra)
    }

    /// [`BrokerProcess::spawn_with_args`] with an explicit broker binary (any program that
    /// takes `--socket PATH --socket-mode MODE` and listens there).
    ///
    /// The socket is `dir/xsk-brokerd.sock`; a stale socket file left by a killed broker is
    /// fine (readiness means a successful connect). The log is appended to, so a restarted
    /// broker in the same `dir` keeps one log. On failure the error includes the log.
    pub fn spawn_bin(bin: &Path, ns: &Netns, dir: &Path, extra: &[&str]) -> Result<BrokerProcess> {
        BrokerProcess::spawn_prefixed(&[], bin, ns, dir, extra)
    }

    /// [`BrokerProcess::spawn_bin`] run through `prefix`, a command that sets something up
    /// and then execs its arguments in place (e.g. `setpriv --bounding-set ... --`):
    /// `ip netns exec NS PREFIX... BIN --socket ... EXTRA...`. Readiness still checks that
    /// the pid ends up running `bin` itself.
    pub fn spawn_prefixed(
        prefix: &[&str],
        bin: &Path,
        ns: &Netns,
        dir: &Path,
        extra: &[&str],
    ) -> Result<BrokerProcess> {
        let policy = test_policy(dir, extra)?;
        BrokerProcess::spawn_inner(prefix, bin, ns, dir, &policy, extra)
    }

    /// [`BrokerProcess::spawn_with_args`] without the test policy: the broker's own
    /// default applies (only root may lease).
    pub fn spawn_without_policy(ns: &Netns, dir: &Path, extra: &[&str]) -> Result<BrokerProcess> {
        let bin = workspace_bin("xsk-brokerd")?;
        BrokerProcess::spawn_inner(&[], &bin, ns, dir, &[], extra)
    }

    fn spawn_inner(
        prefix: &[&str],
        bin: &Path,
        ns: &Netns,
        dir: &Path,
        policy: &[std::ffi::OsString],
        extra: &[&str],
    ) -> Result<BrokerProcess> {
        let socket = dir.join("xsk-brokerd.sock");
        let log_path = dir.join("xsk-brokerd.log");
        let (log, log2) = open_log(&log_path)?;
        let mut cmd = ns.exec_command(
            prefix
                .iter()
                .map(std::ffi::OsStr::new)
                .chain([bin.as_os_str()]),
        );
        cmd.arg("--socket")
            .arg(&socket)
            .args(["--socket-mode", "0666"])
            .args(policy)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let line = describe(&cmd);
        let child = cmd.spawn().with_context(|| format!("spawning `{line}`"))?;
        let mut broker = BrokerProcess {
            child,
            status: None,
            bin: bin.to_path_buf(),
            socket,
            log_path,
            ns: ns.name().to_owned(),
        };
        if let Err(e) = broker.wait_ready(BROKER_READY_TIMEOUT) {
            let _ = broker.kill();
            return Err(e.context(format!("starting `{line}`; log:\n{}", broker.log())));
        }
        Ok(broker)
    }

    /// Start `xsk-brokerd` in `ns` the way systemd's socket activation does:
    /// `systemd-socket-activate --fdname=xsk-broker -l dir/xsk-brokerd.sock xsk-brokerd
    /// [EXTRA...]` (no `--socket`). `systemd-socket-activate` binds and listens, and on the
    /// first connection execs the broker in place with the listening socket as fd 3 and
    /// `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES` set. The socket file is made mode 0666 (as
    /// a .socket unit's `SocketMode=0666` would), a first connection wakes it, and this waits
    /// until the pid runs the broker itself and accepts connections.
    pub fn spawn_socket_activated(ns: &Netns, dir: &Path, extra: &[&str]) -> Result<BrokerProcess> {
        let bin = workspace_bin("xsk-brokerd")?;
        let socket = dir.join("xsk-brokerd.sock");
        let log_path = dir.join("xsk-brokerd.log");
        let (log, log2) = open_log(&log_path)?;
        let mut cmd = ns.exec_command(["systemd-socket-activate", "--fdname=xsk-broker", "-l"]);
        let policy = test_policy(dir, extra)?;
        cmd.arg(&socket)
            .arg(&bin)
            .args(&policy)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let line = describe(&cmd);
        let child = cmd.spawn().with_context(|| format!("spawning `{line}`"))?;
        let mut broker = BrokerProcess {
            child,
            status: None,
            bin: bin.clone(),
            socket,
            log_path,
            ns: ns.name().to_owned(),
        };
        let woken = (|| -> Result<()> {
            let deadline = Instant::now() + BROKER_READY_TIMEOUT;
            let want = std::fs::canonicalize(&bin).unwrap_or_else(|_| bin.clone());
            let mut woke = false;
            loop {
                if let Some(st) = broker.try_wait()? {
                    bail!("exited before the broker was ready ({st})");
                }
                if !woke && broker.socket.exists() {
                    std::fs::set_permissions(
                        &broker.socket,
                        std::os::unix::fs::PermissionsExt::from_mode(0o666),
                    )
                    .with_context(|| format!("chmod 0666 {}", broker.socket.display()))?;
                    woke = UnixStream::connect(&broker.socket).is_ok();
                }
                let exe = std::fs::read_link(format!("/proc/{}/exe", broker.pid())).ok();
                if woke && exe.as_deref() == Some(want.as_path()) {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    bail!(
                        "pid {} still runs {exe:?}, not {}, after {BROKER_READY_TIMEOUT:?}",
                        broker.pid(),
                        want.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })();
        if let Err(e) = woken.and_then(|()| broker.wait_ready(BROKER_READY_TIMEOUT)) {
            let _ = broker.kill();
            return Err(e.context(format!("starting `{line}`; log:\n{}", broker.log())));
        }
        Ok(broker)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last_err = String::from("socket file does not exist yet");
        loop {
            if let Some(st) = self.try_wait()? {
                bail!("broker exited before it was ready ({st})");
            }
            if self.socket.exists() {
                match UnixStream::connect(&self.socket) {
                    Ok(_) => break,
                    Err(e) => last_err = format!("connect {}: {e}", self.socket.display()),
                }
            }
            if Instant::now() >= deadline {
                bail!("broker not ready after {timeout:?}: {last_err}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // `ip netns exec` must have exec'd the broker in place (no fork): the pid runs the
        // binary itself, or (a script) an interpreter with the binary as an argument.
        let pid = self.pid();
        let exe_link = format!("/proc/{pid}/exe");
        let exe = std::fs::read_link(&exe_link).with_context(|| format!("readlink {exe_link}"))?;
        let want = std::fs::canonicalize(&self.bin).unwrap_or_else(|_| self.bin.clone());
        if exe == want {
            return Ok(());
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let runs_script = exe.file_name().is_some_and(|n| n != "ip")
            && cmdline.split(|&b| b == 0).any(|a| {
                let a = Path::new(std::ffi::OsStr::from_bytes(a));
                a == self.bin || a == want
            });
        if !runs_script {
            bail!(
                "pid {pid} runs {}, not {}: did `ip netns exec` fork?",
                exe.display(),
                want.display()
            );
        }
        Ok(())
    }

    /// The broker's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The broker's Unix socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// `xsk-brokerctl status --json` as root, parsed; panics (a test helper:
    /// the test fails) if the broker does not answer or the reply is not JSON.
    pub fn status(&self) -> serde_json::Value {
        let out = crate::brokerctl(&self.socket, &["status", "--json"], false)
            .unwrap_or_else(|e| panic!("xsk-brokerctl status: {e}"));
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// The log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The network namespace the broker runs in.
    pub fn netns(&self) -> &str {
        &self.ns
    }

    /// The captured log so far (never fails: an unreadable log yields a note saying so).
    pub fn log(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => format!("<cannot read {}: {e}>", self.log_path.display()),
        }
    }

    /// Number of open file descriptors of the broker (entries of `/proc/PID/fd`).
    pub fn open_fd_count(&self) -> Result<usize> {
        Ok(self.open_fds()?.len())
    }

    /// The broker's open file descriptors and what they point to (`readlink
    /// /proc/PID/fd/N`, e.g. `socket:[1234]`, `anon_inode:bpf-map`), for leak reports.
    pub fn open_fds(&self) -> Result<Vec<(u32, String)>> {
        Ok(crate::procfd::proc_fds(self.pid())?
            .into_iter()
            .map(|(fd, target)| (fd as u32, target))
            .collect())
    }

    /// Whether the broker has exited (reaps it if so).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for broker pid {}", self.child.id()))?;
        }
        Ok(self.status)
    }

    /// Send `sig` to the broker (e.g. SIGHUP). Fails if it has exited.
    pub fn signal(&mut self, sig: Signal) -> Result<()> {
        if self.try_wait()?.is_some() {
            bail!("broker pid {} has already exited", self.pid());
        }
        kill(Pid::from_raw(self.pid() as i32), sig)
            .map_err(|e| anyhow!("kill({}, {sig}): {e}", self.pid()))
    }

    /// Stop gracefully: SIGTERM, wait up to [`BROKER_STOP_GRACE`], then SIGKILL; reap and
    /// return the exit status. Idempotent.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        if let Some(st) = self.try_wait()? {
            return Ok(st);
        }
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + BROKER_STOP_GRACE;
        while Instant::now() < deadline {
            if let Some(st) = self.try_wait()? {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!(
            "xsk_testbed: broker pid {} ignored SIGTERM for {BROKER_STOP_GRACE:?}; SIGKILL",
            self.pid()
        );
        self.kill()
    }

    /// SIGKILL (a crash, for restart tests), reap and return the exit status. Idempotent.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(st) = self.try_wait()? {
            return Ok(st);
        }
        let _ = self.child.kill();
        let st = self
            .child
            .wait()
            .with_context(|| format!("reaping broker pid {}", self.child.id()))?;
        self.status = Some(st);
        Ok(st)
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            eprintln!(
                "xsk_testbed: stopping broker pid {}: {e:#}",
                self.child.id()
            );
        }
        if std::thread::panicking() {
            eprintln!(
                "---- xsk-brokerd log ({}) ----\n{}\n---- end of log ----",
                self.log_path.display(),
                self.log()
            );
        }
    }
}
