//! waxwing-mam-bench: the cost of a XEP-0313 archive query on a large
//! archive, and the archive's size on disk.
//!
//! Seeds an archive directly through the `Store` (fast bulk inserts, in
//! time order, owners interleaved as real traffic would: one user gets
//! `--big` of the messages, the rest spread over the other `--users`),
//! starts the server in this process on that database, logs in as the big
//! user over a real TCP + TLS connection and asks for the latest page
//! (`<before/>`, `--page` results) `--iterations` times, then the same
//! with a `with` filter. Prints latency percentiles and bytes on disk per
//! 1,000 messages. SQLite by default (a temporary file); `--db` a
//! PostgreSQL URL of an empty database of its own.

#[allow(dead_code)]
mod ws;
#[allow(dead_code)]
mod xmpp;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use rand::Rng;
use waxwing::config::Config;
use waxwing::modules::mam::id::{time_prefix, TIME_CHARS};
use waxwing::sasl::SaltedPasswordCache;
use waxwing::server::{RunningServer, Server};
use waxwing::storage::{ArchiveKind, ArchiveOwner, ArchiveRow, Store};
use waxwing::xml::NS_CLIENT;

#[derive(Parser, Debug)]
#[command(
    name = "waxwing-mam-bench",
    about = "XEP-0313 query latency on a large archive"
)]
struct Args {
    /// Database URL; default a SQLite file in a temporary directory.
    #[arg(long)]
    db: Option<String>,
    /// Messages in the whole archive.
    #[arg(long, default_value_t = 1_000_000)]
    total: usize,
    /// Users owning them.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Messages of the one big user (the one queried).
    #[arg(long, default_value_t = 100_000)]
    big: usize,
    /// Body bytes per message.
    #[arg(long, default_value_t = 200)]
    body: usize,
    /// Timed queries per kind (after 50 untimed ones).
    #[arg(long, default_value_t = 2_000)]
    iterations: usize,
    /// Results per page.
    #[arg(long, default_value_t = 50)]
    page: usize,
}

const DOMAIN: &str = "mambench.localhost";
const PASSWORD: &str = "mam-bench";
/// Distinct peers of the big user (for the `with` query).
const PEERS: usize = 100;

fn owner(u: usize) -> ArchiveOwner {
    ArchiveOwner {
        kind: ArchiveKind::User,
        domain: DOMAIN.into(),
        username: format!("u{u}"),
    }
}

/// The seeded rows, oldest first: `total` messages over the last 30
/// days, the big user (u0) owning `big` of them.
async fn seed(store: &Store, args: &Args) -> Result<Duration, String> {
    let started = Instant::now();
    let mut rng = rand::thread_rng();
    let body: String = "x".repeat(args.body);
    let now = waxwing::modules::mam::id::now_micros();
    let span: i64 = 30 * 86_400 * 1_000_000;
    let step = span / args.total as i64;
    let big_share = args.big as f64 / args.total as f64;
    let mut batch = Vec::with_capacity(50_000);
    for i in 0..args.total {
        let ts = now - span + i as i64 * step;
        let u = if rng.gen_bool(big_share) {
            0
        } else {
            rng.gen_range(1..args.users.max(2))
        };
        let peer = format!("p{}@{DOMAIN}", rng.gen_range(0..PEERS));
        let mut id = time_prefix(ts);
        while id.len() < TIME_CHARS + 8 {
            id.push(b"0123456789abcdefghjkmnpqrstvwxyz"[rng.gen_range(0..32)] as char);
        }
        let payload = format!(
            "<message xmlns='{NS_CLIENT}' from='{peer}/phone' to='u{u}@{DOMAIN}' type='chat' id='m{i}'><body>{body}</body></message>"
        );
        batch.push(ArchiveRow {
            owner: owner(u),
            id,
            ts,
            peer,
            resource: "phone".into(),
            outgoing: false,
            payload: payload.into(),
        });
        if batch.len() == batch.capacity() {
            store
                .archive_insert(&batch)
                .await
                .map_err(|e| e.to_string())?;
            batch.clear();
        }
    }
    store
        .archive_insert(&batch)
        .await
        .map_err(|e| e.to_string())?;
    Ok(started.elapsed())
}

/// Runs one statement on the store's pool.
async fn on_store(store: &Store, q: &str) -> Result<(), String> {
    match store {
        Store::Sqlite(p) => sqlx::query(q).execute(p).await.map(|_| ()),
        Store::Postgres(p) => sqlx::query(q).execute(p).await.map(|_| ()),
    }
    .map_err(|e| e.to_string())
}

/// Bytes the archive takes on disk (table and indexes).
async fn size_on_disk(store: &Store, sqlite_file: Option<&std::path::Path>) -> Result<u64, String> {
    match store {
        Store::Sqlite(pool) => {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(pool)
                .await
                .map_err(|e| e.to_string())?;
            // dbstat is not always compiled in: the file, less what the
            // other (nearly empty) tables take, is close enough.
            let path = sqlite_file.ok_or("no file")?;
            Ok(std::fs::metadata(path).map_err(|e| e.to_string())?.len())
        }
        Store::Postgres(pool) => {
            for table in ["archive_blocks", "archive_owners"] {
                sqlx::query(&format!("VACUUM ANALYZE {table}"))
                    .execute(pool)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let (n,): (i64,) = sqlx::query_as(
                "SELECT pg_total_relation_size('archive_blocks') + pg_total_relation_size('archive_owners')",
            )
                .fetch_one(pool)
                .await
                .map_err(|e| e.to_string())?;
            Ok(n as u64)
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn measure(
    session: &mut xmpp::Session,
    label: &str,
    form: &str,
    args: &Args,
) -> Result<(), String> {
    let mut times = Vec::with_capacity(args.iterations);
    for i in 0..args.iterations + 50 {
        let id = format!("q{i}");
        let q = format!(
            "<iq type='set' id='{id}'><query xmlns='urn:xmpp:mam:2' queryid='{id}'>{form}<set xmlns='http://jabber.org/protocol/rsm'><max>{}</max><before/></set></query></iq>",
            args.page
        );
        let t0 = Instant::now();
        session.stream.send_raw(q.as_bytes()).await?;
        let mut results = 0;
        loop {
            let e = session.stream.next_element().await?;
            if e.name() == "iq" && e.attr("id") == Some(id.as_str()) {
                if e.attr("type") != Some("result") {
                    return Err(format!("query failed: {e:?}"));
                }
                break;
            }
            if e.name() == "message" {
                results += 1;
            }
        }
        // Every page is full unless the archive (or the peer) has fewer.
        if results == 0 || results > args.page {
            return Err(format!(
                "{label}: {results} results for a page of {}",
                args.page
            ));
        }
        if i >= 50 {
            times.push(t0.elapsed());
        }
    }
    times.sort();
    println!(
        "{label}: {} queries of the latest {}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        times.len(),
        args.page,
        percentile(&times, 0.50).as_secs_f64() * 1e3,
        percentile(&times, 0.90).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3,
    );
    Ok(())
}

async fn run(args: Args) -> Result<(), String> {
    // Removed at the end (tempfile is only a dev-dependency).
    let dir = std::env::temp_dir().join(format!("waxwing-mam-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = bench(args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn bench(args: Args, dir: &std::path::Path) -> Result<(), String> {
    let sqlite_file = dir.join("mam.db");
    let url = args
        .db
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", sqlite_file.display()));
    // Seeding goes through one connection that trades durability for
    // speed (a crash mid-seed only spoils the benchmark): a large page
    // cache on SQLite, no commit flush on either.
    let store = Store::open(&url, 1).await.map_err(|e| e.to_string())?;
    let fast: &[&str] = match &store {
        Store::Sqlite(_) => &["PRAGMA synchronous = OFF", "PRAGMA cache_size = -524288"],
        Store::Postgres(_) => &["SET synchronous_commit = off"],
    };
    for q in fast {
        on_store(&store, q).await?;
    }
    // A rerun on the same PostgreSQL database starts from nothing.
    if let Store::Postgres(pool) = &store {
        for q in [
            "DELETE FROM archive_blocks WHERE owner_id IN \
             (SELECT owner_id FROM archive_owners WHERE domain = $1)",
            "DELETE FROM archive_owners WHERE domain = $1",
            "DELETE FROM scram_credentials WHERE domain = $1",
            "DELETE FROM accounts WHERE domain = $1",
        ] {
            sqlx::query(q)
                .bind(DOMAIN)
                .execute(pool)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    println!(
        "database: {}",
        if args.db.is_some() {
            "postgresql"
        } else {
            "sqlite"
        }
    );
    let took = seed(&store, &args).await?;
    println!(
        "seeded {} messages ({} users, the queried one with ~{}, {}-byte bodies) in {:.1} s",
        args.total,
        args.users,
        args.big,
        args.body,
        took.as_secs_f64()
    );
    let bytes = size_on_disk(&store, args.db.is_none().then_some(sqlite_file.as_path())).await?;
    println!(
        "archive on disk: {:.1} MiB, {:.0} KiB per 1,000 messages",
        bytes as f64 / 1048576.0,
        bytes as f64 / args.total as f64 * 1000.0 / 1024.0
    );

    store.close().await;
    let store = Store::open(&url, 8).await.map_err(|e| e.to_string())?;

    let jid = jid::BareJid::new(&format!("u0@{DOMAIN}")).map_err(|e| e.to_string())?;
    let rec = waxwing::accounts::derive_record(&jid, PASSWORD, 4096).map_err(|e| e.to_string())?;
    store
        .create_account(&rec)
        .await
        .map_err(|e| e.to_string())?;

    let mut config = Config::default();
    config.host[0].domain = DOMAIN.into();
    config.database.url = url;
    config.tls.dev_cert_dir = dir.join("certs");
    config.c2s.listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.c2s.listen_tls = Vec::new();
    config.admin.socket = Some(String::new());
    config.log_level = "warn".into();
    let server = Server::with_store(config, store).map_err(|e| e.to_string())?;
    let running = RunningServer::start(server).await?;
    let target = xmpp::Target::scram(
        running.c2s_addrs[0],
        DOMAIN,
        PASSWORD,
        Arc::new(SaltedPasswordCache::new()),
    )?;
    let mut session = xmpp::login(&target, "u0", "bench")
        .await
        .map_err(|f| format!("login: {f:?}"))?;
    measure(&mut session, "latest page", "", &args).await?;
    let with = format!(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:mam:2</value></field><field var='with'><value>p7@{DOMAIN}</value></field></x>"
    );
    measure(&mut session, "latest page with one peer", &with, &args).await?;
    running.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("waxwing-mam-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
