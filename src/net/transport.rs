//! The byte pipe under a stream: plain TCP, or TLS over it. Reading waits
//! for readiness without holding a buffer, so an idle connection owns no
//! read buffer at all.

use std::cell::RefCell;
use std::io;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Plain TCP, or TLS (boxed: the TLS state is large and only some streams have it).
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// TLS where we are the client (outgoing s2s streams).
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Transiently, while STARTTLS moves the socket into TLS.
    Upgrading,
}

/// Per-thread scratch space for reads: connections borrow it only between
/// readiness and the end of a synchronous read burst.
const READ_CHUNK: usize = 16 * 1024;
thread_local! {
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_CHUNK].into_boxed_slice());
}

/// Outcome of one non-blocking read.
pub enum ReadOutcome {
    /// Bytes were passed on; more may be available without waiting.
    Data,
    /// Nothing available now: wait for `readable` before reading again.
    Drained,
    /// The peer closed the connection.
    Closed,
}

impl Transport {
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_) | Transport::TlsClient(_))
    }

    fn tcp(&self) -> io::Result<&TcpStream> {
        match self {
            Transport::Plain(s) => Ok(s),
            Transport::Tls(s) => Ok(s.get_ref().0),
            Transport::TlsClient(s) => Ok(s.get_ref().0),
            Transport::Upgrading => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// The address of the other end.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp().ok().and_then(|t| t.peer_addr().ok())
    }

    /// The TLS session, when there is one.
    pub fn tls_session(&self) -> Option<&rustls::ServerConnection> {
        match self {
            Transport::Tls(s) => Some(s.get_ref().1),
            _ => None,
        }
    }

    /// The TLS session of an outgoing stream, when there is one.
    pub fn tls_client_session(&self) -> Option<&rustls::ClientConnection> {
        match self {
            Transport::TlsClient(s) => Some(s.get_ref().1),
            _ => None,
        }
    }

    /// Waits until the socket is readable, holding no buffer while waiting.
    pub async fn readable(&self) -> io::Result<()> {
        self.tcp()?.readable().await
    }

    /// Reads at most one chunk that is available right now, handing it to
    /// `sink`, without waiting. One chunk at a time lets the caller parse
    /// (and enforce the stanza size limit) before reading more.
    pub fn read_some(&mut self, sink: impl FnOnce(&[u8])) -> io::Result<ReadOutcome> {
        READ_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            let r = match self {
                Transport::Plain(s) => match s.try_read(&mut buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                    other => Some(other),
                },
                // Polling once with a no-op waker: tokio-rustls reads the
                // socket and decrypts; Pending means both the socket and
                // rustls' plaintext are drained (and socket readiness was
                // cleared, so `readable` waits again).
                Transport::Tls(s) => s.read(&mut buf).now_or_never(),
                Transport::TlsClient(s) => s.read(&mut buf).now_or_never(),
                Transport::Upgrading => return Err(io::ErrorKind::NotConnected.into()),
            };
            match r {
                None => Ok(ReadOutcome::Drained),
                Some(Ok(0)) => Ok(ReadOutcome::Closed),
                Some(Ok(n)) => {
                    sink(&buf[..n]);
                    Ok(ReadOutcome::Data)
                }
                Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadOutcome::Drained),
                Some(Err(e)) => Err(e),
            }
        })
    }

    /// Writes all of `data` and flushes it to the socket.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.write_all(data).await,
            Transport::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Transport::TlsClient(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Transport::Upgrading => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// Flushes TLS records rustls produced on its own (session tickets,
    /// alerts, key updates).
    pub async fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Tls(s) => s.flush().await,
            Transport::TlsClient(s) => s.flush().await,
            _ => Ok(()),
        }
    }

    /// Runs the TLS handshake over the plain socket (STARTTLS), or over a
    /// fresh connection (direct TLS).
    pub async fn upgrade(&mut self, config: Arc<rustls::ServerConfig>) -> io::Result<()> {
        let Transport::Plain(tcp) = std::mem::replace(self, Transport::Upgrading) else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        let tls = super::handshakes::accept(config, tcp).await?;
        *self = Transport::Tls(Box::new(tls));
        Ok(())
    }

    /// Runs the client side of a TLS handshake over the plain socket
    /// (STARTTLS on an outgoing s2s stream), naming `server_name`.
    pub async fn upgrade_client(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        server_name: rustls_pki_types::ServerName<'static>,
    ) -> io::Result<()> {
        let Transport::Plain(tcp) = std::mem::replace(self, Transport::Upgrading) else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await?;
        *self = Transport::TlsClient(Box::new(tls));
        Ok(())
    }

    /// Sends TLS close_notify (if any) and shuts the socket down.
    pub async fn shutdown(&mut self) {
        let _ = match self {
            Transport::Plain(s) => s.shutdown().await,
            Transport::Tls(s) => s.shutdown().await,
            Transport::TlsClient(s) => s.shutdown().await,
            Transport::Upgrading => Ok(()),
        };
    }
}
