//! SASL authentication, shared by POP3, IMAP and SMTP.
//!
//! This module is sans-IO: it turns server challenges into client responses
//! and nothing else. The protocols own the framing (`AUTH`, `AUTHENTICATE`,
//! `+ ` continuation lines) and the base64 encoding on the wire, so the
//! challenges given to [`SaslSession::respond`] are already decoded and the
//! responses it returns are raw bytes.
//!
//! Nothing here logs: responses carry passwords, password equivalents or
//! bearer tokens, and even error messages never quote a payload.

use std::fmt::{self, Write as _};
use std::num::NonZeroU32;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac as _};
use md5::{Digest as _, Md5};
use ring::rand::SecureRandom as _;

use crate::config::AuthMethod;
use crate::error::{Error, Kind};

/// Why a method that puts the password on the wire is not used over an
/// unencrypted link, and what the user can do about it. One wording for
/// every protocol, source and destination alike.
pub fn reveal_refusal(method: &str) -> String {
    format!(
        "refusing to send the password in the clear with {method} over an unencrypted connection; \
         use tls = \"starttls\" or \"implicit\", or set allow_plaintext_auth = true if you accept the risk"
    )
}

/// Why `auth = "auto"` found no method to use on an unencrypted link.
pub const NO_SECRET_KEEPING_METHOD: &str = "the connection is not encrypted and the server offers no login method that keeps the password secret; \
     use tls = \"starttls\" or \"implicit\", or set allow_plaintext_auth = true if you accept the risk";

/// A SASL mechanism we can authenticate with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 5802 / RFC 7677: proves knowledge of the password and
    /// authenticates the server in return.
    ScramSha256,
    /// RFC 2195: a challenge-response digest; the password is not sent.
    CramMd5,
    /// RFC 4616: username and password in the clear.
    Plain,
    /// The de facto `LOGIN` mechanism: username and password in the clear,
    /// one per challenge.
    Login,
    /// Google's and Microsoft's OAuth 2.0 bearer token mechanism.
    XOAuth2,
    /// RFC 7628: the standard OAuth 2.0 bearer token mechanism.
    OAuthBearer,
}

impl Mechanism {
    /// The mechanism an explicit `auth` setting names; `None` for the
    /// settings that are not SASL (`auto`, `user`, `apop`).
    pub fn configured(method: AuthMethod) -> Option<Mechanism> {
        match method {
            AuthMethod::Plain => Some(Mechanism::Plain),
            AuthMethod::Login => Some(Mechanism::Login),
            AuthMethod::CramMd5 => Some(Mechanism::CramMd5),
            AuthMethod::XOAuth2 => Some(Mechanism::XOAuth2),
            AuthMethod::OAuthBearer => Some(Mechanism::OAuthBearer),
            AuthMethod::ScramSha256 => Some(Mechanism::ScramSha256),
            AuthMethod::Auto | AuthMethod::User | AuthMethod::Apop => None,
        }
    }

    /// Every mechanism, for name lookups.
    const ALL: [Mechanism; 6] = [
        Mechanism::ScramSha256,
        Mechanism::CramMd5,
        Mechanism::Plain,
        Mechanism::Login,
        Mechanism::XOAuth2,
        Mechanism::OAuthBearer,
    ];

    /// The mechanisms `auto` may pick, strongest first. The OAuth ones are
    /// absent: they need a token rather than a password, so only an explicit
    /// setting can ask for them.
    const AUTO_PREFERENCE: [Mechanism; 4] = [
        Mechanism::ScramSha256,
        Mechanism::CramMd5,
        Mechanism::Plain,
        Mechanism::Login,
    ];

    /// The IANA-registered name, as servers advertise it.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::CramMd5 => "CRAM-MD5",
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::XOAuth2 => "XOAUTH2",
            Mechanism::OAuthBearer => "OAUTHBEARER",
        }
    }

    /// The mechanism called `name`, ignoring case.
    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL
            .into_iter()
            .find(|mechanism| mechanism.name().eq_ignore_ascii_case(name))
    }

    /// True if the mechanism puts the secret (password or bearer token) on
    /// the wire in a recoverable form, so that it must only be used over TLS.
    pub fn reveals_secret(self) -> bool {
        match self {
            Mechanism::Plain | Mechanism::Login | Mechanism::XOAuth2 | Mechanism::OAuthBearer => {
                true
            }
            Mechanism::ScramSha256 | Mechanism::CramMd5 => false,
        }
    }

    /// The strongest mechanism `auto` may choose among the `offered` names
    /// (SCRAM-SHA-256 > CRAM-MD5 > PLAIN > LOGIN).
    ///
    /// With `allow_revealing == false`, mechanisms that reveal the secret are
    /// never chosen, typically because the connection is not encrypted.
    /// Unknown names are ignored.
    pub fn strongest<'a>(
        offered: impl IntoIterator<Item = &'a str>,
        allow_revealing: bool,
    ) -> Option<Mechanism> {
        let offered: Vec<Mechanism> = offered
            .into_iter()
            .filter_map(Mechanism::from_name)
            .collect();
        Mechanism::AUTO_PREFERENCE
            .into_iter()
            .filter(|mechanism| allow_revealing || !mechanism.reveals_secret())
            .find(|mechanism| offered.contains(mechanism))
    }
}

/// One authentication exchange with one mechanism.
///
/// The protocol drives it: it sends [`SaslSession::initial_response`] with
/// the command if the server supports initial responses, then passes each
/// server challenge to [`SaslSession::respond`] and sends back the answer,
/// until the server reports success or failure. On success it should check
/// [`SaslSession::is_complete`]: for SCRAM, a server that claims success
/// without proving it knows the password must not be trusted. When a server
/// sends data along with its success reply (as SCRAM's server-final message
/// may be), pass it to `respond` and discard the (empty) answer.
pub struct SaslSession {
    mechanism: Mechanism,
    exchange: Exchange,
}

impl SaslSession {
    /// Starts an exchange authenticating `username` with `secret` (a
    /// password, or an OAuth 2.0 access token for XOAUTH2 and OAUTHBEARER).
    /// `host` and `port` are the server's, which OAUTHBEARER includes.
    pub fn new(
        mechanism: Mechanism,
        username: &str,
        secret: &str,
        host: &str,
        port: u16,
    ) -> SaslSession {
        let exchange = match mechanism {
            Mechanism::Plain => Exchange::single(plain_message(username, secret), false),
            Mechanism::XOAuth2 => Exchange::single(xoauth2_message(username, secret), true),
            Mechanism::OAuthBearer => {
                Exchange::single(oauthbearer_message(username, secret, host, port), true)
            }
            Mechanism::Login => Exchange::Login {
                username: username.to_owned(),
                password: secret.to_owned(),
                answered: 0,
            },
            Mechanism::CramMd5 => Exchange::CramMd5 {
                username: username.to_owned(),
                secret: secret.to_owned(),
                answered: false,
            },
            Mechanism::ScramSha256 => Exchange::Scram(Scram::new(username, secret, random_nonce())),
        };
        SaslSession {
            mechanism,
            exchange,
        }
    }

    /// The response to send along with the command, for servers that accept
    /// an initial response (SASL-IR, `AUTH mechanism response`), if the
    /// mechanism has one. LOGIN and CRAM-MD5 have none: the server speaks
    /// first.
    pub fn initial_response(&mut self) -> Option<Vec<u8>> {
        match &mut self.exchange {
            Exchange::Single { message, sent, .. } if !*sent => {
                *sent = true;
                Some(message.clone())
            }
            Exchange::Scram(scram) if scram.state == ScramState::Initial => {
                Some(scram.client_first())
            }
            _ => None,
        }
    }

    /// Answers one server challenge, already base64-decoded.
    ///
    /// Errors are [`Kind::Auth`]: a malformed or unexpected challenge, or a
    /// SCRAM server that failed to prove it knows the password.
    pub fn respond(&mut self, challenge: &[u8]) -> Result<Vec<u8>, Error> {
        let mechanism = self.mechanism;
        match &mut self.exchange {
            // Without an initial response, the server's first (empty)
            // challenge is the go-ahead for the whole message.
            Exchange::Single { message, sent, .. } if !*sent => {
                *sent = true;
                Ok(message.clone())
            }
            // XOAUTH2 and OAUTHBEARER servers report a rejected token as a
            // JSON challenge; both specs say to answer it with an empty
            // response, after which the server fails the command.
            Exchange::Single {
                errors_as_challenge: true,
                ..
            } => Ok(Vec::new()),
            Exchange::Single { .. } => Err(unexpected_challenge(mechanism)),
            Exchange::Login {
                username,
                password,
                answered,
            } => {
                // The prompts ("Username:", "Password:") are not
                // standardized, so only their order is relied upon.
                let answer = match answered {
                    0 => username.as_bytes().to_vec(),
                    1 => password.as_bytes().to_vec(),
                    _ => return Err(unexpected_challenge(mechanism)),
                };
                *answered += 1;
                Ok(answer)
            }
            Exchange::CramMd5 {
                username,
                secret,
                answered,
            } => {
                if *answered {
                    return Err(unexpected_challenge(mechanism));
                }
                if challenge.is_empty() {
                    return Err(auth_error(mechanism, "the server sent an empty challenge"));
                }
                *answered = true;
                Ok(cram_md5_response(username, secret, challenge).into_bytes())
            }
            Exchange::Scram(scram) => scram.respond(challenge),
        }
    }

    /// True once the exchange needs nothing more from us; for SCRAM, once
    /// the server has proven that it knows the password.
    pub fn is_complete(&self) -> bool {
        match &self.exchange {
            Exchange::Single { sent, .. } => *sent,
            Exchange::Login { answered, .. } => *answered == 2,
            Exchange::CramMd5 { answered, .. } => *answered,
            Exchange::Scram(scram) => scram.state == ScramState::Verified,
        }
    }

    /// A SCRAM-SHA-256 exchange with a chosen client nonce, to reproduce
    /// published test vectors.
    #[cfg(test)]
    fn scram_with_nonce(username: &str, password: &str, client_nonce: &str) -> SaslSession {
        SaslSession {
            mechanism: Mechanism::ScramSha256,
            exchange: Exchange::Scram(Scram::new(username, password, client_nonce.to_owned())),
        }
    }
}

/// Shows the mechanism and progress, never the credentials.
impl fmt::Debug for SaslSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslSession")
            .field("mechanism", &self.mechanism)
            .field("complete", &self.is_complete())
            .finish_non_exhaustive()
    }
}

/// The wire side of a SASL exchange, which POP3 (`AUTH`), IMAP
/// (`AUTHENTICATE`) and SMTP (`AUTH`) share: base64 both ways, `=` for an
/// empty initial response, an initial response that waits for the first
/// challenge when the command cannot carry it, `*` to cancel, and no trust
/// in a success reply that comes before the mechanism is complete. Each
/// protocol only recognises challenges and the final reply in its own
/// replies, and adds its server's name to errors.
pub struct SaslDriver {
    session: SaslSession,
    /// The initial response, when the command did not carry it: the
    /// server's first (empty) challenge is answered with it.
    held_initial: Option<Vec<u8>>,
}

/// The line that cancels an exchange (RFC 4422 §3.5 in each protocol).
pub const SASL_CANCEL: &str = "*";

impl SaslDriver {
    /// Starts an exchange; the arguments are those of [`SaslSession::new`].
    pub fn new(
        mechanism: Mechanism,
        username: &str,
        secret: &str,
        host: &str,
        port: u16,
    ) -> SaslDriver {
        SaslDriver {
            session: SaslSession::new(mechanism, username, secret, host, port),
            held_initial: None,
        }
    }

    pub fn mechanism(&self) -> Mechanism {
        self.session.mechanism
    }

    /// The command's argument after the mechanism name: the base64 initial
    /// response (`=` when it is empty), if the mechanism has one and
    /// `inline` (the server takes initial responses: SASL-IR in IMAP, always
    /// in SMTP and POP3). Otherwise the initial response is held for the
    /// first challenge.
    pub fn command_argument(&mut self, inline: bool) -> Option<String> {
        let initial = self.session.initial_response()?;
        if !inline {
            self.held_initial = Some(initial);
            return None;
        }
        Some(if initial.is_empty() {
            "=".to_owned()
        } else {
            BASE64.encode(initial)
        })
    }

    /// The line (without its line end) answering a challenge whose base64
    /// text is `challenge`. On an error, send [`SASL_CANCEL`], read the
    /// server's final reply, and fail with the error.
    pub fn answer(&mut self, challenge: &[u8]) -> Result<String, Error> {
        let response = match self.held_initial.take() {
            Some(initial) => initial,
            None => {
                let challenge = BASE64.decode(challenge.trim_ascii()).map_err(|_| {
                    Error::new(
                        Kind::Protocol,
                        format!(
                            "a {} challenge that is not base64",
                            self.session.mechanism.name()
                        ),
                    )
                })?;
                self.session.respond(&challenge)?
            }
        };
        Ok(BASE64.encode(response))
    }

    /// Checks the server's success reply: a server that claims success
    /// before the mechanism is complete (for SCRAM: before proving it
    /// knows the password) is not trusted.
    pub fn check_success(&self) -> Result<(), Error> {
        if self.session.is_complete() {
            Ok(())
        } else {
            Err(Error::new(
                Kind::Auth,
                format!(
                    "the server accepted {} before proving its identity",
                    self.session.mechanism.name()
                ),
            ))
        }
    }
}

/// RFC 1939 APOP digest: the lowercase hex MD5 of the server's greeting
/// timestamp followed by the secret.
pub fn apop_digest(timestamp: &str, secret: &str) -> String {
    let mut md5 = Md5::new();
    md5.update(timestamp.as_bytes());
    md5.update(secret.as_bytes());
    lowercase_hex(&md5.finalize())
}

/// The state of an exchange, per mechanism.
enum Exchange {
    /// PLAIN, XOAUTH2 and OAUTHBEARER: a single message carries everything.
    Single {
        message: Vec<u8>,
        sent: bool,
        /// True for the OAuth mechanisms, whose servers explain a failure
        /// in a challenge sent after the message.
        errors_as_challenge: bool,
    },
    /// LOGIN: the username, then the password, each on request.
    Login {
        username: String,
        password: String,
        answered: u8,
    },
    /// CRAM-MD5: one digest in answer to one challenge.
    CramMd5 {
        username: String,
        secret: String,
        answered: bool,
    },
    Scram(Scram),
}

impl Exchange {
    fn single(message: Vec<u8>, errors_as_challenge: bool) -> Exchange {
        Exchange::Single {
            message,
            sent: false,
            errors_as_challenge,
        }
    }
}

/// RFC 4616 PLAIN, with an empty authorization identity (act as ourselves).
fn plain_message(username: &str, password: &str) -> Vec<u8> {
    format!("\0{username}\0{password}").into_bytes()
}

fn xoauth2_message(username: &str, token: &str) -> Vec<u8> {
    format!("user={username}\x01auth=Bearer {token}\x01\x01").into_bytes()
}

/// RFC 7628 section 3.1, without channel binding.
fn oauthbearer_message(username: &str, token: &str, host: &str, port: u16) -> Vec<u8> {
    let username = escape_saslname(username);
    format!("n,a={username},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01")
        .into_bytes()
}

/// RFC 2195: the username, a space, and the lowercase hex HMAC-MD5 of the
/// challenge keyed with the secret.
fn cram_md5_response(username: &str, secret: &str, challenge: &[u8]) -> String {
    let mut hmac =
        Hmac::<Md5>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    hmac.update(challenge);
    let digest = hmac.finalize().into_bytes();
    format!("{username} {}", lowercase_hex(&digest))
}

/// Escapes a name for a GS2 header or a SCRAM attribute (RFC 5802 section
/// 5.1), where ',' separates attributes and '=' introduces escapes.
fn escape_saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

fn lowercase_hex(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        write!(hex, "{byte:02x}").expect("writing to a String cannot fail");
    }
    hex
}

fn auth_error(mechanism: Mechanism, problem: &str) -> Error {
    Error::new(Kind::Auth, format!("{}: {problem}", mechanism.name()))
}

fn unexpected_challenge(mechanism: Mechanism) -> Error {
    auth_error(
        mechanism,
        "the server sent a challenge after the exchange was over",
    )
}

/// A fresh SCRAM client nonce: 24 random bytes, base64-encoded so that it
/// is printable and free of ','.
fn random_nonce() -> String {
    let mut bytes = [0u8; 24];
    // ring's SystemRandom is the operating system's generator (getrandom),
    // which does not fail once the system is up; if it somehow did, there
    // is no safe way to go on authenticating.
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random number generator failed");
    BASE64.encode(bytes)
}

/// The GS2 header for "no channel binding, none supported by the client",
/// and its base64 form as sent in the client-final message's `c=`.
const SCRAM_GS2_HEADER: &str = "n,,";
const SCRAM_GS2_HEADER_BASE64: &str = "biws";

/// Iteration counts outside this range are refused. RFC 7677 requires at
/// least 4096; the upper bound keeps a hostile server from making us spin
/// on PBKDF2 for minutes.
const SCRAM_ITERATIONS: std::ops::RangeInclusive<u32> = 4096..=1_000_000;

/// The client side of SCRAM-SHA-256 (RFC 5802, RFC 7677), without channel
/// binding.
///
/// The password is used as its UTF-8 bytes, without SASLprep: SASLprep
/// leaves ASCII passwords unchanged, so this only differs for passwords
/// with unusual Unicode (compatibility characters, non-ASCII spaces), and
/// implementing SASLprep's tables is not worth that.
struct Scram {
    /// The username, escaped for use in an attribute.
    username: String,
    password: String,
    client_nonce: String,
    state: ScramState,
}

#[derive(Debug, PartialEq, Eq)]
enum ScramState {
    /// Nothing sent yet.
    Initial,
    /// The client-first message is sent; waiting for the server-first.
    SentClientFirst,
    /// The client-final message (with our proof) is sent; waiting for the
    /// server's proof, which must be this signature.
    SentClientFinal { expected_server_signature: Vec<u8> },
    /// The server proved it knows the password.
    Verified,
}

impl Scram {
    fn new(username: &str, password: &str, client_nonce: String) -> Scram {
        Scram {
            username: escape_saslname(username),
            password: password.to_owned(),
            client_nonce,
            state: ScramState::Initial,
        }
    }

    fn client_first_bare(&self) -> String {
        format!("n={},r={}", self.username, self.client_nonce)
    }

    fn client_first(&mut self) -> Vec<u8> {
        self.state = ScramState::SentClientFirst;
        format!("{SCRAM_GS2_HEADER}{}", self.client_first_bare()).into_bytes()
    }

    fn respond(&mut self, challenge: &[u8]) -> Result<Vec<u8>, Error> {
        match &self.state {
            // The server's empty go-ahead, when no initial response was sent.
            ScramState::Initial => Ok(self.client_first()),
            ScramState::SentClientFirst => self.client_final(challenge),
            ScramState::SentClientFinal {
                expected_server_signature,
            } => {
                verify_server_final(challenge, expected_server_signature)?;
                self.state = ScramState::Verified;
                Ok(Vec::new())
            }
            ScramState::Verified => Err(unexpected_challenge(Mechanism::ScramSha256)),
        }
    }

    /// Answers the server-first message with our proof, and remembers the
    /// signature the server must answer with.
    fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, Error> {
        let malformed = || scram_error("malformed server-first message");
        let server_first = std::str::from_utf8(server_first).map_err(|_| malformed())?;
        let attributes = ScramAttributes::parse(server_first).ok_or_else(malformed)?;
        if attributes.get('m').is_some() {
            return Err(scram_error("the server requires an unsupported extension"));
        }
        let nonce = attributes.get('r').ok_or_else(malformed)?;
        if !nonce.starts_with(&self.client_nonce) {
            return Err(scram_error("the server's nonce does not extend ours"));
        }
        let salt = attributes
            .get('s')
            .and_then(|salt| BASE64.decode(salt).ok())
            .ok_or_else(malformed)?;
        let iterations: u32 = attributes
            .get('i')
            .and_then(|iterations| iterations.parse().ok())
            .ok_or_else(malformed)?;
        if !SCRAM_ITERATIONS.contains(&iterations) {
            return Err(scram_error(&format!(
                "the server asks for {iterations} iterations, outside the accepted {}..={}",
                SCRAM_ITERATIONS.start(),
                SCRAM_ITERATIONS.end()
            )));
        }

        let client_final_without_proof = format!("c={SCRAM_GS2_HEADER_BASE64},r={nonce}");
        let auth_message = format!(
            "{},{server_first},{client_final_without_proof}",
            self.client_first_bare()
        );
        let keys = ScramKeys::derive(&self.password, &salt, iterations);
        let proof = keys.client_proof(auth_message.as_bytes());
        self.state = ScramState::SentClientFinal {
            expected_server_signature: keys.server_signature(auth_message.as_bytes()),
        };
        Ok(format!("{client_final_without_proof},p={}", BASE64.encode(proof)).into_bytes())
    }
}

/// Checks the server-final message: either the server's signature, which
/// must be the expected one, or an error.
fn verify_server_final(server_final: &[u8], expected_signature: &[u8]) -> Result<(), Error> {
    let malformed = || scram_error("malformed server-final message");
    let server_final = std::str::from_utf8(server_final).map_err(|_| malformed())?;
    let attributes = ScramAttributes::parse(server_final).ok_or_else(malformed)?;
    if let Some(error) = attributes.get('e') {
        return Err(scram_error(&format!("the server reports {error:?}")));
    }
    let signature = attributes
        .get('v')
        .and_then(|signature| BASE64.decode(signature).ok())
        .ok_or_else(malformed)?;
    if signature != expected_signature {
        return Err(scram_error(
            "the server's signature is wrong: it does not know the password, \
             so it may be an impostor",
        ));
    }
    Ok(())
}

fn scram_error(problem: &str) -> Error {
    auth_error(Mechanism::ScramSha256, problem)
}

/// The `x=value` attributes of a SCRAM message, in order.
struct ScramAttributes<'a>(Vec<(char, &'a str)>);

impl<'a> ScramAttributes<'a> {
    /// Splits a message into attributes; `None` unless every part is a
    /// single ASCII letter, '=' and a value.
    fn parse(message: &'a str) -> Option<ScramAttributes<'a>> {
        message
            .split(',')
            .map(|attribute| {
                let mut chars = attribute.chars();
                let name = chars.next().filter(char::is_ascii_alphabetic)?;
                let value = chars.as_str().strip_prefix('=')?;
                Some((name, value))
            })
            .collect::<Option<Vec<_>>>()
            .map(ScramAttributes)
    }

    fn get(&self, name: char) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(attribute, _)| *attribute == name)
            .map(|(_, value)| *value)
    }
}

/// The keys RFC 5802 derives from the salted password.
struct ScramKeys {
    client_key: ring::hmac::Tag,
    stored_key: ring::hmac::Key,
    server_key: ring::hmac::Key,
}

impl ScramKeys {
    fn derive(password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
        let iterations =
            NonZeroU32::new(iterations).expect("iterations were checked to be >= 4096");
        let mut salted_password = [0u8; ring::digest::SHA256_OUTPUT_LEN];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            salt,
            password.as_bytes(),
            &mut salted_password,
        );
        let salted_password = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &salted_password);
        let client_key = ring::hmac::sign(&salted_password, b"Client Key");
        let stored_key = ring::digest::digest(&ring::digest::SHA256, client_key.as_ref());
        let server_key = ring::hmac::sign(&salted_password, b"Server Key");
        ScramKeys {
            client_key,
            stored_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, stored_key.as_ref()),
            server_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, server_key.as_ref()),
        }
    }

    /// ClientKey XOR HMAC(StoredKey, AuthMessage).
    fn client_proof(&self, auth_message: &[u8]) -> Vec<u8> {
        let client_signature = ring::hmac::sign(&self.stored_key, auth_message);
        self.client_key
            .as_ref()
            .iter()
            .zip(client_signature.as_ref())
            .map(|(key, signature)| key ^ signature)
            .collect()
    }

    /// HMAC(ServerKey, AuthMessage), which the server must send back.
    fn server_signature(&self, auth_message: &[u8]) -> Vec<u8> {
        ring::hmac::sign(&self.server_key, auth_message)
            .as_ref()
            .to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(mechanism: Mechanism) -> SaslSession {
        SaslSession::new(mechanism, "user", "secret", "mail.example.com", 993)
    }

    #[test]
    fn apop_rfc1939_example() {
        assert_eq!(
            apop_digest("<1896.697170952@dbc.mtview.ca.us>", "tanstaaf"),
            "c4c9334bac560ecc979e58001b3e22fb"
        );
    }

    #[test]
    fn cram_md5_rfc2195_example() {
        let mut session =
            SaslSession::new(Mechanism::CramMd5, "tim", "tanstaaftanstaaf", "host", 110);
        assert_eq!(session.initial_response(), None);
        assert!(!session.is_complete());
        let response = session
            .respond(b"<1896.697170952@postoffice.reston.mci.net>")
            .unwrap();
        assert_eq!(response, b"tim b913a602c7eda7a495b4e6e7334d3890");
        assert!(session.is_complete());
        assert_eq!(session.respond(b"more").unwrap_err().kind, Kind::Auth);
    }

    #[test]
    fn cram_md5_rejects_an_empty_challenge() {
        let err = session(Mechanism::CramMd5).respond(b"").unwrap_err();
        assert_eq!(err.kind, Kind::Auth);
    }

    const RFC7677_CLIENT_FIRST: &[u8] = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC7677_SERVER_FIRST: &[u8] = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
        s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC7677_CLIENT_FINAL: &[u8] =
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
        p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC7677_SERVER_FINAL: &[u8] = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc7677_session() -> SaslSession {
        SaslSession::scram_with_nonce("user", "pencil", "rOprNGfwEbeRWgbNEkqO")
    }

    #[test]
    fn scram_sha256_rfc7677_exchange() {
        let mut session = rfc7677_session();
        assert_eq!(
            session.initial_response().as_deref(),
            Some(RFC7677_CLIENT_FIRST)
        );
        assert_eq!(
            session.respond(RFC7677_SERVER_FIRST).unwrap(),
            RFC7677_CLIENT_FINAL
        );
        assert!(!session.is_complete());
        assert_eq!(session.respond(RFC7677_SERVER_FINAL).unwrap(), b"");
        assert!(session.is_complete());
    }

    #[test]
    fn scram_client_first_answers_an_empty_go_ahead() {
        let mut session = rfc7677_session();
        assert_eq!(session.respond(b"").unwrap(), RFC7677_CLIENT_FIRST);
        assert_eq!(
            session.respond(RFC7677_SERVER_FIRST).unwrap(),
            RFC7677_CLIENT_FINAL
        );
    }

    #[test]
    fn scram_rejects_a_wrong_server_signature() {
        let mut session = rfc7677_session();
        session.initial_response();
        session.respond(RFC7677_SERVER_FIRST).unwrap();
        let forged = b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
        let err = session.respond(forged).unwrap_err();
        assert_eq!(err.kind, Kind::Auth);
        assert!(err.message.contains("signature"), "{err}");
        assert!(!session.is_complete());
    }

    #[test]
    fn scram_reports_a_server_error() {
        let mut session = rfc7677_session();
        session.initial_response();
        session.respond(RFC7677_SERVER_FIRST).unwrap();
        let err = session.respond(b"e=invalid-proof").unwrap_err();
        assert_eq!(err.kind, Kind::Auth);
        assert!(err.message.contains("invalid-proof"), "{err}");
    }

    #[test]
    fn scram_rejects_bad_server_first_messages() {
        let bad_server_firsts: [&[u8]; 6] = [
            // A nonce that does not start with ours.
            b"r=XOprNGfwEbeRWgbNEkqO%hvY,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            // Too few and too many iterations.
            b"r=rOprNGfwEbeRWgbNEkqO%hvY,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1024",
            b"r=rOprNGfwEbeRWgbNEkqO%hvY,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1000001",
            // A mandatory extension.
            b"m=ext,r=rOprNGfwEbeRWgbNEkqO%hvY,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            // Missing salt; garbage.
            b"r=rOprNGfwEbeRWgbNEkqO%hvY,i=4096",
            b"hello",
        ];
        for server_first in bad_server_firsts {
            let mut session = rfc7677_session();
            session.initial_response();
            let err = session.respond(server_first).unwrap_err();
            assert_eq!(err.kind, Kind::Auth);
        }
    }

    #[test]
    fn scram_escapes_the_username_and_makes_a_fresh_nonce() {
        let mut session = SaslSession::new(Mechanism::ScramSha256, "a=b,c", "pw", "host", 143);
        let client_first = String::from_utf8(session.initial_response().unwrap()).unwrap();
        let nonce = client_first.strip_prefix("n,,n=a=3Db=2Cc,r=").unwrap();
        assert_eq!(nonce.len(), 32);
        assert!(!nonce.contains(','));
    }

    #[test]
    fn plain_encoding_with_and_without_initial_response() {
        let mut with_ir = session(Mechanism::Plain);
        assert_eq!(with_ir.initial_response().unwrap(), b"\0user\0secret");
        assert!(with_ir.is_complete());
        assert_eq!(with_ir.respond(b"").unwrap_err().kind, Kind::Auth);

        let mut without_ir = session(Mechanism::Plain);
        assert!(!without_ir.is_complete());
        assert_eq!(without_ir.respond(b"").unwrap(), b"\0user\0secret");
        assert!(without_ir.is_complete());
    }

    #[test]
    fn login_answers_by_order_not_by_prompt() {
        let mut session = session(Mechanism::Login);
        assert_eq!(session.initial_response(), None);
        assert_eq!(session.respond(b"Password:").unwrap(), b"user");
        assert!(!session.is_complete());
        assert_eq!(session.respond(b"").unwrap(), b"secret");
        assert!(session.is_complete());
        assert_eq!(session.respond(b"").unwrap_err().kind, Kind::Auth);
    }

    #[test]
    fn xoauth2_encoding_and_error_challenge() {
        let mut session = session(Mechanism::XOAuth2);
        assert_eq!(
            session.initial_response().unwrap(),
            b"user=user\x01auth=Bearer secret\x01\x01"
        );
        let error = br#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#;
        assert_eq!(session.respond(error).unwrap(), b"");
    }

    #[test]
    fn oauthbearer_encoding_and_error_challenge() {
        let mut session = SaslSession::new(
            Mechanism::OAuthBearer,
            "user@example.com",
            "vF9dft4qmT",
            "server.example.com",
            143,
        );
        assert_eq!(
            session.initial_response().unwrap(),
            b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01\
              auth=Bearer vF9dft4qmT\x01\x01"
        );
        let error = br#"{"status":"invalid_token"}"#;
        assert_eq!(session.respond(error).unwrap(), b"");
    }

    #[test]
    fn mechanism_names_round_trip_ignoring_case() {
        for mechanism in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(mechanism.name()), Some(mechanism));
            let lowercase = mechanism.name().to_ascii_lowercase();
            assert_eq!(Mechanism::from_name(&lowercase), Some(mechanism));
        }
        assert_eq!(Mechanism::from_name("GSSAPI"), None);
    }

    #[test]
    fn strongest_prefers_scram_then_cram_then_plain_then_login() {
        let offered = ["LOGIN", "plain", "CRAM-MD5", "SCRAM-SHA-256", "XOAUTH2"];
        assert_eq!(
            Mechanism::strongest(offered, true),
            Some(Mechanism::ScramSha256)
        );
        assert_eq!(
            Mechanism::strongest(offered[..3].iter().copied(), true),
            Some(Mechanism::CramMd5)
        );
        assert_eq!(
            Mechanism::strongest(["LOGIN", "PLAIN"], true),
            Some(Mechanism::Plain)
        );
        assert_eq!(
            Mechanism::strongest(["LOGIN", "GSSAPI"], true),
            Some(Mechanism::Login)
        );
    }

    #[test]
    fn strongest_never_picks_oauth_and_honours_allow_revealing() {
        assert_eq!(Mechanism::strongest(["XOAUTH2", "OAUTHBEARER"], true), None);
        assert_eq!(Mechanism::strongest(["PLAIN", "LOGIN"], false), None);
        assert_eq!(
            Mechanism::strongest(["PLAIN", "CRAM-MD5"], false),
            Some(Mechanism::CramMd5)
        );
    }

    #[test]
    fn debug_output_hides_credentials() {
        let debug = format!("{:?}", session(Mechanism::Plain));
        assert!(!debug.contains("secret"), "{debug}");
    }
}
