//! TLS with rustls (ring provider: no C toolchain beyond ring's own, no aws-lc).
//!
//! * Bus side: [`ServerTls`] loads `[tls]` (PEM certificate chain and key) once at
//!   start; [`ServerTls::accept`] turns an accepted `TcpStream` into a TLS stream
//!   within a deadline, so any listener (the native port, the WebSocket gateway) can
//!   wrap its connections the same way. A client that speaks plaintext to a TLS port
//!   gets one plaintext `error {code: "tls_required"}` frame and the connection
//!   closes — a clean failure, never a hang.
//! * Client certificates (`client_certs = true`): the bus asks for one but does not
//!   require it; any certificate is accepted at the TLS layer *if the client proves it
//!   holds the key* (the handshake signature is verified), and its SHA-256
//!   fingerprint is then looked up in `[[auth.client]] cert_sha256`. Pinning by
//!   fingerprint needs no certificate authority on site.
//! * Client side: [`TlsClient`] trusts the CA certificates of a PEM file, optionally
//!   presents a client certificate, and checks the bus's name (a DNS name or an IP
//!   address in the certificate's subjectAltName).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::TlsConfig;
use crate::protocol::{frame, BusMsg, ErrorCode};

/// A TLS stream over TCP, on either side.
pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;
pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS could not be set up (files, keys, names).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Config(String),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Reads every certificate of a PEM file.
///
/// # Errors
/// [`TlsError::File`] naming the file, also when it holds no certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no CERTIFICATE block"));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
///
/// # Errors
/// [`TlsError::File`] naming the file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

/// Why an accepted connection did not become a TLS stream.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The client spoke plaintext; it was told so and closed.
    #[error("plaintext client on the TLS port")]
    Plaintext,
    #[error("TLS handshake timed out")]
    Timeout,
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
}

/// The bus's TLS configuration, loaded once.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl ServerTls {
    /// Loads `[tls]`.
    ///
    /// # Errors
    /// [`TlsError`] naming the file or what rustls refused.
    pub fn load(cfg: &TlsConfig) -> Result<ServerTls, TlsError> {
        let certs = load_certs(&cfg.cert)?;
        let key = load_key(&cfg.key)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = if cfg.client_certs {
            builder.with_client_cert_verifier(Arc::new(PinnedClientCerts {
                provider: provider(),
            }))
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| file_err(&cfg.key, format!("does not fit the certificate: {e}")))?;
        Ok(ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Runs the TLS handshake on an accepted connection within `deadline`. Returns
    /// the stream and the SHA-256 fingerprint of the client's certificate, if it
    /// presented one.
    ///
    /// # Errors
    /// [`AcceptError`]; a plaintext client has already been answered.
    pub async fn accept(
        &self,
        mut stream: TcpStream,
        deadline: Duration,
    ) -> Result<(ServerStream, Option<[u8; 32]>), AcceptError> {
        let handshake = async {
            let mut first = [0u8; 1];
            let n = stream
                .peek(&mut first)
                .await
                .map_err(AcceptError::Handshake)?;
            if n == 1 && first[0] != TLS_HANDSHAKE {
                let f = frame(&BusMsg::Error {
                    id: None,
                    code: ErrorCode::TlsRequired,
                    message: "this port speaks TLS: connect with TLS (avbus --tls --ca FILE)"
                        .into(),
                });
                let _ = stream.write_all(&f).await;
                let _ = stream.shutdown().await;
                return Err(AcceptError::Plaintext);
            }
            let tls = self
                .acceptor
                .accept(stream)
                .await
                .map_err(AcceptError::Handshake)?;
            let fp = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| {
                    use sha2::Digest;
                    sha2::Sha256::digest(c.as_ref()).into()
                });
            Ok((tls, fp))
        };
        tokio::time::timeout(deadline, handshake)
            .await
            .map_err(|_| AcceptError::Timeout)?
    }
}

/// Accepts any client certificate whose holder proves it has the key; the
/// certificate's fingerprint then decides who the client is (`[[auth.client]]`).
#[derive(Debug)]
struct PinnedClientCerts {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for PinnedClientCerts {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Trust comes from the fingerprint, checked against the configuration after
        // the handshake; the signatures below prove possession of the key.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
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
        verify_tls13_signature(
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

/// A client's TLS settings: whom to trust, and optionally its own certificate.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    /// The name to check in the bus's certificate; by default the host of the
    /// address connected to.
    pub server_name: Option<String>,
}

impl TlsClient {
    /// Trusts the CA certificates in `ca_pem` (PEM text).
    ///
    /// # Errors
    /// [`TlsError::Config`] when the text holds no usable certificate.
    pub fn from_ca_pem(ca_pem: &[u8]) -> Result<TlsClient, TlsError> {
        let certs = CertificateDer::pem_slice_iter(ca_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Config(format!("CA certificates: {e}")))?;
        TlsClient::build(certs, None)
    }

    /// Trusts the CA certificates of a PEM file; presents the certificate and key of
    /// `client` (two PEM files) when given.
    ///
    /// # Errors
    /// [`TlsError`] naming the file.
    pub fn from_files(ca: &Path, client: Option<(&Path, &Path)>) -> Result<TlsClient, TlsError> {
        let roots = load_certs(ca)?;
        let own = match client {
            Some((c, k)) => Some((load_certs(c)?, load_key(k)?)),
            None => None,
        };
        TlsClient::build(roots, own)
    }

    /// Adds a client certificate (PEM text of the chain and of the key).
    ///
    /// # Errors
    /// [`TlsError::Config`] when the PEM text or the key is unusable.
    pub fn with_client_cert_pem(
        ca_pem: &[u8],
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<TlsClient, TlsError> {
        let roots = CertificateDer::pem_slice_iter(ca_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Config(format!("CA certificates: {e}")))?;
        let certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Config(format!("client certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| TlsError::Config(format!("client key: {e}")))?;
        TlsClient::build(roots, Some((certs, key)))
    }

    fn build(
        roots: Vec<CertificateDer<'static>>,
        own: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<TlsClient, TlsError> {
        let mut store = rustls::RootCertStore::empty();
        for c in roots {
            store
                .add(c)
                .map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
        }
        if store.is_empty() {
            return Err(TlsError::Config("no CA certificate to trust".into()));
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(store);
        let config = match own {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| TlsError::Config(format!("client certificate: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        Ok(TlsClient {
            config: Arc::new(config),
            server_name: None,
        })
    }

    /// Connects over TLS to `addr` (`host:port`).
    ///
    /// # Errors
    /// The connect or handshake error, as text naming the address.
    pub async fn connect(&self, addr: &str) -> Result<ClientStream, String> {
        let host = match &self.server_name {
            Some(n) => n.clone(),
            None => host_of(addr).to_owned(),
        };
        let name = ServerName::try_from(host.clone())
            .map_err(|e| format!("{host:?} is not a server name: {e}"))?;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("{addr}: TLS: {e}"))
    }
}

/// The host part of `host:port` (`[::1]:7420` → `::1`).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn hosts() {
        assert_eq!(host_of("127.0.0.1:7420"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7420"), "::1");
        assert_eq!(host_of("bus.local:7420"), "bus.local");
    }
}
