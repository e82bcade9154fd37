//! Feeds arbitrary bytes to the RESP command parser, whole and in pieces.
//!
//! Invariants checked: no panic; every command returned respects the limits; a command is
//! only returned once whole, so feeding the same bytes in two pieces yields the same
//! commands and the same error, if any, as feeding them at once; a returned command,
//! re-encoded as a multibulk, parses back to itself.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

#[path = "../../src/ingress/resp/frame.rs"]
#[allow(dead_code)]
mod frame;

use frame::{Limits, Parser, ProtocolError};

const LIMITS: Limits = Limits {
    max_bulk_bytes: 512,
    max_array_len: 16,
    max_inline_bytes: 256,
    max_payload_bytes: 1024,
};

type Outcome = (Vec<Vec<Vec<u8>>>, Option<ProtocolError>);

/// Parses the pieces in turn with one [`Parser`], as a connection does.
fn parse_pieces(pieces: &[&[u8]]) -> Outcome {
    let mut buf = BytesMut::new();
    let mut parser = Parser::default();
    let mut commands = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match parser.parse(&mut buf, &LIMITS) {
                Ok(Some(args)) => {
                    assert!(!args.is_empty());
                    assert!(args.len() <= LIMITS.max_array_len);
                    assert!(args.iter().map(|a| a.len()).sum::<usize>() <= LIMITS.max_payload_bytes.max(LIMITS.max_inline_bytes));
                    commands.push(args.iter().map(|a| a.to_vec()).collect());
                }
                Ok(None) => break,
                Err(err) => return (commands, Some(err)),
            }
        }
    }
    (commands, None)
}

fn encode(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend(format!("${}\r\n", arg.len()).as_bytes());
        out.extend(arg);
        out.extend(b"\r\n");
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let whole = parse_pieces(&[data]);
    if data.len() > 1 {
        let cut = data[0] as usize % data.len();
        let split = parse_pieces(&[&data[..cut], &data[cut..]]);
        assert_eq!(whole, split, "split at {cut}");
    }
    for command in &whole.0 {
        if command.len() <= LIMITS.max_array_len
            && command.iter().all(|a| a.len() <= LIMITS.max_bulk_bytes)
            && command.iter().map(|a| a.len()).sum::<usize>() <= LIMITS.max_payload_bytes
        {
            let again = parse_pieces(&[&encode(command)]);
            assert_eq!(again, (vec![command.clone()], None));
        }
    }
});
