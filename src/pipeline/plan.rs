//! What a poll will do with each listed message: pure functions of the
//! listing, the state and the account, tested without a server.

use std::collections::{HashMap, HashSet};

use crate::config::FetchMode;
use crate::source::Listed;
use crate::state::MailboxState;

/// Splits a listing into the messages delivered by an earlier poll (`old`)
/// and those to retrieve now (`new`, in listing order).
///
/// A unique id that the server gives to more than one message identifies
/// none of them (a server that reuses UIDLs, a broken migration): such
/// messages are never taken for delivered and never recorded under that
/// id, so they are retrieved, and deleted only once this poll delivered
/// them. In keep mode that means retrieving them again at every poll: a
/// duplicate is the price of never skipping mail that was not delivered.
pub(super) fn sort_out(
    listed: Vec<Listed>,
    state: &MailboxState,
    fetch: FetchMode,
    mailbox: &str,
) -> (Vec<Listed>, Vec<Listed>) {
    let mut uses: HashMap<&str, u32> = HashMap::new();
    for uid in listed.iter().filter_map(|message| message.uid.as_deref()) {
        *uses.entry(uid).or_default() += 1;
    }
    let shared: HashSet<String> = uses
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
    let (old, mut new): (Vec<Listed>, Vec<Listed>) = listed
        .into_iter()
        .map(|mut message| {
            if message.uid.as_ref().is_some_and(|uid| shared.contains(uid)) {
                message.uid = None;
            }
            message
        })
        .partition(|message| {
            fetch != FetchMode::All
                && message
                    .uid
                    .as_deref()
                    .is_some_and(|uid| state.is_delivered(uid))
        });
    if fetch == FetchMode::Unseen {
        new.retain(|message| !message.seen);
    }
    (old, new)
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
