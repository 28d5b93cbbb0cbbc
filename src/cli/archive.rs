//! `waxwing ctl archive …`: message archives (XEP-0313) on the database.

use clap::Subcommand;
use jid::BareJid;
use time::format_description::well_known::Rfc3339;

use crate::modules::mam::{id::time_prefix, owner_of};
use crate::storage::Store;

#[derive(Subcommand, Debug)]
pub enum ArchiveCommand {
    /// Delete a user's archived messages, all of them or those before a
    /// date (YYYY-MM-DD, UTC midnight) or time (XEP-0082, e.g.
    /// 2026-12-01T12:00:00Z).
    Purge {
        jid: String,
        #[arg(long)]
        before: Option<String>,
    },
}

/// Microseconds since the Unix epoch of a date or an XEP-0082 DateTime.
fn parse_before(s: &str) -> Result<i64, String> {
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    };
    let t = time::OffsetDateTime::parse(&full, &Rfc3339)
        .map_err(|_| format!("'{s}' is not a date (YYYY-MM-DD) or an XEP-0082 time"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).map_err(|_| format!("'{s}' is out of range"))
}

pub async fn archive(
    store: &Store,
    user: &BareJid,
    command: ArchiveCommand,
) -> Result<String, String> {
    match command {
        ArchiveCommand::Purge { before, .. } => {
            let bound = before
                .as_deref()
                .map(parse_before)
                .transpose()?
                .map(time_prefix);
            let n = store
                .archive_purge(&owner_of(user), bound.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!("deleted {n} archived messages of {user}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_before("1970-01-02").unwrap(), 86_400_000_000);
        assert_eq!(parse_before("1970-01-01T00:00:01Z").unwrap(), 1_000_000);
        assert!(parse_before("yesterday").is_err());
    }
}
