//! `strata-router`: a Strata router (etcd v3 endpoint) as its own process (also `strata router`).
use clap::Parser;

#[path = "../../src/component.rs"]
#[allow(dead_code)]
mod component;

/// mimalloc instead of glibc malloc: allocation was ~14% of a router's and
/// ~10% of a node's CPU per put under load (perf, issue 12).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "strata-router", version, about = component::ROUTER_ABOUT, long_about = component::ROUTER_LONG_ABOUT)]
struct Cli {
    #[command(flatten)]
    config: strata_router::RouterConfig,
    #[command(flatten)]
    runtime: component::RuntimeArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    component::serve(
        "strata-router",
        &cli.runtime,
        strata_router::run(cli.config),
    )
}
