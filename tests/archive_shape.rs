//! The archive's reshaping migration (20261204100002_archive_shape): a
//! database holding archives in the first shape (owner as text in every
//! row, `archive_counts`) is migrated with every row, count and query
//! answer kept; then new rows go in beside the old ones. On a real SQLite
//! file and on a fresh PostgreSQL database of its own.

mod common;

use std::borrow::Cow;

use common::db::OwnPostgres;

use sqlx::migrate::Migrator;
use waxwing::storage::{ArchiveFilter, ArchiveKind, ArchiveOwner, ArchiveRow, Store};

/// The first migration this test's "old" database must not have.
const RESHAPE: i64 = 20261204100002;

fn owner(u: &str) -> ArchiveOwner {
    ArchiveOwner {
        kind: ArchiveKind::User,
        domain: "shape.example".into(),
        username: u.into(),
    }
}

/// Old rows: alice has 30 (ids 00…29, peers alternating), bob 5.
fn old_rows() -> Vec<(&'static str, String, i64, String)> {
    let mut v = Vec::new();
    for i in 0..30 {
        let peer = if i % 2 == 0 {
            "bob@shape.example"
        } else {
            "carol@shape.example"
        };
        v.push((
            "alice",
            format!("0000000000{i:02}aaaaaaa"),
            1_000 + i as i64,
            peer.to_string(),
        ));
    }
    for i in 0..5 {
        v.push((
            "bob",
            format!("0000000000{i:02}bbbbbbb"),
            2_000 + i as i64,
            "alice@shape.example".into(),
        ));
    }
    v
}

async fn old_migrator(dialect: &str) -> Migrator {
    let all = Migrator::new(std::path::Path::new(&format!(
        "{}/migrations/{dialect}",
        env!("CARGO_MANIFEST_DIR")
    )))
    .await
    .unwrap();
    let before: Vec<_> = all
        .migrations
        .iter()
        .filter(|m| m.version < RESHAPE)
        .cloned()
        .collect();
    assert!(
        before.len() < all.migrations.len(),
        "the reshaping migration exists"
    );
    Migrator {
        migrations: Cow::Owned(before),
        ..Migrator::DEFAULT
    }
}

const OLD_INSERT: &str =
    "INSERT INTO archive (kind, domain, username, id, ts, peer, resource, outgoing, payload) \
     VALUES (0, 'shape.example', $1, $2, $3, $4, 'r', false, $5)";
const OLD_COUNT: &str =
    "INSERT INTO archive_counts (kind, domain, username, n) VALUES (0, 'shape.example', $1, $2)";

async fn check_after(store: &Store) {
    let alice = owner("alice");
    let all = ArchiveFilter::default();
    assert_eq!(store.archive_count(&alice, &all).await.unwrap(), 30);
    assert_eq!(store.archive_count(&owner("bob"), &all).await.unwrap(), 5);
    let with_bob = ArchiveFilter {
        peer: Some("bob@shape.example".into()),
        ..Default::default()
    };
    assert_eq!(store.archive_count(&alice, &with_bob).await.unwrap(), 15);
    let last = store.archive_page(&alice, &all, true, 3).await.unwrap();
    let ids: Vec<&str> = last.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "000000000029aaaaaaa",
            "000000000028aaaaaaa",
            "000000000027aaaaaaa"
        ]
    );
    assert_eq!(last[0].payload, "<m n='alice29'/>");
    assert_eq!(last[0].ts, 1_029);
    assert!(store
        .archive_has(&alice, "000000000003aaaaaaa")
        .await
        .unwrap());
    assert!(!store
        .archive_has(&owner("bob"), "000000000003aaaaaaa")
        .await
        .unwrap());

    // New rows land beside the old ones, counted.
    let row = ArchiveRow {
        owner: alice.clone(),
        id: "000000000099zzzzzzz".into(),
        ts: 5_000,
        peer: "dave@shape.example".into(),
        resource: String::new(),
        outgoing: true,
        payload: "<m n='new'/>".into(),
    };
    store.archive_insert(&[row]).await.unwrap();
    assert_eq!(store.archive_count(&alice, &all).await.unwrap(), 31);
    // A purge below an id takes the old rows off the count and out of the
    // peer index alike.
    assert_eq!(
        store
            .archive_purge(&alice, Some("000000000010aaaaaaa"))
            .await
            .unwrap(),
        10
    );
    assert_eq!(store.archive_count(&alice, &all).await.unwrap(), 21);
    assert_eq!(
        store.archive_count(&alice, &with_bob).await.unwrap(),
        10,
        "15 with bob, 5 of them among the 10 purged"
    );
}

#[tokio::test]
async fn sqlite_archive_is_reshaped_with_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let url = format!("sqlite://{}", path.display());
    {
        let opts: sqlx::sqlite::SqliteConnectOptions = url
            .parse::<sqlx::sqlite::SqliteConnectOptions>()
            .unwrap()
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
        old_migrator("sqlite").await.run(&pool).await.unwrap();
        for (u, id, ts, peer) in old_rows() {
            let n = id[10..12].to_string();
            sqlx::query(OLD_INSERT)
                .bind(u)
                .bind(&id)
                .bind(ts)
                .bind(&peer)
                .bind(format!("<m n='{u}{n}'/>"))
                .execute(&pool)
                .await
                .unwrap();
        }
        for (u, n) in [("alice", 30i64), ("bob", 5)] {
            sqlx::query(OLD_COUNT)
                .bind(u)
                .bind(n)
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
    }
    let store = Store::open(&url, 2).await.unwrap();
    check_after(&store).await;
    store.close().await;
}

#[tokio::test]
async fn postgres_archive_is_reshaped_with_its_rows() {
    // A database of its own, made and dropped here: the shared one has
    // every migration applied already.
    let db = OwnPostgres::create("wx_shape").await;
    let url = db.url.clone();
    {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        old_migrator("postgres").await.run(&pool).await.unwrap();
        for (u, id, ts, peer) in old_rows() {
            let n = id[10..12].to_string();
            sqlx::query(OLD_INSERT)
                .bind(u)
                .bind(&id)
                .bind(ts)
                .bind(&peer)
                .bind(format!("<m n='{u}{n}'/>"))
                .execute(&pool)
                .await
                .unwrap();
        }
        for (u, n) in [("alice", 30i64), ("bob", 5)] {
            sqlx::query(OLD_COUNT)
                .bind(u)
                .bind(n)
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
    }
    let store = Store::open(&url, 2).await.unwrap();
    check_after(&store).await;
    store.close().await;
    db.drop_database().await;
}
