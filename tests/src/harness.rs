//! The common frame of an end-to-end test: a test bed with a broker in it,
//! serialized with the other end-to-end tests.

use std::time::{Duration, Instant};

use crate::broker::BrokerProcess;
use crate::client::{serial_guard, ClientProcess};
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

    /// Start an unprivileged `xsk-client SUBCOMMAND` on `queues` queues of
    /// the test bed's interface from `start`: see [`ClientProcess::spawn_on`].
    pub fn client(
        &self,
        subcommand: &str,
        queues: u32,
        start: u32,
        extra: &[&str],
    ) -> ClientProcess {
        ClientProcess::spawn_on(
            subcommand,
            self.broker.socket_path(),
            &self.tb.xsk_if,
            queues,
            start,
            extra,
        )
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

/// A raw protocol peer of the broker, for what the client library would never
/// send: hand-made bodies, frames cut short, fds the broker must refuse.
pub struct RawPeer(pub xsk_broker_protocol::Channel);

impl RawPeer {
    /// Connect (10 s read timeout) without saying hello.
    pub fn connect(socket: &std::path::Path) -> RawPeer {
        let s = std::os::unix::net::UnixStream::connect(socket).expect("connecting to the broker");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("setting a read timeout");
        RawPeer(xsk_broker_protocol::Channel::new(s))
    }

    /// Connect and complete the version handshake as a client of version
    /// 1.0 would (no features).
    pub fn hello(socket: &std::path::Path) -> RawPeer {
        use xsk_broker_protocol::{Hello, Request, Response};
        let r = RawPeer::connect(socket);
        let resp = r.call(&Request::Hello(Hello::plain()));
        assert!(matches!(resp, Response::Hello(_)), "{resp:?}");
        r
    }

    /// Send a request and read the answer.
    pub fn call(&self, req: &xsk_broker_protocol::Request) -> xsk_broker_protocol::Response {
        self.0.send(req, &[]).expect("sending a request");
        self.answer()
    }

    /// Send `body` as it is (declaring no fds) and read the answer.
    pub fn raw(&self, body: &[u8]) -> xsk_broker_protocol::Response {
        self.0.send_raw(body, 0, &[]).expect("sending a raw body");
        self.answer()
    }

    /// Read one answer.
    pub fn answer(&self) -> xsk_broker_protocol::Response {
        let got = self.0.recv().expect("reading the broker's answer");
        xsk_broker_protocol::decode_response(&got.body).expect("decoding the broker's answer")
    }

    /// Write raw bytes to the stream (partial frames).
    pub fn write(&self, bytes: &[u8]) {
        std::io::Write::write_all(&mut self.0.stream(), bytes).expect("writing to the broker");
    }
}

/// Assert `resp` is an error with `code` whose message contains `needle`;
/// returns the message.
pub fn expect_error(
    resp: xsk_broker_protocol::Response,
    code: xsk_broker_protocol::ErrorCode,
    needle: &str,
) -> String {
    match resp {
        xsk_broker_protocol::Response::Error(e) => {
            assert_eq!(e.code, code, "{}", e.message);
            assert!(
                e.message.contains(needle),
                "{:?} lacks {needle:?}",
                e.message
            );
            e.message
        }
        other => panic!("expected a {code} error, got {other:?}"),
    }
}

/// A bpffs mounted for one test (e.g. for the broker's `--bpffs-dir` or
/// `--pin-dir`; `ip netns exec` gives a /sys without one), unmounted on drop.
pub struct BpfFs(pub std::path::PathBuf);

impl BpfFs {
    /// Create the directory `at` and mount a bpffs there; panics (a test
    /// helper) if that fails.
    pub fn mount(at: std::path::PathBuf) -> BpfFs {
        std::fs::create_dir(&at).expect("creating the bpffs mount point");
        crate::cmd::run_command(
            std::process::Command::new("mount")
                .args(["-t", "bpf", "bpf"])
                .arg(&at),
        )
        .expect("mounting a bpffs");
        BpfFs(at)
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ =
            crate::cmd::run_command(std::process::Command::new("umount").arg("-l").arg(&self.0));
    }
}
