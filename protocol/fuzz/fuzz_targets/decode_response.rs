//! Any bytes given to `decode_response` give a response or an error, never a
//! panic; a response that decodes re-encodes to a body that decodes to the
//! same response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xsk_broker_protocol::{decode_response, encode_body};

fuzz_target!(|data: &[u8]| {
    if let Ok(resp) = decode_response(data) {
        if let Ok(body) = encode_body(&resp) {
            assert_eq!(decode_response(&body).as_ref(), Ok(&resp), "round trip");
        }
    }
});
