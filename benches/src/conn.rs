//! gRPC connections to the endpoints under test.

use std::time::Duration;

use anyhow::{Context, bail};
use tonic::transport::{Channel, Endpoint};

use crate::options::Options;

/// How long one connection may take to establish; loopback servers answer
/// at once, so a longer wait means the endpoint is wrong or down.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens `--conns` connections, spread round-robin over the endpoints (or
/// all to the leader with `--target-leader`). Each tonic `Channel` made by
/// `connect` is one HTTP/2 connection.
pub async fn connect(options: &Options) -> anyhow::Result<Vec<Channel>> {
    let targets = if options.target_leader {
        &options.endpoints[..1]
    } else {
        &options.endpoints[..]
    };
    let mut channels = Vec::with_capacity(options.conns);
    for i in 0..options.conns {
        let target = &targets[i % targets.len()];
        let endpoint = Endpoint::from_shared(uri(target)?)
            .with_context(|| format!("invalid endpoint {target:?}"))?
            .connect_timeout(DIAL_TIMEOUT)
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to {target}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Accepts etcdctl's endpoint forms: `host:port` and `http://host:port`.
fn uri(endpoint: &str) -> anyhow::Result<String> {
    match endpoint.split_once("://") {
        None => Ok(format!("http://{endpoint}")),
        Some(("http", _)) => Ok(endpoint.to_string()),
        Some((scheme, _)) => bail!("unsupported scheme {scheme:?} in {endpoint:?} (only http)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_and_http_endpoints_are_accepted() {
        assert_eq!(uri("127.0.0.1:2379").unwrap(), "http://127.0.0.1:2379");
        assert_eq!(uri("http://[::1]:1").unwrap(), "http://[::1]:1");
        assert!(uri("https://127.0.0.1:2379").is_err());
    }
}
