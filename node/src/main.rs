//! `strata-node`: a Strata storage node as its own process (also `strata node`).
use clap::Parser;

#[path = "../../src/component.rs"]
#[allow(dead_code)]
mod component;

/// mimalloc instead of glibc malloc: allocation was ~14% of a router's and
/// ~10% of a node's CPU per put under load (perf, issue 12).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "strata-node", version, about = component::NODE_ABOUT, long_about = component::NODE_LONG_ABOUT)]
struct Cli {
    #[command(flatten)]
    config: strata_node::NodeConfig,
    #[command(flatten)]
    runtime: component::RuntimeArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    component::serve("strata-node", &cli.runtime, strata_node::run(cli.config))
}
