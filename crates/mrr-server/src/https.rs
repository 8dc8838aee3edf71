//! The HTTP API over TLS: accepts connections, completes each TLS handshake within a bound,
//! and serves the router over HTTP/1.1 or HTTP/2 (ALPN). axum's own `serve` speaks plain TCP
//! only, so this is the loop it would run, with rustls in front.
//!
//! Not here: certificates (`mrr_tls`, checked when the config loads) or anything a request does.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// How often the TLS files are checked for changes (SIGHUP checks at once).
const FILES_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Follows the region's TLS files for the life of the node: when they change (or on SIGHUP)
/// they are loaded and checked again, and swapped in for new connections, peers and API
/// alike; files that fail a check are refused, logged and counted, and the material in use
/// stays.
pub async fn follow_files(tls: Arc<mrr_tls::LiveTls>, reloaded: metrics::Counter, refused: metrics::Counter) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: TLS files are still checked every 2 s");
            None
        }
    };
    let mut tick = tokio::time::interval(FILES_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        match tls.reload_if_changed(forced, mrr_tls::UnixTime::now()) {
            Ok(false) => {}
            Ok(true) => {
                reloaded.increment(1);
                tracing::info!(cert = %tls.paths().cert.display(), "TLS certificate reloaded: new connections use it, open streams keep theirs");
            }
            Err(e) => {
                refused.increment(1);
                tracing::warn!(error = %e, "changed TLS files refused; the certificate in use stays");
            }
        }
    }
}

/// A client that opens a connection and never completes the handshake is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` over TLS until `shutdown` completes; connections already open
/// finish on their own. Each connection takes the certificate in use when it is accepted.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Arc<mrr_tls::LiveTls>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (tcp, from) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "HTTPS API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current().api_server.clone());
        let app = app.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%from, error = %e, "HTTPS API handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%from, "HTTPS API handshake timed out");
                    return;
                }
            };
            let service = TowerToHyperService::new(app);
            if let Err(e) = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), service).await
            {
                tracing::debug!(%from, error = %e, "HTTPS API connection ended");
            }
        });
    }
}
