//! What the state journal records about a delivery that was made durable
//! but not yet visible, so that a crash between the two can be finished
//! (or undone) on the next start.
//!
//! An intent describes itself completely: recovery reads what the journal
//! says and acts on that, never on the sink configured today. The user may
//! have changed `deliver` since the crash; a Maildir delivery left half
//! done must still be finished in that Maildir, or forgotten (so that the
//! message is fetched again) when it can no longer be, but never be taken
//! for done because today's sink has nothing to finish.

use std::io;
use std::path::PathBuf;

use super::mbox::Placed;
use crate::state::{decode_word_bytes, encode_word};

/// A delivery in progress, as journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// A complete, synced file in a Maildir's `tmp/`, to be renamed to
    /// `new_path`.
    Maildir {
        tmp_path: PathBuf,
        new_path: PathBuf,
    },
    /// A message placed at an offset of an mbox file, to be appended
    /// there (or found there complete).
    Mbox(Placed),
}

/// What recovery found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovered {
    /// The message is where the intent wanted it (perhaps only now).
    Delivered,
    /// The message is nowhere to be found: it must be fetched again.
    Missing,
}

const MAILDIR: &str = "maildir:";
const MBOX: &str = "mbox:";

impl Intent {
    /// One journal word (no white space).
    pub fn encode(&self) -> String {
        match self {
            Intent::Maildir { tmp_path, new_path } => format!(
                "{MAILDIR}{}>{}",
                encode_word(tmp_path.as_os_str().as_encoded_bytes()),
                encode_word(new_path.as_os_str().as_encoded_bytes())
            ),
            Intent::Mbox(placed) => format!(
                "{MBOX}{}#{}#{}#{}#{}",
                encode_word(placed.path.as_os_str().as_encoded_bytes()),
                placed.start,
                placed.from_len,
                placed.body_len,
                placed.digest
            ),
        }
    }

    /// Reads a journal word; `None` for one this version does not know.
    pub fn decode(word: &str) -> Option<Intent> {
        if let Some(placed) = word.strip_prefix(MBOX) {
            let mut fields = placed.split('#');
            let placed = Placed {
                path: path(fields.next()?)?,
                start: fields.next()?.parse().ok()?,
                from_len: fields.next()?.parse().ok()?,
                body_len: fields.next()?.parse().ok()?,
                digest: fields
                    .next()
                    .filter(|digest| {
                        digest.len() == 32 && digest.bytes().all(|b| b.is_ascii_hexdigit())
                    })?
                    .to_owned(),
            };
            return fields.next().is_none().then_some(Intent::Mbox(placed));
        }
        // Journals written before intents named their kind hold Maildir
        // intents alone, as two absolute paths.
        let paths = word
            .strip_prefix(MAILDIR)
            .or_else(|| word.starts_with('/').then_some(word))?;
        let (tmp, new) = paths.split_once('>')?;
        Some(Intent::Maildir {
            tmp_path: path(tmp)?,
            new_path: path(new)?,
        })
    }

    /// Finishes the delivery if it was interrupted.
    pub fn recover(&self) -> io::Result<Recovered> {
        match self {
            Intent::Maildir { tmp_path, new_path } => super::maildir::recover(tmp_path, new_path),
            Intent::Mbox(placed) => super::mbox::recover(placed),
        }
    }

    /// Intents are recovered highest rank first: an mbox's from its end
    /// backwards, so that a message cut short is the last thing in the file
    /// when its turn comes. Maildir intents are independent of each other.
    pub fn recovery_rank(&self) -> u64 {
        match self {
            Intent::Maildir { .. } => 0,
            Intent::Mbox(placed) => placed.start,
        }
    }
}

fn path(word: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let path = PathBuf::from(std::ffi::OsString::from_vec(decode_word_bytes(word)?));
    path.is_absolute().then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_round_trip_as_one_word() {
        let intent = Intent::Maildir {
            tmp_path: "/home/a b/Mail%/tmp/1.M2P3Q4.host".into(),
            new_path: "/home/a b/Mail%/new/1.M2P3Q4.host,S=9".into(),
        };
        let word = intent.encode();
        assert_eq!(
            word,
            "maildir:/home/a%20b/Mail%25/tmp/1.M2P3Q4.host>/home/a%20b/Mail%25/new/1.M2P3Q4.host,S=9"
        );
        assert_eq!(Intent::decode(&word), Some(intent));
    }

    #[test]
    fn mbox_intents_round_trip_as_one_word() {
        let intent = Intent::Mbox(Placed {
            path: "/home/a b/mbox#1".into(),
            start: 1234,
            from_len: 40,
            body_len: 999,
            digest: "0123456789abcdef0123456789abcdef".into(),
        });
        let word = intent.encode();
        assert_eq!(
            word,
            "mbox:/home/a%20b/mbox%231#1234#40#999#0123456789abcdef0123456789abcdef"
        );
        assert_eq!(Intent::decode(&word), Some(intent));
    }

    #[test]
    fn journals_of_earlier_versions_are_read() {
        assert_eq!(
            Intent::decode("/m/tmp/x>/m/new/x,S=1"),
            Some(Intent::Maildir {
                tmp_path: "/m/tmp/x".into(),
                new_path: "/m/new/x,S=1".into()
            })
        );
    }

    #[test]
    fn unknown_or_malformed_intents_are_not_guessed_at() {
        for word in [
            "mbox:/x",
            "mbox:/x#1#2#3",
            "mbox:/x#1#2#3#abc",
            "mbox:x#1#2#3#0123456789abcdef0123456789abcdef",
            "mbox:/x#1#2#3#0123456789abcdef0123456789abcdef#5",
            "maildir:/m/tmp/x",
            "maildir:relative>/m/new/x",
            "maildir:/m/tmp/%G0>/m/new/x",
            "x>y",
        ] {
            assert_eq!(Intent::decode(word), None, "{word}");
        }
    }
}
