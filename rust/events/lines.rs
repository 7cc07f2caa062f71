//! The lines of an event log that every reader reads, and the ones all of
//! them skip.
//!
//! A log can hold anything a crash, a disk or a person leaves in it: binary
//! garbage, bytes that are not UTF-8 (a multi-byte character cut by a kill
//! mid-write), JSON that is not an object, numbers Python refuses to
//! convert, nesting deep enough to exhaust a parser's stack. Every reader
//! (the resumption analysis, `check_job_completion`, the `events` command)
//! reads the same lines: those that are, alone, valid UTF-8 and a JSON
//! object `json.loads` returns, nested at most [`MAX_DEPTH`] deep. Every
//! other line is skipped, so a log reads as it would with those lines
//! removed. Lines break where Python's text mode breaks them (`\n`, `\r\n`,
//! `\r`), so the lines read are the ones Data-Juicer 1.6.1 reads.

/// Objects and arrays nested deeper than this make a line unreadable. The
/// package's writer nests at most 200 levels below an event; Python's
/// `json.loads` reads this depth from any ordinary call stack.
pub const MAX_DEPTH: usize = 256;

/// Integer literals with more digits than this fail in `json.loads`
/// (Python's default `sys.get_int_max_str_digits()`).
const MAX_INT_DIGITS: usize = 4300;

/// One line of a log: blank, skipped, or a JSON object (its text with
/// Python's `str.strip()` whitespace removed).
#[derive(Debug, PartialEq, Eq)]
pub enum LogLine<'a> {
    Blank,
    Unreadable,
    Object(&'a str),
}

/// The lines of `bytes`, split as Python's text mode splits them.
pub fn split(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some(end) = rest.iter().position(|b| matches!(b, b'\n' | b'\r')) else {
            return Some(std::mem::take(&mut rest));
        };
        let line = &rest[..end];
        let width = if rest[end..].starts_with(b"\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + width..];
        Some(line)
    })
}

/// What the readers make of one line (split by [`split`]).
pub fn classify(line: &[u8]) -> LogLine<'_> {
    match stripped(line) {
        None => LogLine::Unreadable,
        Some("") => LogLine::Blank,
        Some(text) if is_object(text) => LogLine::Object(text),
        Some(_) => LogLine::Unreadable,
    }
}

/// The line as text without Python's `str.strip()` whitespace; `None`
/// when it is not UTF-8.
pub fn stripped(line: &[u8]) -> Option<&str> {
    std::str::from_utf8(line)
        .ok()
        .map(|text| text.trim_matches(python_space))
}

/// Whether the stripped line `text` is an object every reader reads.
pub fn is_object(text: &str) -> bool {
    text.starts_with('{') && is_json_object(text.as_bytes())
}

/// Whether `serde_json` accepting `text` as an object proves that
/// [`is_object`] does: it is too short for an integer `json.loads` refuses
/// and has too few brackets to nest too deep (serde's strict JSON is
/// otherwise a subset of what `json.loads` reads). The analysis reads most
/// lines this way, in one parse.
pub fn serde_suffices(text: &str) -> bool {
    text.len() <= MAX_INT_DIGITS
        && text.bytes().filter(|b| matches!(b, b'[' | b'{')).count() <= MAX_DEPTH
}

/// The readable objects of `bytes`, in order.
pub fn objects(bytes: &[u8]) -> impl Iterator<Item = &str> {
    split(bytes).filter_map(|line| match classify(line) {
        LogLine::Object(text) => Some(text),
        _ => None,
    })
}

/// Python's `str.strip()` whitespace: Unicode `White_Space` plus the
/// separators `\x1c`..`\x1f`.
pub fn python_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// Whether `text` is exactly one JSON value as `json.loads` reads it
/// (`NaN`, `Infinity`, `-Infinity` and lone surrogate escapes included;
/// control characters in strings, other escapes, trailing commas and
/// over-long integers excluded) and nests at most [`MAX_DEPTH`] deep.
fn is_json_object(text: &[u8]) -> bool {
    let mut parser = Parser { text, pos: 0 };
    parser.value(0).is_some() && {
        parser.skip_space();
        parser.pos == text.len()
    }
}

struct Parser<'a> {
    text: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    /// JSON whitespace (`json`'s `[ \t\n\r]`).
    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek() == Some(byte)).then(|| self.pos += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.text[self.pos..]
            .starts_with(word)
            .then(|| self.pos += word.len())
    }

    /// One value, at nesting `depth` (the containers around it).
    fn value(&mut self, depth: usize) -> Option<()> {
        self.skip_space();
        match self.peek()? {
            b'{' => self.container(depth, b'}', true),
            b'[' => self.container(depth, b']', false),
            b'"' => self.string(),
            b'n' => self.literal(b"null"),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'N' => self.literal(b"NaN"),
            b'I' => self.literal(b"Infinity"),
            b'-' if self.text[self.pos..].starts_with(b"-I") => self.literal(b"-Infinity"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// An object (`keyed`) or array, its opening byte next.
    fn container(&mut self, depth: usize, close: u8, keyed: bool) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.pos += 1;
        self.skip_space();
        if self.eat(close).is_some() {
            return Some(());
        }
        loop {
            if keyed {
                self.skip_space();
                self.string()?;
                self.skip_space();
                self.eat(b':')?;
            }
            self.value(depth + 1)?;
            self.skip_space();
            match self.peek()? {
                b',' => self.pos += 1,
                byte if byte == close => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            self.skip_plain_string_bytes();
            let byte = self.peek()?;
            self.pos += 1;
            match byte {
                b'"' => return Some(()),
                b'\\' => {
                    let escape = self.peek()?;
                    self.pos += 1;
                    match escape {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let hex = self.text.get(self.pos..self.pos + 4)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.pos += 4;
                        }
                        _ => return None,
                    }
                }
                0x00..=0x1f => return None,
                _ => {}
            }
        }
    }

    /// Skips string bytes eight at a time while none is a quote, a
    /// backslash or a control character (most of a log is such text).
    fn skip_plain_string_bytes(&mut self) {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let has_zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH != 0;
        while let Some(word) = self.text.get(self.pos..self.pos + 8) {
            let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
            let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH != 0;
            if control
                || has_zero_byte(word ^ (ONES * u64::from(b'"')))
                || has_zero_byte(word ^ (ONES * u64::from(b'\\')))
            {
                return;
            }
            self.pos += 8;
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?`; an integer (no
    /// fraction, no exponent) of more than [`MAX_INT_DIGITS`] digits fails.
    fn number(&mut self) -> Option<()> {
        self.eat(b'-');
        let int_digits = self.digits();
        if int_digits == 0 || (int_digits > 1 && self.text[self.pos - int_digits] == b'0') {
            return None;
        }
        let mut integer = true;
        if self.peek() == Some(b'.') && self.text.get(self.pos + 1).is_some_and(u8::is_ascii_digit)
        {
            self.pos += 1;
            self.digits();
            integer = false;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            let mark = self.pos;
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                self.pos = mark; // not an exponent: the value ends before it
            } else {
                integer = false;
            }
        }
        (!integer || int_digits <= MAX_INT_DIGITS).then_some(())
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(line: &str) -> bool {
        matches!(classify(line.as_bytes()), LogLine::Object(_))
    }

    #[test]
    fn lines_break_as_in_python_text_mode() {
        let lines: Vec<&[u8]> = split(b"a\nb\r\nc\rd\n\ne").collect();
        assert_eq!(lines, [&b"a"[..], b"b", b"c", b"d", b"", b"e"]);
        assert_eq!(split(b"").count(), 0);
        assert_eq!(split(b"x\n").count(), 1);
    }

    #[test]
    fn objects_json_loads_returns_are_read() {
        for line in [
            r#"{"event_type": "job_start", "timestamp": 1.5e3}"#,
            r#"  {"a": [1, -0, 0.5, -2E-3, true, false, null, {}], "b": {"c": "\u00e9\ud800\n"}} "#,
            r#"{"x": NaN, "y": -Infinity, "z": Infinity, "k": "k", "k": 1}"#,
            "{\"t\": \"\u{4e2d}\u{6587}\", \"del\": \"\u{7f}\"}",
            "{}",
            "\u{3000}{\"a\": 1}\u{1c}",
        ] {
            assert!(readable(line), "{line}");
        }
        let long_int = format!("{{\"n\": {}}}", "9".repeat(MAX_INT_DIGITS));
        assert!(readable(&long_int));
        let long_float = format!("{{\"n\": {}.5}}", "9".repeat(MAX_INT_DIGITS + 1));
        assert!(readable(&long_float));
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1));
        assert!(readable(&format!("{{\"d\": {deep}}}")));
    }

    #[test]
    fn everything_else_is_unreadable() {
        for line in [
            "[1]",
            "5",
            "\"text\"",
            "null",
            "NaN",
            "{\"a\": 1",
            "{\"a\": 1,}",
            "{\"a\": 01}",
            "{\"a\": 1.}",
            "{\"a\": 1e}",
            "{\"a\": .5}",
            "{\"a\": +1}",
            "{\"a\": \"\\x\"}",
            "{\"a\": \"\\u12\"}",
            "{\"a\": \"tab\there\"}",
            "{a: 1}",
            "{\"a\" 1}",
            "{\"a\": 1} {}",
            "\u{feff}{\"a\": 1}",
            "{\"a\": nan}",
            "{\"a\": -NaN}",
            "{\"a\": tru}",
        ] {
            assert!(!readable(line), "{line}");
        }
        let long_int = format!("{{\"n\": -{}}}", "9".repeat(MAX_INT_DIGITS + 1));
        assert!(!readable(&long_int));
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(!readable(&format!("{{\"d\": {deep}}}")));
        let very_deep = "[".repeat(1_000_000);
        assert!(!readable(&format!("{{\"d\": {very_deep}")));
        assert_eq!(classify(b"\xff{}"), LogLine::Unreadable);
        // A multi-byte character cut at the end of the last line.
        let cut = "{\"m\": \"\u{4e2d}\"}".as_bytes();
        assert_eq!(classify(&cut[..cut.len() - 3]), LogLine::Unreadable);
        assert_eq!(classify(b" \t "), LogLine::Blank);
    }

    #[test]
    fn objects_skips_every_other_line() {
        let log = b"{\"a\": 1}\n\xff\xfe\n[1]\n\n{\"b\": 2}\r{\"c\": \"\xe4\xb8";
        assert_eq!(
            objects(log).collect::<Vec<_>>(),
            ["{\"a\": 1}", "{\"b\": 2}"]
        );
    }

    /// The one-parse path of the analysis reads no line the readers skip:
    /// where serde accepts an object and [`serde_suffices`], [`is_object`]
    /// agrees (random short lines over a JSON alphabet, seeded).
    #[test]
    fn serde_never_accepts_what_the_readers_skip() {
        const ALPHABET: &[&str] = &[
            "{", "}", "[", "]", ",", ":", " ", "\"k\"", "\"", "\\", "\\u00e9", "\\ud800", "1", "0",
            "-", ".5", "e9", "E-2", "null", "true", "NaN", "Infinity", "\t", "\u{1}", "\u{4e2d}",
            "x",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let (mut accepted, mut objects) = (0, 0);
        for _ in 0..200_000 {
            let mut line = String::from("{");
            for _ in 0..next(12) {
                line.push_str(ALPHABET[next(ALPHABET.len())]);
            }
            if next(2) == 0 {
                line.push('}');
            }
            let serde_reads = serde_json::from_str::<serde::de::IgnoredAny>(&line).is_ok();
            if serde_reads && serde_suffices(&line) {
                accepted += 1;
                assert!(is_object(&line), "{line}");
            }
            objects += usize::from(is_object(&line));
        }
        assert!(
            accepted > 100 && objects >= accepted,
            "{accepted} {objects}"
        );
    }
}
