//! Replies and their encoding in RESP2 and RESP3.
//!
//! A [`Reply`] is built once and encoded for the protocol the connection speaks at that
//! moment (`HELLO 3` switches it): maps, nulls and doubles have RESP3 forms and RESP2
//! fallbacks (a flat array, a null bulk string, a bulk string), so one reply serves both.

use bytes::{BufMut, Bytes, BytesMut};

/// The protocol a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Protocol {
    /// RESP2, every connection's start.
    #[default]
    Resp2,
    /// RESP3, after `HELLO 3`.
    Resp3,
}

impl Protocol {
    /// The number `HELLO` takes and reports.
    pub fn version(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// One reply to one command.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `+OK`: a status line; must not contain CR or LF.
    Status(&'static str),
    /// `-ERR ...`: the error code and message; CR and LF are replaced when encoded.
    Error(String),
    /// `:n`.
    Integer(i64),
    /// `$n` binary-safe string.
    Bulk(Bytes),
    /// RESP3 `_`, RESP2 null bulk string.
    Null,
    /// RESP3 `,`, RESP2 bulk string; kept as the text the client sent.
    Double(Bytes),
    /// `*n`.
    Array(Vec<Reply>),
    /// RESP3 `%n`, RESP2 an array of keys and values.
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    /// A bulk string from text.
    pub fn text(text: impl Into<String>) -> Reply {
        Reply::Bulk(Bytes::from(text.into()))
    }

    /// `-ERR message`.
    pub fn err(message: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {message}"))
    }

    /// An error with its own code (`WRONGPASS`, `NOAUTH`, `EXECABORT`, …).
    pub fn error_code(code: &str, message: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("{code} {message}"))
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Appends the encoding of this reply to `out`.
    pub fn encode(&self, protocol: Protocol, out: &mut BytesMut) {
        match self {
            Reply::Status(text) => {
                out.put_u8(b'+');
                out.put_slice(text.as_bytes());
                out.put_slice(b"\r\n");
            }
            Reply::Error(text) => {
                out.put_u8(b'-');
                for &b in text.as_bytes() {
                    out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
                }
                out.put_slice(b"\r\n");
            }
            Reply::Integer(n) => header(out, b':', *n),
            Reply::Bulk(bytes) => bulk(out, bytes),
            Reply::Null => match protocol {
                Protocol::Resp2 => out.put_slice(b"$-1\r\n"),
                Protocol::Resp3 => out.put_slice(b"_\r\n"),
            },
            Reply::Double(text) => match protocol {
                Protocol::Resp2 => bulk(out, text),
                Protocol::Resp3 => {
                    out.put_u8(b',');
                    out.put_slice(text);
                    out.put_slice(b"\r\n");
                }
            },
            Reply::Array(items) => {
                header(out, b'*', items.len() as i64);
                for item in items {
                    item.encode(protocol, out);
                }
            }
            Reply::Map(pairs) => {
                match protocol {
                    Protocol::Resp2 => header(out, b'*', 2 * pairs.len() as i64),
                    Protocol::Resp3 => header(out, b'%', pairs.len() as i64),
                }
                for (key, value) in pairs {
                    key.encode(protocol, out);
                    value.encode(protocol, out);
                }
            }
        }
    }
}

fn header(out: &mut BytesMut, kind: u8, n: i64) {
    let mut digits = itoa::Buffer::new();
    out.put_u8(kind);
    out.put_slice(digits.format(n).as_bytes());
    out.put_slice(b"\r\n");
}

fn bulk(out: &mut BytesMut, bytes: &[u8]) {
    header(out, b'$', bytes.len() as i64);
    out.put_slice(bytes);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(reply: &Reply, protocol: Protocol) -> Vec<u8> {
        let mut out = BytesMut::new();
        reply.encode(protocol, &mut out);
        out.to_vec()
    }

    #[test]
    fn both_protocols() {
        let map = Reply::Map(vec![(Reply::text("proto"), Reply::Integer(3))]);
        assert_eq!(
            encoded(&map, Protocol::Resp2),
            b"*2\r\n$5\r\nproto\r\n:3\r\n"
        );
        assert_eq!(
            encoded(&map, Protocol::Resp3),
            b"%1\r\n$5\r\nproto\r\n:3\r\n"
        );
        assert_eq!(encoded(&Reply::Null, Protocol::Resp2), b"$-1\r\n");
        assert_eq!(encoded(&Reply::Null, Protocol::Resp3), b"_\r\n");
        let double = Reply::Double(Bytes::from_static(b"1.5"));
        assert_eq!(encoded(&double, Protocol::Resp2), b"$3\r\n1.5\r\n");
        assert_eq!(encoded(&double, Protocol::Resp3), b",1.5\r\n");
        assert_eq!(encoded(&Reply::Integer(-12), Protocol::Resp2), b":-12\r\n");
    }

    #[test]
    fn errors_stay_on_one_line() {
        assert_eq!(
            encoded(&Reply::err("bad\r\nthing"), Protocol::Resp2),
            b"-ERR bad  thing\r\n"
        );
    }
}
