//! `waxwing ctl`: administration on the database, with the server stopped
//! or running (SQLite in WAL mode and PostgreSQL both allow it); and
//! listings of what a running server holds, asked through its admin socket
//! (`crate::admin`), which need no database.

use crate::stanza::bare::Bare;
use std::io::BufRead;
use std::process::ExitCode;

use clap::Subcommand;
use jid::BareJid;

use crate::accounts;
use crate::admin::{CallError, Request};
use crate::config::Config;
use crate::storage::Store;

#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// Manage accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Invitations (XEP-0401): tokens that let someone register (where
    /// open registration is off) and become the inviter's contact.
    Invite {
        #[command(subcommand)]
        command: super::invite::InviteCommand,
    },
    /// Server-to-server connections of the running server.
    S2s {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// External components (XEP-0114): configured, connected or not.
    Components {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// Bound client sessions of the running server.
    Sessions {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// End a running server's client sessions.
    Session {
        #[command(subcommand)]
        command: SessionCommand,
    },
    /// Chat rooms (XEP-0045) of the running server.
    Room {
        #[command(subcommand)]
        command: RoomCommand,
    },
    /// Send a headline message to every online session of every host.
    Announce {
        /// The text (words are joined by spaces).
        #[arg(required = true)]
        text: Vec<String>,
    },
    /// Counters of the running server.
    Stats,
    /// The nodes of the running server's cluster (`[cluster]`).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Make the running server read its configuration file again (as
    /// SIGHUP does): hosts, certificates, limits and admins change
    /// without dropping sessions; what needs a restart is named.
    Reload,
    /// Message archives (XEP-0313), on the database.
    Archive {
        #[command(subcommand)]
        command: super::archive::ArchiveCommand,
    },
    /// Import accounts and their data from XEP-0227 files (Prosody's
    /// `prosody-migrator` xep0227 store, ejabberd's `export_piefxis`, a
    /// Waxwing export): a file or a directory of them. Run it with the
    /// server stopped; running it again changes nothing.
    Import {
        path: std::path::PathBuf,
        /// Report what would be created or changed, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check a deployment: configuration, certificates, DNS records,
    /// listeners, the upload URL, and the grade clients will show
    /// (XEP-0479); one line per check with what to fix. Exits non-zero
    /// when a check fails (warnings alone do not).
    Check {
        /// Only this host (default: every [[host]]).
        domain: Option<String>,
        /// Skip DNS, ports and the upload URL: no network, no running server.
        #[arg(long)]
        offline: bool,
    },
    /// Export accounts and their data as XEP-0227 files, one
    /// `user@host.xml` per account, into DIR.
    Export {
        dir: std::path::PathBuf,
        /// Only the accounts of this host.
        #[arg(long)]
        domain: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Every node, alive or not, and its session count.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum ListCommand {
    /// One line per item, under a header row.
    List,
}

#[derive(Subcommand, Debug)]
pub enum RoomCommand {
    /// Every room: JID, occupants, persistent.
    List,
    /// Destroy a room: its occupants leave with the reason, its
    /// configuration and archive are deleted.
    Destroy {
        room: String,
        /// Told to the occupants (words are joined by spaces).
        reason: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// End a session (full JID) or every session of an account (bare JID).
    Kick { jid: String },
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
    /// List the clients an account logged in with (SASL2 user-agent ids).
    Clients { jid: String },
    /// Revoke one client: its FAST token dies and, if the server runs, its
    /// session ends.
    Revoke { jid: String, client_id: String },
    /// Refuse the account's logins and end its sessions (running server).
    Disable { jid: String },
    /// Let a disabled account log in again (running server).
    Enable { jid: String },
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
        // Listings come from the running server and need no database.
        let command = match command {
            CtlCommand::User {
                command: UserCommand::Disable { jid },
            } => return act(&config, "user disable", &jid, true).await,
            CtlCommand::User {
                command: UserCommand::Enable { jid },
            } => return act(&config, "user enable", &jid, true).await,
            CtlCommand::Session {
                command: SessionCommand::Kick { jid },
            } => return act(&config, "session kick", &jid, false).await,
            CtlCommand::Room {
                command: RoomCommand::List,
            } => return act(&config, "room list", "", false).await,
            CtlCommand::Room {
                command: RoomCommand::Destroy { room, reason },
            } => {
                if jid::BareJid::new(&room).map_or(true, |j| j.node().is_none()) {
                    eprintln!("error: '{room}' is not a room JID (room@service)");
                    return ExitCode::FAILURE;
                }
                let reason = crate::modules::adhoc::ctl::escape(&reason.join(" "));
                return act(&config, "room destroy", &format!("{room} {reason}"), false).await;
            }
            CtlCommand::Reload => return act(&config, "reload", "", false).await,
            CtlCommand::Announce { text } => {
                let text = crate::modules::adhoc::ctl::escape(&text.join(" "));
                return act(&config, "announce", &text, false).await;
            }
            CtlCommand::Check { domain, offline } => {
                return check(Ok(config), None, domain, offline).await
            }
            CtlCommand::User { command } => Ok(command),
            CtlCommand::Invite { command } => {
                return super::invite::run(&config, command).await;
            }
            CtlCommand::Archive { command } => Err(command),
            CtlCommand::S2s { .. } => return ask(&config, Request::S2sList).await,
            CtlCommand::Components { .. } => return ask(&config, Request::ComponentsList).await,
            CtlCommand::Sessions { .. } => return ask(&config, Request::SessionsList).await,
            CtlCommand::Stats => return ask(&config, Request::Stats).await,
            CtlCommand::Cluster { .. } => return ask(&config, Request::ClusterStatus).await,
            CtlCommand::Import { path, dry_run } => {
                return super::migrate::run(
                    &config,
                    super::migrate::Migration::Import { path, dry_run },
                )
                .await
            }
            CtlCommand::Export { dir, domain } => {
                return super::migrate::run(
                    &config,
                    super::migrate::Migration::Export { dir, domain },
                )
                .await
            }
        };
        let store = match Store::open(&config.database.url, 2).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cannot open the database: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = match command {
            Ok(command) => user(&config, &store, command).await,
            Err(command) => {
                let super::archive::ArchiveCommand::Purge { jid, .. } = &command;
                match account_jid(&config, jid) {
                    Ok(jid) => super::archive::archive(&store, &jid, command).await,
                    Err(e) => Err(e),
                }
            }
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

/// `ctl check`: runs on the configuration as loaded or not (its problems
/// are the first findings), prints the report; exit 1 when a check failed.
pub async fn check(
    loaded: Result<Config, crate::config::ConfigError>,
    path: Option<&std::path::Path>,
    domain: Option<String>,
    offline: bool,
) -> ExitCode {
    let opts = crate::check::Options { domain, offline };
    let report = crate::check::run(loaded, path, &opts).await;
    print!("{}", report.render());
    if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Asks the running server through its admin socket and prints the answer.
async fn ask(config: &Config, request: Request) -> ExitCode {
    match call(config, request.line()).await {
        Ok(rows) => {
            print!("{}", render(request, &rows));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// Sends one request line to the running server's admin socket: its rows,
/// or the failure, already said on stderr.
async fn call(config: &Config, line: &str) -> Result<Vec<Vec<String>>, ExitCode> {
    let Some(path) = config.admin_socket() else {
        eprintln!("the admin channel is disabled ([admin] socket = \"\")");
        return Err(ExitCode::FAILURE);
    };
    crate::admin::request(&path, line).await.map_err(|e| {
        match e {
            CallError::NoServer => eprintln!(
                "no running server at {} (is it started with this config?)",
                path.display()
            ),
            CallError::Server(e) => eprintln!("error: the server answered: {e}"),
            CallError::Io(e) => eprintln!("error: {e}"),
        }
        ExitCode::FAILURE
    })
}

/// Sends a request that changes the running server (`crate::modules::
/// adhoc::ctl`) and prints its answer. `arg` is checked here first, so a
/// mistyped JID never reaches the server and the line stays one line.
async fn act(config: &Config, verb: &str, arg: &str, bare: bool) -> ExitCode {
    let arg = if bare {
        match account_jid(config, arg) {
            Ok(j) => j.to_string(),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else if verb == "session kick" {
        match jid::Jid::new(arg) {
            Ok(j) if account_jid(config, j.bare().as_str()).is_ok() => j.to_string(),
            _ => {
                eprintln!("error: '{arg}' is not an account or session JID of a configured host");
                return ExitCode::FAILURE;
            }
        }
    } else {
        arg.to_string()
    };
    let line = format!("{verb} {arg}").trim_end().to_string();
    if line.len() > crate::admin::MAX_REQUEST {
        eprintln!(
            "error: too long (at most {} bytes)",
            crate::admin::MAX_REQUEST
        );
        return ExitCode::FAILURE;
    }
    match call(config, &line).await {
        Ok(rows) => {
            for row in rows {
                println!("{}", row.join(" "));
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `key: value` lines for stats; otherwise a table, columns aligned, under
/// a header row.
fn render(request: Request, rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    if request == Request::Stats {
        for row in rows {
            out.push_str(&format!(
                "{}: {}\n",
                row.first().map(String::as_str).unwrap_or_default(),
                row.get(1).map(String::as_str).unwrap_or_default()
            ));
        }
        return out;
    }
    let header: Vec<String> = request.columns().iter().map(|c| c.to_string()).collect();
    let all: Vec<&Vec<String>> = std::iter::once(&header).chain(rows).collect();
    let columns = all.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            all.iter()
                .filter_map(|r| r.get(i))
                .map(|f| f.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in all {
        let mut line = String::new();
        for (i, f) in row.iter().enumerate() {
            if i + 1 < row.len() {
                line.push_str(&format!("{f:<w$}  ", w = widths[i]));
            } else {
                line.push_str(f);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
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
        UserCommand::Clients { jid } => {
            let jid = account_jid(config, &jid)?;
            let node = jid.node().map(|n| n.as_str()).unwrap_or_default();
            let list = store
                .clients(jid.domain().as_str(), node)
                .await
                .map_err(|e| e.to_string())?;
            Ok(clients_table(&list))
        }
        // Sent to the running server by `run` before the database opens.
        UserCommand::Disable { .. } | UserCommand::Enable { .. } => {
            Err("needs the running server".into())
        }
        UserCommand::Revoke { jid, client_id } => {
            let jid = account_jid(config, &jid)?;
            let node = jid.node().map(|n| n.as_str()).unwrap_or_default();
            let Some(old) = store
                .delete_client(jid.domain().as_str(), node, &client_id)
                .await
                .map_err(|e| e.to_string())?
            else {
                return Err(format!("{jid} has no client '{client_id}'"));
            };
            let mut msg = format!("revoked {client_id} of {jid}");
            if let (Some(path), Some(res)) = (config.admin_socket(), old.resource) {
                // The running server (if any) ends the client's session.
                let line = format!("sessions close {jid}/{res}");
                if let Ok(rows) = crate::admin::request(&path, &line).await {
                    if rows.first().and_then(|r| r.first()).map(String::as_str) == Some("closed") {
                        msg.push_str("; its session was ended");
                    }
                }
            }
            Ok(msg)
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

/// `ctl user clients`: one line per client under a header.
fn clients_table(list: &[crate::storage::ClientRecord]) -> String {
    let stamp = |s: i64| crate::modules::time::xep0082(s).unwrap_or_default();
    let mut rows = vec![vec![
        "CLIENT-ID".to_string(),
        "SOFTWARE".into(),
        "DEVICE".into(),
        "LAST-SEEN".into(),
        "AUTH".into(),
        "TOKEN".into(),
    ]];
    for c in list {
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect()
            }
        };
        rows.push(vec![
            dash(&c.client_id),
            dash(&c.software),
            dash(&c.device),
            stamp(c.last_seen),
            dash(&c.last_auth),
            if c.token.is_some() || c.next.is_some() {
                "yes"
            } else {
                "no"
            }
            .into(),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, f)| format!("{f:<w$}", w = widths[i]))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parses `user@domain`, which must be on a configured host.
pub(super) fn account_jid(config: &Config, s: &str) -> Result<BareJid, String> {
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
    accounts::derive_record_with(
        jid,
        &password,
        &config.limits.password_hashing(),
        &mut Vec::new(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_aligned_under_a_header() {
        let rows = vec![
            vec![
                "alice@example.org/phone".to_string(),
                "3".into(),
                "yes".into(),
                "0".into(),
                "12".into(),
            ],
            vec![
                "b@x/r".to_string(),
                "10".into(),
                "no".into(),
                "-".into(),
                "1".into(),
            ],
        ];
        assert_eq!(
            render(Request::SessionsList, &rows),
            "JID                      CONN  AVAILABLE  PRIORITY  AGE(s)\n\
             alice@example.org/phone  3     yes        0         12\n\
             b@x/r                    10    no         -         1\n"
        );
        let stats = vec![vec!["uptime_seconds".to_string(), "5".into()]];
        assert_eq!(render(Request::Stats, &stats), "uptime_seconds: 5\n");
        assert_eq!(render(Request::S2sList, &[]).lines().count(), 1);
    }
}
