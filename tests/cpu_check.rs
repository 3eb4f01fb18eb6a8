//! The startup CPU check (src/cpu_check.c), on CPUs emulated by qemu-user (Debian's
//! `qemu-user`, which `.ci/run` installs): a CPU without what the build was compiled for gets a
//! message and exit code 1, never an illegal instruction.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_kmsfs");

fn on_cpu(model: &str) -> Output {
    Command::new("qemu-x86_64")
        .args(["-cpu", model, BIN, "--version"])
        .output()
        .unwrap_or_else(|e| panic!("qemu-x86_64 (Debian package qemu-user): {e}"))
}

#[test]
#[cfg(target_arch = "x86_64")]
fn a_cpu_without_what_the_build_needs_is_refused_with_a_message() {
    // Westmere (2010): AES-NI and PCLMULQDQ, but no AVX, AVX2, BMI or FMA.
    let out = on_cpu("Westmere");
    let err = String::from_utf8_lossy(&out.stderr);
    if cfg!(target_feature = "avx2") {
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            err.contains("this CPU lacks: avx, avx2, bmi, bmi2"),
            "{err}"
        );
        assert!(err.contains("target-cpu=native"), "{err}");
        assert!(out.stdout.is_empty(), "{out:?}");
    } else {
        // A build for an older baseline (RUSTFLAGS) runs there.
        assert!(out.status.success(), "{out:?}");
    }
}

#[test]
#[cfg(target_arch = "x86_64")]
fn a_cpu_with_what_the_build_needs_runs_it() {
    // Haswell (2013): x86-64-v3 with AES-NI and PCLMULQDQ.
    let out = on_cpu("Haswell");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("kmsfs "),
        "{out:?}"
    );
}
