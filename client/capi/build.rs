//! Generates `xsk_client.h` with cbindgen into OUT_DIR (a unit test checks
//! that the checked-in `include/xsk_client.h` matches it). With
//! `XSK_CAPI_BLESS=1` the checked-in header is rewritten.

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("xsk_client.h");
    println!("cargo:rerun-if-changed=src/lib.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=XSK_CAPI_BLESS");
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml"))
        .unwrap_or_else(|e| panic!("reading cbindgen.toml: {e}"));
    let bindings = cbindgen::Builder::new()
        .with_crate(&dir)
        .with_config(config)
        .generate()
        .unwrap_or_else(|e| panic!("cbindgen: {e}"));
    bindings.write_to_file(&out);
    if std::env::var("XSK_CAPI_BLESS").as_deref() == Ok("1") {
        bindings.write_to_file(dir.join("include").join("xsk_client.h"));
    }
}
