//! Compiles the vendored OpAMP .proto files with protox (a .proto parser in Rust, so no protoc
//! has to be installed) and generates the prost message types.

fn main() {
    let files = ["proto/opamp.proto", "proto/anyvalue.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"]).expect("compiling the OpAMP .proto files");
    prost_build::Config::new()
        .compile_fds(descriptors)
        .expect("generating the OpAMP messages");
}
