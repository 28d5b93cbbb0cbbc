//! Keeps the replica of remote sessions: applies the changes announced on
//! the bus; when the subscription is lost, subscribes again and reloads
//! the whole directory (what was announced meanwhile is not replayed).

use std::sync::Arc;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::bus::Change;
use super::Cluster;

pub(super) async fn run(cluster: Arc<Cluster>, first: BoxStream<'static, Change>) {
    let mut events = Some(first);
    let mut attempt = 0;
    loop {
        if let Some(mut stream) = events.take() {
            loop {
                tokio::select! {
                    _ = cluster.stop.cancelled() => return,
                    next = stream.next() => match next {
                        Some(change) => {
                            attempt = 0;
                            cluster.replica.apply(change);
                        }
                        None => break,
                    },
                }
            }
            tracing::warn!("cluster: bus subscription lost; resubscribing");
        }
        if !super::backoff(&cluster.stop, &mut attempt).await {
            return;
        }
        let engine = cluster.engine();
        match engine.subscribe().await {
            Ok(stream) => match engine.snapshot().await {
                Ok(all) => {
                    cluster.replica.replace_all(all);
                    events = Some(stream);
                    tracing::info!("cluster: bus subscription back; replica reloaded");
                }
                Err(e) => tracing::warn!(error = %e, "cluster: directory not readable"),
            },
            Err(e) => tracing::warn!(error = %e, "cluster: cannot subscribe to the bus"),
        }
    }
}
