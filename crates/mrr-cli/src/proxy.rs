//! `mrr wan-proxy`: a TCP proxy that delays every byte by a fixed one-way delay in each
//! direction, and can cut the path (SIGUSR1) and mend it (SIGUSR2). It puts MRR and a peer
//! system (PostgreSQL logical replication in `bench/pg_compare.sh`) behind the very same
//! emulated WAN, which kernel netem cannot do where the `sch_netem` module is missing.
//!
//! Order is preserved per direction (TCP semantics); a cut holds bytes, like a pulled cable,
//! until the mend or until the endpoints give up. Held bytes are bounded per connection: past
//! the bound the proxy stops reading, and TCP pushes back on the sender.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Chunks held per direction of a connection at most (64 KiB each: 256 MiB).
const HELD_CHUNKS_MAX: usize = 4_096;

#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    #[arg(long)]
    pub listen: SocketAddr,
    #[arg(long)]
    pub upstream: SocketAddr,
    /// One-way delay added in each direction.
    #[arg(long, default_value_t = 50)]
    pub delay_ms: u64,
}

pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let (cut_tx, cut) = watch::channel(false);
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    let mut usr2 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())?;
    let delay = Duration::from_millis(args.delay_ms);
    eprintln!(
        "wan-proxy {} -> {} with {} ms each way (SIGUSR1 cuts, SIGUSR2 mends)",
        args.listen, args.upstream, args.delay_ms
    );
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (client, _) = accepted?;
                let (upstream, cut) = (args.upstream, cut.clone());
                tokio::spawn(async move {
                    if let Err(e) = connection(client, upstream, delay, cut).await {
                        eprintln!("wan-proxy: connection ended: {e}");
                    }
                });
            }
            _ = usr1.recv() => {
                cut_tx.send_replace(true);
                eprintln!("wan-proxy: cut");
            }
            _ = usr2.recv() => {
                cut_tx.send_replace(false);
                eprintln!("wan-proxy: mended");
            }
        }
    }
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    delay: Duration,
    cut: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let server = TcpStream::connect(upstream).await.with_context(|| format!("cannot reach {upstream}"))?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(direction(cr, sw, delay, cut.clone()));
    let down = tokio::spawn(direction(sr, cw, delay, cut));
    // Either direction closing ends the connection.
    tokio::select! {
        r = up => r??,
        r = down => r??,
    }
    Ok(())
}

async fn direction(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    mut cut: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(HELD_CHUNKS_MAX);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 || tx.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
                return anyhow::Ok(());
            }
        }
    });
    while let Some((at, chunk)) = rx.recv().await {
        while *cut.borrow_and_update() {
            cut.changed().await?;
        }
        tokio::time::sleep_until(at + delay).await;
        to.write_all(&chunk).await?;
    }
    to.shutdown().await?;
    reader.await?
}
