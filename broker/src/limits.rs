//! Limits on what peers can hold or tie up: connections (in total and per
//! uid), leases per uid, queues per lease, and how long a connection may sit
//! without a lease or stall in the middle of a message.
//!
//! The per-uid connection limit is what keeps a flood of idle connections
//! from locking good clients out: one uid can never take more than its share
//! (it must be at most `max_connections`, and by default is a quarter of it),
//! every connection without a lease is closed after `idle_timeout`, and a
//! connection over a limit is answered with an error and closed at once
//! instead of waiting in the listen queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use xsk_broker_protocol::{ErrorCode, ErrorReply, MAX_QUEUES};

/// A peer over one of the limits (answered `not_permitted`, naming the
/// limit, its value and what to do).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// More queues in one lease than allowed.
    #[error(
        "{asked} queues were asked for; this broker allows at most {max} queues per lease \
         (--max-queues-per-lease {max}); ask for fewer or use several leases"
    )]
    QueuesPerLease {
        /// Queues asked for.
        asked: u32,
        /// The limit.
        max: u32,
    },
    /// One uid's connections.
    #[error(
        "uid {uid} already has {open} connections open to the broker, the most one user may \
         have (--max-connections-per-uid {max}); close some (a connection without a lease is \
         closed after {idle_s} s idle)"
    )]
    ConnectionsPerUid {
        /// The uid.
        uid: u32,
        /// Its connections.
        open: usize,
        /// The limit.
        max: usize,
        /// The idle timeout, in seconds.
        idle_s: f64,
    },
    /// Only root's reserved connections are left.
    #[error(
        "the broker has {open} connections open; the other {reserved} of --max-connections \
         {max} are reserved for root (--reserved-root-connections); try again shortly"
    )]
    ReservedForRoot {
        /// Connections open.
        open: usize,
        /// Reserved for root.
        reserved: usize,
        /// `--max-connections`.
        max: usize,
    },
    /// Every connection is taken.
    #[error(
        "the broker has {open} connections open, its limit (--max-connections {max}); try \
         again shortly"
    )]
    Connections {
        /// Connections open.
        open: usize,
        /// The limit.
        max: usize,
    },
}

impl From<LimitError> for ErrorReply {
    fn from(e: LimitError) -> Self {
        ErrorReply::new(ErrorCode::LimitReached, e.to_string())
    }
}

/// Default `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default `--max-connections-per-uid`.
pub const DEFAULT_MAX_CONNECTIONS_PER_UID: usize = 1024;
/// Default `--max-leases-per-uid`.
pub const DEFAULT_MAX_LEASES_PER_UID: usize = 256;
/// Default `--max-queues-per-lease` (the protocol's own ceiling).
pub const DEFAULT_MAX_QUEUES_PER_LEASE: u32 = MAX_QUEUES;
/// Default `--max-queues-per-uid`.
pub const DEFAULT_MAX_QUEUES_PER_UID: usize = 256;
/// Default `--reserved-root-connections`.
pub const DEFAULT_RESERVED_ROOT_CONNECTIONS: usize = 16;
/// Default `--idle-timeout`, in seconds.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 10;

/// The broker's limits (command-line options).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once, all users together.
    pub max_connections: usize,
    /// Connections open at once by one uid.
    pub max_connections_per_uid: usize,
    /// Leases held at once by one uid.
    pub max_leases_per_uid: usize,
    /// Queues in one lease.
    pub max_queues_per_lease: u32,
    /// Queues held at once by one uid, over all its leases.
    pub max_queues_per_uid: usize,
    /// Connection slots, out of `max_connections`, only root may take, so
    /// no mix of other users' connections can lock the administrator out.
    pub reserved_root_connections: usize,
    /// How long a connection without a lease may go without a complete
    /// request, and how long any message may take from its first byte to
    /// its last.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_uid: DEFAULT_MAX_CONNECTIONS_PER_UID,
            max_leases_per_uid: DEFAULT_MAX_LEASES_PER_UID,
            max_queues_per_lease: DEFAULT_MAX_QUEUES_PER_LEASE,
            max_queues_per_uid: DEFAULT_MAX_QUEUES_PER_UID,
            reserved_root_connections: DEFAULT_RESERVED_ROOT_CONNECTIONS,
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
        }
    }
}

impl Limits {
    /// Check that the limits make sense together.
    pub fn check(&self) -> Result<(), String> {
        if self.max_connections == 0 || self.max_connections_per_uid == 0 {
            return Err(
                "--max-connections and --max-connections-per-uid must be at least 1".into(),
            );
        }
        if self.max_connections_per_uid > self.max_connections {
            return Err(format!(
                "--max-connections-per-uid {} is more than --max-connections {}: one user could \
                 then take every connection; keep it well below",
                self.max_connections_per_uid, self.max_connections
            ));
        }
        if self.reserved_root_connections >= self.max_connections {
            return Err(format!(
                "--reserved-root-connections {} leaves no connection for other users \
                 (--max-connections {}); keep it below",
                self.reserved_root_connections, self.max_connections
            ));
        }
        if self.max_queues_per_uid == 0 {
            return Err("--max-queues-per-uid must be at least 1".into());
        }
        if self.max_queues_per_lease == 0 || self.max_queues_per_lease > MAX_QUEUES {
            return Err(format!(
                "--max-queues-per-lease must be between 1 and {MAX_QUEUES}, got {}",
                self.max_queues_per_lease
            ));
        }
        if self.idle_timeout.is_zero() {
            return Err("--idle-timeout must be more than 0 seconds".into());
        }
        Ok(())
    }

    /// Refuse a request for more queues than one lease may hold.
    pub fn check_queues(&self, queues: u32) -> Result<(), LimitError> {
        if queues > self.max_queues_per_lease {
            return Err(LimitError::QueuesPerLease {
                asked: queues,
                max: self.max_queues_per_lease,
            });
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_uid: HashMap<u32, usize>,
}

/// Open connections, in total and per uid.
#[derive(Debug, Default)]
pub struct Connections {
    counts: Mutex<Counts>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnectionSlot {
    conns: Arc<Connections>,
    uid: u32,
}

impl Connections {
    /// Admit a connection of `uid`, or say which limit it is over.
    pub fn admit(
        self: &Arc<Self>,
        uid: u32,
        limits: &Limits,
    ) -> Result<ConnectionSlot, LimitError> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mine = c.per_uid.get(&uid).copied().unwrap_or(0);
        if mine >= limits.max_connections_per_uid {
            return Err(LimitError::ConnectionsPerUid {
                uid,
                open: mine,
                max: limits.max_connections_per_uid,
                idle_s: limits.idle_timeout.as_secs_f64(),
            });
        }
        let open_to_uid = if uid == 0 {
            limits.max_connections
        } else {
            limits.max_connections - limits.reserved_root_connections
        };
        if c.total >= open_to_uid {
            if uid != 0 {
                return Err(LimitError::ReservedForRoot {
                    open: c.total,
                    reserved: limits.reserved_root_connections,
                    max: limits.max_connections,
                });
            }
            return Err(LimitError::Connections {
                open: c.total,
                max: limits.max_connections,
            });
        }
        c.total += 1;
        *c.per_uid.entry(uid).or_insert(0) += 1;
        Ok(ConnectionSlot {
            conns: Arc::clone(self),
            uid,
        })
    }

    /// Connections open now (for tests and logs).
    #[allow(dead_code)]
    pub fn open(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut c = self.conns.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                c.per_uid.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_uid_and_total_limits() {
        let limits = Limits {
            max_connections: 3,
            max_connections_per_uid: 2,
            reserved_root_connections: 0,
            ..Limits::default()
        };
        let conns = Arc::new(Connections::default());
        let a1 = conns.admit(1, &limits).unwrap();
        let _a2 = conns.admit(1, &limits).unwrap();
        let e = ErrorReply::from(conns.admit(1, &limits).unwrap_err());
        assert_eq!(e.code, ErrorCode::LimitReached);
        assert_eq!(e.code.legacy(), ErrorCode::NotPermitted);
        assert!(
            e.message.contains("--max-connections-per-uid 2"),
            "{}",
            e.message
        );
        let _b1 = conns.admit(2, &limits).unwrap();
        let e = conns.admit(3, &limits).unwrap_err();
        assert!(e.to_string().contains("--max-connections 3"), "{e}");
        drop(a1);
        assert_eq!(conns.open(), 2);
        let _a3 = conns.admit(1, &limits).unwrap();
    }

    #[test]
    fn root_keeps_its_reserved_connections() {
        let limits = Limits {
            max_connections: 4,
            max_connections_per_uid: 4,
            reserved_root_connections: 1,
            ..Limits::default()
        };
        let conns = Arc::new(Connections::default());
        let _held: Vec<_> = (0..3)
            .map(|_| conns.admit(65534, &limits).unwrap())
            .collect();
        let e = conns.admit(1000, &limits).unwrap_err().to_string();
        assert!(
            e.contains("reserved for root (--reserved-root-connections)"),
            "{e}"
        );
        let _root = conns.admit(0, &limits).unwrap();
        let e = conns.admit(0, &limits).unwrap_err().to_string();
        assert!(e.contains("--max-connections 4"), "{e}");
    }

    #[test]
    fn checks() {
        assert!(Limits::default().check().is_ok());
        let bad = Limits {
            max_connections: 10,
            max_connections_per_uid: 11,
            ..Limits::default()
        };
        assert!(bad
            .check()
            .unwrap_err()
            .contains("--max-connections-per-uid 11"));
        let bad = Limits {
            max_connections: 8,
            max_connections_per_uid: 2,
            reserved_root_connections: 8,
            ..Limits::default()
        };
        assert!(bad
            .check()
            .unwrap_err()
            .contains("--reserved-root-connections 8"));
        let e = Limits::default()
            .check_queues(MAX_QUEUES + 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--max-queues-per-lease 64"), "{e}");
    }
}
