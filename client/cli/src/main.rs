//! `xsk-client`: lease AF_XDP sockets from xsk-brokerd and move packets,
//! with no capabilities.
//!
//! * `rx`   receive frames (and print them with `--print-frames`)
//! * `tx`   transmit frames given as hex lines on standard input
//! * `echo` send every received frame back with MAC, IPv4 and UDP/TCP port
//!   addresses swapped
//! * `exec` lease sockets and exec a program (e.g. QEMU) that inherits them,
//!   with `{sock-fds}` etc. in its arguments replaced
//!
//! Each prints a `ready` line once its sockets are bound and a `done` summary
//! at the end; `--json` makes every line a JSON object for tools.
//!
//! Modules: [`args`] (the command line), [`lease`] (getting bound sockets),
//! [`pump`] (the receive loop), [`rx`], [`tx`], [`echo`], [`exec`] (the
//! launcher) and [`output`] (the `ready` and `done` lines).

mod args;
mod echo;
mod exec;
mod lease;
mod output;
mod pump;
mod rx;
mod tx;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;
use clap::Parser;

use crate::args::{Cli, Cmd, RunCmd};

fn main() {
    let cmd = match Cli::parse().cmd {
        Cmd::Run(cmd) => cmd,
        Cmd::Exec(a) => {
            let (code, e) = exec::run(a);
            eprintln!(
                "xsk-client exec: {}",
                xsk_broker_protocol::error_chain(e.as_ref())
            );
            std::process::exit(code);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            eprintln!("xsk-client: cannot handle signal {sig}: {e}");
            std::process::exit(1);
        }
    }
    if let Err(e) = run(cmd, &stop) {
        eprintln!(
            "xsk-client: {}",
            xsk_broker_protocol::error_chain(e.as_ref())
        );
        std::process::exit(1);
    }
}

/// Run a subcommand other than `exec` until it ends or `stop` is set.
fn run(cmd: RunCmd, stop: &AtomicBool) -> Result<()> {
    match cmd {
        RunCmd::Man => args::write_man_page(),
        RunCmd::Rx {
            common,
            print_frames,
        } => rx::run(&common, print_frames, stop),
        RunCmd::Echo { common } => echo::run(&common, stop),
        RunCmd::Tx { common, on_queue } => tx::run(&common, on_queue, stop),
    }
}
