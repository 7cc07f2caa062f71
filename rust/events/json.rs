//! The byte-level pieces of Python's `json.dumps` output.
//!
//! `json.dumps` escapes every non-ASCII character (`ensure_ascii=True`) and
//! writes floats with `float.__repr__`; reproducing both keeps our lines
//! byte-identical to the reference's, not merely equal once parsed.

use std::fmt::Write as _;

/// Appends `s` as a JSON string literal, escaped exactly like
/// `json.dumps(s)` (ASCII only, `\uXXXX` with surrogate pairs above the BMP).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let (mut plain_start, mut i) = (0, 0);
    while i < bytes.len() {
        let byte = bytes[i];
        // Printable ASCII other than the quote and backslash goes as is.
        if (0x20..0x7f).contains(&byte) && byte != b'"' && byte != b'\\' {
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

/// Python's `repr(float)` for a finite value.
pub fn float_repr(value: f64) -> String {
    let mut out = Vec::with_capacity(24);
    push_float_repr(&mut out, value);
    String::from_utf8(out).expect("float digits are ASCII")
}

/// A fixed buffer for `{:e}` output, so formatting allocates nothing.
struct StackBuf {
    bytes: [u8; 40],
    len: usize,
}

impl std::fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.bytes.len() {
            return Err(std::fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn push_float_repr(out: &mut Vec<u8>, value: f64) {
    // `{:e}` gives the shortest round-trip digits, e.g. "-1.2345e-7"
    // (at most 17 digits, a sign, a point and "e-324": it fits in 40 bytes).
    let mut sci = StackBuf {
        bytes: [0; 40],
        len: 0,
    };
    write!(sci, "{value:e}").expect("a float's {:e} form fits in 40 bytes");
    let sci = &sci.bytes[..sci.len];
    let e_at = sci
        .iter()
        .position(|b| *b == b'e')
        .expect("LowerExp always has an exponent");
    let exp: i32 = std::str::from_utf8(&sci[e_at + 1..])
        .ok()
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    let mut mantissa = &sci[..e_at];
    if let Some(rest) = mantissa.strip_prefix(b"-") {
        out.push(b'-');
        mantissa = rest;
    }
    let mut digits = [0u8; 24];
    let mut n = 0;
    for &b in mantissa.iter().filter(|b| **b != b'.') {
        digits[n] = b;
        n += 1;
    }
    let digits = &digits[..n];
    if (-4..16).contains(&exp) {
        if exp < 0 {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', (-exp - 1) as usize));
            out.extend_from_slice(digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.extend_from_slice(digits);
                out.extend(std::iter::repeat_n(b'0', int_len - digits.len()));
                out.extend_from_slice(b".0");
            } else {
                out.extend_from_slice(&digits[..int_len]);
                out.push(b'.');
                out.extend_from_slice(&digits[int_len..]);
            }
        }
    } else {
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        let _ = std::io::Write::write_fmt(
            out,
            format_args!("e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs()),
        );
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
        let mut out = Vec::new();
        write_f64(&mut out, f64::NAN);
        write_f64(&mut out, f64::NEG_INFINITY);
        assert_eq!(out, b"NaN-Infinity");
    }
}
