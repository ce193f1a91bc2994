//! Command-line flags with etcd's names and `ETCD_*` environment variables.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// The etcd API version Ballast serves; kube-apiserver gates features on it.
pub const ETCD_API_VERSION: &str = "3.5.17";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "ballast",
    about = "Ballast: a Raft-replicated key-value store that speaks the etcd v3 API",
    disable_version_flag = true
)]
pub struct Config {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,

    /// Path to the data directory [default: <name>.ballast].
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// List of URLs to listen on for client traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub listen_client_urls: String,

    /// List of this member's client URLs to advertise to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub advertise_client_urls: String,

    /// List of URLs to listen on for peer traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub listen_peer_urls: String,

    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub initial_advertise_peer_urls: String,

    /// Initial cluster configuration for bootstrapping [default: <name>=<initial-advertise-peer-urls>].
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// Initial cluster state ('new' or 'existing').
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new",
          value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,

    /// Initial cluster token for the cluster during bootstrap.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,

    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: u32,

    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: u32,

    /// Raise alarms when backend size exceeds the given quota (0 defaults to low space quota).
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: i64,

    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,

    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,

    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,

    /// Duration of periodic watch progress notifications.
    #[arg(long, env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "10m",
          value_parser = parse_duration)]
    pub experimental_watch_progress_notify_interval: Duration,

    /// Log level: debug, info, warn, error, panic, or fatal.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info",
          value_parser = ["debug", "info", "warn", "error", "panic", "fatal"])]
    pub log_level: String,

    /// Print the version and exit.
    #[arg(long)]
    pub version: bool,
}

impl Config {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.ballast", self.name)))
    }

    pub fn initial_cluster(&self) -> String {
        self.initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={}", self.name, self.initial_advertise_peer_urls))
    }

    /// The `tracing` filter for `--log-level` (etcd's panic and fatal log errors only).
    pub fn tracing_level(&self) -> &'static str {
        match self.log_level.as_str() {
            "debug" => "debug",
            "info" => "info",
            "warn" => "warn",
            _ => "error",
        }
    }

    /// etcd refuses intervals under 100 ms; so do we, by raising them.
    pub fn watch_progress_notify_interval(&self) -> Duration {
        self.experimental_watch_progress_notify_interval
            .max(Duration::from_millis(100))
    }

    pub fn version_text() -> String {
        format!(
            "ballast Version: {}\netcd API Version: {ETCD_API_VERSION}\n",
            env!("CARGO_PKG_VERSION")
        )
    }
}

/// Parses a Go-style duration such as `10m`, `100ms` or `1m30s`.
fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

/// Splits etcd's comma-separated URL lists.
pub fn url_list(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

/// The `host:port` of an `http://host:port` URL.
pub fn host_port(url: &str) -> anyhow::Result<String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        anyhow::anyhow!("unsupported URL scheme in {url:?} (only http:// for now)")
    })?;
    Ok(rest.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_etcd() {
        let config = Config::parse_from(["ballast"]);
        assert_eq!(config.data_dir(), PathBuf::from("default.ballast"));
        assert_eq!(config.initial_cluster(), "default=http://localhost:2380");
        assert_eq!(config.max_request_bytes, 1_572_864);
        assert_eq!(config.max_txn_ops, 128);
        assert_eq!(
            config.watch_progress_notify_interval(),
            Duration::from_secs(600)
        );
        let fast = Config::parse_from([
            "ballast",
            "--experimental-watch-progress-notify-interval=1m30s",
        ]);
        assert_eq!(
            fast.watch_progress_notify_interval(),
            Duration::from_secs(90)
        );
    }

    #[test]
    fn unknown_flags_are_rejected() {
        assert!(Config::try_parse_from(["ballast", "--no-such-flag"]).is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(
            url_list("http://a:1, http://b:2"),
            vec!["http://a:1", "http://b:2"]
        );
        assert_eq!(
            host_port("http://127.0.0.1:2379").unwrap(),
            "127.0.0.1:2379"
        );
        assert!(host_port("unix://x").is_err());
    }
}
