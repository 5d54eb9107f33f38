//! The frame layer: any 8 bytes parse to a header within the limits or an
//! error, and a valid header re-encodes to the same bytes; and any byte
//! stream fed to a real `Channel` over a Unix socket pair yields frames and
//! errors until it ends, never a panic, a hang, or a body over the limit.
#![no_main]

use std::io::Write;
use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;
use xsk_broker_protocol::{
    decode_request, Channel, FrameHeader, TransportError, HEADER_LEN, MAX_FDS, MAX_MESSAGE_LEN,
};

fuzz_target!(|data: &[u8]| {
    if let Some(h) = data.get(..HEADER_LEN) {
        let bytes: [u8; HEADER_LEN] = h.try_into().unwrap();
        if let Ok(header) = FrameHeader::decode(bytes) {
            assert!(header.len as usize <= MAX_MESSAGE_LEN && header.len > 0);
            assert!(header.fds as usize <= MAX_FDS);
            assert_eq!(header.encode(), bytes);
        }
    }
    // Keep within the socket buffer so the write never blocks.
    let data = &data[..data.len().min(96 * 1024)];
    let (mut a, b) = UnixStream::pair().unwrap();
    b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    a.write_all(data).unwrap();
    drop(a);
    let chan = Channel::new(b);
    for _ in 0..data.len() + 1 {
        match chan.recv() {
            Ok(got) => {
                assert!(!got.body.is_empty() && got.body.len() <= MAX_MESSAGE_LEN);
                assert!(got.fds.is_empty());
                let _ = decode_request(&got.body);
            }
            Err(e) if e.stream_in_step() => {}
            Err(TransportError::Closed | TransportError::Truncated { .. }) => break,
            Err(TransportError::Frame(_)) => break,
            Err(e) => panic!("unexpected transport error: {e}"),
        }
    }
});
