//! Protobuf payment events (`fraudline.v1.PaymentEvent`): `event::decode` /
//! `decode_wire` with the protobuf content type and auto-detected. Asserts
//! what `decode_json` does, and that re-encoding a decoded wire event is
//! canonical: encode(decode(encode(decode(x)))) == encode(decode(x)).
#![no_main]

use fraudline::event::{self, Format, Limits};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    fraudline_fuzz::check_decode(data, Format::Protobuf);
    let limits = Limits {
        max_message_bytes: 1 << 20,
        ..Limits::default()
    };
    if let Ok(w) = event::decode_wire(data, Some(Format::Protobuf), &limits) {
        let once = w.encode_to_vec();
        match event::decode_wire(&once, Some(Format::Protobuf), &limits) {
            Ok(again) => assert_eq!(again.encode_to_vec(), once, "re-encoding is not stable"),
            // An empty event encodes to no bytes, which decode refuses as empty.
            Err(e) => assert!(once.is_empty(), "a re-encoded event is refused: {e}"),
        }
    }
});
