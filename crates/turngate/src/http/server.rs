//! The HTTP/1.1 server, with the limits a slow, idle or lingering client meets
//! (`[http]`). `axum::serve` takes no configuration, so connections are served by
//! hyper directly:
//! - **headers**: hyper's header read timeout runs from the moment a connection is
//!   ready for a request (after accept, or after the previous response) until the
//!   request's headers are complete, so it bounds slow headers and idle keep-alive
//!   alike (hyper 1.12, `proto/h1/conn.rs`); the connection is closed without a
//!   response;
//! - **bodies**: tower-http's `RequestBodyTimeout` ends a body that pauses longer than
//!   the body read timeout; handlers answer `408 request_timeout`;
//! - **writes**: a write that stalls for the body read timeout (a client that does not
//!   read its answers) ends the connection (tokio-io-timeout; hyper has none);
//! - **connections**: at most `max_connections` are served; more wait in the listen
//!   backlog;
//! - **shutdown**: requests in flight get `shutdown_grace`; then the remaining
//!   connections are dropped, so a client that never finishes cannot keep the process
//!   alive.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::{RequestBodyTimeout, TimeoutError};

use turngate_core::ErrorCode;

use crate::app::App;
use crate::problem::Problem;

/// The limits of `[http]`.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets requests in
/// flight finish within the grace and drops what is left.
pub async fn serve(
    mut listener: TcpListener,
    router: Router,
    limits: Limits,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) {
    let service =
        TowerToHyperService::new(RequestBodyTimeout::new(router, limits.body_read_timeout));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let hard_stop = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        // axum's accept: it retries on the errors a busy server sees (EMFILE, resets).
        let (tcp, peer) = tokio::select! {
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        // A client that stops reading its answer (or pipelines requests it never reads
        // the answers to) is cut off when a write stalls for the body read timeout:
        // hyper has no write timeout of its own.
        let mut tcp = TimeoutStream::new(tcp);
        tcp.set_write_timeout(Some(limits.body_read_timeout));
        // Handlers learn the peer's address through axum's `ConnectInfo`.
        let per_connection = service.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            hyper::service::Service::call(&per_connection, request)
        });
        let connection =
            graceful.watch(http.serve_connection(TokioIo::new(Box::pin(tcp)), service));
        let (hard_stop, app) = (hard_stop.clone(), Arc::clone(&app));
        let open = &app.turns.metrics.http_connections;
        open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            let reason = match hard_stop.run_until_cancelled(connection).await {
                None => "shutdown",
                Some(Err(e)) if e.is_timeout() || write_timed_out(&e) => "timeout",
                Some(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended.");
                    "ended"
                }
                Some(Ok(())) => "ended",
            };
            let metrics = &app.turns.metrics;
            metrics.http_connections_closed.inc([reason]);
            metrics
                .http_connections
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open at the shutdown deadline; dropping them.");
        hard_stop.cancel();
    }
}

/// Whether `error` or any error in its source chain satisfies `is`.
fn caused_by(
    error: &(dyn StdError + 'static),
    is: impl Fn(&(dyn StdError + 'static)) -> bool,
) -> bool {
    std::iter::successors(Some(error), |&e| e.source()).any(is)
}

/// Whether a connection ended because a write stalled (see `TimeoutStream`).
fn write_timed_out(error: &(dyn StdError + 'static)) -> bool {
    caused_by(error, |e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    })
}

/// The problem to answer when reading a request body failed: `408 request_timeout`
/// if the body paused longer than the body read timeout, else `otherwise`.
pub fn body_failed(error: &(dyn StdError + 'static), otherwise: Problem) -> Problem {
    if caused_by(error, |e| e.is::<TimeoutError>()) {
        return Problem::new(
            ErrorCode::RequestTimeout,
            "the request body paused longer than the body read timeout",
        );
    }
    otherwise
}
