use clap::Parser;
use kmsfs::cli::args::{Cli, OutputFormat};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
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
