//! Generates the gRPC server (and, for tests, client) of containerd's Snapshots
//! service from the vendored protos. protox compiles them in Rust, so the build
//! needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/services/snapshots/v1/snapshots.proto"];
    for p in protos.iter().chain(&["proto/types/mount.proto"]) {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
