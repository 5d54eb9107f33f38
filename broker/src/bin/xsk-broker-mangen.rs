//! `xsk-broker-mangen DIR`: write the man pages of `xsk-brokerd` (8) and
//! `xsk-brokerctl` (1, and one page per subcommand) into DIR, generated
//! from the same clap definitions as the programs' `--help`. Used when
//! building the Debian package (packaging/deb/build).

use xsk_brokerd::{cli, ctl_cli};

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::CommandFactory;

fn write_page(dir: &Path, cmd: clap::Command, section: &str) -> Result<PathBuf> {
    let name = cmd.get_name().to_owned();
    let path = dir.join(format!("{name}.{section}"));
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .section(section)
        .manual("xsk-broker")
        .render(&mut out)
        .with_context(|| format!("rendering the man page of {name}"))?;
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn run() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        bail!("usage: xsk-broker-mangen DIR (writes xsk-brokerd.8 and xsk-brokerctl*.1 there)");
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = vec![write_page(&dir, cli::Args::command(), "8")?];
    let ctl = ctl_cli::Args::command();
    written.push(write_page(&dir, ctl.clone(), "1")?);
    for sub in ctl.get_subcommands() {
        // A one-shot program: leaking the page name is fine (clap wants 'static).
        let name: &'static str =
            Box::leak(format!("xsk-brokerctl-{}", sub.get_name()).into_boxed_str());
        written.push(write_page(&dir, sub.clone().name(name), "1")?);
    }
    for p in written {
        println!("{}", p.display());
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!(
            "xsk-broker-mangen: {}",
            xsk_broker_protocol::error_chain(e.as_ref())
        );
        std::process::exit(1);
    }
}
