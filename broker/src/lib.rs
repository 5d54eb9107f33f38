//! `xsk-brokerd`: hands AF_XDP sockets to processes without capabilities.
//!
//! It attaches libxdp's default XSK program to an interface, creates one
//! AF_XDP socket per requested queue, inserts each unbound socket into the
//! XSKMAP and passes the fds over a Unix socket. A lease is one connection;
//! when it closes the broker removes the map entries, closes its copies and
//! detaches the program once no lease uses the interface.
//!
//! The crate is the broker as a library; its binaries (`xsk-brokerd`,
//! `xsk-brokerctl`, `xsk-broker-mangen`) are thin. See the README's code map.

#![warn(missing_docs)]

pub mod activation;
pub mod budget;
pub mod cli;
pub mod confine;
pub mod control;
pub mod ctl_cli;
pub mod daemon;
pub mod dpdk;
pub mod error;
pub mod kernel;
pub mod limits;
pub mod logsafe;
pub mod metrics;
pub mod nla;
pub mod offload;
pub mod peercred;
pub mod persist;
pub mod policy;
pub mod privs;
pub mod probe;
pub mod ring;
pub mod server;
pub mod state;
pub mod stats;
pub mod traffic;
pub mod xdp;
