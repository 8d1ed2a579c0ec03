//! Mail addresses as mailfetch passes them on: an envelope sender it may
//! put on an SMTP or MDA command line, and the check that an address fits
//! between the angle brackets of an SMTP command. A leaf module, so that
//! the configuration (`envelope_from`) and the sinks share it without
//! depending on each other.

/// Whether `address` can go between the angle brackets of a MAIL or RCPT
/// command without breaking out of it: no control characters, spaces or
/// brackets. Addresses from the config and validated senders pass.
pub fn is_safe_path(address: &str) -> bool {
    address.len() <= 256
        && !address
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>'))
}

/// An envelope sender fit to put on an SMTP command line or an MDA's
/// command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender {
    /// The null sender `<>` (bounces, auto-replies).
    Null,
    Address(String),
}

impl Sender {
    /// The longest address accepted (RFC 5321's path limit).
    const MAX_LEN: usize = 256;

    /// Reads `<addr>`, `addr` or `<>`. Refuses anything that could break out
    /// of an SMTP command or a command-line argument: control characters,
    /// spaces, angle brackets, quotes and shell metacharacters. Such senders
    /// are legal in theory and unseen in practice; they are treated as
    /// absent, never passed on.
    pub fn parse(text: &str) -> Option<Sender> {
        let text = text.trim();
        let inner = text
            .strip_prefix('<')
            .and_then(|rest| rest.strip_suffix('>'))
            .unwrap_or(text)
            .trim();
        if inner.is_empty() {
            return Some(Sender::Null);
        }
        let (local, domain) = inner.rsplit_once('@')?;
        let safe = |c: char| {
            !c.is_control()
                && !c.is_whitespace()
                && !matches!(
                    c,
                    '<' | '>'
                        | '"'
                        | '\''
                        | '\\'
                        | '`'
                        | '$'
                        | ';'
                        | '&'
                        | '|'
                        | '('
                        | ')'
                        | ','
                        | '['
                        | ']'
                )
        };
        let valid = !local.is_empty()
            && !domain.is_empty()
            && inner.len() <= Self::MAX_LEN
            && !local.contains('@')
            && inner.chars().all(safe);
        valid.then(|| Sender::Address(inner.to_owned()))
    }

    /// The address, empty for the null sender.
    pub fn address(&self) -> &str {
        match self {
            Sender::Null => "",
            Sender::Address(address) => address,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_senders_are_treated_as_absent() {
        for text in [
            "<a@b>\r\nRCPT TO:<evil@x>",
            "<$(reboot)@example.org>",
            "<a b@example.org>",
            "<`id`@x>",
            "<a@b@c>",
            "<nodomain>",
            "<a;rm -rf@x>",
        ] {
            assert_eq!(Sender::parse(text), None, "{text:?}");
        }
        assert_eq!(
            Sender::parse("bob+tag@mail.example.org"),
            Some(Sender::Address("bob+tag@mail.example.org".into()))
        );
        assert_eq!(Sender::parse("<>"), Some(Sender::Null));
        assert_eq!(Sender::parse(&format!("<{}@x>", "a".repeat(300))), None);
    }

    #[test]
    fn safe_paths() {
        assert!(is_safe_path("bob+x@example.org"));
        assert!(is_safe_path("jörg@exämple.org"));
        for bad in ["a b@c", "a@b>\r\nRSET", "<a@b>", "a\t@b"] {
            assert!(!is_safe_path(bad), "{bad:?}");
        }
    }
}
