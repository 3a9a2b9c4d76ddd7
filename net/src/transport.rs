//! The network seam. Servers are built with [`server_builder`] and served on
//! any incoming stream (tokio's `TcpListenerStream` in the binary, turmoil's
//! in the simulator); clients get channels from a [`Dialer`].

use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Server};

use crate::error::ClientError;

/// HTTP/2 flow-control windows: large enough that one stream can keep a
/// loopback or LAN link busy.
pub const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
pub const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
/// HTTP/2's default 16 KiB frames cost more than its windows; 1 MiB frames
/// carry a whole piece in one frame.
pub const FRAME_SIZE_MAX_BYTES: u32 = 1024 * 1024;

/// Every network wait is bounded, so a dead or partitioned peer is an error,
/// never a hang.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// Establishing a connection.
    pub connect: Duration,
    /// A whole unary call, or a whole chunk upload.
    pub request: Duration,
    /// The gap between two messages of a stream.
    pub piece: Duration,
    /// HTTP/2 keepalive: a peer that does not answer a ping this fast is gone.
    pub keepalive: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            request: Duration::from_secs(30),
            piece: Duration::from_secs(20),
            keepalive: Duration::from_secs(10),
        }
    }
}

/// Turns an address into a gRPC channel. Channels connect lazily, so
/// dialing never blocks; the first call on the channel connects.
pub trait Dialer: Clone + Send + Sync + 'static {
    fn channel(&self, addr: &str) -> Result<Channel, ClientError>;
    fn timeouts(&self) -> &Timeouts;
}

/// Dials real TCP.
#[derive(Debug, Clone, Default)]
pub struct TcpDialer {
    pub timeouts: Timeouts,
}

impl Dialer for TcpDialer {
    fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        Ok(endpoint(addr, &self.timeouts)?.connect_lazy())
    }

    fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }
}

/// `host:port` or `http://host:port` to a URL.
pub fn to_url(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// An endpoint with this project's windows, frame size, timeouts and keepalive.
pub fn endpoint(addr: &str, t: &Timeouts) -> Result<Endpoint, ClientError> {
    let ep = Endpoint::from_shared(to_url(addr)).map_err(|e| ClientError::Addr {
        addr: addr.to_string(),
        msg: e.to_string(),
    })?;
    Ok(ep
        .connect_timeout(t.connect)
        .timeout(t.request)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(t.keepalive)
        .keep_alive_timeout(t.keepalive)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(FRAME_SIZE_MAX_BYTES))
}

/// A server with the same windows and frame size as the clients.
pub fn server_builder(t: &Timeouts) -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(FRAME_SIZE_MAX_BYTES)
        .http2_keepalive_interval(Some(t.keepalive))
        .http2_keepalive_timeout(Some(t.keepalive))
}

/// Channels by address, created once and reused: a channel multiplexes
/// every call to its peer over one HTTP/2 connection.
pub struct Peers<D: Dialer> {
    dialer: D,
    channels: std::sync::Mutex<std::collections::BTreeMap<String, Channel>>,
}

impl<D: Dialer> Peers<D> {
    pub fn new(dialer: D) -> Self {
        Self {
            dialer,
            channels: Default::default(),
        }
    }

    pub fn timeouts(&self) -> &Timeouts {
        self.dialer.timeouts()
    }

    pub fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut map = self.channels.lock().expect("channel cache lock");
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let c = self.dialer.channel(addr)?;
        map.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// A tracker client with bounded message sizes.
    pub fn tracker(
        &self,
        addr: &str,
    ) -> Result<p2p_proto::tracker_client::TrackerClient<Channel>, ClientError> {
        let limit = p2p_core::limits::TRACKER_MESSAGE_SIZE_MAX_BYTES;
        Ok(
            p2p_proto::tracker_client::TrackerClient::new(self.channel(addr)?)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
    }

    /// A node client with bounded message sizes.
    pub fn node(
        &self,
        addr: &str,
    ) -> Result<p2p_proto::node_client::NodeClient<Channel>, ClientError> {
        let limit = p2p_core::limits::MESSAGE_SIZE_MAX_BYTES;
        Ok(p2p_proto::node_client::NodeClient::new(self.channel(addr)?)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit))
    }
}
