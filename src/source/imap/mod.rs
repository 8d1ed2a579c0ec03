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

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::time::Duration;

use tracing::{debug, warn};

use self::codec::{Code, Fetch, MAX_LINE, MAX_SMALL_LITERAL, Part, Response, Status, Untagged};
use super::wire::ServerSpec;
use super::{Listed, Listing, Retrieved, Source};
use crate::config::{Account, Secret};
use crate::error::{Error, Kind};
use crate::imap::session::{Session, trace_line};
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

#[derive(Debug, Clone)]
enum After {
    Keep,
    Expunge,
    MoveTo(String),
}

impl Imap {
    /// Connects, secures the link as configured and logs in.
    pub async fn connect(account: &Account, secret: Option<&Secret>) -> Result<Imap, Error> {
        let session = Session::connect(&ServerSpec::from(account), secret).await?;
        Ok(Imap {
            session,
            selected: None,
            queued: VecDeque::new(),
            in_flight: VecDeque::new(),
            answered: HashSet::new(),
            after: match (&account.move_to, account.keep) {
                (Some(folder), _) => After::MoveTo(folder.clone()),
                (None, true) => After::Keep,
                (None, false) => After::Expunge,
            },
        })
    }

    // ---- commands and responses ------------------------------------------

    /// Reads a response that cannot carry a message body of ours.
    async fn read_plain(&mut self) -> Result<Response, Error> {
        self.read_response(None::<&mut NoWriter>).await
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

    /// Sends a command and collects the untagged responses `keep` wants
    /// until it completes; `NO`/`BAD` is an error.
    async fn collect(
        &mut self,
        command: &str,
        keep: impl Fn(&Untagged) -> bool,
    ) -> Result<Vec<Untagged>, Error> {
        let tag = self.session.send(command).await?;
        let mut kept = Vec::new();
        loop {
            match self.read_plain().await? {
                Response::Untagged(untagged) if keep(&untagged) => kept.push(untagged),
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
                    return Ok(kept);
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
                "CAPABILITY" => self.session.learn_caps(Some(&code)),
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
    /// was checked against what the server said the message's size is.
    async fn read_response<W: MessageWriter>(
        &mut self,
        mut body: Option<&mut W>,
    ) -> Result<Response, Error> {
        let mut parts = Vec::new();
        loop {
            let line = self.session.wire.read_line(MAX_LINE).await?;
            trace_line(&line);
            let announced = codec::literal_len(&line)
                .map_err(|err| self.session.error(Kind::Protocol, &err.to_string()))?;
            let streams_body = announced.is_some() && codec::is_message_body(&line);
            parts.push(Part::Text(line));
            let Some(len) = announced else { break };
            if streams_body {
                let limit = self.body_limit(codec::uid_in(parts_text(&parts)));
                if len > limit {
                    return Err(self.session.error(
                        Kind::Protocol,
                        &format!("the server announced a {len}-byte message where at most {limit} bytes were expected"),
                    ));
                }
                self.stream_literal(len, body.as_deref_mut()).await?;
                debug!(target: TRACE, "S: <message body: {len} bytes>");
                parts.push(Part::Streamed(len));
            } else {
                if len > MAX_SMALL_LITERAL {
                    return Err(self.session.error(
                        Kind::Protocol,
                        &format!("the server announced a {len}-byte literal"),
                    ));
                }
                parts.push(Part::Literal(
                    self.session.read_literal(len as usize).await?,
                ));
            }
        }
        codec::parse(&parts).map_err(|err| {
            self.session
                .error(Kind::Protocol, &format!("malformed response: {err}"))
        })
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

    /// Forgets a completed body fetch; returns its UID.
    fn complete(&mut self, tag: &str) -> u32 {
        let pos = self
            .in_flight
            .iter()
            .position(|(t, _)| t == tag)
            .unwrap_or_default();
        self.in_flight.remove(pos).map_or(0, |(_, uid)| uid)
    }

    /// The largest body the server may announce for `uid`: its
    /// RFC822.SIZE with some slack, or without a UID the largest in flight.
    fn body_limit(&self, uid: Option<u32>) -> u64 {
        let Some(selected) = &self.selected else {
            return u64::MAX;
        };
        let expected = match uid.and_then(|uid| selected.sizes.get(&uid)) {
            Some(size) => Some(*size),
            None => self
                .in_flight
                .iter()
                .filter_map(|(_, uid)| selected.sizes.get(uid))
                .max()
                .copied(),
        };
        expected.map_or(u64::MAX, |size| size + size / 8 + SIZE_SLACK)
    }

    fn folder(&self) -> &str {
        self.selected.as_ref().map_or("", |s| s.name.as_str())
    }

    // ---- waiting for mail (IDLE) --------------------------------------------

    /// Whether the server supports IDLE (RFC 2177).
    pub fn has_idle(&self) -> bool {
        self.session.caps.contains("IDLE")
    }

    /// Waits in the selected folder, with IDLE, until new mail arrives,
    /// `duration` passes, or `interrupt` completes; then ends the IDLE and
    /// says which it was. The session is ready for other commands after an
    /// `Ok`, and unusable after an `Err`.
    pub async fn idle(
        &mut self,
        duration: Duration,
        interrupt: impl Future<Output = ()>,
    ) -> Result<Woken, Error> {
        // A body fetch may still await its completion (its body was handed
        // over already): read it first, IDLE wants the line to itself.
        while !self.in_flight.is_empty() {
            let response = self.read_plain().await?;
            self.untagged(response)?;
        }
        let (exists, listed) = self
            .selected
            .as_ref()
            .map_or((0, 0), |s| (s.exists, s.listed));
        if exists > listed {
            // Mail arrived after the last listing, and the server said so
            // in an answer to another command.
            return Ok(Woken::NewMail);
        }
        let tag = self.session.tag();
        let mut idle = codec::Idle::new(&tag, exists);
        debug!(target: TRACE, "C: {tag} IDLE");
        self.session.wire.write_all(&idle.command()).await?;
        // While idling, the server is silent for as long as nothing happens.
        let normal = self
            .session
            .wire
            .set_timeout(duration + Duration::from_secs(60));
        let result = self.wait_idle(&mut idle, duration, interrupt).await;
        self.session.wire.set_timeout(normal);
        result
    }

    async fn wait_idle(
        &mut self,
        idle: &mut codec::Idle,
        duration: Duration,
        interrupt: impl Future<Output = ()>,
    ) -> Result<Woken, Error> {
        let deadline = tokio::time::sleep(duration);
        tokio::pin!(deadline);
        tokio::pin!(interrupt);
        let mut woken = None;
        loop {
            // A read in progress may be dropped below: `wire` buffers
            // partial lines, so nothing is lost unless a response carrying
            // a literal was cut between its parts, which IDLE's untagged
            // responses (EXISTS, EXPUNGE, FETCH FLAGS) do not have.
            let response = if idle.is_idling() && woken.is_none() {
                tokio::select! {
                    response = self.read_plain() => response?,
                    () = &mut deadline => {
                        woken = Some(Woken::Timeout);
                        self.end_idle(idle).await?;
                        continue;
                    }
                    () = &mut interrupt => {
                        woken = Some(Woken::Interrupted);
                        self.end_idle(idle).await?;
                        continue;
                    }
                }
            } else {
                self.read_plain().await?
            };
            let event = idle.on_response(&response).map_err(|err| {
                self.session
                    .error(Kind::Protocol, &format!("during IDLE: {err}"))
            })?;
            match event {
                codec::IdleEvent::Started => {}
                codec::IdleEvent::NewMail { exists } => {
                    if let Some(selected) = &mut self.selected {
                        selected.exists = exists;
                    }
                    if woken.is_none() {
                        woken = Some(Woken::NewMail);
                        self.end_idle(idle).await?;
                    }
                }
                codec::IdleEvent::Nothing => self.untagged(response)?,
                // The server may end an IDLE by itself: renew it.
                codec::IdleEvent::Finished => return Ok(woken.unwrap_or(Woken::Timeout)),
                codec::IdleEvent::Refused(text) => {
                    return Err(self
                        .session
                        .error(Kind::Server, &format!("IDLE failed: {text}")));
                }
                codec::IdleEvent::Bye(text) => {
                    return Err(self.session.error(
                        Kind::Connection,
                        &format!("the server ended the session: {text}"),
                    ));
                }
            }
        }
    }

    async fn end_idle(&mut self, idle: &mut codec::Idle) -> Result<(), Error> {
        if idle.done() {
            debug!(target: TRACE, "C: DONE");
            self.session.wire.write_all(codec::Idle::DONE).await?;
        }
        Ok(())
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

    /// `UID SEARCH` with the given criteria.
    async fn search(&mut self, criteria: &str) -> Result<Vec<u32>, Error> {
        let command = if self.session.caps.contains("ESEARCH") {
            format!("UID SEARCH RETURN (ALL) {criteria}")
        } else {
            format!("UID SEARCH {criteria}")
        };
        let results = self
            .collect(&command, |r| matches!(r, Untagged::Search(_)))
            .await?;
        Ok(results
            .into_iter()
            .flat_map(|result| match result {
                Untagged::Search(uids) => uids,
                _ => Vec::new(),
            })
            .collect())
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

/// Why an [`Imap::idle`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// The folder has new mail.
    NewMail,
    /// The IDLE lasted its whole duration (or the server ended it).
    Timeout,
    /// The caller's `interrupt` completed.
    Interrupted,
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
        let found: HashMap<u32, Fetch> = self
            .collect(
                &command,
                |r| matches!(r, Untagged::Fetch { attrs, .. } if attrs.size.is_some()),
            )
            .await?
            .into_iter()
            .filter_map(|result| match result {
                Untagged::Fetch { attrs, .. } => Some((attrs.uid?, attrs)),
                _ => None,
            })
            .collect();
        for message in messages.iter_mut() {
            if let Some(attrs) = found.get(&message.number) {
                let size = attrs.size.unwrap_or_default();
                message.size = Some(size);
                message.digest = digest(size, attrs.header_fields.as_deref().unwrap_or_default());
                if let Some(selected) = &mut self.selected {
                    selected.sizes.insert(message.number, size);
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
            match self.read_response(Some(&mut *out)).await? {
                Response::Untagged(Untagged::Fetch { attrs, .. }) if attrs.body.is_some() => {
                    let uid = attrs
                        .uid
                        .filter(|uid| {
                            self.in_flight.iter().any(|(_, u)| u == uid)
                                && !self.answered.contains(uid)
                        })
                        .ok_or_else(|| {
                            self.session.error(
                                Kind::Protocol,
                                &format!("unexpected message body for UID {:?}", attrs.uid),
                            )
                        })?;
                    self.answered.insert(uid);
                    return Ok(match attrs.body {
                        Some(Some(_)) => (uid, Retrieved::Complete),
                        _ => (
                            uid,
                            Retrieved::Refused("the server has no body for it".into()),
                        ),
                    });
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
