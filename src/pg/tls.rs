//! TLS for every connection pg-rekey opens, with libpq's settings and meaning.
//!
//! The TLS implementation is [rustls](https://github.com/rustls/rustls) (with
//! the `ring` provider) through `tokio-rustls`: a memory-safe, widely audited
//! library that needs no system OpenSSL at build or run time, so the binary
//! behaves the same on every machine. pg-rekey writes no cryptography itself;
//! this module only maps libpq's options onto rustls and plugs the result
//! into tokio-postgres ([`MakeRustls`]) and into the replication connection
//! ([`handshake`]).
//!
//! What each `sslmode` means (as in libpq):
//!
//! | mode | TLS | server certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow` | only if plaintext is refused | chain, if a root certificate file exists |
//! | `prefer` (default) | if the server offers it | chain, if a root certificate file exists |
//! | `require` | always; never falls back to plaintext | chain, if a root certificate file exists |
//! | `verify-ca` | always | chain against `sslrootcert` |
//! | `verify-full` | always | chain, and the host name (or IP) against the certificate |
//!
//! `sslrootcert` defaults to `~/.postgresql/root.crt`; `sslrootcert=system`
//! uses the operating system's roots and, as in libpq 16+, requires (and
//! defaults to) `verify-full`. `sslcert`/`sslkey` (default
//! `~/.postgresql/postgresql.crt`/`.key`) send a client certificate when the
//! certificate file exists; the key must not be readable by group or others.
//! `sslnegotiation=direct` (PostgreSQL 17+) starts TLS at once with ALPN
//! `postgresql` instead of sending an SSLRequest first; it needs `require` or
//! stronger. Unix-domain sockets never use TLS, as in libpq.
//!
//! SCRAM authentication over TLS is bound to the channel
//! (`tls-server-end-point`, `SCRAM-SHA-256-PLUS`) when the server offers it;
//! `channel_binding=require` refuses to authenticate without it.
//!
//! Differences from libpq: host names are matched against the certificate's
//! subjectAltName entries only (not the Common Name); certificate revocation
//! lists are not supported; TLS 1.2 and 1.3 are the only versions (rustls
//! has no older ones), so `ssl_min_protocol_version`/`ssl_max_protocol_version`
//! and `sslcompression` are checked for validity and otherwise ignored.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::spec::{ConnSpecError, Env};

/// `sslmode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// Plaintext first, TLS if the server refuses plaintext.
    Allow,
    /// TLS if the server offers it (libpq's default).
    #[default]
    Prefer,
    /// TLS or nothing.
    Require,
    /// TLS, certificate chain verified.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

impl SslMode {
    /// Parse libpq's spelling.
    pub fn parse(v: &str) -> Option<SslMode> {
        Some(match v {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a plaintext connection is acceptable.
    pub fn allows_plaintext(self) -> bool {
        self <= SslMode::Prefer
    }
}

/// `sslnegotiation`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslNegotiation {
    /// SSLRequest first, then TLS if the server answers `S`.
    #[default]
    Postgres,
    /// TLS at once, ALPN `postgresql` (PostgreSQL 17+).
    Direct,
}

/// Where trusted root certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// The operating system's trust store.
    System,
}

/// The TLS part of a connection string, resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// `sslmode`.
    pub mode: SslMode,
    /// Trusted roots; `None` when no root certificate file exists (then
    /// modes below `verify-ca` do not check the server certificate).
    pub root_cert: Option<RootCert>,
    /// Client certificate chain (PEM), sent when present.
    pub client_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub client_key: Option<PathBuf>,
    /// `sslnegotiation`.
    pub negotiation: SslNegotiation,
    /// `sslsni`: send the host name in the handshake (default on).
    pub no_sni: bool,
    /// `channel_binding`: bind SCRAM authentication to the TLS channel.
    pub channel_binding: ChannelBindingMode,
}

/// `channel_binding`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChannelBindingMode {
    /// Never.
    Disable,
    /// When TLS is up and the server offers `SCRAM-SHA-256-PLUS` (libpq's default).
    #[default]
    Prefer,
    /// Fail unless the server authenticated us with channel binding.
    Require,
}

impl TlsSettings {
    /// Settings that demand TLS verified against `ca` (a PEM file), checking the host name.
    pub fn verify_full(ca: &Path) -> TlsSettings {
        TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: Some(RootCert::File(ca.to_path_buf())),
            ..TlsSettings::default()
        }
    }

    /// Resolve the `ssl*` options: `get` yields `(where, value)` for an option
    /// from the string or its `PGSSL*` variable.
    pub(crate) fn resolve(
        get: &dyn Fn(&str) -> Option<(String, String)>,
        env: &dyn Env,
    ) -> Result<TlsSettings, ConnSpecError> {
        let bad = |key: String, value: String, expected: &str| ConnSpecError::BadValue {
            key,
            value,
            expected: expected.to_string(),
        };
        let mode = match get("sslmode") {
            Some((key, v)) => Some(SslMode::parse(&v).ok_or_else(|| {
                bad(
                    key,
                    v,
                    "disable, allow, prefer, require, verify-ca or verify-full",
                )
            })?),
            None => None,
        };
        let negotiation = match get("sslnegotiation") {
            Some((key, v)) => match v.as_str() {
                "postgres" => SslNegotiation::Postgres,
                "direct" => SslNegotiation::Direct,
                _ => return Err(bad(key, v, "postgres or direct")),
            },
            None => SslNegotiation::Postgres,
        };
        let no_sni = match get("sslsni") {
            Some((key, v)) => match v.as_str() {
                "1" => false,
                "0" => true,
                _ => return Err(bad(key, v, "0 or 1")),
            },
            None => false,
        };
        let channel_binding = match get("channel_binding") {
            Some((key, v)) => match v.as_str() {
                "disable" => ChannelBindingMode::Disable,
                "prefer" => ChannelBindingMode::Prefer,
                "require" => ChannelBindingMode::Require,
                _ => return Err(bad(key, v, "disable, prefer or require")),
            },
            None => ChannelBindingMode::Prefer,
        };
        if let Some((key, v)) = get("sslcompression") {
            if v != "0" && v != "1" {
                return Err(bad(key, v, "0 or 1"));
            }
        }
        for name in ["ssl_min_protocol_version", "ssl_max_protocol_version"] {
            if let Some((key, v)) = get(name) {
                if !["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3", ""].contains(&v.as_str()) {
                    return Err(bad(key, v, "TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3"));
                }
            }
        }
        let home_file = |name: &str| {
            env.var("HOME")
                .map(|h| Path::new(&h).join(".postgresql").join(name))
        };
        let root_given = get("sslrootcert").map(|(_, v)| v);
        let root_cert = match root_given.as_deref() {
            Some("system") => Some(RootCert::System),
            Some(p) => Some(RootCert::File(PathBuf::from(p))),
            None => home_file("root.crt").map(RootCert::File),
        };
        let mode = match (mode, &root_cert) {
            (None, Some(RootCert::System)) => SslMode::VerifyFull,
            (Some(m), Some(RootCert::System)) if m != SslMode::VerifyFull => {
                return Err(ConnSpecError::Tls(format!(
                    "weak sslmode \"{}\" may not be used with sslrootcert=system; use sslmode=verify-full (the system's roots vouch for host names, not for a private chain)",
                    m.as_str()
                )))
            }
            (m, _) => m.unwrap_or_default(),
        };
        // A root file that does not exist means "no verification" for the
        // weak modes and is an error for the verifying ones.
        let root_cert = match root_cert {
            Some(RootCert::File(p)) if !p.exists() => {
                if mode >= SslMode::VerifyCa {
                    return Err(ConnSpecError::Tls(format!(
                        "root certificate file \"{}\" does not exist; either provide the file (sslrootcert=/path/to/ca.crt or PGSSLROOTCERT), use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification",
                        p.display()
                    )));
                }
                None
            }
            None if mode >= SslMode::VerifyCa => {
                return Err(ConnSpecError::Tls(format!(
                    "sslmode={} needs a root certificate and none was given (no HOME, so no ~/.postgresql/root.crt); set sslrootcert (or PGSSLROOTCERT) to the CA file, or sslrootcert=system",
                    mode.as_str()
                )))
            }
            other => other,
        };
        let client_cert = get("sslcert")
            .map(|(_, v)| PathBuf::from(v))
            .or_else(|| home_file("postgresql.crt"))
            .filter(|p| p.exists());
        let client_key = get("sslkey")
            .map(|(_, v)| PathBuf::from(v))
            .or_else(|| home_file("postgresql.key"));
        let client_key = match (&client_cert, client_key) {
            (Some(cert), Some(key)) if !key.exists() => {
                return Err(ConnSpecError::Tls(format!(
                    "certificate \"{}\" present, but not private key file \"{}\"; set sslkey (or PGSSLKEY) to the key's path",
                    cert.display(),
                    key.display()
                )))
            }
            (Some(_), key) => key,
            (None, _) => None,
        };
        if negotiation == SslNegotiation::Direct && mode < SslMode::Require {
            return Err(ConnSpecError::Tls(format!(
                "weak sslmode \"{}\" may not be used with sslnegotiation=direct; use sslmode=require or stronger",
                mode.as_str()
            )));
        }
        Ok(TlsSettings {
            mode,
            root_cert,
            client_cert,
            client_key,
            negotiation,
            no_sni,
            channel_binding,
        })
    }

    /// The `ssl*` options as ` key=value` pairs, for [`ConnSpec::to_dsn`](super::ConnSpec::to_dsn).
    pub(crate) fn to_dsn_part(&self) -> String {
        let q = |p: &Path| {
            let s = p.display().to_string();
            format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
        };
        let mut s = format!(" sslmode={}", self.mode.as_str());
        match &self.root_cert {
            Some(RootCert::System) => s.push_str(" sslrootcert=system"),
            Some(RootCert::File(p)) => s.push_str(&format!(" sslrootcert={}", q(p))),
            None => {}
        }
        if let Some(p) = &self.client_cert {
            s.push_str(&format!(" sslcert={}", q(p)));
        }
        if let Some(p) = &self.client_key {
            s.push_str(&format!(" sslkey={}", q(p)));
        }
        if self.negotiation == SslNegotiation::Direct {
            s.push_str(" sslnegotiation=direct");
        }
        if self.no_sni {
            s.push_str(" sslsni=0");
        }
        match self.channel_binding {
            ChannelBindingMode::Prefer => {}
            ChannelBindingMode::Disable => s.push_str(" channel_binding=disable"),
            ChannelBindingMode::Require => s.push_str(" channel_binding=require"),
        }
        s
    }

    /// Build the rustls client configuration these settings describe.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let check = if self.mode >= SslMode::VerifyFull {
            Check::Full
        } else if self.mode == SslMode::VerifyCa || self.root_cert.is_some() {
            Check::Chain
        } else {
            Check::Nothing
        };
        let webpki = match (&self.root_cert, check) {
            (_, Check::Nothing) => None,
            (root, _) => {
                let mut roots = RootCertStore::empty();
                match root {
                    Some(RootCert::File(p)) => {
                        let mut n = 0;
                        for c in CertificateDer::pem_file_iter(p)
                            .map_err(|e| TlsError::file("root certificate", p, e))?
                        {
                            let c = c.map_err(|e| TlsError::file("root certificate", p, e))?;
                            roots.add(c).map_err(|e| {
                                TlsError::Config(format!(
                                    "root certificate file \"{}\": {e}",
                                    p.display()
                                ))
                            })?;
                            n += 1;
                        }
                        if n == 0 {
                            return Err(TlsError::Config(format!(
                                "root certificate file \"{}\" holds no PEM certificate",
                                p.display()
                            )));
                        }
                    }
                    Some(RootCert::System) => {
                        let found = rustls_native_certs::load_native_certs();
                        for c in found.certs {
                            let _ = roots.add(c);
                        }
                        if roots.is_empty() {
                            return Err(TlsError::Config(format!(
                                "sslrootcert=system but no trusted roots were found on this system ({:?}); install ca-certificates or give sslrootcert a file",
                                found.errors
                            )));
                        }
                    }
                    None => {
                        return Err(TlsError::Config(
                            "certificate verification needs sslrootcert".into(),
                        ))
                    }
                }
                Some(
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| TlsError::Config(format!("trusted roots: {e}")))?,
                )
            }
        };
        let verifier = Arc::new(Verifier {
            check,
            webpki,
            provider: provider.clone(),
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                check_key_permissions(key)?;
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| TlsError::file("client certificate", cert, e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| TlsError::file("client certificate", cert, e))?;
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| TlsError::file("client key", key, e))?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    TlsError::Config(format!(
                        "client certificate \"{}\" and key \"{}\": {e}",
                        cert.display(),
                        key.display()
                    ))
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        config.enable_sni = !self.no_sni;
        Ok(Arc::new(config))
    }
}

/// Why TLS could not be set up or negotiated.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file or setting is unusable.
    #[error("TLS: {0}")]
    Config(String),
}

impl TlsError {
    fn file(what: &str, path: &Path, e: impl std::fmt::Display) -> TlsError {
        TlsError::Config(format!(
            "cannot read {what} file \"{}\": {e}",
            path.display()
        ))
    }
}

/// libpq's rule: the key may be read by its owner only (or, if root owns it, by its group).
fn check_key_permissions(key: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(key).map_err(|e| TlsError::file("client key", key, e))?;
    let mode = meta.mode();
    let ok = if meta.uid() == 0 {
        mode & 0o037 == 0
    } else {
        mode & 0o077 == 0
    };
    if !ok {
        return Err(TlsError::Config(format!(
            "private key file \"{}\" has group or world access; permissions should be u=rw (0600) or less (chmod 600 {})",
            key.display(),
            key.display()
        )));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    Full,
}

/// Checks the server certificate as far as the mode asks; handshake
/// signatures are always verified (a server must own the key it presents).
#[derive(Debug)]
struct Verifier {
    check: Check,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = self
            .webpki
            .as_ref()
            .filter(|_| self.check != Check::Nothing)
        else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // webpki checks the chain before the name: a name mismatch means
            // the chain is good, which is all verify-ca asks.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.check == Check::Chain => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The operator's fix for a TLS failure, recognised from its text (rustls
/// and tokio-postgres report these as strings).
pub fn failure_hint(text: &str) -> Option<&'static str> {
    Some(
        if text.contains("UnknownIssuer") || text.contains("BadSignature") {
            "the server's certificate is not signed by a certificate authority in sslrootcert; point sslrootcert (or PGSSLROOTCERT) at the CA that issued the server's certificate"
        } else if text.contains("NotValidForName") || text.contains("not valid for name") {
            "the server's certificate does not name the host you connected to; connect with a host name the certificate lists (its subjectAltName), or use sslmode=verify-ca to check the chain only"
        } else if text.contains("Expired") || text.contains("NotValidYet") {
            "the server's certificate is outside its validity period; renew it or check this machine's clock"
        } else if text.contains("server does not support TLS")
            || text.contains("does not support TLS")
        {
            "the server has ssl = off; enable TLS on the server (ssl = on with a certificate) or, if plaintext is acceptable, lower sslmode to prefer"
        } else if text.contains("CertificateRequired") || text.contains("certificate required") {
            "the server requires a client certificate; set sslcert and sslkey (or PGSSLCERT/PGSSLKEY)"
        } else {
            return None;
        },
    )
}

/// The name the certificate is checked against (and sent as SNI when it is a DNS name).
pub fn server_name(host: &str) -> Result<ServerName<'static>, io::Error> {
    ServerName::try_from(host.to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is not a valid TLS server name: {e}"),
        )
    })
}

/// Run the TLS handshake on `stream` (after the server answered `S`, or at
/// once for direct negotiation).
pub async fn handshake<S>(
    config: Arc<ClientConfig>,
    host: &str,
    stream: S,
) -> Result<tokio_rustls::client::TlsStream<S>, io::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio_rustls::TlsConnector::from(config)
        .connect(server_name(host)?, stream)
        .await
}

/// tokio-postgres's TLS hook, backed by rustls.
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<ClientConfig>,
}

impl MakeRustls {
    /// Wrap a rustls configuration.
    pub fn new(config: Arc<ClientConfig>) -> Self {
        MakeRustls { config }
    }
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    /// tokio-postgres asks for a connector for every connection, TLS or
    /// not, with an empty name for a Unix-domain socket (which never uses
    /// TLS): the name is only checked when a handshake is made.
    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        Ok(RustlsConnect {
            config: self.config.clone(),
            domain: domain.to_string(),
        })
    }
}

/// One pending handshake for tokio-postgres.
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    domain: String,
}

impl<S> tokio_postgres::tls::TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream<S>, io::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = server_name(&self.domain)?;
            let s = tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await?;
            Ok(RustlsStream(s))
        })
    }
}

/// A TLS stream as tokio-postgres wants it.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        match end_point_of(self.0.get_ref().1) {
            Some(h) => tokio_postgres::tls::ChannelBinding::tls_server_end_point(h),
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}

/// The `tls-server-end-point` channel binding data of an established connection.
pub fn end_point_of(conn: &rustls::ClientConnection) -> Option<Vec<u8>> {
    server_end_point(conn.peer_certificates()?.first()?)
}

/// RFC 5929 `tls-server-end-point`: the hash of the server's certificate,
/// with the hash function of the certificate's signature algorithm (SHA-256
/// for MD5 and SHA-1). `None` for algorithms without one fixed hash (RSA-PSS,
/// Ed25519): channel binding is then not offered.
pub fn server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    const RSA: [u8; 8] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: [u8; 6] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let oid = signature_algorithm_oid(cert_der)?;
    let alg = if let Some(last) = oid.strip_prefix(&RSA[..]) {
        match last {
            [0x04] | [0x05] | [0x0b] => &ring::digest::SHA256, // md5, sha1, sha256 WithRSA
            [0x0c] => &ring::digest::SHA384,
            [0x0d] => &ring::digest::SHA512,
            _ => return None,
        }
    } else if let Some(rest) = oid.strip_prefix(&ECDSA[..]) {
        match rest {
            [0x01] | [0x03, 0x02] => &ring::digest::SHA256, // ecdsa-with-SHA1, -SHA256
            [0x03, 0x03] => &ring::digest::SHA384,
            [0x03, 0x04] => &ring::digest::SHA512,
            _ => return None,
        }
    } else {
        return None;
    };
    Some(ring::digest::digest(alg, cert_der).as_ref().to_vec())
}

/// One DER TLV: tag, contents, what follows.
fn der_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*b.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, b.get(header..end)?, b.get(end..)?))
}

/// The OID of `Certificate.signatureAlgorithm`.
fn signature_algorithm_oid(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, body, _) = der_tlv(cert)? else {
        return None;
    };
    let (_, _tbs, rest) = der_tlv(body)?;
    let (0x30, alg, _) = der_tlv(rest)? else {
        return None;
    };
    let (0x06, oid, _) = der_tlv(alg)? else {
        return None;
    };
    Some(oid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        for (alg, digest) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, &ring::digest::SHA256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, &ring::digest::SHA384),
        ] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let cert = rcgen::CertificateParams::new(vec!["h".to_string()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let der = cert.der().to_vec();
            assert_eq!(
                server_end_point(&der),
                Some(ring::digest::digest(digest, &der).as_ref().to_vec())
            );
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["h".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(server_end_point(cert.der()), None);
        assert_eq!(server_end_point(b"\x30\x82\xff"), None);
        assert_eq!(server_end_point(b""), None);
    }
}
