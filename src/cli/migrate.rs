//! `waxwing ctl import` and `waxwing ctl export` (XEP-0227): on the
//! database directly, like `ctl user`; meant for a stopped server (see
//! `crate::migrate`).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;
use crate::migrate::{export, import};
use crate::storage::Store;

pub enum Migration {
    Import {
        path: PathBuf,
        dry_run: bool,
    },
    Export {
        dir: PathBuf,
        domain: Option<String>,
    },
}

pub async fn run(config: &Config, what: Migration) -> ExitCode {
    let store = match Store::open(&config.database.url, 2).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot open the database: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match what {
        Migration::Import { path, dry_run } => {
            let opts = import::ImportOptions {
                dry_run,
                max_user_bytes: config.limits.import_max_user_bytes as u64,
                hashing: config.limits.password_hashing(),
                hosts: config.domains().to_vec(),
                progress: true,
            };
            match import::import(&store, &path, &opts).await {
                Ok(report) => {
                    print!("{}", report.render(dry_run));
                    if report.failed.is_empty() && report.file_errors.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        // Some users or files were left out: say so to scripts.
                        ExitCode::from(3)
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Migration::Export { dir, domain } => {
            match export::export(&store, &dir, domain.as_deref(), true).await {
                Ok(r) => {
                    println!(
                        "exported {} accounts ({} bytes) to {}",
                        r.users,
                        r.bytes,
                        dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    };
    store.close().await;
    code
}
