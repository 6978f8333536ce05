fn main() {
    println!("cargo:rerun-if-changed=proto/strata.proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/strata.proto"], &["proto"])
        .expect("compile proto/strata.proto (is protoc installed?)");
}
