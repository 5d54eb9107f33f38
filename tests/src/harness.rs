//! The common frame of an end-to-end test: a test bed with a broker in it,
//! serialized with the other end-to-end tests.

use std::time::{Duration, Instant};

use crate::broker::BrokerProcess;
use crate::client::serial_guard;
use crate::testbed::Testbed;
use crate::unpriv::TempDir;

/// A [`Testbed`] with `xsk-brokerd` running in its xsk namespace (with the
/// test policy, see [`BrokerProcess::spawn`]), holding the end-to-end lock.
///
/// Fields drop in declaration order: the broker stops before the namespaces
/// go, then the directory, then the lock is released.
pub struct BrokerBed {
    /// The broker.
    pub broker: BrokerProcess,
    /// The namespaces and veth pair.
    pub tb: Testbed,
    /// The broker's directory (socket, log, policy).
    pub dir: TempDir,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl BrokerBed {
    /// Build a test bed with `queues` queues and start a broker in it.
    /// `None` when [`crate::require_root`] says to skip; panics (it is a test
    /// helper) when the set-up fails, with the reason.
    pub fn start(test: &str, queues: u32) -> Option<BrokerBed> {
        BrokerBed::start_with_args(test, queues, &[])
    }

    /// [`BrokerBed::start`] with extra broker arguments.
    pub fn start_with_args(test: &str, queues: u32, args: &[&str]) -> Option<BrokerBed> {
        if !crate::require_root(test) {
            return None;
        }
        let lock = serial_guard().expect("e2e lock");
        let tb = Testbed::new(queues).expect("building the veth test bed");
        let dir = TempDir::new("xsk-e2e").expect("temp dir");
        let broker = BrokerProcess::spawn_with_args(&tb.xsk, dir.path(), args)
            .expect("starting xsk-brokerd");
        Some(BrokerBed {
            broker,
            tb,
            dir,
            _lock: lock,
        })
    }
}

/// Poll `f` every 20 ms until it gives a value; panics (a test helper) naming
/// `what` after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
