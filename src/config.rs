//! Settings of the HTTP service: flags, environment variables, an optional TOML file.
use std::path::PathBuf;

use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    #[arg(long, env = "FPT_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    #[arg(long, env = "FPT_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub common: crate::cli::CommonArgs,
}
