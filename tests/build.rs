//! Generates the Kubernetes CRI client (`runtime.v1`, the API the kubelet speaks to
//! containerd) from the vendored proto, compiled by protox: no `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/cri/api.proto");
    let fds = protox::compile(["cri/api.proto"], ["proto"])?;
    tonic_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
