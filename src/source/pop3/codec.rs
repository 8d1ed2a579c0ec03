//! The sans-IO half of the POP3 client: parsers for the server's replies and
//! the streaming decoder for multi-line bodies. Nothing here touches a
//! socket, so all of it is tested with plain byte strings.

/// The longest status or listing line we accept. RFC 2449 caps responses at
/// 512 octets; servers with long capability or error texts exist, so we allow
/// more, but a line this long is a misbehaving server, not a reason to grow
/// memory without bound.
pub const MAX_LINE: usize = 8 * 1024;

/// A single-line status reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok(String),
    Err(String),
}

/// Parses a status line (without its CRLF). `None` means it is neither
/// `+OK` nor `-ERR`, which is a protocol violation the caller reports.
pub fn parse_status(line: &[u8]) -> Option<Status> {
    let text = String::from_utf8_lossy(line);
    if let Some(rest) = strip_prefix_ci(&text, "+OK") {
        Some(Status::Ok(rest.trim_start().to_owned()))
    } else {
        strip_prefix_ci(&text, "-ERR").map(|rest| Status::Err(rest.trim_start().to_owned()))
    }
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    let rest = &text[prefix.len()..];
    // "+OKAY" is not "+OK": the status word must end the line or be followed by a space.
    (head.eq_ignore_ascii_case(prefix) && (rest.is_empty() || rest.starts_with(' ')))
        .then_some(rest)
}

/// The APOP timestamp (`<…@…>`) in a greeting, if the server offers APOP.
pub fn apop_timestamp(greeting: &str) -> Option<&str> {
    let start = greeting.find('<')?;
    let end = start + greeting[start..].find('>')?;
    let stamp = &greeting[start..=end];
    // RFC 1939 requires a msg-id; insisting on '@' avoids mistaking
    // "<banner text>" for a challenge.
    stamp.contains('@').then_some(stamp)
}

/// One line of a `UIDL` listing: message number and unique id.
pub fn parse_uidl_line(line: &[u8]) -> Option<(u32, String)> {
    let text = std::str::from_utf8(line).ok()?;
    let mut words = text.split_ascii_whitespace();
    let number = words.next()?.parse().ok()?;
    let uid = words.next()?;
    // RFC 1939: 1 to 70 characters in 0x21..0x7E. The state file relies on
    // the absence of white space; longer ids are tolerated but not spaces.
    (words.next().is_none() && !uid.is_empty() && uid.bytes().all(|b| (0x21..=0x7e).contains(&b)))
        .then(|| (number, uid.to_owned()))
}

/// One line of a `LIST` listing: message number and size in octets.
pub fn parse_list_line(line: &[u8]) -> Option<(u32, u64)> {
    let text = std::str::from_utf8(line).ok()?;
    let mut words = text.split_ascii_whitespace();
    let number = words.next()?.parse().ok()?;
    let size = words.next()?.parse().ok()?;
    Some((number, size))
}

/// Whether a line of a multi-line listing (not a message body) is the
/// terminating `.`.
pub fn is_terminator(line: &[u8]) -> bool {
    line == b"."
}

/// Removes byte-stuffing from a listing line (`..x` → `.x`).
pub fn unstuff_line(line: &[u8]) -> &[u8] {
    line.strip_prefix(b".").unwrap_or(line)
}

/// Streaming decoder for a multi-line body (the reply to RETR).
///
/// It removes the byte-stuffing dot at the start of lines and finds the
/// terminating `.CRLF` line, working in place on whatever chunk the socket
/// produced, so a message of any size passes through a fixed buffer. A line
/// end is LF with or without CR before it, since some servers send bare LFs.
///
/// Bare LFs are also how a message can end early: a server that passes them
/// through but byte-stuffs only after CRLF sends a sender's `LF . CRLF` as
/// it is, and that looks like the end of the message. The rest would then be
/// read as the replies to the next commands. So when the size the server
/// announced is known, a terminator right after a bare LF ends the message
/// only if that many octets have arrived (counting each bare LF as the CRLF
/// it stands for); otherwise the line is data.
#[derive(Debug, Default)]
pub struct BodyDecoder {
    state: DecodeState,
    /// The size LIST announced, in octets with CRLF line ends.
    announced: Option<u64>,
    /// Message octets decoded so far, each bare LF counted as two.
    received: u64,
    /// The last line ended in a bare LF.
    after_bare_lf: bool,
    /// The last input byte was a CR (for a CR LF split across chunks).
    last_was_cr: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum DecodeState {
    /// At the first byte of a line.
    #[default]
    LineStart,
    /// Inside a line.
    InLine,
    /// Saw a dot at the start of a line; the next bytes decide whether it
    /// is stuffing or the terminator.
    Dot,
    /// The terminator has been consumed.
    Done,
}

/// What [`BodyDecoder::decode`] did with a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes of input consumed (everything up to and including the
    /// terminator, or the whole buffer).
    pub consumed: usize,
    /// The first `payload` bytes of the buffer now hold decoded message data.
    pub payload: usize,
    /// The terminator was seen; the body is complete.
    pub done: bool,
}

impl BodyDecoder {
    pub fn new() -> BodyDecoder {
        BodyDecoder::default()
    }

    /// A decoder for a message the server announced as `size` octets.
    pub fn announced(size: Option<u64>) -> BodyDecoder {
        BodyDecoder {
            announced: size,
            ..BodyDecoder::default()
        }
    }

    /// Whether a terminator line at this point may be one: always, except
    /// right after a bare LF while the announced size is not reached.
    fn may_end(&self, written: usize) -> bool {
        !self.after_bare_lf
            || self
                .announced
                .is_none_or(|size| size <= self.received + written as u64)
    }

    /// Decodes `buf` in place. Bytes after the terminator are left alone
    /// (they belong to the next pipelined reply), and so is a CR right after
    /// a line-initial dot when the buffer ends there: whether it starts the
    /// terminator is only known with the next byte, so the caller keeps it
    /// and offers it again with more data.
    pub fn decode(&mut self, buf: &mut [u8]) -> Decoded {
        let mut read = 0;
        let mut write = 0;
        while read < buf.len() {
            match self.state {
                DecodeState::Done => break,
                DecodeState::InLine => {
                    // The hot path: copy (usually: leave in place) up to the end of line.
                    let end = match memchr::memchr(b'\n', &buf[read..]) {
                        Some(offset) => {
                            let lf = read + offset;
                            let after_cr = if lf > read {
                                buf[lf - 1] == b'\r'
                            } else {
                                self.last_was_cr
                            };
                            self.after_bare_lf = !after_cr;
                            // A bare LF stands for a CRLF in the announced size.
                            self.received += u64::from(!after_cr);
                            self.state = DecodeState::LineStart;
                            lf + 1
                        }
                        None => buf.len(),
                    };
                    self.last_was_cr = buf[end - 1] == b'\r';
                    if write != read {
                        buf.copy_within(read..end, write);
                    }
                    write += end - read;
                    read = end;
                }
                DecodeState::LineStart => {
                    if buf[read] != b'.' {
                        self.state = DecodeState::InLine;
                        continue;
                    }
                    if self.after_bare_lf && !self.may_end(write) {
                        // Too early to end: a terminator here is a line of
                        // data, dot included. Looking ahead, not consuming,
                        // keeps the dot in the buffer until that is known.
                        match (buf.get(read + 1), buf.get(read + 2)) {
                            (None, _) | (Some(b'\r'), None) => break,
                            (Some(b'\n'), _) | (Some(b'\r'), Some(b'\n')) => {
                                buf[write] = b'.';
                                write += 1;
                                read += 1;
                                self.last_was_cr = false;
                                self.state = DecodeState::InLine;
                                continue;
                            }
                            _ => {}
                        }
                    }
                    self.state = DecodeState::Dot;
                    self.last_was_cr = false;
                    read += 1;
                }
                DecodeState::Dot => match (buf[read], buf.get(read + 1)) {
                    (b'\r', Some(b'\n')) => {
                        self.state = DecodeState::Done;
                        read += 2;
                    }
                    (b'\r', None) => break,
                    (b'\n', _) => {
                        self.state = DecodeState::Done;
                        read += 1;
                    }
                    // A stuffed dot: it was dropped, the rest of the line
                    // (even a bare CR) is data.
                    _ => self.state = DecodeState::InLine,
                },
            }
        }
        self.received += write as u64;
        Decoded {
            consumed: read,
            payload: write,
            done: self.state == DecodeState::Done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` to a decoder in chunks of `chunk` bytes and returns the
    /// payload and how many input bytes were consumed.
    fn decode_chunked(input: &[u8], chunk: usize) -> (Vec<u8>, usize, bool) {
        decode_announced(input, chunk, None)
    }

    fn decode_announced(
        input: &[u8],
        chunk: usize,
        announced: Option<u64>,
    ) -> (Vec<u8>, usize, bool) {
        let mut decoder = BodyDecoder::announced(announced);
        let mut out = Vec::new();
        let mut consumed = 0;
        // Like the client's read buffer: unconsumed bytes stay and more are appended.
        let mut buf = Vec::new();
        for piece in input.chunks(chunk) {
            buf.extend_from_slice(piece);
            let step = decoder.decode(&mut buf);
            out.extend_from_slice(&buf[..step.payload]);
            consumed += step.consumed;
            buf.drain(..step.consumed);
            if step.done {
                return (out, consumed, true);
            }
        }
        (out, consumed, false)
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"+OK ready"), Some(Status::Ok("ready".into())));
        assert_eq!(parse_status(b"+OK"), Some(Status::Ok("".into())));
        assert_eq!(
            parse_status(b"-ERR no such message"),
            Some(Status::Err("no such message".into()))
        );
        assert_eq!(parse_status(b"+ok lower"), Some(Status::Ok("lower".into())));
        assert_eq!(parse_status(b"+OKAY"), None);
        assert_eq!(parse_status(b"* OK imap"), None);
        assert_eq!(parse_status(b""), None);
    }

    #[test]
    fn apop_timestamps() {
        assert_eq!(
            apop_timestamp("POP3 server ready <1896.697170952@dbc.mtview.ca.us>"),
            Some("<1896.697170952@dbc.mtview.ca.us>")
        );
        assert_eq!(apop_timestamp("Dovecot ready."), None);
        assert_eq!(apop_timestamp("ready <no at sign>"), None);
        assert_eq!(apop_timestamp("ready <unterminated@x"), None);
    }

    #[test]
    fn listing_lines() {
        assert_eq!(
            parse_uidl_line(b"1 whqtswO00WBw418f9t5JxYwZ"),
            Some((1, "whqtswO00WBw418f9t5JxYwZ".into()))
        );
        assert_eq!(parse_uidl_line(b"2"), None);
        assert_eq!(parse_uidl_line(b"x abc"), None);
        assert_eq!(parse_uidl_line(b"3 abc def"), None);
        assert_eq!(parse_uidl_line(b"4 ab\x01c"), None);
        assert_eq!(parse_list_line(b"1 120"), Some((1, 120)));
        assert_eq!(parse_list_line(b"1 -5"), None);
        assert_eq!(parse_list_line(b"1 99999999999999999999999"), None);
        assert!(is_terminator(b"."));
        assert!(!is_terminator(b".."));
        assert_eq!(unstuff_line(b"..x"), b".x");
    }

    #[test]
    fn body_unstuffs_and_stops_at_terminator() {
        let wire = b"Subject: x\r\n\r\n..leading dot\r\n.\r\n+OK next reply\r\n";
        for chunk in 1..wire.len() {
            let (out, consumed, done) = decode_chunked(wire, chunk);
            assert!(done, "chunk size {chunk}");
            assert_eq!(
                out, b"Subject: x\r\n\r\n.leading dot\r\n",
                "chunk size {chunk}"
            );
            assert_eq!(
                &wire[consumed..],
                b"+OK next reply\r\n",
                "chunk size {chunk}"
            );
        }
    }

    #[test]
    fn body_edge_cases() {
        // Empty body.
        assert_eq!(decode_chunked(b".\r\n", 1), (vec![], 3, true));
        // Bare LF line ends.
        assert_eq!(
            decode_chunked(b"a\n..b\n.\n", 2),
            (b"a\n.b\n".to_vec(), 8, true)
        );
        // A dot inside a line is data; a line of two dots is a line of one.
        assert_eq!(
            decode_chunked(b"a.b\r\n..\r\n.\r\n", 3),
            (b"a.b\r\n.\r\n".to_vec(), 12, true)
        );
        // ".\rX" at line start: stuffed dot then a bare CR.
        assert_eq!(
            decode_chunked(b".\rX\r\n.\r\n", 1),
            (b"\rX\r\n".to_vec(), 8, true)
        );
    }

    /// A server that passes bare LFs and stuffs only after CRLF sends a
    /// sender's `LF . CRLF` unchanged. Knowing the announced size, the
    /// decoder reads it as data, and the message ends where it really does.
    #[test]
    fn a_bare_lf_terminator_before_the_announced_size_is_data() {
        let message = b"Subject: x\r\n\r\nfirst\n.\r\nRETR-smuggled\r\n";
        let mut wire = message.to_vec();
        wire.extend_from_slice(b".\r\n+OK next\r\n");
        // LIST counts the bare LF as CRLF.
        let announced = Some(message.len() as u64 + 1);
        for chunk in 1..wire.len() {
            let (out, consumed, done) = decode_announced(&wire, chunk, announced);
            assert!(done, "chunk size {chunk}");
            assert_eq!(out, message, "chunk size {chunk}");
            assert_eq!(&wire[consumed..], b"+OK next\r\n", "chunk size {chunk}");
        }
        // Without a size, or once the size is reached, it ends the message.
        let (out, ..) = decode_announced(&wire, 7, None);
        assert_eq!(out, b"Subject: x\r\n\r\nfirst\n");
        let lf_only = b"a\nb\n.\n";
        assert_eq!(decode_announced(lf_only, 1, Some(6)).0, b"a\nb\n");
        // A server that counts bare LFs as one octet.
        assert_eq!(decode_announced(lf_only, 1, Some(4)).0, b"a\nb\n");
    }

    #[test]
    fn body_cut_short_is_not_done() {
        let (out, consumed, done) = decode_chunked(b"line one\r\nline two\r\n.", 4);
        assert!(!done);
        assert_eq!(out, b"line one\r\nline two\r\n");
        assert_eq!(consumed, 21);
        // A CR after a line-initial dot waits for the next byte.
        let mut decoder = BodyDecoder::new();
        let mut buf = b"x\r\n.\r".to_vec();
        assert_eq!(
            decoder.decode(&mut buf),
            Decoded {
                consumed: 4,
                payload: 3,
                done: false
            }
        );
        // "\r\n." followed by EOF, or a terminator missing its LF, is not an end either.
        assert!(!decode_chunked(b"x\r\n.\r", 1).2);
    }
}
