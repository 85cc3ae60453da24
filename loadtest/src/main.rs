//! `banter-load`: flags, the runtime, printing the report, the exit code.

use banter_load::cli::Cli;
use clap::Parser;
use std::process::ExitCode;

/// glibc's malloc spent 40 % of the tool's main thread in `_int_malloc`
/// while 20,000 members joined a room (fragmented bins); mimalloc does not.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // 4 KiB pages, as in the node (see its `main`): with transparent huge
    // pages a run's first touches of 10,000 connections' memory zeroed
    // 2 MiB at a time, a tenth of the machine while a room filled.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("banter-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = match runtime.block_on(banter_load::run(&cli.command)) {
        Ok(Some(report)) => report,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("banter-load: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // Sockets still closing must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    println!("{}", report.table());
    let json = report.json_line();
    match &cli.json {
        Some(path) => {
            if let Err(e) = std::fs::write(path, format!("{json}\n")) {
                eprintln!("banter-load: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
        None => println!("{json}"),
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "banter-load: {}: the run found problems (see the table)",
            report.scenario
        );
        ExitCode::from(3)
    }
}
