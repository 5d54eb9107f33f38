//! Message types and their JSON encoding.
//!
//! Requests and responses are JSON objects tagged by `"op"`. Unknown fields are
//! refused, duplicate keys are refused, and every value a peer sends is checked
//! by [`decode_request`] / [`decode_response`] before it is used.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::frame::MAX_MESSAGE_LEN;

/// Most queues one lease may hold.
pub const MAX_QUEUES: u32 = 64;
/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// XDP attach mode a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XdpMode {
    /// Native (driver) mode if the driver supports it, else skb (generic) mode.
    #[default]
    Auto,
    /// Driver mode only.
    Native,
    /// Generic (skb) mode only.
    Skb,
}

/// XDP attach mode actually in force on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachMode {
    /// Driver mode.
    Native,
    /// Generic (skb) mode.
    Skb,
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        })
    }
}

/// Copy or zero-copy wish, applied by the client when it binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CopyMode {
    /// Let the kernel choose (zero-copy where the driver supports it).
    #[default]
    Auto,
    /// Force copy mode (`XDP_COPY`).
    Copy,
    /// Require zero-copy (`XDP_ZEROCOPY`); binding fails where unsupported.
    ZeroCopy,
}

/// First request on a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Protocol version the client speaks (the major version: a broker
    /// serves exactly its own).
    pub version: u32,
    /// Optional features the client understands ([`features`]). Absent (as
    /// from clients of version 1 without features, and as this client sends
    /// it to brokers that refuse the field), the session uses none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

impl Hello {
    /// A hello of this protocol version announcing every feature this
    /// version of the crate understands.
    pub fn current() -> Hello {
        Hello {
            version: crate::PROTOCOL_VERSION,
            features: features::ALL.iter().map(|f| (*f).to_owned()).collect(),
        }
    }

    /// A hello of this protocol version without features: what a client of
    /// version 1.0 sends, byte for byte.
    pub fn plain() -> Hello {
        Hello {
            version: crate::PROTOCOL_VERSION,
            features: Vec::new(),
        }
    }
}

/// The optional features a session may use, negotiated in hello: each side
/// lists what it understands and the session uses what both list. A feature
/// only ever *adds* to what version 1.0 sends, so a peer without it sees the
/// 1.0 protocol unchanged.
pub mod features {
    /// `status` replies carry `confinement` (the level the kernel enforces).
    pub const STATUS_CONFINEMENT: &str = "status-confinement";
    /// Error codes beyond version 1.0's (`foreign_program`, `attach_failed`,
    /// `limit_reached`); without it they are sent as the 1.0 code they refine
    /// ([`super::ErrorCode::legacy`]).
    pub const ERROR_CODES_2: &str = "error-codes-2";
    /// The broker sends [`super::Response::Event`] messages (e.g. `revoked`)
    /// instead of an unsolicited error reply.
    pub const EVENTS: &str = "events";
    /// `status` replies carry each socket's `rx_packets`, `tx_packets` (the
    /// kernel's ring positions) and `traffic_error`.
    pub const STATUS_TRAFFIC: &str = "status-traffic";
    /// Every feature this version understands.
    pub const ALL: &[&str] = &[STATUS_CONFINEMENT, ERROR_CODES_2, EVENTS, STATUS_TRAFFIC];
}

/// Ask for AF_XDP sockets on `queues` consecutive queues of `ifname`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenRequest {
    /// Interface name, in the broker's network namespace.
    pub ifname: String,
    /// Number of queues, 1..=[`MAX_QUEUES`].
    pub queues: u32,
    /// First queue id.
    #[serde(default)]
    pub start_queue: u32,
    /// XDP attach mode.
    #[serde(default)]
    pub mode: XdpMode,
    /// Copy / zero-copy wish.
    #[serde(default)]
    pub copy: CopyMode,
}

impl OpenRequest {
    /// A request for `queues` queues of `ifname` from queue 0, in auto mode
    /// with no copy preference.
    pub fn new(ifname: impl Into<String>, queues: u32) -> Self {
        OpenRequest {
            ifname: ifname.into(),
            queues,
            start_queue: 0,
            mode: XdpMode::Auto,
            copy: CopyMode::Auto,
        }
    }

    /// Check the values a peer cannot be trusted with. The broker still checks
    /// the queue range against the device.
    pub fn validate(&self) -> Result<(), ErrorReply> {
        validate_ifname(&self.ifname)?;
        if self.queues == 0 || self.queues > MAX_QUEUES {
            return Err(ErrorReply::new(
                ErrorCode::QueueOutOfRange,
                format!(
                    "queues must be between 1 and {MAX_QUEUES}, got {}",
                    self.queues
                ),
            ));
        }
        if self.start_queue.checked_add(self.queues).is_none() {
            return Err(ErrorReply::new(
                ErrorCode::QueueOutOfRange,
                format!(
                    "start_queue {} plus {} queues overflows",
                    self.start_queue, self.queues
                ),
            ));
        }
        if self.mode == XdpMode::Skb && self.copy == CopyMode::ZeroCopy {
            return Err(ErrorReply::new(
                ErrorCode::ModeNotSupported,
                "zero-copy needs native XDP mode; skb mode always copies",
            ));
        }
        Ok(())
    }

    /// The queue ids this request covers, in order.
    pub fn queue_ids(&self) -> std::ops::Range<u32> {
        self.start_queue..self.start_queue.saturating_add(self.queues)
    }
}

/// Check an interface name the way the kernel's `dev_valid_name` does.
pub fn validate_ifname(name: &str) -> Result<(), ErrorReply> {
    let bad = |why: &str| {
        Err(ErrorReply::new(
            ErrorCode::NoSuchInterface,
            format!("invalid interface name {name:?}: {why}"),
        ))
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_IFNAME_LEN {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("reserved name");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return bad("contains '/', ':', NUL or white space");
    }
    Ok(())
}

/// Ask for the broker's leases ([`Request::Status`]). It has no fields
/// today; unknown ones are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {}

/// Ask for the XSKMAP of an interface instead of sockets (the QEMU 10.1
/// `map-path=` / `map-start-index=` flow): the broker attaches the XSK
/// program and reserves `queues` queues from `start_queue` for this lease
/// exactly as [`Request::Open`] does, and answers with
/// [`Response::MapOpened`] plus the XSKMAP fd. The client creates, binds and
/// inserts its own sockets at `start_queue + i` (socket creation needs
/// CAP_NET_RAW).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenMapRequest {
    /// Interface name, in the broker's network namespace.
    pub ifname: String,
    /// Number of queues, 1..=[`MAX_QUEUES`].
    pub queues: u32,
    /// First queue id (QEMU's `map-start-index`).
    #[serde(default)]
    pub start_queue: u32,
    /// XDP attach mode.
    #[serde(default)]
    pub mode: XdpMode,
    /// Also pin the map in the broker's bpffs directory, owned by the
    /// requesting uid with mode 0600, for programs that take a path.
    #[serde(default)]
    pub pin: bool,
}

impl OpenMapRequest {
    /// A request for the map of `ifname` covering `queues` queues from 0, auto mode, no pin.
    pub fn new(ifname: impl Into<String>, queues: u32) -> Self {
        OpenMapRequest {
            ifname: ifname.into(),
            queues,
            start_queue: 0,
            mode: XdpMode::Auto,
            pin: false,
        }
    }

    /// The same queues as an [`OpenRequest`] (copy mode auto), for the
    /// checks both flows share.
    pub fn as_open(&self) -> OpenRequest {
        OpenRequest {
            ifname: self.ifname.clone(),
            queues: self.queues,
            start_queue: self.start_queue,
            mode: self.mode,
            copy: CopyMode::Auto,
        }
    }

    /// Check the values a peer cannot be trusted with (as [`OpenRequest::validate`]).
    pub fn validate(&self) -> Result<(), ErrorReply> {
        self.as_open().validate()
    }
}

/// Broker's answer to [`Request::OpenMap`]; carries one fd, the XSKMAP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapOpened {
    /// Interface name.
    pub ifname: String,
    /// Interface index (in the broker's network namespace) to bind sockets to.
    pub ifindex: u32,
    /// XDP mode in force.
    pub mode: AttachMode,
    /// Id of the XDP program attached to the interface.
    pub program_id: u32,
    /// First queue reserved; the socket for queue `start_queue + i` goes at
    /// map key `start_queue + i`.
    pub start_queue: u32,
    /// Number of queues reserved.
    pub queues: u32,
    /// Where the map is pinned, if a pin was asked for (in the broker's
    /// bpffs directory; owned by the requesting uid, mode 0600; removed
    /// when the lease ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_path: Option<String>,
}

/// A request from client to broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Version handshake; must be first.
    Hello(Hello),
    /// Lease sockets.
    Open(OpenRequest),
    /// End this connection's lease and keep the connection.
    Release,
    /// Ask for every lease the broker holds and its sockets' statistics
    /// (answered by [`Response::Status`]). Needs no lease of its own; today
    /// anyone who can connect to the control socket may ask.
    Status(StatusRequest),
    /// Lease queues and get the interface's XSKMAP (the map-path flow).
    OpenMap(OpenMapRequest),
}

impl Request {
    /// The `op` names this version understands.
    pub const OPS: &'static [&'static str] = &["hello", "open", "release", "status", "open_map"];
}

/// Broker's answer to [`Request::Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// Protocol version the broker speaks.
    pub version: u32,
    /// Broker name and version, for logs.
    pub server: String,
    /// The features this session uses: those the client listed that the
    /// broker has too. Absent when the client listed none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

/// One leased socket; its fd is at the same index in the frame's fds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketInfo {
    /// Queue id to bind to.
    pub queue_id: u32,
    /// Interface index to bind to (in the broker's network namespace, which
    /// is the socket's).
    pub ifindex: u32,
}

/// Broker's answer to [`Request::Open`]; carries one fd per socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opened {
    /// Interface name.
    pub ifname: String,
    /// Interface index.
    pub ifindex: u32,
    /// XDP mode in force.
    pub mode: AttachMode,
    /// Id of the XDP program attached to the interface.
    pub program_id: u32,
    /// Copy wish to apply at bind time.
    pub copy: CopyMode,
    /// Sockets in queue order.
    pub sockets: Vec<SocketInfo>,
}

/// The kernel's counters of one AF_XDP socket (`getsockopt(SOL_XDP,
/// XDP_STATISTICS)`, `struct xdp_statistics`). They count since the socket
/// was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdpStatistics {
    /// Frames dropped for reasons other than invalid descriptors (no fill-ring
    /// frame available, frame too long for a umem chunk).
    pub rx_dropped: u64,
    /// Invalid descriptors on the fill ring.
    pub rx_invalid_descs: u64,
    /// Invalid descriptors on the tx ring.
    pub tx_invalid_descs: u64,
    /// Frames dropped because the rx ring was full.
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the kernel found the tx ring empty.
    pub tx_ring_empty_descs: u64,
}

/// The process holding a lease, from `SO_PEERCRED` of its control connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Process id (in the broker's pid namespace; -1 if unknown).
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// One leased socket in a [`StatusReply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketStatus {
    /// Queue id the socket is in the XSKMAP for.
    pub queue_id: u32,
    /// The socket's kernel statistics, read on the broker's copy of the fd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistics: Option<XdpStatistics>,
    /// Why the statistics could not be read, if they could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Frames the kernel delivered to the socket's RX ring since the ring
    /// was created (its producer position, counted past the `u32` wrap);
    /// absent while the holder has created no RX ring. Feature
    /// [`features::STATUS_TRAFFIC`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_packets: Option<u64>,
    /// Descriptors the kernel took from the socket's TX ring for transmit
    /// since the ring was created (its consumer position; invalid
    /// descriptors included, see `tx_invalid_descs`); absent while the
    /// holder has created no TX ring. Feature [`features::STATUS_TRAFFIC`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_packets: Option<u64>,
    /// Why a ring could not be mapped to read its position, if one could
    /// not. Feature [`features::STATUS_TRAFFIC`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_error: Option<String>,
}

impl SocketStatus {
    /// Drop what the feature [`features::STATUS_TRAFFIC`] adds, for a
    /// session that did not negotiate it.
    pub fn without_traffic(&mut self) {
        self.rx_packets = None;
        self.tx_packets = None;
        self.traffic_error = None;
    }
}

/// One lease in a [`StatusReply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    /// The broker's id for the lease (unique while the broker runs).
    pub id: u64,
    /// Interface name.
    pub ifname: String,
    /// Interface index, in the broker's network namespace.
    pub ifindex: u32,
    /// Queue ids held, in order.
    pub queues: Vec<u32>,
    /// Who holds the lease.
    pub holder: Holder,
    /// XDP mode the program is attached in.
    pub mode: AttachMode,
    /// Id of the XDP program attached to the interface (0 if it could not be read).
    pub program_id: u32,
    /// Milliseconds since the lease was granted.
    pub age_ms: u64,
    /// The lease's sockets, in queue order.
    pub sockets: Vec<SocketStatus>,
}

/// Broker's answer to [`Request::Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// Broker name and version, e.g. `xsk-brokerd/0.1.0`.
    pub server: String,
    /// The broker's process id.
    pub pid: u32,
    /// Milliseconds since the broker started.
    pub uptime_ms: u64,
    /// Every lease, oldest first.
    pub leases: Vec<LeaseStatus>,
    /// Leases left out because the reply would exceed the message size
    /// limit (the newest are left out first). Normally 0.
    #[serde(default)]
    pub omitted_leases: u32,
    /// What the kernel enforces on the sockets the broker hands out (absent
    /// from brokers that predate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confinement: Option<ConfinementLevel>,
}

/// How far the kernel holds a leased socket to its lease (see
/// docs/CONFINEMENT.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfinementLevel {
    /// `SO_BINDTOIFINDEX` only: a bind to another interface fails, but the
    /// holder chooses the queue and zero-copy.
    Interface,
    /// Interface, queue and copy mode: a BPF LSM program refuses any other
    /// bind, proven at start by a canary bind.
    Kernel,
    /// A level from a newer broker that this version does not know.
    #[serde(other)]
    Unknown,
}

impl ConfinementLevel {
    /// The level's name as on the wire (`interface`, `kernel`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            ConfinementLevel::Interface => "interface",
            ConfinementLevel::Kernel => "kernel",
            ConfinementLevel::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ConfinementLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The interface does not exist in the broker's namespace, or its name is invalid.
    NoSuchInterface,
    /// A queue id is outside the device's rx queues or the 1..=64 range.
    QueueOutOfRange,
    /// A queue is held by another lease.
    QueueBusy,
    /// The XDP mode or copy setting cannot be had on this interface.
    ModeNotSupported,
    /// Policy or capabilities forbid this.
    NotPermitted,
    /// The message is malformed, unknown or out of order.
    BadRequest,
    /// The peer speaks another protocol version.
    UnsupportedVersion,
    /// The broker failed for a reason of its own.
    Internal,
    /// Someone else's XDP program is attached to the interface (a refinement
    /// of `queue_busy`, feature `error-codes-2`).
    ForeignProgram,
    /// The kernel would not attach the XSK program in any mode asked for (a
    /// refinement of `mode_not_supported`, feature `error-codes-2`).
    AttachFailed,
    /// A limit or quota of the broker (connections, leases or queues per
    /// user, queues per lease): retry once something is released (a
    /// refinement of `not_permitted`, feature `error-codes-2`).
    LimitReached,
    /// A code from a newer broker that this version does not know.
    #[serde(other)]
    Unknown,
}

/// What a client can do about an error: the class of its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry later, unchanged: something held now may be released.
    Retryable,
    /// Change the request (interface, queues, mode).
    FixRequest,
    /// The policy (or the administrator's set-up) forbids it: ask them.
    Denied,
    /// The broker or the system failed: report it.
    BrokerFault,
}

impl ErrorCode {
    /// The wire name of the code.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::NoSuchInterface => "no_such_interface",
            ErrorCode::QueueOutOfRange => "queue_out_of_range",
            ErrorCode::QueueBusy => "queue_busy",
            ErrorCode::ModeNotSupported => "mode_not_supported",
            ErrorCode::NotPermitted => "not_permitted",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Internal => "internal",
            ErrorCode::ForeignProgram => "foreign_program",
            ErrorCode::AttachFailed => "attach_failed",
            ErrorCode::LimitReached => "limit_reached",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// What a client can do about it.
    pub fn class(&self) -> ErrorClass {
        match self {
            ErrorCode::QueueBusy | ErrorCode::LimitReached => ErrorClass::Retryable,
            ErrorCode::NoSuchInterface
            | ErrorCode::QueueOutOfRange
            | ErrorCode::ModeNotSupported
            | ErrorCode::BadRequest
            | ErrorCode::UnsupportedVersion => ErrorClass::FixRequest,
            ErrorCode::NotPermitted | ErrorCode::ForeignProgram => ErrorClass::Denied,
            ErrorCode::AttachFailed | ErrorCode::Internal | ErrorCode::Unknown => {
                ErrorClass::BrokerFault
            }
        }
    }

    /// The version 1.0 code this one refines, sent to peers without the
    /// `error-codes-2` feature.
    pub fn legacy(self) -> ErrorCode {
        match self {
            ErrorCode::ForeignProgram => ErrorCode::QueueBusy,
            ErrorCode::AttachFailed => ErrorCode::ModeNotSupported,
            ErrorCode::LimitReached => ErrorCode::NotPermitted,
            other => other,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answer: a stable code and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Error)]
#[error("{code}: {message}")]
pub struct ErrorReply {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// What went wrong and what to do about it.
    pub message: String,
}

impl ErrorReply {
    /// Build an error reply.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            code,
            message: message.into(),
        }
    }
}

/// A response from broker to client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Response {
    /// Answer to hello.
    Hello(HelloReply),
    /// Answer to open; fds attached.
    Opened(Opened),
    /// Answer to release: the queues that were freed.
    Released {
        /// Queue ids freed.
        queues: Vec<u32>,
    },
    /// Answer to status: every lease and its sockets' statistics.
    Status(StatusReply),
    /// Answer to open_map; the XSKMAP fd attached.
    MapOpened(MapOpened),
    /// Any failure.
    Error(ErrorReply),
    /// Something the broker tells unasked (feature `events`).
    Event(Event),
}

/// What happened, in an [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The broker ended this connection's lease on its own (its interface
    /// disappeared); the connection is closed after the event.
    Revoked,
    /// The broker is stopping; leases stay in the kernel (see the README's
    /// "Restarting the broker").
    Stopping,
    /// An event from a newer broker that this version does not know.
    #[serde(other)]
    Unknown,
}

impl EventKind {
    /// The kind's name as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Revoked => "revoked",
            EventKind::Stopping => "stopping",
            EventKind::Unknown => "unknown",
        }
    }
}

/// A message the broker sends unasked, on a session with the `events`
/// feature. Fields may be added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    pub event: EventKind,
    /// For humans: what happened and what it means for the client.
    pub message: String,
    /// The queues concerned, if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<u32>,
}

/// Why a body could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The body is not valid JSON (or not UTF-8, or nested too deep).
    #[error("malformed JSON: {0}")]
    Json(String),
    /// The body is JSON without a string `op` field.
    #[error("message has no \"op\" string field")]
    NoOp,
    /// `op` names no operation this version knows.
    #[error("unknown operation {0:?} (this broker knows: hello, open, release, status, open_map)")]
    UnknownOp(String),
    /// The operation is known but its fields are wrong.
    #[error("invalid {op:?} message: {reason}")]
    Invalid {
        /// The operation.
        op: String,
        /// What is wrong.
        reason: String,
    },
}

impl From<DecodeError> for ErrorReply {
    fn from(e: DecodeError) -> Self {
        ErrorReply::new(ErrorCode::BadRequest, e.to_string())
    }
}

#[derive(Deserialize)]
struct OpOnly {
    op: Option<serde_json::Value>,
}

/// Deepest nesting of arrays and objects a message may have. The deepest
/// real message (a status reply) nests 5 levels; serde_json's own limit
/// (128) can overflow a small thread stack in a debug build, so deeper
/// bodies are refused before they are parsed.
pub const MAX_NESTING: usize = 32;

/// Refuse a body that nests arrays or objects deeper than [`MAX_NESTING`]
/// (brackets inside strings do not count).
fn check_nesting(body: &[u8]) -> Result<(), DecodeError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(DecodeError::Json(format!(
                        "arrays or objects nested deeper than {MAX_NESTING} levels"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn decode_tagged<T: serde::de::DeserializeOwned>(
    body: &[u8],
    known: &[&str],
) -> Result<T, DecodeError> {
    check_nesting(body)?;
    // First pass: syntax (serde_json limits nesting to 128 levels) and the tag.
    let tag: OpOnly = serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))?;
    let op = match tag.op {
        Some(serde_json::Value::String(op)) => op,
        _ => return Err(DecodeError::NoOp),
    };
    if !known.contains(&op.as_str()) {
        // Show at most 64 bytes, cut at a character boundary.
        let mut end = op.len().min(64);
        while !op.is_char_boundary(end) {
            end -= 1;
        }
        let mut shown = op;
        shown.truncate(end);
        return Err(DecodeError::UnknownOp(shown));
    }
    serde_json::from_slice(body).map_err(|e| DecodeError::Invalid {
        op,
        reason: e.to_string(),
    })
}

/// Decode a request body. Never panics, whatever the bytes.
pub fn decode_request(body: &[u8]) -> Result<Request, DecodeError> {
    decode_tagged(body, Request::OPS)
}

/// Decode a response body. Never panics, whatever the bytes.
pub fn decode_response(body: &[u8]) -> Result<Response, DecodeError> {
    decode_tagged(
        body,
        &[
            "hello",
            "opened",
            "released",
            "status",
            "map_opened",
            "error",
            "event",
        ],
    )
}

/// Encode a message body, refusing bodies over the size limit.
pub fn encode_body<T: Serialize>(msg: &T) -> Result<Vec<u8>, DecodeError> {
    let body = serde_json::to_vec(msg).map_err(|e| DecodeError::Json(e.to_string()))?;
    if body.len() > MAX_MESSAGE_LEN {
        return Err(DecodeError::Json(format!(
            "encoded message is {} bytes, over the {MAX_MESSAGE_LEN} byte limit",
            body.len()
        )));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(body: &str) -> Result<Request, DecodeError> {
        decode_request(body.as_bytes())
    }

    #[test]
    fn defaults_and_names() {
        let r = open(r#"{"op":"open","ifname":"veth0","queues":2}"#).unwrap();
        assert_eq!(
            r,
            Request::Open(OpenRequest {
                ifname: "veth0".into(),
                queues: 2,
                start_queue: 0,
                mode: XdpMode::Auto,
                copy: CopyMode::Auto
            })
        );
        let r = open(r#"{"op":"open","ifname":"a","queues":1,"mode":"skb","copy":"zero-copy"}"#)
            .unwrap();
        let Request::Open(o) = r else { panic!() };
        assert_eq!((o.mode, o.copy), (XdpMode::Skb, CopyMode::ZeroCopy));
        assert_eq!(o.validate().unwrap_err().code, ErrorCode::ModeNotSupported);
    }

    #[test]
    fn rejects() {
        assert!(matches!(open("{"), Err(DecodeError::Json(_))));
        assert!(matches!(open("[1,2]"), Err(DecodeError::Json(_))));
        assert!(matches!(open("\"x\""), Err(DecodeError::Json(_))));
        assert_eq!(open(r#"{"x":1}"#), Err(DecodeError::NoOp));
        assert_eq!(open(r#"{"op":7}"#), Err(DecodeError::NoOp));
        assert_eq!(
            open(r#"{"op":"frobnicate"}"#),
            Err(DecodeError::UnknownOp("frobnicate".into()))
        );
        // Unknown field, duplicate key, wrong type, negative number.
        for bad in [
            r#"{"op":"open","ifname":"a","queues":1,"extra":1}"#,
            r#"{"op":"open","ifname":"a","queues":1,"queues":2}"#,
            r#"{"op":"open","ifname":"a","queues":"1"}"#,
            r#"{"op":"open","ifname":"a","queues":-1}"#,
            r#"{"op":"open","ifname":"a","queues":1,"mode":"turbo"}"#,
            r#"{"op":"hello"}"#,
        ] {
            assert!(
                matches!(open(bad), Err(DecodeError::Invalid { .. })),
                "{bad} -> {:?}",
                open(bad)
            );
        }
        // A long unknown op is cut to 64 bytes at a character boundary
        // (found by the fuzzer: cutting inside a character panicked).
        let long = format!(r#"{{"op":"{}é{}"}}"#, "a".repeat(63), "b".repeat(10));
        assert_eq!(
            decode_request(long.as_bytes()),
            Err(DecodeError::UnknownOp("a".repeat(63)))
        );
        // Invalid UTF-8 and deep nesting are errors, not crashes.
        assert!(decode_request(b"{\"op\":\"hel\xfflo\"}").is_err());
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(open(&deep), Err(DecodeError::Json(_))));
        // At the nesting limit a body is parsed (and judged on its fields);
        // one level deeper it is refused; brackets in strings do not count.
        let at = |n: usize| {
            format!(
                r#"{{"op":"open","ifname":"[[[\"{{","queues":1,"x":{}1{}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert!(matches!(
            open(&at(MAX_NESTING - 1)),
            Err(DecodeError::Invalid { .. })
        ));
        assert_eq!(
            open(&at(MAX_NESTING)),
            Err(DecodeError::Json(format!(
                "arrays or objects nested deeper than {MAX_NESTING} levels"
            )))
        );
    }

    #[test]
    fn queue_and_name_checks() {
        let mk = |q: u32, s: u32, n: &str| OpenRequest {
            ifname: n.into(),
            queues: q,
            start_queue: s,
            mode: XdpMode::Auto,
            copy: CopyMode::Auto,
        };
        assert_eq!(
            mk(0, 0, "a").validate().unwrap_err().code,
            ErrorCode::QueueOutOfRange
        );
        assert_eq!(
            mk(65, 0, "a").validate().unwrap_err().code,
            ErrorCode::QueueOutOfRange
        );
        assert!(mk(64, 0, "a").validate().is_ok());
        assert_eq!(
            mk(2, u32::MAX, "a").validate().unwrap_err().code,
            ErrorCode::QueueOutOfRange
        );
        for bad in ["", "a/b", "a b", "0123456789abcdef", "..", "a:1"] {
            assert_eq!(
                mk(1, 0, bad).validate().unwrap_err().code,
                ErrorCode::NoSuchInterface,
                "{bad:?}"
            );
        }
        assert_eq!(mk(3, 5, "a").queue_ids().collect::<Vec<_>>(), vec![5, 6, 7]);
    }

    #[test]
    fn open_map_roundtrip_and_checks() {
        let r = open(r#"{"op":"open_map","ifname":"veth0","queues":2,"start_queue":1,"pin":true}"#)
            .unwrap();
        let Request::OpenMap(m) = r else {
            panic!("{r:?}")
        };
        assert_eq!((m.queues, m.start_queue, m.pin), (2, 1, true));
        assert!(m.validate().is_ok());
        assert_eq!(m.as_open().queue_ids().collect::<Vec<_>>(), vec![1, 2]);
        let bad = OpenMapRequest::new("a/b", 1);
        assert_eq!(bad.validate().unwrap_err().code, ErrorCode::NoSuchInterface);
        assert!(matches!(
            open(r#"{"op":"open_map","ifname":"a","queues":1,"pin":"yes"}"#),
            Err(DecodeError::Invalid { .. })
        ));
        let reply = Response::MapOpened(MapOpened {
            ifname: "veth0".into(),
            ifindex: 3,
            mode: AttachMode::Skb,
            program_id: 9,
            start_queue: 1,
            queues: 2,
            pin_path: None,
        });
        let body = encode_body(&reply).unwrap();
        assert!(!String::from_utf8_lossy(&body).contains("pin_path"));
        assert_eq!(decode_response(&body).unwrap(), reply);
    }

    #[test]
    fn responses_roundtrip() {
        let opened = Response::Opened(Opened {
            ifname: "veth0".into(),
            ifindex: 7,
            mode: AttachMode::Native,
            program_id: 42,
            copy: CopyMode::Copy,
            sockets: vec![SocketInfo {
                queue_id: 0,
                ifindex: 7,
            }],
        });
        let body = encode_body(&opened).unwrap();
        assert_eq!(decode_response(&body).unwrap(), opened);
        let err =
            decode_response(br#"{"op":"error","code":"from_the_future","message":"m"}"#).unwrap();
        assert_eq!(
            err,
            Response::Error(ErrorReply::new(ErrorCode::Unknown, "m"))
        );
        let body = encode_body(&Request::Release).unwrap();
        assert_eq!(body, br#"{"op":"release"}"#);
    }

    #[test]
    fn status_roundtrip_and_rejects() {
        assert_eq!(
            decode_request(br#"{"op":"status"}"#).unwrap(),
            Request::Status(StatusRequest {})
        );
        assert_eq!(
            encode_body(&Request::Status(StatusRequest {})).unwrap(),
            br#"{"op":"status"}"#
        );
        assert!(matches!(
            decode_request(br#"{"op":"status","verbose":true}"#),
            Err(DecodeError::Invalid { .. })
        ));
        let status = Response::Status(StatusReply {
            server: "xsk-brokerd/0.1.0".into(),
            pid: 42,
            uptime_ms: 1500,
            leases: vec![LeaseStatus {
                id: 3,
                ifname: "veth0".into(),
                ifindex: 7,
                queues: vec![0, 1],
                holder: Holder {
                    pid: 100,
                    uid: 65534,
                    gid: 65534,
                },
                mode: AttachMode::Native,
                program_id: 9,
                age_ms: 20,
                sockets: vec![
                    SocketStatus {
                        queue_id: 0,
                        statistics: Some(XdpStatistics {
                            rx_dropped: 5,
                            ..Default::default()
                        }),
                        error: None,
                        rx_packets: Some(1 << 33),
                        tx_packets: Some(0),
                        traffic_error: None,
                    },
                    SocketStatus {
                        queue_id: 1,
                        statistics: None,
                        error: Some("EBADF".into()),
                        rx_packets: None,
                        tx_packets: None,
                        traffic_error: Some("cannot map the rx ring: EPERM".into()),
                    },
                ],
            }],
            omitted_leases: 0,
            confinement: Some(ConfinementLevel::Kernel),
        });
        let body = encode_body(&status).unwrap();
        assert!(String::from_utf8_lossy(&body).contains(r#""confinement":"kernel""#));
        assert_eq!(decode_response(&body).unwrap(), status);
        // A broker that predates the field: it decodes as unknown (None).
        let old = br#"{"op":"status","server":"s","pid":1,"uptime_ms":0,"leases":[]}"#;
        match decode_response(old).unwrap() {
            Response::Status(s) => assert_eq!(s.confinement, None),
            other => panic!("expected a status reply, got {other:?}"),
        }
        // A level a newer broker may add decodes as Unknown.
        let newer = br#"{"op":"status","server":"s","pid":1,"uptime_ms":0,"leases":[],
            "confinement":"hypervisor"}"#;
        match decode_response(newer).unwrap() {
            Response::Status(s) => assert_eq!(s.confinement, Some(ConfinementLevel::Unknown)),
            other => panic!("expected a status reply, got {other:?}"),
        }
        // A statistics object with a field this version does not know is
        // accepted: replies may grow (protocol/PROTOCOL.md).
        let newer = br#"{"op":"status","server":"s","pid":1,"uptime_ms":0,"leases":[{"id":0,
            "ifname":"a","ifindex":1,"queues":[0],"holder":{"pid":1,"uid":0,"gid":0},
            "mode":"skb","program_id":1,"age_ms":0,"sockets":[{"queue_id":0,
            "statistics":{"rx_dropped":0,"rx_invalid_descs":0,"tx_invalid_descs":0,
            "rx_ring_full":0,"rx_fill_ring_empty_descs":0,"tx_ring_empty_descs":0,"x":1}}]}]}"#;
        assert!(matches!(decode_response(newer), Ok(Response::Status(_))));
        // A missing field is still refused.
        let bad = br#"{"op":"status","server":"s","pid":1,"leases":[]}"#;
        assert!(matches!(
            decode_response(bad),
            Err(DecodeError::Invalid { .. })
        ));
    }
}
