//! The archive's blocks checked against a plain model: batches of stanzas
//! of three owners, four peers and three resources, with time-ordered ids
//! handed over shuffled (so blocks of one owner overlap across peers and
//! batches, and wide batches are cut by the block span), go in through the
//! archive writer's connection and the pooled insert alike; then hundreds
//! of random queries (peer, resource, time and id bounds, listed ids, page
//! sizes, both directions, offsets) must give exactly the model's answer,
//! before and after purges, trims, retention and replaced payloads. On a
//! real SQLite file and on a PostgreSQL database of its own.

mod common;

use std::sync::Arc;

use common::db::OwnPostgres;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use waxwing::modules::mam::id::time_prefix;
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

/// Times start here (microseconds; early 2027).
const T0: i64 = 1_800_000_000_000_000;
const OWNERS: [&str; 3] = ["ann", "ben", "cat"];
const PEERS: [&str; 4] = ["p0@x", "p1@x", "p2@x", "p3@x"];
const RESOURCES: [&str; 3] = ["", "phone", "laptop"];

fn owner(u: &str) -> ArchiveOwner {
    ArchiveOwner {
        kind: ArchiveKind::User,
        domain: "blocks.example".into(),
        username: u.into(),
    }
}

fn new_id(rng: &mut StdRng, ts: i64) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let tail: String = (0..8)
        .map(|_| ALPHABET[rng.gen_range(0..32)] as char)
        .collect();
    format!("{}{tail}", time_prefix(ts))
}

/// Batches of shuffled rows; each batch spans 3 s from 1.5 s after the
/// last one started (so batches overlap in time), every fifth 12 s.
fn batches(rng: &mut StdRng, count: usize, per_batch: usize) -> Vec<Vec<ArchiveRow>> {
    let mut out = Vec::new();
    for b in 0..count {
        let start = T0 + b as i64 * 1_500_000;
        let width = if b % 5 == 4 { 12_000_000 } else { 3_000_000 };
        let mut rows: Vec<ArchiveRow> = (0..per_batch)
            .map(|i| {
                let ts = start + rng.gen_range(0..width);
                ArchiveRow {
                    owner: owner(OWNERS[rng.gen_range(0..OWNERS.len())]),
                    id: new_id(rng, ts),
                    ts,
                    peer: PEERS[rng.gen_range(0..PEERS.len())].into(),
                    resource: RESOURCES[rng.gen_range(0..RESOURCES.len())].into(),
                    outgoing: rng.gen(),
                    payload: format!("<message n='{b}.{i}'>{}</message>", "é".repeat(i % 7)).into(),
                }
            })
            .collect();
        rows.shuffle(rng);
        out.push(rows);
    }
    out
}

fn selects(r: &ArchiveRow, o: &ArchiveOwner, f: &ArchiveFilter) -> bool {
    let id = r.id.as_str();
    r.owner == *o
        && f.peer.as_ref().is_none_or(|p| &r.peer == p)
        && f.resource.as_ref().is_none_or(|x| &r.resource == x)
        && f.id_from.as_ref().is_none_or(|b| id >= b.as_str())
        && f.id_until.as_ref().is_none_or(|b| id < b.as_str())
        && f.after.as_ref().is_none_or(|b| id > b.as_str())
        && f.before.as_ref().is_none_or(|b| id < b.as_str())
        && (f.ids.is_empty() || f.ids.iter().any(|x| x == id))
}

/// What the model selects, oldest first.
fn model<'a>(rows: &'a [ArchiveRow], o: &ArchiveOwner, f: &ArchiveFilter) -> Vec<&'a ArchiveRow> {
    let mut v: Vec<&ArchiveRow> = rows.iter().filter(|r| selects(r, o, f)).collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

fn random_filter(rng: &mut StdRng, rows: &[ArchiveRow]) -> (ArchiveOwner, ArchiveFilter) {
    let o = owner(OWNERS[rng.gen_range(0..OWNERS.len())]);
    let mut f = ArchiveFilter::default();
    let some_id = |rng: &mut StdRng| rows[rng.gen_range(0..rows.len())].id.clone();
    let some_time = |rng: &mut StdRng| time_prefix(T0 + rng.gen_range(-1_000_000..40_000_000));
    if rng.gen_bool(0.4) {
        f.peer = Some(PEERS[rng.gen_range(0..PEERS.len())].into());
        if rng.gen_bool(0.3) {
            f.resource = Some(RESOURCES[rng.gen_range(0..RESOURCES.len())].into());
        }
    }
    if rng.gen_bool(0.3) {
        f.id_from = Some(some_time(rng));
    }
    if rng.gen_bool(0.3) {
        f.id_until = Some(some_time(rng));
    }
    if rng.gen_bool(0.35) {
        f.after = Some(some_id(rng));
    }
    if rng.gen_bool(0.35) {
        f.before = Some(some_id(rng));
    }
    if rng.gen_bool(0.1) {
        f.ids = (0..3).map(|_| some_id(rng)).collect();
    }
    (o, f)
}

async fn check_queries(store: &Store, rows: &[ArchiveRow], rng: &mut StdRng, rounds: usize) {
    for o in OWNERS {
        let o = owner(o);
        let all = model(rows, &o, &ArchiveFilter::default());
        assert_eq!(
            store
                .archive_count(&o, &ArchiveFilter::default())
                .await
                .unwrap(),
            all.len() as i64,
            "whole count of {}",
            o.username
        );
    }
    for round in 0..rounds {
        let (o, f) = random_filter(rng, rows);
        let want = model(rows, &o, &f);
        let ctx = format!("round {round}: {} {f:?}", o.username);
        assert_eq!(
            store.archive_count(&o, &f).await.unwrap(),
            want.len() as i64,
            "count, {ctx}"
        );
        let limit = rng.gen_range(1..40usize);
        let page = store
            .archive_page(&o, &f, false, limit as u32)
            .await
            .unwrap();
        let expect: Vec<&str> = want.iter().take(limit).map(|r| r.id.as_str()).collect();
        assert_eq!(
            page.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            expect,
            "oldest first, {ctx}"
        );
        for (got, r) in page.iter().zip(&want) {
            assert_eq!((got.ts, got.payload.as_str()), (r.ts, &*r.payload), "{ctx}");
        }
        let page = store
            .archive_page(&o, &f, true, limit as u32)
            .await
            .unwrap();
        let expect: Vec<&str> = want
            .iter()
            .rev()
            .take(limit)
            .map(|r| r.id.as_str())
            .collect();
        assert_eq!(
            page.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            expect,
            "newest first, {ctx}"
        );
        let offset = rng.gen_range(0..want.len() + 3);
        let at = store.archive_id_at(&o, &f, offset as u32).await.unwrap();
        let expect = want.get(offset).or(want.last()).map(|r| r.id.clone());
        assert_eq!(at, expect, "id at {offset}, {ctx}");
        let probe = &rows[rng.gen_range(0..rows.len())];
        assert_eq!(
            store.archive_has(&o, &probe.id).await.unwrap(),
            probe.owner == o,
            "has, {ctx}"
        );
    }
}

async fn exercise(store: &Store) {
    let seed: u64 = rand::thread_rng().gen();
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rows: Vec<ArchiveRow> = Vec::new();
    let mut conn = store.archive_conn(1024, false, 64).await.unwrap();
    for (k, batch) in batches(&mut rng, 20, 150).into_iter().enumerate() {
        if k % 2 == 0 {
            let shared = batch_of(&batch);
            conn.insert(&shared, 0..shared.rows()).await.unwrap();
        } else {
            store.archive_insert(&batch).await.unwrap();
        }
        rows.extend(batch);
    }
    conn.close().await;
    check_queries(store, &rows, &mut rng, 300).await;

    // A replaced payload keeps its place.
    let target = rows[rng.gen_range(0..rows.len())].clone();
    assert!(store
        .archive_replace(&target.owner, &target.id, "<tombstone/>")
        .await
        .unwrap());
    assert!(!store
        .archive_replace(&owner("nobody"), &target.id, "<x/>")
        .await
        .unwrap());
    for r in rows
        .iter_mut()
        .filter(|r| r.id == target.id && r.owner == target.owner)
    {
        r.payload = "<tombstone/>".into();
    }
    let only = ArchiveFilter {
        ids: vec![target.id.clone()],
        ..Default::default()
    };
    let got = store
        .archive_page(&target.owner, &only, false, 5)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, "<tombstone/>");

    // Purge below an id in the middle of ann's archive (through blocks).
    let ann = owner("ann");
    let ann_rows = model(&rows, &ann, &ArchiveFilter::default());
    let cut = ann_rows[ann_rows.len() / 3].id.clone();
    let gone = store.archive_purge(&ann, Some(&cut)).await.unwrap();
    let before = rows.len();
    rows.retain(|r| !(r.owner == ann && r.id < cut));
    assert_eq!(gone as usize, before - rows.len(), "purged");
    // Trim ben to his newest 100.
    let ben = owner("ben");
    let ben_n = model(&rows, &ben, &ArchiveFilter::default()).len();
    let gone = store.archive_trim(&ben, 100).await.unwrap();
    assert_eq!(gone as usize, ben_n - 100, "trimmed");
    let ben_kept: Vec<String> = model(&rows, &ben, &ArchiveFilter::default())
        .iter()
        .rev()
        .take(100)
        .map(|r| r.id.clone())
        .collect();
    rows.retain(|r| r.owner != ben || ben_kept.contains(&r.id));
    // Retention: everything older than 10 s after T0, every owner.
    let cutoff = T0 + 10_000_000;
    let before = rows.len();
    let gone = store.archive_expire(cutoff).await.unwrap();
    rows.retain(|r| r.id.as_str() >= time_prefix(cutoff).as_str());
    assert_eq!(gone as usize, before - rows.len(), "expired");
    check_queries(store, &rows, &mut rng, 200).await;

    // The whole of cat's archive.
    let cat = owner("cat");
    let cat_n = model(&rows, &cat, &ArchiveFilter::default()).len();
    assert_eq!(
        store.archive_purge(&cat, None).await.unwrap() as usize,
        cat_n
    );
    rows.retain(|r| r.owner != cat);
    check_queries(store, &rows, &mut rng, 50).await;
}

#[tokio::test]
async fn sqlite_blocks_answer_like_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blocks.db");
    let store = Store::open(&format!("sqlite://{}", path.display()), 4)
        .await
        .unwrap();
    exercise(&store).await;
    store.close().await;
}

#[tokio::test]
async fn postgres_blocks_answer_like_the_model() {
    // A database of its own: retention here cuts every owner's archive.
    let db = OwnPostgres::create("wx_blocks").await;
    let store = Store::open(&db.url, 4).await.unwrap();
    exercise(&store).await;
    store.close().await;
    db.drop_database().await;
}
