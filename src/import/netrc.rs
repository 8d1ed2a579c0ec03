//! `~/.netrc`, where fetchmail looks for a password the rc file lacks.

/// The password `.netrc` text gives for `login` on `machine` (or on its
/// `default` entry), as fetchmail finds it.
pub fn password(text: &str, machine: &str, login: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    let mut found = None;
    // (machine or None for `default`, login, password) of the entry being read.
    let mut entry: Option<(Option<String>, Option<String>, Option<String>)> = None;
    let mut finish = |entry: &mut Option<(Option<String>, Option<String>, Option<String>)>| {
        if let Some((host, user, pass)) = entry.take()
            && found.is_none()
            && host
                .as_deref()
                .is_none_or(|h| h.eq_ignore_ascii_case(machine))
            && user.as_deref().is_none_or(|u| u == login)
        {
            found = pass;
        }
    };
    while let Some(word) = words.next() {
        match word {
            "machine" => {
                finish(&mut entry);
                entry = Some((Some(words.next()?.to_owned()), None, None));
            }
            "default" => {
                finish(&mut entry);
                entry = Some((None, None, None));
            }
            "login" => {
                if let Some(entry) = &mut entry {
                    entry.1 = words.next().map(str::to_owned);
                }
            }
            "password" => {
                if let Some(entry) = &mut entry {
                    entry.2 = words.next().map(str::to_owned);
                }
            }
            "account" => {
                words.next();
            }
            "macdef" => {
                // A macro runs to the next empty line; fetchmail's users
                // rarely have one, and its words are never entries.
                finish(&mut entry);
                return found;
            }
            _ => {}
        }
    }
    finish(&mut entry);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_entry_for_machine_and_login() {
        let text = "machine pop.a.example login bob password b1\n\
                    machine pop.a.example\n  login alice\n  password a1\n\
                    default login alice password d1\n";
        assert_eq!(
            password(text, "POP.A.example", "alice").as_deref(),
            Some("a1")
        );
        assert_eq!(
            password(text, "pop.a.example", "bob").as_deref(),
            Some("b1")
        );
        assert_eq!(
            password(text, "other.example", "alice").as_deref(),
            Some("d1")
        );
        assert_eq!(password(text, "other.example", "carol"), None);
    }
}
