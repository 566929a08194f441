//! The executor link's frames, as the gateway and the executor decode what
//! the other side sent: a text frame (one JSON-RPC message) and a binary
//! frame (a 4-byte length, the message, then the payload). Whatever the
//! bytes, decoding answers Ok or Err; a message that decodes encodes back
//! to one that decodes the same.
#![no_main]

use bytes::Bytes;
use execgate_protocol::jsonrpc::{Encoded, Envelope, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        let again =
            Message::decode(message.encode().as_bytes()).expect("an encoded message decodes");
        assert_eq!(again.encode(), message.encode());
    }
    if let Ok(envelope) = Envelope::decode_binary(Bytes::copy_from_slice(data)) {
        let frame = match envelope.encode() {
            Encoded::Text(text) => Bytes::from(text.into_bytes()),
            Encoded::Binary(frame) => Bytes::from(frame),
        };
        let again = Envelope::decode_binary(frame).expect("an encoded frame decodes");
        assert_eq!(again.payload, envelope.payload);
        assert_eq!(again.message.encode(), envelope.message.encode());
    }
});
