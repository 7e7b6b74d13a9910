//! Generates the wire types from proto/ with prost. The .proto files are
//! compiled by protox (pure Rust), so a fresh machine needs no protoc.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/fraudline/v1/payment.proto",
        "proto/fraudline/v1/verdict.proto",
        "proto/fraudline/v1/deadletter.proto",
        "proto/fraudline/v1/blocklist.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        .btree_map(["."])
        .compile_fds(fds)?;
    Ok(())
}
