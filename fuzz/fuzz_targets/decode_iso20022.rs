//! ISO 20022 pacs.008 records (the payments topic's XML format):
//! `event::decode` / `decode_wire` with `Format::Pacs008`, and with the
//! format auto-detected. Asserts (see `fraudline_fuzz::check_decode`): no
//! panic, decode = validate(decode_wire) up to the error, auto-detection
//! agrees, errors catalogued, valid payments round-trip through protobuf and
//! JSON.
#![no_main]

use fraudline::event::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fraudline_fuzz::check_decode(data, Format::Pacs008);
});
