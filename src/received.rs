//! The `Received:` trace header prepended to each delivered message.

use std::time::SystemTime;

/// This machine's host name, or `localhost` if it has none.
pub fn local_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; we stop at the first NUL,
    // or at the end if the name was truncated without one.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok && len > 0 {
        String::from_utf8_lossy(&buf[..len]).into_owned()
    } else {
        "localhost".to_owned()
    }
}

/// What the header says about one retrieval.
pub struct Trace<'a> {
    pub server: &'a str,
    pub local_host: &'a str,
    /// `POP3`, `IMAP`, …
    pub protocol: &'a str,
    pub tls: bool,
    pub account: &'a str,
    pub username: &'a str,
}

impl Trace<'_> {
    /// The header with CRLF line ends, folded like an MTA's.
    pub fn header(&self, when: SystemTime) -> String {
        format!(
            "Received: from {server}\r\n\tby {local} with {protocol} ({tls}mailfetch {version})\r\n\tfor <{user}> (account {account}); {date}\r\n",
            server = clean(self.server),
            local = clean(self.local_host),
            protocol = self.protocol,
            tls = if self.tls { "TLS; " } else { "" },
            version = env!("CARGO_PKG_VERSION"),
            user = clean(self.username),
            account = clean(self.account),
            date = rfc5322_date(when),
        )
    }
}

/// Keeps configured strings from breaking the header's syntax.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || "()<>;".contains(c) {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// `Sun, 22 Nov 2026 00:10:25 +0000`, in UTC (no time zone database needed;
/// mail-parser, which mailfetch reads headers with, does the calendar).
pub fn rfc5322_date(when: SystemTime) -> String {
    let secs = when
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    mail_parser::DateTime::from_timestamp(secs as i64).to_rfc822()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(rfc5322_date(at(0)), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(at(1_795_310_625)),
            "Sun, 22 Nov 2026 01:23:45 +0000"
        );
        assert_eq!(
            rfc5322_date(at(1_795_310_831)),
            "Sun, 22 Nov 2026 01:27:11 +0000"
        );
        assert_eq!(
            rfc5322_date(at(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
    }

    #[test]
    fn header_is_well_formed() {
        let trace = Trace {
            server: "pop.example.com",
            local_host: "box",
            protocol: "POP3",
            tls: true,
            account: "home",
            username: "alice\r\nBcc: x",
        };
        let header = trace.header(SystemTime::UNIX_EPOCH);
        assert_eq!(
            header,
            "Received: from pop.example.com\r\n\tby box with POP3 (TLS; mailfetch 0.1.0)\r\n\tfor <alice__Bcc: x> (account home); Thu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
    }
}
