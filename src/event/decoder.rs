//! [`Decoder`]: decoding into buffers kept from one record to the next, so
//! that a scoring lane decodes a protobuf payment without allocating once
//! its buffers have grown to the longest fields seen.
//!
//! The result is the same as [`decode`]'s, byte for byte and error for
//! error (a property test drives both with valid, cut and corrupted
//! records through one reused decoder). How: prost's `merge` into a
//! message whose strings are empty but keep their capacity writes into
//! that capacity; a party (a nested message) is put back in place only
//! when the record has one, found by a scan of the top-level fields, so
//! "no payer" stays a missing payer; and [`validate_into`] swaps the
//! strings into the payment instead of moving them out.
//!
//! JSON and pacs.008 records take [`decode`]'s path and allocate as it
//! does; so does a protobuf record whose top level the scan cannot walk
//! (prost then reports what is wrong, or skips what it may).

use prost::Message as _;

use super::{
    check_size, decode, protobuf_error, validate_into, DecodeError, Format, Limits, Payment,
};
use crate::proto::{Party, PaymentEvent};

/// A decoding buffer, one per scoring thread; see the module docs.
pub struct Decoder {
    wire: PaymentEvent,
    /// Parties of earlier records, kept for their string buffers while
    /// the record in hand has none.
    spare: [Option<Party>; 2],
    payment: Payment,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            wire: PaymentEvent::default(),
            spare: [None, None],
            payment: Payment::placeholder(),
        }
    }
}

impl Decoder {
    /// [`decode`], into this decoder's buffer: the payment is valid until
    /// the next call (the caller may change it; the next call overwrites
    /// every field).
    pub fn decode(
        &mut self,
        bytes: &[u8],
        format: Option<Format>,
        limits: &Limits,
        now_ms: i64,
    ) -> Result<&mut Payment, DecodeError> {
        let format = format.unwrap_or_else(|| Format::detect(bytes));
        let parties = match format {
            Format::Protobuf => {
                check_size(bytes, limits)?;
                parties_present(bytes)
            }
            _ => None,
        };
        let Some(present) = parties else {
            self.payment = decode(bytes, Some(format), limits, now_ms)?;
            return Ok(&mut self.payment);
        };
        self.reset(present);
        self.wire.merge(bytes).map_err(protobuf_error)?;
        validate_into(&mut self.wire, limits, now_ms, &mut self.payment)?;
        Ok(&mut self.payment)
    }

    /// Empties the wire message, keeping its buffers; a party is in place
    /// exactly when `present` says the record has one.
    fn reset(&mut self, present: [bool; 2]) {
        // Every field named, none with `..`: a field added to the schema
        // does not compile here until it is reset too (a value left over
        // from the previous record would be a wrong payment).
        let PaymentEvent {
            mut event_id,
            event_time_ms: _,
            payer,
            payee,
            amount_minor: _,
            mut currency,
            channel: _,
            payment_type: _,
            mut device_id,
            mut ip,
            mut phone,
            geo: _,
            mut country,
            mut merchant_category,
            mut attributes,
        } = std::mem::take(&mut self.wire);
        let [payer, payee] = [(payer, 0), (payee, 1)].map(|(held, i)| {
            if let Some(p) = held {
                self.spare[i] = Some(p);
            }
            if !present[i] {
                return None;
            }
            let Party {
                mut account,
                mut bank_code,
                kind: _,
            } = self.spare[i].take().unwrap_or_default();
            account.clear();
            bank_code.clear();
            Some(Party {
                account,
                bank_code,
                kind: 0,
            })
        });
        for s in [
            &mut event_id,
            &mut currency,
            &mut device_id,
            &mut ip,
            &mut phone,
            &mut country,
            &mut merchant_category,
        ] {
            s.clear();
        }
        attributes.clear();
        self.wire = PaymentEvent {
            event_id,
            payer,
            payee,
            currency,
            device_id,
            ip,
            phone,
            country,
            merchant_category,
            attributes,
            ..PaymentEvent::default()
        };
    }
}

/// Whether a protobuf `PaymentEvent` has its payer (field 3) and payee
/// (field 4), from a walk over its top-level fields; `None` when the walk
/// fails (bytes cut short, a group, a reserved wire type).
fn parties_present(mut b: &[u8]) -> Option<[bool; 2]> {
    use prost::encoding::decode_varint;
    let mut present = [false; 2];
    while !b.is_empty() {
        let key = decode_varint(&mut b).ok()?;
        match key & 7 {
            0 => {
                decode_varint(&mut b).ok()?;
            }
            1 => b = b.get(8..)?,
            2 => {
                let len = usize::try_from(decode_varint(&mut b).ok()?).ok()?;
                b = b.get(len..)?;
            }
            5 => b = b.get(4..)?,
            _ => return None,
        }
        match key >> 3 {
            3 => present[0] = true,
            4 => present[1] = true,
            _ => {}
        }
    }
    Some(present)
}
