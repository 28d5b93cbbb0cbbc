//! `waxwing ctl import FILE|DIR [--dry-run]`: reads XEP-0227 files one
//! user at a time and writes each user in one transaction, so that a user
//! with bad data is reported and left out whole while the others go in.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::Ordering;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha1::{Digest, Sha1};

use super::parse::{input_files, PieReader, ReadItem};
use super::pie::PieUser;
use crate::accounts::{self, PasswordHashing, SCRAM_HASHES};
use crate::modules::mam::id::{time_prefix, well_formed};
use crate::storage::{ImportCounts, ImportUser, ScramRecord, Store};

/// How an import runs.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Go through everything, write nothing, report what would change.
    pub dry_run: bool,
    /// `[limits] import_max_user_bytes`.
    pub max_user_bytes: u64,
    /// How SCRAM keys are derived from a clear-text password.
    pub hashing: PasswordHashing,
    /// The configured hosts: users of other hosts are left out.
    pub hosts: Vec<String>,
    /// Draw a progress bar (only on a terminal).
    pub progress: bool,
}

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub counts: ImportCounts,
    /// Users written (or that would be), and files read.
    pub users: u64,
    pub files: usize,
    /// Users not imported, with the reason.
    pub failed: Vec<String>,
    /// Files (or their rest) that could not be read.
    pub file_errors: Vec<String>,
    /// What the files carried that is not imported: (note, accounts).
    pub not_carried: Vec<(String, u64)>,
}

impl ImportReport {
    /// The report as printed by `ctl import`.
    pub fn render(&self, dry_run: bool) -> String {
        let mut out = String::new();
        let verb = if dry_run { "would import" } else { "imported" };
        out.push_str(&format!(
            "{verb} {} users from {} files{}\n",
            self.users,
            self.files,
            if dry_run {
                " (dry run: nothing written)"
            } else {
                ""
            }
        ));
        let (c, ch, u) = if dry_run {
            ("WOULD-CREATE", "WOULD-CHANGE", "UNCHANGED")
        } else {
            ("CREATED", "CHANGED", "UNCHANGED")
        };
        out.push_str(&format!("{:<24}{c:>14}{ch:>14}{u:>11}\n", "KIND"));
        for (kind, t) in self.counts.kinds() {
            out.push_str(&format!(
                "{kind:<24}{:>14}{:>14}{:>11}\n",
                t.created, t.changed, t.unchanged
            ));
        }
        for (note, n) in &self.not_carried {
            out.push_str(&format!("not carried ({n} accounts): {note}\n"));
        }
        for f in &self.failed {
            out.push_str(&format!("user not imported: {f}\n"));
        }
        for f in &self.file_errors {
            out.push_str(&format!("file not (fully) read: {f}\n"));
        }
        out
    }
}

/// The archive id of an imported message: its own when it is shaped like
/// Waxwing's (a Waxwing export), else its time and a digest of its source
/// id and payload, so that importing it again finds it.
fn archive_id(m: &super::pie::ArchivedMessage) -> String {
    if well_formed(&m.id) {
        return m.id.clone();
    }
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let digest = Sha1::new()
        .chain_update(m.id.as_bytes())
        .chain_update([0])
        .chain_update(m.payload.as_bytes())
        .finalize();
    let mut id = time_prefix(m.ts);
    for b in digest.iter().take(8) {
        id.push(ALPHABET[(b & 31) as usize] as char);
    }
    id
}

/// The SCRAM keys a new account gets: the file's, and those derived from
/// its clear-text password for the hashes the file has none of (not in a
/// dry run: nothing is stored then, and PBKDF2 is slow).
fn credentials(u: &PieUser, opts: &ImportOptions) -> Vec<ScramRecord> {
    let mut keys = u.scram.clone();
    if let (Some(password), false) = (&u.password, opts.dry_run) {
        for hash in SCRAM_HASHES {
            let mech = accounts::mechanism_key(hash);
            if keys.iter().any(|k| k.mechanism == mech) {
                continue;
            }
            let c = crate::sasl::ScramCredentials::generate(
                hash,
                password,
                opts.hashing.scram_iterations,
            );
            keys.push(ScramRecord {
                mechanism: mech.to_string(),
                salt: c.salt,
                iterations: c.iterations,
                stored_key: c.stored_key,
                server_key: c.server_key,
            });
        }
    }
    keys
}

/// Imports `path` (a file, or a directory of them) into `store`.
pub async fn import(
    store: &Store,
    path: &Path,
    opts: &ImportOptions,
) -> Result<ImportReport, String> {
    let (roots, total_bytes) = input_files(path)?;
    if roots.is_empty() {
        return Err(format!("{}: no .xml files", path.display()));
    }
    let mut report = ImportReport {
        files: roots.len(),
        ..ImportReport::default()
    };
    let mut reader = PieReader::new(roots, total_bytes, opts.max_user_bytes);
    let bar = if opts.progress && std::io::stdout().is_terminal() {
        let b =
            ProgressBar::with_draw_target(Some(reader.total_bytes), ProgressDrawTarget::stdout());
        if let Ok(style) = ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        ) {
            b.set_style(style);
        }
        b
    } else {
        ProgressBar::hidden()
    };
    while let Some(item) = reader.next_user() {
        bar.set_position(reader.progress.load(Ordering::Relaxed));
        let u = match item {
            ReadItem::User(u) => u,
            ReadItem::Skipped { file, reason } => {
                report.failed.push(format!("{}: {reason}", file.display()));
                continue;
            }
            ReadItem::FileError { file, reason } => {
                report
                    .file_errors
                    .push(format!("{}: {reason}", file.display()));
                continue;
            }
        };
        let who = format!("{}@{}", u.element.attr("name").unwrap_or("?"), u.host);
        let user = match PieUser::from_element(&u.host, &u.element) {
            Ok(user) => user,
            Err(e) => {
                report.failed.push(format!("{who}: {e}"));
                continue;
            }
        };
        drop(u);
        if !opts.hosts.contains(&user.host) {
            report
                .failed
                .push(format!("{who}: {} is not a configured host", user.host));
            continue;
        }
        let scram = credentials(&user, opts);
        let archive_ids: Vec<String> = user.archive.iter().map(archive_id).collect();
        let rec = ImportUser {
            user: &user,
            scram: &scram,
            archive_ids: &archive_ids,
        };
        match store.import_user(&rec, opts.dry_run).await {
            Ok(c) => {
                report.counts.add(&c);
                report.users += 1;
                for note in &user.notes {
                    match report.not_carried.iter_mut().find(|(n, _)| n == note) {
                        Some((_, k)) => *k += 1,
                        None => report.not_carried.push((note.clone(), 1)),
                    }
                }
                if user.scram.is_empty() && user.password.is_none() && c.accounts.created > 0 {
                    report.failed.push(format!(
                        "{who}: created without credentials (the file has neither a password \
                         nor SCRAM keys): set one with `waxwing ctl user passwd`"
                    ));
                }
            }
            Err(e) => report
                .failed
                .push(format!("{who}: {e} (nothing of it imported)")),
        }
        bar.set_message(format!("{} users", report.users));
    }
    bar.finish_and_clear();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_ids_are_stable_and_time_ordered() {
        let m = |id: &str, ts: i64| super::super::pie::ArchivedMessage {
            id: id.into(),
            ts,
            payload: "<message/>".into(),
            peer: "a@b".into(),
            resource: String::new(),
            outgoing: false,
        };
        let a = archive_id(&m("uuid-1", 1_000_000));
        assert_eq!(a, archive_id(&m("uuid-1", 1_000_000)));
        assert_ne!(a, archive_id(&m("uuid-2", 1_000_000)));
        assert!(well_formed(&a));
        assert!(archive_id(&m("x", 2_000_000)) > a);
        // One of ours is kept.
        assert_eq!(archive_id(&m(&a, 5)), a);
    }
}
