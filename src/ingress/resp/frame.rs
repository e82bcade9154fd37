//! Reading commands off a RESP connection: multibulk arrays of bulk strings, and inline
//! commands (`SET k v\r\n`, what `telnet` and `redis-cli` in some modes send).
//!
//! A client only ever sends those two shapes to a Redis server, so this is not a general
//! RESP decoder: anything else (a nested array, an integer, …) is refused with Redis's own
//! wording (`expected '$', got '*'`). [`check`] walks a buffer without allocating, enforcing
//! every limit as soon as the bytes that break it are in the buffer, and says whether a whole
//! command is there; only then does [`parse`] take the command out of the buffer, slicing its
//! arguments from the received bytes without copying them. "Incomplete" is a normal outcome
//! (`Ok(None)`): read more and try again. A [`ProtocolError`] means the stream cannot be
//! resynchronized; the connection answers it and closes, as Redis does.
//!
//! Memory a command can claim is bounded before anything is allocated: the element count by
//! [`Limits::max_array_len`] (for inline commands too), each argument by [`Limits::max_bulk_bytes`], the sum of the
//! arguments by [`Limits::max_payload_bytes`], a count line or an inline command by
//! [`Limits::max_inline_bytes`]; the argument list itself is allocated only once the whole
//! command has been received.

use bytes::{Bytes, BytesMut};

/// What one command may claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes in one bulk string (one argument).
    pub max_bulk_bytes: usize,
    /// Most elements in one multibulk command.
    pub max_array_len: usize,
    /// Most bytes in one inline command, and in a `*`/`$` count line.
    pub max_inline_bytes: usize,
    /// Most bytes of arguments, all together, in one command.
    pub max_payload_bytes: usize,
}

impl Limits {
    /// The limits Redis applies to a client that has not authenticated yet when a password
    /// is required: 10 elements, 16 KiB per argument.
    pub fn unauthenticated(self) -> Limits {
        Limits {
            max_bulk_bytes: self.max_bulk_bytes.min(16 * 1024),
            max_array_len: self.max_array_len.min(10),
            max_inline_bytes: self.max_inline_bytes,
            max_payload_bytes: self.max_payload_bytes.min(10 * 16 * 1024),
        }
    }
}

/// The client broke the protocol; the connection answers `-ERR <this>` and closes.
///
/// The texts are Redis's where Redis has one, so client libraries and operators recognize
/// them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// An inline command (or garbage without a newline) longer than the inline limit.
    #[error("Protocol error: too big inline request")]
    InlineTooBig,
    /// An inline command with a quote that is not closed, or closed and followed by a
    /// character other than a space.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// A `*` line without its CRLF within the inline limit.
    #[error("Protocol error: too big mbulk count string")]
    MultibulkCountTooBig,
    /// A `*` count that is not a number, or above the array limit.
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// An inline command with more arguments than a multibulk one may have. (Redis has no
    /// such limit for inline commands, hence no wording of its own.)
    #[error("Protocol error: too many arguments in inline request, at most {limit} are accepted")]
    InlineTooManyArguments {
        /// The limit that was crossed ([`Limits::max_array_len`]).
        limit: usize,
    },
    /// A `$` line without its CRLF within the inline limit.
    #[error("Protocol error: too big bulk count string")]
    BulkCountTooBig,
    /// An element of a multibulk command that is not a bulk string.
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(String),
    /// A `$` length that is not a number, negative, or above the bulk limit.
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// A bulk string whose announced length is not followed by CRLF.
    #[error("Protocol error: bulk string is not followed by CRLF where its length says it ends")]
    UnterminatedBulk,
    /// A command whose arguments add up to more than a message may hold.
    #[error(
        "Protocol error: command arguments exceed {limit} bytes, the largest message accepted (max_message_bytes)"
    )]
    CommandTooLarge {
        /// The limit that was crossed.
        limit: usize,
    },
}

/// What [`check`] found at the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    /// A multibulk command of `count` arguments occupying the first `len` bytes.
    Multibulk {
        /// Bytes of the whole command.
        len: usize,
        /// Its arguments.
        count: usize,
    },
    /// An inline command on a line of `len` bytes (newline included).
    Inline {
        /// Bytes of the line.
        len: usize,
    },
    /// `len` bytes that carry no command (an empty line, `*0`, `*-1`); Redis skips them.
    Skip {
        /// Bytes to drop.
        len: usize,
    },
}

/// Looks for one whole command at the start of `buf` without allocating.
///
/// `Ok(None)`: not all of it has arrived yet. Limits are enforced on the bytes already there,
/// so a hostile length is refused before the bytes it announces are awaited.
pub fn check(buf: &[u8], limits: &Limits) -> Result<Option<Checked>, ProtocolError> {
    check_from(buf, limits, &mut None)
}

/// [`check`], resuming a multibulk command from `resume` (taken) and leaving in it how far
/// the command was checked when it is incomplete.
fn check_from(
    buf: &[u8],
    limits: &Limits,
    resume: &mut Option<Resume>,
) -> Result<Option<Checked>, ProtocolError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => check_multibulk(buf, limits, resume),
        Some(_) => check_inline(buf, limits),
    }
}

/// Takes the next command out of `buf`, skipping empty ones; `Ok(None)` when no whole command
/// is buffered (whatever is there stays for the next read).
///
/// It remembers nothing between calls, so a multibulk command received in many pieces is
/// walked again from its start at every call: a connection uses a [`Parser`] instead.
pub fn parse(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    Parser::default().parse(buf, limits)
}

/// How far a partly received multibulk command was checked: the next argument starts at
/// `pos`, after `args_done` arguments of `payload` bytes in all.
#[derive(Clone, Copy, Debug)]
struct Resume {
    limits: Limits,
    count: usize,
    pos: usize,
    args_done: usize,
    payload: usize,
}

/// Takes commands out of one connection's buffer, as [`parse`] does, but remembers how far a
/// partly received multibulk command has been checked: each read then costs only its new
/// bytes, however many pieces the command arrives in.
///
/// Use one `Parser` per buffer, and only take bytes out of the buffer through it (appending
/// is fine): the position it remembers is an offset into that buffer.
#[derive(Debug, Default)]
pub struct Parser {
    resume: Option<Resume>,
}

impl Parser {
    /// Takes the next command out of `buf`, skipping empty ones; `Ok(None)` when no whole
    /// command is buffered (whatever is there stays for the next read).
    pub fn parse(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
    ) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        loop {
            match check_from(buf, limits, &mut self.resume)? {
                None => return Ok(None),
                Some(Checked::Skip { len }) => {
                    let _ = buf.split_to(len);
                }
                Some(Checked::Multibulk { len, count }) => {
                    let frame = buf.split_to(len).freeze();
                    return Ok(Some(slice_multibulk(&frame, count)));
                }
                Some(Checked::Inline { len }) => {
                    let line = buf.split_to(len);
                    let args = split_inline(trim_line(&line), limits.max_array_len)?;
                    if args.is_empty() {
                        continue;
                    }
                    return Ok(Some(args.into_iter().map(Bytes::from).collect()));
                }
            }
        }
    }
}

/// The line without its `\n` and an optional `\r` before it.
fn trim_line(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn check_inline(buf: &[u8], limits: &Limits) -> Result<Option<Checked>, ProtocolError> {
    let Some(newline) = memchr::memchr(b'\n', buf) else {
        if buf.len() > limits.max_inline_bytes {
            return Err(ProtocolError::InlineTooBig);
        }
        return Ok(None);
    };
    if newline > limits.max_inline_bytes {
        return Err(ProtocolError::InlineTooBig);
    }
    let len = newline + 1;
    if buf[..len].iter().all(|&b| is_space(b)) {
        return Ok(Some(Checked::Skip { len }));
    }
    // Quotes are checked by `parse`, which has to split the line anyway.
    Ok(Some(Checked::Inline { len }))
}

/// A count line starting at `start` (the byte after `*` or `$`): the number and the offset
/// just past its CRLF, or `None` when the CRLF has not arrived.
enum Line {
    Incomplete,
    Complete { value: Option<i64>, next: usize },
}

fn count_line(buf: &[u8], start: usize, max_line: usize) -> Result<Line, ()> {
    let rest = &buf[start..];
    let Some(cr) = memchr::memchr(b'\r', rest) else {
        if rest.len() > max_line {
            return Err(());
        }
        return Ok(Line::Incomplete);
    };
    if cr > max_line {
        return Err(());
    }
    match rest.get(cr + 1) {
        None => Ok(Line::Incomplete),
        Some(b'\n') => Ok(Line::Complete {
            value: parse_i64(&rest[..cr]),
            next: start + cr + 2,
        }),
        // A CR inside the number: not a number.
        Some(_) => Ok(Line::Complete {
            value: None,
            next: start + cr + 2,
        }),
    }
}

/// Checks a multibulk command from its start, or from `resume` when it belongs to this
/// buffer and these limits. Whatever the outcome, `resume` is taken; it is set again, to
/// where the next argument starts, only when the command is incomplete.
fn check_multibulk(
    buf: &[u8],
    limits: &Limits,
    resume: &mut Option<Resume>,
) -> Result<Option<Checked>, ProtocolError> {
    let mut at = match resume.take() {
        Some(at) if at.limits == *limits && at.pos <= buf.len() => at,
        _ => {
            let (count, pos) = match count_line(buf, 1, limits.max_inline_bytes) {
                Err(()) => return Err(ProtocolError::MultibulkCountTooBig),
                Ok(Line::Incomplete) => return Ok(None),
                Ok(Line::Complete { value: None, .. }) => {
                    return Err(ProtocolError::InvalidMultibulkLength);
                }
                Ok(Line::Complete {
                    value: Some(count),
                    next,
                }) => (count, next),
            };
            if count <= 0 {
                return Ok(Some(Checked::Skip { len: pos }));
            }
            if count as u64 > limits.max_array_len as u64 {
                return Err(ProtocolError::InvalidMultibulkLength);
            }
            Resume {
                limits: *limits,
                count: count as usize,
                pos,
                args_done: 0,
                payload: 0,
            }
        }
    };
    while at.args_done < at.count {
        match check_bulk(buf, at.pos, at.payload, limits)? {
            None => {
                *resume = Some(at);
                return Ok(None);
            }
            Some((next, payload)) => {
                at.pos = next;
                at.payload = payload;
                at.args_done += 1;
            }
        }
    }
    Ok(Some(Checked::Multibulk {
        len: at.pos,
        count: at.count,
    }))
}

/// Checks the bulk string starting at `pos`, after arguments of `payload` bytes: where the
/// next one starts and the payload with it, or `None` when it has not all arrived. The
/// limits are enforced on what has arrived.
fn check_bulk(
    buf: &[u8],
    pos: usize,
    payload: usize,
    limits: &Limits,
) -> Result<Option<(usize, usize)>, ProtocolError> {
    match buf.get(pos) {
        None => return Ok(None),
        Some(b'$') => {}
        Some(&other) => return Err(ProtocolError::ExpectedBulk(printable(other))),
    }
    let (len, data) = match count_line(buf, pos + 1, limits.max_inline_bytes) {
        Err(()) => return Err(ProtocolError::BulkCountTooBig),
        Ok(Line::Incomplete) => return Ok(None),
        Ok(Line::Complete { value, next }) => match value {
            Some(len) if len >= 0 && len as u64 <= limits.max_bulk_bytes as u64 => {
                (len as usize, next)
            }
            _ => return Err(ProtocolError::InvalidBulkLength),
        },
    };
    let payload = payload + len;
    if payload > limits.max_payload_bytes {
        return Err(ProtocolError::CommandTooLarge {
            limit: limits.max_payload_bytes,
        });
    }
    let end = data + len;
    match buf.get(end..end + 2) {
        None => {
            // Only a wrong byte already received is an error; missing ones may come.
            if buf.len() > end && buf[end] != b'\r' {
                return Err(ProtocolError::UnterminatedBulk);
            }
            Ok(None)
        }
        Some(b"\r\n") => Ok(Some((end + 2, payload))),
        Some(_) => Err(ProtocolError::UnterminatedBulk),
    }
}

/// Slices the arguments of a multibulk command that [`check`] accepted.
fn slice_multibulk(frame: &Bytes, count: usize) -> Vec<Bytes> {
    let mut args = Vec::with_capacity(count);
    // Skip "*<count>\r\n".
    let mut pos = match memchr::memchr(b'\n', frame) {
        Some(nl) => nl + 1,
        None => return args,
    };
    while args.len() < count && pos < frame.len() {
        let Some(nl) = memchr::memchr(b'\n', &frame[pos..]) else {
            break;
        };
        let len = parse_i64(&frame[pos + 1..pos + nl - 1]).unwrap_or(0).max(0) as usize;
        let start = pos + nl + 1;
        args.push(frame.slice(start..start + len));
        pos = start + len + 2;
    }
    args
}

/// An integer the way Redis's `string2ll` reads it: an optional `-`, digits, no `+`, no
/// leading zeros, at most 20 characters.
fn parse_i64(text: &[u8]) -> Option<i64> {
    if text.is_empty() || text.len() > 20 {
        return None;
    }
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let digit = i64::from(d - b'0');
        value = if negative {
            value.checked_mul(10)?.checked_sub(digit)?
        } else {
            value.checked_mul(10)?.checked_add(digit)?
        };
    }
    if negative && value == 0 {
        return None;
    }
    Some(value)
}

/// A byte as Redis would show it in `expected '$', got '…'`, kept on one line.
fn printable(byte: u8) -> String {
    if byte.is_ascii_graphic() || byte == b' ' {
        (byte as char).to_string()
    } else {
        format!("\\x{byte:02x}")
    }
}

/// Redis's `isspace` set.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Splits an inline command line the way Redis's `sdssplitargs` does: arguments separated
/// by spaces; `"..."` with `\n \r \t \b \a \\ \" \xHH` escapes; `'...'` with `\'`; a closing
/// quote must be followed by a space or the end of the line. A NUL byte outside quotes ends
/// the line, as it does for Redis's C string. More than `max_args` arguments is an error,
/// raised before the one too many is stored, as a multibulk count above the limit is.
pub fn split_inline(line: &[u8], max_args: usize) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let mut args = Vec::new();
    let mut p = 0;
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    loop {
        while p < line.len() && is_space(line[p]) {
            p += 1;
        }
        if p >= line.len() || line[p] == 0 {
            return Ok(args);
        }
        if args.len() >= max_args {
            return Err(ProtocolError::InlineTooManyArguments { limit: max_args });
        }
        let mut current = Vec::new();
        let mut in_double = false;
        let mut in_single = false;
        loop {
            let c = at(p);
            if in_double {
                if c == b'\\'
                    && at(p + 1) == b'x'
                    && let (Some(hi), Some(lo)) = (hex_value(at(p + 2)), hex_value(at(p + 3)))
                {
                    current.push(hi * 16 + lo);
                    p += 3;
                } else if c == b'\\' && p + 1 < line.len() {
                    p += 1;
                    current.push(match line[p] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if c == b'"' {
                    if p + 1 < line.len() && !is_space(line[p + 1]) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    p += 1;
                    break;
                } else if p >= line.len() || c == 0 {
                    return Err(ProtocolError::UnbalancedQuotes);
                } else {
                    current.push(c);
                }
            } else if in_single {
                if c == b'\\' && at(p + 1) == b'\'' {
                    p += 1;
                    current.push(b'\'');
                } else if c == b'\'' {
                    if p + 1 < line.len() && !is_space(line[p + 1]) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    p += 1;
                    break;
                } else if p >= line.len() || c == 0 {
                    return Err(ProtocolError::UnbalancedQuotes);
                } else {
                    current.push(c);
                }
            } else {
                match c {
                    _ if p >= line.len() => break,
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => break,
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    other => current.push(other),
                }
            }
            p += 1;
        }
        args.push(current);
        if at(p) == 0 && p < line.len() {
            // A NUL outside quotes ends the line.
            return Ok(args);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bulk_bytes: 1024,
        max_array_len: 64,
        max_inline_bytes: 256,
        max_payload_bytes: 4096,
    };

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(args) = parse(&mut buf, &LIMITS)? {
            out.push(args.iter().map(|a| a.to_vec()).collect());
        }
        Ok(out)
    }

    fn strs(args: &[&str]) -> Vec<Vec<u8>> {
        args.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    #[test]
    fn multibulk_and_inline_commands() {
        let got =
            parse_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\nPING\r\n  set  a 'b c'\n").unwrap();
        assert_eq!(
            got,
            vec![
                strs(&["SET", "k", ""]),
                strs(&["PING"]),
                strs(&["set", "a", "b c"])
            ]
        );
    }

    #[test]
    fn binary_arguments_survive() {
        let got = parse_all(b"*2\r\n$4\r\n\r\n\0\xff\r\n$2\r\n\r\n\r\n").unwrap();
        assert_eq!(got, vec![vec![b"\r\n\0\xff".to_vec(), b"\r\n".to_vec()]]);
    }

    #[test]
    fn empty_commands_are_skipped() {
        assert_eq!(
            parse_all(b"\r\n*0\r\n*-1\r\n   \r\nPING\r\n").unwrap(),
            vec![strs(&["PING"])]
        );
    }

    #[test]
    fn a_parser_resumes_a_command_where_it_stopped() {
        // Empty arguments a few bytes at a time: after each read, what is left unchecked is
        // less than one argument, so no read walks the command from its start again.
        let input = encode(&vec![Vec::new(); 64]);
        let mut buf = BytesMut::new();
        let mut parser = Parser::default();
        let mut got = None;
        for chunk in input.chunks(3) {
            assert!(got.is_none(), "a command before its last byte");
            buf.extend_from_slice(chunk);
            got = parser.parse(&mut buf, &LIMITS).unwrap();
            match parser.resume {
                Some(at) => assert!(buf.len() - at.pos < b"$0\r\n\r\n".len(), "{at:?}"),
                None => assert!(got.is_some() || buf.len() < b"*64\r\n".len()),
            }
        }
        assert_eq!(got.unwrap(), vec![Bytes::new(); 64]);
        assert!(buf.is_empty() && parser.resume.is_none());

        // Other limits (after AUTH, say) check the command again from its start.
        buf.extend_from_slice(&input[..input.len() / 2]);
        assert_eq!(parser.parse(&mut buf, &LIMITS), Ok(None));
        assert!(parser.resume.is_some());
        assert_eq!(
            parser.parse(&mut buf, &LIMITS.unauthenticated()),
            Err(ProtocolError::InvalidMultibulkLength)
        );
    }

    #[test]
    fn every_prefix_of_a_command_is_incomplete() {
        let whole = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n";
        for cut in 0..whole.len() {
            assert_eq!(check(&whole[..cut], &LIMITS), Ok(None), "cut at {cut}");
        }
        assert_eq!(
            check(whole, &LIMITS),
            Ok(Some(Checked::Multibulk {
                len: whole.len(),
                count: 3
            }))
        );
    }

    #[test]
    fn inline_quoting_follows_redis() {
        let split = |s: &[u8]| split_inline(s, 64);
        assert_eq!(
            split(br#"set "a\x41\n" 'it\'s' "q\"""#).unwrap(),
            vec![
                b"set".to_vec(),
                b"aA\n".to_vec(),
                b"it's".to_vec(),
                b"q\"".to_vec()
            ]
        );
        assert_eq!(split(br#"set "a"#), Err(ProtocolError::UnbalancedQuotes));
        assert_eq!(split(br#"set "a"b"#), Err(ProtocolError::UnbalancedQuotes));
        assert_eq!(split(b"set 'a"), Err(ProtocolError::UnbalancedQuotes));
        assert_eq!(split(b"set 'a'b"), Err(ProtocolError::UnbalancedQuotes));
        assert_eq!(split(b"").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(split(b"a\0b c").unwrap(), strs(&["a"]));
    }

    #[test]
    fn malformed_input_gets_redis_wording() {
        let cases: &[(&[u8], &str)] = &[
            (b"*x\r\n", "Protocol error: invalid multibulk length"),
            (b"*1000\r\n", "Protocol error: invalid multibulk length"),
            (b"*+1\r\n", "Protocol error: invalid multibulk length"),
            (b"*01\r\n", "Protocol error: invalid multibulk length"),
            (
                b"*99999999999999999999999\r\n",
                "Protocol error: invalid multibulk length",
            ),
            (b"*1\r\n$-1\r\n", "Protocol error: invalid bulk length"),
            (b"*1\r\n$2000\r\n", "Protocol error: invalid bulk length"),
            (b"*1\r\n$abc\r\n", "Protocol error: invalid bulk length"),
            (b"*1\r\n$\r\n", "Protocol error: invalid bulk length"),
            (
                b"*1\r\n*1\r\n$1\r\na\r\n",
                "Protocol error: expected '$', got '*'",
            ),
            (b"*1\r\n:1\r\n", "Protocol error: expected '$', got ':'"),
            (b"*1\r\n\x00", "Protocol error: expected '$', got '\\x00'"),
            (
                b"*1\r\n$1\r\nabc\r\n",
                "Protocol error: bulk string is not followed by CRLF",
            ),
            (
                b"set \"a\r\n",
                "Protocol error: unbalanced quotes in request",
            ),
        ];
        for (input, wording) in cases {
            let err = parse_all(input).unwrap_err().to_string();
            assert!(err.starts_with(wording), "{input:?}: {err}");
        }
        let long_line = vec![b'a'; 300];
        assert_eq!(
            parse_all(&long_line),
            Err(ProtocolError::InlineTooBig),
            "no newline within the inline limit"
        );
        let mut long_count = b"*".to_vec();
        long_count.extend(vec![b'1'; 300]);
        assert_eq!(
            parse_all(&long_count),
            Err(ProtocolError::MultibulkCountTooBig)
        );
        let mut long_bulk = b"*1\r\n$".to_vec();
        long_bulk.extend(vec![b'1'; 300]);
        assert_eq!(parse_all(&long_bulk), Err(ProtocolError::BulkCountTooBig));
    }

    #[test]
    fn limits_bite_before_the_bytes_arrive() {
        // Announced but not sent: refused on the header alone.
        assert_eq!(
            check(b"*1\r\n$1025\r\n", &LIMITS),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            check(b"*65\r\n", &LIMITS),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        let mut big = b"*5\r\n".to_vec();
        for _ in 0..4 {
            big.extend(b"$1024\r\n");
            big.extend(vec![b'x'; 1024]);
            big.extend(b"\r\n");
        }
        big.extend(b"$1\r\n");
        assert_eq!(
            check(&big, &LIMITS),
            Err(ProtocolError::CommandTooLarge { limit: 4096 })
        );
        let tight = LIMITS.unauthenticated();
        assert_eq!(
            check(b"*11\r\n", &tight),
            Err(ProtocolError::InvalidMultibulkLength)
        );
    }

    #[test]
    fn inline_commands_have_the_multibulk_argument_limit() {
        let line = |n: usize| {
            let mut line = vec!["SADD"; 1];
            line.extend(std::iter::repeat_n("m", n - 1));
            format!("{}\r\n", line.join(" ")).into_bytes()
        };
        // LIMITS.max_array_len is 64: 64 arguments pass, 65 do not, as for a multibulk.
        assert_eq!(parse_all(&line(64)).unwrap()[0].len(), 64);
        assert_eq!(
            parse_all(&line(65)),
            Err(ProtocolError::InlineTooManyArguments { limit: 64 })
        );
        let err = ProtocolError::InlineTooManyArguments { limit: 64 }.to_string();
        assert!(
            err.starts_with("Protocol error: ") && err.contains("64"),
            "{err}"
        );
        // Trailing spaces and an argument-free line count nothing.
        let mut spaced = line(64);
        spaced.splice(spaced.len() - 2..spaced.len() - 2, *b"    \t ");
        assert_eq!(parse_all(&spaced).unwrap()[0].len(), 64);
        // Before AUTH the limit is 10, inline as multibulk.
        let tight = LIMITS.unauthenticated();
        let mut buf = BytesMut::from(&line(10)[..]);
        assert_eq!(parse(&mut buf, &tight).unwrap().map(|a| a.len()), Some(10));
        let mut buf = BytesMut::from(&line(11)[..]);
        assert_eq!(
            parse(&mut buf, &tight),
            Err(ProtocolError::InlineTooManyArguments { limit: 10 })
        );
    }

    #[test]
    fn integers_parse_like_redis() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-1"), Some(-1));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"+1",
            b"01",
            b"1a",
            b" 1",
            b"9223372036854775808",
        ] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
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

    type Outcome = (Vec<Vec<Vec<u8>>>, Option<ProtocolError>);

    /// Parses `input` fed in pieces cut at `cuts`, with one [`Parser`] as a connection does.
    fn parse_in_pieces(input: &[u8], cuts: &[usize]) -> Outcome {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.push(input.len());
        points.sort_unstable();
        let mut buf = BytesMut::new();
        let mut parser = Parser::default();
        let mut out = Vec::new();
        let mut from = 0;
        for to in points {
            buf.extend_from_slice(&input[from..to]);
            from = to;
            loop {
                match parser.parse(&mut buf, &LIMITS) {
                    Ok(Some(args)) => {
                        assert!(!args.is_empty());
                        assert!(
                            args.len() <= LIMITS.max_array_len,
                            "{} arguments",
                            args.len()
                        );
                        assert!(args.iter().map(Bytes::len).sum::<usize>() <= 4096);
                        out.push(args.iter().map(|a| a.to_vec()).collect());
                    }
                    Ok(None) => break,
                    Err(err) => return (out, Some(err)),
                }
            }
        }
        (out, None)
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2000))]

        /// Whatever the bytes and however they arrive: no panic, the limits hold, and the
        /// outcome does not depend on where the reads were cut.
        #[test]
        fn any_bytes_in_any_pieces(
            input in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::prelude::any::<u8>(),
                    proptest::sample::select(b"*$\r\n0123456789- \"'\\x".to_vec()),
                ],
                0..600,
            ),
            cuts in proptest::collection::vec(0usize..1000, 0..6),
        ) {
            let whole = parse_in_pieces(&input, &[]);
            proptest::prop_assert_eq!(&whole, &parse_in_pieces(&input, &cuts));
        }

        /// Well-formed commands come back exactly, byte-safe, however they are cut.
        #[test]
        fn commands_round_trip(
            commands in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 1..8),
                1..10,
            ),
            cuts in proptest::collection::vec(0usize..5000, 0..8),
        ) {
            let input: Vec<u8> = commands.iter().flat_map(|c| encode(c)).collect();
            proptest::prop_assert_eq!(parse_in_pieces(&input, &cuts), (commands, None));
        }

        /// Inline commands of plain words split like Redis splits them.
        #[test]
        fn inline_words(words in proptest::collection::vec("[a-zA-Z0-9:_.-]{1,12}", 1..8)) {
            let line = format!("{}\r\n", words.join(" "));
            let expected: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
            proptest::prop_assert_eq!(parse_in_pieces(line.as_bytes(), &[3]), (vec![expected], None));
        }

        /// An inline command is refused exactly when it has more arguments than
        /// `max_array_len`, however it is spaced and cut, as the multibulk form of the same
        /// command is.
        #[test]
        fn inline_argument_count_is_limited_like_multibulk(
            // Up to 80 arguments of 1 byte and gaps of up to 2 stay within the 256-byte
            // inline limit, so only the argument count can refuse them.
            count in 1usize..80,
            gap in "[ \t]{1,2}",
            cuts in proptest::collection::vec(0usize..400, 0..4),
        ) {
            let words: Vec<String> = (0..count).map(|i| (i % 10).to_string()).collect();
            let line = format!("{}\r\n", words.join(&gap));
            let inline = parse_in_pieces(line.as_bytes(), &cuts);
            let args: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
            let multibulk = parse_in_pieces(&encode(&args), &cuts);
            if count <= LIMITS.max_array_len {
                proptest::prop_assert_eq!(&inline, &(vec![args], None));
                proptest::prop_assert_eq!(&multibulk, &inline);
            } else {
                proptest::prop_assert_eq!(
                    inline,
                    (vec![], Some(ProtocolError::InlineTooManyArguments { limit: LIMITS.max_array_len }))
                );
                proptest::prop_assert_eq!(multibulk, (vec![], Some(ProtocolError::InvalidMultibulkLength)));
            }
        }
    }
}
