/// mimalloc rather than glibc's malloc: a directory listing allocates and frees many small
/// names and nodes, after which glibc walks its fast bins (`malloc_consolidate`) at the next
/// large allocation. find+stat of 10,000 files ~7% faster, find -delete ~8%
/// (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{CommandFactory, Parser};
use kmsfs::cli::args::{Cli, Command, OutputFormat};
use kmsfs::cli::fstab;
use kmsfs::logging::{self, Target};

/// The command line, rewritten from mount(8)'s helper convention when called that way.
fn arguments() -> Vec<std::ffi::OsString> {
    let argv: Vec<_> = std::env::args_os().collect();
    let mut subcommands: Vec<String> = Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    subcommands.push("help".into());
    if !fstab::is_helper_call(&argv, &subcommands) {
        return argv;
    }
    match fstab::translate(&argv) {
        Ok(Some(a)) => a,
        Ok(None) => std::process::exit(0),
        Err(e) => {
            eprintln!("kmsfs: {e}");
            std::process::exit(kmsfs::error::ErrorKind::Validation.exit_code());
        }
    }
}

/// The CPU check in src/cpu_check.c runs before `main` (Rust code built for x86-64-v3 may use its
/// instructions anywhere, the check included); referring to it keeps its object in the link.
#[cfg(target_arch = "x86_64")]
fn cpu_check_linked() {
    unsafe extern "C" {
        fn kmsfs_cpu_check_linked() -> libc::c_int;
    }
    // SAFETY: a C function without arguments that returns a constant.
    let _ = unsafe { kmsfs_cpu_check_linked() };
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_check_linked() {}

fn main() {
    cpu_check_linked();
    let argv = arguments();
    kmsfs::cli::set_argv(argv.clone());
    let cli = Cli::parse_from(argv);
    if !matches!(cli.command, Command::Mount(_)) {
        // Like other Unix tools, end quietly when the reader of our output goes away
        // (`kmsfs key list | head`) instead of failing on EPIPE. The mount daemon keeps
        // ignoring SIGPIPE.
        // SAFETY: setting a signal disposition to its default at startup, before any threads.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let target = match &cli.command {
        Command::Mount(m) => match (&m.log_file, m.daemon_child) {
            (Some(f), _) => Some((Target::File(f), "info")),
            (None, true) => Some((Target::Syslog, "info")),
            (None, false) => Some((Target::Stderr, "info")),
        },
        _ => None,
    };
    let (target, level) = target.unwrap_or((Target::Stderr, "warn"));
    if let Err(e) = logging::init(target, level) {
        eprintln!("kmsfs: log file: {e}");
        std::process::exit(1);
    }
    let json = cli.global.output == OutputFormat::Json;
    if let Err(e) = kmsfs::cli::commands::run(cli) {
        if json {
            eprintln!(
                "{}",
                serde_json::json!({"__type": e.kind.name(), "message": e.message})
            );
        } else {
            eprintln!("kmsfs: {e}");
        }
        std::process::exit(e.kind.exit_code());
    }
}
