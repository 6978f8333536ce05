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
    // The HTTP/JSON gateway's descriptor set (`GATEWAY_DESCRIPTORS`): every
    // etcd service it maps, with their imports. Descriptor only: the Rust code
    // prost writes alongside goes to a directory nothing includes.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let unused = out.join("gateway-unused");
    std::fs::create_dir_all(&unused).expect("create OUT_DIR/gateway-unused");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .out_dir(&unused)
        .file_descriptor_set_path(out.join("gateway_descriptors.bin"))
        .compile_protos(
            &[
                "proto/etcd/rpc.proto",
                "proto/etcd/v3lock.proto",
                "proto/etcd/v3election.proto",
            ],
            &["proto/etcd"],
        )
        .expect("compile the gateway's descriptor set");
}
