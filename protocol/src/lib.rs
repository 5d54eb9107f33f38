//! The wire contract between `xsk-brokerd` and its clients.
//!
//! A connection is a Unix stream socket. Every message is one *frame*:
//!
//! ```text
//! +----------------+----------------+--------------------------+
//! | body length    | fd count       | body: one JSON object    |
//! | u32 little-end | u32 little-end | (UTF-8, <= 64 KiB)       |
//! +----------------+----------------+--------------------------+
//! ```
//!
//! File descriptors travel as `SCM_RIGHTS` ancillary data attached to the
//! frame's bytes. The fd count in the header *declares* how many fds the frame
//! carries; a frame whose fds do not match its declaration is refused and the
//! fds it did carry are closed ([`transport::Channel::recv`]).
//!
//! Limits a receiver enforces: a body of at most [`MAX_MESSAGE_LEN`] bytes,
//! never empty, at most [`MAX_FDS`] fds, or fewer as the receiver sets
//! ([`Channel::set_max_fds_in`]; the broker takes none), JSON nested at most
//! [`MAX_NESTING`] deep, no duplicate or unknown keys; a frame must complete
//! within the receiver's frame timeout once begun
//! ([`Channel::set_frame_timeout`], [`TransportError::Stalled`]). fds are
//! bounded as they arrive: a receiver never holds more of a frame's fds than
//! it declared (at most its limit); the surplus is closed at once, however
//! many sends it comes in, and the frame refused
//! ([`TransportError::TooManyFds`]) with the stream still in step.
//!
//! The first request on a connection is [`Request::Hello`]; the broker answers
//! with its version or an [`ErrorCode::UnsupportedVersion`] error. A connection
//! then holds at most one lease: [`Request::Open`] is answered by
//! [`Response::Opened`] plus one AF_XDP socket fd per queue, in queue order.
//! Instead, [`Request::OpenMap`] (the map-path flow) reserves the queues the
//! same way and is answered by [`Response::MapOpened`] plus the interface's
//! XSKMAP fd (and a pin path if one was asked for); the client then inserts
//! sockets of its own. The lease ends when the connection closes (for any
//! reason) or on [`Request::Release`].
//! [`Request::Status`] (after hello, with or without a lease) is answered by
//! [`Response::Status`]: every lease the broker holds and its sockets'
//! kernel statistics.
//!
//! ```
//! use xsk_broker_protocol::{decode_request, encode_body, Request, OpenRequest, XdpMode, CopyMode};
//!
//! let req = Request::Open(OpenRequest {
//!     ifname: "eth0".into(),
//!     queues: 2,
//!     start_queue: 0,
//!     mode: XdpMode::Auto,
//!     copy: CopyMode::Auto,
//! });
//! let body = encode_body(&req).unwrap();
//! assert_eq!(decode_request(&body).unwrap(), req);
//! ```

#![deny(missing_docs)]

pub mod frame;
pub mod message;
pub mod report;
pub mod transport;

pub use frame::{FrameError, FrameHeader, HEADER_LEN, MAX_FDS, MAX_MESSAGE_LEN};
pub use message::{
    decode_request, decode_response, encode_body, features, AttachMode, ConfinementLevel, CopyMode,
    DecodeError, ErrorClass, ErrorCode, ErrorReply, Event, EventKind, Hello, HelloReply, Holder,
    LeaseStatus, MapOpened, OpenMapRequest, OpenRequest, Opened, Request, Response, SocketInfo,
    SocketStatus, StatusReply, StatusRequest, XdpMode, XdpStatistics, MAX_IFNAME_LEN, MAX_NESTING,
    MAX_QUEUES,
};
pub use report::error_chain;
pub use transport::{Channel, Received, TransportError};

/// The protocol version this crate speaks. A peer with another version gets
/// [`ErrorCode::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u32 = 1;
