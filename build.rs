//! Compiles the startup CPU check (src/cpu_check.c) for the instruction set extensions this build
//! is compiled to use, as Cargo reports them (on x86-64, .cargo/config.toml asks for x86-64-v3
//! with AES-NI and PCLMULQDQ; RUSTFLAGS replaces that).

use std::fmt::Write as _;

/// Target features every x86-64 CPU has (or that are not CPU features).
const BASELINE: &[&str] = &["fxsr", "sse", "sse2", "x87", "crt-static"];

/// Features whose name GCC's `__builtin_cpu_supports` (GCC 12 or later) spells as Rust does.
const SAME_NAME: &[&str] = &[
    "adx",
    "aes",
    "avx",
    "avx2",
    "avx512bf16",
    "avx512bitalg",
    "avx512bw",
    "avx512cd",
    "avx512dq",
    "avx512f",
    "avx512fp16",
    "avx512ifma",
    "avx512vbmi",
    "avx512vbmi2",
    "avx512vl",
    "avx512vnni",
    "avx512vpopcntdq",
    "avxvnni",
    "bmi2",
    "cmpxchg16b",
    "f16c",
    "fma",
    "fma4",
    "gfni",
    "lzcnt",
    "movbe",
    "popcnt",
    "rdseed",
    "sha",
    "sse3",
    "sse4.1",
    "sse4.2",
    "sse4a",
    "ssse3",
    "vaes",
    "vpclmulqdq",
    "xop",
    "xsave",
    "xsavec",
    "xsaveopt",
    "xsaves",
];

/// GCC's name for a Rust target feature beyond the baseline, if it can test it.
fn gcc_name(rust: &str) -> Option<&str> {
    match rust {
        "bmi1" => Some("bmi"),
        "pclmulqdq" => Some("pclmul"),
        "rdrand" => Some("rdrnd"),
        f => SAME_NAME.contains(&f).then_some(f),
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/cpu_check.c");
    // The target features come from these (a build with --target does not rerun otherwise).
    println!("cargo:rerun-if-env-changed=RUSTFLAGS");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("x86_64") {
        return;
    }
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let mut needs = String::from("#define KMSFS_CPU_NEEDS");
    for f in features
        .split(',')
        .filter(|f| !f.is_empty() && !BASELINE.contains(f))
    {
        match gcc_name(f) {
            Some(name) => {
                let _ = write!(needs, " NEED(\"{name}\")");
            }
            None => println!("cargo:warning=the startup CPU check cannot test target feature {f}"),
        }
    }
    needs.push('\n');
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("cpu_needs.h"), needs).expect("writing cpu_needs.h");
    cc::Build::new()
        .file("src/cpu_check.c")
        .include(&out)
        // The baseline, whatever the Rust code is compiled for: the check must run anywhere
        // (cpu_check.c refuses to compile otherwise).
        .inherit_rustflags(false)
        .flag("-march=x86-64")
        .flag("-mtune=generic")
        .warnings(true)
        .compile("kmsfs_cpu_check");
}
