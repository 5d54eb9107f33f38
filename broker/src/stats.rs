//! What the broker counts, and the snapshot of its state that status and
//! metrics read. The broker owns one [`Counters`]; readers never reach into
//! the lease table: they ask a [`SnapshotSource`] for a [`Snapshot`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use xsk_broker_protocol::{ConfinementLevel, ErrorCode, LeaseStatus};

/// Counters since the broker started.
#[derive(Debug)]
pub struct Counters {
    started: Instant,
    grants: AtomicU64,
    releases: AtomicU64,
    refusals: Mutex<BTreeMap<&'static str, u64>>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            started: Instant::now(),
            grants: AtomicU64::new(0),
            releases: AtomicU64::new(0),
            refusals: Mutex::new(BTreeMap::new()),
        }
    }
}

/// Every code a refusal can carry, so each series exists from the start.
pub const CODES: &[ErrorCode] = &[
    ErrorCode::NoSuchInterface,
    ErrorCode::QueueOutOfRange,
    ErrorCode::QueueBusy,
    ErrorCode::ModeNotSupported,
    ErrorCode::NotPermitted,
    ErrorCode::BadRequest,
    ErrorCode::UnsupportedVersion,
    ErrorCode::Internal,
    ErrorCode::ForeignProgram,
    ErrorCode::AttachFailed,
    ErrorCode::LimitReached,
];

impl Counters {
    /// A lease (of sockets or of the XSKMAP) was granted.
    pub fn grant(&self) {
        self.grants.fetch_add(1, Ordering::Relaxed);
    }

    /// A lease ended.
    pub fn release(&self) {
        self.releases.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was answered with an error.
    pub fn refusal(&self, code: ErrorCode) {
        let mut m = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(code.as_str()).or_default() += 1;
    }

    /// How long since the broker started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Leases granted since start.
    pub fn grants(&self) -> u64 {
        self.grants.load(Ordering::Relaxed)
    }

    /// Leases ended since start.
    pub fn releases(&self) -> u64 {
        self.releases.load(Ordering::Relaxed)
    }

    /// Refusals since start, by error code (every code, zero or not).
    pub fn refusals(&self) -> BTreeMap<&'static str, u64> {
        let m = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        CODES
            .iter()
            .map(|c| (c.as_str(), m.get(c.as_str()).copied().unwrap_or(0)))
            .collect()
    }
}

/// The broker's state as status and metrics show it, taken at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Time since the broker started.
    pub uptime: Duration,
    /// Leases granted since start.
    pub grants: u64,
    /// Leases ended since start.
    pub releases: u64,
    /// Refusals since start, by error code.
    pub refusals: BTreeMap<&'static str, u64>,
    /// Every lease held now, with its sockets' kernel statistics.
    pub leases: Vec<LeaseStatus>,
    /// What the kernel enforces on leased sockets, where it was set up.
    pub confinement: Option<ConfinementLevel>,
}

/// Something that can give a [`Snapshot`] (the broker).
pub trait SnapshotSource: Send + Sync {
    /// The state now.
    fn snapshot(&self) -> Snapshot;
}
