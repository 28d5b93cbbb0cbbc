//! Account storage on both backends: a real SQLite file and the real
//! PostgreSQL server (WAXWING_TEST_POSTGRES, default the local one).

mod common;

use common::*;
use jid::BareJid;
use waxwing::accounts::{
    derive_record, derive_record_with, plain_check, verify_argon2, PasswordHashing, PlainCheck,
};
use waxwing::sasl::ScramHash;
use waxwing::storage::Store;

fn postgres_url() -> String {
    std::env::var("WAXWING_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A domain no other test run uses, so runs against one database never collide.
fn unique_domain() -> String {
    use rand::Rng;
    format!("t{}.example", rand::thread_rng().gen::<u64>())
}

async fn account_lifecycle(store: &Store) {
    let domain = unique_domain();
    let jid = BareJid::new(&format!("alice@{domain}")).unwrap();
    // An account stored with an argon2 hash too, as every account was
    // before argon2 became optional.
    let with_argon2 = PasswordHashing {
        scram_iterations: 4096,
        argon2: Some(argon2::Params::new(64, 1, 1, None).unwrap()),
    };
    let mut mem = Vec::new();
    let rec = derive_record_with(&jid, "first password", &with_argon2, &mut mem).unwrap();
    assert!(store.create_account(&rec).await.unwrap());
    assert!(
        !store.create_account(&rec).await.unwrap(),
        "duplicate refused"
    );

    // What is stored is never the password.
    let phc = store.argon2_hash(&domain, "alice").await.unwrap().unwrap();
    assert!(phc.starts_with("$argon2id$"));
    assert!(!phc.contains("first password"));
    assert!(verify_argon2(&phc, "first password", &mut mem));
    assert!(!verify_argon2(&phc, "wrong", &mut mem));
    // PLAIN checks such a row against its SCRAM keys by default, against
    // the argon2 hash when argon2 is configured: it logs in either way.
    let scram_only = PasswordHashing::scram_only(4096);
    let check = plain_check(store, &domain, "alice", &scram_only)
        .await
        .unwrap();
    assert!(matches!(check, PlainCheck::Scram(_)), "{check:?}");
    assert!(check.verify("first password", &mut mem));
    assert!(!check.verify("wrong", &mut mem));
    let check = plain_check(store, &domain, "alice", &with_argon2)
        .await
        .unwrap();
    assert!(matches!(check, PlainCheck::Argon2(_)), "{check:?}");
    assert!(check.verify("first password", &mut mem));
    assert!(!check.verify("wrong", &mut mem));
    let check = plain_check(store, &domain, "nobody", &scram_only)
        .await
        .unwrap();
    assert!(matches!(check, PlainCheck::Unknown { .. }), "{check:?}");
    assert!(!check.verify("first password", &mut mem));
    for hash in [ScramHash::Sha1, ScramHash::Sha256, ScramHash::Sha512] {
        let c = waxwing::accounts::scram_credentials(store, &domain, "alice", hash)
            .await
            .unwrap()
            .expect("keys for every SCRAM hash");
        assert_eq!(c.iterations, 4096);
        assert_eq!(c.stored_key.len(), hash.output_len());
        assert!(c.verify_password("first password"));
    }

    let rec2 = derive_record(&jid, "second password", 4096).unwrap();
    assert!(store.set_credentials(&rec2).await.unwrap());
    // The new password has no argon2 hash: the old one is gone with it, and
    // even with argon2 configured PLAIN uses the SCRAM keys.
    assert_eq!(
        store
            .argon2_hash(&domain, "alice")
            .await
            .unwrap()
            .as_deref(),
        Some("")
    );
    let check = plain_check(store, &domain, "alice", &with_argon2)
        .await
        .unwrap();
    assert!(matches!(check, PlainCheck::Scram(_)), "{check:?}");
    assert!(check.verify("second password", &mut mem));
    assert!(!check.verify("first password", &mut mem));
    let c = waxwing::accounts::scram_credentials(store, &domain, "alice", ScramHash::Sha256)
        .await
        .unwrap()
        .unwrap();
    assert!(c.verify_password("second password"));
    assert!(!c.verify_password("first password"));

    let bob = BareJid::new(&format!("bob@{domain}")).unwrap();
    assert!(store
        .create_account(&derive_record(&bob, "pw", 4096).unwrap())
        .await
        .unwrap());
    assert_eq!(
        store.list_accounts(Some(&domain)).await.unwrap(),
        vec![format!("alice@{domain}"), format!("bob@{domain}")]
    );

    assert!(store.delete_account(&domain, "alice").await.unwrap());
    assert!(!store.delete_account(&domain, "alice").await.unwrap());
    assert!(store.argon2_hash(&domain, "alice").await.unwrap().is_none());
    assert!(store
        .scram_credentials(&domain, "alice", "SHA-256")
        .await
        .unwrap()
        .is_none());
    assert!(
        !store.set_credentials(&rec2).await.unwrap(),
        "no such account"
    );
    assert!(store.delete_account(&domain, "bob").await.unwrap());
}

#[tokio::test]
async fn sqlite_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/nested/dir/w.db", dir.path().display());
    let store = Store::open(&url, 2).await.unwrap();
    account_lifecycle(&store).await;
    store.close().await;
    // Reopening applies no migration twice and keeps data.
    let store = Store::open(&url, 2).await.unwrap();
    let domain = unique_domain();
    let jid = BareJid::new(&format!("keep@{domain}")).unwrap();
    assert!(store
        .create_account(&derive_record(&jid, "pw", 4096).unwrap())
        .await
        .unwrap());
    store.close().await;
    let store = Store::open(&url, 2).await.unwrap();
    assert_eq!(store.list_accounts(Some(&domain)).await.unwrap().len(), 1);
}

#[tokio::test]
async fn postgres_accounts() {
    let store = Store::open(&postgres_url(), 2)
        .await
        .expect("PostgreSQL must be reachable (see scripts/test.sh)");
    account_lifecycle(&store).await;
}

#[tokio::test]
async fn login_and_chat_with_postgres_storage() {
    let server = TestServer::start_with(|c| c.database.url = postgres_url()).await;
    // The accounts live in the shared test database: unique names per run.
    let tag = unique_domain().replace('.', "");
    let (a, b) = (format!("a{tag}"), format!("b{tag}"));
    server.add_user(&a, "pw").await;
    server.add_user(&b, "pw").await;
    let mut ca = Client::login(server.plain_addr, &a, "pw", Some("r")).await;
    let mut cb = Client::login(server.plain_addr, &b, "pw", Some("r")).await;
    ca.send_str(&format!(
        "<message to='{b}@localhost/r' type='chat'><body>via pg</body></message>"
    ))
    .await;
    let m = cb.next_named("message").await;
    assert_eq!(m.attr("from"), Some(format!("{a}@localhost/r").as_str()));
    for u in [&a, &b] {
        server.store().delete_account("localhost", u).await.unwrap();
    }
}

#[tokio::test]
async fn concurrent_opens_of_a_new_sqlite_database_all_succeed() {
    // `waxwing ctl` runs beside the server or beside another `ctl`: each
    // opens the database and applies migrations.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/fresh.db", dir.path().display());
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                Store::open(&url, 1)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    for o in opens {
        o.await
            .unwrap()
            .expect("every concurrent open migrates or finds it migrated");
    }
}
