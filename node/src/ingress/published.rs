//! Published ports (`docker run -p`, `skiff run -p`): the data plane's half of a
//! container's ports. The container supervisor asks for them before its container
//! starts (a taken port fails the start before anything runs), then hands over the
//! container they serve; they stop with the container or the node.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Ingress, Target, serve};
use crate::container::Container;

/// Ports bound, all of them, not yet serving.
pub(crate) struct Bound {
    listeners: Vec<TcpListener>,
}

/// Binds every address of `addrs`, or none: the first that cannot be bound is the
/// error, with why.
pub(crate) async fn bind(addrs: &[SocketAddr]) -> Result<Bound, (SocketAddr, std::io::Error)> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        listeners.push(TcpListener::bind(addr).await.map_err(|e| (*addr, e))?);
    }
    Ok(Bound { listeners })
}

impl Bound {
    /// Serves `container` on every port until `stop`, each then letting requests in
    /// flight finish (up to `drain`).
    pub(crate) fn serve(
        self,
        ingress: &Arc<Ingress>,
        container: &Arc<Container>,
        stop: &CancellationToken,
        drain: Duration,
    ) -> Vec<JoinHandle<()>> {
        self.listeners
            .into_iter()
            .map(|listener| {
                tokio::spawn(serve(
                    listener,
                    ingress.clone(),
                    Target::Fixed(container.clone()),
                    stop.clone(),
                    drain,
                ))
            })
            .collect()
    }
}
