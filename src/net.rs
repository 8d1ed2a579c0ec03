//! TCP and TLS connections.
//!
//! Every protocol opens its connection through [`connect`] and, for implicit
//! TLS or after STLS/STARTTLS, upgrades it with [`start_tls`]. TLS always uses
//! rustls with the *ring* provider, chosen explicitly so that nothing depends
//! on a process-wide default provider being installed.
//!
//! A server's certificate is trusted in one of two ways:
//!
//! * **Certificate authorities** (the default): the system's roots plus any
//!   `ca_file` must vouch for the certificate, and it must be valid for the
//!   host name we connected to.
//! * **A pinned fingerprint**: the SHA-256 of the server's certificate must be
//!   exactly the configured one. As in mpop, the pin *replaces* CA and host
//!   name validation, so a self-signed server can be used safely once its
//!   fingerprint has been checked out of band.
//!
//! When verification fails, the error names the problem and the host, and
//! shows the fingerprint of the certificate the server presented, so the user
//! can check it and pin it without reaching for `openssl s_client`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::{Error, Kind};
use crate::fingerprint::Fingerprint;

/// How the server's certificate is checked.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// A PEM file with extra certificate authorities to trust, in addition to
    /// the system's.
    pub ca_file: Option<PathBuf>,
    /// The SHA-256 of the server's end-entity certificate (DER). When set, it
    /// is the only check made on the certificate.
    pub fingerprint: Option<Fingerprint>,
}

/// A connection: plain TCP, TLS over TCP, or a Unix domain socket (LMTP
/// to a local server, never encrypted).
///
/// Protocols read and write it without caring which; they only ask
/// [`Stream::is_tls`] when deciding whether a password may be sent.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Unix(tokio::net::UnixStream),
}

impl Stream {
    /// True if the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls).poll_read(cx, buf),
            Stream::Unix(unix) => Pin::new(unix).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls).poll_write(cx, buf),
            Stream::Unix(unix) => Pin::new(unix).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls).poll_flush(cx),
            Stream::Unix(unix) => Pin::new(unix).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls).poll_shutdown(cx),
            Stream::Unix(unix) => Pin::new(unix).poll_shutdown(cx),
        }
    }
}

/// Resolves `host` and connects to `port` on it.
///
/// Every resolved address is tried in turn, each with its own `timeout`, so
/// that an unreachable IPv6 address that swallows packets does not use up
/// the time an IPv4 address would have needed. If none accepts, the error of
/// the last attempt is reported.
pub async fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, Error> {
    let host = unbracket(host);
    // A name that does not resolve is its own exit code (11): a typo in
    // the configuration or a broken resolver, not a server that is down.
    let addresses = tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| Error {
            kind: Kind::Dns,
            ..timed_out(format!("resolving {host}"), timeout)
        })?
        .map_err(|err| Error::new(Kind::Dns, format!("cannot resolve {host}: {err}")))?;

    let mut last_error = Error::new(
        Kind::Dns,
        format!("cannot connect to {host}:{port}: the name resolves to no address"),
    );
    for address in addresses {
        let target = describe_target(host, port, address);
        match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Ok(Ok(tcp)) => {
                tracing::debug!("connected to {target}");
                return Ok(tcp);
            }
            Ok(Err(err)) => {
                tracing::debug!("connecting to {target} failed: {err}");
                last_error = Error::new(
                    Kind::Connection,
                    format!("cannot connect to {target}: {err}"),
                );
            }
            Err(_) => {
                tracing::debug!("connecting to {target} timed out");
                last_error = timed_out(format!("connecting to {target}"), timeout);
            }
        }
    }
    Err(last_error)
}

/// Performs a TLS handshake over `tcp`, verifying the server as `host`.
///
/// This serves both implicit TLS (right after [`connect`]) and STLS/STARTTLS
/// (after the server agreed to upgrade). `host` may be a DNS name or an IP
/// literal; see the module documentation for how the certificate is checked.
pub async fn start_tls(
    tcp: TcpStream,
    host: &str,
    opts: &TlsOptions,
    timeout: Duration,
) -> Result<Stream, Error> {
    let host = unbracket(host);
    let server_name = ServerName::try_from(host.to_owned()).map_err(|err| {
        Error::new(
            Kind::Connection,
            format!("cannot use {host:?} as a TLS server name: {err}"),
        )
    })?;
    let provider = Arc::new(ring_provider());
    let verifier = Arc::new(RecordingVerifier::new(host, opts, provider.clone()).await?);
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::new(Kind::Connection, format!("cannot configure TLS: {err}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();

    let handshake = TlsConnector::from(Arc::new(config)).connect(server_name, tcp);
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(tls)) => {
            tracing::debug!("TLS established with {host}");
            Ok(Stream::Tls(Box::new(tls)))
        }
        Ok(Err(err)) => Err(handshake_error(host, opts, &verifier, &err)),
        Err(_) => Err(timed_out(format!("TLS handshake with {host}"), timeout)),
    }
}

/// True if `host` names this machine: `localhost`, an address in
/// 127.0.0.0/8, or `::1` (bracketed or not).
///
/// Protocols use this to allow plaintext passwords to a local server, where
/// nothing crosses a network.
pub fn is_loopback_host(host: &str) -> bool {
    // `localhost.` is the same name, fully qualified; `::ffff:127.0.0.1` is
    // an IPv4 loopback address written as IPv6.
    let host = unbracket(host.strip_suffix('.').unwrap_or(host));
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|address| address.to_canonical().is_loopback())
}

/// The SHA-256 fingerprint of a DER-encoded certificate.
fn sha256_fingerprint(certificate: &[u8]) -> Fingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, certificate);
    let digest: [u8; 32] = digest
        .as_ref()
        .try_into()
        .expect("a SHA-256 digest is 32 bytes long");
    Fingerprint::from(digest)
}

/// The crypto provider for every TLS connection, passed explicitly so we
/// never depend on (or fight over) a process-wide default.
pub(crate) fn ring_provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Strips the brackets of an IPv6 literal written as in a URL (`[::1]`),
/// which neither the resolver nor [`ServerName`] accept.
fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host)
}

/// Names a connection attempt for the user: `host:port`, followed by the
/// address tried when `host` is a name that may resolve to several.
fn describe_target(host: &str, port: u16, address: SocketAddr) -> String {
    if host.parse::<IpAddr>().is_ok() {
        format!("{host}:{port}")
    } else {
        format!("{host}:{port} ({address})")
    }
}

fn timed_out(what: String, timeout: Duration) -> Error {
    Error::new(
        Kind::Server,
        format!("{what} timed out after {} seconds", timeout.as_secs_f64()),
    )
}

/// The system's trusted certificate authorities, loaded once per process.
///
/// Loading reads a few hundred files, once; it is done synchronously because
/// it is brief and a blocking-pool round trip would only add complexity.
/// Certificates that fail to load or parse are skipped (and logged at debug
/// level): one bad file in `/etc/ssl/certs` must not break every connection.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        for err in &loaded.errors {
            tracing::debug!("loading system certificates: {err}");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
        tracing::debug!("trusting {added} system certificate authorities ({ignored} unparsable)");
        roots
    })
}

/// Reads every certificate in the PEM file `path` (a `ca_file`).
///
/// A file that cannot be read, or that holds no certificate, is an error:
/// the user asked to trust something and we could not find it.
async fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = tokio::fs::read(path).await.map_err(|err| {
        Error::new(
            Kind::Connection,
            format!("cannot read ca_file {}: {err}", path.display()),
        )
    })?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| {
            Error::new(
                Kind::Connection,
                format!("ca_file {} is not valid PEM: {err}", path.display()),
            )
        })?;
    if certificates.is_empty() {
        return Err(Error::new(
            Kind::Connection,
            format!("ca_file {} contains no PEM certificate", path.display()),
        ));
    }
    Ok(certificates)
}

/// The certificate authorities trusted for one connection: the system's,
/// plus those of `ca_file`.
pub(crate) async fn trusted_roots(ca_file: Option<&Path>) -> Result<RootCertStore, Error> {
    let mut roots = system_roots().clone();
    if let Some(path) = ca_file {
        for certificate in read_ca_file(path).await? {
            roots.add(certificate).map_err(|err| {
                Error::new(
                    Kind::Connection,
                    format!("ca_file {}: unusable certificate: {err}", path.display()),
                )
            })?;
        }
    }
    Ok(roots)
}

/// What a server's certificate is checked against.
#[derive(Debug)]
enum Trust {
    /// Certificate authorities and the host name, by webpki.
    Authorities(Arc<WebPkiServerVerifier>),
    /// Exactly this SHA-256 fingerprint.
    Pinned(Fingerprint),
}

/// Verifies the server's certificate according to [`Trust`], and remembers
/// the fingerprint of the certificate presented so that a failure can show
/// it to the user.
///
/// Each connection gets its own verifier, so the remembered fingerprint is
/// always the one of this connection's server.
#[derive(Debug)]
struct RecordingVerifier {
    trust: Trust,
    provider: Arc<CryptoProvider>,
    presented: Mutex<Option<Fingerprint>>,
}

impl RecordingVerifier {
    async fn new(
        host: &str,
        opts: &TlsOptions,
        provider: Arc<CryptoProvider>,
    ) -> Result<RecordingVerifier, Error> {
        let trust = match opts.fingerprint {
            Some(pin) => Trust::Pinned(pin),
            None => {
                let roots = trusted_roots(opts.ca_file.as_deref()).await?;
                let verifier =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|err| {
                            Error::new(
                                Kind::Connection,
                                format!(
                                    "cannot verify the certificate of {host}: {err}; \
                                     set ca_file = \"/path/to/ca.pem\" or \
                                     fingerprint = \"sha256:...\""
                                ),
                            )
                        })?;
                Trust::Authorities(verifier)
            }
        };
        Ok(RecordingVerifier {
            trust,
            provider,
            presented: Mutex::new(None),
        })
    }

    /// The fingerprint of the certificate the server presented, if it got
    /// that far.
    fn presented(&self) -> Option<Fingerprint> {
        *self
            .presented
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fingerprint = sha256_fingerprint(end_entity);
        *self
            .presented
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(fingerprint);
        match &self.trust {
            Trust::Authorities(webpki) => webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ),
            Trust::Pinned(pin) if fingerprint == *pin => Ok(ServerCertVerified::assertion()),
            // `handshake_error` explains this in terms of the pin; the
            // variant only has to make rustls abort with a fitting alert.
            Trust::Pinned(_) => Err(CertificateError::ApplicationVerificationFailure.into()),
        }
    }

    // Signatures are always verified, pinned or not: the pin proves which
    // certificate the server sent, the signature proves the server holds
    // its private key.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            certificate,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            certificate,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Turns a failed handshake into an error the user can act on.
///
/// Certificate problems say what is wrong, show the fingerprint of the
/// certificate the server presented, and suggest the setting that would
/// make it trusted. Anything else is reported as rustls describes it.
fn handshake_error(
    host: &str,
    opts: &TlsOptions,
    verifier: &RecordingVerifier,
    err: &io::Error,
) -> Error {
    let certificate_error = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|tls_error| match tls_error {
            rustls::Error::InvalidCertificate(certificate_error) => Some(certificate_error),
            _ => None,
        });
    let (Some(certificate_error), Some(presented)) = (certificate_error, verifier.presented())
    else {
        return Error::new(
            Kind::Connection,
            format!("TLS handshake with {host} failed: {err}"),
        );
    };

    let message = match opts.fingerprint {
        Some(pin) => format!(
            "the TLS certificate of {host} does not match the pinned fingerprint: \
             the server presented {presented}, but fingerprint = \"{}\" is configured; \
             if the server's certificate was legitimately replaced, check the new \
             fingerprint out of band and update the setting",
            pin,
        ),
        None => format!(
            "the TLS certificate of {host} cannot be trusted: {}; its fingerprint is \
             {presented}: if that is the right certificate (check out of band), pin it \
             with fingerprint = \"{presented}\", or trust its issuer with \
             ca_file = \"/path/to/ca.pem\"",
            describe_certificate_error(certificate_error),
        ),
    };
    Error::new(Kind::Connection, message)
}

/// Describes a certificate problem in words, where rustls's own
/// description is only a variant name.
fn describe_certificate_error(err: &CertificateError) -> String {
    match err {
        CertificateError::UnknownIssuer => {
            "it is not signed by a trusted certificate authority (self-signed, or a private CA)"
                .to_owned()
        }
        CertificateError::Expired => "it has expired".to_owned(),
        CertificateError::NotValidYet => "it is not valid yet".to_owned(),
        CertificateError::NotValidForName => "it is not valid for this host name".to_owned(),
        CertificateError::Revoked => "it has been revoked".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::ServerConfig;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// A server certificate and its key, plus the PEM of what vouches for
    /// it (its CA, or itself when self-signed).
    struct ServerIdentity {
        certificate: CertificateDer<'static>,
        key: PrivatePkcs8KeyDer<'static>,
        trust_pem: String,
    }

    impl ServerIdentity {
        fn fingerprint(&self) -> Fingerprint {
            sha256_fingerprint(&self.certificate)
        }
    }

    /// A leaf for `localhost` and 127.0.0.1 signed by a fresh test CA.
    fn ca_signed_identity() -> ServerIdentity {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let leaf_key = KeyPair::generate().unwrap();
        let leaf = leaf_params().signed_by(&leaf_key, &ca).unwrap();
        ServerIdentity {
            certificate: leaf.der().clone(),
            key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
            trust_pem: ca.pem(),
        }
    }

    /// A self-signed certificate for `localhost` and 127.0.0.1.
    fn self_signed_identity() -> ServerIdentity {
        let key = KeyPair::generate().unwrap();
        let certificate = leaf_params().self_signed(&key).unwrap();
        ServerIdentity {
            certificate: certificate.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            trust_pem: certificate.pem(),
        }
    }

    fn leaf_params() -> CertificateParams {
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap()
    }

    /// Starts a TLS server on 127.0.0.1 that answers one line with
    /// `echo: <line>`, and returns its port.
    async fn spawn_echo_server(identity: &ServerIdentity) -> u16 {
        let config = ServerConfig::builder_with_provider(Arc::new(ring_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![identity.certificate.clone()],
                PrivateKeyDer::Pkcs8(identity.key.clone_key()),
            )
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            // The client may reject us; that is what several tests expect.
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let mut tls = BufReader::new(tls);
            let mut line = String::new();
            tls.read_line(&mut line).await.unwrap();
            tls.write_all(format!("echo: {line}").as_bytes())
                .await
                .unwrap();
            tls.flush().await.unwrap();
        });
        port
    }

    /// Connects to a fresh server with `identity`, as `host`.
    async fn handshake(
        identity: &ServerIdentity,
        host: &str,
        opts: &TlsOptions,
    ) -> Result<Stream, Error> {
        let port = spawn_echo_server(identity).await;
        let tcp = connect("127.0.0.1", port, TIMEOUT).await.unwrap();
        start_tls(tcp, host, opts, TIMEOUT).await
    }

    fn pem_file(pem: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        io::Write::write_all(&mut file, pem.as_bytes()).unwrap();
        file
    }

    #[tokio::test]
    async fn unknown_issuer_is_rejected_with_the_fingerprint() {
        let identity = ca_signed_identity();
        let err = handshake(&identity, "localhost", &TlsOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind, Kind::Connection);
        assert!(err.message.contains("localhost"), "{err}");
        assert!(
            err.message.contains("trusted certificate authority"),
            "{err}"
        );
        assert!(
            err.message.contains(&identity.fingerprint().to_string()),
            "{err}"
        );
        assert!(err.message.contains("ca_file"), "{err}");
    }

    #[tokio::test]
    async fn ca_file_makes_the_server_trusted_and_data_round_trips() {
        let identity = ca_signed_identity();
        let ca_file = pem_file(&identity.trust_pem);
        let opts = TlsOptions {
            ca_file: Some(ca_file.path().to_owned()),
            fingerprint: None,
        };
        for host in ["localhost", "127.0.0.1"] {
            let stream = handshake(&identity, host, &opts).await.unwrap();
            assert!(stream.is_tls());

            let mut stream = BufReader::new(stream);
            stream.write_all(b"hello\r\n").await.unwrap();
            stream.flush().await.unwrap();
            let mut reply = String::new();
            stream.read_line(&mut reply).await.unwrap();
            assert_eq!(reply, "echo: hello\r\n");
        }
    }

    #[tokio::test]
    async fn host_name_mismatch_is_rejected() {
        let identity = ca_signed_identity();
        let ca_file = pem_file(&identity.trust_pem);
        let opts = TlsOptions {
            ca_file: Some(ca_file.path().to_owned()),
            fingerprint: None,
        };
        let err = handshake(&identity, "mail.example.com", &opts)
            .await
            .unwrap_err();
        assert_eq!(err.kind, Kind::Connection);
        assert!(err.message.contains("mail.example.com"), "{err}");
        assert!(err.message.contains("not valid for"), "{err}");
        assert!(
            err.message.contains(&identity.fingerprint().to_string()),
            "{err}"
        );
    }

    #[tokio::test]
    async fn pinned_self_signed_certificate_is_accepted() {
        let identity = self_signed_identity();
        let opts = TlsOptions {
            ca_file: None,
            fingerprint: Some(identity.fingerprint()),
        };
        // The pin replaces host name validation too.
        let stream = handshake(&identity, "mail.example.com", &opts)
            .await
            .unwrap();
        assert!(stream.is_tls());
    }

    #[tokio::test]
    async fn wrong_pin_is_rejected_with_both_fingerprints() {
        let identity = self_signed_identity();
        let wrong_pin = Fingerprint::from([0xAB; 32]);
        let opts = TlsOptions {
            ca_file: None,
            fingerprint: Some(wrong_pin),
        };
        let err = handshake(&identity, "localhost", &opts).await.unwrap_err();
        assert_eq!(err.kind, Kind::Connection);
        assert!(err.message.contains("pinned fingerprint"), "{err}");
        assert!(
            err.message.contains(&identity.fingerprint().to_string()),
            "{err}"
        );
        assert!(err.message.contains(&wrong_pin.to_string()), "{err}");
    }

    #[tokio::test]
    async fn unreadable_or_empty_ca_file_is_a_clear_error() {
        let empty = pem_file("");
        let missing = empty.path().with_extension("missing");
        for path in [empty.path().to_owned(), missing] {
            let opts = TlsOptions {
                ca_file: Some(path.clone()),
                fingerprint: None,
            };
            let identity = self_signed_identity();
            let err = handshake(&identity, "localhost", &opts).await.unwrap_err();
            assert_eq!(err.kind, Kind::Connection);
            assert!(err.message.contains(&path.display().to_string()), "{err}");
        }
    }

    #[tokio::test]
    async fn connection_refused_names_host_and_port() {
        // Bind and drop a listener to find a port nobody listens on.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = connect("127.0.0.1", port, TIMEOUT).await.unwrap_err();
        assert_eq!(err.kind, Kind::Connection);
        assert!(err.message.contains(&format!("127.0.0.1:{port}")), "{err}");
    }

    /// `.invalid` never resolves (RFC 2606).
    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_a_dns_failure() {
        let err = connect("nosuch.invalid", 110, TIMEOUT).await.unwrap_err();
        assert_eq!(err.kind, Kind::Dns, "{err}");
        assert!(
            err.message.contains("cannot resolve nosuch.invalid"),
            "{err}"
        );
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LocalHost",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "example.com",
            "128.0.0.1",
            "10.0.0.1",
            "::2",
            "[::]",
            "localhost.example.com",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
