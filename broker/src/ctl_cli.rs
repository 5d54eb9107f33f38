//! xsk-brokerctl's command line, shared with the man page generator
//! (`xsk-broker-mangen`), so the man page is the `--help` text.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Default control socket of a broker run by the packaged systemd units.
pub const DEFAULT_SOCKET: &str = "/run/xsk-broker/broker.sock";

/// Query a running xsk-brokerd.
///
/// Today anyone who can connect to the broker's control socket may read its
/// status; the socket's permissions decide who can.
#[derive(Parser, Debug)]
#[command(name = "xsk-brokerctl", version)]
pub struct Args {
    /// Path of the broker's Unix control socket.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// How long to wait for the broker's answer, in seconds.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show the confinement level, every lease and each leased socket's
    /// frames received and sent and XDP_STATISTICS.
    ///
    /// RX_PACKETS and TX_PACKETS are the kernel's RX ring producer and TX ring
    /// consumer of the socket, read by the broker ("-": the holder has not
    /// created that ring).
    ///
    /// The confinement level says what the kernel enforces on the sockets the
    /// broker hands out: `interface` (a bind to another interface fails) or
    /// `kernel` (interface, queue and copy mode); see docs/CONFINEMENT.md.
    ///
    /// Columns: the lease id, interface and ifindex, the queues held, the XDP
    /// mode and program id on the interface, the holder's pid/uid/gid (from
    /// SO_PEERCRED of its control connection) and the lease's age; then per
    /// socket the kernel's counters: rx_dropped, rx_invalid_descs,
    /// tx_invalid_descs, rx_ring_full, rx_fill_ring_empty_descs,
    /// tx_ring_empty_descs.
    Status {
        /// Print the broker's reply as one JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
}
