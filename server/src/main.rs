use clap::Parser;
use tracing_subscriber::EnvFilter;

use ballast_server::config::Config;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    if config.version {
        print!("{}", Config::version_text());
        return Ok(());
    }
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},openraft=warn", config.tracing_level())));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Runtime::new()?.block_on(ballast_server::server::run(config))
}
