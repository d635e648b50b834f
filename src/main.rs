//! The `fpt` binary: parse flags, start logging, dispatch.
use clap::Parser;

fn main() {
    let cli = fpt::cli::Cli::parse();
    fpt::telemetry::init(cli.log_json);
    if let Err(e) = fpt::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
