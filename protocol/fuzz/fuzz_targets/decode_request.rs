//! Any bytes given to `decode_request` give a request or an error, never a
//! panic; a request that decodes re-encodes to a body that decodes to the
//! same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xsk_broker_protocol::{decode_request, encode_body};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode_request(data) {
        let body = encode_body(&req).expect("a decoded request encodes");
        assert_eq!(decode_request(&body).as_ref(), Ok(&req), "round trip");
        // Validation never panics either.
        match &req {
            xsk_broker_protocol::Request::Open(o) => {
                let _ = o.validate();
                let _ = o.queue_ids().count();
            }
            xsk_broker_protocol::Request::OpenMap(m) => {
                let _ = m.validate();
            }
            _ => {}
        }
    }
});
