//! A kernel in memory, for unit tests of the grant rules without root:
//! interfaces (with altnames and queue counts), the programs attached to
//! them (the broker's and someone else's), XSKMAP entries, queues with a
//! socket bound, and processes. Sockets and maps are `/dev/null` fds, so
//! every fd the broker holds or hands out is real and closes for real.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use xsk_broker_protocol::{AttachMode, ConfinementLevel, XdpStatistics};

use super::{Kernel, Program};
use crate::confine::SocketGrant;
use crate::probe::QueueUse;
use crate::ring::RingKind;
use crate::traffic::RingPosition;
use crate::xdp::{QueueCounts, XdpError};

/// One interface of the fake kernel.
#[derive(Debug, Clone)]
pub struct FakeInterface {
    /// Its name.
    pub name: String,
    /// Alternative names.
    pub altnames: Vec<String>,
    /// Rx queues.
    pub queues: u32,
    /// Whether native XDP attaches.
    pub native: bool,
}

/// What the fake kernel holds.
#[derive(Debug, Default)]
pub struct World {
    /// Interfaces by index.
    pub interfaces: BTreeMap<u32, FakeInterface>,
    /// Programs attached, by interface: (mode, id, the broker's).
    pub attached: HashMap<u32, (AttachMode, u32, bool)>,
    /// XSKMAP entries: (ifindex, queue) -> the socket's fd number.
    pub map: HashMap<(u32, u32), i32>,
    /// Queues with an AF_XDP socket bound.
    pub bound: HashSet<(u32, u32)>,
    /// Sockets created, with their grants.
    pub sockets: Vec<SocketGrant>,
    /// Sockets confined to `lo` at release.
    pub retired: usize,
    /// Processes that run: pid -> start time.
    pub processes: HashMap<i32, u64>,
    /// The other ends of the fds [`Kernel::holder`] gave, by pid: dropping
    /// them is the process exiting.
    pub alive: HashMap<i32, Vec<OwnedFd>>,
    /// Pins made (maps and programs).
    pub pins: HashSet<std::path::PathBuf>,
    /// The rings sockets have, by the socket's fd number: the position the
    /// kernel advances (RX producer, TX consumer). Each mapping the broker
    /// holds is a clone of the `Arc`.
    pub rings: HashMap<(i32, RingKind), Arc<AtomicU32>>,
    /// Sockets whose rings cannot be mapped, with the errno.
    pub ring_errors: HashMap<i32, i32>,
    next_id: u32,
}

/// The fake kernel: a shared [`World`] the test sets up and inspects.
#[derive(Debug, Clone, Default)]
pub struct FakeKernel {
    /// Everything the fake kernel knows.
    pub world: Arc<Mutex<World>>,
}

/// A program attached by the broker in the fake kernel.
#[derive(Debug)]
pub struct FakeProgram {
    world: Arc<Mutex<World>>,
    ifindex: u32,
    mode: AttachMode,
    id: u32,
}

fn null_fd() -> io::Result<OwnedFd> {
    Ok(OwnedFd::from(std::fs::File::open("/dev/null")?))
}

impl FakeKernel {
    /// A kernel with interfaces `(ifindex, name, queues)` that do native XDP.
    pub fn with_interfaces(ifs: &[(u32, &str, u32)]) -> FakeKernel {
        let k = FakeKernel::default();
        {
            let mut w = k.world();
            for &(ifindex, name, queues) in ifs {
                w.interfaces.insert(
                    ifindex,
                    FakeInterface {
                        name: name.to_owned(),
                        altnames: Vec::new(),
                        queues,
                        native: true,
                    },
                );
            }
            w.next_id = 100;
        }
        k
    }

    /// Process `pid` exits: forget it and wake whoever watches it.
    pub fn exit(&self, pid: i32) {
        let mut w = self.world();
        w.processes.remove(&pid);
        w.alive.remove(&pid);
    }

    /// The holder of queue `queue` of `ifindex` moves its `kind` ring to
    /// `pos` (creating it the first time).
    pub fn set_ring(&self, ifindex: u32, queue: u32, kind: RingKind, pos: u32) {
        let mut w = self.world();
        let fd = w.map[&(ifindex, queue)];
        w.rings
            .entry((fd, kind))
            .or_default()
            .store(pos, Ordering::Relaxed);
    }

    /// How many ring mappings the broker holds.
    pub fn ring_mappings(&self) -> usize {
        self.world()
            .rings
            .values()
            .map(|r| Arc::strong_count(r) - 1)
            .sum()
    }

    /// The world, locked.
    pub fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Program for FakeProgram {
    fn mode(&self) -> AttachMode {
        self.mode
    }
    fn attached_id(&self) -> u32 {
        self.id
    }
    fn insert(&self, queue: u32, sock: BorrowedFd<'_>) -> Result<(), XdpError> {
        let mut w = self.world.lock().unwrap();
        w.map.insert((self.ifindex, queue), sock.as_raw_fd());
        Ok(())
    }
    fn remove(&self, queue: u32) -> Result<(), XdpError> {
        self.world
            .lock()
            .unwrap()
            .map
            .remove(&(self.ifindex, queue));
        Ok(())
    }
    fn map_fd_dup(&self) -> io::Result<OwnedFd> {
        null_fd()
    }
    fn pin_to(&self, prog_pin: &Path, map_pin: &Path) -> io::Result<()> {
        let mut w = self.world.lock().unwrap();
        w.pins.insert(prog_pin.to_owned());
        w.pins.insert(map_pin.to_owned());
        Ok(())
    }
    fn detach(self) -> Result<(), XdpError> {
        let mut w = self.world.lock().unwrap();
        if w.attached.get(&self.ifindex).map(|a| a.1) == Some(self.id) {
            w.attached.remove(&self.ifindex);
        }
        Ok(())
    }
}

impl Kernel for FakeKernel {
    type Program = FakeProgram;

    fn resolve(&self, name: &str) -> Result<(u32, String), Errno> {
        let w = self.world();
        w.interfaces
            .iter()
            .find(|(_, i)| i.name == name || i.altnames.iter().any(|a| a == name))
            .map(|(ifindex, i)| (*ifindex, i.name.clone()))
            .ok_or(Errno::ENODEV)
    }

    fn name_of(&self, ifindex: u32) -> Option<String> {
        self.world()
            .interfaces
            .get(&ifindex)
            .map(|i| i.name.clone())
    }

    fn interfaces(&self) -> io::Result<HashSet<u32>> {
        Ok(self.world().interfaces.keys().copied().collect())
    }

    fn queue_counts(&self, ifname: &str) -> io::Result<QueueCounts> {
        let w = self.world();
        let i = w
            .interfaces
            .values()
            .find(|i| i.name == ifname)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?;
        Ok(QueueCounts {
            current: i.queues,
            max: i.queues,
        })
    }

    fn rx_queues(&self, ifname: &str) -> io::Result<u32> {
        Ok(self.queue_counts(ifname)?.current)
    }

    fn queue_use(
        &self,
        ifindex: u32,
        queue: u32,
        _grace: Duration,
    ) -> Option<io::Result<QueueUse>> {
        let bound = self.world().bound.contains(&(ifindex, queue));
        Some(Ok(if bound {
            QueueUse::Bound
        } else {
            QueueUse::Free
        }))
    }

    fn attached_program(&self, ifindex: u32) -> Option<(AttachMode, u32)> {
        self.world()
            .attached
            .get(&ifindex)
            .map(|&(mode, id, _)| (mode, id))
    }

    fn attach(
        &self,
        ifname: &str,
        ifindex: u32,
        mode: AttachMode,
        _entries: u32,
    ) -> Result<FakeProgram, XdpError> {
        let mut w = self.world();
        let native = w.interfaces.get(&ifindex).map(|i| i.native);
        if mode == AttachMode::Native && native != Some(true) {
            return Err(XdpError {
                op: "attach the XSK program",
                ifname: ifname.to_owned(),
                source: io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            });
        }
        w.next_id += 1;
        let id = w.next_id;
        w.attached.insert(ifindex, (mode, id, true));
        Ok(FakeProgram {
            world: Arc::clone(&self.world),
            ifindex,
            mode,
            id,
        })
    }

    fn reopen(
        &self,
        ifname: &str,
        ifindex: u32,
        mode: AttachMode,
        prog_pin: &Path,
        _map_pin: &Path,
    ) -> Result<FakeProgram, XdpError> {
        let w = self.world();
        match w.attached.get(&ifindex) {
            Some(&(m, id, true)) if m == mode && w.pins.contains(prog_pin) => Ok(FakeProgram {
                world: Arc::clone(&self.world),
                ifindex,
                mode,
                id,
            }),
            _ => Err(XdpError {
                op: "check the pinned program is still attached",
                ifname: ifname.to_owned(),
                source: io::Error::other("not attached"),
            }),
        }
    }

    fn create_socket(&self, grant: SocketGrant) -> Result<OwnedFd, String> {
        self.world().sockets.push(grant);
        null_fd().map_err(|e| e.to_string())
    }

    fn retire_socket(&self, _sock: BorrowedFd<'_>) -> io::Result<()> {
        self.world().retired += 1;
        Ok(())
    }

    fn statistics(&self, _sock: BorrowedFd<'_>) -> io::Result<XdpStatistics> {
        Ok(XdpStatistics::default())
    }

    fn map_ring(
        &self,
        sock: BorrowedFd<'_>,
        kind: RingKind,
    ) -> io::Result<Option<Box<dyn RingPosition>>> {
        let w = self.world();
        if let Some(errno) = w.ring_errors.get(&sock.as_raw_fd()) {
            return Err(io::Error::from_raw_os_error(*errno));
        }
        Ok(w.rings
            .get(&(sock.as_raw_fd(), kind))
            .map(|r| Box::new(FakeRing(Arc::clone(r))) as Box<dyn RingPosition>))
    }

    fn pin(&self, _fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
        std::fs::write(path, b"")?;
        self.world().pins.insert(path.to_owned());
        Ok(())
    }

    fn confinement_level(&self) -> Option<ConfinementLevel> {
        Some(ConfinementLevel::Interface)
    }

    fn holder(&self, pid: i32, start_time: Option<u64>) -> Option<OwnedFd> {
        let w = self.world();
        let have = *w.processes.get(&pid)?;
        if start_time.is_some_and(|want| want != have) {
            return None;
        }
        drop(w);
        // A pipe's read end: it wakes (hangs up) when the test drops the
        // write end with [`FakeKernel::exit`].
        let (r, wr) = nix::unistd::pipe().ok()?;
        self.world().alive.entry(pid).or_default().push(wr);
        Some(r)
    }

    fn start_time(&self, pid: i32) -> Option<u64> {
        self.world().processes.get(&pid).copied()
    }
}

/// A ring mapping of the fake kernel.
struct FakeRing(Arc<AtomicU32>);

impl RingPosition for FakeRing {
    fn load(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}
