//! `xsk-broker-bench`: how available the broker stays under load.
//!
//! On a test bed of its own (network namespaces, veth pairs with 64 queues
//! each), with `--leases N` one-queue leases held (default 1000), it
//! measures, in alternating rounds:
//!
//! * `open` latency (connect, hello, open, until the reply and fds arrive) of
//!   a 1-queue and a 64-queue lease, on interfaces whose program stays
//!   attached, each followed by a release;
//! * the same while another thread attaches and detaches the XSK program on
//!   a third interface over and over (an open + release where no other lease
//!   keeps the program), to show that an attach on one interface does not
//!   stall grants on another;
//! * `status` latency (every lease, with each socket's statistics);
//! * how long a broker restarted with `--state-dir`/`--pin-dir` takes to
//!   restore the leases and answer `status`, against a restart with none.
//!
//! The state file is on a tmpfs, as the packaged unit keeps it (/run).
//!
//! Prints one JSON object with medians, p50 and p99 (in microseconds) and
//! the ratios; `scripts/bench-broker` runs it. Root only.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use xsk_broker_protocol::{OpenRequest, Request, Response, StatusRequest};
use xsk_client::BrokerClient;
use xsk_testbed::{BpfFs, BrokerProcess, RawPeer, TempDir, Testbed};

const QUEUES_PER_IF: u32 = 64;

struct Args {
    leases: u32,
    rounds: u32,
    samples: u32,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        leases: 1000,
        rounds: 5,
        samples: 40,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        let n: u32 = v.parse().with_context(|| format!("{k} {v}"))?;
        match k.as_str() {
            "--leases" => a.leases = n,
            "--rounds" => a.rounds = n,
            "--samples" => a.samples = n,
            _ => bail!("unknown option {k}; options: --leases N --rounds N --samples N"),
        }
    }
    Ok(a)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Open `queues` queues of `ifname` from `start` and release them: the time
/// from connect to the grant.
fn open_once(socket: &std::path::Path, ifname: &str, queues: u32, start: u32) -> Result<f64> {
    let t = Instant::now();
    let mut req = OpenRequest::new(ifname, queues);
    req.start_queue = start;
    let lease = BrokerClient::connect(socket)?.open(req)?;
    let took = micros(t.elapsed());
    lease.release()?;
    Ok(took)
}

/// p50 and p99 of one phase's samples.
fn pcts(
    lat: &mut std::collections::HashMap<(u8, u8), Vec<f64>>,
    phase: u8,
    queues: u8,
) -> serde_json::Value {
    let v = lat.entry((phase, queues)).or_default();
    json!({"p50": percentile(v, 0.5), "p99": percentile(v, 0.99), "n": v.len()})
}

fn status_once(socket: &std::path::Path) -> Result<(f64, usize)> {
    let t = Instant::now();
    let peer = RawPeer::hello(socket);
    match peer.call(&Request::Status(StatusRequest::default())) {
        Response::Status(s) => Ok((
            micros(t.elapsed()),
            s.leases.len() + s.omitted_leases as usize,
        )),
        other => bail!("status: {other:?}"),
    }
}

/// A veth pair of `queues` queues in the broker's namespace; its name.
fn add_local(tb: &Testbed, name: &str, queues: u32) -> Result<String> {
    tb.add_local_veth(name, queues)?;
    Ok(name.to_owned())
}

/// Unmounts a mount point on drop.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("xsk-broker-bench needs root (network namespaces, veth, the broker)");
    }
    let tb = Testbed::new(QUEUES_PER_IF).context("test bed")?;
    let dir = TempDir::new("xsk-broker-bench")?;
    let pins = BpfFs::mount(dir.path().join("bpffs"));
    // The state file on a tmpfs, as the packaged unit keeps it (/run).
    let run = dir.path().join("run");
    std::fs::create_dir(&run)?;
    xsk_testbed::run_command(
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&run),
    )?;
    let _unmount = Unmount(run.clone());
    let state = run.join("state");
    let pin_dir = pins.0.join("pins");
    let tok = &tb.xsk_if[2..];
    // Interfaces: held leases fill `held_ifs`; `one` and `many` keep one
    // lease each so their program stays attached; `churn` is attached and
    // detached over and over.
    let n_held = args.leases.div_ceil(QUEUES_PER_IF);
    let mut held_ifs = Vec::new();
    for i in 0..n_held {
        held_ifs.push(add_local(&tb, &format!("h{i}{tok}"), QUEUES_PER_IF)?);
    }
    let one = tb.xsk_if.clone();
    let many = add_local(&tb, &format!("m{tok}"), 2 * QUEUES_PER_IF)?;
    let churn = add_local(&tb, &format!("c{tok}"), 2)?;
    let limits = [
        "--max-connections",
        "8192",
        "--max-connections-per-uid",
        "8000",
        "--max-leases-per-uid",
        "8000",
        "--max-queues-per-uid",
        "16000",
    ];
    let mut broker_args: Vec<&str> = limits.to_vec();
    let (state_s, pin_s) = (state.to_str().unwrap(), pin_dir.to_str().unwrap());
    broker_args.extend(["--state-dir", state_s, "--pin-dir", pin_s]);
    let mut broker = BrokerProcess::spawn_with_args(&tb.xsk, dir.path(), &broker_args)?;
    let socket = broker.socket_path().to_owned();

    let mut held = Vec::new();
    let t = Instant::now();
    for i in 0..args.leases {
        let ifname = &held_ifs[(i / QUEUES_PER_IF) as usize];
        let mut req = OpenRequest::new(ifname.as_str(), 1);
        req.start_queue = i % QUEUES_PER_IF;
        held.push(BrokerClient::connect(&socket)?.open(req)?);
    }
    let fill = t.elapsed();
    // Keep the programs of `one` and `many` attached.
    let mut keep = OpenRequest::new(one.as_str(), 1);
    keep.start_queue = QUEUES_PER_IF - 1;
    let _keep_one = BrokerClient::connect(&socket)?.open(keep)?;
    let mut keep = OpenRequest::new(many.as_str(), 1);
    keep.start_queue = 2 * QUEUES_PER_IF - 1;
    let _keep_many = BrokerClient::connect(&socket)?.open(keep)?;
    eprintln!(
        "{} leases held on {} interfaces (granted in {:.2} s)",
        args.leases,
        held_ifs.len(),
        fill.as_secs_f64()
    );

    // Three phases per round, in rotating order: quiet; another thread
    // granting and releasing on a third interface whose program stays
    // attached (grant churn); the same where each grant attaches and each
    // release detaches the program (attach churn). Grant churn is the
    // control: what concurrency alone costs on this machine.
    #[derive(Clone, Copy, PartialEq)]
    enum Phase {
        Quiet,
        Grants,
        Attach,
    }
    let mut lat: std::collections::HashMap<(u8, u8), Vec<f64>> = Default::default();
    let mut st = Vec::new();
    let mut churn_cycles = [0u64; 3];
    let phases = [Phase::Quiet, Phase::Grants, Phase::Attach];
    for round in 0..args.rounds as usize {
        for k in 0..3 {
            let phase = phases[(round + k) % 3];
            // Grant churn keeps the churn interface's program attached with
            // a lease on queue 1 for the phase.
            let keep = (phase == Phase::Grants)
                .then(|| {
                    let mut r = OpenRequest::new(churn.as_str(), 1);
                    r.start_queue = 1;
                    BrokerClient::connect(&socket).and_then(|c| c.open(r))
                })
                .transpose()?;
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let churner = (phase != Phase::Quiet).then(|| {
                let (stop, socket, churn) = (stop.clone(), socket.clone(), churn.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if open_once(&socket, &churn, 1, 0).is_ok() {
                            n += 1;
                        }
                    }
                    n
                })
            });
            for _ in 0..args.samples {
                let a = open_once(&socket, &one, 1, 0)?;
                let b = open_once(&socket, &many, QUEUES_PER_IF, 0)?;
                lat.entry((phase as u8, 1)).or_default().push(a);
                lat.entry((phase as u8, 64)).or_default().push(b);
                if phase == Phase::Quiet {
                    st.push(status_once(&socket)?.0);
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(c) = churner {
                churn_cycles[phase as usize] += c.join().expect("churn thread");
            }
            drop(keep);
        }
    }
    let (_, seen) = status_once(&socket)?;

    // Restore: SIGKILL, then time a restart until status answers; with the
    // leases, and (reference) after they are released, alternating.
    let mut restore_full = Vec::new();
    let restart = |broker: &mut BrokerProcess| -> Result<(BrokerProcess, f64)> {
        broker.kill()?;
        let t = Instant::now();
        let b = BrokerProcess::spawn_with_args(&tb.xsk, dir.path(), &broker_args)?;
        let _ = status_once(b.socket_path())?;
        Ok((b, micros(t.elapsed())))
    };
    for _ in 0..args.rounds {
        let (b, us) = restart(&mut broker)?;
        broker = b;
        restore_full.push(us);
    }
    let kept_after = status_once(broker.socket_path())?.1;
    // The reference: the same restart with no state to restore (the kept
    // leases' holder is this process, alive: forget them with the state).
    drop(held);
    drop(_keep_one);
    drop(_keep_many);
    let mut restore_empty = Vec::new();
    broker.kill()?;
    std::fs::remove_dir_all(&state).ok();
    broker = BrokerProcess::spawn_with_args(&tb.xsk, dir.path(), &broker_args)?;
    for _ in 0..args.rounds {
        let (b, us) = restart(&mut broker)?;
        broker = b;
        restore_empty.push(us);
    }
    drop(broker);

    let p = |v: &mut Vec<f64>, q| percentile(v, q);
    let out = json!({
        "leases_held": args.leases,
        "leases_seen_in_status": seen,
        "leases_kept_after_restart": kept_after,
        "rounds": args.rounds,
        "samples_per_round": args.samples,
        "churn_grant_cycles": churn_cycles[Phase::Grants as usize],
        "churn_attach_detach_cycles": churn_cycles[Phase::Attach as usize],
        "open_1q_us": pcts(&mut lat, Phase::Quiet as u8, 1),
        "open_1q_during_grant_churn_us": pcts(&mut lat, Phase::Grants as u8, 1),
        "open_1q_during_attach_churn_us": pcts(&mut lat, Phase::Attach as u8, 1),
        "open_64q_us": pcts(&mut lat, Phase::Quiet as u8, 64),
        "open_64q_during_grant_churn_us": pcts(&mut lat, Phase::Grants as u8, 64),
        "open_64q_during_attach_churn_us": pcts(&mut lat, Phase::Attach as u8, 64),
        "status_us": {"p50": p(&mut st, 0.5), "p99": p(&mut st, 0.99)},
        "restart_to_status_with_leases_us": {"median": p(&mut restore_full, 0.5)},
        "restart_to_status_without_leases_us": {"median": p(&mut restore_empty, 0.5)},
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
