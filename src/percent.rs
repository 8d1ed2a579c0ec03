//! Percent-encoding (`%XX`), the one codec behind URLs in the
//! configuration (`imap://USER@HOST/FOLDER`) and words in state journals.
//! Each caller says which bytes stay as they are.

use std::fmt::Write as _;

/// `bytes` with every byte that `keep` refuses written as `%XX`.
pub fn encode(bytes: &[u8], keep: impl Fn(u8) -> bool) -> String {
    let mut encoded = String::with_capacity(bytes.len());
    for &byte in bytes {
        if keep(byte) {
            encoded.push(byte as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

/// Undoes [`encode`], whatever it kept; `None` when a `%` is not followed
/// by two hex digits.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            if !hex.bytes().all(|digit| digit.is_ascii_hexdigit()) {
                return None;
            }
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let encoded = encode(&all, |byte| byte.is_ascii_alphanumeric());
        assert!(
            encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'%')
        );
        assert_eq!(decode(&encoded).unwrap(), all);
    }

    #[test]
    fn exact_forms() {
        assert_eq!(encode(b"a b%", |b| b.is_ascii_alphabetic()), "a%20b%25");
        assert_eq!(decode("a%2fb%2F").unwrap(), b"a/b/");
    }

    #[test]
    fn refuses_malformed_escapes() {
        for bad in ["%", "%4", "%zz", "a%+1", "%\u{e9}"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}
