//! The command line: subcommands, their arguments, and what they turn into
//! (the broker request, the socket configuration, the man page).

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use xsk_client::{CopyMode, OpenRequest, SocketConfig, XdpMode};

/// Lease AF_XDP sockets from xsk-brokerd and move packets without capabilities.
#[derive(Parser, Debug)]
#[command(name = "xsk-client", version, about)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The subcommands: `exec` (handled in `main` before the signal handlers are
/// registered) and the rest, which `run` handles.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    #[command(flatten)]
    Run(RunCmd),
    /// Lease sockets, then exec PROGRAM with them inherited (the sock-fds
    /// launcher). In PROGRAM's arguments `{sock-fds}` becomes the colon list
    /// of socket fds in queue order, and `{queues}`, `{start-queue}`,
    /// `{ifindex}` and `{lease-fd}` their values. With `--map`, the XSKMAP is
    /// pinned instead and `{map-path}`, `{map-start-index}` are replaced. PROGRAM inherits exactly
    /// the socket fds and the lease fd (the control connection) besides
    /// stdin/stdout/stderr; the lease lasts until PROGRAM and every process
    /// that inherited the lease fd have exited. Exit status: PROGRAM's own;
    /// 125 if the broker refused or the launcher failed (PROGRAM not
    /// started), 126 if PROGRAM could not be executed, 127 if not found.
    Exec(ExecArgs),
}

/// The subcommands that run in this process once the signal handlers are
/// registered (all but `exec`).
#[derive(Subcommand, Debug)]
pub enum RunCmd {
    /// Receive frames on the leased queues.
    Rx {
        #[command(flatten)]
        common: Common,
        /// Print every frame (queue, length, bytes in hex).
        #[arg(long)]
        print_frames: bool,
    },
    /// Transmit frames read from standard input, one hex-encoded frame per line.
    Tx {
        #[command(flatten)]
        common: Common,
        /// Queue index (0-based within the lease) to send on; default spreads
        /// frames over all leased queues in turn.
        #[arg(long)]
        on_queue: Option<usize>,
    },
    /// Send every received frame back with addresses swapped.
    Echo {
        #[command(flatten)]
        common: Common,
    },
    /// Write this program's man page (roff) to standard output, generated
    /// from the same definitions as `--help` (used to build the package).
    #[command(hide = true)]
    Man,
}

/// Arguments of `xsk-client exec`.
#[derive(Args, Debug)]
pub struct ExecArgs {
    #[command(flatten)]
    pub lease: LeaseArgs,
    /// Print an `exec` JSON line (fds, queues, ifindex, the argv) on stdout
    /// before exec'ing.
    #[arg(long)]
    pub json: bool,
    /// The map-path flow (QEMU 10.1 `map-path=`): ask for the interface's
    /// XSKMAP pinned in the broker's bpffs directory instead of sockets, and
    /// replace `{map-path}` and `{map-start-index}` (= the start queue).
    /// PROGRAM inherits only the lease fd, creates its own sockets (it needs
    /// CAP_NET_RAW and the interface's network namespace) and inserts them.
    /// The broker must run with `--bpffs-dir`.
    #[arg(long)]
    pub map: bool,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    pub command: Vec<OsString>,
}

/// `--mode`: the XDP attach mode asked for.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModeArg {
    Auto,
    Native,
    Skb,
}

/// `--copy`: copy or zero-copy.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CopyArg {
    Auto,
    Copy,
    ZeroCopy,
}

/// What to lease from the broker: the arguments `rx`, `tx`, `echo` and
/// `exec` share.
#[derive(Args, Debug)]
pub struct LeaseArgs {
    /// The broker's control socket.
    #[arg(long, default_value = "/run/xsk-broker/broker.sock")]
    pub socket: PathBuf,
    /// Interface, as the broker sees it.
    #[arg(long)]
    pub ifname: String,
    /// Number of queues.
    #[arg(long, default_value_t = 1)]
    pub queues: u32,
    /// First queue id.
    #[arg(long, default_value_t = 0)]
    pub start_queue: u32,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub mode: ModeArg,
    /// Copy or zero-copy (the broker checks it against the XDP mode; it
    /// applies when the socket is bound).
    #[arg(long, value_enum, default_value_t = CopyArg::Auto)]
    pub copy: CopyArg,
}

/// Arguments of `xsk-client rx`, `tx` and `echo`.
#[derive(Args, Debug)]
pub struct Common {
    #[command(flatten)]
    pub lease: LeaseArgs,
    /// Umem frames per queue (each frame-size bytes, charged to the user's
    /// RLIMIT_MEMLOCK); the rings are sized to a quarter of it each.
    /// Default 2048 (4 MiB).
    #[arg(long)]
    pub frames: Option<u32>,
    /// Size of each umem frame: 2048 or 4096.
    #[arg(long)]
    pub frame_size: Option<u32>,
    /// Size of each of the four rings (overrides the size derived from --frames).
    #[arg(long)]
    pub ring_size: Option<u32>,
    /// Frames handled per batch.
    #[arg(long)]
    pub batch: Option<u32>,
    /// Stop after this many frames received (rx, echo).
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Stop after this many seconds without traffic (once some has been seen).
    #[arg(long)]
    pub idle_exit: Option<f64>,
    /// Refuse to run if the process holds any capability or can create
    /// AF_XDP sockets itself (for sandboxes that must prove it).
    #[arg(long)]
    pub require_unprivileged: bool,
    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    /// Use the map flow (QEMU 10.1 map-path) instead of sockets from the
    /// broker: ask for the interface's XSKMAP, as the fd (`fd`) or as a pin
    /// opened by path (`pin`), then create, bind and insert this process's
    /// own sockets. Needs CAP_NET_RAW.
    #[arg(long, value_enum)]
    pub via_map: Option<ViaMap>,
    /// Do not ask the broker: open this pinned XSKMAP (as QEMU's
    /// `map-path=`) and insert this process's own sockets at
    /// `--start-queue` + i (QEMU's `map-start-index`). Needs CAP_NET_RAW and
    /// the interface's network namespace. For use under `xsk-client exec
    /// --map`, which holds the lease and substitutes `{map-path}`.
    #[arg(long, value_name = "PATH", conflicts_with = "via_map")]
    pub map_path: Option<PathBuf>,
}

/// `--via-map`: how the broker hands over the XSKMAP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ViaMap {
    Fd,
    Pin,
}

impl LeaseArgs {
    /// The broker request for these arguments.
    pub fn request(&self) -> OpenRequest {
        OpenRequest {
            ifname: self.ifname.clone(),
            queues: self.queues,
            start_queue: self.start_queue,
            mode: match self.mode {
                ModeArg::Auto => XdpMode::Auto,
                ModeArg::Native => XdpMode::Native,
                ModeArg::Skb => XdpMode::Skb,
            },
            copy: match self.copy {
                CopyArg::Auto => CopyMode::Auto,
                CopyArg::Copy => CopyMode::Copy,
                CopyArg::ZeroCopy => CopyMode::ZeroCopy,
            },
        }
    }
}

impl Common {
    /// The socket configuration: the defaults with the given sizes applied.
    pub fn config(&self) -> SocketConfig {
        let mut c = match self.frames {
            Some(f) => SocketConfig::with_frame_count(f),
            None => SocketConfig::default(),
        };
        if let Some(s) = self.frame_size {
            c.umem.frame_size = s;
        }
        if let Some(r) = self.ring_size {
            c.umem.fill_size = r;
            c.umem.comp_size = r;
            c.rx_size = r;
            c.tx_size = r;
        }
        if let Some(b) = self.batch {
            c.batch_size = b;
        }
        c
    }
}

/// `xsk-client man`: write the man page (roff), generated from these
/// definitions, to standard output.
pub fn write_man_page() -> Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .manual("xsk-broker")
        .render(&mut page)
        .context("rendering the man page")?;
    std::io::stdout()
        .write_all(&page)
        .context("writing the man page")
}
