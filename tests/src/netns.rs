//! RAII named network namespaces.

use crate::cmd::{random_bytes, run_command};
use anyhow::{anyhow, Context, Result};
use nix::sched::{setns, CloneFlags};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

const BASE36: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

fn base36(mut n: u64, out: &mut String) {
    let mut digits = Vec::new();
    loop {
        digits.push(BASE36[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.extend(digits.iter().rev().map(|&d| d as char));
}

/// A short token unique across threads of this process (pid + counter) and across reruns and
/// other processes (pid + 3 random base-36 digits). At most 10 characters, `[0-9a-z]` only,
/// so `"xx" + token` still fits an interface name (15 characters).
pub(crate) fn unique_token() -> Result<String> {
    let mut s = String::new();
    base36(u64::from(std::process::id()), &mut s); // pid_max 4194304 -> at most 5 digits
    let c = COUNTER.fetch_add(1, Ordering::Relaxed) % (36 * 36);
    s.push(BASE36[(c / 36) as usize] as char);
    s.push(BASE36[(c % 36) as usize] as char);
    let mut r = [0u8; 3];
    random_bytes(&mut r)?;
    for b in r {
        s.push(BASE36[(b % 36) as usize] as char);
    }
    Ok(s)
}

/// The pid encoded in a [`unique_token`]: everything but the last 5 characters, base 36.
fn token_pid(token: &str) -> Option<u32> {
    let pid = token.get(..token.len().checked_sub(5)?)?;
    if pid.is_empty() || pid.len() > 6 || !token.bytes().all(|b| BASE36.contains(&b)) {
        return None;
    }
    u32::from_str_radix(pid, 36).ok()
}

/// Delete namespaces left behind by test processes that died without running their
/// destructors (SIGKILL, abort): every `/run/netns/PREFIX<token>` whose token encodes the
/// pid of a process that no longer exists. Returns the names deleted. Namespaces of live
/// processes are never touched; a reused pid just keeps the stale one for another run.
pub fn cleanup_stale_netns(prefix: &str) -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    let entries = match std::fs::read_dir("/run/netns") {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(deleted),
        Err(e) => return Err(e).context("listing /run/netns"),
    };
    for e in entries {
        let e = e.context("listing /run/netns")?;
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some(pid) = name.strip_prefix(prefix).and_then(token_pid) else {
            continue;
        };
        if PathBuf::from(format!("/proc/{pid}")).exists() {
            continue;
        }
        run_command(Command::new("ip").args(["netns", "del", &name]))
            .with_context(|| format!("deleting stale network namespace {name}"))?;
        deleted.push(name);
    }
    Ok(deleted)
}

/// A named network namespace (`/run/netns/NAME`), created with `ip netns add` and deleted
/// with `ip netns del` when dropped.
///
/// Deleting the name does not end the namespace while a process or socket still uses it;
/// the kernel frees it (and the interfaces in it) when the last user goes away.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Create a namespace named `prefix` followed by a unique token (pid, counter and a
    /// random suffix), so that parallel tests and reruns never collide. Keep `prefix` short.
    pub fn new(prefix: &str) -> Result<Netns> {
        Netns::create(&format!("{prefix}{}", unique_token()?))
    }

    /// Create a namespace with exactly this name; fails if it already exists.
    pub fn create(name: &str) -> Result<Netns> {
        run_command(Command::new("ip").args(["netns", "add", name]))
            .with_context(|| format!("creating network namespace {name}"))?;
        Ok(Netns {
            name: name.to_owned(),
        })
    }

    /// The namespace's name (as listed by `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Run `ip -n NAME ARGS...` and return its stdout.
    ///
    /// The error names the command, the namespace and the command's stderr.
    pub fn ip<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_command(Command::new("ip").arg("-n").arg(&self.name).args(args))
            .with_context(|| format!("in network namespace {}", self.name))
    }

    /// Run an arbitrary command inside the namespace, `ip netns exec NAME ARGS...`, and
    /// return its stdout. `args[0]` is the program.
    ///
    /// Note that `ip netns exec` also enters a private mount namespace and remounts `/sys`
    /// so that `/sys/class/net` shows this namespace's interfaces.
    pub fn run<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_command(&mut self.exec_command(args))
            .with_context(|| format!("in network namespace {}", self.name))
    }

    /// A [`Command`] for `ip netns exec NAME ARGS...`, to be configured and spawned by the
    /// caller. `ip netns exec` execs the program in place (no fork), so the child's pid is
    /// the program's pid.
    pub fn exec_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new("ip");
        c.args(["netns", "exec"]).arg(&self.name).args(args);
        c
    }

    /// Run `f` on a fresh thread that has first joined this namespace with
    /// `setns(CLONE_NEWNET)` (which affects only the calling thread), and return its result.
    ///
    /// Sockets created by `f` belong to this namespace for their whole life and may be
    /// used from any thread afterwards. `f` may borrow from the caller (scoped thread).
    /// A panic inside `f` is propagated to the caller unchanged (so test assertions inside
    /// work as usual); failing to join the namespace is an error.
    pub fn enter_thread<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = self.path();
        let file = std::fs::File::open(&path).with_context(|| {
            format!(
                "opening {} (network namespace {})",
                path.display(),
                self.name
            )
        })?;
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name(format!("netns-{}", self.name))
                .spawn_scoped(s, move || -> Result<R> {
                    setns(&file, CloneFlags::CLONE_NEWNET)
                        .map_err(|e| anyhow!("setns(CLONE_NEWNET) into {}: {e}", path.display()))?;
                    drop(file);
                    Ok(f())
                })
                .with_context(|| {
                    format!("spawning a thread for network namespace {}", self.name)
                })?;
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Whether `/run/netns/NAME` exists (a namespace of this name is registered).
    pub fn exists(name: &str) -> bool {
        PathBuf::from("/run/netns").join(name).exists()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let res = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output();
        match res {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "xsk_testbed: `ip netns del {}` failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("xsk_testbed: cannot run `ip netns del {}`: {e}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_short_and_distinct() {
        let a = unique_token().unwrap();
        let b = unique_token().unwrap();
        assert_ne!(a, b);
        assert!(a.len() <= 10, "{a}");
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert_eq!(token_pid(&a), Some(std::process::id()));
        assert_eq!(token_pid("abc"), None);
        assert_eq!(token_pid("-1xyzab"), None);
        let mut s = String::new();
        base36(4_194_304, &mut s);
        assert!(s.len() <= 5);
        s.clear();
        base36(0, &mut s);
        assert_eq!(s, "0");
    }
}
