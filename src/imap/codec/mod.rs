//! The sans-IO half of the IMAP client: framing of server responses into
//! parts (text and literals) and parsing of the responses mailfetch uses.
//!
//! The client reads a response as a run of CRLF-terminated text parts,
//! each but the last ending in a literal announcement `{N}`. It asks
//! [`literal_len`] how big the literal is and [`is_message_body`] whether
//! it is a message body, which it streams to a sink instead of keeping
//! ([`Part::Streamed`]). [`parse`] then turns the parts into a [`Response`].

use std::fmt;

use crate::source::MAX_MESSAGES;

mod idle;
pub use idle::{Idle, IdleEvent};

/// The longest text part accepted. A `SEARCH` result names every message
/// of a mailbox on one line, so this is far above RFC limits for other
/// lines, but still a bound a misbehaving server cannot push us past.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// The largest literal kept in memory (header fields, quoted data); a
/// server announcing more for anything but a message body is refused.
pub const MAX_SMALL_LITERAL: u64 = 1024 * 1024;

/// The most bytes of one response kept in memory, lines and small
/// literals together (streamed bodies are not kept): a response of chained
/// literals must not grow without bound.
pub const MAX_RESPONSE: usize = MAX_LINE;

/// The most parts (lines and literals) in one response; a FETCH mailfetch
/// sends gets three.
pub const MAX_PARTS: usize = 256;

/// The longest status response (`OK`, `NO`, `BYE`… with its code and text)
/// or `CAPABILITY` list kept: these are copied into strings, and no real
/// one comes near.
pub const MAX_STATUS_LINE: usize = 64 * 1024;

/// The most distinct capabilities, or flags on one message, kept.
pub const MAX_WORDS: usize = 1024;

/// Counts what one response costs in memory as it is read, so that a
/// server cannot make a response of unbounded size or number of parts.
#[derive(Debug, Default)]
pub struct ResponseBudget {
    bytes: usize,
    parts: usize,
}

impl ResponseBudget {
    /// Accounts for a part of `len` bytes kept in memory.
    pub fn keep(&mut self, len: usize) -> Result<(), ParseError> {
        self.bytes = self.bytes.saturating_add(len);
        self.parts += 1;
        if self.bytes > MAX_RESPONSE {
            return Err(ParseError::new("response longer than 16 MiB", b""));
        }
        if self.parts > MAX_PARTS {
            return Err(ParseError::new("response with too many literals", b""));
        }
        Ok(())
    }
}

/// One piece of a response as read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// A line without its CRLF (ending in `{N}` if a literal follows).
    Text(Vec<u8>),
    /// A literal kept in memory.
    Literal(Vec<u8>),
    /// A literal of this many bytes, streamed elsewhere.
    Streamed(u64),
}

/// The size of the literal announced at the end of `line`, if any.
/// `Err` when the announcement is malformed or absurd (over `u64`).
pub fn literal_len(line: &[u8]) -> Result<Option<u64>, ParseError> {
    let Some(inner) = line.strip_suffix(b"}") else {
        return Ok(None);
    };
    let Some(open) = inner.iter().rposition(|&b| b == b'{') else {
        return Ok(None);
    };
    let digits = &inner[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        // "{" in text, e.g. a human-readable message: not a literal.
        return Ok(None);
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .map(Some)
        .ok_or_else(|| ParseError::new("literal size out of range", line))
}

/// Whether the literal announced at the end of `line` is the value of a
/// fetch item that is a whole message (see [`is_whole_message`]).
pub fn is_message_body(line: &[u8]) -> bool {
    let Some(open) = line.iter().rposition(|&b| b == b'{') else {
        return false;
    };
    let before = line[..open].trim_ascii_end();
    let item = match before.iter().rposition(|&b| b == b' ' || b == b'(') {
        Some(start) => &before[start + 1..],
        None => before,
    };
    is_whole_message(item)
}

/// Whether a FETCH item name carries a whole message: `BODY[]`, `RFC822`,
/// or `BODY[]<0>` (a partial fetch from origin 0, which some servers use
/// to answer `BODY.PEEK[]`). `BODY[]<5>` is only part of one. The client's
/// choice to stream a literal and the parser's to report it as the body
/// both rest on this one test, so they cannot disagree.
pub fn is_whole_message(item: &[u8]) -> bool {
    [&b"BODY[]"[..], b"BODY[]<0>", b"RFC822"]
        .iter()
        .any(|name| item.eq_ignore_ascii_case(name))
}

/// Whether a FETCH item name is a body section or part (`BODY[…]`,
/// `BINARY[…]`, `RFC822.TEXT`…) other than the ones mailfetch reads, so
/// that a response carrying one instead of the message can say so.
fn is_other_body_item(item: &str) -> bool {
    let upper = item.to_ascii_uppercase();
    !upper.starts_with("BODY[HEADER.FIELDS")
        && (upper.starts_with("BODY[")
            || upper.starts_with("BINARY[")
            || upper.starts_with("RFC822."))
        && upper != "RFC822.SIZE"
}

/// The UID a FETCH line names before its literal (`… UID 42 BODY[] {n}`),
/// so a body's announced size can be checked before a byte of it is read.
pub fn uid_in(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let mut words = text.split([' ', '(']);
    while let Some(word) = words.next() {
        if word.eq_ignore_ascii_case("UID") {
            return words.next()?.parse().ok();
        }
    }
    None
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub what: &'static str,
    pub near: String,
}

impl ParseError {
    fn new(what: &'static str, near: &[u8]) -> ParseError {
        ParseError {
            what,
            near: String::from_utf8_lossy(&near[..near.len().min(120)]).into_owned(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} near {:?}", self.what, self.near)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
    Bye,
    Preauth,
}

/// A response code: `[NAME args]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    /// Upper-cased name, e.g. `UIDVALIDITY`.
    pub name: String,
    /// Everything after the name, verbatim.
    pub args: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// `+ …`: the server waits for more from us.
    Continue(Vec<u8>),
    Tagged {
        tag: String,
        status: Status,
        code: Option<Code>,
        text: String,
    },
    Untagged(Untagged),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Untagged {
    Status {
        status: Status,
        code: Option<Code>,
        text: String,
    },
    Capability(Vec<String>),
    Exists(u32),
    Expunge(u32),
    /// `SEARCH` or `ESEARCH … ALL`: the matching numbers.
    Search(Vec<u32>),
    Fetch {
        seq: u32,
        attrs: Fetch,
    },
    /// `STATUS mailbox (…)`: the counters of a mailbox not selected. The
    /// mailbox name is not kept: mailfetch has one STATUS in flight at a
    /// time and asks for no unsolicited ones.
    MailboxStatus(MailboxStatus),
    /// Anything mailfetch has no use for (FLAGS, LIST, RECENT, ENABLED…).
    Other,
}

/// The items of a `STATUS` response (RFC 3501 6.3.10, RFC 7162's
/// HIGHESTMODSEQ) that mailfetch asks for; `None` for one the server did
/// not send. Other items are skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailboxStatus {
    pub messages: Option<u32>,
    pub uidnext: Option<u32>,
    pub uidvalidity: Option<u32>,
    pub highestmodseq: Option<u64>,
}

/// The items of a FETCH response mailfetch asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetch {
    pub uid: Option<u32>,
    pub size: Option<u64>,
    pub flags: Option<Vec<String>>,
    /// `BODY[]` streamed: its length. `Some(None)` for `BODY[] NIL`.
    pub body: Option<Option<u64>>,
    /// `BODY[HEADER.FIELDS (…)]`
    pub header_fields: Option<Vec<u8>>,
    /// Body items other than a whole message (`BODY[]<5>`, `BINARY[]`…),
    /// by name, to say what the server sent instead of the message.
    pub other_bodies: Vec<String>,
}

impl Fetch {
    pub fn is_seen(&self) -> bool {
        self.flags
            .as_ref()
            .is_some_and(|flags| flags.iter().any(|f| f.eq_ignore_ascii_case("\\Seen")))
    }
}

/// Parses one complete response.
pub fn parse(parts: &[Part]) -> Result<Response, ParseError> {
    let mut lexer = Lexer::new(parts);
    let first = lexer.atom()?;
    match first.as_str() {
        "+" => Ok(Response::Continue(lexer.rest().to_vec())),
        "*" => {
            lexer.space()?;
            parse_untagged(&mut lexer).map(Response::Untagged)
        }
        tag => {
            lexer.space()?;
            let status =
                parse_status(&lexer.atom()?).ok_or_else(|| lexer.error("unknown status"))?;
            let (code, text) = parse_resp_text(&mut lexer)?;
            Ok(Response::Tagged {
                tag: tag.to_owned(),
                status,
                code,
                text,
            })
        }
    }
}

fn parse_status(word: &str) -> Option<Status> {
    Some(match word.to_ascii_uppercase().as_str() {
        "OK" => Status::Ok,
        "NO" => Status::No,
        "BAD" => Status::Bad,
        "BYE" => Status::Bye,
        "PREAUTH" => Status::Preauth,
        _ => return None,
    })
}

fn parse_untagged(lexer: &mut Lexer) -> Result<Untagged, ParseError> {
    let word = lexer.atom()?;
    if let Ok(number) = word.parse::<u32>() {
        lexer.space()?;
        let what = lexer.atom()?.to_ascii_uppercase();
        return match what.as_str() {
            "EXISTS" => Ok(Untagged::Exists(number)),
            "EXPUNGE" => Ok(Untagged::Expunge(number)),
            "FETCH" => {
                lexer.space()?;
                Ok(Untagged::Fetch {
                    seq: number,
                    attrs: parse_fetch(lexer)?,
                })
            }
            _ => Ok(Untagged::Other),
        };
    }
    let upper = word.to_ascii_uppercase();
    if let Some(status) = parse_status(&upper) {
        let (code, text) = parse_resp_text(lexer)?;
        return Ok(Untagged::Status { status, code, text });
    }
    match upper.as_str() {
        "CAPABILITY" => {
            let text = lexer.short_rest()?;
            capabilities(&text).map(Untagged::Capability)
        }
        "SEARCH" => {
            let mut numbers = Vec::new();
            // Straight from the line's bytes: a SEARCH result can be
            // megabytes long, and is not copied.
            for word in lexer.rest().split(u8::is_ascii_whitespace) {
                // A trailing "(MODSEQ n)" from CONDSTORE ends the list.
                if word.starts_with(b"(") {
                    break;
                }
                if word.is_empty() {
                    continue;
                }
                if numbers.len() == MAX_MESSAGES {
                    return Err(lexer.error("more SEARCH results than messages in a mailbox"));
                }
                let number = std::str::from_utf8(word).ok().and_then(|w| w.parse().ok());
                numbers.push(number.ok_or_else(|| lexer.error("bad number in SEARCH"))?);
            }
            Ok(Untagged::Search(numbers))
        }
        "ESEARCH" => {
            let text = String::from_utf8_lossy(lexer.rest());
            parse_esearch(&text).ok_or_else(|| lexer.error("bad ESEARCH"))
        }
        "STATUS" => {
            lexer.space()?;
            // The mailbox: an atom, a quoted string or a literal.
            lexer.skip_value()?;
            lexer.space()?;
            parse_status_items(lexer).map(Untagged::MailboxStatus)
        }
        _ => Ok(Untagged::Other),
    }
}

/// A capability list, upper-cased, each capability once, in order.
/// `Err` past [`MAX_WORDS`] distinct ones.
pub fn capabilities(text: &str) -> Result<Vec<String>, ParseError> {
    distinct_words(text.split_ascii_whitespace().map(str::to_ascii_uppercase))
        .ok_or_else(|| ParseError::new("too many capabilities", text.as_bytes()))
}

/// The words, each once, in order; `None` past [`MAX_WORDS`] distinct ones.
/// Repeating a word a million times costs nothing.
fn distinct_words(words: impl Iterator<Item = String>) -> Option<Vec<String>> {
    let mut seen = std::collections::HashSet::new();
    let mut distinct = Vec::new();
    for word in words {
        if !seen.contains(&word) {
            if distinct.len() == MAX_WORDS {
                return None;
            }
            seen.insert(word.clone());
            distinct.push(word);
        }
    }
    Some(distinct)
}

/// `(TAG "x") UID ALL 1:5,7` → the numbers in ALL (none if absent).
fn parse_esearch(text: &str) -> Option<Untagged> {
    let mut words = text.split_ascii_whitespace().peekable();
    if words.peek().is_some_and(|w| w.starts_with('(')) {
        // The correlator, up to its closing parenthesis.
        for word in words.by_ref() {
            if word.ends_with(')') {
                break;
            }
        }
    }
    let mut numbers = Vec::new();
    while let Some(word) = words.next() {
        if word.eq_ignore_ascii_case("ALL") {
            numbers = parse_sequence_set(words.next()?)?;
        }
    }
    Some(Untagged::Search(numbers))
}

/// `1:3,7` → [1, 2, 3, 7]. Refuses `*` and more numbers than a mailbox
/// may hold, which no real result needs and would be a memory bomb.
pub fn parse_sequence_set(text: &str) -> Option<Vec<u32>> {
    let mut numbers = Vec::new();
    for range in text.split(',') {
        let (low, high) = match range.split_once(':') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let n = range.parse().ok()?;
                (n, n)
            }
        };
        let (low, high) = (low.min(high), low.max(high));
        if numbers.len() + (high - low) as usize >= MAX_MESSAGES {
            return None;
        }
        numbers.extend(low..=high);
    }
    Some(numbers)
}

/// Renders numbers as a compact sequence set (`1:3,7`). Sorts a copy.
pub fn sequence_set(numbers: &[u32]) -> String {
    let mut sorted = numbers.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// `(MESSAGES 3 UIDNEXT 4 …)`; items mailfetch does not know are skipped.
fn parse_status_items(lexer: &mut Lexer) -> Result<MailboxStatus, ParseError> {
    let mut status = MailboxStatus::default();
    lexer.expect(b'(')?;
    let mut first = true;
    while !lexer.eat(b')') {
        if !first {
            lexer.space()?;
        }
        first = false;
        let name = lexer.atom()?.to_ascii_uppercase();
        lexer.space()?;
        match name.as_str() {
            "MESSAGES" => status.messages = Some(lexer.number()?),
            "UIDNEXT" => status.uidnext = Some(lexer.number()?),
            "UIDVALIDITY" => status.uidvalidity = Some(lexer.number()?),
            "HIGHESTMODSEQ" => status.highestmodseq = Some(lexer.number64()?),
            _ => lexer.skip_value()?,
        }
    }
    Ok(status)
}

/// After the status word: ` [CODE args] text`.
fn parse_resp_text(lexer: &mut Lexer) -> Result<(Option<Code>, String), ParseError> {
    let text = lexer.short_rest()?;
    let text = text.strip_prefix(' ').unwrap_or(&text);
    if let Some(rest) = text.strip_prefix('[')
        && let Some(end) = rest.find(']')
    {
        let inner = &rest[..end];
        let (name, args) = inner.split_once(' ').unwrap_or((inner, ""));
        let code = Code {
            name: name.to_ascii_uppercase(),
            args: args.to_owned(),
        };
        return Ok((Some(code), rest[end + 1..].trim_start().to_owned()));
    }
    Ok((None, text.to_owned()))
}

fn parse_fetch(lexer: &mut Lexer) -> Result<Fetch, ParseError> {
    let mut fetch = Fetch::default();
    lexer.expect(b'(')?;
    loop {
        if lexer.eat(b')') {
            return Ok(fetch);
        }
        let name = lexer.atom()?.to_ascii_uppercase();
        lexer.space()?;
        match name.as_str() {
            "UID" => fetch.uid = Some(lexer.number()?),
            "RFC822.SIZE" => fetch.size = Some(lexer.number64()?),
            "FLAGS" => {
                let flags = lexer.list_of_atoms()?;
                fetch.flags = Some(
                    distinct_words(flags.into_iter())
                        .ok_or_else(|| lexer.error("too many flags"))?,
                )
            }
            name if is_whole_message(name.as_bytes()) => {
                if fetch.body.is_some() {
                    // Two bodies would be written one after the other
                    // into the same message.
                    return Err(lexer.error("two message bodies in one FETCH"));
                }
                fetch.body = Some(match lexer.value()? {
                    Value::Streamed(len) => Some(len),
                    Value::Nil => None,
                    _ => return Err(lexer.error("message body not streamed")),
                })
            }
            name if name.starts_with("BODY[HEADER.FIELDS") => match lexer.value()? {
                Value::Bytes(bytes) => fetch.header_fields = Some(bytes),
                Value::Nil => fetch.header_fields = Some(Vec::new()),
                _ => return Err(lexer.error("bad header fields")),
            },
            name => {
                if is_other_body_item(name) && fetch.other_bodies.len() < MAX_WORDS {
                    fetch.other_bodies.push(name.to_owned());
                }
                // Other items (INTERNALDATE, MODSEQ, ENVELOPE…): skip their value.
                lexer.skip_value()?
            }
        }
        if !lexer.eat(b' ') && lexer.peek() != Some(b')') {
            return Err(lexer.error("expected space or ')' in FETCH"));
        }
    }
}

enum Value {
    Nil,
    Bytes(Vec<u8>),
    Streamed(u64),
}

/// Walks the parts of a response byte by byte, stepping over literals.
struct Lexer<'a> {
    parts: &'a [Part],
    part: usize,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn new(parts: &'a [Part]) -> Lexer<'a> {
        Lexer {
            parts,
            part: 0,
            pos: 0,
        }
    }

    fn text(&self) -> &'a [u8] {
        match self.parts.get(self.part) {
            Some(Part::Text(text)) => &text[self.pos.min(text.len())..],
            _ => &[],
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text().first().copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn error(&self, what: &'static str) -> ParseError {
        ParseError::new(what, self.text())
    }

    fn expect(&mut self, byte: u8) -> Result<(), ParseError> {
        if self.eat(byte) {
            Ok(())
        } else {
            Err(self.error("unexpected character"))
        }
    }

    fn space(&mut self) -> Result<(), ParseError> {
        self.expect(b' ')
    }

    /// An atom, with a bracketed section and a partial `<n>` kept whole
    /// (`BODY[HEADER.FIELDS (A B)]<0>`).
    fn atom(&mut self) -> Result<String, ParseError> {
        let text = self.text();
        let mut end = 0;
        let mut depth = 0;
        while end < text.len() {
            match text[end] {
                b'[' => depth += 1,
                b']' if depth > 0 => depth -= 1,
                b' ' | b'(' | b')' | b'{' | b'"' if depth == 0 => break,
                byte if byte < 0x20 || byte == 0x7f => break,
                _ => {}
            }
            end += 1;
        }
        if end == 0 || depth != 0 {
            return Err(self.error("expected an atom"));
        }
        self.pos += end;
        Ok(String::from_utf8_lossy(&text[..end]).into_owned())
    }

    fn number64(&mut self) -> Result<u64, ParseError> {
        let atom = self.atom()?;
        atom.parse().map_err(|_| self.error("expected a number"))
    }

    fn number(&mut self) -> Result<u32, ParseError> {
        let atom = self.atom()?;
        atom.parse().map_err(|_| self.error("expected a number"))
    }

    /// `(a b c)`
    fn list_of_atoms(&mut self) -> Result<Vec<String>, ParseError> {
        self.expect(b'(')?;
        let mut items = Vec::new();
        while !self.eat(b')') {
            if !items.is_empty() {
                self.space()?;
            }
            items.push(self.atom()?);
        }
        Ok(items)
    }

    /// A string value: NIL, quoted, or literal (kept or streamed).
    fn value(&mut self) -> Result<Value, ParseError> {
        match self.peek() {
            Some(b'"') => self.quoted().map(Value::Bytes),
            Some(b'{') => self.literal(),
            _ => {
                let atom = self.atom()?;
                if atom.eq_ignore_ascii_case("NIL") {
                    Ok(Value::Nil)
                } else {
                    Err(self.error("expected a string"))
                }
            }
        }
    }

    fn quoted(&mut self) -> Result<Vec<u8>, ParseError> {
        self.expect(b'"')?;
        let text = self.text();
        let mut out = Vec::new();
        let mut i = 0;
        while i < text.len() {
            match text[i] {
                b'"' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                b'\\' if i + 1 < text.len() => {
                    out.push(text[i + 1]);
                    i += 2;
                }
                byte => {
                    out.push(byte);
                    i += 1;
                }
            }
        }
        Err(self.error("unterminated quoted string"))
    }

    /// `{N}` at the end of a text part, then the literal part.
    fn literal(&mut self) -> Result<Value, ParseError> {
        let text = self.text();
        let Some(close) = text.iter().position(|&b| b == b'}') else {
            return Err(self.error("bad literal"));
        };
        if close + 1 != text.len() {
            return Err(self.error("literal announcement not at the end of the line"));
        }
        let announced = literal_len(text)?.ok_or_else(|| self.error("bad literal"))?;
        let value = match self.parts.get(self.part + 1) {
            Some(Part::Literal(bytes)) if bytes.len() as u64 == announced => {
                Value::Bytes(bytes.clone())
            }
            Some(Part::Streamed(len)) if *len == announced => Value::Streamed(*len),
            _ => return Err(self.error("literal missing")),
        };
        // Continue with the text part after the literal.
        self.part += 2;
        self.pos = 0;
        if !matches!(self.parts.get(self.part), Some(Part::Text(_))) {
            return Err(ParseError::new("response ends inside a literal", b""));
        }
        Ok(value)
    }

    /// Skips one value of any shape: atom, string, literal or list.
    fn skip_value(&mut self) -> Result<(), ParseError> {
        match self.peek() {
            Some(b'(') => {
                self.pos += 1;
                while !self.eat(b')') {
                    self.eat(b' ');
                    if self.peek() != Some(b')') {
                        self.skip_value()?;
                    }
                }
                Ok(())
            }
            Some(b'"') | Some(b'{') => self.value().map(drop),
            _ => self.atom().map(drop),
        }
    }

    /// The rest of the current text part, without a leading space.
    fn rest(&mut self) -> &'a [u8] {
        let text = self.text();
        self.pos += text.len();
        text.strip_prefix(b" ").unwrap_or(text)
    }

    /// The rest of the current text part as text, refused past
    /// [`MAX_STATUS_LINE`]: it is copied, and only lists of numbers or
    /// items are legitimately long.
    fn short_rest(&mut self) -> Result<String, ParseError> {
        if self.text().len() > MAX_STATUS_LINE {
            return Err(self.error("status or capability response too long"));
        }
        Ok(String::from_utf8_lossy(self.rest()).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(line: &str) -> Part {
        Part::Text(line.as_bytes().to_vec())
    }

    fn one(line: &str) -> Response {
        parse(&[text(line)]).unwrap()
    }

    #[test]
    fn literal_announcements() {
        assert_eq!(literal_len(b"* 1 FETCH (BODY[] {1234}"), Ok(Some(1234)));
        assert_eq!(literal_len(b"A1 LOGIN {5+}"), Ok(Some(5)));
        assert_eq!(literal_len(b"* OK no literal"), Ok(None));
        assert_eq!(literal_len(b"* OK weird {x}"), Ok(None));
        assert!(literal_len(b"* 1 FETCH (BODY[] {99999999999999999999999}").is_err());
        assert!(is_message_body(b"* 1 FETCH (UID 5 BODY[] {12}"));
        assert!(is_message_body(b"* 1 FETCH (body[] {12}"));
        assert!(is_message_body(b"* 1 FETCH (UID 5 BODY[]<0> {12}"));
        assert!(!is_message_body(
            b"* 1 FETCH (UID 5 BODY[HEADER.FIELDS (MESSAGE-ID)] {12}"
        ));
        assert!(!is_message_body(b"* OK [ALERT] {12}"));
        assert_eq!(uid_in(b"* 3 FETCH (UID 42 BODY[] {12}"), Some(42));
        assert_eq!(uid_in(b"* 3 FETCH (BODY[] {12}"), None);
    }

    #[test]
    fn status_responses() {
        assert_eq!(
            one("A1 OK [READ-WRITE] SELECT completed"),
            Response::Tagged {
                tag: "A1".into(),
                status: Status::Ok,
                code: Some(Code {
                    name: "READ-WRITE".into(),
                    args: "".into()
                }),
                text: "SELECT completed".into()
            }
        );
        assert_eq!(
            one("* OK [UIDVALIDITY 3857529045] UIDs valid"),
            Response::Untagged(Untagged::Status {
                status: Status::Ok,
                code: Some(Code {
                    name: "UIDVALIDITY".into(),
                    args: "3857529045".into()
                }),
                text: "UIDs valid".into()
            })
        );
        assert!(matches!(
            one("* BYE bye"),
            Response::Untagged(Untagged::Status {
                status: Status::Bye,
                ..
            })
        ));
        assert!(matches!(
            one("A2 no [AUTHENTICATIONFAILED] nope"),
            Response::Tagged {
                status: Status::No,
                ..
            }
        ));
        assert_eq!(one("+ abc="), Response::Continue(b"abc=".to_vec()));
        assert_eq!(one("+"), Response::Continue(Vec::new()));
    }

    #[test]
    fn data_responses() {
        assert_eq!(
            one("* CAPABILITY IMAP4rev1 uidplus AUTH=PLAIN"),
            Response::Untagged(Untagged::Capability(vec![
                "IMAP4REV1".into(),
                "UIDPLUS".into(),
                "AUTH=PLAIN".into()
            ]))
        );
        assert_eq!(one("* 23 EXISTS"), Response::Untagged(Untagged::Exists(23)));
        assert_eq!(one("* 3 EXPUNGE"), Response::Untagged(Untagged::Expunge(3)));
        assert_eq!(
            one("* SEARCH 2 84 882"),
            Response::Untagged(Untagged::Search(vec![2, 84, 882]))
        );
        assert_eq!(
            one("* SEARCH"),
            Response::Untagged(Untagged::Search(vec![]))
        );
        assert_eq!(
            one("* SEARCH 2 5 (MODSEQ 917162500)"),
            Response::Untagged(Untagged::Search(vec![2, 5]))
        );
        assert_eq!(
            one("* ESEARCH (TAG \"A285\") UID ALL 1:3,7"),
            Response::Untagged(Untagged::Search(vec![1, 2, 3, 7]))
        );
        assert_eq!(
            one("* ESEARCH (TAG \"A285\") UID"),
            Response::Untagged(Untagged::Search(vec![]))
        );
        assert_eq!(one("* 5 RECENT"), Response::Untagged(Untagged::Other));
        assert_eq!(
            one("* FLAGS (\\Seen \\Deleted)"),
            Response::Untagged(Untagged::Other)
        );
        assert!(parse(&[text("* SEARCH 1 x")]).is_err());
    }

    #[test]
    fn mailbox_status_responses() {
        let full = MailboxStatus {
            messages: Some(50000),
            uidnext: Some(50001),
            uidvalidity: Some(1700000000),
            highestmodseq: Some(18446744073709551615),
        };
        assert_eq!(
            one(
                "* STATUS INBOX (MESSAGES 50000 UIDNEXT 50001 UIDVALIDITY 1700000000 HIGHESTMODSEQ 18446744073709551615)"
            ),
            Response::Untagged(Untagged::MailboxStatus(full))
        );
        // A quoted name with a space and a parenthesis; unknown items
        // (RFC 8438's SIZE, a list-valued one) are skipped; order is free.
        assert_eq!(
            one(
                "* STATUS \"Lists/a (b)\" (SIZE 12 X-ODD (1 2) UIDVALIDITY 7 uidnext 9 MESSAGES 0)"
            ),
            Response::Untagged(Untagged::MailboxStatus(MailboxStatus {
                messages: Some(0),
                uidnext: Some(9),
                uidvalidity: Some(7),
                highestmodseq: None,
            }))
        );
        assert_eq!(
            one("* STATUS x ()"),
            Response::Untagged(Untagged::MailboxStatus(MailboxStatus::default()))
        );
        // A name sent as a literal.
        assert_eq!(
            parse(&[
                text("* STATUS {3}"),
                Part::Literal(b"a b".to_vec()),
                text(" (MESSAGES 1)")
            ])
            .unwrap(),
            Response::Untagged(Untagged::MailboxStatus(MailboxStatus {
                messages: Some(1),
                ..MailboxStatus::default()
            }))
        );
        for bad in [
            "* STATUS INBOX (MESSAGES x)",
            "* STATUS INBOX (UIDNEXT 4294967296)",
            "* STATUS INBOX (MESSAGES 1",
            "* STATUS INBOX MESSAGES 1",
        ] {
            assert!(parse(&[text(bad)]).is_err(), "{bad}");
        }
    }

    #[test]
    fn fetch_with_streamed_body_and_header_literal() {
        let parts = vec![
            text(
                "* 12 FETCH (UID 4827 FLAGS (\\Seen $Junk) RFC822.SIZE 44827 INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" BODY[HEADER.FIELDS (MESSAGE-ID)] {22}",
            ),
            Part::Literal(b"Message-ID: <a@b>\r\n\r\n\r\n"[..22].to_vec()),
            text(" BODY[] {44827}"),
            Part::Streamed(44827),
            text(")"),
        ];
        let Response::Untagged(Untagged::Fetch { seq, attrs }) = parse(&parts).unwrap() else {
            panic!()
        };
        assert_eq!(seq, 12);
        assert_eq!(attrs.uid, Some(4827));
        assert_eq!(attrs.size, Some(44827));
        assert!(attrs.is_seen());
        assert_eq!(attrs.body, Some(Some(44827)));
        assert_eq!(
            attrs.header_fields.as_deref(),
            Some(&b"Message-ID: <a@b>\r\n\r\n\r"[..22])
        );
    }

    #[test]
    fn fetch_edge_cases() {
        let fetch = |parts: Vec<Part>| match parse(&parts) {
            Ok(Response::Untagged(Untagged::Fetch { attrs, .. })) => Ok(attrs),
            Ok(other) => panic!("{other:?}"),
            Err(err) => Err(err),
        };
        assert_eq!(
            fetch(vec![text("* 1 FETCH (UID 7 BODY[] NIL)")])
                .unwrap()
                .body,
            Some(None)
        );
        assert_eq!(
            fetch(vec![text("* 1 FETCH (FLAGS ())")]).unwrap().flags,
            Some(vec![])
        );
        // Unknown items with nested lists are skipped.
        assert_eq!(
            fetch(vec![text(
                "* 1 FETCH (X-GM-LABELS (\"a b\" c) MODSEQ (12) UID 9)"
            )])
            .unwrap()
            .uid,
            Some(9)
        );
        // Malformed: a size that is not a number, or a cut-off list.
        assert!(fetch(vec![text("* 1 FETCH (UID 5 RFC822.SIZE xyz)")]).is_err());
        assert!(fetch(vec![text("* 1 FETCH (UID 5 RFC822.SIZE 12")]).is_err());
        // A literal whose length differs from its announcement.
        assert!(
            fetch(vec![
                text("* 1 FETCH (BODY[] {5}"),
                Part::Streamed(6),
                text(")")
            ])
            .is_err()
        );
        // Bytes after the closing parenthesis of a literal-carrying item.
        assert!(
            fetch(vec![
                text("* 1 FETCH (BODY[] {5}"),
                Part::Streamed(5),
                text("xx)")
            ])
            .is_err()
        );
    }

    #[test]
    fn body_from_origin_zero_is_the_whole_message() {
        // `BODY[]<0>` is streamed by the client, so the parser must report
        // it as the body: else its bytes and the next message's end up in
        // one file.
        let line = "* 7 FETCH (UID 43 BODY[]<0> {5}";
        assert!(is_message_body(line.as_bytes()));
        let parts = vec![text(line), Part::Streamed(5), text(")")];
        let Response::Untagged(Untagged::Fetch { attrs, .. }) = parse(&parts).unwrap() else {
            panic!()
        };
        assert_eq!((attrs.uid, attrs.body), (Some(43), Some(Some(5))));
        // A part from another origin is not the message: it is neither
        // streamed nor taken for the body, and it is named.
        let line = "* 7 FETCH (UID 43 BODY[]<5> {5}";
        assert!(!is_message_body(line.as_bytes()));
        let parts = vec![text(line), Part::Literal(b"AAAAA".to_vec()), text(")")];
        let Response::Untagged(Untagged::Fetch { attrs, .. }) = parse(&parts).unwrap() else {
            panic!()
        };
        assert_eq!(attrs.body, None);
        assert_eq!(attrs.other_bodies, ["BODY[]<5>"]);
        // Two bodies in one response would be written into one message.
        let parts = vec![
            text("* 7 FETCH (UID 43 BODY[] {5}"),
            Part::Streamed(5),
            text(" BODY[]<0> {5}"),
            Part::Streamed(5),
            text(")"),
        ];
        assert!(parse(&parts).is_err());
    }

    #[test]
    fn repeated_words_cost_nothing_and_lists_are_bounded() {
        let line = format!("* CAPABILITY IMAP4rev1{}", " A".repeat(30_000));
        let Response::Untagged(Untagged::Capability(caps)) = one(&line) else {
            panic!()
        };
        assert_eq!(caps, ["IMAP4REV1", "A"]);
        // Distinct words past the cap, and status lines past theirs, are
        // refused rather than copied.
        let many: String = (0..=MAX_WORDS).map(|n| format!(" C{n}")).collect();
        assert!(parse(&[text(&format!("* CAPABILITY{many}"))]).is_err());
        assert!(parse(&[text(&format!("* 1 FETCH (FLAGS ({many}))"))]).is_err());
        let long = "x".repeat(MAX_STATUS_LINE + 1);
        assert!(parse(&[text(&format!("* OK {long}"))]).is_err());
        assert!(parse(&[text(&format!("A1 OK [CAPABILITY {long}] done"))]).is_err());
        let mut flags = Vec::from(["\\Seen"; 5]);
        flags.push("$Junk");
        let line = format!("* 1 FETCH (FLAGS ({}))", flags.join(" "));
        let Response::Untagged(Untagged::Fetch { attrs, .. }) = one(&line) else {
            panic!()
        };
        assert_eq!(attrs.flags.unwrap(), ["\\Seen", "$Junk"]);
    }

    #[test]
    fn a_response_is_bounded_in_bytes_and_parts() {
        let mut budget = ResponseBudget::default();
        for _ in 0..15 {
            budget.keep(1024 * 1024).unwrap();
        }
        assert!(budget.keep(1024 * 1024 + 1).is_err());
        let mut budget = ResponseBudget::default();
        for _ in 0..MAX_PARTS {
            budget.keep(3).unwrap();
        }
        assert!(budget.keep(3).is_err());
    }

    fn idle_feed(idle: &mut Idle, line: &str) -> IdleEvent {
        idle.on_response(&one(line)).unwrap()
    }

    #[test]
    fn idle_reports_new_mail_and_ends_on_done() {
        let mut idle = Idle::new("M7", 3);
        assert_eq!(idle.command(), b"M7 IDLE\r\n");
        assert!(!idle.done(), "no DONE before the server's +");
        assert_eq!(idle_feed(&mut idle, "+ idling"), IdleEvent::Started);
        assert!(idle.is_idling());
        assert_eq!(idle_feed(&mut idle, "* 3 EXISTS"), IdleEvent::Nothing);
        assert_eq!(
            idle_feed(&mut idle, "* 1 FETCH (FLAGS (\\Seen))"),
            IdleEvent::Nothing
        );
        assert_eq!(
            idle_feed(&mut idle, "* 4 EXISTS"),
            IdleEvent::NewMail { exists: 4 }
        );
        assert_eq!(idle_feed(&mut idle, "* 5 RECENT"), IdleEvent::Nothing);
        assert!(idle.done());
        assert!(!idle.done(), "DONE is sent once");
        assert!(!idle.is_idling());
        // Responses may still arrive before the completion.
        assert_eq!(
            idle_feed(&mut idle, "* 5 EXISTS"),
            IdleEvent::NewMail { exists: 5 }
        );
        assert_eq!(
            idle_feed(&mut idle, "M7 OK Idle completed"),
            IdleEvent::Finished
        );
        assert!(idle.is_finished());
        assert!(idle.on_response(&one("M7 OK again")).is_err());
    }

    #[test]
    fn idle_counts_expunges_so_a_refill_is_new_mail() {
        let mut idle = Idle::new("M2", 2);
        idle_feed(&mut idle, "+ idling");
        assert_eq!(idle_feed(&mut idle, "* 2 EXPUNGE"), IdleEvent::Nothing);
        assert_eq!(
            idle_feed(&mut idle, "* 2 EXISTS"),
            IdleEvent::NewMail { exists: 2 }
        );
    }

    #[test]
    fn idle_refusals_and_errors() {
        let mut idle = Idle::new("M1", 0);
        assert_eq!(
            idle_feed(&mut idle, "M1 BAD unknown command"),
            IdleEvent::Refused("unknown command".into())
        );
        let mut idle = Idle::new("M1", 0);
        idle_feed(&mut idle, "+ idling");
        assert!(idle.on_response(&one("+ again")).is_err());
        assert!(idle.on_response(&one("M0 OK other")).is_err());
        assert_eq!(
            idle_feed(&mut idle, "* BYE shutting down"),
            IdleEvent::Bye("shutting down".into())
        );
        // The server may end an IDLE on its own (some do after a while).
        assert_eq!(idle_feed(&mut idle, "M1 OK done"), IdleEvent::Finished);
        assert!(!idle.done());
    }

    #[test]
    fn sequence_sets() {
        assert_eq!(sequence_set(&[7, 1, 2, 3, 9, 10]), "1:3,7,9:10");
        assert_eq!(sequence_set(&[5]), "5");
        assert_eq!(
            parse_sequence_set("1:3,7,10:9"),
            Some(vec![1, 2, 3, 7, 9, 10])
        );
        assert_eq!(parse_sequence_set("1:*"), None);
        assert_eq!(parse_sequence_set("1:4000000000"), None);
    }
}
