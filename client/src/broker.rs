//! Talking to `xsk-brokerd`: connect, say hello, lease sockets.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use xsk_broker_protocol::{
    decode_response, features, Channel, ErrorCode, Hello, MapOpened, OpenMapRequest, OpenRequest,
    Opened, Request, Response, PROTOCOL_VERSION,
};

use crate::bpf::XskMap;

use crate::error::Error;
use crate::socket::{SocketConfig, XskSocket};

/// How long to wait for any one answer from the broker.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to the broker that has completed the version handshake.
///
/// ```no_run
/// use xsk_client::{BrokerClient, OpenRequest, SocketConfig};
///
/// let broker = BrokerClient::connect("/run/xsk-broker/broker.sock")?;
/// let mut lease = broker.open(OpenRequest::new("eth0", 2))?;
/// let sockets = lease.adopt_all(&SocketConfig::default())?;
/// // Keep `lease` alive while the sockets are in use: dropping it ends the lease.
/// # Ok::<(), xsk_client::Error>(())
/// ```
#[derive(Debug)]
pub struct BrokerClient {
    chan: Channel,
    path: PathBuf,
    server: String,
    features: Vec<String>,
}

impl BrokerClient {
    /// Connect to the broker's control socket and check protocol versions.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path).map_err(|source| Error::Connect {
            path: path.clone(),
            source,
        })?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|source| Error::Connect {
                path: path.clone(),
                source,
            })?;
        let chan = Channel::new(stream);
        let mut client = BrokerClient {
            chan,
            path,
            server: String::new(),
            features: Vec::new(),
        };
        // Announce our features; a broker of version 1.0 refuses the field
        // (bad_request naming it) and keeps the connection: say plain hello
        // then, and the session uses no feature.
        let reply = match client.call(&Request::Hello(Hello::current())) {
            Err(Error::Refused(e))
                if e.code == ErrorCode::BadRequest && e.message.contains("features") =>
            {
                client.call(&Request::Hello(Hello::plain()))?
            }
            other => other?,
        };
        match reply {
            (Response::Hello(h), _) if h.version == PROTOCOL_VERSION => {
                client.server = h.server;
                client.features = h
                    .features
                    .into_iter()
                    .filter(|f| features::ALL.contains(&f.as_str()))
                    .collect();
                Ok(client)
            }
            (other, _) => Err(unexpected("hello", &other)),
        }
    }

    /// The broker's self-description, e.g. `xsk-brokerd/0.1.0`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The optional protocol features this session uses (see
    /// [`xsk_broker_protocol::features`]): those both sides have.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    fn call(&mut self, req: &Request) -> Result<(Response, Vec<OwnedFd>), Error> {
        self.chan.send(req, &[]).map_err(|e| Error::Transport {
            path: self.path.clone(),
            source: e,
        })?;
        let got = self.chan.recv().map_err(|e| Error::Transport {
            path: self.path.clone(),
            source: e,
        })?;
        let resp = decode_response(&got.body).map_err(|e| Error::UnexpectedReply(e.to_string()))?;
        if let Response::Error(e) = resp {
            return Err(Error::Refused(e));
        }
        Ok((resp, got.fds))
    }

    /// Ask for sockets. The connection becomes the lease: it lives as long as
    /// the returned [`Lease`].
    pub fn open(mut self, req: OpenRequest) -> Result<Lease, Error> {
        let (resp, fds) = self.call(&Request::Open(req.clone()))?;
        let opened = match resp {
            Response::Opened(o) => o,
            other => return Err(unexpected("opened", &other)),
        };
        check_opened(&req, &opened, fds.len())?;
        let sockets = opened
            .sockets
            .iter()
            .zip(fds)
            .map(|(s, fd)| LeasedSocket {
                queue_id: s.queue_id,
                ifindex: s.ifindex,
                fd,
            })
            .collect();
        Ok(Lease {
            client: self,
            info: opened,
            sockets,
        })
    }
}

impl BrokerClient {
    /// Ask for the interface's XSKMAP instead of sockets (the map-path
    /// flow): the broker reserves the queues, attaches its program and sends
    /// the map (and pins it if `req.pin`). Create and insert sockets with
    /// [`MapLease::create_sockets`] (needs CAP_NET_RAW). The connection
    /// becomes the lease, as with [`BrokerClient::open`].
    pub fn open_map(mut self, req: OpenMapRequest) -> Result<MapLease, Error> {
        let (resp, mut fds) = self.call(&Request::OpenMap(req.clone()))?;
        let info = match resp {
            Response::MapOpened(o) => o,
            other => return Err(unexpected("map_opened", &other)),
        };
        if fds.len() != 1
            || info.ifname != req.ifname
            || info.start_queue != req.start_queue
            || info.queues != req.queues
            || info.pin_path.is_some() != req.pin
        {
            return Err(Error::UnexpectedReply(format!(
                "asked for the map of {} queues {:?} (pin {}), got {info:?} with {} fds",
                req.ifname,
                req.as_open().queue_ids(),
                req.pin,
                fds.len()
            )));
        }
        let map = XskMap::from_fd(fds.remove(0));
        Ok(MapLease {
            client: self,
            info,
            map,
        })
    }
}

/// A map lease: queues reserved for this connection and the interface's
/// XSKMAP. Dropping it ends the lease: the broker clears the queues' map
/// entries, removes the pin and may detach its program.
#[derive(Debug)]
pub struct MapLease {
    client: BrokerClient,
    info: MapOpened,
    map: XskMap,
}

impl MapLease {
    /// What the broker granted: ifindex, mode, program, queues, pin path.
    pub fn info(&self) -> &MapOpened {
        &self.info
    }

    /// The XSKMAP as received over the control socket.
    pub fn map(&self) -> &XskMap {
        &self.map
    }

    /// For every reserved queue `start_queue + i`: create an AF_XDP socket
    /// (needs CAP_NET_RAW), set it up and bind it with `config`, and insert it
    /// into `map` at key `start_queue + i`. `map` is [`MapLease::map`] or the
    /// pin opened with [`XskMap::open_pinned`]. On error the entries already
    /// inserted are removed again. The sockets are created in this
    /// process's network namespace, so it must be the interface's (the
    /// broker's); otherwise this fails with [`Error::WrongNamespace`].
    pub fn create_sockets(
        &self,
        map: &XskMap,
        config: &SocketConfig,
    ) -> Result<Vec<XskSocket>, Error> {
        let here = nix::net::if_::if_indextoname(self.info.ifindex)
            .map(|n| n.to_string_lossy().into_owned());
        if here.as_deref() != Ok(self.info.ifname.as_str()) {
            return Err(Error::WrongNamespace {
                ifname: self.info.ifname.clone(),
                ifindex: self.info.ifindex,
                here: here.unwrap_or_else(|_| "no such interface".to_owned()),
            });
        }
        map.attach_new_sockets(
            self.info.ifindex,
            self.info.start_queue,
            self.info.queues,
            config,
        )
    }

    /// The control connection; the lease lasts while it is open.
    pub fn control_fd(&self) -> BorrowedFd<'_> {
        self.client.chan.as_fd()
    }
}

/// Check that an `opened` reply answers the request: one socket per asked-for
/// queue, in order, each with an fd.
fn check_opened(req: &OpenRequest, o: &Opened, nfds: usize) -> Result<(), Error> {
    let want: Vec<u32> = req.queue_ids().collect();
    let got: Vec<u32> = o.sockets.iter().map(|s| s.queue_id).collect();
    // The broker answers with the interface's canonical name, which differs
    // from the name asked for when that was an alternative name.
    if got != want || nfds != want.len() {
        return Err(Error::UnexpectedReply(format!(
            "asked for {} queues {want:?}, got {} queues {got:?} with {nfds} fds",
            req.ifname, o.ifname
        )));
    }
    Ok(())
}

fn unexpected(wanted: &str, got: &Response) -> Error {
    Error::UnexpectedReply(format!("expected {wanted}, got {got:?}"))
}

/// One socket of a lease, not yet adopted.
#[derive(Debug)]
pub struct LeasedSocket {
    /// Queue id to bind to.
    pub queue_id: u32,
    /// Interface index to bind to.
    pub ifindex: u32,
    /// The unbound AF_XDP socket.
    pub fd: OwnedFd,
}

impl LeasedSocket {
    /// Register a umem, map the rings and bind: see [`XskSocket::adopt`].
    pub fn adopt(self, config: &SocketConfig) -> Result<XskSocket, Error> {
        XskSocket::adopt(self.fd, self.ifindex, self.queue_id, config)
    }
}

/// Sockets granted by the broker. Dropping the lease closes the control
/// connection, and the broker then takes the queues back (their XSKMAP
/// entries are removed, so adopted sockets stop receiving).
#[derive(Debug)]
pub struct Lease {
    client: BrokerClient,
    info: Opened,
    sockets: Vec<LeasedSocket>,
}

impl Lease {
    /// What the broker granted: interface, XDP mode, program id, queues.
    pub fn info(&self) -> &Opened {
        &self.info
    }

    /// Take the not yet adopted sockets, in queue order (for handing the fds
    /// to another program). The lease itself stays.
    pub fn take_sockets(&mut self) -> Vec<LeasedSocket> {
        std::mem::take(&mut self.sockets)
    }

    /// Adopt every socket with `config`, in queue order.
    pub fn adopt_all(&mut self, config: &SocketConfig) -> Result<Vec<XskSocket>, Error> {
        let copy = self.info.copy;
        let config = SocketConfig { copy, ..*config };
        self.take_sockets()
            .into_iter()
            .map(|s| s.adopt(&config))
            .collect()
    }

    /// The control connection; the lease lasts while it is open.
    pub fn control_fd(&self) -> BorrowedFd<'_> {
        self.client.chan.as_fd()
    }

    /// End the lease now and learn which queues were freed.
    pub fn release(mut self) -> Result<Vec<u32>, Error> {
        match self.client.call(&Request::Release)? {
            (Response::Released { queues }, _) => Ok(queues),
            (other, _) => Err(unexpected("released", &other)),
        }
    }
}
