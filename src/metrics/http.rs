//! The HTTP endpoints (`--metrics-addr`): `/metrics`, `/healthz`, `/readyz`, on hyper's HTTP/1
//! server, in the worker's tokio runtime.
//!
//! The listening socket is not the worker's: the supervisor binds it once, before mounting, and
//! hands it to every worker it starts, and to a successor in a handoff (see
//! `lifecycle::supervisor`). Connections that arrive while no worker accepts (between a crash
//! and the replacement, or during a takeover) wait in the socket's backlog and are answered by
//! the next worker. Nothing here runs on a FUSE session thread, and the request path of the
//! filesystem never waits on anything here.
//!
//! A worker that is told to stop (a handoff) first stops accepting, so that new connections
//! queue for its successor, and lets the requests it holds finish ([`Server::stop`]): a client
//! sees an answer or a wait, never a reset. (A worker that crashes drops what it held; the
//! scraper's next attempt reaches the replacement.)

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;

use super::health::Health;
use crate::fs::cache::Cache;

/// At most this many connections are served at once; more wait in the backlog.
const MAX_CONNECTIONS: usize = 32;
/// A client must send its request headers within this (slow or idle peers hold no slot long).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping worker's connections may still take a request before they close.
const STOP_GRACE: Duration = Duration::from_millis(200);

struct Endpoints {
    registry: Registry,
    health: Health,
    /// Settled before each scrape, so its entry and byte gauges are current.
    cache: Option<Cache>,
}

/// The running endpoints, to stop before the worker exits.
pub(crate) struct Server {
    stopping: tokio::sync::watch::Sender<bool>,
    slots: Arc<tokio::sync::Semaphore>,
    health: Health,
    runtime: tokio::runtime::Handle,
}

impl Server {
    /// Stop accepting (connections wait in the backlog for the next worker), answer `/healthz`
    /// and `/readyz` with 503 from now on (this worker is going), and close connections once
    /// they have answered what they hold. Returns at once; [`Server::finish`] waits.
    pub(crate) fn stop(&self) {
        self.health.stopping();
        self.stopping.send_replace(true);
    }

    /// Wait up to `timeout` for the connections to close after [`Server::stop`]. Not to be
    /// called on a runtime thread.
    pub(crate) fn finish(&self, timeout: Duration) {
        let slots = self.slots.clone();
        self.runtime.block_on(async move {
            let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
            let _ = tokio::time::timeout(timeout, slots.acquire_many(all)).await;
        });
    }
}

/// Serve the endpoints on `listener` (already bound and listening) until [`Server::stop`].
pub(crate) fn spawn(
    listener: std::net::TcpListener,
    registry: Registry,
    health: Health,
    cache: Option<Cache>,
    runtime: &tokio::runtime::Handle,
) -> std::io::Result<Server> {
    listener.set_nonblocking(true)?;
    let _guard = runtime.enter();
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let endpoints = Arc::new(Endpoints {
        registry,
        health: health.clone(),
        cache,
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let (stopping, stop) = tokio::sync::watch::channel(false);
    let server = Server {
        stopping,
        slots: slots.clone(),
        health,
        runtime: runtime.clone(),
    };
    runtime.spawn(async move {
        let mut stop_accepting = stop.clone();
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let accepted = tokio::select! {
                biased;
                _ = async { stop_accepting.wait_for(|s| *s).await.is_ok() } => return,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: not a reason to stop serving for good (and
                    // the scraper will see it, so no log line ten times a second).
                    tracing::debug!("metrics endpoint: cannot accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let endpoints = endpoints.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let endpoints = endpoints.clone();
                    async move { Ok::<_, Infallible>(endpoints.answer(request).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => {}
                    _ = async { stop.wait_for(|s| *s).await.is_ok() } => {
                        // A request that is on its way (accepted just as the stop came) still
                        // gets its answer; then an idle connection is closed, and one with a
                        // request in hand closes after answering it.
                        if tokio::time::timeout(STOP_GRACE, connection.as_mut()).await.is_err() {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                }
                drop(slot);
            });
        }
    });
    Ok(server)
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

const PLAIN: &str = "text/plain; charset=utf-8";

/// 200 with `ok`, or 503 with the reason, one line each.
fn verdict(result: Result<(), String>) -> Response<Full<Bytes>> {
    match result {
        Ok(()) => text(StatusCode::OK, PLAIN, "ok\n".into()),
        Err(reason) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            format!("{reason}\n"),
        ),
    }
}

impl Endpoints {
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let known = matches!(request.uri().path(), "/metrics" | "/healthz" | "/readyz");
        if !known {
            return text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into());
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "use GET\n".into());
            r.headers_mut().insert(
                hyper::header::ALLOW,
                hyper::header::HeaderValue::from_static("GET, HEAD"),
            );
            return r;
        }
        match request.uri().path() {
            "/metrics" => {
                if let Some(cache) = &self.cache {
                    let _ = tokio::time::timeout(Duration::from_secs(1), cache.settle()).await;
                }
                text(
                    StatusCode::OK,
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                    super::render(&self.registry),
                )
            }
            "/healthz" => verdict(self.health.mount_answers().await),
            _ => verdict(self.health.ready().await),
        }
    }
}

/// The endpoints of a kvfs that handed its mount over to a successor in another network
/// namespace and idles until SIGTERM (`--after-handoff wait`): `/healthz` 200, `/readyz` 503,
/// `/metrics` its build and start counts. Served on a small runtime of its own (the supervisor
/// has none), which lives as long as the returned value.
pub(crate) fn serve_handed_over(
    listener: std::net::TcpListener,
    starts: super::WorkerStarts,
) -> Result<HandedOver, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("kvfs-metrics")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the metrics runtime: {e}"))?;
    let registry = super::registry(super::Sources {
        cache: None,
        starts,
    });
    let server = spawn(
        listener,
        registry,
        Health::handed_over(),
        None,
        runtime.handle(),
    )
    .map_err(|e| format!("cannot serve the metrics endpoint: {e}"))?;
    Ok(HandedOver {
        _server: server,
        _runtime: runtime,
    })
}

/// Keeps a handed-over kvfs's endpoints running (see [`serve_handed_over`]).
pub(crate) struct HandedOver {
    _server: Server,
    _runtime: tokio::runtime::Runtime,
}
