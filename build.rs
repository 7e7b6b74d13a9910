//! Generates the wire types and the fraudline.v1.Scoring gRPC service from
//! proto/ with prost and tonic. The .proto files are compiled by protox (pure
//! Rust), so a fresh machine needs no protoc; the same descriptor set is
//! written to OUT_DIR for gRPC server reflection.
use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/fraudline/v1/payment.proto",
        "proto/fraudline/v1/verdict.proto",
        "proto/fraudline/v1/deadletter.proto",
        "proto/fraudline/v1/blocklist.proto",
        "proto/fraudline/v1/scoring.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("fraudline_descriptor.bin"), fds.encode_to_vec())?;
    let mut config = prost_build::Config::new();
    config.btree_map(["."]);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds_with_config(fds, config)?;
    Ok(())
}
