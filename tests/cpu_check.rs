//! The startup CPU check (src/cpu_check.c), on CPUs emulated by qemu-user 7.2 or later (Debian's
//! `qemu-user`, which `.ci/run` installs): a CPU without what the build was compiled for gets a
//! message and exit code 1, never an illegal instruction; one with it runs the build, and its
//! AES-GCM (the `aes` crate's AES-NI backend there, where this host may use VAES) agrees with
//! this host's.
#![cfg(target_arch = "x86_64")]

mod common;

use common::{Env, feed};
use std::process::{Command, Output};

fn run_on(cpu: &str, e: &Env, args: &[&str], stdin: &[u8]) -> Output {
    if let Err(err) = Command::new("qemu-x86_64").arg("--version").output() {
        panic!("qemu-x86_64 (Debian package qemu-user) is needed: {err}");
    }
    feed(e.command_via("qemu-x86_64", &["-cpu", cpu], args), stdin)
}

/// GCC's names for the features this build assumes among those a CPU model lacks (each with
/// whether the build assumes it).
fn lacking(lacks: &[(&'static str, bool)]) -> Vec<&'static str> {
    lacks
        .iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| *n)
        .collect()
}

/// Beyond Haswell (2013), among the features build.rs can test.
fn beyond_haswell() -> Vec<&'static str> {
    lacking(&[
        ("adx", cfg!(target_feature = "adx")),
        ("rdseed", cfg!(target_feature = "rdseed")),
        ("sha", cfg!(target_feature = "sha")),
        ("xsavec", cfg!(target_feature = "xsavec")),
        ("xsaves", cfg!(target_feature = "xsaves")),
        ("sse4a", cfg!(target_feature = "sse4a")),
        ("xop", cfg!(target_feature = "xop")),
        ("gfni", cfg!(target_feature = "gfni")),
        ("vaes", cfg!(target_feature = "vaes")),
        ("vpclmulqdq", cfg!(target_feature = "vpclmulqdq")),
        ("avx512f", cfg!(target_feature = "avx512f")),
    ])
}

#[test]
fn a_cpu_without_what_the_build_needs_is_refused_with_a_message() {
    // Westmere (2010) has AES-NI, PCLMULQDQ and SSE4.2, none of these.
    let mut want = lacking(&[
        ("avx", cfg!(target_feature = "avx")),
        ("avx2", cfg!(target_feature = "avx2")),
        ("bmi", cfg!(target_feature = "bmi1")),
        ("bmi2", cfg!(target_feature = "bmi2")),
        ("f16c", cfg!(target_feature = "f16c")),
        ("fma", cfg!(target_feature = "fma")),
        ("lzcnt", cfg!(target_feature = "lzcnt")),
        ("movbe", cfg!(target_feature = "movbe")),
        ("xsave", cfg!(target_feature = "xsave")),
        ("xsaveopt", cfg!(target_feature = "xsaveopt")),
        ("rdrnd", cfg!(target_feature = "rdrand")),
    ]);
    want.extend(beyond_haswell());
    let e = Env::bare();
    let out = run_on("Westmere", &e, &["--version"], b"");
    let err = String::from_utf8_lossy(&out.stderr);
    if want.is_empty() {
        // A build for an older baseline (RUSTFLAGS) runs there.
        assert!(out.status.success(), "{out:?}");
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let (_, named) = err.split_once("this CPU lacks: ").expect("the refusal");
    let named: Vec<&str> = named.split(". ").next().unwrap_or("").split(", ").collect();
    for f in &want {
        assert!(named.contains(f), "{f} not named: {err}");
    }
    assert!(err.contains("target-cpu=native"), "{err}");
}

#[test]
fn a_cpu_with_what_the_build_needs_runs_it_and_its_aes_gcm_agrees_with_this_hosts() {
    let e = Env::new();
    let key = e.create_key(&[]);
    let out = run_on("Haswell", &e, &["--version"], b"");
    if !beyond_haswell().is_empty() {
        // A build for a newer CPU (RUSTFLAGS="-C target-cpu=native") is refused there.
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        return;
    }
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("kmsfs "),
        "{out:?}"
    );
    // Sealed here, opened there, and the other way round.
    let text = b"the same bytes whichever backend seals them";
    let blob = e.encrypt(&key, text, &["purpose=cpu"]);
    let opened = run_on(
        "Haswell",
        &e,
        &["decrypt", "--context", "purpose=cpu"],
        &blob,
    );
    assert!(opened.status.success(), "{opened:?}");
    assert_eq!(opened.stdout, text);
    let sealed = run_on("Haswell", &e, &["encrypt", "--key", &key], text);
    assert!(sealed.status.success(), "{sealed:?}");
    assert_eq!(e.decrypt(&sealed.stdout, &[]), text);
}
