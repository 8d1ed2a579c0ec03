//! The account's destination, whichever kind it is.

use std::path::Path;

use crate::config::{Account, DeliverTarget, Secret};
use crate::error::Error;
use crate::received::local_hostname;
use crate::sink::imap_append::ImapAppendSink;
use crate::sink::maildir::MaildirSink;
use crate::sink::mbox::MboxSink;
use crate::sink::mda::MdaSink;
use crate::sink::smtp::SmtpSink;

/// The account's destination, opened (not yet connected: network sinks
/// connect at the first message).
pub(crate) enum AnySink {
    Maildir(MaildirSink),
    Mbox(MboxSink),
    Smtp(SmtpSink),
    Mda(MdaSink),
    // Boxed: the session it holds is large, and this enum is moved around.
    Imap(Box<ImapAppendSink>),
}

/// Evaluates `$body` with `$sink` bound to the concrete sink inside an
/// [`AnySink`]: the pipeline is generic over the sink, so each arm is
/// compiled for its own type.
macro_rules! with_sink {
    ($any:expr, $sink:pat => $body:expr) => {
        match $any {
            AnySink::Maildir($sink) => $body,
            AnySink::Mbox($sink) => $body,
            AnySink::Smtp($sink) => $body,
            AnySink::Mda($sink) => $body,
            AnySink::Imap(boxed) => {
                let $sink = *boxed;
                $body
            }
        }
    };
}
pub(crate) use with_sink;

impl AnySink {
    /// The password for the server the account delivers to, if it logs in
    /// to one; on failure, says what that server is. Resolved once per
    /// poll and handed to [`AnySink::open`] and to bounces.
    pub(crate) async fn resolve_secret(
        account: &Account,
    ) -> Result<Option<Secret>, (String, Error)> {
        let (server, what) = match &account.deliver {
            DeliverTarget::Maildir(_) | DeliverTarget::Mbox(_) | DeliverTarget::Mda(_) => {
                return Ok(None);
            }
            DeliverTarget::Mta(target) => (&target.server, "the MTA"),
            DeliverTarget::Imap(target) => (&target.server, "the IMAP server"),
        };
        server
            .password
            .resolve(&account.name)
            .await
            .map_err(|err| (what.to_owned(), err))
    }

    /// Opens the account's destination, with the password
    /// [`AnySink::resolve_secret`] found; on failure, says what it was.
    pub(crate) fn open(
        account: &Account,
        state_dir: &Path,
        secret: Option<Secret>,
    ) -> Result<AnySink, (String, Error)> {
        let spool = || state_dir.join("spool");
        match &account.deliver {
            DeliverTarget::Maildir(path) => match MaildirSink::open(path) {
                Ok(sink) => {
                    sink.remove_crash_leftovers(state_dir);
                    Ok(AnySink::Maildir(sink))
                }
                Err(err) => Err((format!("maildir {}", path.display()), err)),
            },
            DeliverTarget::Mbox(target) => {
                match MboxSink::open(target, account.envelope_from.clone(), state_dir) {
                    Ok(sink) => Ok(AnySink::Mbox(sink)),
                    Err(err) => Err((format!("mbox {}", target.path.display()), err)),
                }
            }
            DeliverTarget::Mta(target) => Ok(AnySink::Smtp(SmtpSink::new(
                target.clone(),
                secret,
                account.to.clone(),
                account.envelope_from.clone(),
                local_hostname(),
            ))),
            DeliverTarget::Mda(target) => Ok(AnySink::Mda(MdaSink::new(
                target.clone(),
                account.to.clone(),
                account.envelope_from.clone(),
                spool(),
            ))),
            DeliverTarget::Imap(target) => Ok(AnySink::Imap(Box::new(ImapAppendSink::new(
                target.clone(),
                secret,
                spool(),
            )))),
        }
    }
}
