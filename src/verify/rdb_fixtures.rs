// Generated from redis-server 7.0.15: DUMP payloads (hex) and their members.

pub const SETS: &[(&str, &[&[u8]])] = &[
    (
        "0209c09cc1307509686f74656c3a31323300c30928017878e01b0001787803616263c2006cca88c0010b31323334353637383930310a00e4be3872533ece67",
        &[b"1", b"-100", b"30000", b"-2000000000", b"abc", b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", b"hotel:123", b"", b"12345678901"],
    ),
    (
        "020507686f74656c3a3207686f74656c3a3007686f74656c3a3107686f74656c3a3307686f74656c3a340a008a050d5e102cc7c9",
        &[b"hotel:0", b"hotel:1", b"hotel:2", b"hotel:3", b"hotel:4"],
    ),
    (
        "0203036120620300ff0ac30e32017a7ae00e000071e00d000171710a0076f0623b241e3c2b",
        &[b"\x00\xff\x0a", b"a b", b"zzzzzzzzzzzzzzzzzzzzzzzzzqqqqqqqqqqqqqqqqqqqqqqqqq"],
    ),
];

/// A hash's fields and values.
pub type Pairs = &'static [(&'static [u8], &'static [u8])];

pub const HASHES: &[(&str, Pairs)] = &[
    (
        "04060472617465c270110100057374617273c00505626c757262c3094064017979e05700017979000b656d707479206669656c64046e616d6507486f74656c2031036e6567c0fd0a002ee99817e3540831",
        &[(b"name", b"Hotel 1"), (b"stars", b"5"), (b"rate", b"70000"), (b"neg", b"-3"), (b"blurb", b"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy"), (b"", b"empty field")],
    ),
];

pub const STRING: &str = "000378797a0a00324bbf22eca7dbd6";
