//! `waxwing ctl export DIR`: one XEP-0227 file per account,
//! `DIR/user@host.xml`, each a whole `<server-data><host><user/>` document:
//! the layout Prosody's `mod_storage_xep0227` reads (so `prosody-migrator`
//! can take it), and what `ctl import DIR` reads back. One account at a
//! time is held in memory.

use std::io::{IsTerminal, Write};
use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::pie::NS_PIE;
use crate::storage::Store;
use crate::xml::Element;

/// What an export wrote.
#[derive(Debug, Default)]
pub struct ExportReport {
    pub users: u64,
    pub bytes: u64,
}

/// Writes every account (of `domain`, or of all) under `dir`.
pub async fn export(
    store: &Store,
    dir: &Path,
    domain: Option<&str>,
    progress: bool,
) -> Result<ExportReport, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let accounts = store
        .list_accounts(domain)
        .await
        .map_err(|e| e.to_string())?;
    let bar = if progress && std::io::stdout().is_terminal() {
        let b = ProgressBar::with_draw_target(
            Some(accounts.len() as u64),
            ProgressDrawTarget::stdout(),
        );
        if let Ok(style) =
            ProgressStyle::with_template("{bar:30} {pos}/{len} accounts {per_sec} ETA {eta}")
        {
            b.set_style(style);
        }
        b
    } else {
        ProgressBar::hidden()
    };
    let mut report = ExportReport::default();
    for jid in accounts {
        let Some((user, host)) = jid.split_once('@') else {
            continue;
        };
        let Some(pie) = store
            .export_user(host, user)
            .await
            .map_err(|e| format!("{jid}: {e}"))?
        else {
            // Deleted while the export ran.
            continue;
        };
        let doc = Element::new("server-data", NS_PIE).with_child(
            Element::new("host", NS_PIE)
                .with_attr("jid", host)
                .with_child(pie.to_element()),
        );
        let mut bytes = b"<?xml version='1.0' encoding='UTF-8'?>\n".to_vec();
        doc.write_to(&mut bytes, "");
        bytes.push(b'\n');
        // Written aside and renamed: a file is whole or absent.
        let path = dir.join(format!("{jid}.xml"));
        let tmp = dir.join(format!(".{jid}.xml.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        f.write_all(&bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        report.users += 1;
        report.bytes += bytes.len() as u64;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(report)
}
