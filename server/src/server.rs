//! Starts a member: the Raft node, then the client listeners; stops on
//! SIGINT or SIGTERM.

use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use futures::TryStreamExt;

use crate::api::{self, Limits};
use crate::authority::AuthorityRewrite;
use crate::config::{Config, host_port, url_list};
use crate::lease::{self, Lessor};
use crate::raft::RaftNode;
use crate::watch::{WatchConfig, WatchHub};

pub async fn run(config: Config) -> anyhow::Result<()> {
    let node = Arc::new(RaftNode::start(&config).await?);
    let _lessor = Lessor::start(
        node.clone(),
        std::time::Duration::from_millis(config.election_timeout),
    );
    let min_lease_ttl = lease::min_ttl(config.heartbeat_interval, config.election_timeout);
    let limits = Limits::new(
        config.max_txn_ops as usize,
        config.max_request_bytes as usize,
        node.member_id(),
    );
    let watch_hub = WatchHub::new(
        node.store(),
        WatchConfig {
            progress_notify_interval: config.watch_progress_notify_interval(),
            max_response_bytes: limits.max_request_bytes + api::GRPC_OVERHEAD_BYTES,
        },
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    for url in url_list(&config.listen_client_urls) {
        let listener = TcpListener::bind(host_port(&url)?).await?;
        tracing::info!(%url, member_id = %format!("{:x}", node.member_id()), "serving client requests");
        let routes = api::routes(node.clone(), watch_hub.clone(), limits, min_lease_ttl);
        // Small responses must not wait for Nagle's algorithm.
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .map_ok(AuthorityRewrite::new);
        let mut stop = stop_rx.clone();
        servers.push(tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                }),
        ));
    }
    let removed = tokio::select! {
        () = shutdown_signal() => false,
        () = node.removed() => true,
    };
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    for server in servers {
        server.await??;
    }
    node.shutdown().await;
    if removed {
        tracing::error!("the member has been permanently removed from the cluster");
        anyhow::bail!("the member has been permanently removed from the cluster");
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
