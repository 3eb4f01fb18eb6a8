//! Compiles the startup CPU check (src/cpu_check.c) for the instruction set extensions this build
//! is compiled to use, as Cargo reports them (on x86-64, .cargo/config.toml asks for x86-64-v3
//! with AES-NI and PCLMULQDQ; RUSTFLAGS replaces that).

use std::fmt::Write as _;

/// GCC's `__builtin_cpu_supports` name for a Rust target feature beyond the x86-64 baseline.
fn gcc_name(rust: &str) -> Option<&'static str> {
    Some(match rust {
        "aes" => "aes",
        "pclmulqdq" => "pclmul",
        "sse3" => "sse3",
        "ssse3" => "ssse3",
        "sse4.1" => "sse4.1",
        "sse4.2" => "sse4.2",
        "popcnt" => "popcnt",
        "avx" => "avx",
        "avx2" => "avx2",
        "bmi1" => "bmi",
        "bmi2" => "bmi2",
        "fma" => "fma",
        "f16c" => "f16c",
        "lzcnt" => "lzcnt",
        "movbe" => "movbe",
        "xsave" => "xsave",
        "vaes" => "vaes",
        "vpclmulqdq" => "vpclmulqdq",
        "avx512f" => "avx512f",
        "avx512bw" => "avx512bw",
        "avx512cd" => "avx512cd",
        "avx512dq" => "avx512dq",
        "avx512vl" => "avx512vl",
        _ => return None,
    })
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/cpu_check.c");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("x86_64") {
        return;
    }
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let mut needs = String::from("#define KMSFS_CPU_NEEDS");
    for name in features.split(',').filter_map(gcc_name) {
        let _ = write!(needs, " NEED(\"{name}\")");
    }
    needs.push('\n');
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("cpu_needs.h"), needs).expect("writing cpu_needs.h");
    cc::Build::new()
        .file("src/cpu_check.c")
        .include(&out)
        // The baseline, whatever the Rust code is compiled for: the check must run anywhere.
        .flag("-march=x86-64")
        .flag("-mtune=generic")
        .warnings(true)
        .compile("kmsfs_cpu_check");
}
