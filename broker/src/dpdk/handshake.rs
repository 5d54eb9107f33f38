//! The device plugin's handshake as DPDK speaks it: requests parsed and
//! validated (never a panic on peer input), and the replies.

/// Longest request accepted, in bytes (DPDK's own limit, `UDS_MAX_CMD_LEN`,
/// is 64 with its terminator).
pub const MAX_REQUEST_LEN: usize = 63;

/// Longest hostname accepted in `/connect` (DPDK sends at most 63 bytes).
pub const MAX_HOSTNAME_LEN: usize = 63;

/// Most messages one connection may send: the handshake is four.
pub const MAX_MESSAGES: usize = 16;

/// A request of the device plugin's handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DpRequest {
    /// `/connect,<hostname>`: the start; the hostname is only logged.
    Connect {
        /// What the client says its host is called.
        hostname: String,
    },
    /// `/version`.
    Version,
    /// `/xsk_map_fd,<ifname>`: the interface's XSKMAP.
    XskMapFd {
        /// The interface, as the client named it (validated by the broker's
        /// interface lookup before use).
        ifname: String,
    },
    /// `/fin`: the end.
    Fin,
}

/// Why a message is not a request of the handshake (answered `/nak`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Empty message.
    #[error("empty message")]
    Empty,
    /// Longer than [`MAX_REQUEST_LEN`].
    #[error("message of {len} bytes (at most {MAX_REQUEST_LEN})")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// A byte that is not printable ASCII (NUL, control, non-ASCII).
    #[error("byte {byte:#04x} at offset {offset} is not printable ASCII")]
    BadByte {
        /// The byte.
        byte: u8,
        /// Where.
        offset: usize,
    },
    /// Not a known command.
    #[error("unknown command {0:?} (expected /connect, /version, /xsk_map_fd or /fin)")]
    Unknown(String),
    /// A known command with a missing, empty or extra argument.
    #[error("{command} {why}")]
    BadArgument {
        /// The command.
        command: &'static str,
        /// What is wrong.
        why: &'static str,
    },
}

/// Parse one message of the handshake. Never panics; everything not
/// exactly a request of the handshake is [`Malformed`].
pub fn parse_request(msg: &[u8]) -> Result<DpRequest, Malformed> {
    if msg.is_empty() {
        return Err(Malformed::Empty);
    }
    if msg.len() > MAX_REQUEST_LEN {
        return Err(Malformed::TooLong { len: msg.len() });
    }
    if let Some(offset) = msg.iter().position(|b| !(0x20..0x7f).contains(b)) {
        return Err(Malformed::BadByte {
            byte: msg[offset],
            offset,
        });
    }
    // Printable ASCII: valid UTF-8.
    let text = std::str::from_utf8(msg).map_err(|_| Malformed::Unknown(String::new()))?;
    let (command, arg) = match text.split_once(',') {
        Some((c, a)) => (c, Some(a)),
        None => (text, None),
    };
    match (command, arg) {
        ("/connect", Some(host)) => {
            if host.is_empty() {
                Err(Malformed::BadArgument {
                    command: "/connect",
                    why: "needs a hostname",
                })
            } else if host.len() > MAX_HOSTNAME_LEN {
                Err(Malformed::BadArgument {
                    command: "/connect",
                    why: "hostname longer than 63 bytes",
                })
            } else {
                Ok(DpRequest::Connect {
                    hostname: host.to_owned(),
                })
            }
        }
        ("/connect", None) => Err(Malformed::BadArgument {
            command: "/connect",
            why: "needs a hostname (/connect,HOSTNAME)",
        }),
        ("/version", None) => Ok(DpRequest::Version),
        ("/xsk_map_fd", Some(ifname)) => {
            if ifname.is_empty() {
                Err(Malformed::BadArgument {
                    command: "/xsk_map_fd",
                    why: "needs an interface name",
                })
            } else if ifname.contains(',') {
                Err(Malformed::BadArgument {
                    command: "/xsk_map_fd",
                    why: "takes one interface name",
                })
            } else {
                Ok(DpRequest::XskMapFd {
                    ifname: ifname.to_owned(),
                })
            }
        }
        ("/xsk_map_fd", None) => Err(Malformed::BadArgument {
            command: "/xsk_map_fd",
            why: "needs an interface name (/xsk_map_fd,IFNAME)",
        }),
        ("/fin", None) => Ok(DpRequest::Fin),
        ("/version" | "/fin", Some(_)) => Err(Malformed::BadArgument {
            command: if command == "/fin" {
                "/fin"
            } else {
                "/version"
            },
            why: "takes no argument",
        }),
        _ => Err(Malformed::Unknown(command.chars().take(32).collect())),
    }
}

/// The replies (each well under DPDK's 128-byte receive buffer).
pub mod reply {
    pub const HOST_OK: &[u8] = b"/host_ok";
    pub const VERSION: &[u8] = b"0.1";
    pub const FD_ACK: &[u8] = b"/fd_ack";
    pub const FD_NAK: &[u8] = b"/fd_nak";
    pub const FIN_ACK: &[u8] = b"/fin_ack";
    pub const NAK: &[u8] = b"/nak";
}
