// Compiles proto/teepay.proto with the pure-Rust `protox`, so no `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/teepay.proto");
    let fds = protox::compile(["proto/teepay.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
