fn main() {
    println!("cargo:rerun-if-changed=proto/strata.proto");
    println!("cargo:rerun-if-changed=proto/etcd");
    tonic_prost_build::configure()
        // Rare and large: kept off the stack of every snapshot header.
        .boxed(".strata.RangeSnapshotHeader.txn_intent")
        .compile_protos(&["proto/strata.proto"], &["proto"])
        .expect("compile proto/strata.proto (is protoc installed?)");
    // etcd's Auth, Lock and Election services, served by the router (see
    // proto/etcd/): one run, so the packages they share are generated once.
    tonic_prost_build::configure()
        .build_client(true)
        .compile_protos(
            &[
                "proto/etcd/auth.proto",
                "proto/etcd/v3lock.proto",
                "proto/etcd/v3election.proto",
            ],
            &["proto/etcd"],
        )
        .expect("compile proto/etcd/*.proto");
}
