//! Command lines as the configuration writes them (`deliver = "mda:…"`),
//! split into words once, when the configuration is read.
//!
//! A leaf module: the configuration checks and keeps the words, the MDA
//! sink runs them, and neither has to know the other to do so.

use std::fmt;
use std::str::FromStr;

/// A command line, as written and as words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    text: String,
    words: Vec<String>,
}

impl CommandLine {
    /// The words, the program first; never empty (see [`split_words`]).
    pub fn words(&self) -> &[String] {
        &self.words
    }
}

impl FromStr for CommandLine {
    type Err = String;

    fn from_str(text: &str) -> Result<CommandLine, String> {
        Ok(CommandLine {
            words: split_words(text)?,
            text: text.to_owned(),
        })
    }
}

/// Compares the command line as written.
impl PartialEq<&str> for CommandLine {
    fn eq(&self, text: &&str) -> bool {
        self.text == *text
    }
}

/// The command line as written.
impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Splits a command line into words like a POSIX shell would, without any
/// expansion: blanks separate words; `'…'` keeps everything literally;
/// `"…"` keeps everything but `\"` and `\\`; outside quotes a backslash
/// keeps the next character. `%T`/`%F` are left for the MDA sink to replace.
///
/// An unterminated quote, a trailing backslash or an empty command is an
/// error (for the configuration check).
pub fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A word has started even if it is empty so far (`''`).
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err("backslash at the end of the command".into()),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    match words.first() {
        None => Err("empty command".into()),
        Some(program) if program.is_empty() => Err("empty program name".into()),
        Some(_) => Ok(words),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        split_words(text).unwrap()
    }

    #[test]
    fn commands_split_like_a_shell_without_expansion() {
        assert_eq!(
            words("/usr/bin/procmail -d %T"),
            ["/usr/bin/procmail", "-d", "%T"]
        );
        assert_eq!(words("  a\t b  "), ["a", "b"]);
        assert_eq!(words(r#"a 'b c' "d e" f\ g"#), ["a", "b c", "d e", "f g"]);
        assert_eq!(
            words(r#"'it''s' "say \"hi\" \\ \n" x''y"#),
            ["its", r#"say "hi" \ \n"#, "xy"]
        );
        assert_eq!(words(r#"a '' "" b"#), ["a", "", "", "b"]);
        assert_eq!(
            words("sh -c 'echo $HOME; cat > /tmp/x'"),
            ["sh", "-c", "echo $HOME; cat > /tmp/x"]
        );
        assert_eq!(words(r"'\n'"), [r"\n"]);
    }

    #[test]
    fn malformed_commands_are_refused() {
        assert!(
            split_words("procmail 'oops")
                .unwrap_err()
                .contains("single quote")
        );
        assert!(
            split_words("procmail \"oops")
                .unwrap_err()
                .contains("double quote")
        );
        assert!(split_words("procmail \"oops\\").is_err());
        assert!(
            split_words("procmail \\")
                .unwrap_err()
                .contains("backslash")
        );
        assert!(split_words("").is_err());
        assert!(split_words("   ").is_err());
        assert!(split_words("'' -d %T").unwrap_err().contains("program"));
    }
}
