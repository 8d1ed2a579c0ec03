//! Modified UTF-7, the encoding of IMAP mailbox names (RFC 3501 §5.1.3).
//!
//! Printable ASCII stands for itself, except `&`, which is written `&-`.
//! Any other run of characters is written as `&`, its UTF-16BE bytes in
//! base64 (with `,` instead of `/` and no padding), and `-`. So
//! `~peter/mail/台北/日本語` is `~peter/mail/&U,BTFw-/&ZeVnLIqe-`.
//!
//! Configuration files hold names in UTF-8; [`encode`] turns them into what
//! a server without UTF8=ACCEPT expects, and [`decode`] reads its replies.

use base64::Engine as _;
use base64::alphabet::Alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};

/// Base64 as modified UTF-7 uses it: `,` for `/`, never any padding, and
/// (the engine's default) no stray bits after the last full byte, so that
/// each name has exactly one encoding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &match Alphabet::new("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,") {
        Ok(alphabet) => alphabet,
        Err(_) => panic!("invalid modified base64 alphabet"),
    },
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// True for the characters that represent themselves: printable ASCII.
/// (`&` is among them, but is escaped as `&-`.)
fn is_direct(c: char) -> bool {
    matches!(c, ' '..='~')
}

/// Encodes a UTF-8 mailbox name in modified UTF-7.
pub fn encode(name: &str) -> String {
    let mut encoded = String::with_capacity(name.len());
    // The UTF-16BE bytes of the current run of characters to be base64ed.
    let mut run = Vec::new();
    for c in name.chars() {
        if is_direct(c) {
            flush_run(&mut encoded, &mut run);
            if c == '&' {
                encoded.push_str("&-");
            } else {
                encoded.push(c);
            }
        } else {
            for unit in c.encode_utf16(&mut [0; 2]) {
                run.extend_from_slice(&unit.to_be_bytes());
            }
        }
    }
    flush_run(&mut encoded, &mut run);
    encoded
}

/// Appends `run` (UTF-16BE bytes) as `&BASE64-`, if there is any, and
/// empties it. One run per stretch of characters: splitting it would give a
/// different, non-canonical encoding of the same name.
fn flush_run(encoded: &mut String, run: &mut Vec<u8>) {
    if !run.is_empty() {
        encoded.push('&');
        BASE64.encode_string(&*run, encoded);
        encoded.push('-');
        run.clear();
    }
}

/// Decodes a modified UTF-7 mailbox name, or returns `None` if `text` is
/// not valid modified UTF-7.
///
/// Invalid means: a character outside printable ASCII, an `&` without its
/// `-`, bad base64, an odd number of bytes, an unpaired surrogate, or an
/// encoded run holding a printable ASCII character (which RFC 3501 requires
/// to represent itself, so that each name has a single spelling).
pub fn decode(text: &str) -> Option<String> {
    let mut decoded = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let (direct, after_direct) = rest.split_once('&').unwrap_or((rest, ""));
        if !direct.chars().all(is_direct) {
            return None;
        }
        decoded.push_str(direct);
        if direct.len() == rest.len() {
            return Some(decoded);
        }
        let (run, after_run) = after_direct.split_once('-')?;
        rest = after_run;
        if run.is_empty() {
            decoded.push('&');
            continue;
        }
        let bytes = BASE64.decode(run).ok()?;
        if bytes.len() % 2 != 0 {
            return None;
        }
        let units = bytes
            .chunks_exact(2)
            .map(|pair| u16::from_be_bytes([pair[0], pair[1]]));
        for c in char::decode_utf16(units) {
            match c {
                Ok(c) if !is_direct(c) => decoded.push(c),
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pairs of UTF-8 names and their modified UTF-7 spelling.
    const EXAMPLES: &[(&str, &str)] = &[
        ("", ""),
        ("INBOX", "INBOX"),
        ("Lists/rust", "Lists/rust"),
        ("&", "&-"),
        ("Tom & Jerry", "Tom &- Jerry"),
        ("&&", "&-&-"),
        // RFC 3501 §5.1.3.
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        // One byte, two bytes and a full group of three in the last quantum.
        ("Entwürfe", "Entw&APw-rfe"),
        ("Gelöschte Elemente", "Gel&APY-schte Elemente"),
        ("Отправленные", "&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-"),
        // A surrogate pair, and non-ASCII next to `&`.
        ("📬", "&2D3c7A-"),
        ("é&📬", "&AOk-&-&2D3c7A-"),
        // Control characters and DEL are not printable, hence encoded.
        ("a\tb\u{7f}", "a&AAk-b&AH8-"),
    ];

    #[test]
    fn encodes_and_decodes_the_examples() {
        for &(utf8, utf7) in EXAMPLES {
            assert_eq!(encode(utf8), utf7, "{utf8}");
            assert_eq!(decode(utf7).as_deref(), Some(utf8), "{utf7}");
        }
    }

    #[test]
    fn round_trips() {
        let mut every_kind = String::new();
        for c in [
            'a',
            '&',
            '-',
            ' ',
            '~',
            '\u{0}',
            'ß',
            '€',
            '\u{ffff}',
            '\u{10000}',
            '\u{10ffff}',
        ] {
            every_kind.push(c);
            let name = every_kind.repeat(3);
            assert_eq!(decode(&encode(&name)).as_deref(), Some(&*name), "{name:?}");
        }
    }

    #[test]
    fn rejects_malformed_input() {
        for text in [
            // Unterminated runs.
            "&", "a&U,BTFw", // Characters that must be encoded, written raw.
            "台北", "a\tb", "a\u{7f}",
            // Not the modified base64 alphabet, or padded.
            "&U/BTFw-", "&AOk=-", "&A-",
            // Stray bits after the last byte: `AOl` is `AOk` plus one bit.
            "&AOl-", // An odd number of bytes: one, then three.
            "&AA-", "&AOkA-", // Unpaired surrogates: high, low, high then a letter.
            "&2D0-", "&3Ow-", "&2D0AYQ-",
            // Printable ASCII, `&` included, must represent itself.
            "&AGE-", "&ACY-", "&AOkAYQ-",
        ] {
            assert_eq!(decode(text), None, "{text:?}");
        }
    }
}
