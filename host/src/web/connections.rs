//! The dashboard's connections, accepted here rather than by `axum::serve`, which keeps every
//! connection open as long as its client likes: 4,350 idle connections from another local user
//! once took the server from 30 to 107 MB. Here an idle connection costs little and does not
//! last:
//!
//! - A new connection must send its first request's headers within [`Limits::headers`], or it
//!   is closed.
//! - Between requests, a keep-alive connection is closed after [`Limits::idle`] (hyper's
//!   header-read timer, which runs whenever it waits for the head of a request).
//! - At most [`MAX_CONNECTIONS`] are open. One more takes the place of the connection that has
//!   been idle (no request in progress) the longest, so that idle connections never lock a
//!   user out; when every one is busy (event streams, requests under way) it is closed at once
//!   and those go on being served.
//!
//! HTTP/1.1 only: browsers speak HTTP/2 only over TLS, which this server does not do, and
//! hyper's HTTP/2 connections have no header timer.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// The most connections open at once. A browser opens at most six to one server, each open
/// page holds one for its event stream, and scripts one each: 256 is far more than the people
/// and scripts of one queue use, while 256 idle connections cost a few megabytes.
pub const MAX_CONNECTIONS: usize = 256;

/// How long connections may stay silent.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// From accepting a connection to the end of its first request's headers.
    pub headers: Duration,
    /// From the end of a response to the end of the next request's headers.
    pub idle: Duration,
}

/// Accepts connections on `listener` and serves `router` on each, within [`Limits`] and
/// [`MAX_CONNECTIONS`]; runs until the process ends.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits) {
    let open = Arc::new(OpenConnections::default());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors (EMFILE) or memory: trying again at once would spin.
                // A connection reset before it was accepted is the client's affair.
                if !matches!(
                    err.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                ) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        // Refused (dropped, so closed at once): every open connection is busy.
        let Some(connection) = open.admit() else {
            continue;
        };
        tokio::spawn(run(
            stream,
            connection,
            Arc::clone(&open),
            router.clone(),
            limits,
        ));
    }
}

/// The open connections, and when each became idle.
struct OpenConnections {
    list: Mutex<Vec<Arc<Connection>>>,
    /// What [`Connection::idle_since`] counts from.
    epoch: Instant,
}

impl Default for OpenConnections {
    fn default() -> Self {
        OpenConnections {
            list: Mutex::default(),
            epoch: Instant::now(),
        }
    }
}

impl OpenConnections {
    /// Registers a new connection, making room by closing the longest idle one when
    /// [`MAX_CONNECTIONS`] are open; `None` when every open connection is busy.
    fn admit(&self) -> Option<Arc<Connection>> {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        if list.len() >= MAX_CONNECTIONS {
            let idlest = list
                .iter()
                .enumerate()
                .filter(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, c)| c.idle_since.load(Ordering::Acquire))
                .map(|(index, _)| index)?;
            // Its task drops it, closing the socket. A request whose headers arrive in the
            // same instant is lost with it, as when a client's keep-alive connection times out.
            list.swap_remove(idlest).evict.notify_one();
        }
        let connection = Arc::new(Connection {
            busy: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since: AtomicU64::new(self.now()),
            evict: Notify::new(),
        });
        list.push(Arc::clone(&connection));
        Some(connection)
    }

    /// Forgets a connection that closed (a no-op for one closed to make room).
    fn remove(&self, connection: &Arc<Connection>) {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(index) = list.iter().position(|c| Arc::ptr_eq(c, connection)) {
            list.swap_remove(index);
        }
    }

    /// Milliseconds since [`OpenConnections::epoch`].
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// One open connection, as the accept loop sees it.
struct Connection {
    /// Requests whose response has not been sent whole yet (an event stream's never is).
    busy: AtomicUsize,
    /// Whether a request's headers have arrived.
    served: AtomicBool,
    /// When its last response was sent whole (or it was accepted), in milliseconds since
    /// [`OpenConnections::epoch`].
    idle_since: AtomicU64,
    /// Told to close, to make room for a new connection.
    evict: Notify,
}

/// Serves one connection until it closes, times out or is closed to make room.
async fn run(
    stream: TcpStream,
    connection: Arc<Connection>,
    open: Arc<OpenConnections>,
    router: Router,
    limits: Limits,
) {
    let inner = TowerToHyperService::new(router);
    let service = {
        let (connection, open) = (Arc::clone(&connection), Arc::clone(&open));
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let busy = Busy::start(&connection, &open);
            let answer = inner.call(request);
            async move {
                let response = answer.await?;
                Ok::<_, Infallible>(response.map(|body| Tracked { body, _busy: busy }))
            }
        })
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.idle);
    let served = http.serve_connection(TokioIo::new(stream), service);
    let first_request_late = async {
        tokio::time::sleep(limits.headers).await;
        if connection.served.load(Ordering::Acquire) {
            std::future::pending::<()>().await;
        }
    };
    // Whichever comes first; dropping the connection closes its socket.
    tokio::select! {
        _ = served => {}
        () = connection.evict.notified() => {}
        () = first_request_late => {}
    }
    open.remove(&connection);
}

/// A request in progress on a connection: from its headers until its response was sent whole
/// (or abandoned), the connection is busy and never closed to make room.
struct Busy {
    connection: Arc<Connection>,
    open: Arc<OpenConnections>,
}

impl Busy {
    fn start(connection: &Arc<Connection>, open: &Arc<OpenConnections>) -> Busy {
        connection.served.store(true, Ordering::Release);
        connection.busy.fetch_add(1, Ordering::AcqRel);
        Busy {
            connection: Arc::clone(connection),
            open: Arc::clone(open),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.connection
            .idle_since
            .store(self.open.now(), Ordering::Release);
        self.connection.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection [`Busy`] until hyper has sent it and drops it.
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
