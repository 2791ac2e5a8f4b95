//! Connections: the accept loop, a deadline on every read (headers, an idle keep-alive; the
//! body's is the handler's), a lingering close after a refused body, and the graceful shutdown
//! that stops accepting and drains every accepted connection, those still in the listen backlog
//! too.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, Request, Response};
use axum::Router;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Sleep;

use super::options::ServerOptions;

/// What a connection's next read waits for, and so which deadline applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Between requests on a kept-alive connection: the idle deadline.
    Idle = 0,
    /// A request's headers (from accept, or from its first byte): the header deadline.
    Head = 1,
    /// A request being served: its body's deadline is the handler's, nothing else waits.
    Busy = 2,
}

/// One connection's state, shared by its reads and the requests it carries.
struct ConnectionState {
    phase: AtomicU8,
    /// When the phase began, in ns since `origin`.
    since_ns: AtomicU64,
    origin: Instant,
    /// A refused body may still be arriving: read and discard it before closing.
    linger: AtomicBool,
    /// The connection's task, woken when the phase changes so that its deadline is re-armed.
    reader: Mutex<Option<Waker>>,
}

impl ConnectionState {
    fn new() -> Self {
        ConnectionState {
            phase: AtomicU8::new(Phase::Head as u8),
            since_ns: AtomicU64::new(0),
            origin: Instant::now(),
            linger: AtomicBool::new(false),
            reader: Mutex::new(None),
        }
    }

    fn enter(&self, phase: Phase) {
        let ns = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.since_ns.store(ns, Ordering::Release);
        self.phase.store(phase as u8, Ordering::Release);
        if let Some(w) = self.reader.lock().ok().and_then(|mut w| w.take()) {
            w.wake();
        }
    }

    fn phase(&self) -> (Phase, Instant) {
        let phase = match self.phase.load(Ordering::Acquire) {
            0 => Phase::Idle,
            1 => Phase::Head,
            _ => Phase::Busy,
        };
        let since = self.origin + Duration::from_nanos(self.since_ns.load(Ordering::Acquire));
        (phase, since)
    }
}

/// A request's handle on its connection (a request extension).
#[derive(Clone)]
pub(crate) struct ConnectionHandle(Arc<ConnectionState>);

impl ConnectionHandle {
    /// The body of this request was refused unread: after the answer, read and discard a
    /// bounded amount of what the client still sends, then close, so that a client which sends
    /// its whole body before reading sees the answer rather than a reset.
    pub fn linger_before_close(&self) {
        self.0.linger.store(true, Ordering::Release);
    }
}

/// The read deadlines and the lingering close's bounds, from [`ServerOptions`].
#[derive(Debug, Clone, Copy)]
struct Limits {
    header: Duration,
    idle: Duration,
    linger_bytes: usize,
    linger_time: Duration,
}

/// A TCP stream whose reads fail (headers) or end (idle) at their deadline, that ends an idle
/// read when the server is closing, and that lingers before closing where asked.
struct DeadlineStream {
    stream: TcpStream,
    state: Arc<ConnectionState>,
    limits: Limits,
    timer: Pin<Box<Sleep>>,
    closing: Pin<Box<dyn Future<Output = ()> + Send>>,
    closed: bool,
    /// While lingering: bytes still to discard and when to stop.
    lingering: Option<(usize, Instant)>,
}

impl DeadlineStream {
    fn new(
        stream: TcpStream,
        state: Arc<ConnectionState>,
        limits: Limits,
        mut closing: watch::Receiver<bool>,
    ) -> Self {
        DeadlineStream {
            stream,
            state,
            limits,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            closing: Box::pin(async move {
                let _ = closing.wait_for(|c| *c).await;
            }),
            closed: false,
            lingering: None,
        }
    }

    /// Whether the deadline at `at` has passed (else the timer will wake the task at it).
    fn passed(&mut self, at: Instant, cx: &mut Context<'_>) -> bool {
        let at = tokio::time::Instant::from_std(at);
        if self.timer.deadline() != at {
            self.timer.as_mut().reset(at);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }
}

impl AsyncRead for DeadlineStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.state.phase().0 == Phase::Idle {
                    this.state.enter(Phase::Head);
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        if let Ok(mut w) = this.state.reader.lock() {
            *w = Some(cx.waker().clone());
        }
        let (phase, since) = this.state.phase();
        match phase {
            Phase::Idle => {
                if !this.closed && this.closing.as_mut().poll(cx).is_ready() {
                    this.closed = true;
                }
                // Nothing has arrived: the end of the connection, as if the client had closed.
                if this.closed || this.passed(since + this.limits.idle, cx) {
                    return Poll::Ready(Ok(()));
                }
            }
            Phase::Head => {
                if this.passed(since + this.limits.header, cx) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the request's headers did not arrive within the header deadline",
                    )));
                }
            }
            Phase::Busy => {}
        }
        Poll::Pending
    }
}

impl AsyncWrite for DeadlineStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    /// Sends the end of the stream; where a refused body may still be arriving, first reads and
    /// discards it (up to the linger bounds), so that the client is not reset before it reads
    /// the answer.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.state.linger.load(Ordering::Acquire) {
            return Pin::new(&mut this.stream).poll_shutdown(cx);
        }
        if this.lingering.is_none() {
            std::task::ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
            this.lingering = Some((
                this.limits.linger_bytes,
                Instant::now() + this.limits.linger_time,
            ));
        }
        let mut scratch = [0u8; 16 << 10];
        loop {
            let Some((left, until)) = this.lingering else {
                return Poll::Ready(Ok(()));
            };
            if left == 0 {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch[..left.min(16 << 10)]);
            match Pin::new(&mut this.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    this.lingering = Some((left - buf.filled().len(), until));
                }
                // The client's end, or its error: nothing more to wait for.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    return if this.passed(until, cx) {
                        Poll::Ready(Ok(()))
                    } else {
                        Poll::Pending
                    };
                }
            }
        }
    }
}

/// A response body that marks its connection idle once it is sent (or dropped).
struct IdleWhenSent {
    body: Body,
    connection: Arc<ConnectionState>,
}

impl http_body::Body for IdleWhenSent {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for IdleWhenSent {
    fn drop(&mut self) {
        self.connection.enter(Phase::Idle);
    }
}

/// Serves one connection: HTTP/1.1 with keep-alive, `app` for each request.
async fn connection(
    stream: TcpStream,
    app: Router,
    limits: Limits,
    closing: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let state = Arc::new(ConnectionState::new());
    let shutting_down = closing.clone();
    let io = DeadlineStream::new(stream, state.clone(), limits, closing);
    let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
        state.enter(Phase::Busy);
        let handle = ConnectionHandle(state.clone());
        request.extensions_mut().insert(handle.clone());
        let app = app.clone();
        let closing = *shutting_down.borrow();
        async move {
            let response = tower::ServiceExt::oneshot(app, request.map(Body::new))
                .await
                .unwrap_or_else(|never: Infallible| match never {});
            let (mut parts, body) = response.into_parts();
            // A server that is closing answers, then closes; so does one that refused a body.
            if closing || handle.0.linger.load(Ordering::Acquire) {
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            let body = Body::new(IdleWhenSent {
                body,
                connection: handle.0,
            });
            Ok::<_, Infallible>(Response::from_parts(parts, body))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await;
}

/// Stops the kernel from starting new handshakes on `listener` (Linux: a socket filter that
/// drops every new connection's SYN, while the ACKs that complete handshakes already begun still
/// pass), so that every connection it completes can be taken and no new one slips in before it
/// closes. Elsewhere: nothing.
fn refuse_new_handshakes(listener: &std::net::TcpListener) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use socket2::SockFilter;
        // The filter sees the TCP header; byte 13 holds its flags (SYN 0x02, ACK 0x10).
        const DROP_NEW_SYNS: [SockFilter; 5] = [
            SockFilter::new(0x30, 0, 0, 13),       // ldb [13]
            SockFilter::new(0x54, 0, 0, 0x12),     // and #(SYN | ACK)
            SockFilter::new(0x15, 0, 1, 0x02),     // jeq #SYN (a SYN alone): drop, else keep
            SockFilter::new(0x06, 0, 0, 0),        // ret #0: drop
            SockFilter::new(0x06, 0, 0, u32::MAX), // ret: keep the whole packet
        ];
        let _ = socket2::SockRef::from(listener).attach_filter(&DROP_NEW_SYNS);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = listener;
}

/// Takes every connection `listener` has completed, until two rounds 25 ms apart find none (a
/// handshake under way when new ones were refused completes within them).
fn take_backlog(listener: &std::net::TcpListener) -> io::Result<Vec<std::net::TcpStream>> {
    let mut taken = Vec::new();
    let mut empty_rounds = 0;
    while empty_rounds < 2 {
        let before = taken.len();
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(true)?;
                    taken.push(stream);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        empty_rounds = if taken.len() == before {
            empty_rounds + 1
        } else {
            0
        };
        if empty_rounds < 2 {
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    Ok(taken)
}

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, takes every
/// connection the kernel had accepted, and answers every request they carry (an idle kept-alive
/// connection is closed) before it returns.
pub(crate) async fn serve_connections(
    listener: TcpListener,
    app: Router,
    o: &ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let limits = Limits {
        header: o.header_timeout,
        idle: o.idle_timeout,
        linger_bytes: o.discard_after_refusal_bytes,
        linger_time: o.body_timeout,
    };
    // Past this, a connection still open at shutdown is dropped: every deadline it could be
    // waiting on has passed.
    let drain_limit =
        o.header_timeout + o.body_timeout + o.request_timeout + Duration::from_secs(5);
    let (closing_tx, closing) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, app.clone(), limits, closing.clone()));
                }
                // A connection reset before it was taken, or out of file descriptors: go on
                // (after a pause where the process is out of something).
                Err(e) if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    let listener = listener.into_std()?;
    refuse_new_handshakes(&listener);
    // Blocking sleeps between rounds: a few tens of ms once, off the connections' tasks.
    let (listener, backlog) = tokio::task::spawn_blocking(move || {
        let backlog = take_backlog(&listener);
        (listener, backlog)
    })
    .await
    .map_err(io::Error::other)?;
    for stream in backlog? {
        let stream = TcpStream::from_std(stream)?;
        connections.spawn(connection(stream, app.clone(), limits, closing.clone()));
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let drained = tokio::time::timeout(drain_limit, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
    Ok(())
}
