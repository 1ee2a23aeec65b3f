//! TLS from the collector to PostgreSQL: the one place that decides how a connection is
//! made, for the loaders, `status` and `reload` alike.
//!
//! * `sslmode=require` in the URL: TLS through rustls (the `ring` provider, as the ingest
//!   side). The server's certificate must chain to a CA from `warehouse.ca_file`, or, without
//!   it, from the system trust store, and must name the host the URL connects to — what
//!   libpq calls `verify-full`. (libpq's own `require` does not verify anything unless a
//!   root certificate is configured; an unverified channel would stop a passive listener
//!   but not a machine in the middle, so this collector never offers that.)
//! * `sslmode=disable`, or `prefer` (the default): plain TCP, and no TLS attempt at all.
//!   `prefer` is *not* upgraded to verified TLS: Debian's packaged PostgreSQL has `ssl = on`
//!   with a self-signed "snakeoil" certificate, so "verify whenever the server offers TLS"
//!   would break every default installation; and "TLS without verification" protects
//!   nothing against an active attacker while looking as if it did.
//!
//! The trust store is the operating system's (`rustls-native-certs`: on Debian
//! `/etc/ssl/certs`, managed by `ca-certificates` and `update-ca-certificates`), not a
//! bundle compiled into the binary: a database's certificate is usually issued by a private
//! or cloud provider's CA that operators add to the system store, and the system store
//! follows security updates without a new collector build.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

/// A verifying TLS connector for `sslmode=require`, and where its trusted CAs came from.
#[derive(Clone)]
pub struct PgTls {
    connector: MakeRustlsConnect,
    /// `warehouse.ca_file` or the system trust store, for messages.
    roots: Arc<str>,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgTls(CAs from {})", self.roots)
    }
}

impl PgTls {
    /// Trusts the CA certificates in the PEM file `ca_file`, or, with `None`, those of the
    /// system trust store.
    ///
    /// # Errors
    /// A message naming the file (or the system store) when it cannot be read or holds no
    /// usable CA certificate.
    pub fn new(ca_file: Option<&Path>) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        let source = match ca_file {
            Some(file) => {
                let certs = CertificateDer::pem_file_iter(file)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| {
                        format!("warehouse.ca_file: cannot read {}: {e}", file.display())
                    })?;
                if certs.is_empty() {
                    return Err(format!(
                        "warehouse.ca_file: {} holds no PEM certificate (-----BEGIN \
                         CERTIFICATE-----)",
                        file.display()
                    ));
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        format!(
                            "warehouse.ca_file: a certificate in {} is not a usable CA \
                             certificate: {e}",
                            file.display()
                        )
                    })?;
                }
                file.display().to_string()
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let why: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
                    return Err(format!(
                        "warehouse.url asks for TLS (sslmode=require), and without \
                         warehouse.ca_file the server's certificate is checked against the \
                         system trust store, which holds no CA certificate{}; install \
                         ca-certificates or set warehouse.ca_file to the CA's PEM file",
                        if why.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", why.join("; "))
                        }
                    ));
                }
                "the system trust store".to_owned()
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS protocol versions: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            connector: MakeRustlsConnect::new(config),
            roots: source.into(),
        })
    }
}

/// Connects with `config`: verified TLS when `tls` is given (`sslmode=require`), plain
/// otherwise. The connection's task is spawned on the current runtime and ends with the
/// client.
///
/// # Errors
/// Connecting, the TLS handshake (the message names the certificate problem, the host and
/// where the trusted CAs came from) or logging in failed.
pub async fn connect(
    config: &tokio_postgres::Config,
    tls: Option<&PgTls>,
) -> Result<Client, tokio_postgres::Error> {
    // Two arms, not one connector: only `NoTls` makes tokio-postgres skip TLS on `prefer`.
    match tls {
        None => {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(drive(connection));
            Ok(client)
        }
        Some(tls) => {
            let (client, connection) = config.connect(tls.clone()).await?;
            tokio::spawn(drive(connection));
            Ok(client)
        }
    }
}

/// Runs a connection until its client is dropped or the server goes away.
async fn drive<F: Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(error) = connection.await {
        tracing::debug!(error = %super::pg_error_message(&error), "PostgreSQL connection ended.");
    }
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = Handshake<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect>;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, host: &str) -> Result<Self::TlsConnect, Self::Error> {
        Ok(Handshake {
            inner: MakeTlsConnect::<S>::make_tls_connect(&mut self.connector, host)?,
            host: host.to_owned(),
            roots: self.roots.clone(),
        })
    }
}

/// A handshake whose error says which server and which CAs were involved.
pub struct Handshake<T> {
    inner: T,
    host: String,
    roots: Arc<str>,
}

impl<S, T> TlsConnect<S> for Handshake<T>
where
    T: TlsConnect<S>,
    T::Future: Send + 'static,
{
    type Stream = T::Stream;
    type Error = HandshakeError;
    type Future = Pin<Box<dyn Future<Output = Result<T::Stream, HandshakeError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let Self { inner, host, roots } = self;
        let handshake = inner.connect(stream);
        Box::pin(async move {
            handshake.await.map_err(|e| HandshakeError {
                source: e.into(),
                host,
                roots,
            })
        })
    }
}

/// A failed TLS handshake, e.g. `invalid peer certificate: UnknownIssuer (server db.example,
/// CAs from /etc/tollstream/db-ca.pem)`.
#[derive(Debug, thiserror::Error)]
#[error("{source} (server {host}, CAs from {roots})")]
pub struct HandshakeError {
    source: Box<dyn std::error::Error + Send + Sync>,
    host: String,
    roots: Arc<str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_is_missing_empty_or_not_pem_is_named_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let error = PgTls::new(Some(&missing)).expect_err("missing");
        assert!(
            error.contains("warehouse.ca_file: cannot read") && error.contains("missing.pem"),
            "{error}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let error = PgTls::new(Some(&empty)).expect_err("empty");
        assert!(
            error.contains("empty.pem holds no PEM certificate"),
            "{error}"
        );
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let error = PgTls::new(Some(&garbage)).expect_err("garbage");
        assert!(error.contains("garbage.pem"), "{error}");
    }
}
