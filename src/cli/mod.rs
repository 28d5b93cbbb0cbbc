//! The `waxwing` command line: `serve`, `ctl …` and `check-config`.

mod archive;
mod ctl;
mod invite;
mod migrate;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};

/// Waxwing, an XMPP server.
#[derive(Parser, Debug)]
#[command(name = "waxwing", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (embedded defaults when no --config is given:
    /// localhost, SQLite under ./data, a generated dev certificate).
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file, reporting every problem with its line.
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Administer the server's data (`user …`, `archive purge`, whether the server runs or
    /// not; `import`/`export` of XEP-0227 files, with it stopped) and list what the running
    /// server holds (`s2s list`,
    /// `components list`, `sessions list`, `stats`, through its admin socket); change the
    /// running server (`user disable|enable`, `session kick`, `announce`).
    Ctl {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: ctl::CtlCommand,
    },
}

/// Loads the configuration named on the command line, or the defaults.
fn load_config(path: Option<&PathBuf>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::default()),
    }
}

/// Parses arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match load_config(config.as_ref()) {
            Ok(_) => {
                println!("configuration OK");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Serve { config: path } => match load_config(path.as_ref()) {
            Ok(c) => serve::serve(c, path),
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Ctl { config, command } => match load_config(config.as_ref()) {
            Ok(c) => ctl::run(c, command),
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(2)
            }
        },
    }
}
