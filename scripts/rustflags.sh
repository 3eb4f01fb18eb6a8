# Sourced by the scripts that build kmsfs. On x86-64 the build targets x86-64-v3 with AES-NI and
# PCLMULQDQ (.cargo/config.toml), and Cargo builds its build scripts and proc macros with the
# same flags, so on a CPU without those features even the build dies of an illegal instruction.
# There, build for the x86-64 baseline instead, unless RUSTFLAGS says otherwise already.
if [ -z "${RUSTFLAGS+set}" ] && [ "$(uname -m)" = x86_64 ]; then
    for feature in avx avx2 bmi1 bmi2 fma f16c abm movbe xsave aes pclmulqdq; do
        if ! grep -qw "$feature" /proc/cpuinfo; then
            echo "$(basename "$0"): this CPU lacks $feature: building for the x86-64 baseline" >&2
            export RUSTFLAGS="-C target-cpu=x86-64"
            break
        fi
    done
fi
