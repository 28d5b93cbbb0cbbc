//! `waxwing ctl invite create|list|revoke`: invitations on the database,
//! with the server running or not (a running server reads tokens from the
//! database on each use, so a new or revoked one counts at once).

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Config;
use crate::modules::invite::{self, token};
use crate::modules::time::unix_now;
use crate::storage::Store;

#[derive(Subcommand, Debug)]
pub enum InviteCommand {
    /// Create an invitation; prints its xmpp: URI and landing page URL.
    /// The token is shown only now: the database keeps its hash.
    Create {
        /// An account invitation (XEP-0401 "Account Creation"): the URI is
        /// `xmpp:HOST?register;preauth=…` even with --inviter (who then
        /// becomes the new account's contact). Without it, an invitation
        /// with --inviter is a contact invitation
        /// (`xmpp:INVITER?roster;preauth=…;ibr=y`).
        #[arg(long)]
        admin: bool,
        /// How long it stays valid: 7d, 12h, 30m, 90s (default 7d).
        #[arg(long, default_value = "7d")]
        expires: String,
        /// The user the invitee becomes a contact of (mutual subscription).
        #[arg(long)]
        inviter: Option<String>,
        /// The host (default: the inviter's, else the first configured).
        #[arg(long)]
        domain: Option<String>,
        /// How many accounts it may create (default 1).
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// List invitations (id = the start of the token's hash).
    List { domain: Option<String> },
    /// Revoke an invitation by its token or the id `list` shows.
    Revoke { token_or_id: String },
}

pub async fn run(config: &Config, command: InviteCommand) -> ExitCode {
    let store = match Store::open(&config.database.url, 2).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot open the database: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = execute(config, &store, command).await;
    store.close().await;
    match result {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(config: &Config, store: &Store, command: InviteCommand) -> Result<String, String> {
    match command {
        InviteCommand::Create {
            admin,
            expires,
            inviter,
            domain,
            uses,
        } => {
            let expires = token::parse_duration(&expires)
                .ok_or_else(|| format!("'{expires}' is not a duration (e.g. 7d, 12h, 30m)"))?;
            if uses == 0 {
                return Err("--uses must be at least 1".into());
            }
            let inviter = inviter
                .map(|j| super::ctl::account_jid(config, &j))
                .transpose()?;
            if let Some(j) = &inviter {
                let node = j.node().map(|n| n.as_str()).unwrap_or_default();
                if !store
                    .account_exists(j.domain().as_str(), node)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    return Err(format!("{j} does not exist"));
                }
            }
            let domain = match (domain, &inviter) {
                (Some(d), _) => d,
                (None, Some(j)) => j.domain().to_string(),
                (None, None) => config
                    .domains()
                    .into_iter()
                    .next()
                    .ok_or("no host is configured")?,
            };
            if !config.domains().contains(&domain) {
                return Err(format!("{domain} is not a configured host"));
            }
            let (tok, record) = invite::create(
                store,
                invite::Spec {
                    domain: &domain,
                    inviter: inviter.as_ref(),
                    admin,
                    // The operator's invitations always admit registration.
                    may_create_account: true,
                    expires_in: Some(expires),
                    max_uses: i64::from(uses),
                    username: None,
                },
            )
            .await
            .map_err(|e| e.to_string())?;
            let mut out = format!("uri: {}", token::uri(&record, &tok));
            match crate::modules::upload::base_url(config) {
                Some(base) => out.push_str(&format!("\nurl: {}", token::landing_url(&base, &tok))),
                None => out.push_str("\nurl: (no HTTP listener: set [http] listen or public_url)"),
            }
            if let Some(e) = record.expires {
                out.push_str(&format!(
                    "\nexpires: {}",
                    crate::modules::time::xep0082(e).unwrap_or_default()
                ));
            }
            Ok(out)
        }
        InviteCommand::List { domain } => {
            let list = store
                .invites(domain.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            let now = unix_now();
            let mut out =
                String::from("id                inviter                         uses  state");
            for r in list {
                let state = if r.is_usable(now) {
                    "valid"
                } else {
                    "spent or expired"
                };
                out.push_str(&format!(
                    "\n{:<16}  {:<30}  {}/{}  {}{}",
                    &r.token_hash[..16],
                    r.inviter
                        .as_deref()
                        .unwrap_or(if r.admin { "(admin)" } else { "-" }),
                    r.uses,
                    r.max_uses,
                    state,
                    r.expires
                        .map(|e| format!(
                            ", expires {}",
                            crate::modules::time::xep0082(e).unwrap_or_default()
                        ))
                        .unwrap_or_default(),
                ));
            }
            Ok(out)
        }
        InviteCommand::Revoke { token_or_id } => {
            let key =
                if token_or_id.len() == 16 && token_or_id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    token_or_id.to_ascii_lowercase()
                } else {
                    token::hash(&token_or_id)
                };
            match store.invite_revoke(&key).await.map_err(|e| e.to_string())? {
                0 => Err("no such invitation".into()),
                _ => Ok("revoked".into()),
            }
        }
    }
}
