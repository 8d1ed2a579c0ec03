//! IMAP client (RFC 3501, with UIDPLUS, MOVE, ESEARCH, SASL-IR, LITERAL+,
//! UTF8=ACCEPT where the server has them).
//!
//! Messages are tracked by UID within a UIDVALIDITY, never by flags, so
//! other clients reading or flagging mail do not change what is fetched.
//! Bodies are fetched with `BODY.PEEK[]`, one pipelined `UID FETCH` per
//! message, and streamed from the socket into the sink.

/// The codec and name encoding live in the shared IMAP layer, which the
/// APPEND sink uses too; re-exported so that `source::imap::codec` paths
/// keep working.
pub use crate::imap::{codec, utf7};

mod idle;
pub use idle::Woken;

use std::collections::{HashMap, HashSet, VecDeque};

use tracing::{debug, warn};

use self::codec::{Code, MailboxStatus, Part, Response, ResponseBudget, Status, Untagged};
use super::wire::Server;
use super::{Listed, Listing, MAX_MESSAGES, Retrieved, Source, too_many_messages};
use crate::error::{Error, Kind};
use crate::imap::session::Session;
use crate::sink::MessageWriter;

/// Where protocol traces go (`-v`).
const TRACE: &str = "mailfetch::protocol";

/// Body fetches in flight at once: enough to keep the server streaming.
const PIPELINE_WINDOW: usize = 32;

/// The header fields that, with the size, make a message's digest.
const DIGEST_FIELDS: &str = "MESSAGE-ID DATE FROM";

/// A message body may exceed its announced RFC822.SIZE by this much before
/// the announcement is refused as a lie (some servers count slightly
/// differently); anything more is a misbehaving server.
const SIZE_SLACK: u64 = 64 * 1024;

/// A logged-in IMAP session.
pub struct Imap {
    /// The connection, capabilities and tags, shared with the APPEND sink's
    /// code; what follows is what only fetching needs.
    session: Session,
    selected: Option<Selected>,
    /// `UID FETCH` commands not sent yet.
    queued: VecDeque<u32>,
    /// Tags of body fetches sent and not completed, with their UID.
    in_flight: VecDeque<(String, u32)>,
    /// UIDs whose body (or NIL) arrived before their command completed.
    answered: HashSet<u32>,
    /// What to do with delivered messages.
    after: After,
}

#[derive(Debug, Clone)]
struct Selected {
    name: String,
    uidvalidity: Option<u32>,
    exists: u32,
    /// How many messages the last listing found, to tell whether the
    /// server announced more since.
    listed: u32,
    /// Sizes learned in `describe`, to check body literals against.
    sizes: HashMap<u32, u64>,
}

/// What becomes of a message once it is delivered.
#[derive(Debug, Clone)]
pub enum After {
    Keep,
    Expunge,
    MoveTo(String),
}

impl After {
    /// As the account's `keep` and `move_to` say.
    pub fn configured(keep: bool, move_to: Option<&str>) -> After {
        match (move_to, keep) {
            (Some(folder), _) => After::MoveTo(folder.to_owned()),
            (None, true) => After::Keep,
            (None, false) => After::Expunge,
        }
    }
}

impl Imap {
    /// Connects, secures the link as configured and logs in.
    pub async fn connect(server: &Server, after: After) -> Result<Imap, Error> {
        let session = Session::connect(server).await?;
        Ok(Imap {
            session,
            selected: None,
            queued: VecDeque::new(),
            in_flight: VecDeque::new(),
            answered: HashSet::new(),
            after,
        })
    }

    // ---- commands and responses ------------------------------------------

    /// Reads a response that cannot carry a message body of ours.
    async fn read_plain(&mut self) -> Result<Response, Error> {
        let (response, _) = self.read_response(None::<&mut NoWriter>).await?;
        Ok(response)
    }

    /// Sends a command and waits for its completion; `NO`/`BAD` is an error.
    async fn simple(&mut self, command: &str) -> Result<Option<Code>, Error> {
        let tag = self.session.send(command).await?;
        let (status, code, text) = self.finish_tagged(&tag).await?;
        if status != Status::Ok {
            return Err(self
                .session
                .error(Kind::Server, &format!("{command} failed: {text}")));
        }
        Ok(code)
    }

    /// Sends a command and hands each untagged response to `take` as it
    /// arrives, until the command completes; `NO`/`BAD` is an error.
    /// `take` keeps what it needs of a response (nothing piles up here) and
    /// gives back those it does not want, or refuses with a message.
    async fn for_each_untagged(
        &mut self,
        command: &str,
        mut take: impl FnMut(Untagged) -> Result<Option<Untagged>, String>,
    ) -> Result<(), Error> {
        let tag = self.session.send(command).await?;
        loop {
            match self.read_plain().await? {
                Response::Untagged(untagged) => match take(untagged) {
                    Ok(None) => {}
                    Ok(Some(untagged)) => self.untagged(Response::Untagged(untagged))?,
                    Err(message) => return Err(self.session.error(Kind::Protocol, &message)),
                },
                Response::Tagged {
                    tag: done,
                    status,
                    text,
                    ..
                } if done == tag => {
                    if status != Status::Ok {
                        return Err(self
                            .session
                            .error(Kind::Server, &format!("{command} failed: {text}")));
                    }
                    return Ok(());
                }
                other => self.untagged(other)?,
            }
        }
    }

    /// Reads responses until `tag` completes, handling untagged ones.
    async fn finish_tagged(&mut self, tag: &str) -> Result<(Status, Option<Code>, String), Error> {
        loop {
            match self.read_plain().await? {
                Response::Tagged {
                    tag: done,
                    status,
                    code,
                    text,
                } if done == tag => return Ok((status, code, text)),
                other => self.untagged(other)?,
            }
        }
    }

    /// Takes note of a response that was not the one waited for.
    fn untagged(&mut self, response: Response) -> Result<(), Error> {
        match response {
            Response::Untagged(Untagged::Capability(caps)) => {
                self.session.caps = caps.into_iter().collect()
            }
            Response::Untagged(Untagged::Exists(n)) => {
                if let Some(selected) = &mut self.selected {
                    selected.exists = n;
                }
            }
            Response::Untagged(Untagged::Expunge(_)) => {
                // Keeps the counts IDLE compares in step after a deletion.
                if let Some(selected) = &mut self.selected {
                    selected.exists = selected.exists.saturating_sub(1);
                    selected.listed = selected.listed.saturating_sub(1);
                }
            }
            Response::Untagged(Untagged::Status {
                status: Status::Bye,
                text,
                ..
            }) => {
                return Err(self.session.error(
                    Kind::Server,
                    &format!("the server ended the session: {text}"),
                ));
            }
            Response::Untagged(Untagged::Status {
                code: Some(code),
                text,
                ..
            }) => match code.name.as_str() {
                "UIDVALIDITY" => {
                    if let Some(selected) = &mut self.selected {
                        selected.uidvalidity = code.args.trim().parse().ok();
                    }
                }
                "CAPABILITY" => self.session.learn_caps(Some(&code))?,
                "ALERT" => warn!("{}: server alert: {text}", self.session.host),
                _ => {}
            },
            // A body fetch completing after its body was handed over.
            Response::Tagged { tag, .. } if self.in_flight.iter().any(|(t, _)| *t == tag) => {
                let uid = self.complete(&tag);
                self.answered.remove(&uid);
            }
            Response::Tagged { tag, text, .. } => {
                return Err(self.session.error(
                    Kind::Protocol,
                    &format!("unexpected completion of {tag}: {text}"),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// Reads one whole response. A message body in it is streamed into
    /// `body` (or thrown away when there is none) after its announced size
    /// was checked against what the server said the message's size is; a
    /// body far larger than that is read and thrown away, and said so.
    async fn read_response<W: MessageWriter>(
        &mut self,
        mut body: Option<&mut W>,
    ) -> Result<(Response, Body), Error> {
        let mut parts = Vec::new();
        let mut budget = ResponseBudget::default();
        let mut fate = Body::None;
        loop {
            let (line, announced) = self.session.read_text_part(&mut budget).await?;
            let streams_body = announced.is_some() && codec::is_message_body(&line);
            parts.push(Part::Text(line));
            let Some(len) = announced else { break };
            if !streams_body {
                let literal = self
                    .session
                    .read_small_literal(len, &parts, &mut budget)
                    .await?;
                parts.push(Part::Literal(literal));
                continue;
            }
            if !matches!(fate, Body::None) {
                // A second body would land in the same message.
                return Err(self.session.error(
                    Kind::Protocol,
                    "malformed response: two message bodies in one FETCH",
                ));
            }
            let size = self.expected_size(codec::uid_in(parts_text(&parts)));
            fate = match size.filter(|&size| len > size_limit(size)) {
                None => {
                    self.stream_literal(len, body.as_deref_mut()).await?;
                    Body::Streamed
                }
                Some(size) if len <= MAX_DISCARDED_BODY => {
                    self.stream_literal(len, None::<&mut NoWriter>).await?;
                    Body::Discarded(format!(
                        "the server sent {len} bytes for it after announcing {size} (RFC822.SIZE); \
                         left on the server"
                    ))
                }
                Some(size) => {
                    return Err(self.session.error(
                        Kind::Protocol,
                        &format!("the server announced a {len}-byte message where at most {} bytes were expected", size_limit(size)),
                    ));
                }
            };
            debug!(target: TRACE, "S: <message body: {len} bytes>");
            parts.push(Part::Streamed(len));
        }
        let response = self.session.parse(&parts)?;
        let carries_body = matches!(
            &response,
            Response::Untagged(Untagged::Fetch { attrs, .. }) if matches!(attrs.body, Some(Some(_)))
        );
        if !matches!(fate, Body::None) && !carries_body {
            // Whatever was written is not a message: the caller must abort
            // its writer, which an error makes it do.
            return Err(self.session.error(
                Kind::Protocol,
                "malformed response: a message body outside a FETCH response",
            ));
        }
        Ok((response, fate))
    }

    async fn stream_literal<W: MessageWriter>(
        &mut self,
        len: u64,
        mut out: Option<&mut W>,
    ) -> Result<(), Error> {
        let mut left = len;
        while left > 0 {
            if self.session.wire.unread().is_empty() && self.session.wire.fill().await? == 0 {
                return Err(self.session.error(
                    Kind::Connection,
                    &format!("the connection closed in the middle of a message, {} of {len} bytes received", len - left),
                ));
            }
            let unread = self.session.wire.unread();
            let take = (unread.len() as u64).min(left) as usize;
            if let Some(out) = out.as_mut() {
                out.write(&unread[..take]).await.map_err(|err| {
                    Error::new(Kind::Delivery, format!("cannot write message: {err}"))
                })?;
            }
            self.session.wire.consume(take);
            left -= take as u64;
        }
        Ok(())
    }

    /// Notes that a body fetch in flight got its answer; `None` if `uid`
    /// names none, or one answered already.
    fn answer(&mut self, uid: Option<u32>) -> Option<u32> {
        let uid = uid.filter(|uid| {
            self.in_flight.iter().any(|(_, u)| u == uid) && !self.answered.contains(uid)
        })?;
        self.answered.insert(uid);
        Some(uid)
    }

    /// Forgets a completed body fetch; returns its UID.
    fn complete(&mut self, tag: &str) -> u32 {
        let pos = self
            .in_flight
            .iter()
            .position(|(t, _)| t == tag)
            .unwrap_or_default();
        self.in_flight.remove(pos).map_or(0, |(_, uid)| uid)
    }

    /// The RFC822.SIZE the server announced for `uid`, or without a UID the
    /// largest of the messages in flight.
    fn expected_size(&self, uid: Option<u32>) -> Option<u64> {
        let selected = self.selected.as_ref()?;
        match uid.and_then(|uid| selected.sizes.get(&uid)) {
            Some(size) => Some(*size),
            None => self
                .in_flight
                .iter()
                .filter_map(|(_, uid)| selected.sizes.get(uid))
                .max()
                .copied(),
        }
    }

    fn folder(&self) -> &str {
        self.selected.as_ref().map_or("", |s| s.name.as_str())
    }

    // ---- mailboxes ------------------------------------------------------

    /// Opens a folder; read-only when nothing will be changed in it.
    pub async fn select(&mut self, name: &str, read_only: bool) -> Result<(), Error> {
        self.selected = Some(Selected {
            name: name.to_owned(),
            uidvalidity: None,
            exists: 0,
            listed: 0,
            sizes: HashMap::new(),
        });
        let command = format!(
            "{} {}",
            if read_only { "EXAMINE" } else { "SELECT" },
            self.session.mailbox(name)
        );
        let tag = self.session.send(&command).await?;
        let (status, _, text) = self.finish_tagged(&tag).await?;
        if status != Status::Ok {
            self.selected = None;
            return Err(self.session.error(
                Kind::Server,
                &format!("cannot open folder {name:?}: {text}"),
            ));
        }
        Ok(())
    }

    /// A folder's counters by `STATUS`, without opening it: one round trip
    /// whatever the folder holds. HIGHESTMODSEQ, which changes with every
    /// flag change, is asked for when `with_modseq` and the server offers
    /// CONDSTORE; otherwise it is `None`. A folder the server refuses is a
    /// [`Kind::Server`] error, as for [`select`](Self::select).
    pub async fn status(&mut self, name: &str, with_modseq: bool) -> Result<MailboxStatus, Error> {
        let modseq = with_modseq && self.session.caps.contains("CONDSTORE");
        let command = format!(
            "STATUS {} (UIDVALIDITY UIDNEXT MESSAGES{})",
            self.session.mailbox(name),
            if modseq { " HIGHESTMODSEQ" } else { "" }
        );
        let tag = self.session.send(&command).await?;
        let mut found = MailboxStatus::default();
        loop {
            match self.read_plain().await? {
                Response::Untagged(Untagged::MailboxStatus(status)) => found = status,
                Response::Tagged {
                    tag: done,
                    status,
                    text,
                    ..
                } if done == tag => {
                    if status != Status::Ok {
                        return Err(self.session.error(
                            Kind::Server,
                            &format!("cannot open folder {name:?}: {text}"),
                        ));
                    }
                    return Ok(found);
                }
                other => self.untagged(other)?,
            }
        }
    }

    /// `UID SEARCH` with the given criteria.
    async fn search(&mut self, criteria: &str) -> Result<Vec<u32>, Error> {
        let command = if self.session.caps.contains("ESEARCH") {
            format!("UID SEARCH RETURN (ALL) {criteria}")
        } else {
            format!("UID SEARCH {criteria}")
        };
        let mut uids = Vec::new();
        self.for_each_untagged(&command, |response| match response {
            Untagged::Search(found) => {
                if uids.len() + found.len() > MAX_MESSAGES {
                    return Err(too_many_messages());
                }
                uids.extend(found);
                Ok(None)
            }
            other => Ok(Some(other)),
        })
        .await?;
        Ok(uids)
    }

    /// Sends the queued body fetches the window has room for.
    async fn pump(&mut self) -> Result<(), Error> {
        let mut out = String::new();
        while self.in_flight.len() < PIPELINE_WINDOW {
            let Some(uid) = self.queued.pop_front() else {
                break;
            };
            let tag = self.session.tag();
            debug!(target: TRACE, "C: {tag} UID FETCH {uid} (UID BODY.PEEK[])");
            out.push_str(&format!("{tag} UID FETCH {uid} (UID BODY.PEEK[])\r\n"));
            self.in_flight.push_back((tag, uid));
        }
        if !out.is_empty() {
            self.session.wire.write_all(out.as_bytes()).await?;
        }
        Ok(())
    }

    /// Stores a flag on `uids`.
    async fn add_flag(&mut self, uids: &[u32], flag: &str) -> Result<(), Error> {
        self.simple(&format!(
            "UID STORE {} +FLAGS.SILENT ({flag})",
            codec::sequence_set(uids)
        ))
        .await
        .map(drop)
    }

    /// Flags `uids` \Deleted and expunges them, without touching messages
    /// someone else flagged: `UID EXPUNGE` with UIDPLUS; without it a plain
    /// EXPUNGE only if no other message is \Deleted.
    async fn expunge(&mut self, uids: &[u32]) -> Result<usize, Error> {
        self.add_flag(uids, "\\Deleted").await?;
        if self.session.caps.contains("UIDPLUS") {
            self.simple(&format!("UID EXPUNGE {}", codec::sequence_set(uids)))
                .await?;
            return Ok(uids.len());
        }
        let ours: HashSet<u32> = uids.iter().copied().collect();
        let flagged = self.search("DELETED").await?;
        let others = flagged.iter().filter(|uid| !ours.contains(uid)).count();
        if others > 0 {
            warn!(
                "{}: {}: left {} delivered message(s) flagged \\Deleted but not expunged: the server lacks UIDPLUS and \
                 {others} other message(s) in the folder are flagged \\Deleted, which a plain EXPUNGE would remove too",
                self.session.host,
                self.folder(),
                uids.len()
            );
            return Ok(0);
        }
        self.simple("EXPUNGE").await?;
        Ok(uids.len())
    }
}

/// The largest body the server may send for a message of `size` bytes
/// (RFC822.SIZE) before the message is refused.
fn size_limit(size: u64) -> u64 {
    size + size / 8 + SIZE_SLACK
}

/// The largest body read and thrown away to refuse a message whose
/// RFC822.SIZE was a lie while keeping the session in step. A larger one
/// is a protocol error: a new connection costs less than reading it.
const MAX_DISCARDED_BODY: u64 = 1 << 30;

/// What became of the message body in a response.
enum Body {
    /// The response had none.
    None,
    /// Written to the writer.
    Streamed,
    /// Read and thrown away, for this reason.
    Discarded(String),
}

/// Stands in for a sink where a response can carry no body of ours.
struct NoWriter;

impl MessageWriter for NoWriter {
    async fn write(&mut self, _chunk: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
}

/// The last text part read, where a literal was announced.
fn parts_text(parts: &[Part]) -> &[u8] {
    match parts.last() {
        Some(Part::Text(text)) => text,
        _ => &[],
    }
}

/// A compact digest of a message: SHA-256 over its size and its Message-ID,
/// Date and From fields (names lower-cased, values unfolded and trimmed),
/// cut to 64 bits. It recognises a message whose UID changed.
///
/// `None` without a Message-ID: size, Date and From alone (or the size
/// alone, when those are missing too) are shared by too many messages for
/// one to be taken for another, and a message taken for one delivered
/// before would never be fetched.
fn digest(size: u64, header_fields: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(header_fields)
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ");
    let mut fields: Vec<(String, &str)> = text
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim()))
        .collect();
    if !fields
        .iter()
        .any(|(name, value)| name == "message-id" && !value.is_empty())
    {
        return None;
    }
    fields.sort();
    let mut input = size.to_string();
    for (name, value) in fields {
        input.push_str(&format!("\n{name}:{value}"));
    }
    let hash = ring::digest::digest(&ring::digest::SHA256, input.as_bytes());
    Some(
        hash.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

impl Source for Imap {
    async fn list(&mut self, with_seen: bool) -> Result<Listing, Error> {
        let selected = self
            .selected
            .clone()
            .ok_or_else(|| self.session.error(Kind::Protocol, "no folder selected"))?;
        let uidvalidity = selected.uidvalidity.ok_or_else(|| {
            self.session.error(
                Kind::Protocol,
                &format!("folder {:?} has no UIDVALIDITY", selected.name),
            )
        })?;
        let mut listing = Listing {
            identity: Some(uidvalidity.to_string()),
            messages: Vec::new(),
        };
        if selected.exists == 0 {
            return Ok(listing);
        }
        let all = self.search("ALL").await?;
        if let Some(selected) = &mut self.selected {
            selected.listed = u32::try_from(all.len()).unwrap_or(u32::MAX);
        }
        let unseen: HashSet<u32> = if with_seen {
            self.search("UNSEEN").await?.into_iter().collect()
        } else {
            HashSet::new()
        };
        listing.messages = all
            .into_iter()
            .map(|uid| Listed {
                number: uid,
                uid: Some(uid.to_string()),
                seen: with_seen && !unseen.contains(&uid),
                ..Listed::default()
            })
            .collect();
        Ok(listing)
    }

    async fn describe(&mut self, messages: &mut [Listed]) -> Result<(), Error> {
        let wanted: Vec<u32> = messages
            .iter()
            // Described messages have a size; a digest only with a Message-ID.
            .filter(|m| m.size.is_none())
            .map(|m| m.number)
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let command = format!(
            "UID FETCH {} (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS ({DIGEST_FIELDS})])",
            codec::sequence_set(&wanted)
        );
        // Each answer is digested as it arrives: a folder of a million new
        // messages must not hold a million header sections at once.
        let wanted: HashMap<u32, usize> = messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m.size.is_none())
            .map(|(index, m)| (m.number, index))
            .collect();
        self.for_each_untagged(&command, |response| match response {
            Untagged::Fetch { attrs, .. } if attrs.size.is_some() => {
                if let Some(&index) = attrs.uid.and_then(|uid| wanted.get(&uid)) {
                    let size = attrs.size.unwrap_or_default();
                    let header_fields = attrs.header_fields.as_deref().unwrap_or_default();
                    messages[index].size = Some(size);
                    messages[index].digest = digest(size, header_fields);
                }
                Ok(None)
            }
            other => Ok(Some(other)),
        })
        .await?;
        if let Some(selected) = &mut self.selected {
            for &index in wanted.values() {
                if let Some(size) = messages[index].size {
                    selected.sizes.insert(messages[index].number, size);
                }
            }
        }
        Ok(())
    }

    fn request(&mut self, messages: &[Listed]) {
        self.queued
            .extend(messages.iter().map(|message| message.number));
    }

    /// Servers may run pipelined fetches concurrently (Dovecot does), so
    /// bodies and completions of different commands interleave: whichever
    /// body comes next is the one streamed into `out`.
    async fn retrieve<W: MessageWriter>(&mut self, out: &mut W) -> Result<(u32, Retrieved), Error> {
        loop {
            self.pump().await?;
            if self.in_flight.is_empty() {
                return Err(self
                    .session
                    .error(Kind::Protocol, "no message was requested"));
            }
            let (response, body) = self.read_response(Some(&mut *out)).await?;
            match response {
                Response::Untagged(Untagged::Fetch { attrs, .. }) if attrs.body.is_some() => {
                    let uid = self.answer(attrs.uid).ok_or_else(|| {
                        self.session.error(
                            Kind::Protocol,
                            &format!("unexpected message body for UID {:?}", attrs.uid),
                        )
                    })?;
                    return Ok(match (attrs.body, body) {
                        (_, Body::Discarded(reason)) => (uid, Retrieved::Refused(reason)),
                        (Some(Some(_)), _) => (uid, Retrieved::Complete),
                        _ => (
                            uid,
                            Retrieved::Refused("the server has no body for it".into()),
                        ),
                    });
                }
                // A part of the message, or another form of it, where the
                // whole was asked for: nothing was written, and it can
                // only be refused, saying what came.
                Response::Untagged(Untagged::Fetch { attrs, .. })
                    if !attrs.other_bodies.is_empty() =>
                {
                    if let Some(uid) = self.answer(attrs.uid) {
                        let reason = format!(
                            "the server sent {} instead of the whole message (BODY[])",
                            attrs.other_bodies.join(" ")
                        );
                        return Ok((uid, Retrieved::Refused(reason)));
                    }
                }
                Response::Tagged {
                    tag, status, text, ..
                } if self.in_flight.iter().any(|(t, _)| *t == tag) => {
                    let uid = self.complete(&tag);
                    if !self.answered.remove(&uid) {
                        let reason = if status == Status::Ok {
                            "it is no longer in the folder".to_owned()
                        } else {
                            text
                        };
                        return Ok((uid, Retrieved::Refused(reason)));
                    }
                }
                other => self.untagged(other)?,
            }
        }
    }

    async fn delete(&mut self, numbers: &[u32]) -> Result<usize, Error> {
        if numbers.is_empty() {
            return Ok(0);
        }
        match self.after.clone() {
            After::Keep => Ok(0),
            After::Expunge => self.expunge(numbers).await,
            After::MoveTo(folder) => {
                let target = self.session.mailbox(&folder);
                if self.session.caps.contains("MOVE") {
                    self.simple(&format!(
                        "UID MOVE {} {target}",
                        codec::sequence_set(numbers)
                    ))
                    .await?;
                    return Ok(numbers.len());
                }
                // Copied and flagged \Deleted by an earlier poll whose
                // expunge did not happen: copying again would duplicate.
                let copied: HashSet<u32> = self.search("DELETED").await?.into_iter().collect();
                let to_copy: Vec<u32> = numbers
                    .iter()
                    .copied()
                    .filter(|uid| !copied.contains(uid))
                    .collect();
                if !to_copy.is_empty() {
                    self.simple(&format!(
                        "UID COPY {} {target}",
                        codec::sequence_set(&to_copy)
                    ))
                    .await?;
                }
                self.expunge(numbers).await
            }
        }
    }

    async fn mark_seen(&mut self, numbers: &[u32]) -> Result<(), Error> {
        if numbers.is_empty() {
            return Ok(());
        }
        self.add_flag(numbers, "\\Seen").await
    }

    async fn finish(mut self) -> Result<(), Error> {
        let tag = self.session.send("LOGOUT").await?;
        loop {
            match self.read_plain().await {
                Ok(Response::Tagged { tag: done, .. }) if done == tag => return Ok(()),
                Ok(_) => {}
                // The server may close right after its BYE.
                Err(_) => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a UIDVALIDITY change, a message without a Message-ID must not
    /// be recognised by its size (and Date, From) alone: it would be taken
    /// for any delivered message of that size and never fetched.
    #[test]
    fn no_digest_without_a_message_id() {
        assert_eq!(digest(100, b""), None);
        assert_eq!(
            digest(100, b"Date: Mon, 1 Jan 2024\r\nFrom: a@b\r\n\r\n"),
            None
        );
        assert_eq!(digest(100, b"Message-ID: \r\nFrom: a@b\r\n\r\n"), None);
        assert!(digest(100, b"message-id: <1@x>\r\n\r\n").is_some());
    }

    #[test]
    fn digests_ignore_folding_case_and_order() {
        let a = digest(
            100,
            b"Message-ID: <1@x>\r\nDate: Mon, 1 Jan 2024\r\nFrom: a@b\r\n\r\n",
        );
        let b = digest(
            100,
            b"from: a@b\r\nmessage-id:\r\n <1@x>\r\ndate:  Mon, 1 Jan 2024 \r\n\r\n",
        );
        assert_eq!(a, b);
        assert_eq!(a.as_ref().map(String::len), Some(16));
        assert_ne!(
            a,
            digest(
                101,
                b"Message-ID: <1@x>\r\nDate: Mon, 1 Jan 2024\r\nFrom: a@b\r\n\r\n"
            )
        );
        assert_ne!(
            a,
            digest(
                100,
                b"Message-ID: <2@x>\r\nDate: Mon, 1 Jan 2024\r\nFrom: a@b\r\n\r\n"
            )
        );
    }
}
