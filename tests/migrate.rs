//! `ctl import` / `ctl export` (XEP-0227) on real SQLite files and a real
//! PostgreSQL (WAXWING_TEST_POSTGRES): the shapes Prosody 0.12 and
//! ejabberd 23.01 write, then logins over real sockets with the old
//! passwords; dry runs, idempotence, a broken user in the middle, and the
//! export → import round trip. tests/interop/test_migrate.py does the same
//! with exports made by the real servers.

mod common;

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::*;
use waxwing::accounts::PasswordHashing;
use waxwing::migrate::import::{import, ImportOptions, ImportReport};
use waxwing::sasl::{ScramCredentials, ScramHash};
use waxwing::storage::{Store, Tally};
use waxwing::xml::{Element, NS_CLIENT};

/// SCRAM-SHA-1 keys of `password` as Prosody 0.12 exports them (10,000
/// iterations, each value base64-encoded once), or as ejabberd 23.01 does
/// (4096, each base64-encoded twice).
fn scram_sha1(password: &str, ejabberd: bool) -> String {
    let it = if ejabberd { 4096 } else { 10_000 };
    let c = ScramCredentials::generate(ScramHash::Sha1, password, it);
    let enc = |b: &[u8]| {
        let once = B64.encode(b);
        if ejabberd {
            B64.encode(once)
        } else {
            once
        }
    };
    format!(
        "<scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'>\
         <server-key>{}</server-key><stored-key>{}</stored-key><iter-count>{it}</iter-count>\
         <salt>{}</salt></scram-credentials>",
        enc(&c.server_key),
        enc(&c.stored_key),
        enc(&c.salt)
    )
}

/// juliet as Prosody exports her (one file), romeo and mercutio as ejabberd
/// does (a main file including a host file), and, when `broken`, a user
/// whose keys are garbage between them.
fn write_export(dir: &Path, domain: &str, broken: bool) {
    let juliet = format!(
        "<?xml version='1.0' encoding='UTF-8'?>\
<server-data xmlns='urn:xmpp:pie:0'><host jid='{domain}'><user name='juliet'>{keys}\
<query xmlns='jabber:iq:roster' version='3'>\
  <item jid='romeo@{domain}' name='Romeo' subscription='both'><group>Friends</group><group>Montagues</group></item>\
  <item jid='nurse@verona.lit' subscription='none' ask='subscribe'/>\
</query>\
<presence xmlns='jabber:client' type='subscribe' from='tybalt@verona.lit'><nick xmlns='http://jabber.org/protocol/nick'>Tybalt</nick></presence>\
<vCard xmlns='vcard-temp'><FN>Juliet Capulet</FN><NICKNAME>Jules</NICKNAME></vCard>\
<query xmlns='jabber:iq:private'><exodus xmlns='exodus:prefs'><defaultnick>Jules</defaultnick></exodus>\
  <storage xmlns='storage:bookmarks'><conference jid='balcony@chat.verona.lit' name='Balcony' autojoin='true'/></storage></query>\
<pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><configure node='http://jabber.org/protocol/nick'>\
  <x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field>\
  <field var='pubsub#access_model'><value>roster</value></field><field var='pubsub#max_items'><value>1</value></field>\
  <field var='pubsub#roster_groups_allowed'><value>Friends</value><value>Montagues</value></field></x></configure></pubsub>\
<pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='http://jabber.org/protocol/nick'>\
  <item id='current'><nick xmlns='http://jabber.org/protocol/nick'>Jules</nick></item></items></pubsub>\
<archive xmlns='urn:xmpp:pie:0#mam'>\
  <result xmlns='urn:xmpp:mam:2' id='9b3a1d2e-old-uuid'><forwarded xmlns='urn:xmpp:forward:0'>\
    <delay xmlns='urn:xmpp:delay' stamp='2026-11-01T10:00:00Z'/>\
    <message xmlns='jabber:client' from='romeo@{domain}/orchard' to='juliet@{domain}/balcony' type='chat'><body>Lady, by yonder blessed moon</body></message>\
  </forwarded></result></archive>\
</user></host></server-data>\n",
        keys = scram_sha1("juliet-pw", false)
    );
    std::fs::write(dir.join(format!("juliet@{domain}.xml")), juliet).unwrap();
    std::fs::write(
        dir.join("20261204-102011.xml"),
        "<?xml version='1.0' encoding='UTF-8'?><server-data xmlns='urn:xmpp:pie:0' \
         xmlns:xi='http://www.w3.org/2001/XInclude'><xi:include href='20261204-102011_host.xml'/></server-data>",
    )
    .unwrap();
    let bad = if broken {
        "<user name='tybalt'><scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'>\
         <iter-count>4096</iter-count><salt>eHg=</salt><server-key>bm90IGEga2V5</server-key>\
         <stored-key>bm90IGEga2V5</stored-key></scram-credentials></user>"
    } else {
        ""
    };
    let host = format!(
        "<?xml version='1.0' encoding='UTF-8'?><host xmlns='urn:xmpp:pie:0' \
         xmlns:xi='http://www.w3.org/2001/XInclude' jid='{domain}'>\
         <user name='romeo'>{keys}<query xmlns='jabber:iq:roster'>\
           <item xmlns='jabber:iq:roster' jid='juliet@{domain}' name='Juliet' subscription='both'><group>Capulets</group></item></query>\
         <offline-messages><message xmlns='jabber:client' from='mercutio@{domain}/street' to='romeo@{domain}' type='chat' id='m1'>\
           <body>A plague o' both your houses!</body><delay xmlns='urn:xmpp:delay' from='{domain}' stamp='2026-11-02T08:00:00Z'>Offline Storage</delay></message></offline-messages>\
         <query xmlns='jabber:iq:privacy'><default name='Blocked contacts'/><list name='Blocked contacts'>\
           <item type='jid' value='paris@verona.lit' action='deny' order='1'/></list></query>\
         </user>{bad}<user name='mercutio' password='mercutio-pw'/></host>",
        keys = scram_sha1("romeo-pw", true)
    );
    std::fs::write(dir.join("20261204-102011_host.xml"), host).unwrap();
}

fn options(domain: &str, dry_run: bool) -> ImportOptions {
    ImportOptions {
        dry_run,
        max_user_bytes: 1 << 20,
        hashing: PasswordHashing::scram_only(4096),
        hosts: vec![domain.to_string()],
        progress: false,
    }
}

/// Rows of every per-user table, by table (what "nothing changed" compares).
async fn row_counts(store: &Store) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for table in Store::USER_TABLES
        .iter()
        .chain(&["accounts", "archive_blocks", "user_data"])
    {
        let q = format!("SELECT COUNT(*) FROM {table}");
        let (n,): (i64,) = match store {
            Store::Sqlite(p) => sqlx::query_as(&q).fetch_one(p).await.unwrap(),
            Store::Postgres(p) => sqlx::query_as(&q).fetch_one(p).await.unwrap(),
        };
        out.push((table.to_string(), n));
    }
    out
}

fn created(t: Tally) -> u64 {
    t.created
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}/waxwing.db", dir.display())
}

#[tokio::test]
async fn dry_run_writes_nothing_and_a_second_import_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    std::fs::create_dir(&export).unwrap();
    write_export(&export, DOMAIN, false);
    let store = Store::open(&sqlite_url(dir.path()), 2).await.unwrap();
    let empty = row_counts(&store).await;

    let dry = import(&store, &export, &options(DOMAIN, true))
        .await
        .unwrap();
    assert_eq!(row_counts(&store).await, empty, "a dry run writes nothing");
    assert!(
        dry.failed.is_empty() && dry.file_errors.is_empty(),
        "{dry:?}"
    );
    assert_eq!(dry.users, 3);
    assert_eq!(
        dry.files, 2,
        "the host file is read through the main file only"
    );

    let first = import(&store, &export, &options(DOMAIN, false))
        .await
        .unwrap();
    assert!(first.failed.is_empty(), "{first:?}");
    // The dry run said what the import did.
    assert_eq!(dry.counts, first.counts);
    let c = &first.counts;
    assert_eq!(created(c.accounts), 3);
    assert_eq!(
        created(c.roster),
        4,
        "juliet: romeo, nurse, tybalt's request; romeo: juliet"
    );
    assert_eq!(created(c.vcards), 1);
    assert_eq!(created(c.private), 2);
    assert_eq!(created(c.offline), 1);
    assert_eq!(created(c.pep_nodes), 1);
    assert_eq!(created(c.pep_items), 1);
    assert_eq!(created(c.blocklist), 1);
    assert_eq!(created(c.archive), 1);
    let after = row_counts(&store).await;
    assert_ne!(after, empty);

    let second = import(&store, &export, &options(DOMAIN, false))
        .await
        .unwrap();
    for (kind, t) in second.counts.kinds() {
        assert_eq!(
            (t.created, t.changed),
            (0, 0),
            "{kind} changed on the second import"
        );
    }
    assert_eq!(second.counts.roster.unchanged, 4);
    assert_eq!(
        row_counts(&store).await,
        after,
        "importing twice changes nothing"
    );
    store.close().await;
}

#[tokio::test]
async fn a_broken_user_is_left_out_whole_and_the_others_go_in() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    std::fs::create_dir(&export).unwrap();
    write_export(&export, DOMAIN, true);
    let store = Store::open(&sqlite_url(dir.path()), 2).await.unwrap();
    // A failure in the database half-way through romeo (after his account
    // and roster row are written): his transaction must take them back.
    let Store::Sqlite(pool) = &store else {
        unreachable!()
    };
    sqlx::query(
        "CREATE TRIGGER fail_romeo BEFORE INSERT ON offline_messages WHEN NEW.username = 'romeo' \
         BEGIN SELECT RAISE(ABORT, 'disk on fire'); END",
    )
    .execute(pool)
    .await
    .unwrap();
    let report: ImportReport = import(&store, &export, &options(DOMAIN, false))
        .await
        .unwrap();
    assert_eq!(report.users, 2, "{report:?}");
    assert_eq!(report.failed.len(), 2, "{:?}", report.failed);
    assert!(report
        .failed
        .iter()
        .any(|f| f.contains("tybalt@localhost") && f.contains("not base64")));
    assert!(report
        .failed
        .iter()
        .any(|f| f.contains("romeo@localhost") && f.contains("disk on fire")));
    assert!(!store.account_exists(DOMAIN, "romeo").await.unwrap());
    assert!(store
        .roster_items(DOMAIN, "romeo")
        .await
        .unwrap()
        .is_empty());
    assert!(!store.account_exists(DOMAIN, "tybalt").await.unwrap());
    // Those before and after it are whole.
    assert!(store.account_exists(DOMAIN, "juliet").await.unwrap());
    assert!(store.account_exists(DOMAIN, "mercutio").await.unwrap());
    assert_eq!(store.roster_items(DOMAIN, "juliet").await.unwrap().len(), 2);
    let text = report.render(false);
    assert!(text.contains("user not imported: "), "{text}");
    store.close().await;
}

/// SASL PLAIN over the client's (TLS) stream; returns the answer.
async fn plain(c: &mut Client, user: &str, pass: &str) -> Element {
    let data = b64(format!("\0{user}\0{pass}").as_bytes());
    c.send_str(&format!(
        "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{data}</auth>"
    ))
    .await;
    let answer = c.next_element().await;
    if answer.is("success", NS_SASL) {
        c.parser.reset();
    }
    answer
}

async fn session(c: &mut Client) {
    c.open_stream().await;
    let features = c.next_element().await;
    assert!(features.get_child("bind", NS_BIND).is_some());
    c.bind(Some("r")).await;
}

async fn connect(ts: &TestServer) -> Client {
    let mut c = Client::connect(ts.plain_addr).await;
    c.starttls().await;
    c
}

fn result_child<'a>(r: &'a Element, name: &str, ns: &str) -> &'a Element {
    assert_eq!(r.attr("type"), Some("result"), "{}", show(r));
    r.get_child(name, ns)
        .unwrap_or_else(|| panic!("{}", show(r)))
}

#[tokio::test]
async fn imported_users_log_in_with_their_old_passwords_and_find_their_data() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    std::fs::create_dir(&export).unwrap();
    write_export(&export, DOMAIN, false);
    let url = sqlite_url(dir.path());
    {
        let store = Store::open(&url, 2).await.unwrap();
        let r = import(&store, &export, &options(DOMAIN, false))
            .await
            .unwrap();
        assert!(r.failed.is_empty(), "{r:?}");
        store.close().await;
    }
    let ts = TestServer::start_with(|c| c.database.url = url.clone()).await;

    // SHA-1 keys only: SCRAM-SHA-256 is not available for juliet (a
    // condition clients answer by trying the next mechanism), SCRAM-SHA-1 is.
    let mut c = connect(&ts).await;
    let r = c
        .scram(ScramHash::Sha256, "juliet", "juliet-pw", false)
        .await;
    assert!(r.is("failure", NS_SASL), "{}", show(&r));
    assert!(
        r.get_child("invalid-mechanism", NS_SASL).is_some(),
        "{}",
        show(&r)
    );
    let r = c.scram(ScramHash::Sha1, "juliet", "juliet-pw", false).await;
    assert!(r.is("success", NS_SASL), "{}", show(&r));
    // A wrong password is still a wrong password.
    let mut c = connect(&ts).await;
    let r = c.scram(ScramHash::Sha1, "juliet", "romeo-pw", false).await;
    assert!(
        r.get_child("not-authorized", NS_SASL).is_some(),
        "{}",
        show(&r)
    );
    let r = plain(&mut c, "juliet", "wrong").await;
    assert!(
        r.get_child("not-authorized", NS_SASL).is_some(),
        "{}",
        show(&r)
    );
    // PLAIN checks against the SHA-1 keys and adds SHA-256/512 keys.
    let mut c = connect(&ts).await;
    let r = plain(&mut c, "juliet", "juliet-pw").await;
    assert!(r.is("success", NS_SASL), "{}", show(&r));
    let store = ts.store().clone();
    eventually("SHA-256 keys after the PLAIN login", || {
        let store = store.clone();
        async move {
            store
                .scram_credentials(DOMAIN, "juliet", "SHA-256")
                .await
                .unwrap()
                .is_some()
        }
    })
    .await;
    let mut c = Client::login(ts.plain_addr, "juliet", "juliet-pw", Some("balcony")).await;

    // The roster: groups, names, subscriptions, a pending ask.
    let r = c
        .iq(
            "<iq type='get' id='ro'><query xmlns='jabber:iq:roster'/></iq>",
            "ro",
        )
        .await;
    let q = result_child(&r, "query", "jabber:iq:roster");
    let items: Vec<&Element> = q.children().collect();
    assert_eq!(items.len(), 2, "{}", show(&r));
    let romeo = items
        .iter()
        .find(|i| i.attr("jid") == Some("romeo@localhost"))
        .unwrap();
    assert_eq!(romeo.attr("subscription"), Some("both"));
    assert_eq!(romeo.attr("name"), Some("Romeo"));
    let groups: Vec<String> = romeo.children().map(|g| g.text()).collect();
    assert_eq!(groups, vec!["Friends", "Montagues"]);
    let nurse = items
        .iter()
        .find(|i| i.attr("jid") == Some("nurse@verona.lit"))
        .unwrap();
    assert_eq!(nurse.attr("ask"), Some("subscribe"));
    // The vCard, private XML, the PEP item, the archive.
    let r = c
        .iq(
            "<iq type='get' id='vc'><vCard xmlns='vcard-temp'/></iq>",
            "vc",
        )
        .await;
    let v = result_child(&r, "vCard", "vcard-temp");
    assert_eq!(
        v.get_child("FN", "vcard-temp").unwrap().text(),
        "Juliet Capulet"
    );
    let r = c
        .iq(
            "<iq type='get' id='pr'><query xmlns='jabber:iq:private'><exodus xmlns='exodus:prefs'/></query></iq>",
            "pr",
        )
        .await;
    let q = result_child(&r, "query", "jabber:iq:private");
    let prefs = q.get_child("exodus", "exodus:prefs").unwrap();
    assert_eq!(prefs.children().next().unwrap().text(), "Jules");
    let r = c
        .iq(
            "<iq type='get' id='pe'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
             <items node='http://jabber.org/protocol/nick'/></pubsub></iq>",
            "pe",
        )
        .await;
    let p = result_child(&r, "pubsub", "http://jabber.org/protocol/pubsub");
    let item = p.children().next().unwrap().children().next().unwrap();
    assert_eq!(item.attr("id"), Some("current"));
    assert_eq!(item.children().next().unwrap().text(), "Jules");
    let since = c.mark();
    let r = c
        .iq(
            "<iq type='set' id='mam'><query xmlns='urn:xmpp:mam:2' queryid='q'/></iq>",
            "mam",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let results: String = c.received[since..].iter().map(show).collect();
    assert!(
        results.contains("Lady, by yonder blessed moon") && results.contains("2026-11-01T10:00:00"),
        "{results}"
    );

    // romeo: ejabberd's double-encoded keys, his offline message, his blocks.
    let mut r = Client::connect(ts.plain_addr).await;
    r.starttls().await;
    let ok = r.scram(ScramHash::Sha1, "romeo", "romeo-pw", false).await;
    assert!(ok.is("success", NS_SASL), "{}", show(&ok));
    session(&mut r).await;
    r.send_str("<presence/>").await;
    let m = r.next_named("message").await;
    assert_eq!(
        m.get_child("body", NS_CLIENT).unwrap().text(),
        "A plague o' both your houses!"
    );
    let b = r
        .iq(
            "<iq type='get' id='bl'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
            "bl",
        )
        .await;
    let list = result_child(&b, "blocklist", "urn:xmpp:blocking");
    let blocked: Vec<&str> = list.children().filter_map(|i| i.attr("jid")).collect();
    assert_eq!(blocked, vec!["paris@verona.lit"]);

    // mercutio had a clear-text password: every hash is there at once.
    let mut m = Client::connect(ts.plain_addr).await;
    m.starttls().await;
    let ok = m
        .scram(ScramHash::Sha512, "mercutio", "mercutio-pw", false)
        .await;
    assert!(ok.is("success", NS_SASL), "{}", show(&ok));
}

fn postgres_url() -> String {
    std::env::var("WAXWING_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The files of an export directory, by name.
fn files(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Source → `a` → export → `b` → export: both exports are the same and
/// every account reads back equal (nothing lost on the way).
async fn round_trip(a: &Store, b: &Store, domain: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (src, out1, out2) = (
        dir.path().join("src"),
        dir.path().join("out1"),
        dir.path().join("out2"),
    );
    std::fs::create_dir(&src).unwrap();
    write_export(&src, domain, false);
    let r = import(a, &src, &options(domain, false)).await.unwrap();
    assert!(r.failed.is_empty(), "{r:?}");
    let e = waxwing::migrate::export::export(a, &out1, Some(domain), false)
        .await
        .unwrap();
    assert_eq!(e.users, 3);
    let r = import(b, &out1, &options(domain, false)).await.unwrap();
    assert!(r.failed.is_empty() && r.file_errors.is_empty(), "{r:?}");
    assert_eq!(r.counts.accounts.created, 3);
    waxwing::migrate::export::export(b, &out2, Some(domain), false)
        .await
        .unwrap();
    assert_eq!(
        files(&out1),
        files(&out2),
        "the export is read back losslessly"
    );
    for user in ["juliet", "romeo", "mercutio"] {
        let x = a.export_user(domain, user).await.unwrap().unwrap();
        let y = b.export_user(domain, user).await.unwrap().unwrap();
        assert_eq!(x, y, "{user}");
    }
    let j = a.export_user(domain, "juliet").await.unwrap().unwrap();
    assert_eq!(j.roster.len(), 3);
    assert_eq!(j.requests[0].1.nick.as_deref(), Some("Tybalt"));
    assert_eq!(j.archive.len(), 1);
    assert_eq!(j.pep[0].items.len(), 1);
    let config = j.pep[0].config.as_deref().unwrap();
    assert!(config.contains("pubsub#access_model=roster"), "{config}");
    assert!(
        config.contains(
            "pubsub#roster_groups_allowed=Friends\npubsub#roster_groups_allowed=Montagues"
        ),
        "{config}"
    );
    // Importing an export into the store it came from changes nothing.
    let again = import(a, &out1, &options(domain, false)).await.unwrap();
    for (kind, t) in again.counts.kinds() {
        assert_eq!((t.created, t.changed), (0, 0), "{kind}");
    }
}

#[tokio::test]
async fn export_then_import_round_trips_between_sqlite_and_postgres() {
    use rand::Rng;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(&sqlite_url(dir.path()), 2).await.unwrap();
    let pg = Store::open(&postgres_url(), 2)
        .await
        .expect("PostgreSQL must be reachable (WAXWING_TEST_POSTGRES)");
    // A domain of this run only: the PostgreSQL database is shared.
    let domain = format!("pie{}.test", rand::thread_rng().gen::<u32>());
    round_trip(&sqlite, &pg, &domain).await;
    let other = tempfile::tempdir().unwrap();
    let sqlite2 = Store::open(&sqlite_url(other.path()), 2).await.unwrap();
    let domain2 = format!("pie{}.test", rand::thread_rng().gen::<u32>());
    round_trip(&pg, &sqlite2, &domain2).await;
    for d in [&domain, &domain2] {
        for user in ["juliet", "romeo", "mercutio"] {
            pg.delete_account(d, user).await.unwrap();
        }
    }
    sqlite.close().await;
    sqlite2.close().await;
    pg.close().await;
}

/// The command line: `ctl import --dry-run` reports per kind and writes
/// nothing, `ctl import` says which user it left out and exits 3, `ctl
/// export` writes one file per account, and a limit from the config
/// (`import_max_user_bytes`) is applied; stdout is no terminal here, so
/// no progress bar is drawn into it.
#[test]
fn ctl_import_and_export_from_the_command_line() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    std::fs::create_dir(&export).unwrap();
    write_export(&export, "example.org", true);
    let config = dir.path().join("waxwing.toml");
    let write = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[[host]]\ndomain = \"example.org\"\n[database]\nurl = \"sqlite://{}/db.sqlite\"\n{extra}",
                dir.path().display()
            ),
        )
        .unwrap()
    };
    write("");
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_waxwing"))
            .arg("ctl")
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let export_arg = export.to_str().unwrap();
    let (code, out) = ctl(&["import", "--dry-run", export_arg]);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.starts_with("would import 3 users from 2 files (dry run: nothing written)"),
        "{out}"
    );
    assert!(out.contains("WOULD-CREATE"), "{out}");
    assert!(
        out.contains("user not imported: tybalt@example.org"),
        "{out}"
    );
    assert!(
        !out.contains('\r') && !out.contains('\u{1b}'),
        "no progress bar off a terminal: {out:?}"
    );
    let (_, list) = ctl(&["user", "list"]);
    assert_eq!(list.trim(), "", "a dry run creates nobody");

    let (code, out) = ctl(&["import", export_arg]);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.starts_with("imported 3 users"), "{out}");
    let (_, list) = ctl(&["user", "list"]);
    assert_eq!(
        list.lines().collect::<Vec<_>>(),
        vec![
            "juliet@example.org",
            "mercutio@example.org",
            "romeo@example.org"
        ]
    );

    let out_dir = dir.path().join("out");
    let (code, out) = ctl(&["export", out_dir.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("exported 3 accounts"), "{out}");
    assert!(out_dir.join("juliet@example.org.xml").is_file());

    // The per-user limit comes from the config: juliet's file is ~3 KB.
    write("[limits]\nimport_max_user_bytes = 65536\n");
    let (code, _) = ctl(&["import", "--dry-run", export_arg]);
    assert_eq!(code, Some(3));
    let big = format!("<x xmlns='urn:x'>{}</x>", "p".repeat(70_000));
    let text = std::fs::read_to_string(export.join("juliet@example.org.xml")).unwrap();
    std::fs::write(
        export.join("juliet@example.org.xml"),
        text.replace(
            "<vCard xmlns='vcard-temp'>",
            &format!("{big}<vCard xmlns='vcard-temp'>"),
        ),
    )
    .unwrap();
    let (code, out) = ctl(&["import", "--dry-run", export_arg]);
    assert_eq!(code, Some(3));
    assert!(
        out.contains("larger than import_max_user_bytes (65536)"),
        "{out}"
    );
}
