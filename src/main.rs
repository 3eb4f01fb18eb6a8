use clap::Parser;
use kmsfs::cli::args::{Cli, Command, OutputFormat};
use kmsfs::logging::{self, Target};

fn main() {
    let cli = Cli::parse();
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
