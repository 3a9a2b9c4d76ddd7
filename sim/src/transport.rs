//! The network seam filled with turmoil's simulated TCP: the real tonic
//! services serve accepted turmoil streams, and clients dial through a
//! connector that opens turmoil streams.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use p2p_net::ClientError;
use p2p_net::transport::{Dialer, Timeouts, endpoint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::Channel;
use tonic::transport::server::{Connected, TcpConnectInfo};
use turmoil::net::{TcpListener, TcpStream};

/// Dials turmoil TCP by host name (`node3:7000`).
#[derive(Debug, Clone)]
pub struct SimDialer {
    pub timeouts: Timeouts,
}

impl Dialer for SimDialer {
    fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let connector = tower::service_fn(|uri: tonic::transport::Uri| async move {
            let authority = uri
                .authority()
                .ok_or_else(|| std::io::Error::other("address without host"))?
                .to_string();
            let stream = TcpStream::connect(authority).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        });
        Ok(endpoint(addr, &self.timeouts)?.connect_with_connector_lazy(connector))
    }

    fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    fn timeouts_mut(&mut self) -> &mut Timeouts {
        &mut self.timeouts
    }
}

/// An accepted turmoil stream, as tonic's server wants it.
pub struct Accepted(TcpStream);

impl Connected for Accepted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        TcpConnectInfo {
            local_addr: self.0.local_addr().ok(),
            remote_addr: self.0.peer_addr().ok(),
        }
    }
}

impl AsyncRead for Accepted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepted connections of `listener`, forever.
pub fn incoming(listener: TcpListener) -> impl futures::Stream<Item = std::io::Result<Accepted>> {
    futures::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| Accepted(s));
        Some((r, l))
    })
}
