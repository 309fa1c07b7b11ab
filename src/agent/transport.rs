//! gRPC channels and listeners, plaintext or mutual TLS (rustls with the ring provider, built by
//! [`crate::pki`]).
//!
//! Peers are dialled by the address they advertise (`host:port`, a stable DNS name in
//! Kubernetes), resolved at connect time, never by a cached IP.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::Stream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::pki;

/// How long a TCP connect plus TLS handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("listening on {address}: {source}")]
    Listen {
        address: String,
        #[source]
        source: io::Error,
    },
}

/// Client-side TLS: the group CA to verify servers and our own certificate.
#[derive(Clone)]
pub struct TlsClientConfig {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for TlsClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsClientConfig")
    }
}

impl TlsClientConfig {
    pub fn from_pem(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Self, TransportError> {
        Ok(Self {
            config: pki::client_config(cert_pem, key_pem, ca_pem)?,
        })
    }

    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, TransportError> {
        let (c, k, a) = read_three(cert, key, ca)?;
        Self::from_pem(&c, &k, &a)
    }

    /// Any rustls client configuration (must offer ALPN `h2`).
    pub fn from_rustls(config: Arc<rustls::ClientConfig>) -> Self {
        Self { config }
    }
}

/// Server-side TLS: our certificate, and the group CA that client certificates must chain to.
#[derive(Clone)]
pub struct TlsServerConfig {
    config: Arc<rustls::ServerConfig>,
}

impl TlsServerConfig {
    pub fn from_pem(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Self, TransportError> {
        Ok(Self {
            config: pki::server_config(cert_pem, key_pem, ca_pem)?,
        })
    }

    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, TransportError> {
        let (c, k, a) = read_three(cert, key, ca)?;
        Self::from_pem(&c, &k, &a)
    }
}

fn read_three(a: &Path, b: &Path, c: &Path) -> Result<(String, String, String), TransportError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| TransportError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    Ok((read(a)?, read(b)?, read(c)?))
}

/// Splits `host:port` (IPv6 as `[::1]:7470`).
pub fn split_host_port(address: &str) -> Result<(String, u16), TransportError> {
    let bad = |reason: &str| TransportError::Address {
        address: address.to_string(),
        reason: reason.to_string(),
    };
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| bad("expected host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad("port is not a number 0-65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    Ok((host.to_string(), port))
}

/// A lazily connecting channel to `address` (`host:port`).
pub fn channel(address: &str, tls: Option<&TlsClientConfig>) -> Result<Channel, TransportError> {
    channel_at(address, None, tls)
}

/// Like [`channel`], but dialing `dial` instead of resolving the host, when given. TLS still
/// verifies the host name of `address`: the operator knows a restarted pod's address from the
/// API server seconds before cluster DNS stops answering with the old one (or with none).
pub fn channel_at(
    address: &str,
    dial: Option<std::net::IpAddr>,
    tls: Option<&TlsClientConfig>,
) -> Result<Channel, TransportError> {
    let (host, port) = split_host_port(address)?;
    let connect_host = dial.map_or_else(|| host.clone(), |ip| ip.to_string());
    let uri_host = if connect_host.contains(':') {
        format!("[{connect_host}]")
    } else {
        connect_host.clone()
    };
    let endpoint = Endpoint::from_shared(format!("http://{uri_host}:{port}"))
        .map_err(|e| TransportError::Address {
            address: address.to_string(),
            reason: e.to_string(),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let Some(tls) = tls else {
        return Ok(endpoint.connect_lazy());
    };
    let server_name = ServerName::try_from(host.clone()).map_err(|e| TransportError::Address {
        address: address.to_string(),
        reason: format!("not a valid TLS server name: {e}"),
    })?;
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let service = tower::service_fn(move |_uri: Uri| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let host = connect_host.clone();
        async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(service))
}

pub type Incoming<IO> = Pin<Box<dyn Stream<Item = Result<IO, io::Error>> + Send>>;

/// Binds `address` for gRPC.
pub async fn bind(address: &str) -> Result<TcpListener, TransportError> {
    let addr: SocketAddr = address.parse().map_err(|e| TransportError::Address {
        address: address.to_string(),
        reason: format!("{e}"),
    })?;
    TcpListener::bind(addr)
        .await
        .map_err(|source| TransportError::Listen {
            address: address.to_string(),
            source,
        })
}

/// Plaintext connections from `listener`.
pub fn plain_incoming(listener: TcpListener) -> Incoming<TcpStream> {
    Box::pin(async_stream(listener, |tcp| async move {
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }))
}

/// TLS connections from `listener`. Handshakes run in their own tasks so a slow or hostile
/// client cannot stall the accept loop; failed handshakes (e.g. no client certificate) are
/// dropped.
pub fn tls_incoming(
    listener: TcpListener,
    tls: &TlsServerConfig,
) -> Incoming<tokio_rustls::server::TlsStream<TcpStream>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    Box::pin(async_stream(listener, move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            tcp.set_nodelay(true)?;
            match tokio::time::timeout(CONNECT_TIMEOUT * 2, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => Ok(s),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                )),
            }
        }
    }))
}

/// Accepts connections and runs `prepare` on each in its own task; yields the prepared ones.
fn async_stream<IO, F, Fut>(
    listener: TcpListener,
    prepare: F,
) -> impl Stream<Item = Result<IO, io::Error>>
where
    IO: Send + 'static,
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = io::Result<IO>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<IO, io::Error>>(64);
    let prepare = Arc::new(prepare);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a gRPC connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if tx.is_closed() {
                        return;
                    }
                    continue;
                }
            };
            let conn_tx = tx.clone();
            let prepare = prepare.clone();
            tokio::spawn(async move {
                match prepare(tcp).await {
                    Ok(io) => {
                        let _ = conn_tx.send(Ok(io)).await;
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "rejected a gRPC connection"),
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_parsing() {
        assert!(matches!(split_host_port("a.b.svc:7470"), Ok((h, 7470)) if h == "a.b.svc"));
        assert!(matches!(split_host_port("[::1]:1"), Ok((h, 1)) if h == "::1"));
        assert!(split_host_port("nohost").is_err());
        assert!(split_host_port(":80").is_err());
        assert!(split_host_port("h:99999").is_err());
    }
}
