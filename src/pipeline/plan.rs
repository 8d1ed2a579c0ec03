//! What a poll will do with each listed message: pure functions of the
//! listing, the state and the account, tested without a server.

use std::collections::{HashMap, HashSet};

use crate::config::{Account, FetchMode};
use crate::source::Listed;
use crate::source::imap::codec::MailboxStatus;
use crate::state::MailboxState;

/// What a poll does with a mailbox's messages.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Plan {
    /// Delivered by an earlier poll and still on the server: only deleted
    /// (or left, in keep mode).
    pub(super) old: Vec<u32>,
    /// To retrieve now, in listing order.
    pub(super) new: Vec<Listed>,
}

/// Splits a listing into the messages delivered by an earlier poll and
/// those to retrieve now, in place: beyond the listing itself, it costs
/// memory in proportion to what the state knows, not to the mailbox (a
/// million new messages must not be copied).
///
/// An id that the server gives to more than one message identifies none
/// of them (a server that reuses UIDLs, a broken migration): when the state
/// knows it, such messages are never taken for delivered and are no longer
/// recorded under it, so they are retrieved, and deleted only once this
/// poll delivered them. In keep mode that means retrieving them again at
/// every poll: a duplicate is the price of never skipping mail that was
/// not delivered. (An id the state does not know yet is retrieved anyway.)
pub(super) fn plan(
    mut listed: Vec<Listed>,
    state: &MailboxState,
    fetch: FetchMode,
    mailbox: &str,
) -> Plan {
    let mut known: HashMap<&str, u32> = HashMap::new();
    for uid in listed.iter().filter_map(|message| message.uid.as_deref()) {
        if state.is_delivered(uid) {
            *known.entry(uid).or_default() += 1;
        }
    }
    let shared: HashSet<String> = known
        .into_iter()
        .filter(|(_, count)| *count > 1)
        .map(|(uid, _)| uid.to_owned())
        .collect();
    if !shared.is_empty() {
        let mut examples: Vec<&str> = shared.iter().map(String::as_str).take(3).collect();
        examples.sort_unstable();
        tracing::warn!(
            "{mailbox}: the server gives the same unique id to several messages ({}{}); \
             they cannot be told apart, so they are fetched at every poll until they are deleted",
            examples.join(", "),
            if shared.len() > examples.len() {
                ", …"
            } else {
                ""
            }
        );
    }
    let mut old = Vec::new();
    listed.retain_mut(|message| {
        if message.uid.as_ref().is_some_and(|uid| shared.contains(uid)) {
            message.uid = None;
        }
        let delivered = fetch != FetchMode::All
            && message
                .uid
                .as_deref()
                .is_some_and(|uid| state.is_delivered(uid));
        if delivered {
            old.push(message.number);
            return false;
        }
        fetch != FetchMode::Unseen || !message.seen
    });
    Plan { old, new: listed }
}

/// What a folder's `~` record holds: the server's counters, and what of
/// the account decides a plan (see "The no-op poll" in docs/design.md). A
/// poll that finds the same line recorded by the last poll, with nothing
/// journaled since, would find nothing to do, and skips the folder.
///
/// `None` when the counters cannot prove that: the server left one out,
/// or `fetch = "unseen"` makes flags matter and there is no HIGHESTMODSEQ
/// (CONDSTORE) to show that none changed; counting unseen messages would
/// not do, since one message read and another made unread again leave
/// the count as it was.
pub(super) fn clean_marker(status: &MailboxStatus, account: &Account) -> Option<String> {
    let (uidvalidity, uidnext, messages) = (status.uidvalidity?, status.uidnext?, status.messages?);
    let fetch = match account.fetch {
        FetchMode::New => "new".to_owned(),
        FetchMode::All => "all".to_owned(),
        FetchMode::Unseen => format!("unseen highestmodseq={}", status.highestmodseq?),
    };
    // Keep mode leaves delivered mail on the server, which a later switch
    // to deleting must remove; where it goes (move_to) changes nothing.
    let after = if account.keep { "keep" } else { "remove" };
    Some(format!(
        "uidvalidity={uidvalidity} uidnext={uidnext} messages={messages} fetch={fetch} after={after}"
    ))
}

/// What [`limit`] left on the server.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Limited {
    /// Over `max_size`, by number and size.
    pub(super) too_big: Vec<(u32, u64)>,
    /// Left for the next poll by `max_per_poll`.
    pub(super) deferred: usize,
}

/// Leaves out of `new` the messages over `max_size` (whose size is known)
/// and, past the first `max_per_poll`, the rest.
pub(super) fn limit(
    new: &mut Vec<Listed>,
    max_size: Option<u64>,
    max_per_poll: Option<usize>,
) -> Limited {
    let mut limited = Limited::default();
    if let Some(max_size) = max_size {
        new.retain(|message| match message.size {
            Some(size) if size > max_size => {
                limited.too_big.push((message.number, size));
                false
            }
            _ => true,
        });
    }
    if let Some(max) = max_per_poll
        && new.len() > max
    {
        limited.deferred = new.len() - max;
        new.truncate(max);
    }
    limited
}

/// A message that reached some of its recipients at an earlier poll (an
/// LMTP server or an MDA took it for some only), to be sent to the others.
#[derive(Debug)]
pub(super) struct Retry {
    /// The recipients that have it.
    pub(super) reached: Vec<String>,
    /// The recipients of today's `to` that do not.
    pub(super) remaining: Vec<String>,
}

/// Finds the messages of `new` that reached some recipients before: those
/// that still lack some get a [`Retry`] (by number); those that all of
/// `recipients` have are taken out of `new` and returned.
pub(super) fn partial_retries(
    new: &mut Vec<Listed>,
    state: &MailboxState,
    recipients: &[String],
) -> (HashMap<u32, Retry>, Vec<Listed>) {
    let mut retries = HashMap::new();
    let mut finished = Vec::new();
    new.retain(|message| {
        let reached = message
            .uid
            .as_deref()
            .map_or(&[][..], |uid| state.delivered_to(uid));
        if reached.is_empty() {
            return true;
        }
        let remaining: Vec<String> = recipients
            .iter()
            .filter(|recipient| !reached.contains(recipient))
            .cloned()
            .collect();
        if remaining.is_empty() {
            finished.push(message.clone());
            return false;
        }
        let reached = reached.to_vec();
        retries.insert(message.number, Retry { reached, remaining });
        true
    });
    (retries, finished)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Entry;

    fn listed(number: u32, uid: &str, size: u64, seen: bool) -> Listed {
        Listed {
            number,
            uid: (!uid.is_empty()).then(|| uid.to_owned()),
            size: Some(size),
            seen,
            digest: None,
        }
    }

    /// Each row: the listing (uid, seen), the uids the state has, the
    /// fetch mode, and the numbers planned as old and as new.
    #[test]
    fn plans() {
        use FetchMode::{All, New, Unseen};
        type Row = (
            &'static [(&'static str, bool)],
            &'static [&'static str],
            FetchMode,
            &'static [u32],
            &'static [u32],
        );
        let rows: &[Row] = &[
            // Nothing known: everything is new.
            (&[("a", false), ("b", true)], &[], New, &[], &[1, 2]),
            // Known ids are old, whatever their flags.
            (&[("a", false), ("b", true)], &["a"], New, &[1], &[2]),
            // Unseen: a seen message is neither old nor new.
            (
                &[("a", false), ("b", true), ("c", false)],
                &["a"],
                Unseen,
                &[1],
                &[3],
            ),
            // All: nothing is old.
            (&[("a", false), ("b", true)], &["a", "b"], All, &[], &[1, 2]),
            // A known id listed twice identifies neither message.
            (
                &[("x", false), ("x", false), ("y", false)],
                &["x", "y"],
                New,
                &[3],
                &[1, 2],
            ),
            // An unknown id listed twice: both new anyway.
            (&[("x", false), ("x", false)], &[], New, &[], &[1, 2]),
            // No UIDL: nothing can be known.
            (&[("", false), ("", false)], &["a"], New, &[], &[1, 2]),
        ];
        for (index, (listing, known, fetch, old, new)) in rows.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let mut state = MailboxState::open(dir.path(), "key").unwrap();
            let entries: Vec<Entry> = known.iter().map(|uid| Entry::new(*uid)).collect();
            state.record_delivered(&entries).unwrap();
            let listing: Vec<Listed> = listing
                .iter()
                .enumerate()
                .map(|(i, (uid, seen))| listed(i as u32 + 1, uid, 10, *seen))
                .collect();
            let plan = plan(listing, &state, *fetch, "m");
            assert_eq!(plan.old, *old, "row {index}: old");
            let numbers: Vec<u32> = plan.new.iter().map(|m| m.number).collect();
            assert_eq!(numbers, *new, "row {index}: new");
            // A shared id is never recorded under it again.
            if index == 4 {
                assert!(plan.new.iter().all(|m| m.uid.is_none()));
            }
        }
    }

    #[test]
    fn clean_markers() {
        let text = "[[account]]\nname = \"t\"\nprotocol = \"imap\"\nhost = \"localhost\"\n\
                    username = \"u\"\ndeliver = \"smtp://127.0.0.1:9\"\n";
        let mut account = crate::config::parse(std::path::Path::new("test"), text)
            .unwrap()
            .accounts
            .remove(0);
        let status = MailboxStatus {
            messages: Some(3),
            uidnext: Some(9),
            uidvalidity: Some(7),
            highestmodseq: None,
        };
        account.keep = true;
        account.fetch = FetchMode::New;
        let keep_new = clean_marker(&status, &account).unwrap();
        assert_eq!(
            keep_new,
            "uidvalidity=7 uidnext=9 messages=3 fetch=new after=keep"
        );
        // Every counter, and what the account does with mail, tells apart.
        let mut markers = HashSet::from([keep_new]);
        for changed in [
            MailboxStatus {
                messages: Some(2),
                ..status
            },
            MailboxStatus {
                uidnext: Some(10),
                ..status
            },
            MailboxStatus {
                uidvalidity: Some(8),
                ..status
            },
        ] {
            assert!(markers.insert(clean_marker(&changed, &account).unwrap()));
        }
        account.fetch = FetchMode::All;
        assert!(markers.insert(clean_marker(&status, &account).unwrap()));
        account.keep = false;
        assert!(markers.insert(clean_marker(&status, &account).unwrap()));
        // Without one of the three counters, nothing is proved.
        for missing in [
            MailboxStatus {
                messages: None,
                ..status
            },
            MailboxStatus {
                uidnext: None,
                ..status
            },
            MailboxStatus {
                uidvalidity: None,
                ..status
            },
        ] {
            assert_eq!(clean_marker(&missing, &account), None);
        }
        // Flags matter with fetch = "unseen": no HIGHESTMODSEQ, no marker.
        account.fetch = FetchMode::Unseen;
        assert_eq!(clean_marker(&status, &account), None);
        let modseq = |n| MailboxStatus {
            highestmodseq: Some(n),
            ..status
        };
        let unseen = clean_marker(&modseq(5), &account).unwrap();
        assert!(unseen.contains("highestmodseq=5"), "{unseen}");
        assert!(markers.insert(unseen));
        assert!(markers.insert(clean_marker(&modseq(6), &account).unwrap()));
    }

    /// Each row: sizes, max_size, max_per_poll, numbers left, too big,
    /// deferred.
    #[test]
    fn limits() {
        type Row = (
            &'static [u64],
            Option<u64>,
            Option<usize>,
            &'static [u32],
            &'static [u32],
            usize,
        );
        let rows: &[Row] = &[
            (&[5, 50, 500], None, None, &[1, 2, 3], &[], 0),
            (&[5, 50, 500], Some(50), None, &[1, 2], &[3], 0),
            (&[5, 50, 500], None, Some(2), &[1, 2], &[], 1),
            // Too big first, then the count among the rest.
            (&[500, 5, 50, 6], Some(100), Some(2), &[2, 3], &[1], 1),
            (&[5], Some(1), Some(0), &[], &[1], 0),
        ];
        for (index, (sizes, max_size, max_per_poll, left, too_big, deferred)) in
            rows.iter().enumerate()
        {
            let mut new: Vec<Listed> = sizes
                .iter()
                .enumerate()
                .map(|(i, size)| listed(i as u32 + 1, "u", *size, false))
                .collect();
            let limited = limit(&mut new, *max_size, *max_per_poll);
            let numbers: Vec<u32> = new.iter().map(|m| m.number).collect();
            assert_eq!(numbers, *left, "row {index}");
            let big: Vec<u32> = limited.too_big.iter().map(|(n, _)| *n).collect();
            assert_eq!(big, *too_big, "row {index}");
            assert_eq!(limited.deferred, *deferred, "row {index}");
        }
    }
}
