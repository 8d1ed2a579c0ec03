//! What sinks learn from a message's header block as it streams past: the
//! envelope sender (Return-Path) an MTA or MDA needs before the body, the
//! date an IMAP APPEND should carry, and the headers a bounce quotes.
//!
//! Only the header block is kept, and only up to [`MAX_HEADER_BYTES`]: a
//! message whose headers go on for longer is still delivered, just without
//! anything learnt from the part past the cap.

use mail_parser::{HeaderName, HeaderValue, MessageParser};

use crate::address::Sender;

/// The most of a header block that is kept. Real header blocks are a few
/// KiB; spam with thousands of Received lines stays well under this.
pub const MAX_HEADER_BYTES: usize = 256 * 1024;

/// Collects the header block of a message fed to it chunk by chunk.
#[derive(Debug, Default)]
pub struct HeaderCapture {
    headers: Vec<u8>,
    /// The blank line that ends the header block was seen, or the cap hit.
    complete: bool,
}

impl HeaderCapture {
    pub fn new() -> HeaderCapture {
        HeaderCapture::default()
    }

    /// Takes the next chunk of the message; returns how many of its bytes
    /// belong to the header block (all of them until the block ends).
    pub fn feed(&mut self, chunk: &[u8]) -> usize {
        if self.complete {
            return 0;
        }
        // The end may straddle chunks: look from a little before the new data.
        let start = self.headers.len().saturating_sub(3);
        let room = MAX_HEADER_BYTES - self.headers.len();
        let taken = chunk.len().min(room);
        self.headers.extend_from_slice(&chunk[..taken]);
        if let Some(end) = header_end(&self.headers[start..]) {
            let end = start + end;
            let consumed = end - (self.headers.len() - taken);
            self.headers.truncate(end);
            self.complete = true;
            return consumed;
        }
        if self.headers.len() == MAX_HEADER_BYTES {
            self.complete = true;
        }
        taken
    }

    /// Whether the whole header block (or as much as is kept) is here.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The header block, including its final blank line when it was seen.
    pub fn headers(&self) -> &[u8] {
        &self.headers
    }

    /// The envelope sender from the first (newest) Return-Path header:
    /// `Some(Sender::Null)` for `<>`, `None` when there is no usable one.
    pub fn return_path(&self) -> Option<Sender> {
        let value = self.first_field(b"return-path")?;
        Sender::parse(&String::from_utf8_lossy(&value))
    }

    /// The unfolded value of the first header field called `name`.
    fn first_field(&self, name: &[u8]) -> Option<Vec<u8>> {
        field_values(&self.headers, name).next()
    }

    /// When the message arrived, as best its headers tell: the date of the
    /// newest (topmost) Received header that has one, else the Date header.
    pub fn arrival_date(&self) -> Option<mail_parser::DateTime> {
        let message = MessageParser::new().parse_headers(&self.headers)?;
        message
            .headers()
            .iter()
            .find_map(|header| match (&header.name, &header.value) {
                (HeaderName::Received, HeaderValue::Received(received)) => received.date,
                _ => None,
            })
            .or_else(|| message.date().cloned())
    }
}

/// The unfolded values of the fields called `name` (lower case) in the
/// header block `headers`, in order.
fn field_values<'a>(headers: &'a [u8], name: &'a [u8]) -> impl Iterator<Item = Vec<u8>> + 'a {
    let mut lines = headers
        .split(|&byte| byte == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .take_while(|line| !line.is_empty())
        .peekable();
    std::iter::from_fn(move || {
        while let Some(line) = lines.next() {
            let Some(colon) = memchr::memchr(b':', line) else {
                continue;
            };
            if !line[..colon].trim_ascii().eq_ignore_ascii_case(name) {
                continue;
            }
            let mut value = line[colon + 1..].to_vec();
            while let Some(next) =
                lines.next_if(|next| next.starts_with(b" ") || next.starts_with(b"\t"))
            {
                value.extend_from_slice(next);
            }
            return Some(value);
        }
        None
    })
}

/// Why a message must not be answered automatically, if it must not
/// (RFC 3834): it says it was itself sent by a program (`Auto-Submitted`
/// other than `no`), or in bulk or to a list (`Precedence: bulk`, `junk`
/// or `list`). Spam with forged senders often says so too.
pub fn automatic_reply_forbidden(headers: &[u8]) -> Option<&'static str> {
    let auto_submitted = field_values(headers, b"auto-submitted").any(|value| {
        // `no`, possibly with a comment or parameters after it.
        let keyword = value
            .split(|&byte| matches!(byte, b';' | b'('))
            .next()
            .unwrap_or_default();
        !keyword.trim_ascii().eq_ignore_ascii_case(b"no")
    });
    if auto_submitted {
        return Some("it is marked as sent automatically (Auto-Submitted)");
    }
    let bulk = field_values(headers, b"precedence").any(|value| {
        let keyword = value.trim_ascii();
        [&b"bulk"[..], b"junk", b"list"]
            .iter()
            .any(|bulk| keyword.eq_ignore_ascii_case(bulk))
    });
    bulk.then_some("it was sent in bulk or to a list (Precedence)")
}

/// Where the blank line ending a header block ends, in `data`.
fn header_end(data: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(offset) = memchr::memchr(b'\n', &data[from..]) {
        let newline = from + offset;
        let rest = &data[newline + 1..];
        if rest.starts_with(b"\n") {
            return Some(newline + 2);
        }
        if rest.starts_with(b"\r\n") {
            return Some(newline + 3);
        }
        from = newline + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture_all(chunks: &[&[u8]]) -> (HeaderCapture, Vec<usize>) {
        let mut capture = HeaderCapture::new();
        let taken = chunks.iter().map(|chunk| capture.feed(chunk)).collect();
        (capture, taken)
    }

    #[test]
    fn the_header_block_ends_at_the_first_blank_line_even_across_chunks() {
        let (capture, taken) =
            capture_all(&[b"From: a@b\r\nSubject: x\r", b"\n\r", b"\nbody\r\n\r\n"]);
        assert!(capture.is_complete());
        assert_eq!(capture.headers(), b"From: a@b\r\nSubject: x\r\n\r\n");
        assert_eq!(taken, vec![22, 2, 1]);

        let (capture, _) = capture_all(&[b"From: a@b\n\nbody\n"]);
        assert_eq!(capture.headers(), b"From: a@b\n\n");
    }

    #[test]
    fn an_endless_header_block_is_capped() {
        let mut capture = HeaderCapture::new();
        let line = b"X-Spam: yes\r\n".repeat(1000);
        while !capture.is_complete() {
            capture.feed(&line);
        }
        assert_eq!(capture.headers().len(), MAX_HEADER_BYTES);
        assert_eq!(capture.feed(b"more"), 0);
    }

    #[test]
    fn return_path_forms() {
        let sender = |headers: &str| {
            let mut capture = HeaderCapture::new();
            capture.feed(headers.as_bytes());
            capture.return_path()
        };
        assert_eq!(
            sender("Return-Path: <alice@example.org>\r\nFrom: x@y\r\n\r\n"),
            Some(Sender::Address("alice@example.org".into()))
        );
        assert_eq!(
            sender("Return-Path: <>\r\nFrom: x@y\r\n\r\n"),
            Some(Sender::Null)
        );
        assert_eq!(sender("From: x@y\r\n\r\n"), None);
        assert_eq!(
            sender("Return-Path: <first@example.org>\r\nReturn-Path: <second@example.org>\r\n\r\n"),
            Some(Sender::Address("first@example.org".into()))
        );
        assert_eq!(
            sender("return-path:\r\n <folded@example.org>\r\n\r\n"),
            Some(Sender::Address("folded@example.org".into()))
        );
    }

    #[test]
    fn automatic_and_bulk_mail_must_not_be_answered() {
        for headers in [
            "Auto-Submitted: auto-generated\r\n\r\n",
            "auto-submitted: Auto-Replied (vacation)\r\n\r\n",
            "Auto-Submitted: auto-notified; owner-email=\"a@b\"\r\n\r\n",
            "Auto-Submitted:\r\n auto-generated\r\n\r\n",
            "Precedence: bulk\r\n\r\n",
            "Precedence: JUNK\r\n\r\n",
            "Subject: x\nPrecedence:  list \n\n",
            "Auto-Submitted: no\r\nAuto-Submitted: auto-generated\r\n\r\n",
        ] {
            assert!(
                automatic_reply_forbidden(headers.as_bytes()).is_some(),
                "{headers:?}"
            );
        }
        for headers in [
            "From: a@b\r\nSubject: hello\r\n\r\n",
            "Auto-Submitted: no\r\n\r\n",
            "Auto-Submitted: No (a human wrote this)\r\n\r\n",
            "Precedence: first-class\r\n\r\n",
            "X-Precedence: bulk\r\n\r\n",
            // Only the header block counts.
            "Subject: x\r\n\r\nPrecedence: bulk\r\n",
        ] {
            assert_eq!(
                automatic_reply_forbidden(headers.as_bytes()),
                None,
                "{headers:?}"
            );
        }
    }

    #[test]
    fn arrival_date_prefers_the_newest_received_header() {
        let mut capture = HeaderCapture::new();
        capture.feed(
            b"Received: from b by c; Tue, 3 Mar 2026 10:00:00 +0100\r\n\
              Received: from a by b; Mon, 2 Mar 2026 09:00:00 +0000\r\n\
              Date: Sun, 1 Mar 2026 08:00:00 +0000\r\n\r\n",
        );
        let date = capture.arrival_date().unwrap();
        assert_eq!(
            (date.year, date.month, date.day, date.hour),
            (2026, 3, 3, 10)
        );
        assert_eq!((date.tz_before_gmt, date.tz_hour), (false, 1));

        let mut capture = HeaderCapture::new();
        capture.feed(b"Date: Sun, 1 Mar 2026 08:00:00 -0500\r\n\r\n");
        let date = capture.arrival_date().unwrap();
        assert_eq!((date.day, date.tz_before_gmt, date.tz_hour), (1, true, 5));
    }
}
