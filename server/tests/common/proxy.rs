//! A fault-injecting TCP proxy on the peer links of a loopback cluster.
//!
//! Member `i` listens for peers on `127.0.0.{11+i}` and advertises a proxy
//! port on 127.0.0.1. Ballast sends peer traffic from its listen address on
//! loopback, so the proxy knows which member every connection comes from
//! and can cut any pair of members apart, in both directions.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// The loopback address member `i` listens on for peers.
pub fn member_address(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11 + i as u8))
}

#[derive(Default)]
struct Links {
    cut: HashSet<(usize, usize)>,
    open: Vec<(usize, usize, AbortHandle)>,
}

/// One proxy per member, all sharing the set of cut links.
pub struct PeerProxies {
    links: Arc<Mutex<Links>>,
    size: usize,
    listeners: Vec<AbortHandle>,
}

impl PeerProxies {
    /// Proxies `listen[i]` (127.0.0.1) to member `i`'s real peer address `targets[i]`.
    pub async fn start(listen: &[u16], targets: &[SocketAddr]) -> Self {
        let links = Arc::new(Mutex::new(Links::default()));
        let mut listeners = Vec::new();
        for (to, (port, target)) in listen.iter().zip(targets).enumerate() {
            let listener = TcpListener::bind(("127.0.0.1", *port))
                .await
                .expect("bind peer proxy");
            let links = links.clone();
            let target = *target;
            let size = listen.len();
            let task = tokio::spawn(async move {
                loop {
                    let Ok((inbound, source)) = listener.accept().await else {
                        return;
                    };
                    let from = (0..size).find(|i| member_address(*i) == source.ip());
                    forward(links.clone(), inbound, from, to, target);
                }
            });
            listeners.push(task.abort_handle());
        }
        Self {
            links,
            size: listen.len(),
            listeners,
        }
    }

    /// Cuts member `i` off from every other member, both directions.
    pub fn isolate(&self, i: usize) {
        let mut links = self.links.lock().unwrap();
        for j in (0..self.size).filter(|j| *j != i) {
            links.cut.insert((i, j));
            links.cut.insert((j, i));
        }
        links.open.retain(|(from, to, task)| {
            let cut = *from == i || *to == i;
            if cut {
                task.abort();
            }
            !cut
        });
    }

    /// Cuts every link towards member `i` (connections the others open to
    /// it: the leader's AppendEntries), leaving the ones `i` opens to them
    /// (its forwarded reads and writes, its votes).
    pub fn cut_into(&self, i: usize) {
        let mut links = self.links.lock().unwrap();
        for j in (0..self.size).filter(|j| *j != i) {
            links.cut.insert((j, i));
        }
        links.open.retain(|(_, to, task)| {
            let cut = *to == i;
            if cut {
                task.abort();
            }
            !cut
        });
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.links.lock().unwrap().cut.clear();
    }
}

impl Drop for PeerProxies {
    fn drop(&mut self) {
        for listener in &self.listeners {
            listener.abort();
        }
        for (_, _, task) in self.links.lock().unwrap().open.drain(..) {
            task.abort();
        }
    }
}

fn forward(
    links: Arc<Mutex<Links>>,
    mut inbound: TcpStream,
    from: Option<usize>,
    to: usize,
    target: SocketAddr,
) {
    let mut guard = links.lock().unwrap();
    if from.is_some_and(|from| guard.cut.contains(&(from, to))) {
        return;
    }
    let task = tokio::spawn(async move {
        let Ok(mut outbound) = TcpStream::connect(target).await else {
            return;
        };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    });
    if let Some(from) = from {
        guard.open.push((from, to, task.abort_handle()));
    }
}
