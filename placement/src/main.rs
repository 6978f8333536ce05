//! `strata-placement`: the Strata placement service as its own process (also `strata placement`).
use clap::Parser;

#[path = "../../src/component.rs"]
#[allow(dead_code)]
mod component;

/// mimalloc instead of glibc malloc: allocation was ~14% of a router's and
/// ~10% of a node's CPU per put under load (perf, issue 12).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "strata-placement", version, about = component::PLACEMENT_ABOUT, long_about = component::PLACEMENT_LONG_ABOUT)]
struct Cli {
    #[command(flatten)]
    config: strata_placement::PlacementConfig,
    #[command(flatten)]
    runtime: component::RuntimeArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    component::serve(
        "strata-placement",
        &cli.runtime,
        strata_placement::run(cli.config),
    )
}
