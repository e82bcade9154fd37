//! Reading the `DUMP` payload of a set or hash stored as a hash table, in normal form.
//!
//! Such a payload lists the members in the order of the server's hash table, which is
//! seeded at random in every `redis-server`: two regions holding the same set almost always
//! serialize it differently. Rather than reading every such key again from both regions
//! (`SMEMBERS`, `HGETALL`), verify decodes the two payloads it already has and compares
//! them sorted; only when they differ, or cannot be decoded here, is the key read again.
//!
//! Payload layout (Redis `rdb.c`): the RDB object type byte; the element count; each
//! element an RDB string (a length, or one of the integer or LZF encodings); then a 2-byte
//! RDB version and an 8-byte CRC64, which this reader leaves alone (the payload came
//! straight from the server). Lengths and counts are checked against the bytes actually
//! there, so a malformed payload yields `None`, never a panic or a huge allocation.

use super::read::Normal;

/// `RDB_TYPE_SET`: a set stored as a hash table.
const SET: u8 = 2;
/// `RDB_TYPE_HASH`: a hash stored as a hash table.
const HASH: u8 = 4;
/// The RDB version and CRC64 after the object.
const TRAILER: usize = 10;

/// The normal form of a hash-table set or hash payload; `None` for any other type, or a
/// payload this reader cannot decode.
pub fn normal_of_dump(payload: &[u8]) -> Option<Normal> {
    let (&kind, rest) = payload.split_first()?;
    let body = rest.get(..rest.len().checked_sub(TRAILER)?)?;
    let mut reader = Reader { input: body, at: 0 };
    let count = reader.length()?;
    let normal = match kind {
        SET => {
            // Each member takes at least one byte: a larger count is a malformed payload.
            let mut members = Vec::with_capacity(count.min(body.len()));
            for _ in 0..count {
                members.push(reader.string()?);
            }
            members.sort_unstable();
            Normal::Set(members)
        }
        HASH => {
            let mut pairs = Vec::with_capacity(count.min(body.len() / 2));
            for _ in 0..count {
                pairs.push((reader.string()?, reader.string()?));
            }
            pairs.sort_unstable();
            Normal::Hash(pairs)
        }
        _ => return None,
    };
    (reader.at == body.len()).then_some(normal)
}

struct Reader<'a> {
    input: &'a [u8],
    at: usize,
}

/// An RDB length, or the special encoding of a string.
enum Len {
    Plain(usize),
    Special(u8),
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.input.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let bytes = self.input.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(bytes)
    }

    fn len_or_special(&mut self) -> Option<Len> {
        let first = self.byte()?;
        Some(match first >> 6 {
            0 => Len::Plain(usize::from(first & 0x3f)),
            1 => Len::Plain(usize::from(first & 0x3f) << 8 | usize::from(self.byte()?)),
            2 if first == 0x80 => {
                Len::Plain(u32::from_be_bytes(self.take(4)?.try_into().ok()?) as usize)
            }
            2 if first == 0x81 => Len::Plain(
                usize::try_from(u64::from_be_bytes(self.take(8)?.try_into().ok()?)).ok()?,
            ),
            2 => return None,
            _ => Len::Special(first & 0x3f),
        })
    }

    fn length(&mut self) -> Option<usize> {
        match self.len_or_special()? {
            Len::Plain(n) => Some(n),
            Len::Special(_) => None,
        }
    }

    /// An RDB string, as the server would return it.
    fn string(&mut self) -> Option<Vec<u8>> {
        match self.len_or_special()? {
            Len::Plain(n) => Some(self.take(n)?.to_vec()),
            // Integers stored as integers read back as their decimal text.
            Len::Special(0) => Some((self.byte()? as i8).to_string().into_bytes()),
            Len::Special(1) => {
                let n = i16::from_le_bytes(self.take(2)?.try_into().ok()?);
                Some(n.to_string().into_bytes())
            }
            Len::Special(2) => {
                let n = i32::from_le_bytes(self.take(4)?.try_into().ok()?);
                Some(n.to_string().into_bytes())
            }
            Len::Special(3) => {
                let compressed = self.length()?;
                let original = self.length()?;
                lzf_decompress(self.take(compressed)?, original)
            }
            Len::Special(_) => None,
        }
    }
}

/// LZF decompression (`lzf_d.c`), to exactly `original` bytes.
fn lzf_decompress(input: &[u8], original: usize) -> Option<Vec<u8>> {
    // A compressed byte expands to at most 264 bytes: a larger claim is malformed.
    if original > input.len().saturating_mul(264) {
        return None;
    }
    let mut out = Vec::with_capacity(original);
    let mut i = 0;
    while i < input.len() {
        let ctrl = usize::from(input[i]);
        i += 1;
        if ctrl < 32 {
            let literal = input.get(i..i + ctrl + 1)?;
            out.extend_from_slice(literal);
            i += ctrl + 1;
        } else {
            let mut len = ctrl >> 5;
            if len == 7 {
                len += usize::from(*input.get(i)?);
                i += 1;
            }
            let back = ((ctrl & 0x1f) << 8) + usize::from(*input.get(i)?) + 1;
            i += 1;
            let start = out.len().checked_sub(back)?;
            // The reference may overlap what it produces: copy byte by byte.
            for k in 0..len + 2 {
                let b = out[start + k];
                out.push(b);
            }
        }
        if out.len() > original {
            return None;
        }
    }
    (out.len() == original).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn sets_from_real_payloads() {
        for (payload, members) in fixtures::SETS {
            let mut want: Vec<Vec<u8>> = members.iter().map(|m| m.to_vec()).collect();
            want.sort();
            assert_eq!(
                normal_of_dump(&hex(payload)),
                Some(Normal::Set(want)),
                "{payload}"
            );
        }
    }

    #[test]
    fn hashes_from_real_payloads() {
        for (payload, pairs) in fixtures::HASHES {
            let mut want: Vec<(Vec<u8>, Vec<u8>)> = pairs
                .iter()
                .map(|(f, v)| (f.to_vec(), v.to_vec()))
                .collect();
            want.sort();
            assert_eq!(
                normal_of_dump(&hex(payload)),
                Some(Normal::Hash(want)),
                "{payload}"
            );
        }
    }

    #[test]
    fn other_types_and_damaged_payloads_are_not_decoded() {
        let (payload, _) = fixtures::SETS[0];
        let good = hex(payload);
        for cut in 0..good.len() {
            assert_eq!(normal_of_dump(&good[..cut]), None, "cut at {cut}");
        }
        let mut longer = good.clone();
        longer.insert(3, 0);
        assert_eq!(normal_of_dump(&longer), None);
        assert_eq!(normal_of_dump(&hex(fixtures::STRING)), None);
        // A count of 2^32 members in a few bytes.
        assert_eq!(
            normal_of_dump(&hex("0280ffffffff0161000000000000000000000000")),
            None
        );
        assert_eq!(lzf_decompress(&[0xe0, 0xff, 0x00], 10), None);
        assert_eq!(lzf_decompress(&[0x20, 0x00], 3), None);
    }

    /// Payloads `DUMP` returned from redis-server 7.0.15 (hex), with the members
    /// `SMEMBERS` / `HGETALL` returned for them.
    mod fixtures {
        include!("rdb_fixtures.rs");
    }
}
