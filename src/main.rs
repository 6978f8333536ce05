//! `strata`: the operator CLI of Strata.
//!
//! `strata dev` starts a local cluster; `strata node|placement|router` run one component
//! in this process, exactly like the thin binaries `strata-node`, `strata-placement` and
//! `strata-router` (that is how `strata dev` starts its children, so it needs only its
//! own executable).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod certs;
mod component;
mod ctl;
mod dev;
mod robustness;

/// mimalloc instead of glibc malloc: allocation was ~14% of a router's and
/// ~10% of a node's CPU per put under load (perf, issue 12).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ABOUT: &str = "\
Strata: a distributed, reliable key-value store that speaks etcd's v3 API.
The keyspace is split into ranges, each one a Raft group replicated across storage nodes.";

#[derive(Parser)]
#[command(name = "strata", version, about = ABOUT, propagate_version = true)]
#[command(after_help = "Quick start: `strata dev`, then \
`ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:2379 put foo bar`.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local cluster (placement, 3 nodes, a router) serving etcd's API on 127.0.0.1:2379.
    #[command(long_about = dev::DEV_LONG_ABOUT)]
    Dev(dev::DevArgs),
    #[command(about = component::NODE_ABOUT, long_about = component::NODE_LONG_ABOUT)]
    Node {
        #[command(flatten)]
        config: strata_node::NodeConfig,
        #[command(flatten)]
        runtime: component::RuntimeArgs,
    },
    #[command(about = component::PLACEMENT_ABOUT, long_about = component::PLACEMENT_LONG_ABOUT)]
    Placement {
        #[command(flatten)]
        config: strata_placement::PlacementConfig,
        #[command(flatten)]
        runtime: component::RuntimeArgs,
    },
    #[command(about = component::ROUTER_ABOUT, long_about = component::ROUTER_LONG_ABOUT)]
    Router {
        #[command(flatten)]
        config: strata_router::RouterConfig,
        #[command(flatten)]
        runtime: component::RuntimeArgs,
    },
    #[command(about = ctl::CTL_ABOUT, long_about = ctl::CTL_LONG_ABOUT)]
    Ctl(ctl::CtlArgs),
    #[command(about = certs::CERTS_ABOUT, long_about = certs::CERTS_LONG_ABOUT)]
    Certs(certs::CertsArgs),
    #[command(about = robustness::ROBUSTNESS_ABOUT, long_about = robustness::ROBUSTNESS_LONG_ABOUT)]
    Robustness(robustness::RobustnessArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Dev(args) => dev::main(args),
        Command::Node { config, runtime } => {
            component::serve("strata node", &runtime, strata_node::run(config))
        }
        Command::Placement { config, runtime } => {
            component::serve("strata placement", &runtime, strata_placement::run(config))
        }
        Command::Router { config, runtime } => {
            component::serve("strata router", &runtime, strata_router::run(config))
        }
        Command::Ctl(args) => ctl::main(args),
        Command::Robustness(args) => robustness::main(args),
        Command::Certs(args) => certs::main(args),
    }
}
