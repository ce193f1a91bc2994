//! Compiles the etcd v3 protos with protox (no system `protoc` needed) and
//! generates prost messages plus tonic clients and servers.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTO_ROOT: &str = "protos";

const PROTO_FILES: &[&str] = &[
    "protos/mvccpb/kv.proto",
    "protos/authpb/auth.proto",
    "protos/etcdserverpb/rpc.proto",
    "protos/v3lockpb/v3lock.proto",
    "protos/v3electionpb/v3election.proto",
    "protos/ballast/raftpb.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");

    let fds = protox::compile(PROTO_FILES, [PROTO_ROOT])?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // RPCs a server does not implement answer gRPC `Unimplemented`, the
        // code etcd clients fall back on.
        .generate_default_stubs(true)
        .bytes(".")
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .compile_fds(fds)?;

    Ok(())
}
