//! `banter-node`: configuration, logging, bind, run, exit codes. The only
//! place that reads flags and the environment.

use banter_node::config::{Config, LogFormat, Overrides};
use banter_node::{Node, run};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// mimalloc rather than glibc's malloc: glibc spent about a fifth of the
/// node in `_int_malloc`, `malloc_consolidate` and `free` on the chat path
/// (every frame, command and envelope allocates). With mimalloc a message
/// costs 18 % less node CPU in `banter-load rooms` (BENCHMARKS.md); an idle
/// socket costs about 0.5 KiB more.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A horizontally scaled WebSocket chat relay node.
#[derive(Debug, Parser)]
#[command(name = "banter-node", version, about)]
struct Args {
    /// A TOML configuration file (see README: Configuration).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// HTTP + WebSocket address (`server.listen`), e.g. 0.0.0.0:8080.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Redis URL (`redis.url`): join the cluster that shares this Redis.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Redis Cluster seed nodes, comma-separated (`redis.url` with
    /// `redis.mode = "cluster"`): rooms spread over the shards.
    #[arg(long, value_name = "URL[,URL..]", conflicts_with = "redis")]
    redis_cluster: Option<String>,
    /// This node's id (`node.id`).
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    // No transparent huge pages: mimalloc asks for them, and a node that
    // grows then zeroes 2 MiB at each first touch (`clear_page_erms` was
    // 8 % of a node filling a 20,000-member room). With 4 KiB pages the
    // joined member costs 7.1-7.6 KiB instead of 8.3-8.5 (BENCHMARKS.md).
    // Best effort: a kernel without the switch keeps them.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let args = Args::parse();
    let overrides = Overrides {
        listen: args.listen,
        redis: args.redis,
        redis_cluster: args.redis_cluster,
        node_id: args.node_id,
    };
    let config = match Config::load(args.config.as_deref(), "BANTER", &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("banter-node: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    if let Err(e) = init_logging(&config) {
        eprintln!("banter-node: invalid configuration: key `log.level`: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("banter-node: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("banter-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = config.server.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let node = Node::connect(config).await?;
    if node.config().redis.url.is_empty() {
        tracing::info!("no redis.url: in-memory bus and presence (single node)");
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    run(listener, node, shutdown).await?;
    Ok(())
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    shutdown.cancel();
}

fn init_logging(config: &Config) -> Result<(), String> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(&config.log.level).map_err(|e| e.to_string())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| e.to_string())
}
