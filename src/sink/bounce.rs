//! Delivery status notifications (RFC 3464) for `on_reject = "bounce"`: a
//! message the destination refused for good is reported to its envelope
//! sender, then deleted from the source server.
//!
//! [`compose`] builds the bounce; the SMTP client sends it
//! ([`send_bounce`](crate::sink::smtp::send_bounce)), through the configured
//! SMTP server with the null sender `MAIL FROM:<>`, so that a bounce can
//! never cause another bounce. This module only composes, and the SMTP
//! client knows nothing of it: the dependency runs one way.
//!
//! The caller must never bounce a message whose envelope sender was the
//! null sender (`Rejection::sender` is `None` then): RFC 5321 §6.1 forbids
//! it, since bounces of bounces can loop forever.

use std::time::{SystemTime, UNIX_EPOCH};

use super::Rejection;
use crate::received::rfc5322_date;

/// The longest diagnostic quoted, so every line stays far below the 998
/// octets RFC 5322 allows.
const MAX_DIAGNOSTIC: usize = 800;

/// A `multipart/report; report-type=delivery-status` message telling
/// `rejection.sender` that the message was not delivered to `recipients`,
/// with the server's reason and the message's header block.
pub fn compose(
    rejection: &Rejection,
    recipients: &[String],
    reporting_host: &str,
    now: SystemTime,
) -> Vec<u8> {
    let host = one_line(reporting_host, 255);
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let headers = normalize_headers(&rejection.headers);
    let mut boundary = format!(
        "=_mailfetch_{}_{:09}_{}",
        since_epoch.as_secs(),
        since_epoch.subsec_nanos(),
        std::process::id()
    );
    // The boundary must not occur in the quoted headers.
    while memchr::memmem::find(&headers, boundary.as_bytes()).is_some() {
        boundary.push('x');
    }
    let diagnostic = one_line(&rejection.reason, MAX_DIAGNOSTIC);
    let status = status_code(&rejection.reason);
    let to = match &rejection.sender {
        Some(sender) => format!("<{}>", one_line(sender, 256)),
        None => "undisclosed-recipients:;".to_owned(),
    };
    let recipients: Vec<String> = recipients.iter().map(|r| one_line(r, 256)).collect();

    let mut out = String::new();
    out.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n\
         To: {to}\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <{secs}.{nanos:09}.{pid}.bounce@{host}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n \
         boundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated delivery status notification.\r\n\
         \r\n",
        date = rfc5322_date(now),
        secs = since_epoch.as_secs(),
        nanos = since_epoch.subsec_nanos(),
        pid = std::process::id(),
    ));

    out.push_str(&format!(
        "--{boundary}\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         Content-Description: Notification\r\n\
         \r\n\
         This is mailfetch at {host}.\r\n\
         \r\n\
         A message sent by you was fetched from a mailbox and forwarded, and\r\n\
         the destination refused it for good. It could not be delivered to:\r\n\
         \r\n"
    ));
    for recipient in &recipients {
        out.push_str(&format!("    <{recipient}>\r\n"));
    }
    out.push_str(&format!(
        "\r\n\
         The destination answered:\r\n\
         \r\n    {diagnostic}\r\n\
         \r\n\
         The message's headers are attached. The message has been removed.\r\n\
         \r\n"
    ));

    out.push_str(&format!(
        "--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         Content-Description: Delivery report\r\n\
         \r\n\
         Reporting-MTA: dns; {host}\r\n"
    ));
    for recipient in &recipients {
        out.push_str(&format!(
            "\r\n\
             Final-Recipient: rfc822; {recipient}\r\n\
             Action: failed\r\n\
             Status: {status}\r\n\
             Diagnostic-Code: smtp; {diagnostic}\r\n"
        ));
    }
    out.push_str(&format!(
        "\r\n--{boundary}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         Content-Description: Undelivered message headers\r\n\
         \r\n"
    ));
    let mut message = out.into_bytes();
    message.extend_from_slice(&headers);
    message.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    message
}

/// The RFC 3463 status for the report: the enhanced code in the reason
/// (`550 5.1.1 …`) if it is a permanent one, else `5.0.0`.
fn status_code(reason: &str) -> String {
    let mut words = reason.split_ascii_whitespace();
    let _code = words.next();
    let Some(word) = words.next() else {
        return "5.0.0".to_owned();
    };
    let parts: Vec<&str> = word.split('.').collect();
    let valid = parts.len() == 3
        && parts[0] == "5"
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    if valid {
        word.to_owned()
    } else {
        "5.0.0".to_owned()
    }
}

/// Text fit for one header or report line: printable ASCII only (anything
/// else becomes `?` or a space), at most `max` characters.
fn one_line(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| match c {
            ' '..='~' => c,
            c if c.is_whitespace() => ' ',
            _ => '?',
        })
        .take(max)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// The header block with CRLF line ends and no trailing blank line. A bare
/// CR ends a line too, as in the DATA stream (see
/// [`DataEncoder`](super::smtp::codec::DataEncoder)), so the quoted headers
/// hold no line end that receivers could read differently.
fn normalize_headers(headers: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.len() + 64);
    let mut rest = headers;
    while !rest.is_empty() {
        let end = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
        if end == 0 {
            // The blank line that ended the block.
            break;
        }
        out.extend_from_slice(&rest[..end]);
        out.extend_from_slice(b"\r\n");
        let line_end = if rest[end..].starts_with(b"\r\n") {
            2
        } else {
            1
        };
        rest = rest.get(end + line_end..).unwrap_or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mail_parser::{MessageParser, MimeHeaders, PartType};

    use super::*;

    fn rejection() -> Rejection {
        Rejection {
            reason: "550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown (after RCPT TO:<bob@example.org>)".to_owned(),
            sender: Some("alice@example.net".to_owned()),
            headers: b"Return-Path: <alice@example.net>\r\nFrom: Alice <alice@example.net>\r\nSubject: hello\r\nMessage-ID: <m1@example.net>\r\n\r\n".to_vec(),
        }
    }

    #[test]
    fn status_comes_from_the_enhanced_code() {
        assert_eq!(status_code("550 5.1.1 unknown"), "5.1.1");
        assert_eq!(status_code("552 5.3.4 too big"), "5.3.4");
        assert_eq!(status_code("550 unknown user"), "5.0.0");
        assert_eq!(status_code("554 4.0.0 odd"), "5.0.0");
        assert_eq!(status_code(""), "5.0.0");
    }

    #[test]
    fn the_report_parses_back_as_rfc3464() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_310_831);
        let recipients = ["bob@example.org".to_owned(), "carol@example.org".to_owned()];
        let bytes = compose(&rejection(), &recipients, "mx.example.test", now);
        assert!(bytes.is_ascii());
        let text = String::from_utf8(bytes.clone()).unwrap();
        // Every line ends in CRLF and none is overlong.
        assert!(!text.replace("\r\n", "").contains('\n'));
        assert!(text.split("\r\n").all(|line| line.len() <= 998));

        let message = MessageParser::new().parse(&bytes).unwrap();
        assert_eq!(
            message.from().unwrap().first().unwrap().address(),
            Some("MAILER-DAEMON@mx.example.test")
        );
        assert_eq!(
            message.to().unwrap().first().unwrap().address(),
            Some("alice@example.net")
        );
        assert_eq!(message.date().unwrap().to_rfc3339(), "2026-11-22T01:27:11Z");
        let content_type = message.content_type().unwrap();
        assert_eq!(content_type.ctype(), "multipart");
        assert_eq!(content_type.subtype(), Some("report"));
        assert_eq!(
            content_type.attribute("report-type"),
            Some("delivery-status")
        );

        let root = &message.parts[0];
        let PartType::Multipart(children) = &root.body else {
            panic!("not multipart: {:?}", root.body);
        };
        assert_eq!(children.len(), 3);
        let part = |i: usize| &message.parts[children[i] as usize];
        let subtype = |i: usize| {
            let ct = part(i).content_type().unwrap();
            format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default())
        };
        assert_eq!(subtype(0), "text/plain");
        assert_eq!(subtype(1), "message/delivery-status");
        assert_eq!(subtype(2), "text/rfc822-headers");

        let human = String::from_utf8_lossy(part(0).contents());
        assert!(human.contains("<bob@example.org>") && human.contains("User unknown"));

        let report = String::from_utf8_lossy(part(1).contents()).into_owned();
        assert!(
            report.starts_with("Reporting-MTA: dns; mx.example.test\r\n\r\n"),
            "{report}"
        );
        for recipient in &recipients {
            assert!(report.contains(&format!(
                "Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 <bob@example.org>: Recipient address rejected"
            )), "{report}");
        }
        let quoted = String::from_utf8_lossy(part(2).contents());
        assert!(quoted.contains("Subject: hello\r\nMessage-ID: <m1@example.net>"));
    }

    #[test]
    fn quoted_headers_have_no_bare_cr() {
        let mut rejection = rejection();
        rejection.headers =
            b"Subject: a\r.\r\nX-Smuggled: b\rFrom: c\nTo: d\r\n\r\nbody\r\n".to_vec();
        let bytes = compose(&rejection, &["me@x".to_owned()], "h", SystemTime::now());
        let bare_cr = bytes
            .iter()
            .enumerate()
            .any(|(at, &byte)| byte == b'\r' && bytes.get(at + 1) != Some(&b'\n'));
        assert!(!bare_cr, "{}", String::from_utf8_lossy(&bytes));
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains("\r\n\r\nSubject: a\r\n.\r\nX-Smuggled: b\r\nFrom: c\r\nTo: d\r\n\r\n--"),
            "{text}"
        );
    }

    #[test]
    fn hostile_reasons_cannot_add_headers_or_lines() {
        let mut rejection = rejection();
        rejection.reason = format!("550 evil\r\nBcc: x@y\r\n{}", "z".repeat(5000));
        rejection.sender = Some("a@b\r\nBcc: c@d".to_owned());
        let bytes = compose(
            &rejection,
            &["me@x".to_owned()],
            "h\r\nX: y",
            SystemTime::now(),
        );
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains("\r\nBcc:"));
        assert!(!text.contains("\r\nX: y"));
        assert!(text.split("\r\n").all(|line| line.len() <= 998));
    }
}
