//! Every HTTP listener of the node (API, ingress, published ports) is served by
//! [`serve`], which bounds what one client can hold:
//!
//! - a connection cap per listener and one per client address (over the client's cap,
//!   new connections are closed at once); at the listener's cap a new connection takes
//!   the place of one that is not serving a request (waiting for its first byte, its
//!   head, or its next request), of the address that holds the most ([`Open`]), so
//!   connections that only hold a place cannot lock anyone out; a share of the API
//!   listener's cap is kept for the cluster's peers ([`Peers`]);
//! - first byte: a new connection must send its first byte (a request's or a TLS
//!   handshake's) within `header_timeout`, as a request's head must arrive within
//!   `header_timeout` of its first byte;
//! - idle keep-alive: a connection with no request in flight closes after `idle_timeout`;
//! - write progress: a response write that makes no progress for `write_timeout` ends
//!   the connection, which drops the response body and with it whatever it held (an
//!   app's concurrency permit, a file);
//! - request body progress is bounded where bodies are read ([`skiff_runtime::ProgressBody`]
//!   in the API and the Linux proxy; a Wasm app's own timeout covers its reads).
//!
//! The read deadlines live in the connection's I/O (hyper 1's own header timeout also
//! counts idle time, so it cannot tell the two apart); the service marks when a request
//! is in flight, during which no read deadline applies (hyper reads only to notice a
//! hang-up then, and the request's own bounds apply).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use skiff_runtime::{BoxError, Guarded};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Bounds on one listener's connections. Every field has a flag on `skiff up`.
#[derive(Clone, Copy, Debug)]
pub struct ListenerLimits {
    /// A request head must be complete this long after its first byte. Default 10 s.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request closes after this long. Default 60 s.
    pub idle_timeout: Duration,
    /// A request body (API uploads, requests to Linux apps) that sends nothing for
    /// this long fails. Default 30 s.
    pub body_timeout: Duration,
    /// A response write that makes no progress for this long drops the client. Default 30 s.
    pub write_timeout: Duration,
    /// Open connections per listener; more are closed at once. Default 1024.
    pub max_connections: usize,
    /// Open connections per client address (TCP); more are closed at once. Default 128.
    pub max_connections_per_client: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_connections_per_client: 128,
        }
    }
}

/// Connections of the API listener kept for the cluster's peers: clients from other
/// addresses may hold at most the cap less this many.
const RESERVED_FOR_PEERS: usize = 64;

/// How long a new connection at the cap waits for the one it displaced to end.
const EVICTION_WAIT: Duration = Duration::from_millis(500);

/// The addresses of the cluster's live peers (from gossip), which may use the share of
/// the API listener's connections that other clients may not.
#[derive(Default)]
pub(crate) struct Peers(std::sync::RwLock<std::collections::HashSet<std::net::IpAddr>>);

impl Peers {
    /// Replaces the set.
    pub(crate) fn set(&self, ips: std::collections::HashSet<std::net::IpAddr>) {
        let mut held = self.0.write().unwrap_or_else(|e| e.into_inner());
        if *held != ips {
            *held = ips;
        }
    }

    fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&ip)
    }
}

/// What a request knows of the connection it came on (a request extension).
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    /// The client's address (loopback for a unix socket).
    pub(crate) remote: SocketAddr,
    /// How it came.
    pub(crate) kind: ConnKind,
    /// The certificate a TLS client showed, verified against the cluster CA.
    pub(crate) peer_cert: Option<Arc<tokio_rustls::rustls::pki_types::CertificateDer<'static>>>,
}

/// How a connection came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnKind {
    /// Plain TCP.
    Plain,
    /// TCP with TLS.
    Tls,
    /// A unix socket (only who can open the file gets here).
    Unix,
}

/// A listener's open connections, so that one that is not serving a request can make
/// room for a new one at the cap.
#[derive(Default)]
struct Open {
    conns: Mutex<std::collections::HashMap<u64, OpenConn>>,
    /// Signalled whenever a connection ends (its slot is back).
    freed: tokio::sync::Notify,
}

struct OpenConn {
    ip: std::net::IpAddr,
    phase: SharedPhase,
    /// Ends the connection at once.
    evict: CancellationToken,
}

impl Open {
    fn insert(&self, id: u64, conn: OpenConn) {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, conn);
    }

    fn remove(&self, id: u64) {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.freed.notify_waiters();
    }

    /// Ends one connection that serves no request, of the address that holds the most
    /// (its oldest); whether there was one.
    fn evict_one(&self) -> bool {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let mut per_ip: std::collections::HashMap<std::net::IpAddr, usize> =
            std::collections::HashMap::new();
        for c in conns.values() {
            *per_ip.entry(c.ip).or_default() += 1;
        }
        let waiting = |c: &OpenConn| {
            !c.evict.is_cancelled()
                && !matches!(
                    c.phase.lock().unwrap_or_else(|e| e.into_inner()).phase,
                    Phase::Busy
                )
        };
        let victim = conns
            .iter()
            .filter(|(_, c)| waiting(c))
            .max_by_key(|(id, c)| (per_ip[&c.ip], std::cmp::Reverse(**id)));
        match victim {
            Some((_, c)) => {
                c.evict.cancel();
                true
            }
            None => false,
        }
    }

    /// Waits (at most `limit`) until `slots` has `need` free.
    async fn room(&self, slots: &Semaphore, need: usize, limit: Duration) -> bool {
        tokio::time::timeout(limit, async {
            loop {
                let freed = self.freed.notified();
                if slots.available_permits() >= need {
                    return;
                }
                freed.await;
            }
        })
        .await
        .is_ok()
    }
}

/// Open connections per client address, and the slot one holds.
#[derive(Default)]
struct PerClient(Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// A client's connection slot, given back on drop.
struct ClientSlot(Arc<PerClient>, std::net::IpAddr);

impl PerClient {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<ClientSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot(self.clone(), ip))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// What a connection is doing, for its read deadline.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Just accepted: its first byte is due within the header timeout.
    New(Instant),
    /// No request; waiting since then for the next one.
    Idle(Instant),
    /// The first bytes of a request head arrived then.
    Head(Instant),
    /// A request is being served.
    Busy,
}

/// The phase, and the reader to wake when a request ends (a read that was pending while
/// the request was busy has no deadline armed yet).
struct PhaseState {
    phase: Phase,
    reader: Option<Waker>,
}

type SharedPhase = Arc<Mutex<PhaseState>>;

fn set(phase: &SharedPhase, to: Phase) {
    let mut state = phase.lock().unwrap_or_else(|e| e.into_inner());
    state.phase = to;
    if let Some(reader) = state.reader.take() {
        reader.wake();
    }
}

/// What a listener accepts on: TCP, or a unix socket (the Docker API's `docker.sock`).
pub(crate) enum Listening {
    Tcp(TcpListener),
    Unix(UnixListener),
    /// TCP where a connection that opens with a TLS handshake is served over TLS; the
    /// cluster's peers have connections kept for them.
    TcpOrTls(TcpListener, tokio_rustls::TlsAcceptor, Arc<Peers>),
}

impl From<TcpListener> for Listening {
    fn from(l: TcpListener) -> Self {
        Self::Tcp(l)
    }
}

/// The address a unix socket's connections are given (they have none of their own).
const UNIX_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    0,
));

impl Listening {
    async fn accept(&self) -> io::Result<(Conn, SocketAddr)> {
        match self {
            Self::Tcp(l) | Self::TcpOrTls(l, _, _) => {
                let (s, remote) = l.accept().await?;
                // Small responses should not wait for Nagle.
                let _ = s.set_nodelay(true);
                Ok((Conn::Tcp(s), remote))
            }
            Self::Unix(l) => Ok((Conn::Unix(l.accept().await?.0), UNIX_ADDR)),
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Self::Tcp(l) | Self::TcpOrTls(l, _, _) => l.local_addr(),
            Self::Unix(_) => Ok(UNIX_ADDR),
        }
    }

    fn tls(&self) -> Option<tokio_rustls::TlsAcceptor> {
        match self {
            Self::TcpOrTls(_, tls, _) => Some(tls.clone()),
            _ => None,
        }
    }

    fn peers(&self) -> Option<&Arc<Peers>> {
        match self {
            Self::TcpOrTls(_, _, peers) => Some(peers),
            _ => None,
        }
    }

    fn is_unix(&self) -> bool {
        matches!(self, Self::Unix(_))
    }
}

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

impl Conn {
    /// Whether the client opens with a TLS handshake (waits for its first byte).
    async fn opens_with_tls(&self) -> io::Result<bool> {
        let mut first = [0u8; 1];
        match self {
            Conn::Tcp(s) => Ok(s.peek(&mut first).await? == 1 && first[0] == TLS_HANDSHAKE),
            Conn::Unix(_) => Ok(false),
        }
    }
}

/// An accepted connection of either kind.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

macro_rules! both {
    ($self:expr, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Conn::Tcp($s) => $e,
            Conn::Unix($s) => $e,
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        both!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        both!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        both!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.is_write_vectored(),
            Conn::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        both!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        both!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// Accepts connections until `shutdown`, serving each with `handler` within `limits`,
/// then lets in-flight requests finish (up to `drain`) before returning.
pub(crate) async fn serve<H, F, B>(
    listener: impl Into<Listening>,
    limits: ListenerLimits,
    shutdown: CancellationToken,
    drain: Duration,
    what: &'static str,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let listener = listener.into();
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            warn!(listener = what, error = %e, "listener has no address");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_client = Arc::new(PerClient::default());
    let open = Arc::new(Open::default());
    let mut next_id = 0u64;
    let reserved = match listener.peers() {
        Some(_) => RESERVED_FOR_PEERS.min(limits.max_connections / 2),
        None => 0,
    };
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let peer = listener.peers().is_some_and(|p| p.contains(remote.ip()));
        // A client may take the last `reserved` places only from a peer's address.
        let need = if peer { 1 } else { reserved + 1 };
        if slots.available_permits() < need
            && !(open.evict_one() && open.room(&slots, need, EVICTION_WAIT).await)
        {
            debug!(listener = what, %remote, max = limits.max_connections, "connection refused: listener at its connection cap, every connection serving a request");
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(listener = what, %remote, max = limits.max_connections, "connection refused: listener at its connection cap");
            continue;
        };
        // A unix socket's clients have no address of their own (and only who can open
        // the file gets in).
        let client_slot = if listener.is_unix() {
            None
        } else {
            match per_client.take(remote.ip(), limits.max_connections_per_client) {
                Some(s) => Some(s),
                None => {
                    debug!(listener = what, %remote, max = limits.max_connections_per_client, "connection refused: client at its connection cap");
                    continue;
                }
            }
        };
        let phase: SharedPhase = Arc::new(Mutex::new(PhaseState {
            phase: Phase::New(Instant::now()),
            reader: None,
        }));
        let id = next_id;
        next_id += 1;
        let evict = CancellationToken::new();
        open.insert(
            id,
            OpenConn {
                ip: remote.ip(),
                phase: phase.clone(),
                evict: evict.clone(),
            },
        );
        let open = open.clone();
        let handler = handler.clone();
        let service_phase = phase.clone();
        let service = move |conn: ConnInfo| {
            let phase = service_phase.clone();
            hyper::service::service_fn(move |mut req: Request<Incoming>| {
                set(&phase, Phase::Busy);
                req.extensions_mut().insert(conn.clone());
                let response = handler(req, remote, local);
                let phase = phase.clone();
                async move {
                    let response = response.await;
                    Ok::<_, std::convert::Infallible>(
                        response.map(|inner| Guarded::new(inner, IdleOnDrop(phase))),
                    )
                }
            })
        };
        let stop = shutdown.clone();
        let tls = listener.tls();
        let unix = listener.is_unix();
        tokio::spawn(async move {
            let tls = match tls {
                // A client that never sends its first byte is as slow as one that
                // trickles its head.
                Some(tls) => {
                    let first =
                        tokio::time::timeout(limits.header_timeout, stream.opens_with_tls());
                    let first = tokio::select! {
                        first = first => first,
                        () = stop.cancelled() => Ok(Err(io::ErrorKind::Interrupted.into())),
                        () = evict.cancelled() => Ok(Err(io::ErrorKind::Interrupted.into())),
                    };
                    match first {
                        Ok(Ok(true)) => Some(tls),
                        Ok(Ok(false)) => None,
                        _ => {
                            open.remove(id);
                            return;
                        }
                    }
                }
                None => None,
            };
            let io = Deadlines::new(stream, phase, limits);
            let ended = match tls {
                Some(tls) => {
                    let handshake = tokio::time::timeout(limits.header_timeout, tls.accept(io));
                    let handshake = tokio::select! {
                        h = handshake => h,
                        () = evict.cancelled() => Ok(Err(io::ErrorKind::Interrupted.into())),
                    };
                    match handshake {
                        Ok(Ok(io)) => {
                            let peer_cert = io
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| Arc::new(c.clone().into_owned()));
                            let conn = ConnInfo {
                                remote,
                                kind: ConnKind::Tls,
                                peer_cert,
                            };
                            serve_http(io, service(conn), stop, evict).await
                        }
                        Ok(Err(e)) => Err(e.into()),
                        Err(_) => Err("the TLS handshake timed out".into()),
                    }
                }
                None => {
                    let conn = ConnInfo {
                        remote,
                        kind: if unix {
                            ConnKind::Unix
                        } else {
                            ConnKind::Plain
                        },
                        peer_cert: None,
                    };
                    serve_http(io, service(conn), stop, evict).await
                }
            };
            if let Err(e) = ended {
                debug!(listener = what, error = %e, "connection ended with an error");
            }
            drop((slot, client_slot));
            open.remove(id);
        });
    }
    drop(listener);
    // Every connection holds a slot until it ends: all slots back means all drained.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain, slots.acquire_many(all))
        .await
        .is_err()
    {
        warn!(
            listener = what,
            ?drain,
            "drain timed out with connections still open"
        );
    }
}

/// Serves HTTP/1.1 on one connection until it ends or, at `stop`, its request in
/// flight is answered; at `evict`, at once (it serves no request then).
async fn serve_http<I, S, B>(
    io: I,
    service: S,
    stop: CancellationToken,
    evict: CancellationToken,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<B>,
            Error = std::convert::Infallible,
        >,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        // Docker's attach and exec take over their connection (101 Switching Protocols).
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = evict.cancelled() => return Ok(()),
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    ended.map_err(Into::into)
}

/// Marks its connection idle when dropped: carried by each response body, which hyper
/// drops once the body has ended.
struct IdleOnDrop(SharedPhase);

impl Drop for IdleOnDrop {
    fn drop(&mut self) {
        set(&self.0, Phase::Idle(Instant::now()));
    }
}

/// A connection with its read and write deadlines.
struct Deadlines {
    stream: Conn,
    phase: SharedPhase,
    limits: ListenerLimits,
    read_sleep: Pin<Box<Sleep>>,
    read_deadline: Option<Instant>,
    write_sleep: Pin<Box<Sleep>>,
    write_armed: bool,
}

impl Deadlines {
    fn new(stream: Conn, phase: SharedPhase, limits: ListenerLimits) -> Self {
        Self {
            stream,
            phase,
            limits,
            read_sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            read_deadline: None,
            write_sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            write_armed: false,
        }
    }

    /// Waits on the write deadline after a write made no progress.
    fn write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if !self.write_armed {
            self.write_armed = true;
            let deadline = Instant::now() + self.limits.write_timeout;
            self.write_sleep.as_mut().reset(deadline);
        }
        match self.write_sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client read nothing for {:?}",
                    self.limits.write_timeout
                ),
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn written<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.write_pending(cx).map(Err),
            ready => {
                self.write_armed = false;
                ready
            }
        }
    }
}

impl AsyncRead for Deadlines {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let mut state = this.phase.lock().unwrap_or_else(|e| e.into_inner());
                    if let Phase::Idle(_) | Phase::New(_) = state.phase {
                        state.phase = Phase::Head(Instant::now());
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let (deadline, why) = {
                    let mut state = this.phase.lock().unwrap_or_else(|e| e.into_inner());
                    match state.phase {
                        Phase::Busy => {
                            state.reader = Some(cx.waker().clone());
                            return Poll::Pending;
                        }
                        Phase::New(since) => (since + this.limits.header_timeout, "first byte"),
                        Phase::Idle(since) => (since + this.limits.idle_timeout, "idle"),
                        Phase::Head(since) => (since + this.limits.header_timeout, "header"),
                    }
                };
                if this.read_deadline != Some(deadline) {
                    this.read_deadline = Some(deadline);
                    this.read_sleep.as_mut().reset(deadline);
                }
                match this.read_sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{why} timeout"),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for Deadlines {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.written(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.written(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.stream).poll_flush(cx);
        self.written(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.written(r, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt as _, Full};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn limits() -> ListenerLimits {
        ListenerLimits {
            header_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(600),
            body_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_millis(300),
            max_connections: 2,
            max_connections_per_client: 2,
        }
    }

    /// A listener answering every request with `size` bytes.
    async fn server(size: usize) -> (SocketAddr, CancellationToken) {
        server_with(size, limits()).await
    }

    async fn server_with(size: usize, limits: ListenerLimits) -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let body = Bytes::from(vec![b'x'; size]);
        tokio::spawn(serve(
            listener,
            limits,
            stop.clone(),
            Duration::from_millis(100),
            "test",
            move |_req, _, _| {
                let body = body.clone();
                async move { Response::new(Full::new(body).map_err(|n| match n {})) }
            },
        ));
        (addr, stop)
    }

    /// A connection to `addr` from loopback address `ip`.
    async fn connect_from(ip: &str, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(format!("{ip}:0").parse().expect("an address"))?;
        socket.connect(addr).await
    }

    /// Reads until the server closes; how long that took.
    async fn until_closed(s: &mut TcpStream) -> Duration {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        let deadline = Duration::from_secs(10);
        loop {
            match tokio::time::timeout(deadline, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
                Ok(Ok(_)) => {}
                Err(_) => panic!("the server kept the connection open for {deadline:?}"),
            }
        }
    }

    #[tokio::test]
    async fn trickled_headers_idle_and_silent_connections_are_closed() {
        let (addr, _stop) = server(10).await;
        // Silent from the start: its first byte was due within the header timeout (not
        // the idle timeout, so silent connections cannot hold slots for long).
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let took = until_closed(&mut silent).await;
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_millis(550),
            "{took:?}"
        );
        // A head trickled a byte at a time: the header timeout, though bytes keep coming.
        let mut trickle = TcpStream::connect(addr).await.unwrap();
        let start = Instant::now();
        let mut closed = false;
        for b in
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter()
        {
            if trickle.write_all(&[*b]).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if start.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
        if !closed {
            until_closed(&mut trickle).await;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        // Kept alive after one answer: the idle timeout again.
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let took = until_closed(&mut kept).await;
        assert!(took >= Duration::from_millis(500), "{took:?}");
    }

    #[tokio::test]
    async fn one_client_address_cannot_take_every_connection() {
        let limits = ListenerLimits {
            idle_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            max_connections: 8,
            max_connections_per_client: 2,
            ..limits()
        };
        let (addr, _stop) = server_with(10, limits).await;
        let from = |ip: &'static str| connect_from(ip, addr);
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(from("127.0.0.5").await.unwrap());
        }
        // A third from the same address is closed at once ...
        let mut third = from("127.0.0.5").await.unwrap();
        let took = until_closed(&mut third).await;
        assert!(took < Duration::from_secs(5), "{took:?}");
        // ... while another address is served.
        let mut other = from("127.0.0.6").await.unwrap();
        other
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        other.read_to_end(&mut got).await.unwrap();
        assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
        // A held one that ends gives its slot back.
        drop(held.pop());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut s = from("127.0.0.5").await.unwrap();
            let _ = s
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got).await;
            if got.starts_with(b"HTTP/1.1 200") {
                break;
            }
            assert!(Instant::now() < deadline, "the freed slot never came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn at_the_cap_a_new_client_takes_the_place_of_a_waiting_connection() {
        let limits = ListenerLimits {
            idle_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(30),
            max_connections: 4,
            max_connections_per_client: 4,
            ..limits()
        };
        let (addr, _stop) = server_with(10, limits).await;
        let from = |ip: &'static str| connect_from(ip, addr);
        // Four places held by connections that send nothing (and one kept idle after a
        // request), all from one address: the listener is full.
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(from("127.0.0.5").await.unwrap());
        }
        let mut others = Vec::new();
        for _ in 0..3 {
            // Another address is served all the same, each time in place of one of them
            // (its connections stay open: the next needs a place too).
            let mut other = from("127.0.0.6").await.unwrap();
            other
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"xxxxxxxxxx") {
                let n = tokio::time::timeout(Duration::from_secs(5), other.read(&mut buf))
                    .await
                    .expect("served within 5 s at the cap")
                    .unwrap();
                assert!(n > 0, "closed: {got:?}");
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
            others.push(other);
        }
        // The displaced ones were closed (long before their timeouts).
        let mut closed = 0;
        for s in &mut held {
            let mut byte = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_secs(2), s.read(&mut byte)).await
            {
                closed += 1;
            }
        }
        assert_eq!(closed, 3, "one displaced per newcomer");
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_dropped_and_the_cap_frees() {
        // A long idle timeout, so a connection closed at once can only be the cap's doing.
        let limits = ListenerLimits {
            idle_timeout: Duration::from_secs(10),
            ..limits()
        };
        let (addr, _stop) = server_with(32 << 20, limits).await;
        let mut stuck = TcpStream::connect(addr).await.unwrap();
        stuck
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        second
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Both are being answered (so both hold a slot) ...
        for s in [&mut stuck, &mut second] {
            let mut first = [0u8; 1];
            s.read_exact(&mut first).await.unwrap();
        }
        // ... so a third connection is closed at once.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let took = until_closed(&mut third).await;
        assert!(took < Duration::from_secs(5), "{took:?}");
        // Neither reads: both are dropped after the write timeout, freeing the slots.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut fresh = TcpStream::connect(addr).await.unwrap();
            fresh
                .write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), fresh.read_to_end(&mut got)).await;
            if got.starts_with(b"HTTP/1.1 200") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the stuck clients were never dropped"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop((stuck, second));
    }
}
