//! The reject policy: what becomes of a message the destination refused
//! for good (`on_reject`), bounces included.

use std::time::{Duration, SystemTime};

use crate::config::{DeliverTarget, Endpoint, MtaProtocol, MtaTarget, OnReject};
use crate::error::Error;
use crate::sink::Rejection;
use crate::source::Listed;
use crate::state::{Entry, MailboxState};

use super::*;
use crate::received::local_hostname;
use crate::sink::bounce;
use crate::sink::smtp::send_bounce;

/// Applies `on_reject` to the messages the destination refused for good.
/// Returns the numbers of those that may now leave the server: bounced or
/// dropped, and durably recorded as done so that no later poll tries them
/// again. Kept ones are retried at every poll.
pub(super) async fn settle_rejections(
    delivery: Delivery<'_>,
    rejections: Vec<(Listed, Rejection)>,
    state: &mut MailboxState,
    report: &mut Report,
) -> Result<Vec<u32>, Error> {
    let mut settled = Vec::new();
    for (message, rejection) in rejections {
        match delivery.account.on_reject {
            OnReject::Keep => {
                tracing::warn!(
                    "{}: message {} left on the server (on_reject = \"keep\"); it is tried again at every poll",
                    report.mailbox,
                    message.number
                );
                continue;
            }
            OnReject::Delete => {
                tracing::warn!(
                    "{}: message {} dropped (on_reject = \"delete\"): {}",
                    report.mailbox,
                    message.number,
                    rejection.reason
                );
                report.discarded += 1;
            }
            OnReject::Bounce => {
                let sender = match rejection.bounce_recipient() {
                    Ok(sender) => sender,
                    Err(why) => {
                        tracing::warn!(
                            "{}: message {} is not bounced: {why}; it is left on the server",
                            report.mailbox,
                            message.number
                        );
                        continue;
                    }
                };
                if let Err(err) = bounce(delivery, sender, &rejection).await {
                    tracing::error!(
                        "{}: cannot bounce message {} to <{sender}>, it is left on the server: {err}",
                        report.mailbox,
                        message.number
                    );
                    continue;
                }
                tracing::info!(
                    "{}: message {} bounced to <{sender}>",
                    report.mailbox,
                    message.number
                );
                report.bounced += 1;
            }
        }
        settled.push(message);
    }
    let entries: Vec<Entry> = settled
        .iter()
        .filter_map(|message| {
            Some(Entry {
                digest: message.digest.clone(),
                ..Entry::new(message.uid.clone()?)
            })
        })
        .collect();
    if let Err(err) = state.record_delivered(&entries) {
        // Not deleting them is safe; bounced ones may be bounced again.
        tracing::error!("{}: cannot write the state file: {err}", report.mailbox);
        return Ok(Vec::new());
    }
    Ok(settled.iter().map(|message| message.number).collect())
}

/// Sends a delivery status notification for a refused message: through
/// the account's SMTP server when it delivers to one, else through the MTA
/// of this machine.
pub(super) async fn bounce(
    delivery: Delivery<'_>,
    sender: &str,
    rejection: &Rejection,
) -> Result<(), Error> {
    let account = delivery.account;
    let (relay, password) = match &account.deliver {
        DeliverTarget::Mta(target) if target.protocol == MtaProtocol::Smtp => {
            (target.clone(), delivery.secret)
        }
        _ => (local_mta(account.server.timeout), None),
    };
    let host = local_hostname();
    let message = bounce::compose(rejection, &account.to, &host, SystemTime::now());
    send_bounce(&relay, password, &host, sender, &message).await
}

/// `smtp://localhost`, where bounces go when mail is not delivered by SMTP.
pub(super) fn local_mta(timeout: Duration) -> MtaTarget {
    MtaTarget {
        protocol: MtaProtocol::Smtp,
        socket: None,
        server: Endpoint::local_mta(25, timeout),
    }
}
