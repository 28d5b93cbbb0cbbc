//! `waxwing ctl`: administration on the database, with the server stopped
//! or running (SQLite in WAL mode and PostgreSQL both allow it).

use std::io::BufRead;
use std::process::ExitCode;

use clap::Subcommand;
use jid::BareJid;

use crate::accounts;
use crate::config::Config;
use crate::storage::Store;

#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// Manage accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create an account. Without PASSWORD, the first line of stdin is used.
    Add {
        jid: String,
        password: Option<String>,
    },
    /// Change an account's password. Without PASSWORD, stdin's first line.
    Passwd {
        jid: String,
        password: Option<String>,
    },
    /// Delete an account and its data.
    Del { jid: String },
    /// List accounts, of one domain or of all.
    List { domain: Option<String> },
}

pub fn run(config: Config, command: CtlCommand) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let store = match Store::open(&config.database.url, 2).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cannot open the database: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = match command {
            CtlCommand::User { command } => user(&config, &store, command).await,
        };
        store.close().await;
        match result {
            Ok(msg) => {
                if !msg.is_empty() {
                    println!("{msg}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn user(config: &Config, store: &Store, command: UserCommand) -> Result<String, String> {
    match command {
        UserCommand::Add { jid, password } => {
            let jid = account_jid(config, &jid)?;
            let record = derive(config, &jid, password)?;
            match store
                .create_account(&record)
                .await
                .map_err(|e| e.to_string())?
            {
                true => Ok(format!("created {jid}")),
                false => Err(format!("{jid} already exists")),
            }
        }
        UserCommand::Passwd { jid, password } => {
            let jid = account_jid(config, &jid)?;
            let record = derive(config, &jid, password)?;
            match store
                .set_credentials(&record)
                .await
                .map_err(|e| e.to_string())?
            {
                true => Ok(format!("password of {jid} changed")),
                false => Err(format!("{jid} does not exist")),
            }
        }
        UserCommand::Del { jid } => {
            let jid = account_jid(config, &jid)?;
            let node = jid.node().map(|n| n.as_str()).unwrap_or_default();
            match store
                .delete_account(jid.domain().as_str(), node)
                .await
                .map_err(|e| e.to_string())?
            {
                true => Ok(format!("deleted {jid}")),
                false => Err(format!("{jid} does not exist")),
            }
        }
        UserCommand::List { domain } => {
            let list = store
                .list_accounts(domain.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            Ok(list.join("\n"))
        }
    }
}

/// Parses `user@domain`, which must be on a configured host.
fn account_jid(config: &Config, s: &str) -> Result<BareJid, String> {
    let jid = BareJid::new(s).map_err(|e| format!("'{s}' is not a valid JID: {e}"))?;
    if jid.node().is_none() {
        return Err(format!("'{s}' has no user part (expected user@domain)"));
    }
    if !config.domains().iter().any(|d| d == jid.domain().as_str()) {
        return Err(format!("{} is not a configured host", jid.domain()));
    }
    Ok(jid)
}

fn derive(
    config: &Config,
    jid: &BareJid,
    password: Option<String>,
) -> Result<crate::storage::AccountRecord, String> {
    let password = match password {
        Some(p) => p,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| format!("reading the password from stdin: {e}"))?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    accounts::derive_record(jid, &password, config.limits.scram_iterations)
}
