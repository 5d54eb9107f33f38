//! Running processes as `nobody` with no capabilities, and checking them from /proc.

use crate::cmd::describe;
use anyhow::{anyhow, bail, Context, Result};
use nix::unistd::{Gid, Group, Uid, User};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// The uid of `nobody` and the gid of `nogroup` (falling back to group `nobody`), looked up
/// in the user database. Fails if neither exists.
pub fn nobody_ids() -> Result<(Uid, Gid)> {
    let user = User::from_name("nobody")
        .context("looking up user nobody")?
        .ok_or_else(|| anyhow!("user nobody does not exist"))?;
    let group = match Group::from_name("nogroup").context("looking up group nogroup")? {
        Some(g) => g,
        None => Group::from_name("nobody")
            .context("looking up group nobody")?
            .ok_or_else(|| anyhow!("neither group nogroup nor group nobody exists"))?,
    };
    if user.uid.is_root() || group.gid.as_raw() == 0 {
        bail!("nobody/nogroup resolve to uid/gid 0; refusing to use them");
    }
    Ok((user.uid, group.gid))
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Write a fixed message to stderr; async-signal-safe (a single write(2)).
fn child_say(msg: &[u8]) {
    // SAFETY: write(2) with a valid buffer; the result is irrelevant.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
    }
}

fn child_fail(msg: &[u8]) -> std::io::Error {
    let e = std::io::Error::last_os_error();
    child_say(msg);
    e
}

/// Spawn `cmd` as `nobody:nogroup` with no supplementary groups, no capabilities in any set
/// (effective, permitted, inheritable, ambient; bounding too where we may drop it) and
/// `no_new_privs`, so nothing it execs can gain privileges back.
///
/// The ids are resolved before fork. In the child, between fork and exec, only
/// async-signal-safe system calls run: `prctl(PR_CAP_AMBIENT_CLEAR_ALL)`,
/// `prctl(PR_CAPBSET_DROP)` for every capability (best effort, needs CAP_SETPCAP),
/// `prctl(PR_SET_NO_NEW_PRIVS)`, `setgroups(0, NULL)`, `setresgid`, `setresuid` (changing
/// every uid from 0 to non-zero clears the permitted and effective sets), `capset` to clear
/// the inheritable set, and finally `capget` to verify that all three sets are empty; if
/// not, the spawn fails (a message naming the failing step goes to the child's stderr).
///
/// Everything else about `cmd` (arguments, environment, stdio, working directory) is left as
/// the caller configured it. Paths the child needs must be readable/traversable by nobody
/// (see [`TempDir`]).
pub fn spawn_unprivileged(cmd: &mut Command) -> Result<Child> {
    let (uid, gid) = nobody_ids()?;
    let (uid, gid) = (uid.as_raw(), gid.as_raw());
    let last_cap: libc::c_ulong = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    // SAFETY: the hook only makes async-signal-safe system calls on stack data; it does
    // not allocate, lock or touch the parent's threads.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ) != 0
            {
                return Err(child_fail(
                    b"xsk_testbed: prctl(PR_CAP_AMBIENT_CLEAR_ALL) failed\n",
                ));
            }
            for cap in 0..=last_cap {
                // Best effort: needs CAP_SETPCAP; EINVAL past the kernel's last cap.
                libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(child_fail(
                    b"xsk_testbed: prctl(PR_SET_NO_NEW_PRIVS) failed\n",
                ));
            }
            if libc::setgroups(0, std::ptr::null()) != 0 {
                return Err(child_fail(b"xsk_testbed: setgroups(0, NULL) failed\n"));
            }
            if libc::setresgid(gid, gid, gid) != 0 {
                return Err(child_fail(b"xsk_testbed: setresgid(nogroup) failed\n"));
            }
            if libc::setresuid(uid, uid, uid) != 0 {
                return Err(child_fail(b"xsk_testbed: setresuid(nobody) failed\n"));
            }
            let mut hdr = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let zero = [CapData {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            }; 2];
            if libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, zero.as_ptr()) != 0 {
                return Err(child_fail(b"xsk_testbed: capset(all zero) failed\n"));
            }
            let mut data = zero;
            hdr.version = LINUX_CAPABILITY_VERSION_3;
            if libc::syscall(
                libc::SYS_capget,
                &mut hdr as *mut CapHeader,
                data.as_mut_ptr(),
            ) != 0
            {
                return Err(child_fail(b"xsk_testbed: capget failed\n"));
            }
            if data
                .iter()
                .any(|d| d.effective != 0 || d.permitted != 0 || d.inheritable != 0)
            {
                child_say(b"xsk_testbed: capabilities remain after setresuid(nobody)\n");
                return Err(std::io::Error::from_raw_os_error(libc::EPERM));
            }
            if libc::getuid() != uid || libc::geteuid() != uid || libc::getegid() != gid {
                child_say(b"xsk_testbed: ids did not change to nobody\n");
                return Err(std::io::Error::from_raw_os_error(libc::EPERM));
            }
            Ok(())
        });
    }
    let line = describe(cmd);
    cmd.spawn()
        .with_context(|| format!("spawning `{line}` as nobody (uid {uid}, gid {gid})"))
}

/// Spawn `cmd` as `nobody:nogroup` holding exactly the capabilities `caps` (numbers as in
/// `linux/capability.h`, e.g. 13 for CAP_NET_RAW) in its effective, permitted and ambient
/// sets after exec, and nothing else: every other capability is dropped from the bounding
/// set, `no_new_privs` is set, and the ids change with `PR_SET_KEEPCAPS` so the kept ones
/// survive `setresuid`; they are then raised as ambient capabilities, which is how a
/// non-root program keeps a capability across exec. The child verifies its sets before
/// exec. Check the result with [`cap_eff`].
pub fn spawn_nobody_with_caps(cmd: &mut Command, caps: &[u32]) -> Result<Child> {
    let (uid, gid) = nobody_ids()?;
    let (uid, gid) = (uid.as_raw(), gid.as_raw());
    let last_cap: libc::c_ulong = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    let mut mask = [0u32; 2];
    for &c in caps {
        if c > 63 {
            bail!("capability number {c} is out of range");
        }
        mask[(c / 32) as usize] |= 1 << (c % 32);
    }
    let shown = format!("{caps:?}");
    let caps: Vec<libc::c_ulong> = caps.iter().map(|&c| libc::c_ulong::from(c)).collect();
    // SAFETY: the hook only makes async-signal-safe system calls on data prepared before
    // fork (`caps` is only read); it does not allocate, lock or touch other threads.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ) != 0
            {
                return Err(child_fail(
                    b"xsk_testbed: PR_CAP_AMBIENT_CLEAR_ALL failed\n",
                ));
            }
            for cap in 0..=last_cap {
                if !caps.contains(&cap) {
                    libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
                }
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(child_fail(b"xsk_testbed: PR_SET_NO_NEW_PRIVS failed\n"));
            }
            if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
                return Err(child_fail(b"xsk_testbed: PR_SET_KEEPCAPS failed\n"));
            }
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                return Err(child_fail(b"xsk_testbed: changing ids to nobody failed\n"));
            }
            let mut hdr = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let want = [
                CapData {
                    effective: mask[0],
                    permitted: mask[0],
                    inheritable: mask[0],
                },
                CapData {
                    effective: mask[1],
                    permitted: mask[1],
                    inheritable: mask[1],
                },
            ];
            if libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, want.as_ptr()) != 0 {
                return Err(child_fail(b"xsk_testbed: capset(kept caps) failed\n"));
            }
            for &cap in caps.iter() {
                if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0 {
                    return Err(child_fail(b"xsk_testbed: PR_CAP_AMBIENT_RAISE failed\n"));
                }
            }
            let mut got = want;
            hdr.version = LINUX_CAPABILITY_VERSION_3;
            if libc::syscall(
                libc::SYS_capget,
                &mut hdr as *mut CapHeader,
                got.as_mut_ptr(),
            ) != 0
            {
                return Err(child_fail(b"xsk_testbed: capget failed\n"));
            }
            for i in 0..2 {
                if got[i].effective != mask[i] || got[i].permitted != mask[i] {
                    child_say(b"xsk_testbed: capability sets differ from the ones asked for\n");
                    return Err(std::io::Error::from_raw_os_error(libc::EPERM));
                }
            }
            if libc::getuid() != uid || libc::geteuid() != uid {
                child_say(b"xsk_testbed: ids did not change to nobody\n");
                return Err(std::io::Error::from_raw_os_error(libc::EPERM));
            }
            Ok(())
        });
    }
    let line = describe(cmd);
    cmd.spawn().with_context(|| {
        format!("spawning `{line}` as nobody (uid {uid}, gid {gid}) with capabilities {shown}")
    })
}

fn proc_status_field(pid: u32, key: &str) -> Result<String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_field(&text, key).ok_or_else(|| anyhow!("no {key} line in {path}"))
}

fn parse_status_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim().to_owned())
    })
}

/// The effective capability set of process `pid` (the `CapEff` line of `/proc/PID/status`).
pub fn cap_eff(pid: u32) -> Result<u64> {
    let v = proc_status_field(pid, "CapEff")?;
    u64::from_str_radix(&v, 16).with_context(|| format!("parsing CapEff {v:?} of pid {pid}"))
}

/// The four uids of process `pid` (real, effective, saved, filesystem), from the `Uid` line
/// of `/proc/PID/status`.
pub fn proc_status_uids(pid: u32) -> Result<[u32; 4]> {
    let v = proc_status_field(pid, "Uid")?;
    let ids: Vec<u32> = v
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing Uid {v:?} of pid {pid}"))?;
    ids.try_into()
        .map_err(|_| anyhow!("Uid line {v:?} of pid {pid} does not have four fields"))
}

/// The effective uid of process `pid` (second field of the `Uid` line of
/// `/proc/PID/status`). Use [`proc_status_uids`] to check all four.
pub fn proc_status_uid(pid: u32) -> Result<u32> {
    Ok(proc_status_uids(pid)?[1])
}

/// A temporary directory under `/tmp`, mode 0755 (so `nobody` can reach sockets and logs
/// in it), removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Create `/tmp/{prefix}XXXXXX` with mode 0755.
    pub fn new(prefix: &str) -> Result<TempDir> {
        let template = format!("/tmp/{prefix}XXXXXX");
        let path = nix::unistd::mkdtemp(template.as_str())
            .with_context(|| format!("mkdtemp {template}"))?;
        let dir = TempDir { path };
        std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod 0755 {}", dir.path.display()))?;
        Ok(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path().join(name)`.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("xsk_testbed: removing {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parsing() {
        let text = "Name:\tcat\nUid:\t65534\t65534\t65534\t65534\nCapEff:\t0000000000000000\n";
        assert_eq!(
            parse_status_field(text, "CapEff").unwrap(),
            "0000000000000000"
        );
        assert_eq!(
            parse_status_field(text, "Uid").unwrap(),
            "65534\t65534\t65534\t65534"
        );
        assert!(parse_status_field(text, "Gid").is_none());
    }

    #[test]
    fn self_status_readable() {
        let me = std::process::id();
        cap_eff(me).unwrap();
        assert_eq!(
            proc_status_uids(me).unwrap()[0],
            nix::unistd::getuid().as_raw()
        );
    }

    #[test]
    fn tempdir_mode_and_cleanup() {
        let d = TempDir::new("xtb-unit-").unwrap();
        let p = d.path().to_path_buf();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
        std::fs::write(d.join("f"), b"x").unwrap();
        drop(d);
        assert!(!p.exists());
    }
}
