//! `mailfetch login ACCOUNT`: the interactive flows, run once; the tokens
//! they bring are stored, and from then on [`super::access_token`] keeps
//! them fresh.
//!
//! * Device code: prints the URL and the code to enter there (on any
//!   device), then polls at the interval the provider asks for.
//! * Browser: prints an authorization URL (PKCE S256, a random state) whose
//!   redirect goes to a one-shot listener on 127.0.0.1; the code it brings
//!   back is accepted only with the right state.
//! * Client credentials: nothing to sign in to; a token is fetched to show
//!   that the setup works.

use std::io::Write;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::endpoint::Endpoint;
use super::{Flow, Freshness, OAuth, store};
use crate::config::{Account, PasswordSource};
use crate::error::{Error, Kind};

/// How long the user has to finish signing in in the browser.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(300);

/// The most of an HTTP request head the listener reads: the redirect is a
/// short GET.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// `mailfetch login ACCOUNT`: signs in every OAuth2 login of `account`
/// (the server mail is fetched from, then the one it is delivered to).
pub async fn login_account(account: &Account, out: &mut (dyn Write + Send)) -> Result<(), Error> {
    let delivery = account.deliver.server().map(|server| &server.password);
    let tables: Vec<&OAuth> = [Some(&account.server.password), delivery]
        .into_iter()
        .flatten()
        .filter_map(|password| match password {
            PasswordSource::OAuth(oauth) => Some(&**oauth),
            _ => None,
        })
        .collect();
    if tables.is_empty() {
        return Err(Error::new(
            Kind::Config,
            format!(
                "account `{}` logs in with a password, not OAuth2: there is nothing to \
                 sign in to (add an [account.oauth] table to use OAuth2)",
                account.name
            ),
        ));
    }
    for oauth in tables {
        login(oauth, out).await?;
    }
    Ok(())
}

/// Runs `oauth`'s flow, telling the user what to do on `out`, and stores
/// the tokens.
pub async fn login(oauth: &OAuth, out: &mut (dyn Write + Send)) -> Result<(), Error> {
    let tokens = match oauth.flow {
        Flow::ClientCredentials => {
            super::access_token(oauth, Freshness::Renew).await?;
            say(
                out,
                &format!(
                    "account `{}` uses client credentials: it needs no login, and the \
                     provider just issued it a token",
                    oauth.account
                ),
            )?;
            return Ok(());
        }
        Flow::Device => device(oauth, out).await?,
        Flow::Browser => browser(oauth, out).await?,
    };
    store::save(&oauth.token_file, &tokens)?;
    say(
        out,
        &format!(
            "account `{}`: signed in; tokens stored in {}",
            oauth.account,
            oauth.token_file.display()
        ),
    )
}

fn say(out: &mut (dyn Write + Send), line: &str) -> Result<(), Error> {
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|err| Error::new(Kind::Local, format!("cannot write to the terminal: {err}")))
}

async fn device(oauth: &OAuth, out: &mut (dyn Write + Send)) -> Result<store::TokenFile, Error> {
    let endpoint = Endpoint::new(oauth).await?;
    let details = endpoint.device_code().await?;
    say(
        out,
        &format!(
            "To sign in account `{}`, open {} and enter the code {} (within {} minutes).",
            oauth.account,
            details.verification_uri().as_str(),
            details.user_code().secret(),
            details.expires_in().as_secs().div_ceil(60)
        ),
    )?;
    endpoint.device_token(&details).await
}

async fn browser(oauth: &OAuth, out: &mut (dyn Write + Send)) -> Result<store::TokenFile, Error> {
    let local = |err: std::io::Error| {
        Error::new(
            Kind::Local,
            format!("cannot listen on 127.0.0.1 for the browser's redirect: {err}"),
        )
    };
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(local)?;
    let redirect = format!(
        "http://127.0.0.1:{}/",
        listener.local_addr().map_err(local)?.port()
    );
    let endpoint = Endpoint::new(oauth).await?;
    let (url, verifier, state) = endpoint.authorization_url(&redirect)?;
    say(
        out,
        &format!(
            "To sign in account `{}`, open this URL in a browser on this machine:\n{url}",
            oauth.account
        ),
    )?;
    let code = tokio::time::timeout(BROWSER_TIMEOUT, redirected_code(&listener, state.secret()))
        .await
        .map_err(|_| {
            Error::new(
                Kind::Auth,
                format!(
                    "the browser did not come back within {} minutes; run `mailfetch login {}` again",
                    BROWSER_TIMEOUT.as_secs() / 60,
                    oauth.account
                ),
            )
        })??;
    endpoint.code_token(code, verifier, &redirect).await
}

/// Serves the listener until the browser's redirect arrives; its code.
async fn redirected_code(listener: &TcpListener, state: &str) -> Result<String, Error> {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let Some(head) = read_head(&mut stream).await else {
            continue;
        };
        let outcome = parse_redirect(&head, state);
        let (status, page) = match &outcome {
            Redirect::Code(_) => (
                "200 OK",
                "Signed in. You can close this window and go back to mailfetch.",
            ),
            Redirect::Refused(_) => ("400 Bad Request", "Not signed in: see mailfetch's message."),
            Redirect::Other => ("404 Not Found", "Not found."),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{page}",
            page.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
        match outcome {
            Redirect::Code(code) => return Ok(code),
            Redirect::Refused(problem) => return Err(Error::new(Kind::Auth, problem)),
            Redirect::Other => {}
        }
    }
}

/// The request head on `stream`, if one arrives whole in time.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 2048];
    let read = async {
        while !head.windows(4).any(|window| window == b"\r\n\r\n") {
            let n = stream.read(&mut buffer).await.ok()?;
            if n == 0 || head.len() + n > MAX_REQUEST_HEAD {
                return None;
            }
            head.extend_from_slice(&buffer[..n]);
        }
        Some(())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()??;
    String::from_utf8(head).ok()
}

/// What a request to the redirect listener brought.
#[derive(Debug, PartialEq, Eq)]
enum Redirect {
    /// The authorization code, with the state we sent.
    Code(String),
    /// The provider's refusal, or a redirect that is not ours (wrong or no
    /// state): the login fails, with this message.
    Refused(String),
    /// Anything else (a browser asking for /favicon.ico): ignored.
    Other,
}

/// Reads the redirect's request line: `GET /?code=…&state=… HTTP/1.1`, or
/// `?error=…&error_description=…`.
fn parse_redirect(head: &str, state: &str) -> Redirect {
    let target = head
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("GET "))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_default();
    let Some(query) = target.strip_prefix("/?") else {
        return Redirect::Other;
    };
    let mut code = None;
    let mut returned_state = None;
    let mut error = None;
    let mut description = None;
    for (key, value) in oauth2::url::form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "code" => code = Some(value.into_owned()),
            "state" => returned_state = Some(value.into_owned()),
            "error" => error = Some(value.into_owned()),
            "error_description" => description = Some(value.into_owned()),
            _ => {}
        }
    }
    if let Some(error) = error {
        let description = description
            .map(|text| format!(": {text}"))
            .unwrap_or_default();
        return Redirect::Refused(format!(
            "the provider refused the sign-in ({error}{description})"
        ));
    }
    match (code, returned_state) {
        (Some(code), Some(returned)) if constant_time_eq(returned.as_bytes(), state.as_bytes()) => {
            Redirect::Code(code)
        }
        (Some(_), _) => Redirect::Refused(
            "the browser came back with a code but not with the state mailfetch sent: \
             ignored, as it may not come from your sign-in; try again"
                .to_owned(),
        ),
        (None, _) => Redirect::Other,
    }
}

/// Compares without an early exit, so the time taken says nothing about
/// how much of the state a guess got right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redirect_brings_a_code_only_with_our_state() {
        let head = "GET /?code=C%2F1&state=S1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        assert_eq!(parse_redirect(head, "S1"), Redirect::Code("C/1".to_owned()));
        assert!(matches!(parse_redirect(head, "S2"), Redirect::Refused(_)));
        let no_state = "GET /?code=C1 HTTP/1.1\r\n\r\n";
        assert!(matches!(
            parse_redirect(no_state, "S1"),
            Redirect::Refused(_)
        ));
    }

    #[test]
    fn a_refusal_is_reported_and_other_requests_are_ignored() {
        let refused = "GET /?error=access_denied&error_description=The+user+said+no&state=S \
                       HTTP/1.1\r\n\r\n";
        assert_eq!(
            parse_redirect(refused, "S"),
            Redirect::Refused(
                "the provider refused the sign-in (access_denied: The user said no)".to_owned()
            )
        );
        for other in [
            "GET /favicon.ico HTTP/1.1\r\n\r\n",
            "POST /?code=C&state=S HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "",
        ] {
            assert_eq!(parse_redirect(other, "S"), Redirect::Other, "{other:?}");
        }
    }
}
