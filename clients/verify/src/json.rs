//! A strict RFC 8259 JSON reader, just enough for proof documents and trust files.
//!
//! Strict on purpose: a verifier and the server must never read one document two ways. So
//! duplicate object keys, invalid UTF-8, lone surrogates, control characters in strings,
//! leading zeros and trailing garbage are all errors. Numbers are kept as their source text so
//! the caller decides how to read them: `u64`/`i64` exactly (no float detour) and `f64` with
//! `core`'s correctly rounded parser, so an `f64` that the writer printed round-trip-exactly
//! comes back with the same bits.
//!
//! Self-contained (only `core` and `alloc`): the crate's tests include this file to read the
//! vectors without pulling a JSON crate into the workspace.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Nesting deeper than this is refused (a proof document nests 4 levels).
pub(crate) const DEPTH_MAX: usize = 32;

/// A parsed JSON value. Objects keep their keys in document order; keys are unique.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    /// The number's text exactly as written (already checked against the JSON grammar).
    Number(String),
    String(String),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

impl Value {
    /// The member `key` of an object, if this is an object that has it.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The JSON type's name, for error messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }
}

/// Where and why the text is not (acceptable) JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JsonError {
    /// Byte offset into the input.
    pub(crate) offset: usize,
    pub(crate) what: &'static str,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid JSON at byte {}: {}", self.offset, self.what)
    }
}

/// Parses one JSON value that must fill the whole input (surrounding whitespace allowed).
pub(crate) fn parse(input: &[u8]) -> Result<Value, JsonError> {
    let text = match core::str::from_utf8(input) {
        Ok(t) => t,
        Err(e) => {
            return Err(JsonError {
                offset: e.valid_up_to(),
                what: "not UTF-8",
            })
        }
    };
    let mut p = Parser { text, i: 0 };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i != p.text.len() {
        return Err(p.err("trailing characters after the document"));
    }
    Ok(v)
}

struct Parser<'a> {
    /// The input, checked to be UTF-8 once: spans between ASCII delimiters are sliced from it.
    text: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn err(&self, what: &'static str) -> JsonError {
        JsonError {
            offset: self.i,
            what,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn expect(&mut self, b: u8, what: &'static str) -> Result<(), JsonError> {
        if self.peek() == Some(b) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, JsonError> {
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(_) => Err(self.err("expected a value")),
            None => Err(self.err("unexpected end of input")),
        }
    }

    fn literal(&mut self, word: &'static str, v: Value) -> Result<Value, JsonError> {
        if self.text.as_bytes()[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(self.err("unknown literal"))
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, JsonError> {
        if depth > DEPTH_MAX {
            return Err(self.err("nested too deeply"));
        }
        self.i += 1; // '{'
        let mut members: Vec<(String, Value)> = Vec::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a string key"));
            }
            let key_at = self.i;
            let key = self.string()?;
            if members.iter().any(|(k, _)| *k == key) {
                return Err(JsonError {
                    offset: key_at,
                    what: "duplicate key",
                });
            }
            self.ws();
            self.expect(b':', "expected ':' after a key")?;
            self.ws();
            let v = self.value(depth)?;
            members.push((key, v));
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Value::Object(members));
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, JsonError> {
        if depth > DEPTH_MAX {
            return Err(self.err("nested too deeply"));
        }
        self.i += 1; // '['
        let mut items = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.ws();
            items.push(self.value(depth)?);
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<Value, JsonError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.i += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(self.err("leading zero in a number"));
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.err("expected a digit after '.'"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("expected a digit in the exponent"));
            }
        }
        // The input was checked to be UTF-8 and this span is ASCII.
        let text = self
            .text
            .get(start..self.i)
            .ok_or_else(|| self.err("number"))?;
        Ok(Value::Number(String::from(text)))
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return Err(self.err("expected 4 hex digits after \\u")),
            };
            v = v * 16 + u32::from(d);
            self.i += 1;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.i += 1; // opening quote
        let mut out = String::new();
        loop {
            // Copy the run of plain characters in one go.
            let run = self.i;
            while let Some(c) = self.peek() {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.i += 1;
            }
            // Whole UTF-8 sequences only: the run starts and stops at ASCII bytes.
            out.push_str(
                self.text
                    .get(run..self.i)
                    .ok_or_else(|| self.err("UTF-8"))?,
            );
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = match self.peek() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.i += 1;
                            let at = self.i;
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if !self.text.as_bytes()[self.i..].starts_with(b"\\u") {
                                    return Err(JsonError {
                                        offset: at,
                                        what: "lone surrogate in \\u escape",
                                    });
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(JsonError {
                                        offset: at,
                                        what: "lone surrogate in \\u escape",
                                    });
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            let c = char::from_u32(code).ok_or(JsonError {
                                offset: at,
                                what: "lone surrogate in \\u escape",
                            })?;
                            out.push(c);
                            continue;
                        }
                        _ => return Err(self.err("unknown escape")),
                    };
                    self.i += 1;
                    out.push(c);
                }
                Some(_) => return Err(self.err("control character in a string")),
                None => return Err(self.err("unterminated string")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn s(x: &str) -> Value {
        Value::String(String::from(x))
    }

    #[test]
    fn reads_every_kind_of_value() {
        let v = parse(br#" {"a": [1, -0.5e3, true, false, null, "x"], "b": {}} "#).unwrap();
        assert_eq!(
            v,
            Value::Object(vec![
                (
                    String::from("a"),
                    Value::Array(vec![
                        Value::Number(String::from("1")),
                        Value::Number(String::from("-0.5e3")),
                        Value::Bool(true),
                        Value::Bool(false),
                        Value::Null,
                        s("x"),
                    ])
                ),
                (String::from("b"), Value::Object(vec![])),
            ])
        );
    }

    #[test]
    fn decodes_escapes_and_surrogate_pairs() {
        let v = parse(br#""a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00h""#).unwrap();
        assert_eq!(v, s("a\"\\/\u{8}\u{c}\n\r\t\u{e9}\u{1F600}h"));
        let v = parse("\"h\u{e9}llo \u{1F600}\"".as_bytes()).unwrap();
        assert_eq!(v, s("h\u{e9}llo \u{1F600}"));
    }

    #[test]
    fn numbers_keep_their_text() {
        let v = parse(b"18446744073709551615").unwrap();
        assert_eq!(v, Value::Number(String::from("18446744073709551615")));
    }

    #[test]
    fn refuses_what_another_parser_might_read_differently() {
        for bad in [
            &br#"{"a":1,"a":2}"#[..],
            br#"{"a":1}x"#,
            br#"{"a":1,}"#,
            b"[1,]",
            b"01",
            b"1.",
            b".5",
            b"+1",
            b"1e",
            b"-",
            br#""\ud800""#,
            br#""\udc00""#,
            br#""\ud800\u0041""#,
            b"\"a\x01\"",
            b"\"\xff\"",
            br#""\x""#,
            b"\"abc",
            b"tru",
            b"nul",
            b"",
            b"NaN",
            b"Infinity",
        ] {
            assert!(parse(bad).is_err(), "{:?}", core::str::from_utf8(bad));
        }
    }

    #[test]
    fn depth_is_bounded() {
        let mut deep = Vec::new();
        deep.resize(DEPTH_MAX, b'[');
        deep.resize(2 * DEPTH_MAX, b']');
        assert!(parse(&deep).is_ok());
        let mut deeper = vec![b'['; DEPTH_MAX + 1];
        deeper.resize(2 * DEPTH_MAX + 2, b']');
        assert_eq!(parse(&deeper).unwrap_err().what, "nested too deeply");
    }
}
