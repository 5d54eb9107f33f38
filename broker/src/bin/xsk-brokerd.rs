//! `xsk-brokerd`: see the `xsk_brokerd` library.

use clap::Parser;
use xsk_brokerd::{activation, cli::Args, daemon};

fn main() {
    let args = Args::parse();
    // First, while the process has one thread and has opened nothing.
    let activation = match activation::take_listener() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "xsk-brokerd: {}",
                xsk_broker_protocol::error_chain(e.as_ref())
            );
            std::process::exit(1);
        }
    };
    if let Err(e) = daemon::init_logging(args.log_level.as_deref(), args.log_format) {
        eprintln!(
            "xsk-brokerd: {}",
            xsk_broker_protocol::error_chain(e.as_ref())
        );
        std::process::exit(1);
    }
    if let Err(e) = daemon::run(args, activation) {
        eprintln!(
            "xsk-brokerd: {}",
            xsk_broker_protocol::error_chain(e.as_ref())
        );
        std::process::exit(1);
    }
}
