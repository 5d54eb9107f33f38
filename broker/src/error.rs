//! Why a grant was refused, as the broker's rules see it. Each reason maps
//! to one protocol error code here ([`GrantError::code`]), and only the
//! server turns it into the wire's `ErrorReply`.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;
use xsk_broker_protocol::{AttachMode, ErrorCode, ErrorReply};

use crate::limits::LimitError;
use crate::persist::StateError;
use crate::state::Peer;
use crate::xdp::XdpError;

/// A refused grant (`open` or `open_map`), naming the interface, queue and
/// limit concerned and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// The request itself is invalid (the protocol's validation).
    #[error("{}", .0.message)]
    Request(ErrorReply),
    /// Over a limit (queues per lease).
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// No interface of that name (or altname) in the broker's namespace.
    #[error(
        "interface {name:?} not found in the broker's network namespace ({errno}); check the \
         name with `ip link`"
    )]
    NoSuchInterface {
        /// The name asked for.
        name: String,
        /// The lookup's errno.
        errno: Errno,
    },
    /// The interface lookup failed for another reason.
    #[error("cannot look up interface {name:?}: {} ({errno}); try again", errno.desc())]
    Lookup {
        /// The name asked for.
        name: String,
        /// The lookup's errno.
        errno: Errno,
    },
    /// The name is not the interface's canonical name (the server always
    /// resolves it first, so the interface was renamed meanwhile).
    #[error(
        "{asked:?} names interface {canonical} (ifindex {ifindex}) by another name, or it was \
         renamed meanwhile; ask for {canonical}"
    )]
    NotCanonical {
        /// The name asked for.
        asked: String,
        /// The interface's name.
        canonical: String,
        /// Its index.
        ifindex: u32,
    },
    /// The device's queue count could not be read.
    #[error("cannot read the queue count of {ifname}: {source}")]
    QueueCount {
        /// The interface.
        ifname: String,
        /// Why.
        source: io::Error,
    },
    /// Queues past the device's.
    #[error(
        "{ifname} has {count} rx queue(s) (ids 0..={}); queues {first}..={last} were asked for",
        count - 1
    )]
    QueueOutOfRange {
        /// The interface.
        ifname: String,
        /// Its rx queues.
        count: u32,
        /// First queue asked for.
        first: u32,
        /// Last queue asked for.
        last: u32,
    },
    /// Another lease holds the queue.
    #[error(
        "queue {queue} of {ifname} is leased by pid {} (uid {}); ask for other queues or wait \
         for its release",
        holder.pid, holder.uid
    )]
    QueueLeased {
        /// The interface.
        ifname: String,
        /// The queue.
        queue: u32,
        /// Its holder.
        holder: Peer,
    },
    /// An AF_XDP socket is still bound to the queue.
    #[error(
        "queue {queue} of {ifname} is not free: {}; ask for other queues, or wait until that \
         socket is closed",
        match previous {
            Some(p) => format!(
                "its previous holder (pid {}, uid {}) still has a socket bound to it although \
                 its lease ended",
                p.pid, p.uid
            ),
            None => "an AF_XDP socket the broker did not grant is bound to it".to_owned(),
        }
    )]
    QueueBound {
        /// The interface.
        ifname: String,
        /// The queue.
        queue: u32,
        /// Who held it last, if the broker knows.
        previous: Option<Peer>,
    },
    /// The kernel could not say whether the queue is bound.
    #[error("cannot check that queue {queue} of {ifname} is free: {source}; try again")]
    QueueCheck {
        /// The interface.
        ifname: String,
        /// The queue.
        queue: u32,
        /// Why.
        source: io::Error,
    },
    /// Someone else's XDP program is attached.
    #[error(
        "{ifname} already has XDP program id {id} attached in {mode} mode by someone else; the \
         broker will not replace it (remove it with `ip link set dev {ifname} xdp off` if it is \
         stale)"
    )]
    ForeignProgram {
        /// The interface.
        ifname: String,
        /// Its mode.
        mode: AttachMode,
        /// Its id.
        id: u32,
    },
    /// The interface's program runs in the other mode.
    #[error(
        "{ifname} already has the XSK program attached in {have} mode for other leases; ask \
         for mode {have} or auto"
    )]
    ModeConflict {
        /// The interface.
        ifname: String,
        /// The mode in force.
        have: AttachMode,
    },
    /// Zero-copy asked of an interface in skb mode.
    #[error("{ifname} runs XDP in skb mode, which cannot do zero-copy; ask for copy or auto")]
    NoZeroCopy {
        /// The interface.
        ifname: String,
    },
    /// No mode would attach.
    #[error("cannot attach the XSK program to {ifname}: {}", failures.join("; "))]
    Attach {
        /// The interface.
        ifname: String,
        /// Each mode tried and why it failed.
        failures: Vec<String>,
    },
    /// The program could not be pinned for a restart.
    #[error(
        "cannot pin the XSK program of {ifname} as {} (needed to find it again after a broker \
         restart): {source}",
        pin.display()
    )]
    PinProgram {
        /// The interface.
        ifname: String,
        /// The pin.
        pin: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A uid's lease quota.
    #[error(
        "uid {uid} already holds {held} leases, the most one user may hold \
         (--max-leases-per-uid {max}); release one first"
    )]
    TooManyLeases {
        /// The uid.
        uid: u32,
        /// Leases it holds.
        held: usize,
        /// The limit.
        max: usize,
    },
    /// A uid's queue quota.
    #[error(
        "uid {uid} holds {held} queue(s) and asked for {asked} more; one user may hold at most \
         {max} (--max-queues-per-uid {max}); release some first"
    )]
    TooManyQueues {
        /// The uid.
        uid: u32,
        /// Queues it holds.
        held: usize,
        /// Queues asked for.
        asked: u32,
        /// The limit.
        max: usize,
    },
    /// A map pin was asked of a broker without `--bpffs-dir`.
    #[error(
        "this broker pins no maps: it was started without --bpffs-dir; ask for the map fd only \
         (pin: false), or start xsk-brokerd with --bpffs-dir DIR on a bpffs mount (e.g. \
         /sys/fs/bpf/xsk-broker)"
    )]
    NoPinDir,
    /// The map pin could not be made.
    #[error("cannot {what} the XSKMAP pin {}: {detail}", path.display())]
    PinMap {
        /// The step.
        what: String,
        /// The pin.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// A socket could not be made or confined.
    #[error("{0}")]
    Socket(String),
    /// A program or map operation failed.
    #[error("queue {queue}: {source}")]
    Map {
        /// The queue.
        queue: u32,
        /// The operation and errno.
        source: XdpError,
    },
    /// The XSKMAP fd could not be duplicated.
    #[error("cannot duplicate the XSKMAP fd of {ifname}: {source}")]
    MapFd {
        /// The interface.
        ifname: String,
        /// Why.
        source: io::Error,
    },
    /// The grant could not be written to the state file.
    #[error(
        "the broker could not record the lease in its state file, so it was not granted (a \
         restart would forget it): {0}"
    )]
    NotRecorded(StateError),
}

impl GrantError {
    /// The protocol's error code for this refusal: the one place where the
    /// broker's reasons meet the wire's codes.
    pub fn code(&self) -> ErrorCode {
        use GrantError::*;
        match self {
            Request(e) => e.code,
            NoSuchInterface { .. } | NotCanonical { .. } => ErrorCode::NoSuchInterface,
            QueueOutOfRange { .. } => ErrorCode::QueueOutOfRange,
            QueueLeased { .. } | QueueBound { .. } => ErrorCode::QueueBusy,
            ForeignProgram { .. } => ErrorCode::ForeignProgram,
            ModeConflict { .. } | NoZeroCopy { .. } => ErrorCode::ModeNotSupported,
            Attach { .. } => ErrorCode::AttachFailed,
            Limit(_) | TooManyLeases { .. } | TooManyQueues { .. } => ErrorCode::LimitReached,
            NoPinDir => ErrorCode::NotPermitted,
            Lookup { .. }
            | QueueCount { .. }
            | QueueCheck { .. }
            | PinProgram { .. }
            | PinMap { .. }
            | Socket(_)
            | Map { .. }
            | MapFd { .. }
            | NotRecorded(_) => ErrorCode::Internal,
        }
    }
}

impl From<ErrorReply> for GrantError {
    fn from(e: ErrorReply) -> Self {
        GrantError::Request(e)
    }
}

impl From<GrantError> for ErrorReply {
    fn from(e: GrantError) -> Self {
        ErrorReply::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_its_code_and_names_what_it_is_about() {
        let e = GrantError::QueueBound {
            ifname: "eth0".into(),
            queue: 3,
            previous: Some(Peer {
                pid: 7,
                uid: 1000,
                gid: 1000,
            }),
        };
        assert_eq!(e.code(), ErrorCode::QueueBusy);
        assert!(e.to_string().contains("queue 3 of eth0 is not free"), "{e}");
        assert!(
            e.to_string().contains("previous holder (pid 7, uid 1000)"),
            "{e}"
        );
        let r: ErrorReply = GrantError::TooManyQueues {
            uid: 5,
            held: 3,
            asked: 2,
            max: 4,
        }
        .into();
        assert_eq!(r.code, ErrorCode::LimitReached);
        assert_eq!(r.code.legacy(), ErrorCode::NotPermitted);
        assert!(
            r.message.contains("--max-queues-per-uid 4"),
            "{}",
            r.message
        );
    }
}
