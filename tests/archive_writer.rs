//! The archive writer's own SQLite connection, on real database files:
//! rows of many owners handed over interleaved come back per owner, in id
//! order, with exact counts; and the WAL is checkpointed by the
//! connection's checkpoint thread, not left to grow.

use std::sync::Arc;

use waxwing::storage::{
    ArchiveBatch, ArchiveFilter, ArchiveKind, ArchiveOwner, ArchiveRow, RowRef, Store,
};

/// `rows` as the archive writer hands them over, a message each.
fn batch_of(rows: &[ArchiveRow]) -> Arc<ArchiveBatch> {
    let mut b = ArchiveBatch::new();
    for r in rows {
        b.push(&RowRef::from(r));
        b.end_message();
    }
    Arc::new(b)
}

fn owner(u: &str) -> ArchiveOwner {
    ArchiveOwner {
        kind: ArchiveKind::User,
        domain: "writer.example".into(),
        username: u.into(),
    }
}

/// `n` rows for each of `owners`, interleaved (row i of every owner, then
/// row i + 1 …), with time-ordered ids and `pad` bytes of payload.
fn interleaved(owners: &[&str], n: usize, pad: usize, batch: usize) -> Vec<ArchiveRow> {
    let mut rows = Vec::new();
    for i in 0..n {
        for (k, u) in owners.iter().enumerate() {
            rows.push(ArchiveRow {
                owner: owner(u),
                // Time-ordered like real ids: the batch, then the position.
                id: format!("{batch:04}{i:06}{k:03}x"),
                ts: (batch * 1_000_000 + i * 1_000 + k) as i64,
                peer: format!("peer{}@writer.example", i % 3),
                resource: "r".into(),
                outgoing: i % 2 == 0,
                payload: format!("<m u='{u}' i='{batch}.{i}'>{}</m>", "x".repeat(pad)).into(),
            });
        }
    }
    rows
}

async fn sqlite_store(dir: &tempfile::TempDir) -> (Store, std::path::PathBuf) {
    let path = dir.path().join("archive.db");
    let store = Store::open(&format!("sqlite://{}", path.display()), 2)
        .await
        .unwrap();
    (store, path)
}

#[tokio::test]
async fn interleaved_owners_come_back_in_order_with_exact_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = sqlite_store(&dir).await;
    let owners = ["ann", "ben", "cat", "dan", "eve"];
    let mut conn = store.archive_conn(1024, false, 64).await.unwrap();
    // Three batches, each every owner's rows mixed together.
    for batch in 0..3 {
        let rows = batch_of(&interleaved(&owners, 40, 10, batch));
        conn.insert(&rows, 0..rows.rows()).await.unwrap();
    }
    conn.close().await;
    for u in owners {
        let o = owner(u);
        let all = ArchiveFilter::default();
        assert_eq!(store.archive_count(&o, &all).await.unwrap(), 120, "{u}");
        let page = store.archive_page(&o, &all, false, 1000).await.unwrap();
        assert_eq!(page.len(), 120);
        let ids: Vec<&str> = page.iter().map(|p| p.id.as_str()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "{u}: oldest first");
        assert!(page.iter().all(|p| p.payload.contains(&format!("u='{u}'"))));
        // The peer index answers too: every third row is with peer0.
        let with = ArchiveFilter {
            peer: Some("peer0@writer.example".into()),
            ..Default::default()
        };
        assert_eq!(store.archive_count(&o, &with).await.unwrap(), 3 * 14);
        let newest = store.archive_page(&o, &with, true, 5).await.unwrap();
        assert_eq!(newest.len(), 5);
        assert!(
            newest[0].payload.contains("i='2.39'"),
            "{}",
            newest[0].payload
        );
    }
    store.close().await;
}

/// Pages (4 KiB) the database file holds.
fn file_pages(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).unwrap().len() / 4096
}

/// What the file grows by once the batch below is checkpointed into it.
const GROWTH: u64 = 60;

/// A database with one committed batch of ~90 WAL pages (150 rows of
/// 1.5 KB, two a page) written by a writer connection with
/// `checkpoint_pages`: the store, the file, its size in pages before the
/// batch, and the connection (still open, so nothing checkpoints on close).
async fn one_batch(
    dir: &tempfile::TempDir,
    checkpoint_pages: u32,
) -> (
    Store,
    std::path::PathBuf,
    u64,
    waxwing::storage::ArchiveConn,
) {
    let (store, path) = sqlite_store(dir).await;
    let before = file_pages(&path);
    let mut conn = store
        .archive_conn(4096, false, checkpoint_pages)
        .await
        .unwrap();
    let rows = batch_of(&interleaved(&["big"], 150, 1500, 0));
    conn.insert(&rows, 0..rows.rows()).await.unwrap();
    (store, path, before, conn)
}

#[tokio::test]
async fn the_checkpoint_thread_copies_the_wal_into_the_database() {
    // Checkpoint from 64 WAL pages on; the writer would checkpoint itself
    // only past 256. The batch lies between the two, so the database file
    // can grow only by the checkpoint thread's work.
    let dir = tempfile::tempdir().unwrap();
    let (store, path, before, conn) = one_batch(&dir, 64).await;
    let grown = async {
        loop {
            if file_pages(&path) >= before + GROWTH {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), grown)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the database file stayed at {} pages (from {before}): no checkpoint",
                file_pages(&path)
            )
        });
    conn.close().await;
    let o = owner("big");
    let all = ArchiveFilter::default();
    assert_eq!(store.archive_count(&o, &all).await.unwrap(), 150);
    store.close().await;
}

#[tokio::test]
async fn without_the_checkpoint_thread_nothing_is_copied_below_sqlite_s_threshold() {
    // The control for the test above: with `checkpoint_pages = 0`, SQLite
    // checkpoints on its own only from 1,000 WAL pages, so the same batch
    // leaves the database file as it was.
    let dir = tempfile::tempdir().unwrap();
    let (store, path, before, conn) = one_batch(&dir, 0).await;
    assert!(
        file_pages(&path) < before + GROWTH,
        "{} pages from {before}",
        file_pages(&path)
    );
    conn.close().await;
    store.close().await;
}
