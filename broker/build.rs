//! Compiles the BPF LSM program (bpf/xsk_confine.bpf.c) with clang into
//! `$OUT_DIR/xsk_confine.bpf.o`, which confine.rs embeds, and the C file
//! that formats libxdp's messages (csrc/libxdp_log.c).
//!
//! libbpf's headers (bpf_helpers.h, bpf_tracing.h) come from the libbpf-sys
//! build (`DEP_BPF_INCLUDE`), else from /usr/include (Debian's libbpf-dev).
//! `CLANG` names another clang.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    // libxdp's diagnostics are printf-style with a va_list, which only C can
    // take portably: a small C file formats them for the Rust logger.
    println!("cargo:rerun-if-changed=csrc/libxdp_log.c");
    cc::Build::new()
        .file("csrc/libxdp_log.c")
        .warnings(true)
        .compile("xsk_broker_libxdp_log");

    let src = "bpf/xsk_confine.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("xsk_confine.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let (target_arch, multiarch) = match arch.as_str() {
        "x86_64" => ("x86", "x86_64-linux-gnu"),
        "aarch64" => ("arm64", "aarch64-linux-gnu"),
        "riscv64" => ("riscv", "riscv64-linux-gnu"),
        "s390x" => ("s390", "s390x-linux-gnu"),
        "powerpc64" => ("powerpc", "powerpc64le-linux-gnu"),
        other => panic!("building the BPF LSM program: no BPF target name for {other}"),
    };
    let mut cmd = Command::new(&clang);
    cmd.args(["-g", "-O2", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-D__TARGET_ARCH_{target_arch}"));
    if let Some(inc) = std::env::var_os("DEP_BPF_INCLUDE") {
        cmd.arg("-I").arg(inc);
    }
    let multiarch_inc = Path::new("/usr/include").join(multiarch);
    if multiarch_inc.is_dir() {
        // asm/types.h, which linux/types.h includes.
        cmd.arg("-I").arg(multiarch_inc);
    }
    cmd.args(["-c", src, "-o"]).arg(&out);
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed ({s}) compiling {src}; see its messages above"),
        Err(e) => panic!(
            "cannot run {clang} to compile {src}: {e}; install clang and llvm \
             (scripts/install-deps) or set CLANG"
        ),
    }
}
