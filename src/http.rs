//! The HTTP client for OAuth2 token endpoints.
//!
//! reqwest on rustls with the *ring* provider, trusting what mail
//! connections trust (the system's roots plus a `ca_file`, see [`net`]),
//! with a time limit on every request. It follows no redirect: a token
//! endpoint that redirects is misconfigured, and following one could send
//! a client secret or a code somewhere else.
//!
//! [`net`]: crate::net

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;

use crate::error::{Error, Kind};
use crate::net::{ring_provider, trusted_roots};

/// A client for one account's token endpoint; `timeout` bounds connecting
/// and each whole request.
pub async fn client(ca_file: Option<&Path>, timeout: Duration) -> Result<reqwest::Client, Error> {
    let cannot = |err: &dyn std::fmt::Display| {
        Error::new(
            Kind::Local,
            format!("cannot set up the HTTP client for OAuth2: {err}"),
        )
    };
    let tls = ClientConfig::builder_with_provider(Arc::new(ring_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|err| cannot(&err))?
        .with_root_certificates(trusted_roots(ca_file).await?)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .user_agent(concat!("mailfetch/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| cannot(&err))
}
