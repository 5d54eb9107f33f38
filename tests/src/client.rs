//! Running the real `xsk-client` tool as uid nobody with no capabilities, and
//! reading its JSON event lines.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::broker::workspace_bin;
use crate::unpriv::{spawn_nobody_with_caps, spawn_unprivileged};

/// Read `out` line by line on a thread of its own; the lines arrive on the
/// returned channel, which closes at EOF.
pub fn line_reader(out: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// Run `xsk-brokerctl --socket SOCKET ARGS...`, as nobody with no
/// capabilities when `unprivileged` (a tenant), else as this process (root):
/// its standard output, or its exit status and standard error.
pub fn brokerctl(socket: &Path, args: &[&str], unprivileged: bool) -> Result<String, String> {
    let bin = workspace_bin("xsk-brokerctl").map_err(|e| format!("{e:#}"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = if unprivileged {
        spawn_unprivileged(&mut cmd).map_err(|e| format!("{e:#}"))?
    } else {
        cmd.spawn().map_err(|e| e.to_string())?
    };
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "xsk-brokerctl {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| e.to_string())
}

/// Umem frames per queue used by tests: 256 frames of 2048 bytes (512 KiB),
/// so several queues and clients of uid nobody fit an 8 MiB RLIMIT_MEMLOCK.
pub const TEST_FRAMES: u32 = 256;

/// An `xsk-client` process running unprivileged.
pub struct ClientProcess {
    child: Child,
    lines: Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
    seen: Vec<Value>,
}

impl ClientProcess {
    /// Start `xsk-client SUBCOMMAND --json --socket SOCKET ARGS...` as nobody.
    /// `stdin` is written to its standard input, which is then closed.
    pub fn spawn(
        subcommand: &str,
        socket: &Path,
        args: &[&str],
        stdin: Option<Vec<u8>>,
    ) -> Result<ClientProcess> {
        ClientProcess::spawn_with_caps(subcommand, socket, args, stdin, None)
    }

    /// Start `xsk-client SUBCOMMAND` as nobody on `queues` queues of
    /// `ifname` from `start`, with [`TEST_FRAMES`] umem frames unless
    /// `extra` gives `--frames`, then the `extra` arguments; panics (a test
    /// helper) if it cannot be started.
    pub fn spawn_on(
        subcommand: &str,
        socket: &Path,
        ifname: &str,
        queues: u32,
        start: u32,
        extra: &[&str],
    ) -> ClientProcess {
        let (q, s, f) = (
            queues.to_string(),
            start.to_string(),
            TEST_FRAMES.to_string(),
        );
        let mut args = vec!["--ifname", ifname, "--queues", &q, "--start-queue", &s];
        if !extra.contains(&"--frames") {
            args.extend_from_slice(&["--frames", &f]);
        }
        args.extend_from_slice(extra);
        ClientProcess::spawn(subcommand, socket, &args, None).expect("spawning xsk-client")
    }

    /// [`ClientProcess::spawn`], but with `caps` = `Some(list)` the client keeps exactly
    /// those capabilities (see [`spawn_nobody_with_caps`]); `None` is no capability at all.
    pub fn spawn_with_caps(
        subcommand: &str,
        socket: &Path,
        args: &[&str],
        stdin: Option<Vec<u8>>,
        caps: Option<&[u32]>,
    ) -> Result<ClientProcess> {
        let bin = workspace_bin("xsk-client")?;
        let mut cmd = Command::new(&bin);
        cmd.arg(subcommand)
            .arg("--json")
            .arg("--socket")
            .arg(socket)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned = match caps {
            Some(caps) => spawn_nobody_with_caps(&mut cmd, caps),
            None => spawn_unprivileged(&mut cmd),
        };
        let mut child = spawned
            .with_context(|| format!("starting {} {subcommand} as nobody", bin.display()))?;
        if let Some(data) = stdin {
            let mut pipe = child.stdin.take().context("client stdin")?;
            std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            });
        }
        let lines = line_reader(child.stdout.take().context("client stdout")?);
        let mut err_pipe = child.stderr.take().context("client stderr")?;
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err_pipe.read_to_string(&mut s);
            s
        });
        Ok(ClientProcess {
            child,
            lines,
            stderr,
            seen: Vec::new(),
        })
    }

    /// The client's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for the next JSON line whose `event` is `name`; other lines are
    /// kept in [`ClientProcess::seen`]. Fails if the process ends first.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let v: Value = serde_json::from_str(&line)
                        .with_context(|| format!("xsk-client printed a non-JSON line: {line}"))?;
                    if v["event"] == name {
                        return Ok(v);
                    }
                    self.seen.push(v);
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!("no {name:?} event from xsk-client within {timeout:?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!(
                        "xsk-client ended ({status:?}) before a {name:?} event; stderr: {}",
                        self.take_stderr()
                    )
                }
            }
        }
    }

    /// Lines seen so far that were not waited for (e.g. `frame` events).
    pub fn seen(&self) -> &[Value] {
        &self.seen
    }

    /// Collect `frame` events until `until` holds or `timeout` passes.
    pub fn collect_frames(
        &mut self,
        until: impl Fn(&[Value]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        let mut frames: Vec<Value> = self
            .seen
            .iter()
            .filter(|v| v["event"] == "frame")
            .cloned()
            .collect();
        while !until(&frames) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let v: Value = serde_json::from_str(&line)?;
                    if v["event"] == "frame" {
                        frames.push(v.clone());
                    }
                    self.seen.push(v);
                }
                Err(_) => break,
            }
        }
        Ok(frames)
    }

    /// Ask the client to stop (SIGTERM), wait for it, and return its `done`
    /// event and exit status.
    pub fn stop(mut self) -> Result<(Value, ExitStatus)> {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM)
            .context("sending SIGTERM to xsk-client")?;
        self.finish()
    }

    /// Wait for the client to end by itself (up to `timeout`), returning its
    /// `done` event and exit status.
    pub fn wait(mut self, timeout: Duration) -> Result<(Value, ExitStatus)> {
        let deadline = Instant::now() + timeout;
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("xsk-client did not finish within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.finish()
    }

    /// Wait for exit and return (stderr, status) for a client expected to fail.
    pub fn wait_failure(mut self, timeout: Duration) -> Result<(String, ExitStatus)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok((self.take_stderr(), status));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("xsk-client did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL the client and reap it.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill().context("killing xsk-client")?;
        self.child.wait()?;
        Ok(())
    }

    fn finish(&mut self) -> Result<(Value, ExitStatus)> {
        let done = self.wait_event("done", Duration::from_secs(10));
        let status = self.child.wait().context("waiting for xsk-client")?;
        match done {
            Ok(d) => Ok((d, status)),
            Err(e) => Err(anyhow!(
                "{e}; status {status}; stderr: {}",
                self.take_stderr()
            )),
        }
    }

    fn take_stderr(&mut self) -> String {
        let handle = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        handle.join().unwrap_or_default()
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Serializes end-to-end tests across threads and processes: they share uid
/// nobody's locked-memory budget and the machine's two cores.
pub fn serial_guard() -> Result<nix::fcntl::Flock<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/xsk-broker-e2e.lock")
        .context("opening /tmp/xsk-broker-e2e.lock")?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow!("locking /tmp/xsk-broker-e2e.lock: {e}"))
}
