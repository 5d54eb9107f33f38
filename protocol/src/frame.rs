//! Frame header: body length and declared fd count, both `u32` little endian.

use thiserror::Error;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 8;
/// Largest body a peer may send or will accept, in bytes.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Most fds one frame may carry (one per queue of the largest lease).
pub const MAX_FDS: usize = 64;

/// A frame's fixed-size header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Length of the JSON body that follows.
    pub len: u32,
    /// Number of fds the sender declares are attached to this frame.
    pub fds: u32,
}

/// A header that breaks the framing rules.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The body is larger than [`MAX_MESSAGE_LEN`].
    #[error("message of {len} bytes exceeds the limit of {MAX_MESSAGE_LEN} bytes")]
    TooLong {
        /// Declared body length.
        len: u32,
    },
    /// The body is empty.
    #[error("empty message body")]
    Empty,
    /// More fds declared than [`MAX_FDS`].
    #[error("message declares {fds} fds, more than the limit of {MAX_FDS}")]
    TooManyFds {
        /// Declared fd count.
        fds: u32,
    },
}

impl FrameHeader {
    /// Parse and check a header.
    pub fn decode(bytes: [u8; HEADER_LEN]) -> Result<Self, FrameError> {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let fds = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let header = FrameHeader { len, fds };
        header.check()?;
        Ok(header)
    }

    /// Check the header against the limits.
    pub fn check(&self) -> Result<(), FrameError> {
        if self.len as usize > MAX_MESSAGE_LEN {
            return Err(FrameError::TooLong { len: self.len });
        }
        if self.len == 0 {
            return Err(FrameError::Empty);
        }
        if self.fds as usize > MAX_FDS {
            return Err(FrameError::TooManyFds { fds: self.fds });
        }
        Ok(())
    }

    /// Serialize the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..4].copy_from_slice(&self.len.to_le_bytes());
        out[4..].copy_from_slice(&self.fds.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let h = FrameHeader { len: 17, fds: 3 };
        assert_eq!(FrameHeader::decode(h.encode()), Ok(h));
    }

    #[test]
    fn limits() {
        let too_long = FrameHeader {
            len: MAX_MESSAGE_LEN as u32 + 1,
            fds: 0,
        }
        .encode();
        assert!(matches!(
            FrameHeader::decode(too_long),
            Err(FrameError::TooLong { .. })
        ));
        let at_limit = FrameHeader {
            len: MAX_MESSAGE_LEN as u32,
            fds: MAX_FDS as u32,
        }
        .encode();
        assert!(FrameHeader::decode(at_limit).is_ok());
        let fds = FrameHeader {
            len: 1,
            fds: MAX_FDS as u32 + 1,
        }
        .encode();
        assert_eq!(
            FrameHeader::decode(fds),
            Err(FrameError::TooManyFds { fds: 65 })
        );
        assert_eq!(FrameHeader::decode([0; 8]), Err(FrameError::Empty));
    }
}
