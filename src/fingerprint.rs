//! The SHA-256 fingerprint of a server's certificate, as `fingerprint = …`
//! pins it: parsed from the configuration, printed back by `--check-config`
//! and in the TLS errors that tell the user what to pin.

use std::fmt;
use std::str::FromStr;

/// The SHA-256 of a DER-encoded end-entity certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl From<[u8; 32]> for Fingerprint {
    fn from(digest: [u8; 32]) -> Fingerprint {
        Fingerprint(digest)
    }
}

/// Parses `sha256:AB:CD:…`: 32 bytes in hex, colons and prefix optional,
/// any case.
impl FromStr for Fingerprint {
    type Err = String;

    fn from_str(text: &str) -> Result<Fingerprint, String> {
        let prefix = "sha256:";
        let hex_part = match text.get(..prefix.len()) {
            Some(start) if start.eq_ignore_ascii_case(prefix) => &text[prefix.len()..],
            _ => text,
        };
        let hex: Vec<u8> = hex_part.bytes().filter(|&byte| byte != b':').collect();
        if hex.len() != 64 || !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(
                "expected a SHA-256 fingerprint: 32 bytes as 64 hex digits, optionally \
                 separated by colons and prefixed with \"sha256:\""
                    .to_owned(),
            );
        }
        let mut digest = [0; 32];
        for (byte, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
            // Two ASCII hex digits, checked above.
            let pair = std::str::from_utf8(pair).expect("ASCII");
            *byte = u8::from_str_radix(pair, 16).expect("hex digits");
        }
        Ok(Fingerprint(digest))
    }
}

/// The form `fingerprint = …` accepts and `--check-config` writes:
/// `sha256:` followed by colon-separated uppercase hex bytes.
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for (i, byte) in self.0.iter().enumerate() {
            let separator = if i == 0 { "" } else { ":" };
            write!(f, "{separator}{byte:02X}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_format() {
        let mut fingerprint = [0u8; 32];
        fingerprint[0] = 0xAB;
        fingerprint[1] = 0x0C;
        let formatted = Fingerprint::from(fingerprint).to_string();
        assert!(formatted.starts_with("sha256:AB:0C:00:"), "{formatted}");
        assert_eq!(formatted.len(), "sha256:".len() + 32 * 3 - 1);
    }
}
