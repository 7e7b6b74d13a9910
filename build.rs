//! Generates the wire types and the fraudline.v1.Scoring gRPC service from
//! proto/ with prost and tonic. The .proto files are compiled by protox (pure
//! Rust), so a fresh machine needs no protoc; the same descriptor set is
//! written to OUT_DIR for gRPC server reflection.
use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    git_hash();
    let files = [
        "proto/fraudline/v1/payment.proto",
        "proto/fraudline/v1/verdict.proto",
        "proto/fraudline/v1/deadletter.proto",
        "proto/fraudline/v1/blocklist.proto",
        "proto/fraudline/v1/scoring.proto",
        "proto/fraudline/v1/state.proto",
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

/// `FRAUDLINE_GIT_HASH` for `fraudline_build_info{git_hash}`: the short hash
/// of HEAD, "unknown" outside a git checkout (a source tarball, a Docker
/// build context without .git). `FRAUDLINE_GIT_HASH` in the environment wins
/// (the Dockerfile passes it as a build argument).
fn git_hash() {
    println!("cargo:rerun-if-env-changed=FRAUDLINE_GIT_HASH");
    let from_env = std::env::var("FRAUDLINE_GIT_HASH")
        .ok()
        .filter(|h| !h.is_empty());
    let hash = from_env.unwrap_or_else(|| {
        // Rebuild when HEAD moves: a checkout (HEAD) or a commit (the
        // branch's ref). Works in worktrees, where .git is a file.
        let branch = git(&["symbolic-ref", "-q", "HEAD"]);
        for r in ["HEAD"].into_iter().chain(branch.as_deref()) {
            if let Some(path) = git(&["rev-parse", "--git-path", r]) {
                if std::path::Path::new(&path).exists() {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
        }
        git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
    });
    println!("cargo:rustc-env=FRAUDLINE_GIT_HASH={hash}");
}

fn git(args: &[&str]) -> Option<String> {
    std::process::Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
