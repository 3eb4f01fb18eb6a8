/*
 * Runs before main: refuses, with a message, a CPU that lacks an instruction set extension this
 * build was compiled for (on x86-64, .cargo/config.toml asks for x86-64-v3 with AES-NI and
 * PCLMULQDQ). It is C compiled for the x86-64 baseline because Rust code compiled for those
 * extensions may use them anywhere, a check written in it included. build.rs lists the
 * extensions in cpu_needs.h as NEED("name") entries.
 */
#include <string.h>
#include <unistd.h>

#include "cpu_needs.h"

#if defined(__SSE3__) || defined(__AVX__) || defined(__AES__) || defined(__PCLMUL__) ||            \
    defined(__POPCNT__) || defined(__BMI__) || defined(__MOVBE__)
#error "src/cpu_check.c must be compiled for the x86-64 baseline: take -march/-m flags out of CFLAGS"
#endif

/* Referred to from main, so that the linker keeps this object and its constructor. */
int kmsfs_cpu_check_linked(void) { return 1; }

static void say(const char *s) {
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, s, n);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

/* Priority 101: before every constructor without one (mimalloc's, and any a crate adds). */
__attribute__((constructor(101))) static void kmsfs_cpu_check(void) {
    const char *missing[64];
    size_t n = 0;
    __builtin_cpu_init();
#define NEED(f)                                                                                     \
    if (!__builtin_cpu_supports(f) && n < sizeof missing / sizeof missing[0])                      \
        missing[n++] = f;
    KMSFS_CPU_NEEDS
#undef NEED
    if (n == 0)
        return;
    say("kmsfs: this build needs CPU features this CPU lacks:");
    for (size_t i = 0; i < n; i++) {
        say(i == 0 ? " " : ", ");
        say(missing[i]);
    }
    say(". Build kmsfs for this CPU with RUSTFLAGS=\"-C target-cpu=native\" cargo build --release"
        " (or -C target-cpu=x86-64 for any x86-64 CPU).\n");
    _exit(1);
}
