//! What a running node takes up from changed files without a restart: its TLS certificate, its
//! API keys and its cluster secrets. Each is checked every 2 s, and at once on SIGHUP. Changed files that fail a
//! check are refused, logged and counted, and what is in use stays. Open connections and
//! requests keep what they started with.
//!
//! Not here: what the files mean (`mrr_tls`, `crate::config`) or how requests use them
//! (`crate::gate`). Nothing else in the config changes while the node runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mrr_replication::secrets::LiveSecrets;

use crate::access::LiveAccess;
use crate::config::Config;

/// How often the files are checked for changes (SIGHUP checks at once).
const FILES_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Calls `check(forced)` every [`FILES_CHECK_INTERVAL`], and with `forced` on SIGHUP, for the
/// life of the node.
async fn every_check(what: &str, mut check: impl FnMut(bool)) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: {what} are still checked every 2 s");
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
        check(forced);
    }
}

/// Follows the region's TLS files: when they change they are loaded and checked again, exactly
/// as at start-up, and swapped in for new connections, peers and API alike.
pub async fn follow_tls(tls: Arc<mrr_tls::LiveTls>, reloaded: metrics::Counter, refused: metrics::Counter) {
    every_check("TLS files", |forced| match tls.reload_if_changed(forced, mrr_tls::UnixTime::now()) {
        Ok(false) => {}
        Ok(true) => {
            reloaded.increment(1);
            tracing::info!(cert = %tls.paths().cert.display(), "TLS certificate reloaded: new connections use it, open streams keep theirs");
        }
        Err(e) => {
            refused.increment(1);
            tracing::warn!(error = %e, "changed TLS files refused; the certificate in use stays");
        }
    })
    .await;
}

/// What the config follower replaces while the node runs.
pub struct Followed {
    pub keys: Arc<LiveAccess>,
    pub secrets: Arc<LiveSecrets>,
}

/// Follows the config file's `api_keys` (and the key files they name), `secret:` and
/// `accept_secrets:`: a key added, removed, rescoped or expired, or a step of a secret rotation,
/// takes effect without a restart (new handshakes and strong-tier calls use the new secrets;
/// open streams stay up). `api` is where this node's API listens, for the rule that keys may go
/// only on loopback or with `allow_anonymous`. A refusal is logged and counted once per
/// distinct error, not at every check.
pub async fn follow_config(
    path: PathBuf,
    api: SocketAddr,
    live: Followed,
    reloaded: metrics::Counter,
    refused: metrics::Counter,
) {
    let mut refusal: Option<String> = None;
    every_check("the config file's keys and secrets", |_| match Config::reload_live(&path, api) {
        Ok(next) => {
            refusal = None;
            let count = next.access.key_count();
            let keys = live.keys.replace(next.access);
            let secrets = live.secrets.replace(next.secrets);
            if keys || secrets {
                reloaded.increment(1);
                tracing::info!(config = %path.display(), keys_changed = keys, api_keys = count, secrets_changed = secrets, "config reloaded: requests and new peer handshakes from now on use it");
            }
        }
        Err(e) => {
            let message = e.to_string();
            if refusal.as_deref() != Some(message.as_str()) {
                refused.increment(1);
                tracing::warn!(error = %message, "changed config refused; the API keys and secrets in use stay");
                refusal = Some(message);
            }
        }
    })
    .await;
}
