//! The flags every workload shares, named as in etcd's `tools/benchmark`.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct Options {
    /// gRPC endpoints, comma-separated (`host:port` or `http://host:port`).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,

    /// gRPC connections (HTTP/2 connections); clients are spread over them.
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,

    /// Concurrent request loops; each waits for its response before sending the next.
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,

    /// Number of requests to send.
    #[arg(
        long,
        global = true,
        default_value_t = 10_000,
        conflicts_with = "duration"
    )]
    pub total: u64,

    /// Send requests for this long instead of a fixed total (`30s`, `500ms`, `2m`).
    #[arg(long, global = true, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Key size in bytes; keys are zero-padded decimal numbers.
    #[arg(long, global = true, default_value_t = 8)]
    pub key_size: usize,

    /// Value size in bytes.
    #[arg(long, global = true, default_value_t = 8)]
    pub val_size: usize,

    /// Number of distinct keys the workload draws from.
    #[arg(long, global = true, default_value_t = 1)]
    pub key_space_size: u64,

    /// Use keys 0, 1, 2, ... (modulo the key space) instead of random keys.
    #[arg(long, global = true)]
    pub sequential_keys: bool,

    /// Cap on requests per second over all clients; 0 for no cap.
    #[arg(long, global = true, default_value_t = 0)]
    pub rate: u64,

    /// Print the result as one JSON line instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// Send every request to the leader. Until multi-member clusters land
    /// this takes the first endpoint to be the leader.
    #[arg(long, global = true)]
    pub target_leader: bool,
}

/// When a run stops issuing requests.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    Total(u64),
    Duration(Duration),
}

impl Options {
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(!self.endpoints.is_empty(), "--endpoints is empty");
        ensure!(self.conns >= 1, "--conns must be at least 1");
        ensure!(self.clients >= 1, "--clients must be at least 1");
        ensure!(
            self.key_space_size >= 1,
            "--key-space-size must be at least 1"
        );
        let widest = (self.key_space_size - 1).to_string().len();
        ensure!(
            self.key_size >= widest,
            "--key-size {} cannot hold key {} of a key space of {} (needs {widest} bytes)",
            self.key_size,
            self.key_space_size - 1,
            self.key_space_size
        );
        if self.duration.is_none() {
            ensure!(self.total >= 1, "--total must be at least 1");
        }
        Ok(())
    }

    pub fn limit(&self) -> Limit {
        match self.duration {
            Some(duration) => Limit::Duration(duration),
            None => Limit::Total(self.total),
        }
    }
}

/// Parses `1.5s`, `500ms`, `2m`, `1h` or a bare number of seconds.
fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("invalid duration {text:?}"))?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => bail!("invalid duration unit {unit:?} in {text:?} (use ms, s, m or h)"),
    };
    ensure!(seconds > 0.0, "duration {text:?} must be positive");
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_the_usual_units() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
