//! The network seam. Servers are built with [`server_builder`] and served on
//! any incoming stream (tokio's `TcpListenerStream` in the binary, turmoil's
//! in the simulator); clients get channels from a [`Dialer`].

use std::sync::Arc;
use std::time::Duration;

use p2p_core::limits::{
    CONNECTIONS_MAX, CONNECTIONS_PER_PEER_MAX, FILES_RESERVED, STREAMS_PER_CONNECTION_MAX,
};
use tonic::transport::{Channel, Endpoint, Server};

use crate::error::ClientError;

/// HTTP/2 flow-control windows of servers (what an upload may send ahead):
/// large enough that one stream can keep a loopback or LAN link busy.
pub const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
pub const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
/// Windows of clients (what a node may send ahead of a download's reads):
/// smaller, because a get reads from many streams at once and every byte
/// sent ahead is held in the client's memory.
pub const CLIENT_STREAM_WINDOW_BYTES: u32 = 1024 * 1024;
pub const CLIENT_CONNECTION_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
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
    /// The timeouts channels dialled from now on get.
    fn timeouts_mut(&mut self) -> &mut Timeouts;
}

/// Dials real TCP; with `tls`, mutual TLS (`https://`).
#[derive(Debug, Clone, Default)]
pub struct TcpDialer {
    pub timeouts: Timeouts,
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Dialer for TcpDialer {
    fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let Some(tls) = &self.tls else {
            return Ok(endpoint(addr, &self.timeouts)?.connect_lazy());
        };
        let ep = endpoint(&format!("https://{}", strip_scheme(addr)), &self.timeouts)?
            .tls_config(tls.clone())
            .map_err(|e| ClientError::Addr {
                addr: addr.to_string(),
                msg: e.to_string(),
            })?;
        Ok(ep.connect_lazy())
    }

    fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    fn timeouts_mut(&mut self) -> &mut Timeouts {
        &mut self.timeouts
    }
}

/// `host:port` whatever scheme `addr` was given with.
pub fn strip_scheme(addr: &str) -> &str {
    addr.trim_start_matches("https://")
        .trim_start_matches("http://")
}

/// The host of `addr` (`host:port`, any scheme; IPv6 without brackets).
pub fn host_of(addr: &str) -> &str {
    let addr = strip_scheme(addr);
    match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
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
        .initial_stream_window_size(CLIENT_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CLIENT_CONNECTION_WINDOW_BYTES)
        .max_frame_size(FRAME_SIZE_MAX_BYTES))
}

/// Connections accepted on `listener`, with Nagle's algorithm off, at
/// most [`connections_max`] at once (the rest wait in the listen backlog)
/// and [`CONNECTIONS_PER_PEER_MAX`] from one IP address (more are closed
/// at once). `Server::tcp_nodelay` only reaches sockets tonic binds
/// itself; on these, a response's last small write (gRPC's trailers)
/// waited for the peer's delayed ACK, about 40 ms on Linux, on every call
/// with a body.
pub fn tcp_incoming(
    listener: tokio::net::TcpListener,
) -> std::pin::Pin<Box<dyn tokio_stream::Stream<Item = std::io::Result<Counted>> + Send>> {
    let slots = Arc::new(tokio::sync::Semaphore::new(connections_max()));
    let peers = PerPeer::new(CONNECTIONS_PER_PEER_MAX);
    Box::pin(futures::stream::unfold(
        (listener, slots, peers),
        |(listener, slots, peers)| async move {
            loop {
                let permit = slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let (stream, from) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors, say: do not spin on it.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        return Some((Err(e), (listener, slots, peers)));
                    }
                };
                let Some(peer) = peers.take(&from.ip().to_string()) else {
                    tracing::debug!(peer = %from, "too many connections from this address; closed");
                    continue;
                };
                let r = stream.set_nodelay(true).map(|()| Counted {
                    inner: stream,
                    _slot: permit,
                    _peer: peer,
                });
                return Some((r, (listener, slots, peers)));
            }
        },
    ))
}

/// How many connections a server takes at once: [`CONNECTIONS_MAX`], or
/// fewer if the open-file limit (raised to its hard limit first) leaves
/// less than that beside [`FILES_RESERVED`].
pub fn connections_max() -> usize {
    // SAFETY: plain FFI calls with a valid pointer to a local.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return CONNECTIONS_MAX;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    let files = usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX);
    CONNECTIONS_MAX
        .min(files.saturating_sub(FILES_RESERVED))
        .max(16)
}

/// An accepted connection; its slot in the server's and its peer's
/// counts is freed when it closes.
pub struct Counted {
    inner: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
    _peer: PeerSlot,
}

impl tonic::transport::server::Connected for Counted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts of things in progress per peer (an IP address, or a
/// certificate's identity), each capped. Clones share the counts.
#[derive(Clone)]
pub struct PerPeer {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    max: usize,
}

impl PerPeer {
    pub fn new(max: usize) -> Self {
        Self {
            counts: Default::default(),
            max,
        }
    }

    /// A slot for `peer`, held until dropped, unless it has `max` already.
    pub fn take(&self, peer: &str) -> Option<PeerSlot> {
        let mut counts = self.counts.lock().expect("per-peer lock");
        let n = counts.entry(peer.to_string()).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: self.counts.clone(),
            peer: peer.to_string(),
        })
    }

    /// Peers with something in progress.
    pub fn peers(&self) -> usize {
        self.counts.lock().expect("per-peer lock").len()
    }
}

/// One thing in progress for a peer (see [`PerPeer::take`]).
pub struct PeerSlot {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    peer: String,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("per-peer lock");
        if let Some(n) = counts.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

/// A server with the same windows and frame size as the clients.
pub fn server_builder(t: &Timeouts) -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(STREAMS_PER_CONNECTION_MAX)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(FRAME_SIZE_MAX_BYTES)
        .http2_keepalive_interval(Some(t.keepalive))
        .http2_keepalive_timeout(Some(t.keepalive))
}

/// Cached channels by address, each with the number it was dialled as.
#[derive(Default)]
struct ChannelCache {
    dialled: std::sync::atomic::AtomicU64,
    map: std::sync::Mutex<std::collections::BTreeMap<String, (u64, Channel)>>,
}

/// What a call that ran out of time forgets: channel number `id` to `addr`.
#[derive(Debug, Clone)]
struct Forget {
    cache: std::sync::Weak<ChannelCache>,
    addr: String,
    id: u64,
}

impl Forget {
    /// Drop the cached channel, if it is still the one this call used: the
    /// next call dials afresh. A connection whose segments are lost (a
    /// black hole, a peer gone without a word) otherwise keeps taking calls
    /// until keepalive gives up on it, which takes longer than a tracker
    /// waits for a heartbeat.
    fn now(&self) {
        if let Some(cache) = self.cache.upgrade() {
            let mut map = cache.map.lock().expect("channel cache lock");
            if map.get(&self.addr).is_some_and(|(id, _)| *id == self.id) {
                map.remove(&self.addr);
            }
        }
    }
}

/// Channels by address, created once and reused until a call on one times
/// out or fails in the transport: a channel multiplexes every call to its
/// peer over one HTTP/2 connection.
pub struct Peers<D: Dialer> {
    dialer: D,
    channels: Arc<ChannelCache>,
    /// For each tracker group (`a,b,c`), the member calls go to now.
    leaders: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

/// The trackers a `--tracker` value names: one address, or a group's
/// addresses separated by commas.
pub fn tracker_members(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

impl<D: Dialer> Peers<D> {
    pub fn new(dialer: D) -> Self {
        Self {
            dialer,
            channels: Default::default(),
            leaders: Default::default(),
        }
    }

    /// The tracker of `list` that calls go to now: the leader last
    /// learned, else the first.
    pub fn tracker_target(&self, list: &str) -> String {
        if let Some(l) = self.leaders.lock().expect("leaders lock").get(list) {
            return l.clone();
        }
        tracker_members(list)
            .into_iter()
            .next()
            .unwrap_or_else(|| list.to_string())
    }

    /// A call to the tracker of `list` failed with `s`: follow a redirect
    /// to the leader it names, or, if the tracker could not be reached or
    /// knows no leader, try the next member next time.
    pub fn tracker_failed(&self, list: &str, s: &tonic::Status) {
        let members = tracker_members(list);
        if members.len() < 2 {
            return;
        }
        let now = self.tracker_target(list);
        let next = match crate::signals::redirected_to(s) {
            Some(Some(leader)) => leader,
            Some(None) => next_member(&members, &now),
            None if s.code() == tonic::Code::Unavailable
                || s.code() == tonic::Code::DeadlineExceeded
                || s.code() == tonic::Code::Unknown =>
            {
                next_member(&members, &now)
            }
            None => return,
        };
        self.leaders
            .lock()
            .expect("leaders lock")
            .insert(list.to_string(), next);
    }

    pub fn timeouts(&self) -> &Timeouts {
        self.dialer.timeouts()
    }

    pub fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        Ok(self.numbered_channel(addr)?.1)
    }

    /// Drop the cached channel to `addr`: the next call dials afresh.
    pub fn forget(&self, addr: &str) {
        self.channels
            .map
            .lock()
            .expect("channel cache lock")
            .remove(addr);
    }

    fn numbered_channel(&self, addr: &str) -> Result<(u64, Channel), ClientError> {
        let mut map = self.channels.map.lock().expect("channel cache lock");
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let id = self
            .channels
            .dialled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let c = (id, self.dialer.channel(addr)?);
        map.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    fn deadline_channel(&self, addr: &str) -> Result<DeadlineChannel, ClientError> {
        let (id, inner) = self.numbered_channel(addr)?;
        Ok(DeadlineChannel {
            inner,
            limit: self.timeouts().request,
            forget: Forget {
                cache: Arc::downgrade(&self.channels),
                addr: addr.to_string(),
                id,
            },
        })
    }

    /// A client of the tracker `list` names (the one calls go to now: see
    /// [`Peers::tracker_target`]), with bounded message sizes and a
    /// deadline on every call.
    pub fn tracker(&self, list: &str) -> Result<TrackerRpc, ClientError> {
        let limit = p2p_core::limits::TRACKER_MESSAGE_SIZE_MAX_BYTES;
        let addr = self.tracker_target(list);
        Ok(TrackerRpc::new(self.deadline_channel(&addr)?)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit))
    }

    /// A node client with bounded message sizes and a deadline on every call.
    pub fn node(&self, addr: &str) -> Result<NodeRpc, ClientError> {
        let limit = p2p_core::limits::MESSAGE_SIZE_MAX_BYTES;
        Ok(NodeRpc::new(self.deadline_channel(addr)?)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit))
    }
}

/// The member after `now` in `members`, round.
fn next_member(members: &[String], now: &str) -> String {
    let i = members.iter().position(|m| m == now).map_or(0, |i| i + 1);
    members[i % members.len()].clone()
}

/// A tracker client as every part of the system uses it.
pub type TrackerRpc = p2p_proto::tracker_client::TrackerClient<DeadlineChannel>;
/// A node client as every part of the system uses it.
pub type NodeRpc = p2p_proto::node_client::NodeClient<DeadlineChannel>;

/// A channel whose every call gets an answer (its response headers) within
/// `limit` or fails with `DeadlineExceeded`.
///
/// tonic's own `Endpoint::timeout` starts counting only once the connection
/// is ready to take the call, so a call queued behind a stalled connection
/// (a lost segment, a black-holed peer) could wait forever. The simulator
/// found that hang; this deadline covers the whole wait.
#[derive(Debug, Clone)]
pub struct DeadlineChannel {
    inner: Channel,
    limit: Duration,
    forget: Forget,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for DeadlineChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let fut = self.inner.call(req);
        let limit = self.limit;
        let forget = self.forget.clone();
        Box::pin(async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(Ok(r)) => Ok(r),
                // The transport failed (an answer, even an error status,
                // is `Ok`): the connection timed out, broke or never opened.
                Ok(Err(e)) => {
                    forget.now();
                    Err(e.into())
                }
                Err(_) => {
                    forget.now();
                    Err(Box::new(tonic::Status::deadline_exceeded(format!(
                        "no answer within {limit:?}"
                    ))) as BoxError)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_peer_slots_cap_each_peer_and_free_on_drop() {
        let p = PerPeer::new(2);
        let a1 = p.take("a").unwrap();
        let _a2 = p.take("a").unwrap();
        assert!(p.take("a").is_none());
        // Another peer has its own share.
        let b = p.take("b").unwrap();
        drop(a1);
        assert!(p.take("a").is_some());
        drop(b);
        assert_eq!(p.peers(), 1);
    }
}
