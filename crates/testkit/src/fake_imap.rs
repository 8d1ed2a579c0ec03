//! A scriptable fake IMAP4rev1 server for fault-injection tests (std only).
//!
//! It serves one connection at a time (see [`crate::fake_server`]), for as
//! many sequential connections as the test makes. The folders are shared by all connections, and changes
//! (flags, EXPUNGE, MOVE, COPY) take effect at once, as on a real server.
//!
//! Supported (RFC 3501 / 9051 subset; tags are any atom, commands are
//! case-insensitive, one command per line, no literals from the client):
//! CAPABILITY, NOOP, CHECK, LOGOUT, STARTTLS (always NO: there is no TLS),
//! LOGIN, AUTHENTICATE PLAIN (with or without initial response), ENABLE,
//! LIST, STATUS, SELECT, EXAMINE, CLOSE, UNSELECT, EXPUNGE, and SEARCH,
//! FETCH, STORE, COPY, MOVE, EXPUNGE both plain and with the UID prefix.
//!
//! What the test can read afterwards: every command line received, per
//! connection ([`FakeImap::sessions`]), each folder with its messages and
//! flags ([`FakeImap::folder`]), what was expunged, moved, copied, and which
//! message bodies were sent in full.
//!
//! Faults ([`Fault`]) make it misbehave, on every connection or only on the
//! first one ([`Script::first_only`]), so a second run sees a healthy server.

use std::io::{self, BufRead, Read, Write};
use std::sync::MutexGuard;

use crate::fake_server::{Connection, FakeServer, Faults, Serving};

pub const USER: &str = "alice";
pub const PASSWORD: &str = "secret";
/// The flags every folder offers (`* FLAGS`).
const SYSTEM_FLAGS: &str = r"\Answered \Flagged \Deleted \Seen \Draft";

/// One message in a folder, as stored on the server (CRLF line ends).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// 0 until the message is put in a folder, which numbers it.
    pub uid: u32,
    pub flags: Vec<String>,
    pub data: Vec<u8>,
    /// The INTERNALDATE, as sent (without the quotes).
    pub date: String,
}

impl Message {
    /// A message whose text has every line end turned into CRLF.
    pub fn new(text: &str) -> Message {
        let data = text
            .replace("\r\n", "\n")
            .replace('\n', "\r\n")
            .into_bytes();
        Message {
            uid: 0,
            flags: Vec::new(),
            data,
            date: "17-Jul-1996 02:44:25 -0700".to_owned(),
        }
    }

    /// Gives the message this UID instead of the folder's next one (UIDs in
    /// a folder must increase in the order messages are added).
    pub fn uid(mut self, uid: u32) -> Message {
        self.uid = uid;
        self
    }

    /// Sets the flags, e.g. `&["\\Seen"]`, or `&["\\Deleted"]` for a message
    /// that another client flagged.
    pub fn flags(mut self, flags: &[&str]) -> Message {
        self.flags = flags.iter().map(|f| f.to_string()).collect();
        self
    }

    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
    }
}

/// A folder (mailbox). Its name is stored as given (modified UTF-7 for
/// non-ASCII names) and compared exactly, except INBOX which is
/// case-insensitive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Folder {
    pub name: String,
    pub uidvalidity: u32,
    pub uidnext: u32,
    /// In sequence-number order (ascending UIDs).
    pub messages: Vec<Message>,
}

impl Folder {
    pub fn new(name: &str, uidvalidity: u32) -> Folder {
        Folder {
            name: name.to_owned(),
            uidvalidity,
            uidnext: 1,
            messages: Vec::new(),
        }
    }

    /// Adds a message (builder form of [`Folder::add`]).
    pub fn with(mut self, message: Message) -> Folder {
        self.add(message);
        self
    }

    /// Appends a message, numbering it with UIDNEXT unless it has a UID;
    /// returns its UID.
    pub fn add(&mut self, mut message: Message) -> u32 {
        if message.uid == 0 {
            message.uid = self.uidnext;
        }
        assert!(
            self.messages.last().is_none_or(|m| m.uid < message.uid),
            "UIDs must increase"
        );
        self.uidnext = message.uid + 1;
        let uid = message.uid;
        self.messages.push(message);
        uid
    }

    pub fn uids(&self) -> Vec<u32> {
        self.messages.iter().map(|m| m.uid).collect()
    }

    /// The UID or the sequence number of the message at `index`.
    fn key(&self, index: usize, by_uid: bool) -> u32 {
        if by_uid {
            self.messages[index].uid
        } else {
            index as u32 + 1
        }
    }

    fn is(&self, name: &str) -> bool {
        self.name == name
            || (self.name.eq_ignore_ascii_case("INBOX") && name.eq_ignore_ascii_case("INBOX"))
    }
}

/// Ways the server misbehaves. `uid` is the UID the message has when it is
/// fetched (after any renumbering).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The first literal of this message's FETCH response (body or header
    /// section) is announced in full, but only `after` bytes of it are sent,
    /// then the server closes the connection.
    CutLiteral { uid: u32, after: usize },
    /// The literals of this message announce `{s}` but carry s + `extra`
    /// bytes (`X`s after the real content) before the closing `)`.
    LiteralLongerThanAnnounced { uid: u32, extra: usize },
    /// This message's FETCH response is garbage:
    /// `* n FETCH (UID u RFC822.SIZE xyz` with no end. The others and the
    /// tagged OK follow normally.
    MalformedFetch { uid: u32 },
    /// Once `after_fetches` FETCH commands have been answered, the server
    /// sends `* BYE shutting down` and closes; with 0, it does so in place
    /// of answering the first FETCH.
    ByeMidSession { after_fetches: usize },
    /// UIDPLUS is not in CAPABILITY: `UID EXPUNGE` is BAD, COPY and MOVE
    /// answer without `[COPYUID]`.
    NoUidplus,
    /// MOVE is not in CAPABILITY: `UID MOVE` / `MOVE` are BAD.
    NoMove,
    /// ESEARCH is not in CAPABILITY: `SEARCH RETURN (...)` is BAD.
    NoEsearch,
    /// STARTTLS is not in CAPABILITY (it is always refused anyway).
    NoStarttls,
    /// The first literal of this message announces `announce` bytes (an
    /// enormous number such as 99999999999), then a few bytes are sent and
    /// the server stalls (the connection stays open).
    HugeLiteral { uid: u32, announce: u64 },
    /// A FETCH that includes this message gets the responses of the
    /// messages before it, then nothing (the connection stays open).
    StallFetch { uid: u32 },
    /// When a connection with this fault ends, every folder gets a new
    /// UIDVALIDITY (old + 1) and its messages, in reverse order, get UIDs
    /// 1, 2, 3…, so that the old UIDs name other messages. With
    /// [`Script::first_only`] this happens once, after the first connection.
    UidvalidityChange,
    /// A whole body (`BODY[]`, `BODY.PEEK[]`) is answered as `BODY[]<0>`,
    /// as a partial fetch from origin 0, which some servers do.
    OriginZeroBody,
    /// RFC822.SIZE of this message is announced as `reported`.
    UnderReportedSize { uid: u32, reported: usize },
}

/// How the server behaves.
#[derive(Clone, Debug)]
pub struct Script {
    /// The CAPABILITY list before faults remove entries from it.
    pub capabilities: Vec<String>,
    pub password: String,
    pub faults: Faults<Fault>,
}

impl Default for Script {
    fn default() -> Script {
        let caps = "IMAP4rev1 LITERAL+ SASL-IR UIDPLUS MOVE ESEARCH ENABLE AUTH=PLAIN STARTTLS";
        Script {
            capabilities: caps.split(' ').map(String::from).collect(),
            password: PASSWORD.to_owned(),
            faults: Faults::default(),
        }
    }
}

impl Script {
    pub fn fault(mut self, fault: Fault) -> Script {
        self.faults.list.push(fault);
        self
    }

    pub fn first_only(mut self) -> Script {
        self.faults.first_connection_only = true;
        self
    }
}

/// A message copied or moved by the client: `from`/`uid` to `to`/`new_uid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub from: String,
    pub uid: u32,
    pub to: String,
    pub new_uid: u32,
}

#[derive(Default)]
struct Shared {
    folders: Vec<Folder>,
    expunged: Vec<(String, u32)>,
    moved: Vec<Transfer>,
    copied: Vec<Transfer>,
    downloaded: Vec<(String, u32)>,
    stalled: bool,
}

impl Shared {
    fn folder(&mut self, name: &str) -> Option<&mut Folder> {
        self.folders.iter_mut().find(|f| f.is(name))
    }

    fn change_uidvalidity(&mut self) {
        for folder in &mut self.folders {
            folder.uidvalidity += 1;
            folder.messages.reverse();
            for (i, m) in folder.messages.iter_mut().enumerate() {
                m.uid = i as u32 + 1;
            }
            folder.uidnext = folder.messages.len() as u32 + 1;
        }
    }
}

/// The running server; stops accepting when dropped.
pub struct FakeImap {
    server: FakeServer<Shared>,
}

impl FakeImap {
    pub fn start(folders: Vec<Folder>, script: Script) -> FakeImap {
        let shared = Shared {
            folders,
            ..Shared::default()
        };
        let server = FakeServer::start(shared, Serving::OneAtATime, move |conn| {
            let mut session = Session::new(conn, &script);
            let renumber = session.faults.contains(&Fault::UidvalidityChange);
            let result = session.run();
            if renumber {
                conn.state().change_uidvalidity();
            }
            result
        });
        FakeImap { server }
    }

    /// A server with only an INBOX (UIDVALIDITY 1000) holding `messages`.
    pub fn inbox(messages: Vec<Message>, script: Script) -> FakeImap {
        let inbox = messages
            .into_iter()
            .fold(Folder::new("INBOX", 1000), Folder::with);
        FakeImap::start(vec![inbox], script)
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.server.state()
    }

    /// The command lines received (AUTHENTICATE continuations included),
    /// one list per connection.
    pub fn sessions(&self) -> Vec<Vec<String>> {
        self.server.sessions()
    }

    /// Every command line received, all connections.
    pub fn transcript(&self) -> Vec<String> {
        self.server.transcript()
    }

    /// A snapshot of a folder (messages with UIDs, flags and data).
    pub fn folder(&self, name: &str) -> Folder {
        self.lock().folder(name).expect("no such folder").clone()
    }

    /// The UIDs in a folder, in order.
    pub fn uids(&self, folder: &str) -> Vec<u32> {
        self.folder(folder).uids()
    }

    /// A message's flags, `None` if it is not there.
    pub fn flags(&self, folder: &str, uid: u32) -> Option<Vec<String>> {
        let folder = self.folder(folder);
        let message = folder.messages.into_iter().find(|m| m.uid == uid)?;
        Some(message.flags)
    }

    /// (folder, UID) removed by EXPUNGE, UID EXPUNGE or CLOSE, in order
    /// (not those removed by MOVE: see [`FakeImap::moved`]).
    pub fn expunged(&self) -> Vec<(String, u32)> {
        self.lock().expunged.clone()
    }

    pub fn moved(&self) -> Vec<Transfer> {
        self.lock().moved.clone()
    }

    pub fn copied(&self) -> Vec<Transfer> {
        self.lock().copied.clone()
    }

    /// (folder, UID) of every full body (`BODY[]`, `BODY.PEEK[]`, `RFC822`)
    /// sent complete and unaltered by any fault, in order.
    pub fn downloaded(&self) -> Vec<(String, u32)> {
        self.lock().downloaded.clone()
    }

    /// Whether a stall ([`Fault::StallFetch`], [`Fault::HugeLiteral`]) was
    /// reached (all earlier responses sent).
    pub fn stalled(&self) -> bool {
        self.lock().stalled
    }

    /// Adds a message to a folder (as a delivery between two runs would);
    /// returns its UID.
    pub fn add_message(&self, folder: &str, message: Message) -> u32 {
        self.lock()
            .folder(folder)
            .expect("no such folder")
            .add(message)
    }

    /// Replaces a message's flags (as another client would).
    pub fn set_flags(&self, folder: &str, uid: u32, flags: &[&str]) {
        let mut shared = self.lock();
        let folder = shared.folder(folder).expect("no such folder");
        let message = folder.messages.iter_mut().find(|m| m.uid == uid);
        message.expect("no such message").flags = flags.iter().map(|f| f.to_string()).collect();
    }

    /// Removes a message behind the client's back (as another client would).
    pub fn remove(&self, folder: &str, uid: u32) {
        let mut shared = self.lock();
        shared
            .folder(folder)
            .expect("no such folder")
            .messages
            .retain(|m| m.uid != uid);
    }

    /// What [`Fault::UidvalidityChange`] does, now.
    pub fn change_uidvalidity(&self) {
        self.lock().change_uidvalidity();
    }
}

/// A command was answered (`Go`) or the session is over (`End`).
enum Flow {
    Go,
    End,
}

/// What to do once the prepared output is sent.
#[derive(PartialEq)]
enum Then {
    Go,
    /// Close our side (after `* BYE` or a cut literal).
    Cut,
    /// Never answer again.
    Stall,
}

/// A token of a command line: atom (with any `[...]` part, spaces and
/// parentheses included), quoted string, or parenthesised list.
#[derive(Clone, Debug)]
enum Tok {
    Atom(String),
    Str(String),
    List(Vec<Tok>),
}

impl Tok {
    fn text(&self) -> &str {
        match self {
            Tok::Atom(s) | Tok::Str(s) => s,
            Tok::List(_) => "",
        }
    }

    fn upper(&self) -> String {
        self.text().to_ascii_uppercase()
    }

    /// The elements of a list, or the token itself.
    fn items(&self) -> Vec<Tok> {
        match self {
            Tok::List(items) => items.clone(),
            tok => vec![tok.clone()],
        }
    }
}

fn parse(line: &str) -> Option<Vec<Tok>> {
    let mut chars = line.chars().peekable();
    let mut stack: Vec<Vec<Tok>> = vec![Vec::new()];
    while let Some(&c) = chars.peek() {
        let tok = match c {
            ' ' => {
                chars.next();
                continue;
            }
            '(' => {
                chars.next();
                stack.push(Vec::new());
                continue;
            }
            ')' => {
                chars.next();
                if stack.len() < 2 {
                    return None;
                }
                Tok::List(stack.pop()?)
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next()? {
                        '\\' => s.push(chars.next()?),
                        '"' => break,
                        c => s.push(c),
                    }
                }
                Tok::Str(s)
            }
            _ => {
                let (mut s, mut depth) = (String::new(), 0);
                while let Some(&c) = chars.peek() {
                    if depth == 0 && matches!(c, ' ' | '(' | ')') {
                        break;
                    }
                    depth += (c == '[') as i32 - (c == ']') as i32;
                    s.push(c);
                    chars.next();
                }
                Tok::Atom(s)
            }
        };
        stack.last_mut()?.push(tok);
    }
    (stack.len() == 1).then(|| stack.pop().unwrap())
}

/// A sequence set (`5`, `1:*`, `3,7,9:12`); `None` stands for `*`.
struct Set(Vec<(Option<u32>, Option<u32>)>);

impl Set {
    fn parse(text: &str) -> Option<Set> {
        let num = |s: &str| match s {
            "*" => Some(None),
            s => s.parse::<u32>().ok().filter(|&n| n > 0).map(Some),
        };
        let ranges = text.split(',').map(|part| match part.split_once(':') {
            Some((a, b)) => Some((num(a)?, num(b)?)),
            None => num(part).map(|n| (n, n)),
        });
        ranges.collect::<Option<_>>().map(Set)
    }

    /// Whether `n` is in the set, `*` standing for `max`.
    fn contains(&self, n: u32, max: u32) -> bool {
        self.0.iter().any(|&(a, b)| {
            let (a, b) = (a.unwrap_or(max), b.unwrap_or(max));
            a.min(b) <= n && n <= a.max(b)
        })
    }
}

/// `1:3,5` for `[1, 2, 3, 5]` (sorted input).
fn compress(numbers: &[u32]) -> String {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &n in numbers {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == n => *end = n,
            _ => runs.push((n, n)),
        }
    }
    let run = |&(a, b): &(u32, u32)| {
        if a == b {
            a.to_string()
        } else {
            format!("{a}:{b}")
        }
    };
    runs.iter().map(run).collect::<Vec<_>>().join(",")
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for c in text.trim_end_matches('=').bytes() {
        acc = acc << 6 | ALPHABET.iter().position(|&a| a == c)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// A FETCH data item: `UID`, `FLAGS`, `RFC822.SIZE`, `INTERNALDATE`, or a
/// body part (`BODY[...]`, `BODY.PEEK[...]`, `RFC822`, `RFC822.HEADER`).
enum Item {
    Uid,
    Flags,
    Size,
    Date,
    Body {
        /// The name in the response, e.g. `BODY[HEADER.FIELDS (DATE)]`.
        name: String,
        peek: bool,
        section: String,
    },
}

impl Item {
    fn parse(tok: &str) -> Option<Item> {
        let upper = tok.to_ascii_uppercase();
        let body = |name: &str, peek, section: &str| Item::Body {
            name: name.to_owned(),
            peek,
            section: section.to_owned(),
        };
        Some(match upper.as_str() {
            "UID" => Item::Uid,
            "FLAGS" => Item::Flags,
            "RFC822.SIZE" => Item::Size,
            "INTERNALDATE" => Item::Date,
            "RFC822" => body("RFC822", false, ""),
            "RFC822.HEADER" => body("RFC822.HEADER", true, "HEADER"),
            "RFC822.TEXT" => body("RFC822.TEXT", false, "TEXT"),
            _ => {
                let (peek, start) = match () {
                    _ if upper.starts_with("BODY.PEEK[") => (true, 10),
                    _ if upper.starts_with("BODY[") => (false, 5),
                    _ => return None,
                };
                let section = tok.get(start..)?.strip_suffix(']')?;
                body(&format!("BODY[{section}]"), peek, section)
            }
        })
    }
}

/// The bytes of a body section: `` (all), `HEADER`, `TEXT`,
/// `HEADER.FIELDS (A B)`, `HEADER.FIELDS.NOT (A B)`.
fn section(data: &[u8], section: &str) -> Option<Vec<u8>> {
    let split = data.windows(4).position(|w| w == b"\r\n\r\n");
    let header_len = split.map_or(data.len(), |i| i + 4);
    let (header, text) = data.split_at(header_len);
    let upper = section.to_ascii_uppercase();
    let (names, not) = match upper.as_str() {
        "" => return Some(data.to_vec()),
        "HEADER" => return Some(header.to_vec()),
        "TEXT" => return Some(text.to_vec()),
        s => match s.strip_prefix("HEADER.FIELDS.NOT ") {
            Some(rest) => (rest, true),
            None => (s.strip_prefix("HEADER.FIELDS ")?, false),
        },
    };
    let names: Vec<&str> = names.trim_matches(['(', ')']).split_whitespace().collect();
    let mut out = Vec::new();
    let mut keep = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" {
            break;
        }
        if !line.starts_with(b" ") && !line.starts_with(b"\t") {
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            let name = String::from_utf8_lossy(name).trim().to_ascii_uppercase();
            keep = names.contains(&name.as_str()) != not;
        }
        if keep {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    Some(out)
}

struct Session<'c> {
    conn: &'c mut Connection<Shared>,
    faults: Vec<Fault>,
    caps: Vec<String>,
    password: String,
    authed: bool,
    /// The selected folder and whether it is read-only (EXAMINE).
    selected: Option<(String, bool)>,
    fetches: usize,
}

impl<'c> Session<'c> {
    fn new(conn: &'c mut Connection<Shared>, script: &Script) -> Session<'c> {
        let faults = script.faults.for_connection(conn.index);
        let removed = |name: &str| match name {
            "UIDPLUS" => faults.contains(&Fault::NoUidplus),
            "MOVE" => faults.contains(&Fault::NoMove),
            "ESEARCH" => faults.contains(&Fault::NoEsearch),
            "STARTTLS" => faults.contains(&Fault::NoStarttls),
            _ => false,
        };
        let caps = script.capabilities.iter().filter(|c| !removed(c)).cloned();
        Session {
            conn,
            caps: caps.collect(),
            faults,
            password: script.password.clone(),
            authed: false,
            selected: None,
            fetches: 0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.conn.state()
    }

    fn has_cap(&self, cap: &str) -> bool {
        self.caps.iter().any(|c| c.eq_ignore_ascii_case(cap))
    }

    fn send(&mut self, text: &str) -> io::Result<Flow> {
        self.conn.send(text)?;
        Ok(Flow::Go)
    }

    /// Sends prepared output, then does what `then` says.
    fn finish(&mut self, out: &[u8], then: Then) -> io::Result<Flow> {
        self.conn.out.write_all(out)?;
        match then {
            Then::Go => Ok(Flow::Go),
            Then::Cut => self.cut(),
            Then::Stall => {
                self.lock().stalled = true;
                self.hang()
            }
        }
    }

    /// Stops answering; reads (and ignores) until the client goes away.
    fn hang(&mut self) -> io::Result<Flow> {
        self.conn.hang()?;
        Ok(Flow::End)
    }

    /// Closes our side cleanly (everything sent arrives, then EOF).
    fn cut(&mut self) -> io::Result<Flow> {
        self.conn.cut()?;
        Ok(Flow::End)
    }

    /// Reads and records one line; `None` at end of stream.
    fn read_line(&mut self) -> io::Result<Option<String>> {
        let mut raw = Vec::new();
        if (&mut self.conn.reader)
            .take(65536)
            .read_until(b'\n', &mut raw)?
            == 0
        {
            return Ok(None);
        }
        let line = String::from_utf8_lossy(&raw)
            .trim_end_matches(['\r', '\n'])
            .to_owned();
        self.conn.record(&line);
        Ok(Some(line))
    }

    fn run(&mut self) -> io::Result<()> {
        self.send(&format!(
            "* OK [CAPABILITY {}] fake ready\r\n",
            self.caps.join(" ")
        ))?;
        while let Some(line) = self.read_line()? {
            if let Flow::End = self.command(&line)? {
                break;
            }
        }
        Ok(())
    }

    fn command(&mut self, line: &str) -> io::Result<Flow> {
        let Some(toks) = parse(line).filter(|t| t.len() >= 2) else {
            return self.send("* BAD cannot parse that\r\n");
        };
        let tag = toks[0].text().to_owned();
        let (mut verb, mut args) = (toks[1].upper(), &toks[2..]);
        let by_uid = verb == "UID" && !args.is_empty();
        if by_uid {
            (verb, args) = (args[0].upper(), &args[1..]);
        }
        let arg = |i: usize| args.get(i).map_or("", Tok::text).to_owned();
        let selected = self.selected.is_some();
        match (verb.as_str(), self.authed) {
            ("CAPABILITY", _) => {
                let caps = self.caps.join(" ");
                self.send(&format!(
                    "* CAPABILITY {caps}\r\n{tag} OK Capability completed\r\n"
                ))
            }
            ("NOOP" | "CHECK", _) => self.send(&format!("{tag} OK {verb} completed\r\n")),
            ("LOGOUT", _) => {
                self.send(&format!(
                    "* BYE Logging out\r\n{tag} OK Logout completed\r\n"
                ))?;
                Ok(Flow::End)
            }
            ("STARTTLS", false) => self.send(&format!("{tag} NO TLS is not available here\r\n")),
            ("LOGIN", false) => self.login(&tag, &arg(0), &arg(1)),
            ("AUTHENTICATE", false) => self.authenticate(&tag, &arg(0), args.get(1)),
            ("ENABLE", true) => self.send(&format!("* ENABLED\r\n{tag} OK Enabled\r\n")),
            ("ID", _) if self.has_cap("ID") => self.send(&format!(
                "* ID (\"name\" \"fake\")\r\n{tag} OK ID completed\r\n"
            )),
            ("LIST", true) => self.list(&tag, &arg(1)),
            ("STATUS", true) => self.status(&tag, &arg(0), args.get(1)),
            ("SELECT" | "EXAMINE", true) => self.select(&tag, &arg(0), verb == "EXAMINE"),
            ("CLOSE" | "UNSELECT", true) if selected => {
                if verb == "CLOSE" {
                    self.expunge(&tag, None, true)?;
                }
                self.selected = None;
                self.send(&format!("{tag} OK {verb} completed\r\n"))
            }
            ("EXPUNGE", true) if selected && !by_uid => self.expunge(&tag, None, false),
            ("EXPUNGE", true) if selected && self.has_cap("UIDPLUS") => match Set::parse(&arg(0)) {
                Some(set) => self.expunge(&tag, Some(set), false),
                None => self.send(&format!("{tag} BAD Invalid UID set\r\n")),
            },
            ("SEARCH", true) if selected => self.search(&tag, by_uid, args),
            ("FETCH", true) if selected => self.fetch(&tag, by_uid, args),
            ("STORE", true) if selected => self.store(&tag, by_uid, args),
            ("COPY", true) if selected => self.transfer(&tag, by_uid, args, false),
            ("MOVE", true) if selected && self.has_cap("MOVE") => {
                self.transfer(&tag, by_uid, args, true)
            }
            (_, false) => self.send(&format!("{tag} BAD Not authenticated or unknown\r\n")),
            _ => self.send(&format!("{tag} BAD Unknown command or wrong state\r\n")),
        }
    }

    fn login(&mut self, tag: &str, user: &str, password: &str) -> io::Result<Flow> {
        if user != USER || password != self.password {
            return self.send(&format!(
                "{tag} NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
            ));
        }
        self.authed = true;
        let keep = |c: &&str| !c.starts_with("AUTH=") && *c != "STARTTLS";
        let caps: Vec<&str> = self.caps.iter().map(String::as_str).filter(keep).collect();
        let caps = caps.join(" ");
        self.send(&format!("{tag} OK [CAPABILITY {caps}] Logged in\r\n"))
    }

    fn authenticate(
        &mut self,
        tag: &str,
        mechanism: &str,
        initial: Option<&Tok>,
    ) -> io::Result<Flow> {
        if !mechanism.eq_ignore_ascii_case("PLAIN") {
            return self.send(&format!(
                "{tag} NO Unsupported authentication mechanism\r\n"
            ));
        }
        let response = match initial {
            Some(tok) => tok.text().to_owned(),
            None => {
                self.send("+ \r\n")?;
                match self.read_line()? {
                    Some(line) => line,
                    None => return Ok(Flow::End),
                }
            }
        };
        if response == "*" {
            return self.send(&format!("{tag} BAD Authentication cancelled\r\n"));
        }
        // "=" (an empty response) decodes to nothing, and fails.
        let decoded = base64_decode(&response).unwrap_or_default();
        let decoded = String::from_utf8_lossy(&decoded).into_owned();
        let parts: Vec<&str> = decoded.split('\0').collect();
        match parts[..] {
            [_, user, password] => self.login(tag, user, password),
            _ => self.send(&format!(
                "{tag} NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
            )),
        }
    }

    fn list(&mut self, tag: &str, pattern: &str) -> io::Result<Flow> {
        let mut out = String::new();
        for folder in &self.lock().folders {
            if matches!(pattern, "*" | "%") || folder.is(pattern) {
                out.push_str(&format!(
                    "* LIST (\\HasNoChildren) \"/\" \"{}\"\r\n",
                    folder.name
                ));
            }
        }
        out.push_str(&format!("{tag} OK List completed\r\n"));
        self.send(&out)
    }

    fn status(&mut self, tag: &str, name: &str, items: Option<&Tok>) -> io::Result<Flow> {
        let items = items.map(Tok::items).unwrap_or_default();
        let reply = self.lock().folder(name).map(|f| {
            let values: Vec<String> = items
                .iter()
                .map(|item| {
                    let value = match item.upper().as_str() {
                        "MESSAGES" => f.messages.len() as u32,
                        "UIDNEXT" => f.uidnext,
                        "UIDVALIDITY" => f.uidvalidity,
                        "UNSEEN" => {
                            f.messages.iter().filter(|m| !m.has_flag("\\Seen")).count() as u32
                        }
                        _ => 0,
                    };
                    format!("{} {value}", item.upper())
                })
                .collect();
            format!("* STATUS \"{}\" ({})\r\n", f.name, values.join(" "))
        });
        match reply {
            Some(line) => self.send(&format!("{line}{tag} OK Status completed\r\n")),
            None => self.send(&format!("{tag} NO [NONEXISTENT] Mailbox doesn't exist\r\n")),
        }
    }

    fn select(&mut self, tag: &str, name: &str, read_only: bool) -> io::Result<Flow> {
        self.selected = None;
        let Some((exists, validity, next)) = self
            .lock()
            .folder(name)
            .map(|f| (f.messages.len(), f.uidvalidity, f.uidnext))
        else {
            return self.send(&format!("{tag} NO [NONEXISTENT] Mailbox doesn't exist\r\n"));
        };
        self.selected = Some((name.to_owned(), read_only));
        let mode = if read_only { "READ-ONLY" } else { "READ-WRITE" };
        self.send(&format!(
            "* FLAGS ({SYSTEM_FLAGS})\r\n\
             * OK [PERMANENTFLAGS ({SYSTEM_FLAGS} \\*)] Flags permitted\r\n\
             * {exists} EXISTS\r\n* 0 RECENT\r\n\
             * OK [UIDVALIDITY {validity}] UIDs valid\r\n\
             * OK [UIDNEXT {next}] Predicted next UID\r\n\
             {tag} OK [{mode}] Select completed\r\n"
        ))
    }

    /// Runs `f` on the selected folder (taken out of `Shared` meanwhile),
    /// with whether it is read-only.
    fn with_folder<R>(&self, f: impl FnOnce(&mut Folder, bool, &mut Shared) -> R) -> R {
        let (name, read_only) = self.selected.clone().expect("a folder is selected");
        let mut shared = self.lock();
        let index = shared.folders.iter().position(|f| f.is(&name));
        let index = index.expect("selected folder exists");
        let mut folder = std::mem::take(&mut shared.folders[index]);
        let result = f(&mut folder, read_only, &mut shared);
        shared.folders[index] = folder;
        result
    }

    /// The indexes of the messages in `set` (UIDs or sequence numbers).
    fn matching(folder: &Folder, set: &Set, by_uid: bool) -> Vec<usize> {
        let n = folder.messages.len();
        let max = n.checked_sub(1).map_or(0, |last| folder.key(last, by_uid));
        (0..n)
            .filter(|&i| set.contains(folder.key(i, by_uid), max))
            .collect()
    }

    /// EXPUNGE (`set` None), UID EXPUNGE, or CLOSE (`silent`).
    fn expunge(&mut self, tag: &str, set: Option<Set>, silent: bool) -> io::Result<Flow> {
        let out = self.with_folder(|folder, read_only, shared| {
            if read_only {
                let no = format!("{tag} NO Mailbox is read-only\r\n");
                return if silent { String::new() } else { no };
            }
            let chosen = set.map(|set| Self::matching(folder, &set, true));
            let doomed = |i: usize, m: &Message| {
                m.has_flag("\\Deleted") && chosen.as_ref().is_none_or(|c| c.contains(&i))
            };
            let before = folder.uids();
            let out = remove_where(folder, doomed);
            let after = folder.uids();
            let gone = before.into_iter().filter(|uid| !after.contains(uid));
            shared
                .expunged
                .extend(gone.map(|uid| (folder.name.clone(), uid)));
            if silent {
                return String::new();
            }
            out + &format!("{tag} OK Expunge completed\r\n")
        });
        self.send(&out)
    }

    fn search(&mut self, tag: &str, by_uid: bool, mut args: &[Tok]) -> io::Result<Flow> {
        let mut returns = None;
        if args.first().is_some_and(|a| a.upper() == "RETURN") {
            if !self.has_cap("ESEARCH") || args.len() < 2 {
                return self.send(&format!("{tag} BAD RETURN without ESEARCH\r\n"));
            }
            let options: Vec<String> = args[1].items().iter().map(Tok::upper).collect();
            returns = Some(if options.is_empty() {
                vec!["ALL".to_owned()]
            } else {
                options
            });
            args = &args[2..];
        }
        if args.first().is_some_and(|a| a.upper() == "CHARSET") {
            args = args.get(2..).unwrap_or_default();
        }
        let out = self.with_folder(|folder, _, _| {
            let mut keep: Vec<usize> = (0..folder.messages.len()).collect();
            let mut rest = args.iter();
            while let Some(criterion) = rest.next() {
                let (flag, want) = match criterion.upper().as_str() {
                    "ALL" => continue,
                    "SEEN" => ("\\Seen", true),
                    "UNSEEN" => ("\\Seen", false),
                    "DELETED" => ("\\Deleted", true),
                    "UNDELETED" => ("\\Deleted", false),
                    "FLAGGED" => ("\\Flagged", true),
                    word => {
                        let (text, uid) = match word {
                            "UID" => (rest.next().map_or("", Tok::text), true),
                            _ => (word, false),
                        };
                        let set = Set::parse(text)?;
                        let matching = Self::matching(folder, &set, uid);
                        keep.retain(|i| matching.contains(i));
                        continue;
                    }
                };
                keep.retain(|&i| folder.messages[i].has_flag(flag) == want);
            }
            let found: Vec<u32> = keep.iter().map(|&i| folder.key(i, by_uid)).collect();
            let Some(options) = returns else {
                let list: String = found.iter().map(|n| format!(" {n}")).collect();
                return Some(format!("* SEARCH{list}\r\n"));
            };
            let mut line = format!(
                "* ESEARCH (TAG \"{tag}\"){}",
                if by_uid { " UID" } else { "" }
            );
            for option in options {
                let value = match option.as_str() {
                    "ALL" if !found.is_empty() => compress(&found),
                    "MIN" if !found.is_empty() => found[0].to_string(),
                    "MAX" if !found.is_empty() => found[found.len() - 1].to_string(),
                    "COUNT" => found.len().to_string(),
                    _ => continue,
                };
                line.push_str(&format!(" {option} {value}"));
            }
            Some(line + "\r\n")
        });
        match out {
            Some(out) => self.send(&format!("{out}{tag} OK Search completed\r\n")),
            None => self.send(&format!("{tag} BAD Invalid search criteria\r\n")),
        }
    }

    fn fetch(&mut self, tag: &str, by_uid: bool, args: &[Tok]) -> io::Result<Flow> {
        let bye_after = self.faults.iter().find_map(|f| match f {
            Fault::ByeMidSession { after_fetches } => Some(*after_fetches),
            _ => None,
        });
        if bye_after == Some(0) {
            return self.finish(b"* BYE shutting down\r\n", Then::Cut);
        }
        let set = args.first().and_then(|a| Set::parse(a.text()));
        let spec = args.get(1).map(|spec| match spec.upper().as_str() {
            "FAST" => parse("(FLAGS INTERNALDATE RFC822.SIZE)").unwrap().remove(0),
            _ => spec.clone(),
        });
        let items: Option<Vec<Item>> = spec
            .map_or(Vec::new(), |s| s.items())
            .iter()
            .map(|t| Item::parse(t.text()))
            .collect();
        let (Some(set), Some(items)) = (set, items.filter(|i| !i.is_empty())) else {
            return self.send(&format!("{tag} BAD Invalid FETCH arguments\r\n"));
        };
        let faults = self.faults.clone();
        let (mut out, mut then) = self.with_folder(|folder, read_only, shared| {
            let (mut out, mut then) = (Vec::new(), Then::Go);
            'messages: for i in Self::matching(folder, &set, by_uid) {
                let message = &mut folder.messages[i];
                let uid = message.uid;
                let seq = i + 1;
                if faults.contains(&Fault::StallFetch { uid }) {
                    then = Then::Stall;
                    break;
                }
                if faults.contains(&Fault::MalformedFetch { uid }) {
                    out.extend(format!("* {seq} FETCH (UID {uid} RFC822.SIZE xyz\r\n").bytes());
                    continue;
                }
                let reads = items
                    .iter()
                    .any(|i| matches!(i, Item::Body { peek: false, .. }));
                let newly_seen = reads && !read_only && !message.has_flag("\\Seen");
                if newly_seen {
                    message.flags.push("\\Seen".to_owned());
                }
                let flags = format!("FLAGS ({})", message.flags.join(" "));
                let mut parts = vec![format!("UID {uid}").into_bytes()];
                let mut literal_sent = false;
                for item in &items {
                    let mut part = match item {
                        Item::Uid => continue,
                        Item::Flags => flags.clone().into_bytes(),
                        Item::Size => {
                            let reported = faults.iter().find_map(|f| match *f {
                                Fault::UnderReportedSize { uid: u, reported } if u == uid => {
                                    Some(reported)
                                }
                                _ => None,
                            });
                            let size = reported.unwrap_or(message.data.len());
                            format!("RFC822.SIZE {size}").into_bytes()
                        }
                        Item::Date => format!("INTERNALDATE \"{}\"", message.date).into_bytes(),
                        Item::Body { name, section, .. }
                            if section.is_empty() && faults.contains(&Fault::OriginZeroBody) =>
                        {
                            format!("{name}<0> ").into_bytes()
                        }
                        Item::Body { name, .. } => format!("{name} ").into_bytes(),
                    };
                    if let Item::Body {
                        section: wanted, ..
                    } = item
                    {
                        let bytes = section(&message.data, wanted).unwrap_or_default();
                        let first = !std::mem::replace(&mut literal_sent, true);
                        let mut announce = bytes.len() as u64;
                        let mut body = bytes.clone();
                        for fault in &faults {
                            match *fault {
                                Fault::CutLiteral { uid: u, after } if u == uid && first => {
                                    body.truncate(after);
                                    then = Then::Cut;
                                }
                                Fault::HugeLiteral {
                                    uid: u,
                                    announce: a,
                                } if u == uid && first => {
                                    (announce, then) = (a, Then::Stall);
                                    body.truncate(16);
                                }
                                Fault::LiteralLongerThanAnnounced { uid: u, extra } if u == uid => {
                                    body.extend(std::iter::repeat_n(b'X', extra));
                                }
                                _ => {}
                            }
                        }
                        part.extend(format!("{{{announce}}}\r\n").bytes());
                        part.extend(&body);
                        if then != Then::Go {
                            parts.push(part);
                            out.extend(format!("* {seq} FETCH (").bytes());
                            out.extend(parts.join(&b' '));
                            break 'messages;
                        }
                        if wanted.is_empty() && body == message.data {
                            shared.downloaded.push((folder.name.clone(), uid));
                        }
                    }
                    parts.push(part);
                }
                if newly_seen && !items.iter().any(|i| matches!(i, Item::Flags)) {
                    parts.push(flags.into_bytes());
                }
                out.extend(format!("* {seq} FETCH (").bytes());
                out.extend(parts.join(&b' '));
                out.extend(b")\r\n");
            }
            (out, then)
        });
        if then == Then::Go {
            out.extend(format!("{tag} OK Fetch completed\r\n").bytes());
            self.fetches += 1;
            if bye_after == Some(self.fetches) {
                out.extend(b"* BYE shutting down\r\n");
                then = Then::Cut;
            }
        }
        self.finish(&out, then)
    }

    fn store(&mut self, tag: &str, by_uid: bool, args: &[Tok]) -> io::Result<Flow> {
        let set = args.first().and_then(|a| Set::parse(a.text()));
        let op = args.get(1).map(Tok::upper).unwrap_or_default();
        let flags: Vec<String> = args
            .iter()
            .skip(2)
            .flat_map(Tok::items)
            .map(|t| t.text().to_owned())
            .collect();
        let (op, silent) = match op.strip_suffix(".SILENT") {
            Some(op) => (op.to_owned(), true),
            None => (op, false),
        };
        let (Some(set), true) = (set, matches!(op.as_str(), "FLAGS" | "+FLAGS" | "-FLAGS")) else {
            return self.send(&format!("{tag} BAD Invalid STORE arguments\r\n"));
        };
        let out = self.with_folder(|folder, read_only, _| {
            if read_only {
                return format!("{tag} NO Mailbox is read-only\r\n");
            }
            let mut out = String::new();
            for i in Self::matching(folder, &set, by_uid) {
                let message = &mut folder.messages[i];
                if op == "FLAGS" {
                    message.flags.clear();
                }
                for flag in &flags {
                    let present = message.has_flag(flag);
                    if op == "-FLAGS" {
                        message.flags.retain(|f| !f.eq_ignore_ascii_case(flag));
                    } else if !present {
                        message.flags.push(flag.clone());
                    }
                }
                if !silent {
                    let uid = if by_uid {
                        format!("UID {} ", message.uid)
                    } else {
                        String::new()
                    };
                    out.push_str(&format!(
                        "* {} FETCH ({uid}FLAGS ({}))\r\n",
                        i + 1,
                        message.flags.join(" ")
                    ));
                }
            }
            out + &format!("{tag} OK Store completed\r\n")
        });
        self.send(&out)
    }

    /// COPY, or MOVE (`remove`).
    fn transfer(
        &mut self,
        tag: &str,
        by_uid: bool,
        args: &[Tok],
        remove: bool,
    ) -> io::Result<Flow> {
        let (Some(set), Some(to)) = (args.first().and_then(|a| Set::parse(a.text())), args.get(1))
        else {
            return self.send(&format!("{tag} BAD Invalid arguments\r\n"));
        };
        let to = to.text().to_owned();
        let uidplus = self.has_cap("UIDPLUS");
        let out = self.with_folder(|folder, read_only, shared| {
            if remove && read_only {
                return format!("{tag} NO Mailbox is read-only\r\n");
            }
            let same = folder.is(&to);
            if !same && shared.folder(&to).is_none() {
                return format!("{tag} NO [TRYCREATE] Mailbox doesn't exist\r\n");
            }
            let chosen = Self::matching(folder, &set, by_uid);
            let mut done = Vec::new();
            for &i in &chosen {
                let copy = Message {
                    uid: 0,
                    ..folder.messages[i].clone()
                };
                let dest = if same {
                    &mut *folder
                } else {
                    shared.folder(&to).unwrap()
                };
                let new_uid = dest.add(copy);
                let (from, to) = (folder.name.clone(), to.clone());
                done.push(Transfer {
                    from,
                    uid: folder.messages[i].uid,
                    to,
                    new_uid,
                });
            }
            let validity = if same {
                folder.uidvalidity
            } else {
                shared.folder(&to).unwrap().uidvalidity
            };
            let src: Vec<u32> = done.iter().map(|t| t.uid).collect();
            let dst: Vec<u32> = done.iter().map(|t| t.new_uid).collect();
            let code = if uidplus && !done.is_empty() {
                format!(
                    "[COPYUID {validity} {} {}] ",
                    compress(&src),
                    compress(&dst)
                )
            } else {
                String::new()
            };
            if !remove {
                shared.copied.extend(done);
                return format!("{tag} OK {code}Copy completed\r\n");
            }
            let mut out = if code.is_empty() {
                String::new()
            } else {
                format!("* OK {code}Moved\r\n")
            };
            out += &remove_where(folder, |i, _| chosen.contains(&i));
            shared.moved.extend(done);
            out + &format!("{tag} OK Move completed\r\n")
        });
        self.send(&out)
    }
}

/// Removes the messages for which `doomed(index, message)` holds (index as
/// before any removal); returns the `* n EXPUNGE` lines, each numbered as
/// the sequence is after the previous removals.
fn remove_where(folder: &mut Folder, doomed: impl Fn(usize, &Message) -> bool) -> String {
    let mut out = String::new();
    for (original, message) in std::mem::take(&mut folder.messages).into_iter().enumerate() {
        if doomed(original, &message) {
            out.push_str(&format!("* {} EXPUNGE\r\n", folder.messages.len() + 1));
        } else {
            folder.messages.push(message);
        }
    }
    out
}
