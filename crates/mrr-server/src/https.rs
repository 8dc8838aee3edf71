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
