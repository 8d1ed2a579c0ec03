//! The sans-IO half of the SMTP/LMTP client: reply parsing, EHLO capability
//! parsing, command formatting and the streaming DATA encoder. Nothing here
//! touches a socket, so all of it is tested with plain byte strings.

use std::fmt;

/// The longest reply line accepted. RFC 5321 allows 512 octets; servers
/// with long texts exist, but a line this long is a misbehaving server, not
/// a reason to grow memory without bound.
pub const MAX_LINE: usize = 8 * 1024;

/// The most lines one reply may have (an EHLO reply has a dozen).
pub const MAX_REPLY_LINES: usize = 128;

/// One complete (possibly multi-line) server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The text of each line, after the code and its separator.
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx (and 3xx, the intermediate "go ahead" replies, are not this).
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.code)
    }

    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The RFC 3463 enhanced status code (`5.1.1`) at the start of the
    /// first line, if the server sent one whose class matches the code.
    pub fn enhanced_status(&self) -> Option<String> {
        let first = self.lines.first()?;
        let word = first.split_ascii_whitespace().next()?;
        let mut parts = word.split('.');
        let class = parts.next()?;
        let subject = parts.next()?;
        let detail = parts.next()?;
        let valid = parts.next().is_none()
            && matches!(class, "2" | "4" | "5")
            && class.as_bytes()[0] - b'0' == (self.code / 100) as u8
            && (1..=3).contains(&subject.len())
            && (1..=3).contains(&detail.len())
            && subject
                .bytes()
                .chain(detail.bytes())
                .all(|b| b.is_ascii_digit());
        valid.then(|| word.to_owned())
    }
}

/// `250 2.0.0 Ok` (all lines joined with " / "), for logs and rejections.
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        for (index, line) in self.lines.iter().enumerate() {
            let separator = if index == 0 { " " } else { " / " };
            if !line.is_empty() {
                write!(f, "{separator}{line}")?;
            }
        }
        Ok(())
    }
}

/// Why a reply could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// A line that does not start with three digits and a space, a dash or
    /// its end.
    Malformed(String),
    /// A continuation line carries another code than the first line.
    CodeChanged { first: u16, then: u16 },
    /// More than [`MAX_REPLY_LINES`] lines.
    TooLong,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::Malformed(line) => write!(f, "malformed reply line {line:?}"),
            ReplyError::CodeChanged { first, then } => {
                write!(
                    f,
                    "a multi-line reply changed its code from {first} to {then}"
                )
            }
            ReplyError::TooLong => write!(f, "a reply of more than {MAX_REPLY_LINES} lines"),
        }
    }
}

/// Assembles replies from lines (without their CRLF).
#[derive(Debug, Default)]
pub struct ReplyParser {
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyParser {
    pub fn new() -> ReplyParser {
        ReplyParser::default()
    }

    /// Takes the next line; returns the reply once its last line is in.
    pub fn push(&mut self, line: &[u8]) -> Result<Option<Reply>, ReplyError> {
        let malformed = || ReplyError::Malformed(String::from_utf8_lossy(line).into_owned());
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) || line[0] < b'2' {
            return Err(malformed());
        }
        let code = u16::from(line[0] - b'0') * 100
            + u16::from(line[1] - b'0') * 10
            + u16::from(line[2] - b'0');
        let last = match line.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => return Err(malformed()),
        };
        match self.code {
            Some(first) if first != code => {
                return Err(ReplyError::CodeChanged { first, then: code });
            }
            _ => self.code = Some(code),
        }
        if self.lines.len() == MAX_REPLY_LINES {
            return Err(ReplyError::TooLong);
        }
        let text = line.get(4..).unwrap_or_default();
        self.lines.push(String::from_utf8_lossy(text).into_owned());
        if !last {
            return Ok(None);
        }
        self.code = None;
        Ok(Some(Reply {
            code,
            lines: std::mem::take(&mut self.lines),
        }))
    }
}

/// What an EHLO/LHLO reply announces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub pipelining: bool,
    /// `SIZE n` with n > 0; `SIZE` or `SIZE 0` means no fixed limit.
    pub size_limit: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    pub enhanced_status_codes: bool,
    /// The SASL mechanisms after `AUTH`, upper case.
    pub auth: Vec<String>,
}

impl Capabilities {
    /// Reads the lines of a 250 reply to EHLO (the first is the greeting
    /// and names the server, not a capability).
    pub fn parse(reply: &Reply) -> Capabilities {
        let mut capabilities = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => capabilities.pipelining = true,
                "SIZE" => {
                    capabilities.size_limit = words
                        .next()
                        .and_then(|n| n.parse::<u64>().ok())
                        .filter(|&n| n > 0)
                }
                "8BITMIME" => capabilities.eight_bit_mime = true,
                "SMTPUTF8" => capabilities.smtputf8 = true,
                "STARTTLS" => capabilities.starttls = true,
                "ENHANCEDSTATUSCODES" => capabilities.enhanced_status_codes = true,
                "AUTH" => capabilities
                    .auth
                    .extend(words.map(|word| word.to_ascii_uppercase())),
                _ => {}
            }
        }
        capabilities
    }
}

/// `MAIL FROM:<sender>[ BODY=8BITMIME][ SMTPUTF8]\r\n`; the sender is empty
/// for the null sender.
pub fn mail_from(sender: &str, eight_bit: bool, smtputf8: bool) -> Vec<u8> {
    let mut command = format!("MAIL FROM:<{sender}>");
    if eight_bit {
        command.push_str(" BODY=8BITMIME");
    }
    if smtputf8 {
        command.push_str(" SMTPUTF8");
    }
    command.push_str("\r\n");
    command.into_bytes()
}

/// `RCPT TO:<recipient>\r\n`.
pub fn rcpt_to(recipient: &str) -> Vec<u8> {
    format!("RCPT TO:<{recipient}>\r\n").into_bytes()
}

/// Turns a message in network or Unix form into the DATA stream: every
/// line end (CRLF, a bare LF or a bare CR) becomes CRLF, a dot at the start
/// of a line is doubled, and [`finish`](DataEncoder::finish) ends the last
/// line and adds the `.` terminator. State carries across calls, so chunks
/// may split a line, a CRLF or a leading dot anywhere; memory is the
/// caller's output buffer.
///
/// A bare CR is a line end too, because receivers disagree about it: one
/// that reads `\r.\r\n` as the end of the data while the relay did not
/// would take what follows as new SMTP commands (SMTP smuggling). Turning it
/// into CRLF (rather than dropping it) makes every receiver see the lines a
/// lenient one would have seen, and leaves none of the text glued together.
#[derive(Debug, Clone)]
pub struct DataEncoder {
    /// The next byte starts a line.
    at_line_start: bool,
    /// The last byte was a CR, already written out as CRLF: an LF right
    /// after it belongs to the same line end.
    after_cr: bool,
}

impl Default for DataEncoder {
    fn default() -> DataEncoder {
        DataEncoder {
            at_line_start: true,
            after_cr: false,
        }
    }
}

impl DataEncoder {
    pub fn new() -> DataEncoder {
        DataEncoder::default()
    }

    /// Appends the encoded form of `input` to `out`.
    pub fn encode(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + 16);
        while let Some(&first) = input.first() {
            if std::mem::take(&mut self.after_cr) && first == b'\n' {
                input = &input[1..];
                continue;
            }
            if self.at_line_start && first == b'.' {
                out.push(b'.');
            }
            // The hot path: copy up to (not including) the next line end at once.
            let end = memchr::memchr2(b'\r', b'\n', input).unwrap_or(input.len());
            if end > 0 {
                out.extend_from_slice(&input[..end]);
                self.at_line_start = false;
            }
            if end == input.len() {
                return;
            }
            out.extend_from_slice(b"\r\n");
            self.at_line_start = true;
            self.after_cr = input[end] == b'\r';
            input = &input[end + 1..];
        }
    }

    /// Ends the data: a line end if the message lacked a final one, then
    /// the `.` line.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        *self = DataEncoder::default();
    }
}

/// For protocol traces: a command line as it may be logged. AUTH payloads
/// (and the bare base64 lines answering a challenge) are masked.
pub fn loggable_command(command: &[u8], in_auth: bool) -> String {
    let text = String::from_utf8_lossy(command);
    let text = text.trim_end();
    if in_auth {
        return "****".to_owned();
    }
    let upper = text.to_ascii_uppercase();
    if let Some(rest) = upper.strip_prefix("AUTH ") {
        let mechanism = rest.split_ascii_whitespace().next().unwrap_or_default();
        let masked = if rest.split_ascii_whitespace().nth(1).is_some() {
            " ****"
        } else {
            ""
        };
        return format!("AUTH {mechanism}{masked}");
    }
    text.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(lines: &[&str]) -> Result<Vec<Reply>, ReplyError> {
        let mut parser = ReplyParser::new();
        let mut replies = Vec::new();
        for line in lines {
            if let Some(reply) = parser.push(line.as_bytes())? {
                replies.push(reply);
            }
        }
        Ok(replies)
    }

    #[test]
    fn single_and_multi_line_replies() {
        let replies = parse_all(&[
            "220 mx.example.org ESMTP",
            "250-mx.example.org",
            "250-PIPELINING",
            "250 SIZE 1000",
            "354",
        ])
        .unwrap();
        assert_eq!(replies.len(), 3);
        assert_eq!(replies[0].code, 220);
        assert_eq!(replies[0].lines, vec!["mx.example.org ESMTP"]);
        assert_eq!(replies[1].lines.len(), 3);
        assert_eq!(replies[2].code, 354);
        assert!(replies[2].is_intermediate());
        assert_eq!(replies[2].lines, vec![""]);
        assert_eq!(
            replies[1].to_string(),
            "250 mx.example.org / PIPELINING / SIZE 1000"
        );
    }

    #[test]
    fn malformed_replies_are_errors() {
        for line in ["", "25", "abc hello", "250+x", "099 no", "2x0 ok"] {
            assert!(
                matches!(
                    ReplyParser::new().push(line.as_bytes()),
                    Err(ReplyError::Malformed(_))
                ),
                "{line:?}"
            );
        }
        assert_eq!(
            parse_all(&["250-a", "251 b"]),
            Err(ReplyError::CodeChanged {
                first: 250,
                then: 251
            })
        );
        let mut parser = ReplyParser::new();
        let mut result = Ok(None);
        for _ in 0..=MAX_REPLY_LINES {
            result = parser.push(b"250-more");
        }
        assert_eq!(result, Err(ReplyError::TooLong));
    }

    #[test]
    fn enhanced_status_codes() {
        let reply = |code, text: &str| Reply {
            code,
            lines: vec![text.to_owned()],
        };
        assert_eq!(
            reply(550, "5.1.1 <bob@x>: unknown").enhanced_status(),
            Some("5.1.1".to_owned())
        );
        assert_eq!(
            reply(452, "4.3.1 full").enhanced_status(),
            Some("4.3.1".to_owned())
        );
        // The class must match the reply code's.
        assert_eq!(reply(550, "4.1.1 odd").enhanced_status(), None);
        assert_eq!(reply(550, "unknown user").enhanced_status(), None);
        assert_eq!(reply(550, "5.1 short").enhanced_status(), None);
        assert!(reply(250, "ok").is_success());
        assert!(reply(451, "later").is_transient());
        assert!(reply(554, "no").is_permanent());
    }

    #[test]
    fn ehlo_capabilities() {
        let reply = parse_all(&[
            "250-mx.example.org Hello",
            "250-pipelining",
            "250-SIZE 10240000",
            "250-8BITMIME",
            "250-SMTPUTF8",
            "250-STARTTLS",
            "250-ENHANCEDSTATUSCODES",
            "250 AUTH plain LOGIN xoauth2",
        ])
        .unwrap()
        .remove(0);
        let caps = Capabilities::parse(&reply);
        assert!(caps.pipelining && caps.eight_bit_mime && caps.smtputf8 && caps.starttls);
        assert!(caps.enhanced_status_codes);
        assert_eq!(caps.size_limit, Some(10_240_000));
        assert_eq!(caps.auth, vec!["PLAIN", "LOGIN", "XOAUTH2"]);

        let bare = parse_all(&["250-x", "250 SIZE"]).unwrap().remove(0);
        assert_eq!(Capabilities::parse(&bare).size_limit, None);
        // The greeting line is not a capability, whatever it says.
        let greeting = parse_all(&["250 PIPELINING"]).unwrap().remove(0);
        assert!(!Capabilities::parse(&greeting).pipelining);
    }

    fn encode_chunked(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut encoder = DataEncoder::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            encoder.encode(piece, &mut out);
        }
        encoder.finish(&mut out);
        out
    }

    #[test]
    fn the_encoder_stuffs_dots_and_normalises_line_ends_across_any_split() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
            (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"x\n.\n..y\r\n", b"x\r\n..\r\n...y\r\n.\r\n"),
            (b"no final newline", b"no final newline\r\n.\r\n"),
            (b"ends in CR\r", b"ends in CR\r\n.\r\n"),
            (b"bare\rCR\r\n", b"bare\r\nCR\r\n.\r\n"),
            (b"", b".\r\n"),
            (b"\n\n", b"\r\n\r\n.\r\n"),
            (b"a.b\n .c\n", b"a.b\r\n .c\r\n.\r\n"),
            (b"\xc3\xa9t\xc3\xa9\n", b"\xc3\xa9t\xc3\xa9\r\n.\r\n"),
        ];
        for (input, expected) in cases {
            for chunk in 1..=input.len().max(1) {
                assert_eq!(
                    encode_chunked(input, chunk),
                    *expected,
                    "{:?} in chunks of {chunk}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn a_bare_cr_ends_a_line_so_no_receiver_can_see_an_early_end_of_data() {
        let cases: &[(&[u8], &[u8])] = &[
            // The smuggling probe: a relay that took `\r.\r\n` as plain
            // text would pass it on to a receiver that ends the data there.
            (
                b"a\r.\r\nMAIL FROM:<x@y>\r\n",
                b"a\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n",
            ),
            (b"a\r\n.\rRSET\r\n", b"a\r\n..\r\nRSET\r\n.\r\n"),
            (b"a\n.\rb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b".\r.", b"..\r\n..\r\n.\r\n"),
            (b"\r", b"\r\n.\r\n"),
            (b"\r\r\n", b"\r\n\r\n.\r\n"),
            (b"x\n\r.\r\n", b"x\r\n\r\n..\r\n.\r\n"),
            (b"\n\r", b"\r\n\r\n.\r\n"),
        ];
        for (input, expected) in cases {
            for chunk in 1..=input.len() {
                assert_eq!(
                    encode_chunked(input, chunk),
                    *expected,
                    "{:?} in chunks of {chunk}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn the_encoder_round_trips_through_the_pop3_decoder() {
        // Whatever is encoded must decode (as a receiver would) to the
        // message with CRLF line ends.
        let message = b"From: a@b\nSubject: dots\n\n.\n..\n.x\r\nend".repeat(50);
        let mut wire = encode_chunked(&message, 7);
        let mut decoder = crate::source::pop3::codec::BodyDecoder::new();
        let step = decoder.decode(&mut wire);
        assert!(step.done);
        assert_eq!(step.consumed, wire.len());
        let mut expected = Vec::new();
        for line in message.split_inclusive(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            expected.extend_from_slice(line);
            expected.extend_from_slice(b"\r\n");
        }
        assert_eq!(&wire[..step.payload], &expected[..]);
    }

    #[test]
    fn commands() {
        assert_eq!(mail_from("", false, false), b"MAIL FROM:<>\r\n");
        assert_eq!(
            mail_from("a@b", true, true),
            b"MAIL FROM:<a@b> BODY=8BITMIME SMTPUTF8\r\n"
        );
        assert_eq!(rcpt_to("bob@example.org"), b"RCPT TO:<bob@example.org>\r\n");
    }

    #[test]
    fn traces_never_show_auth_payloads() {
        assert_eq!(
            loggable_command(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", false),
            "AUTH PLAIN ****"
        );
        assert_eq!(loggable_command(b"auth login\r\n", false), "AUTH LOGIN");
        assert_eq!(loggable_command(b"c2VjcmV0\r\n", true), "****");
        assert_eq!(
            loggable_command(b"MAIL FROM:<a@b>\r\n", false),
            "MAIL FROM:<a@b>"
        );
    }
}
