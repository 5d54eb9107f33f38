//! What the broker keeps on disk so that a restart neither cuts live traffic
//! nor forgets which queues are taken (`--state-dir`, `--pin-dir`).
//!
//! The state file `STATE_DIR/state.json` is rewritten after every grant and
//! release: written to `state.json.tmp`, fsynced, renamed over `state.json`,
//! and the directory fsynced. A crash at any point leaves either the old or
//! the new file whole; a leftover `state.json.tmp` is a write that never
//! completed and is removed at start.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use xsk_broker_protocol::AttachMode;

/// Version of the state file format.
pub const STATE_VERSION: u32 = 1;
/// Name of the state file in the state directory.
pub const STATE_FILE: &str = "state.json";
/// Name of the temporary file a write goes through.
pub const STATE_TMP: &str = "state.json.tmp";

/// The state file's content.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Interfaces with the XSK program attached by the broker.
    pub interfaces: Vec<InterfaceState>,
    /// Every lease.
    pub leases: Vec<LeaseState>,
}

/// One interface with the broker's program attached.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InterfaceState {
    /// Interface index.
    pub ifindex: u32,
    /// Interface name (for logs; the index is what counts).
    pub ifname: String,
    /// Mode the program is attached in.
    pub mode: AttachMode,
    /// Kernel id of the program, when it was attached.
    pub program_id: u32,
    /// Pin of the program on the bpffs.
    pub prog_pin: PathBuf,
    /// Pin of the XSKMAP on the bpffs.
    pub map_pin: PathBuf,
}

/// One lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LeaseState {
    /// Lease id.
    pub id: u64,
    /// `sockets` or `map`.
    pub kind: LeaseKind,
    /// Interface index.
    pub ifindex: u32,
    /// Interface name.
    pub ifname: String,
    /// Queue ids held.
    pub queues: Vec<u32>,
    /// Holder's pid (SO_PEERCRED of the connection).
    pub pid: i32,
    /// Holder's start time (field 22 of `/proc/PID/stat`, clock ticks since
    /// boot), so that a reused pid is not taken for the holder.
    pub start_time: Option<u64>,
    /// Holder's uid.
    pub uid: u32,
    /// Holder's gid.
    pub gid: u32,
    /// The XSKMAP pin handed to a map lease, removed when it ends.
    pub map_pin: Option<PathBuf>,
}

/// Kind of lease.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LeaseKind {
    /// Sockets created by the broker (`open`).
    Sockets,
    /// The XSKMAP (`open_map`).
    Map,
}

/// A state file that cannot be used.
#[derive(Debug, Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a state file this broker understands.
    #[error(
        "state file {} is not valid ({why}). It is only ever replaced whole (write, fsync, \
         rename), so this is not a broker crash mid-write: inspect it, then move it aside to \
         start with no remembered leases (queues held by clients that are still running are \
         then not protected until they exit)",
        path.display()
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Use `dir` (created mode 0700 if missing).
    pub fn open(dir: &Path) -> Result<StateDir, StateError> {
        use std::os::unix::fs::DirBuilderExt;
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(dir)
                .map_err(|source| StateError::Io {
                    what: "creating the state directory",
                    path: dir.to_owned(),
                    source,
                })?;
        }
        Ok(StateDir {
            dir: dir.to_owned(),
        })
    }

    /// The state file's path.
    pub fn file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Load the state: none if there is no file. A leftover temporary file
    /// (a write interrupted by a crash) is removed.
    pub fn load(&self) -> Result<Option<StateFile>, StateError> {
        let tmp = self.dir.join(STATE_TMP);
        match std::fs::remove_file(&tmp) {
            Ok(()) => tracing::warn!(
                "removed {}: a state write that did not complete (the broker stopped \
                 mid-write); the previous state file is used",
                tmp.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StateError::Io {
                    what: "removing",
                    path: tmp,
                    source,
                })
            }
        }
        let path = self.file();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    what: "reading",
                    path,
                    source,
                })
            }
        };
        let invalid = |why: String| StateError::Invalid {
            path: path.clone(),
            why,
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        match value.get("version").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(STATE_VERSION) => {}
            Some(v) => {
                return Err(invalid(format!(
                    "version {v}; this broker reads version {STATE_VERSION}"
                )))
            }
            None => return Err(invalid("no version".into())),
        }
        let state: StateFile = serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
        Ok(Some(state))
    }

    /// Replace the state file atomically: write a temporary file, fsync it,
    /// rename it over the state file, fsync the directory.
    pub fn save(&self, state: &StateFile) -> Result<(), StateError> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self.dir.join(STATE_TMP);
        let io = |what: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { what, path, source }
        };
        let body = serde_json::to_vec_pretty(state).expect("the state serializes");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("creating", &tmp))?;
        f.write_all(&body).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("fsyncing", &tmp))?;
        drop(f);
        let path = self.file();
        std::fs::rename(&tmp, &path).map_err(io("renaming the new state file to", &path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsyncing the state directory", &self.dir))?;
        Ok(())
    }
}

/// A process's start time (field 22 of `/proc/PID/stat`).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted after its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "xsk-persist-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn sample() -> StateFile {
        StateFile {
            version: STATE_VERSION,
            interfaces: vec![InterfaceState {
                ifindex: 7,
                ifname: "veth0".into(),
                mode: AttachMode::Native,
                program_id: 42,
                prog_pin: "/sys/fs/bpf/x/7-prog".into(),
                map_pin: "/sys/fs/bpf/x/7-map".into(),
            }],
            leases: vec![LeaseState {
                id: 3,
                kind: LeaseKind::Sockets,
                ifindex: 7,
                ifname: "veth0".into(),
                queues: vec![0, 1],
                pid: 100,
                start_time: Some(5),
                uid: 65534,
                gid: 65534,
                map_pin: None,
            }],
        }
    }

    #[test]
    fn save_load_roundtrip_and_leftover_tmp_is_ignored() {
        let d = temp();
        let sd = StateDir::open(&d).unwrap();
        assert_eq!(sd.load().unwrap(), None);
        sd.save(&sample()).unwrap();
        // A crash mid-write: a truncated temporary file next to the state.
        std::fs::write(d.join(STATE_TMP), b"{\"version\":1,\"interf").unwrap();
        assert_eq!(sd.load().unwrap(), Some(sample()));
        assert!(!d.join(STATE_TMP).exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_or_future_state_is_a_clear_error() {
        let d = temp();
        let sd = StateDir::open(&d).unwrap();
        std::fs::write(sd.file(), b"{\"version\":1,\"interf").unwrap();
        let e = sd.load().unwrap_err().to_string();
        assert!(
            e.contains("not valid") && e.contains("move it aside"),
            "{e}"
        );
        std::fs::write(sd.file(), b"{\"version\":9}").unwrap();
        let e = sd.load().unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn start_time_of_self() {
        assert!(start_time(std::process::id() as i32).is_some());
        assert_eq!(start_time(-5), None);
    }
}
