//! A child process watched line by line: what the end-to-end tests wait on
//! (a tool's `--json` events, a guest's serial console on QEMU's stdout).

use std::io::Read;
use std::process::{Child, ExitStatus};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{guest_crashed, line_reader};

/// How the panic of [`LineProc::wait_line`] starts when the lines show a
/// guest kernel crash (see [`guest_crashed`]), so a test can tell a TCG
/// crash from its own failure.
pub const GUEST_CRASHED: &str = "the guest kernel crashed: ";

/// A child whose standard output is read line by line on a thread and whose
/// standard error is collected on another; killed and reaped when dropped.
pub struct LineProc {
    name: String,
    /// The process.
    pub child: Child,
    lines: Receiver<String>,
    /// The lines read so far (a trailing `\r` removed).
    pub seen: Vec<String>,
    stderr: Option<JoinHandle<String>>,
}

impl LineProc {
    /// Watch `child`, which was spawned with its stdout and stderr piped;
    /// `name` names it in failures.
    pub fn new(name: impl Into<String>, mut child: Child) -> LineProc {
        let name = name.into();
        let out = child
            .stdout
            .take()
            .unwrap_or_else(|| panic!("{name}: spawn it with stdout piped"));
        let mut err = child
            .stderr
            .take()
            .unwrap_or_else(|| panic!("{name}: spawn it with stderr piped"));
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        LineProc {
            name,
            child,
            lines: line_reader(out),
            seen: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The lines read so far, one per line.
    pub fn output(&self) -> String {
        self.seen.join("\n")
    }

    /// Wait for a line starting with `prefix` and return it. Panics (a test
    /// helper), after killing the process, if none comes within `timeout` or
    /// the process ends first; the message shows its output and standard
    /// error, and starts with [`GUEST_CRASHED`] if the output shows a guest
    /// kernel crash.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    let line = line.trim_end_matches('\r').to_owned();
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(e) => {
                    let why = match e {
                        RecvTimeoutError::Timeout => {
                            format!("no {prefix:?} line within {timeout:?}")
                        }
                        RecvTimeoutError::Disconnected => {
                            format!("it ended before a {prefix:?} line")
                        }
                    };
                    let (status, err) = self.kill();
                    let crashed = if guest_crashed(&self.output()) {
                        GUEST_CRASHED
                    } else {
                        ""
                    };
                    panic!(
                        "{crashed}{} ({status}): {why}; output:\n{}\nstderr:\n{err}",
                        self.name,
                        self.output()
                    );
                }
            }
        }
    }

    /// The next JSON line whose `event` is `name` (other lines are kept in
    /// [`seen`](Self::seen)); panics like [`wait_line`](Self::wait_line).
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let line = self.wait_line("{", deadline.saturating_duration_since(Instant::now()));
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{}: {e}: {line}", self.name));
            if v["event"] == name {
                return v;
            }
        }
    }

    /// Wait for the process to exit by itself: its status and standard
    /// error (the rest of its output goes to [`seen`](Self::seen)). Panics,
    /// after killing it, if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waitpid") {
                return (status, self.finish());
            }
            if Instant::now() > deadline {
                let (status, err) = self.kill();
                panic!(
                    "{} did not exit within {timeout:?} (killed: {status}); output:\n{}\nstderr:\n{err}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kill the process (if it still runs) and reap it: its status and
    /// standard error.
    pub fn kill(&mut self) -> (ExitStatus, String) {
        let _ = self.child.kill();
        let status = self.child.wait().expect("waitpid");
        (status, self.finish())
    }

    /// After the exit: the output still in the pipe and the standard error.
    fn finish(&mut self) -> String {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line.trim_end_matches('\r').to_owned());
        }
        self.stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for LineProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
