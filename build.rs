//! Compiles `proto/csi.proto` (CSI v1 Identity + Node) into Rust at build time: `protox`
//! parses it in pure Rust, so no system `protoc` is needed; `tonic-prost-build` generates the
//! messages, the server traits and the client stubs the tests use.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    let descriptors = protox::compile(["proto/csi.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // NodeStage/NodeExpand (and any other RPC tugboat does not serve) answer Unimplemented.
        .generate_default_stubs(true)
        // Messages carrying `secrets` get a hand-written, redacting Debug (src/csi/proto.rs).
        .skip_debug([
            "csi.v1.NodePublishVolumeRequest",
            "csi.v1.NodeStageVolumeRequest",
            "csi.v1.NodeExpandVolumeRequest",
        ])
        .compile_fds(descriptors)?;
    Ok(())
}
