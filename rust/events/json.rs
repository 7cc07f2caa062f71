//! The byte-level pieces of Python's `json.dumps` output.
//!
//! `json.dumps` escapes every non-ASCII character (`ensure_ascii=True`) and
//! writes floats with `float.__repr__`; reproducing both keeps our lines
//! byte-identical to the reference's, not merely equal once parsed.

/// Bytes `json.dumps` does not copy as they are: controls, `"`, `\\`, DEL
/// and everything non-ASCII.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [true; 256];
    let mut byte = 0x20;
    while byte < 0x7f {
        table[byte] = byte == b'"' as usize || byte == b'\\' as usize;
        byte += 1;
    }
    table
};

/// Appends `s` as a JSON string literal, escaped exactly like
/// `json.dumps(s)` (ASCII only, `\uXXXX` with surrogate pairs above the BMP).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let (mut plain_start, mut i) = (0, 0);
    while i < bytes.len() {
        // Skip eight plain bytes at a time: most event text is plain ASCII.
        if let Some(word) = bytes.get(i..i + 8) {
            let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
            if !word_needs_escape(word) {
                i += 8;
                continue;
            }
        }
        let byte = bytes[i];
        if !NEEDS_ESCAPE[usize::from(byte)] {
            i += 1;
            continue;
        }
        out.extend_from_slice(&bytes[plain_start..i]);
        if byte < 0x80 {
            match byte {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                _ => push_u_escape(out, u16::from(byte)),
            }
            i += 1;
        } else {
            let ch = s[i..]
                .chars()
                .next()
                .expect("a char starts at a non-ASCII lead byte");
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                push_u_escape(out, *unit);
            }
            i += ch.len_utf8();
        }
        plain_start = i;
    }
    out.extend_from_slice(&bytes[plain_start..]);
    out.push(b'"');
}

/// Whether any of the eight bytes in `word` is one `NEEDS_ESCAPE` marks:
/// below 0x20, 0x7f and above, `"` or `\` (exact SWAR tests, see
/// "Determine if a word has a byte less than n", Bit Twiddling Hacks).
fn word_needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    let non_ascii = word & HIGH;
    let delete = has_zero_byte(word ^ (ONES * 0x7f));
    let quote = has_zero_byte(word ^ (ONES * u64::from(b'"')));
    let backslash = has_zero_byte(word ^ (ONES * u64::from(b'\\')));
    (below_space | non_ascii | delete | quote | backslash) != 0
}

/// Appends one UTF-16 code unit as `\uXXXX` (lower-case hex, as Python does).
pub fn push_u_escape(out: &mut Vec<u8>, unit: u16) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"\\u");
    for shift in [12, 8, 4, 0] {
        out.push(HEX[((unit >> shift) & 0xf) as usize]);
    }
}

/// Appends `value` as `json.dumps` writes a float: `NaN`, `Infinity`,
/// `-Infinity`, or `float.__repr__` (shortest round-trip digits, positional
/// for exponents in -4..16, else `d.ddde+XX`).
pub fn write_f64(out: &mut Vec<u8>, value: f64) {
    if value.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if value.is_infinite() {
        out.extend_from_slice(if value > 0.0 {
            b"Infinity"
        } else {
            b"-Infinity"
        });
    } else {
        push_float_repr(out, value);
    }
}

/// Appends an integer in decimal (`int.__repr__` for this range).
pub fn write_i64(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Python's `repr(float)` for a finite value.
pub fn float_repr(value: f64) -> String {
    let mut out = Vec::with_capacity(24);
    push_float_repr(&mut out, value);
    String::from_utf8(out).expect("float digits are ASCII")
}

/// Python's `repr` of a finite float. zmij finds the same shortest
/// round-trip digits as CPython (ties to even, as CPython's dtoa; `{:e}`
/// differs there) and lays them out nearly alike (`0.001234`, `12.0`,
/// `1.5e+16`). Two differences are mended: one-digit exponents (`1e-7`,
/// repr `1e-07`), and magnitudes in [1e-5, 1e-4), which zmij writes
/// positionally (`0.0000123`) and repr with an exponent (`1.23e-05`).
fn push_float_repr(out: &mut Vec<u8>, value: f64) {
    let mut buffer = zmij::Buffer::new();
    let text = buffer.format_finite(value).as_bytes();
    let (sign, unsigned) = match text.strip_prefix(b"-") {
        Some(rest) => (&b"-"[..], rest),
        None => (&b""[..], text),
    };
    if let Some(fraction) = unsigned.strip_prefix(b"0.0000") {
        if value != 0.0 {
            // 1e-5 <= |value| < 1e-4: fraction is "d..." after 4 zeros.
            out.extend_from_slice(sign);
            out.push(fraction[0]);
            if fraction.len() > 1 {
                out.push(b'.');
                out.extend_from_slice(&fraction[1..]);
            }
            out.extend_from_slice(b"e-05");
            return;
        }
    }
    match text.iter().rposition(|b| *b == b'e') {
        // "1.5e-7": the exponent's sign is followed by a single digit.
        Some(e_at) if text.len() - e_at == 3 => {
            out.extend_from_slice(&text[..e_at + 2]);
            out.push(b'0');
            out.push(text[e_at + 2]);
        }
        _ => out.extend_from_slice(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dumps_str(s: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_are_escaped_like_json_dumps() {
        assert_eq!(dumps_str("plain"), r#""plain""#);
        assert_eq!(dumps_str("a\"b\\c\nd\te"), r#""a\"b\\c\nd\te""#);
        assert_eq!(dumps_str("\u{1}\u{8}\u{c}\r"), r#""\u0001\b\f\r""#);
        assert_eq!(dumps_str("é中"), r#""\u00e9\u4e2d""#);
        assert_eq!(dumps_str("😀"), r#""\ud83d\ude00""#);
        assert_eq!(dumps_str("\u{7f}"), r#""\u007f""#);
    }

    #[test]
    fn floats_match_python_repr() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (123.456, "123.456"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (1.2345e300, "1.2345e+300"),
            (1761234567.123456, "1761234567.123456"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
        ];
        for (value, expected) in cases {
            assert_eq!(float_repr(value), expected, "repr of {value}");
        }
        for digits in ["1.5e-05", "9.99e-05", "1.2345678901234568e-05", "-1e-05"] {
            let value: f64 = digits.parse().unwrap();
            assert_eq!(float_repr(value), digits);
        }
        let mut out = Vec::new();
        write_f64(&mut out, f64::NAN);
        write_f64(&mut out, f64::NEG_INFINITY);
        assert_eq!(out, b"NaN-Infinity");
    }

    /// Every float in the fixture (random bit patterns, values around each
    /// power of ten, ties) is written exactly as CPython's `repr` wrote it.
    #[test]
    fn floats_match_python_repr_on_the_fixture() {
        let fixture = include_str!("testdata/float_repr.txt");
        let mut checked = 0;
        for line in fixture.lines().filter(|l| !l.starts_with('#')) {
            let (bits, expected) = line.split_once(' ').unwrap();
            let value = f64::from_bits(u64::from_str_radix(bits, 16).unwrap());
            assert_eq!(float_repr(value), expected, "bits {bits}");
            checked += 1;
        }
        assert!(checked > 3000, "fixture has {checked} values");
    }

    /// The eight-byte test agrees with the table on words made of every
    /// byte value in every position, next to plain bytes.
    #[test]
    fn word_test_agrees_with_the_byte_table() {
        for byte in 0..=255u8 {
            for position in 0..8 {
                let mut bytes = *b"abcdefgh";
                bytes[position] = byte;
                let word = u64::from_le_bytes(bytes);
                assert_eq!(
                    word_needs_escape(word),
                    NEEDS_ESCAPE[usize::from(byte)],
                    "byte {byte:#x} at {position}"
                );
            }
        }
        assert_eq!(
            dumps_str("a long plain run, then \"quoted\"\n"),
            r#""a long plain run, then \"quoted\"\n""#
        );
    }

    #[test]
    fn integers_are_written_in_decimal() {
        let mut out = Vec::new();
        for value in [0, -1, 42, i64::MIN, i64::MAX] {
            write_i64(&mut out, value);
            out.push(b' ');
        }
        assert_eq!(
            out,
            b"0 -1 42 -9223372036854775808 9223372036854775807 ".to_vec()
        );
    }
}
