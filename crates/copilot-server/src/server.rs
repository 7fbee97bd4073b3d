//! The accept loop (DESIGN.md 6.1, 7): slow clients cannot hold the server. Headers must arrive
//! within `header_timeout` (hyper measures it from when it starts waiting for a request, so it
//! also ends idle keep-alive waits), a body within `body_timeout`; a connection that moves no
//! byte for `idle_timeout` is closed (a stalled SSE reader too; live streams send a heartbeat
//! every 15 s); at most `max_connections` are open (more are closed at once). Shutdown stops
//! accepting, ends the event streams, lets in-flight requests finish for at most `drain`, and
//! then returns whatever is still open.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_http::timeout::RequestBodyTimeoutLayer;

/// How long a connection that was asked to close (idle, shutdown) may take to finish its
/// in-flight request before it is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// `COPILOT_HEADER_TIMEOUT_MS`: a request's headers, from when the server waits for them.
    pub header_timeout: Duration,
    /// `COPILOT_BODY_TIMEOUT_MS`: a request's body (408 `request_timeout` past it).
    pub body_timeout: Duration,
    /// `COPILOT_IDLE_TIMEOUT_MS`: a connection that moves no byte for this long is closed.
    pub idle_timeout: Duration,
    /// `COPILOT_MAX_CONNECTIONS`: open connections; more are closed on accept.
    pub max_connections: usize,
    /// `COPILOT_SHUTDOWN_DRAIN_MS`: how long shutdown waits for in-flight requests.
    pub drain: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            drain: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes; `on_shutdown` runs first (it ends
/// the event streams). Returns once every connection closed, or after `limits.drain`.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_shutdown: impl FnOnce() + Send,
) -> std::io::Result<()> {
    let app = app.layer(RequestBodyTimeoutLayer::new(limits.body_timeout));
    let max = limits.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max));
    let (stop, stopped) = watch::channel(false);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("copilot_http_connections_refused_total").increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            builder: builder.clone(),
            app: app.clone(),
            idle_timeout: limits.idle_timeout,
            stopped: stopped.clone(),
        };
        tokio::spawn(async move {
            metrics::gauge!("copilot_http_connections").increment(1.0);
            connection.serve(stream, peer).await;
            metrics::gauge!("copilot_http_connections").decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    on_shutdown();
    let _ = stop.send(true);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.drain, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            open = max - permits.available_permits(),
            "shutdown drain limit reached; closing the remaining connections"
        );
    }
    Ok(())
}

struct Connection {
    builder: Arc<Builder<TokioExecutor>>,
    app: Router,
    idle_timeout: Duration,
    stopped: watch::Receiver<bool>,
}

impl Connection {
    async fn serve(mut self, stream: TcpStream, peer: SocketAddr) {
        let moved = Arc::new(AtomicBool::new(false));
        let io = TokioIo::new(Tracked {
            inner: stream,
            moved: moved.clone(),
        });
        let app = self.app.clone();
        let service = tower::service_fn(move |mut request: axum::http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request)
        });
        let connection = self
            .builder
            .serve_connection_with_upgrades(io, TowerToHyperService::new(service));
        tokio::pin!(connection);
        // The socket only raises a flag when it moves bytes (no clock reading per read or
        // write); every tick takes the flag down. A connection is idle from the first tick that
        // found it down, so it is closed between `idle_timeout` and `idle_timeout` + 2 ticks
        // after its last byte.
        let tick_every = (self.idle_timeout / 8).max(Duration::from_millis(25));
        let mut tick = tokio::time::interval(tick_every);
        let mut quiet_since = Instant::now();
        loop {
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = self.stopped.changed() => break,
                now = tick.tick() => {
                    if moved.swap(false, Ordering::Relaxed) {
                        quiet_since = now;
                    } else if now.duration_since(quiet_since) >= self.idle_timeout {
                        metrics::counter!("copilot_http_connections_closed_idle_total").increment(1);
                        break;
                    }
                }
            }
        }
        connection.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
    }
}

/// A socket that raises a flag whenever it moves a byte.
struct Tracked {
    inner: TcpStream,
    moved: Arc<AtomicBool>,
}

impl Tracked {
    fn touch(&self) {
        self.moved.store(true, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
