//! The open-file budget: what the limits can tie up in fds, checked against
//! RLIMIT_NOFILE at start.

use anyhow::{Context, Result};
use tracing::info;

use crate::cli::Args;
use crate::limits;

/// The limits from the command line, checked, with the open-file limit
/// raised to fit them.
pub fn limits_from(args: &Args) -> Result<limits::Limits> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(RLIMIT_NOFILE)")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising RLIMIT_NOFILE")?;
    }
    let max_connections = match args.max_connections {
        Some(n) => n,
        None => {
            let fit = usize::try_from(FdBudget::connections_that_fit(hard)).unwrap_or(usize::MAX);
            let n = limits::DEFAULT_MAX_CONNECTIONS.min(fit);
            if n < limits::DEFAULT_MAX_CONNECTIONS {
                info!(
                    "--max-connections defaults to {n}, what the open-file limit ({hard}) holds \
                     (the default is {}; raise LimitNOFILE= for more)",
                    limits::DEFAULT_MAX_CONNECTIONS
                );
            }
            n
        }
    };
    let limits = limits::Limits {
        max_connections,
        max_connections_per_uid: args
            .max_connections_per_uid
            .unwrap_or((max_connections / 4).max(1)),
        max_leases_per_uid: args.max_leases_per_uid,
        max_queues_per_lease: args.max_queues_per_lease,
        max_queues_per_uid: args.max_queues_per_uid,
        reserved_root_connections: args.reserved_root_connections,
        idle_timeout: std::time::Duration::from_secs_f64(args.idle_timeout),
    };
    limits.check().map_err(anyhow::Error::msg)?;
    let budget = FdBudget::of(&limits);
    budget.check(hard).map_err(anyhow::Error::msg)?;
    if let Some(warning) = budget.warning(hard) {
        tracing::warn!("{warning}");
    }
    info!(
        nofile = hard,
        connections_need = budget.connections,
        full_leases_need = budget.worst,
        reserve = FD_RESERVE,
        "open-file budget: {hard} fds; {} connections need {} (with a lease each), \
         {} if every lease has {} queues",
        limits.max_connections,
        budget.connections,
        budget.worst,
        limits.max_queues_per_lease
    );
    info!(
        max_connections = limits.max_connections,
        max_connections_per_uid = limits.max_connections_per_uid,
        max_leases_per_uid = limits.max_leases_per_uid,
        max_queues_per_lease = limits.max_queues_per_lease,
        max_queues_per_uid = limits.max_queues_per_uid,
        reserved_root_connections = limits.reserved_root_connections,
        idle_timeout_s = limits.idle_timeout.as_secs_f64(),
        nofile = hard,
        "limits"
    );
    Ok(limits)
}

/// fds the broker keeps for itself beyond what the limits account for: its
/// listening and metrics sockets, standard streams, the netlink and ethtool
/// sockets of a grant, each attached interface's program and map, pins, and
/// pidfds of holders restored after a restart.
const FD_RESERVE: u64 = 64;

/// What the limits can tie up in fds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FdBudget {
    /// Every connection open, each holding a lease (its stream and the
    /// broker's duplicate of it), plus [`FD_RESERVE`]: what must fit.
    connections: u64,
    /// The same with every lease holding `--max-queues-per-lease` sockets,
    /// the broker's copies of them.
    worst: u64,
}

impl FdBudget {
    fn of(limits: &limits::Limits) -> Self {
        let conns = limits.max_connections as u64;
        FdBudget {
            connections: conns.saturating_mul(2).saturating_add(FD_RESERVE),
            worst: conns
                .saturating_mul(2 + u64::from(limits.max_queues_per_lease))
                .saturating_add(FD_RESERVE),
        }
    }

    /// How many connections `nofile` fds hold.
    fn connections_that_fit(nofile: u64) -> u64 {
        nofile.saturating_sub(FD_RESERVE) / 2
    }

    /// Refuse limits whose connections alone would not fit `nofile`: the
    /// broker would run out of fds (failing accept and grants) before any
    /// limit refused a peer.
    fn check(&self, nofile: u64) -> Result<(), String> {
        if nofile >= self.connections {
            return Ok(());
        }
        let fit = Self::connections_that_fit(nofile);
        Err(format!(
            "the open-file limit (RLIMIT_NOFILE hard limit {nofile}) is too low for \
             --max-connections {}: each connection is an fd and one more while it holds a \
             lease, plus {FD_RESERVE} the broker keeps for itself, {} in all; raise the limit \
             (LimitNOFILE= in the service, ulimit -Hn) to at least {}, or lower \
             --max-connections to at most {fit}",
            (self.connections - FD_RESERVE) / 2,
            self.connections,
            self.connections
        ))
    }

    /// A warning when full leases on every connection would not fit.
    fn warning(&self, nofile: u64) -> Option<String> {
        (nofile < self.worst).then(|| {
            format!(
                "the open-file limit ({nofile}) holds every connection, but not every \
                 connection with a lease of --max-queues-per-lease sockets ({} fds); leased \
                 sockets are also bounded by the interfaces' queues, but if they reach it, \
                 grants fail; lower --max-connections or --max-queues-per-lease, or raise \
                 LimitNOFILE= to {}",
                self.worst, self.worst
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_budget() {
        let limits = limits::Limits {
            max_connections: 100,
            max_queues_per_lease: 4,
            max_connections_per_uid: 10,
            ..limits::Limits::default()
        };
        let b = FdBudget::of(&limits);
        assert_eq!(b.connections, 100 * 2 + FD_RESERVE);
        assert_eq!(b.worst, 100 * 6 + FD_RESERVE);
        assert!(b.check(b.connections).is_ok());
        let e = b.check(b.connections - 1).unwrap_err();
        assert!(e.contains("--max-connections 100"), "{e}");
        assert!(e.contains("at least 264"), "{e}");
        assert!(e.contains("at most 99"), "{e}");
        assert!(b
            .warning(b.worst - 1)
            .unwrap()
            .contains("--max-queues-per-lease"));
        assert!(b.warning(b.worst).is_none());
    }
}
