//! Async client for Ballast, or any etcd v3 compatible server.
//!
//! [`Client::connect`] takes endpoints the way `etcdctl --endpoints` does
//! (`127.0.0.1:2379` or `http://127.0.0.1:2379`), dials them in order and
//! keeps a tonic channel to the first one that answers. Its methods are thin
//! wrappers over the generated KV, Maintenance and Cluster gRPC clients from
//! [`ballast_proto`]: they send exactly the request described by their
//! arguments and return the server's response or its gRPC [`Status`]. The
//! option structs mirror the request messages field by field, minus the key
//! (and value), so that callers need not build requests by hand.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use ballast_client::{Client, GetOptions, PutOptions, prefix_range_end};
//!
//! let client = Client::connect(&["127.0.0.1:2379"], Duration::from_secs(2)).await?;
//! client.put("greeting", "hello", PutOptions::default()).await?;
//! let options = GetOptions { range_end: prefix_range_end(b"greet"), ..Default::default() };
//! let response = client.get("greet", options).await?;
//! assert_eq!(response.kvs[0].value, "hello");
//! # Ok(())
//! # }
//! ```
//!
//! Only plaintext `http` endpoints are supported.

use std::fmt;
use std::time::Duration;

use ballast_proto::etcdserverpb::cluster_client::ClusterClient;
use ballast_proto::etcdserverpb::kv_client::KvClient;
use ballast_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use ballast_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use ballast_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    MemberListRequest, MemberListResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    StatusRequest, StatusResponse, TxnRequest, TxnResponse,
};
use bytes::Bytes;
use tonic::transport::{Channel, Endpoint};

pub use ballast_proto;
pub use tonic::Status;

/// The `range_end` that makes a range cover every key from `key` upwards
/// (etcd's "from key" range).
pub const FROM_KEY_RANGE_END: &[u8] = b"\0";

/// The `range_end` that makes a range cover every key starting with `prefix`:
/// the prefix with its last byte below 0xff incremented and the rest dropped.
/// A prefix made only of 0xff bytes has no such end; the range then runs to
/// the end of the keyspace ([`FROM_KEY_RANGE_END`]), as in etcd's clientv3.
pub fn prefix_range_end(prefix: &[u8]) -> Bytes {
    match prefix.iter().rposition(|&b| b < 0xff) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end.into()
        }
        None => Bytes::from_static(FROM_KEY_RANGE_END),
    }
}

/// Why [`Client::connect`] found no usable endpoint.
#[derive(Debug)]
pub enum ConnectError {
    /// The endpoint list was empty.
    NoEndpoints,
    /// An endpoint is not a valid `host:port` or `http://host:port` address.
    InvalidEndpoint { endpoint: String, reason: String },
    /// Every endpoint failed to connect within the dial timeout; one
    /// `(endpoint, reason)` pair per endpoint, in the order tried.
    Unreachable(Vec<(String, String)>),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::NoEndpoints => write!(f, "no endpoints given"),
            ConnectError::InvalidEndpoint { endpoint, reason } => {
                write!(f, "invalid endpoint {endpoint:?}: {reason}")
            }
            ConnectError::Unreachable(failures) => {
                write!(f, "no endpoint could be reached")?;
                for (endpoint, reason) in failures {
                    write!(f, "; {endpoint}: {reason}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConnectError {}

/// Turns an etcdctl-style endpoint into a URI tonic can dial.
fn endpoint_uri(endpoint: &str) -> Result<String, ConnectError> {
    let invalid = |reason: &str| ConnectError::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    match endpoint.split_once("://") {
        None => Ok(format!("http://{endpoint}")),
        Some(("http", _)) => Ok(endpoint.to_string()),
        Some(("https", _)) => Err(invalid("TLS endpoints are not supported")),
        Some(_) => Err(invalid("unsupported scheme (only http is supported)")),
    }
}

/// Options of a range read ([`Client::get`]): the fields of a
/// [`RangeRequest`] other than its key. The default reads a single key,
/// linearizably, at the current revision.
#[derive(Clone, Debug, Default)]
pub struct GetOptions {
    /// End of the range, exclusive; empty for the key alone. See
    /// [`prefix_range_end`] and [`FROM_KEY_RANGE_END`].
    pub range_end: Bytes,
    /// Maximum number of keys returned; 0 for no limit.
    pub limit: i64,
    /// Revision to read at; 0 or less for the current one.
    pub revision: i64,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    /// Serve the read from the local member without a quorum round.
    pub serializable: bool,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

impl GetOptions {
    /// The [`RangeRequest`] for `key` with these options, e.g. for a
    /// transaction operation.
    pub fn into_request(self, key: impl Into<Bytes>) -> RangeRequest {
        RangeRequest {
            key: key.into(),
            range_end: self.range_end,
            limit: self.limit,
            revision: self.revision,
            sort_order: self.sort_order.into(),
            sort_target: self.sort_target.into(),
            serializable: self.serializable,
            keys_only: self.keys_only,
            count_only: self.count_only,
            min_mod_revision: self.min_mod_revision,
            max_mod_revision: self.max_mod_revision,
            min_create_revision: self.min_create_revision,
            max_create_revision: self.max_create_revision,
        }
    }
}

/// Options of a write ([`Client::put`]): the fields of a [`PutRequest`] other
/// than its key and value.
#[derive(Clone, Debug, Default)]
pub struct PutOptions {
    /// Lease to attach the key to; 0 for none.
    pub lease: i64,
    /// Return the key-value pair as it was before the write.
    pub prev_kv: bool,
    /// Keep the key's current value (the value argument must be empty).
    pub ignore_value: bool,
    /// Keep the key's current lease (`lease` must be 0).
    pub ignore_lease: bool,
}

impl PutOptions {
    /// The [`PutRequest`] writing `value` to `key` with these options.
    pub fn into_request(self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> PutRequest {
        PutRequest {
            key: key.into(),
            value: value.into(),
            lease: self.lease,
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        }
    }
}

/// Options of a range delete ([`Client::delete`]): the fields of a
/// [`DeleteRangeRequest`] other than its key.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    /// End of the range, exclusive; empty for the key alone.
    pub range_end: Bytes,
    /// Return the deleted key-value pairs.
    pub prev_kv: bool,
}

impl DeleteOptions {
    /// The [`DeleteRangeRequest`] for `key` with these options.
    pub fn into_request(self, key: impl Into<Bytes>) -> DeleteRangeRequest {
        DeleteRangeRequest {
            key: key.into(),
            range_end: self.range_end,
            prev_kv: self.prev_kv,
        }
    }
}

/// A connection to one member of an etcd v3 compatible cluster.
///
/// Cloning is cheap and shares the underlying channel.
#[derive(Clone, Debug)]
pub struct Client {
    endpoint: String,
    channel: Channel,
    kv: KvClient<Channel>,
    maintenance: MaintenanceClient<Channel>,
    cluster: ClusterClient<Channel>,
}

impl Client {
    /// Dials `endpoints` in order, giving each up to `dial_timeout`, and
    /// returns a client for the first that connects.
    pub async fn connect<S: AsRef<str>>(
        endpoints: &[S],
        dial_timeout: Duration,
    ) -> Result<Client, ConnectError> {
        if endpoints.is_empty() {
            return Err(ConnectError::NoEndpoints);
        }
        // Validate the whole list first so a typo is reported even when an
        // earlier endpoint would have answered.
        let mut targets = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let endpoint = endpoint.as_ref();
            let uri = endpoint_uri(endpoint)?;
            let target = Endpoint::from_shared(uri).map_err(|e| ConnectError::InvalidEndpoint {
                endpoint: endpoint.to_string(),
                reason: e.to_string(),
            })?;
            targets.push((endpoint, target.connect_timeout(dial_timeout)));
        }
        let mut failures = Vec::new();
        for (endpoint, target) in targets {
            match tokio::time::timeout(dial_timeout, target.connect()).await {
                Ok(Ok(channel)) => return Ok(Client::from_channel(endpoint, channel)),
                Ok(Err(e)) => failures.push((endpoint.to_string(), error_chain(&e))),
                Err(_) => failures.push((endpoint.to_string(), "dial timed out".to_string())),
            }
        }
        Err(ConnectError::Unreachable(failures))
    }

    /// Wraps an already established channel; `endpoint` only labels it.
    pub fn from_channel(endpoint: impl Into<String>, channel: Channel) -> Client {
        Client {
            endpoint: endpoint.into(),
            kv: KvClient::new(channel.clone()),
            maintenance: MaintenanceClient::new(channel.clone()),
            cluster: ClusterClient::new(channel.clone()),
            channel,
        }
    }

    /// The endpoint this client is connected to, as it was given.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The underlying channel, for services this client does not wrap
    /// (watch, lease, auth, ...).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// `KV.Range` for `key` with `options`.
    pub async fn get(
        &self,
        key: impl Into<Bytes>,
        options: GetOptions,
    ) -> Result<RangeResponse, Status> {
        let request = options.into_request(key);
        Ok(self.kv.clone().range(request).await?.into_inner())
    }

    /// `KV.Put` of `value` under `key` with `options`.
    pub async fn put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        options: PutOptions,
    ) -> Result<PutResponse, Status> {
        let request = options.into_request(key, value);
        Ok(self.kv.clone().put(request).await?.into_inner())
    }

    /// `KV.DeleteRange` for `key` with `options`.
    pub async fn delete(
        &self,
        key: impl Into<Bytes>,
        options: DeleteOptions,
    ) -> Result<DeleteRangeResponse, Status> {
        let request = options.into_request(key);
        Ok(self.kv.clone().delete_range(request).await?.into_inner())
    }

    /// `KV.Txn` with `request` as is.
    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, Status> {
        Ok(self.kv.clone().txn(request).await?.into_inner())
    }

    /// `KV.Compact` up to `revision`; with `physical`, the response waits
    /// until the compacted revisions are removed from the backend.
    pub async fn compact(
        &self,
        revision: i64,
        physical: bool,
    ) -> Result<CompactionResponse, Status> {
        let request = CompactionRequest { revision, physical };
        Ok(self.kv.clone().compact(request).await?.into_inner())
    }

    /// `Maintenance.Status` of the member this client is connected to.
    pub async fn status(&self) -> Result<StatusResponse, Status> {
        let response = self.maintenance.clone().status(StatusRequest {}).await?;
        Ok(response.into_inner())
    }

    /// `Cluster.MemberList`.
    pub async fn member_list(&self) -> Result<MemberListResponse, Status> {
        let request = MemberListRequest::default();
        Ok(self
            .cluster
            .clone()
            .member_list(request)
            .await?
            .into_inner())
    }
}

/// An error with its sources, since tonic's transport errors keep the useful
/// part (e.g. "Connection refused") in the source chain.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_end_increments_last_byte_below_ff() {
        assert_eq!(prefix_range_end(b"abc"), Bytes::from_static(b"abd"));
        assert_eq!(prefix_range_end(b"a\xff"), Bytes::from_static(b"b"));
        assert_eq!(prefix_range_end(b"\xff\xff"), Bytes::from_static(b"\0"));
        assert_eq!(prefix_range_end(b""), Bytes::from_static(b"\0"));
    }

    #[test]
    fn endpoints_accept_bare_and_http_addresses_only() {
        assert_eq!(
            endpoint_uri("127.0.0.1:2379").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(endpoint_uri("http://h:1").unwrap(), "http://h:1");
        assert!(endpoint_uri("https://h:1").is_err());
        assert!(endpoint_uri("unix://sock").is_err());
    }
}
