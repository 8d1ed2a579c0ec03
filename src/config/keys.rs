//! The table of every configuration key: its name, its section, what it
//! applies to, and one line of documentation.
//!
//! It is plain `pub` data so that a generator (a man page, shell
//! completions) can walk it. Inside mailfetch it drives the unknown-key
//! suggestions, the checks that refuse a key in an account of the wrong
//! protocol or with the wrong kind of `deliver`, and the test that
//! `fetchrc.example` documents every key. A test checks that it names
//! exactly the keys the raw serde structs read; its order is the order in
//! which keys are suggested and listed.

use super::Protocol;

/// Where a key is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// The top level of the file, which holds only the section tables.
    File,
    /// `[general]`
    General,
    /// `[[account]]`
    Account,
    /// `[account.delivery]`
    Delivery,
    /// `[account.oauth]` and `[account.delivery.oauth]`
    OAuth,
}

/// The kinds of `deliver` target, as `[account.delivery]` keys apply to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Maildir,
    Mbox,
    Smtp,
    Lmtp,
    Mda,
    Imap,
}

/// What a key applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppliesTo {
    /// Every account (or, outside accounts, the whole file).
    All,
    /// Accounts with one of these protocols; an error in any other.
    Protocols(&'static [Protocol]),
    /// Accounts delivering to one of these; an error with any other target.
    Destinations(&'static [Destination]),
}

/// One configuration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub name: &'static str,
    pub section: Section,
    pub applies_to: AppliesTo,
    /// One line, for a man page or `--help`-style listing.
    pub doc: &'static str,
}

const IMAP_ONLY: AppliesTo = AppliesTo::Protocols(&[Protocol::Imap]);
/// The delivery targets that talk to a server over the network.
const SERVERS: AppliesTo =
    AppliesTo::Destinations(&[Destination::Smtp, Destination::Lmtp, Destination::Imap]);
/// The delivery targets with a time limit: servers, an MDA's run, and
/// the wait for an mbox's locks.
const WITH_TIMEOUT: AppliesTo = AppliesTo::Destinations(&[
    Destination::Smtp,
    Destination::Lmtp,
    Destination::Mda,
    Destination::Imap,
    Destination::Mbox,
]);
const IMAP_DELIVERY: AppliesTo = AppliesTo::Destinations(&[Destination::Imap]);
/// The delivery targets that can log in with OAuth2.
const SMTP_AND_IMAP: AppliesTo = AppliesTo::Destinations(&[Destination::Smtp, Destination::Imap]);

const fn key(
    name: &'static str,
    section: Section,
    applies_to: AppliesTo,
    doc: &'static str,
) -> Key {
    Key {
        name,
        section,
        applies_to,
        doc,
    }
}

use AppliesTo::All;
use Section::{Account, Delivery, File, General, OAuth};

/// Every key, section by section, each section in the order its keys are
/// suggested and listed in errors.
#[rustfmt::skip]
pub const KEYS: &[Key] = &[
    key("general", File, All, "The [general] section: settings for all accounts."),
    key("account", File, All, "One [[account]] section per mailbox to fetch from."),
    key("state_dir", General, All, "Where delivered-message state and the lock file live."),
    key("poll_interval", General, All, "Daemon mode: how often accounts are polled."),
    key("max_connections", General, All, "How many polls run at once."),
    key("name", Account, All, "A short, unique name for the account."),
    key("protocol", Account, All, "\"pop3\" or \"imap\"."),
    key("host", Account, All, "The server's host name or IP address."),
    key("port", Account, All, "The server's TCP port."),
    key("tls", Account, All, "\"implicit\", \"starttls\" or \"none\"."),
    key("ca_file", Account, All, "Extra certificate authorities to trust (PEM)."),
    key("fingerprint", Account, All, "Pins the server's certificate by its SHA-256."),
    key("username", Account, All, "The user name to log in with."),
    key("password", Account, All, "The password (or OAuth2 token) itself."),
    key("password_command", Account, All, "A shell command that prints the password."),
    key("password_file", Account, All, "A private file whose first line is the password."),
    key("auth", Account, All, "The login mechanism, or \"auto\"."),
    key("oauth", Account, All, "The [account.oauth] table: log in with OAuth2 tokens that mailfetch keeps fresh."),
    key("allow_plaintext_auth", Account, All, "Accept sending the password unencrypted."),
    key("keep", Account, All, "Leave fetched messages on the server."),
    key("deliver", Account, All, "Where mail goes: maildir:, mbox:, smtp://, lmtp:, mda:, imap://."),
    key("to", Account, All, "The envelope recipients."),
    key("envelope_from", Account, All, "The envelope sender: \"return-path\" or an address."),
    key("on_reject", Account, All, "What to do with a refused message: keep, bounce, delete."),
    key("delivery", Account, All, "The [account.delivery] table: how to reach the destination."),
    key("received_header", Account, All, "Prepend a Received: trace header."),
    key("timeout", Account, All, "How long to wait for the server."),
    key("folders", Account, IMAP_ONLY, "The folders to fetch from."),
    key("fetch", Account, IMAP_ONLY, "Which messages to fetch: new, unseen or all."),
    key("max_size", Account, All, "Leave larger messages on the server."),
    key("max_per_poll", Account, All, "Fetch at most this many messages per poll."),
    key("mark_seen", Account, IMAP_ONLY, "With keep: flag delivered messages \\Seen."),
    key("move_to", Account, IMAP_ONLY, "Without keep: move delivered messages to this folder."),
    key("interval", Account, All, "Daemon mode: this account's poll interval."),
    key("idle", Account, IMAP_ONLY, "Daemon mode: wait for new mail with IDLE."),
    key("idle_timeout", Account, IMAP_ONLY, "How long one IDLE may last."),
    key("imap_id", Account, IMAP_ONLY, "Name mailfetch to servers that offer IMAP ID (RFC 2971)."),
    key("tls", Delivery, SERVERS, "TLS to the delivery server."),
    key("ca_file", Delivery, SERVERS, "Extra certificate authorities for the delivery server."),
    key("fingerprint", Delivery, SERVERS, "Pins the delivery server's certificate."),
    key("username", Delivery, SERVERS, "The user name for the delivery server."),
    key("password", Delivery, SERVERS, "The delivery server's password itself."),
    key("password_command", Delivery, SERVERS, "A command that prints that password."),
    key("password_file", Delivery, SERVERS, "A private file whose first line is that password."),
    key("auth", Delivery, SERVERS, "The login mechanism for the delivery server."),
    key("oauth", Delivery, SMTP_AND_IMAP, "The [account.delivery.oauth] table: OAuth2 for the delivery server."),
    key("allow_plaintext_auth", Delivery, SERVERS, "Accept sending that password unencrypted."),
    key("timeout", Delivery, WITH_TIMEOUT, "How long to wait for the delivery server, an MDA per message, or an mbox's locks."),
    key("seen", Delivery, IMAP_DELIVERY, "IMAP delivery: flag appended messages \\Seen."),
    key("provider", OAuth, All, "\"microsoft\", \"google\" or \"custom\"."),
    key("flow", OAuth, All, "How `mailfetch login` gets the first tokens: \"device\", \"browser\" or \"client_credentials\"."),
    key("client_id", OAuth, All, "The application's id at the provider."),
    key("client_secret", OAuth, All, "The application's secret itself (confidential clients only)."),
    key("client_secret_command", OAuth, All, "A shell command that prints the client secret."),
    key("client_secret_file", OAuth, All, "A private file whose first line is the client secret."),
    key("tenant", OAuth, All, "Microsoft: the tenant id or domain (default \"common\")."),
    key("token_url", OAuth, All, "provider = \"custom\": the token endpoint (https)."),
    key("device_url", OAuth, All, "provider = \"custom\": the device authorization endpoint."),
    key("auth_url", OAuth, All, "provider = \"custom\": the authorization endpoint."),
    key("scopes", OAuth, All, "The scopes to ask for, instead of the provider's preset."),
    key("ca_file", OAuth, All, "Extra certificate authorities for the provider's endpoints."),
];

/// The keys of `section`, in table order.
pub fn in_section(section: Section) -> impl Iterator<Item = &'static Key> {
    KEYS.iter().filter(move |key| key.section == section)
}

/// The key `name` of `section`. Every key the raw structs read is in the
/// table (a test checks), so this finds any key that was written.
pub(super) fn find(section: Section, name: &str) -> &'static Key {
    in_section(section)
        .find(|key| key.name == name)
        .unwrap_or_else(|| panic!("`{name}` is missing from the key table"))
}

/// The section whose keys are `names` (in any order): how an unknown key
/// that serde reports, with the fields of the table it was reading, is
/// placed.
pub(super) fn section_with(names: &[&str]) -> Option<Section> {
    [
        Section::File,
        Section::General,
        Section::Account,
        Section::Delivery,
        Section::OAuth,
    ]
    .into_iter()
    .find(|&section| {
        in_section(section).count() == names.len()
            && in_section(section).all(|key| names.contains(&key.name))
    })
}

/// What to say about the unknown key `key` in `section`.
pub(super) fn unknown_key_problem(key: &str, section: Section) -> String {
    let allowed: Vec<&str> = in_section(section).map(|key| key.name).collect();
    match closest_key(key, &allowed) {
        Some(suggestion) => format!("unknown key; did you mean `{suggestion}`?"),
        None if allowed.is_empty() => "unknown key".to_owned(),
        None => format!(
            "unknown key; the keys allowed here are {}",
            allowed.join(", ")
        ),
    }
}

/// The allowed key that `key` is most plausibly a misspelling of.
fn closest_key<'k>(key: &str, allowed: &[&'k str]) -> Option<&'k str> {
    allowed
        .iter()
        .map(|&candidate| (edit_distance(key, candidate), candidate))
        .filter(|&(distance, _)| distance <= 2 && distance < key.chars().count())
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

/// The Levenshtein distance between `a` and `b`, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, a_char) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, &b_char) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(a_char != b_char);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}
