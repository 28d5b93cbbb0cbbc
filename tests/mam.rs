//! Message Archive Management (XEP-0313 + #extended, XEP-0359 stanza-id,
//! XEP-0059 paging, XEP-0441 preferences) over real sockets, each test body
//! run on a SQLite file and on PostgreSQL (WAXWING_TEST_POSTGRES).

mod common;

use common::*;
use waxwing::xml::{Element, NS_CLIENT};

const NS_MAM: &str = "urn:xmpp:mam:2";
const NS_RSM: &str = "http://jabber.org/protocol/rsm";
const NS_SID: &str = "urn:xmpp:sid:0";
const NS_FORWARD: &str = "urn:xmpp:forward:0";
const NS_DATA: &str = "jabber:x:data";

fn postgres_url() -> String {
    std::env::var("WAXWING_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn sqlite() -> TestServer {
    TestServer::start().await
}

async fn postgres() -> TestServer {
    TestServer::start_with(|c| c.database.url = postgres_url()).await
}

/// Usernames no other run uses (runs share one PostgreSQL database).
fn names<const N: usize>(base: [&str; N]) -> [String; N] {
    let tag: u32 = rand::random();
    base.map(|b| format!("{b}{tag}"))
}

async fn users<const N: usize>(ts: &TestServer, base: [&str; N]) -> [String; N] {
    let n = names(base);
    for u in &n {
        ts.add_user(u, "pw").await;
    }
    n
}

async fn login(ts: &TestServer, user: &str, resource: &str) -> Client {
    let mut c = Client::login(ts.plain_addr, user, "pw", Some(resource)).await;
    c.barrier().await;
    c
}

fn jid(user: &str) -> String {
    format!("{user}@{DOMAIN}")
}

/// One query's answer: the result messages in order, and the IQ.
struct Answer {
    results: Vec<Element>,
    iq: Element,
}

impl Answer {
    fn ok(&self) -> &Element {
        assert_eq!(self.iq.attr("type"), Some("result"), "{}", show(&self.iq));
        self.iq.get_child("fin", NS_MAM).expect("fin")
    }
    fn bodies(&self) -> Vec<String> {
        self.results.iter().map(|m| body_of(forwarded(m))).collect()
    }
    fn ids(&self) -> Vec<String> {
        self.results
            .iter()
            .map(|m| result_of(m).attr("id").unwrap().to_string())
            .collect()
    }
    fn set(&self) -> &Element {
        self.ok().get_child("set", NS_RSM).expect("set")
    }
    fn count(&self) -> i64 {
        self.set()
            .get_child("count", NS_RSM)
            .unwrap()
            .text()
            .parse()
            .unwrap()
    }
    fn first_index(&self) -> Option<i64> {
        let f = self.set().get_child("first", NS_RSM)?;
        Some(f.attr("index").unwrap().parse().unwrap())
    }
    fn first(&self) -> String {
        self.set().get_child("first", NS_RSM).unwrap().text()
    }
    fn last(&self) -> String {
        self.set().get_child("last", NS_RSM).unwrap().text()
    }
    fn complete(&self) -> bool {
        self.ok().attr("complete") == Some("true")
    }
    fn error(&self) -> Option<String> {
        stanza_error(&self.iq)
    }
}

fn result_of(m: &Element) -> &Element {
    m.get_child("result", NS_MAM).expect("result")
}

fn forwarded(m: &Element) -> &Element {
    result_of(m)
        .get_child("forwarded", NS_FORWARD)
        .unwrap()
        .get_child("message", NS_CLIENT)
        .expect("forwarded message")
}

fn body_of(m: &Element) -> String {
    m.get_child("body", NS_CLIENT)
        .map(|b| b.text())
        .unwrap_or_default()
}

/// The stanza-ids of a delivered message by `by`.
fn stanza_ids(m: &Element, by: &str) -> Vec<String> {
    m.children()
        .filter(|c| c.is("stanza-id", NS_SID) && c.attr("by") == Some(by))
        .map(|c| c.attr("id").unwrap().to_string())
        .collect()
}

/// Sends `<query queryid='q'>{form}{set}</query>` and collects the answer.
async fn query(c: &mut Client, form: &str, set: &str) -> Answer {
    query_raw(
        c,
        &format!("<query xmlns='{NS_MAM}' queryid='q'>{form}{set}</query>"),
    )
    .await
}

async fn query_raw(c: &mut Client, payload: &str) -> Answer {
    let id = format!("mam{}", rand::random::<u32>());
    c.send_str(&format!("<iq type='set' id='{id}'>{payload}</iq>"))
        .await;
    let mut results = Vec::new();
    loop {
        let e = c.next_element().await;
        if e.is("iq", NS_CLIENT) && e.attr("id") == Some(id.as_str()) {
            return Answer { results, iq: e };
        }
        if e.is("message", NS_CLIENT) && e.get_child("result", NS_MAM).is_some() {
            assert_eq!(result_of(&e).attr("queryid"), Some("q"));
            results.push(e);
        }
    }
}

fn form(fields: &[(&str, &[&str])]) -> String {
    let mut x = format!(
        "<x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE' type='hidden'><value>{NS_MAM}</value></field>"
    );
    for (var, values) in fields {
        x.push_str(&format!("<field var='{var}'>"));
        for v in *values {
            x.push_str(&format!("<value>{v}</value>"));
        }
        x.push_str("</field>");
    }
    x.push_str("</x>");
    x
}

/// The id of the archive's first message.
async fn ans_first_id(c: &mut Client) -> String {
    query(c, "", &rsm("<max>1</max>")).await.first()
}

fn rsm(inner: &str) -> String {
    format!("<set xmlns='{NS_RSM}'>{inner}</set>")
}

/// Sends `n` chat messages "{prefix}{i}" to `to`, then a barrier: every one
/// is archived before the barrier's answer.
async fn send_chats(c: &mut Client, to: &str, prefix: &str, n: usize) {
    let mut batch = String::new();
    for i in 0..n {
        batch.push_str(&format!(
            "<message type='chat' to='{to}' id='m{i}'><body>{prefix}{i}</body></message>"
        ));
        if (i + 1) % 100 == 0 {
            // A barrier per hundred: each has the harness's timeout.
            c.send_str(&batch).await;
            batch.clear();
            c.barrier().await;
        }
    }
    c.send_str(&batch).await;
    c.barrier().await;
}

async fn paging_through_1000(ts: TestServer) {
    let [a, b] = users(&ts, ["pa", "pb"]).await;
    let mut ca = login(&ts, &a, "r").await;
    // The recipient is offline: the messages also go to offline storage
    // (its quota is 1,000), and are in both archives.
    send_chats(&mut ca, &jid(&b), "n", 1000).await;
    let expected: Vec<String> = (0..1000).map(|i| format!("n{i}")).collect();

    // Forward, 100 at a time, with <after/>.
    let mut got = Vec::new();
    let mut after: Option<String> = None;
    for page in 0..10 {
        let set = match &after {
            None => rsm("<max>100</max>"),
            Some(id) => rsm(&format!("<max>100</max><after>{id}</after>")),
        };
        let ans = query(&mut ca, "", &set).await;
        assert_eq!(ans.count(), 1000);
        assert_eq!(ans.results.len(), 100);
        assert_eq!(ans.first_index(), Some(page * 100));
        assert_eq!(ans.first(), ans.ids()[0]);
        assert_eq!(ans.last(), ans.ids()[99]);
        assert_eq!(ans.complete(), page == 9, "page {page}");
        after = Some(ans.last());
        got.extend(ans.bodies());
    }
    assert_eq!(got, expected);
    let past = query(
        &mut ca,
        "",
        &rsm(&format!("<max>100</max><after>{}</after>", after.unwrap())),
    )
    .await;
    assert!(past.results.is_empty());
    assert!(past.complete());
    assert_eq!(past.count(), 1000);

    // Backward from the last page, with <before/>.
    let mut got = Vec::new();
    let mut before = String::new();
    for page in 0..10 {
        let ans = query(
            &mut ca,
            "",
            &rsm(&format!("<max>100</max><before>{before}</before>")),
        )
        .await;
        assert_eq!(ans.count(), 1000);
        assert_eq!(ans.results.len(), 100);
        assert_eq!(ans.first_index(), Some(900 - page * 100));
        assert_eq!(ans.complete(), page == 9, "page {page}");
        let mut bodies = ans.bodies();
        bodies.extend(got);
        got = bodies;
        before = ans.first();
    }
    assert_eq!(got, expected);

    // A page by position (XEP-0059 §2.5), past one read of 250: exactly
    // the items from 371 on, with that index.
    let ans = query(&mut ca, "", &rsm("<max>10</max><index>371</index>")).await;
    assert_eq!(ans.count(), 1000);
    assert_eq!(ans.first_index(), Some(371));
    let want: Vec<String> = (371..381).map(|i| format!("n{i}")).collect();
    assert_eq!(ans.bodies(), want);
    assert!(!ans.complete());
    let ans = query(&mut ca, "", &rsm("<max>10</max><index>0</index>")).await;
    assert_eq!(ans.first_index(), Some(0));
    assert_eq!(ans.bodies()[0], "n0");
    let ans = query(&mut ca, "", &rsm("<max>10</max><index>995</index>")).await;
    assert_eq!(ans.first_index(), Some(995));
    let want: Vec<String> = (995..1000).map(|i| format!("n{i}")).collect();
    assert_eq!(ans.bodies(), want);
    assert!(ans.complete());
    // At the end: an empty page.
    let ans = query(&mut ca, "", &rsm("<max>10</max><index>1000</index>")).await;
    assert!(ans.results.is_empty());
    assert!(ans.complete());
    assert_eq!(ans.count(), 1000);
    // Beyond [mam] max_index (1,000): too costly to find, 501.
    let ans = query(&mut ca, "", &rsm("<max>10</max><index>1001</index>")).await;
    assert_eq!(ans.error().as_deref(), Some("feature-not-implemented"));
    let first_id = ans_first_id(&mut ca).await;
    let ans = query(
        &mut ca,
        "",
        &rsm(&format!("<index>3</index><after>{first_id}</after>")),
    )
    .await;
    assert_eq!(ans.error().as_deref(), Some("bad-request"));

    // The default page is 50; max is capped at 250.
    let ans = query(&mut ca, "", "").await;
    assert_eq!(ans.results.len(), 50);
    assert_eq!(ans.bodies()[0], "n0");
    let ans = query(&mut ca, "", &rsm("<max>100000</max>")).await;
    assert_eq!(ans.results.len(), 250);
    // max 0: only the count.
    let ans = query(&mut ca, "", &rsm("<max>0</max>")).await;
    assert!(ans.results.is_empty());
    assert_eq!(ans.count(), 1000);
    // A flipped last page: newest first.
    let ans = query(&mut ca, "<flip-page/>", &rsm("<max>3</max><before/>")).await;
    assert_eq!(ans.bodies(), ["n999", "n998", "n997"]);

    // The recipient's archive has them too, with the stanza-id of the
    // offline copies.
    let mut cb = Client::login(ts.plain_addr, &b, "pw", Some("r")).await;
    let mut delivered = Vec::new();
    while delivered.len() < 1000 {
        let e = cb.next_element().await;
        if e.is("message", NS_CLIENT) {
            delivered.push(e);
        }
    }
    let ans = query(&mut cb, "", &rsm("<max>250</max><before/>")).await;
    assert_eq!(ans.count(), 1000);
    let ids = ans.ids();
    let offline_ids: Vec<String> = delivered[750..]
        .iter()
        .map(|m| {
            let s = stanza_ids(m, &jid(&b));
            assert_eq!(s.len(), 1, "{}", show(m));
            s[0].clone()
        })
        .collect();
    assert_eq!(ids, offline_ids);
}

async fn filters(ts: TestServer) {
    let [a, b, c] = users(&ts, ["fa", "fb", "fc"]).await;
    let mut ca = login(&ts, &a, "r").await;
    let mut cb = login(&ts, &b, "phone").await;
    send_chats(&mut ca, &jid(&b), "b", 5).await;
    send_chats(&mut ca, &format!("{}/phone", jid(&c)), "c", 5).await;
    cb.send_str(&format!(
        "<message type='chat' to='{}'><body>reply</body></message>",
        jid(&a)
    ))
    .await;
    cb.barrier().await;
    ca.barrier().await;

    let all = query(&mut ca, "", "").await;
    assert_eq!(all.count(), 11);
    let stamps: Vec<String> = all
        .results
        .iter()
        .map(|m| {
            result_of(m)
                .get_child("forwarded", NS_FORWARD)
                .unwrap()
                .get_child("delay", "urn:xmpp:delay")
                .unwrap()
                .attr("stamp")
                .unwrap()
                .to_string()
        })
        .collect();

    // with: a bare JID matches both directions.
    let with_b = query(&mut ca, &form(&[("with", &[&jid(&b)])]), "").await;
    assert_eq!(with_b.bodies(), ["b0", "b1", "b2", "b3", "b4", "reply"]);
    assert!(with_b.complete());
    // with a full JID: that resource only.
    let phone = format!("{}/phone", jid(&b));
    let with_phone = query(&mut ca, &form(&[("with", &[&phone])]), "").await;
    assert_eq!(with_phone.bodies(), ["reply"]);
    let with_c = query(&mut ca, &form(&[("with", &[&jid(&c)])]), "").await;
    assert_eq!(with_c.count(), 5);

    // start / end are inclusive.
    let range = query(
        &mut ca,
        &form(&[("start", &[&stamps[2]]), ("end", &[&stamps[4]])]),
        "",
    )
    .await;
    assert_eq!(range.bodies(), ["b2", "b3", "b4"]);
    let from = query(&mut ca, &form(&[("start", &[&stamps[10]])]), "").await;
    assert_eq!(from.bodies(), ["reply"]);
    let none = query(&mut ca, &form(&[("end", &["2000-01-01T00:00:00Z"])]), "").await;
    assert_eq!(none.count(), 0);
    assert!(none.results.is_empty());
    assert!(none.complete());

    // after-id / before-id (#extended) and ids.
    let ids = all.ids();
    let between = query(
        &mut ca,
        &form(&[("after-id", &[&ids[1]]), ("before-id", &[&ids[6]])]),
        "",
    )
    .await;
    assert_eq!(between.bodies(), ["b2", "b3", "b4", "c0"]);
    assert_eq!(between.count(), 4);
    let picked = query(&mut ca, &form(&[("ids", &[&ids[7], &ids[0]])]), "").await;
    assert_eq!(picked.bodies(), ["b0", "c2"]);
    // Paging inside a filter: the index counts within the filtered set.
    let paged = query(
        &mut ca,
        &form(&[("with", &[&jid(&b)])]),
        &rsm(&format!("<max>2</max><after>{}</after>", ids[1])),
    )
    .await;
    assert_eq!(paged.bodies(), ["b2", "b3"]);
    assert_eq!(paged.first_index(), Some(2));
    assert_eq!(paged.count(), 6);
    assert!(!paged.complete());

    // Unknown ids: item-not-found, wherever they are named.
    let unknown = "00000000000zzzzzzzz";
    for (f, s) in [
        (form(&[("after-id", &[unknown])]), String::new()),
        (form(&[("before-id", &[unknown])]), String::new()),
        (form(&[("ids", &[&ids[0], unknown])]), String::new()),
        (String::new(), rsm(&format!("<after>{unknown}</after>"))),
        (String::new(), rsm("<before>not-an-id</before>")),
    ] {
        let ans = query(&mut ca, &f, &s).await;
        assert_eq!(ans.error().as_deref(), Some("item-not-found"), "{f}{s}");
    }
    // Someone else's ids are unknown in this archive.
    let bs = query(&mut cb, "", "").await;
    let ans = query(&mut ca, &form(&[("ids", &[&bs.ids()[0]])]), "").await;
    assert_eq!(ans.error().as_deref(), Some("item-not-found"));
    // Bad input.
    for (f, s) in [
        (form(&[("start", &["yesterday"])]), String::new()),
        (form(&[("with", &["@@"])]), String::new()),
        (form(&[("frobnicate", &["1"])]), String::new()),
        (String::new(), rsm("<max>many</max>")),
    ] {
        let ans = query(&mut ca, &f, &s).await;
        assert_eq!(ans.error().as_deref(), Some("bad-request"), "{f}{s}");
    }
    // Another user's archive is not ours to read.
    let r = ca
        .iq(
            &format!(
                "<iq type='set' id='other' to='{}'><query xmlns='{NS_MAM}'/></iq>",
                jid(&b)
            ),
            "other",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));

    // Metadata (#extended): the first and last messages.
    let meta = ca
        .iq(
            &format!("<iq type='get' id='meta'><metadata xmlns='{NS_MAM}'/></iq>"),
            "meta",
        )
        .await;
    let meta = meta.get_child("metadata", NS_MAM).expect("metadata");
    assert_eq!(
        meta.get_child("start", NS_MAM).unwrap().attr("id"),
        Some(ids[0].as_str())
    );
    assert_eq!(
        meta.get_child("end", NS_MAM).unwrap().attr("id"),
        Some(ids[10].as_str())
    );
    assert_eq!(
        meta.get_child("start", NS_MAM).unwrap().attr("timestamp"),
        Some(stamps[0].as_str())
    );

    // The form, and disco.
    let f = ca
        .iq(
            &format!("<iq type='get' id='form'><query xmlns='{NS_MAM}'/></iq>"),
            "form",
        )
        .await;
    let x = f
        .get_child("query", NS_MAM)
        .unwrap()
        .get_child("x", NS_DATA)
        .unwrap();
    let vars: Vec<&str> = x.children().filter_map(|c| c.attr("var")).collect();
    for v in [
        "FORM_TYPE",
        "with",
        "start",
        "end",
        "after-id",
        "before-id",
        "ids",
    ] {
        assert!(vars.contains(&v), "{v}");
    }
    let info = ca
        .iq(
            &format!(
                "<iq type='get' id='d' to='{}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
                jid(&a)
            ),
            "d",
        )
        .await;
    let features: Vec<String> = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .unwrap()
        .children()
        .filter_map(|c| c.attr("var").map(str::to_string))
        .collect();
    for f in [NS_MAM, "urn:xmpp:mam:2#extended", NS_SID] {
        assert!(features.iter().any(|x| x == f), "{f} in {features:?}");
    }
}

async fn stanza_id_on_delivery(ts: TestServer) {
    let [a, b] = users(&ts, ["sa", "sb"]).await;
    let mut ca = login(&ts, &a, "r").await;
    let mut cb = login(&ts, &b, "r").await;
    let by = jid(&b);
    // A sender's own stanza-id by the recipient's archive is removed; one
    // by someone else stays.
    ca.send_str(&format!(
        "<message type='chat' to='{by}' id='x1'><body>hello</body>\
         <stanza-id xmlns='{NS_SID}' by='{by}' id='forged'/>\
         <stanza-id xmlns='{NS_SID}' by='room@elsewhere' id='theirs'/></message>"
    ))
    .await;
    let m = cb.next_named("message").await;
    let ids = stanza_ids(&m, &by);
    assert_eq!(ids.len(), 1, "{}", show(&m));
    assert_ne!(ids[0], "forged");
    assert_eq!(stanza_ids(&m, "room@elsewhere"), ["theirs"]);
    let ans = query(&mut cb, "", "").await;
    assert_eq!(ans.ids(), ids);
    assert_eq!(ans.bodies(), ["hello"]);
    // The archived copy has no forged id either.
    assert!(stanza_ids(forwarded(&ans.results[0]), &by).is_empty());

    // Not archived: chat states alone, no-store; and a forged
    // id is removed from those too.
    let mark = cb.mark();
    ca.send_str(&format!(
        "<message type='chat' to='{by}' id='x2'><composing xmlns='http://jabber.org/protocol/chatstates'/>\
         <stanza-id xmlns='{NS_SID}' by='{by}' id='forged'/></message>\
         <message type='chat' to='{by}' id='x3'><body>secret</body><no-store xmlns='urn:xmpp:hints'/></message>"
    ))
    .await;
    ca.barrier().await;
    let got = cb
        .expect_only(
            mark,
            &[
                Expect("chat state", &|e| e.attr("id") == Some("x2")),
                Expect("no-store", &|e| e.attr("id") == Some("x3")),
            ],
        )
        .await;
    for m in &got {
        assert!(stanza_ids(m, &by).is_empty(), "{}", show(m));
    }
    assert_eq!(query(&mut cb, "", "").await.count(), 1);
    assert_eq!(query(&mut ca, "", "").await.bodies(), ["hello"]);

    // An empty archive has empty metadata.
    let [e] = users(&ts, ["se"]).await;
    let mut ce = login(&ts, &e, "r").await;
    let meta = ce
        .iq(
            &format!("<iq type='get' id='meta'><metadata xmlns='{NS_MAM}'/></iq>"),
            "meta",
        )
        .await;
    let meta = meta.get_child("metadata", NS_MAM).expect("metadata");
    assert_eq!(meta.children().count(), 0);

    // Deleting the account empties its archive.
    ts.store().delete_account(DOMAIN, &b).await.unwrap();
    let owner = waxwing::modules::mam::owner_of(&jid::BareJid::new(&by).unwrap());
    let n = ts
        .store()
        .archive_count(&owner, &Default::default())
        .await
        .unwrap();
    assert_eq!(n, 0);
}

async fn set_prefs(c: &mut Client, default: &str, always: &[&str], never: &[&str]) -> Element {
    let list = |l: &[&str]| {
        l.iter()
            .map(|j| format!("<jid>{j}</jid>"))
            .collect::<String>()
    };
    let r = c
        .iq(
            &format!(
                "<iq type='set' id='p'><prefs xmlns='{NS_MAM}' default='{default}'><always>{}</always><never>{}</never></prefs></iq>",
                list(always),
                list(never)
            ),
            "p",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    r
}

async fn preferences(ts: TestServer) {
    let [a, b, c] = users(&ts, ["qa", "qb", "qc"]).await;
    let mut ca = login(&ts, &a, "r").await;
    let mut cb = login(&ts, &b, "r").await;
    let mut cc = login(&ts, &c, "r").await;
    // The default, before anything is set.
    let r = ca
        .iq(
            &format!("<iq type='get' id='g'><prefs xmlns='{NS_MAM}'/></iq>"),
            "g",
        )
        .await;
    assert_eq!(
        r.get_child("prefs", NS_MAM).unwrap().attr("default"),
        Some("always")
    );

    // never, with b always.
    set_prefs(&mut ca, "never", &[&jid(&b)], &[]).await;
    let r = ca
        .iq(
            &format!("<iq type='get' id='g2'><prefs xmlns='{NS_MAM}'/></iq>"),
            "g2",
        )
        .await;
    let p = r.get_child("prefs", NS_MAM).unwrap();
    assert_eq!(p.attr("default"), Some("never"));
    assert_eq!(
        p.get_child("always", NS_MAM)
            .unwrap()
            .children()
            .next()
            .unwrap()
            .text(),
        jid(&b)
    );
    cb.send_str(&format!(
        "<message type='chat' to='{}'><body>from b</body></message>",
        jid(&a)
    ))
    .await;
    cc.send_str(&format!(
        "<message type='chat' to='{}'><body>from c</body></message>",
        jid(&a)
    ))
    .await;
    cb.barrier().await;
    cc.barrier().await;
    ca.barrier().await;
    assert_eq!(query(&mut ca, "", "").await.bodies(), ["from b"]);

    // always, with c never: c's message is delivered without a stanza-id.
    set_prefs(&mut ca, "always", &[], &[&jid(&c)]).await;
    let mark = ca.mark();
    cc.send_str(&format!(
        "<message type='chat' to='{}' id='c2'><body>c again</body></message>",
        jid(&a)
    ))
    .await;
    cc.barrier().await;
    let got = ca
        .expect_only(
            mark,
            &[Expect("c's message", &|e| e.attr("id") == Some("c2"))],
        )
        .await;
    assert!(stanza_ids(&got[0], &jid(&a)).is_empty());
    // Sending to c is not archived either; to b it is.
    ca.send_str(&format!(
        "<message type='chat' to='{}'><body>to c</body></message>",
        jid(&c)
    ))
    .await;
    ca.send_str(&format!(
        "<message type='chat' to='{}'><body>to b</body></message>",
        jid(&b)
    ))
    .await;
    ca.barrier().await;
    assert_eq!(query(&mut ca, "", "").await.bodies(), ["from b", "to b"]);

    // roster: only contacts in the roster.
    set_prefs(&mut ca, "roster", &[], &[]).await;
    let r = ca
        .iq(
            &format!("<iq type='set' id='ro'><query xmlns='jabber:iq:roster'><item jid='{}'/></query></iq>", jid(&c)),
            "ro",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    cb.send_str(&format!(
        "<message type='chat' to='{}'><body>b, no roster</body></message>",
        jid(&a)
    ))
    .await;
    cc.send_str(&format!(
        "<message type='chat' to='{}'><body>c, in roster</body></message>",
        jid(&a)
    ))
    .await;
    cb.barrier().await;
    cc.barrier().await;
    ca.barrier().await;
    assert_eq!(
        query(&mut ca, "", "").await.bodies(),
        ["from b", "to b", "c, in roster"]
    );
    // Malformed preferences.
    let r = ca
        .iq(
            &format!("<iq type='set' id='bad'><prefs xmlns='{NS_MAM}' default='sometimes'/></iq>"),
            "bad",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("bad-request"));
}

/// Preferences outlive a restart: after it, the server learns which users
/// have preferences of their own (one scan, before its first archiving
/// decision) and reads theirs; a user without any has the default. `url`
/// is the database both servers use.
async fn preferences_after_restart(url: String) {
    let start = || TestServer::start_with(|c| c.database.url = url.clone());
    let mut ts = start().await;
    let [a, b, c] = users(&ts, ["ra", "rb", "rc"]).await;
    {
        let mut ca = login(&ts, &a, "r").await;
        set_prefs(&mut ca, "never", &[], &[]).await;
        let mut cc = login(&ts, &c, "r").await;
        set_prefs(&mut cc, "always", &[], &[&jid(&b)]).await;
    }
    ts.stop().await;
    let ts = start().await;
    let mut cb = login(&ts, &b, "r").await;
    let mut ca = login(&ts, &a, "r").await;
    let mut cc = login(&ts, &c, "r").await;
    // b (no preferences: the default, always) writes to a (never) and to c
    // (always, but never b); then c writes to a.
    cb.send_str(&format!(
        "<message type='chat' to='{}'><body>b to a</body></message>",
        jid(&a)
    ))
    .await;
    cb.send_str(&format!(
        "<message type='chat' to='{}'><body>b to c</body></message>",
        jid(&c)
    ))
    .await;
    cc.send_str(&format!(
        "<message type='chat' to='{}'><body>c to a</body></message>",
        jid(&a)
    ))
    .await;
    cb.barrier().await;
    cc.barrier().await;
    ca.barrier().await;
    assert!(query(&mut ca, "", "").await.bodies().is_empty(), "a: never");
    assert_eq!(
        query(&mut cc, "", "").await.bodies(),
        ["c to a"],
        "c: always, never b"
    );
    assert_eq!(
        query(&mut cb, "", "").await.bodies(),
        ["b to a", "b to c"],
        "b: the default"
    );
}

#[tokio::test]
async fn preferences_after_restart_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    preferences_after_restart(format!("sqlite://{}/keep.db", dir.path().display())).await
}

#[tokio::test]
async fn preferences_after_restart_postgres() {
    preferences_after_restart(postgres_url()).await
}

/// What the archive returns is the message as it was routed: namespace,
/// `from`, `to` (full or bare) and the rest, in the sender's archive and
/// in the recipient's. (The archive may keep a message without its
/// envelope and put it back on reading: storage/archive_envelope.rs.)
async fn archived_addresses(ts: TestServer) {
    let [a, b] = users(&ts, ["ea", "eb"]).await;
    let mut orchard = login(&ts, &a, "orchard").await;
    // A resource XML must escape is kept as it is.
    let mut odd = login(&ts, &a, "o&apos;neil &amp; &lt;co&gt;").await;
    let mut balcony = login(&ts, &b, "balcony").await;
    let (ja, jb) = (jid(&a), jid(&b));
    let chat = |to: &str, id: &str, body: &str| {
        format!(
            "<message type='chat' to='{to}' id='{id}' xml:lang='en'><body>{body}</body></message>"
        )
    };
    orchard
        .send_str(&chat(&format!("{jb}/balcony"), "m1", "to the balcony"))
        .await;
    orchard.barrier().await;
    orchard.send_str(&chat(&jb, "m2", "to juliet")).await;
    orchard.barrier().await;
    odd.send_str(&chat(&jb, "m3", "from an odd place")).await;
    odd.barrier().await;
    balcony
        .send_str(&format!(
            "<message type='chat' to='{ja}/orchard' id='m4' xml:lang='en'><body>reply</body></message>"
        ))
        .await;
    balcony.barrier().await;
    let odd_jid = format!("{ja}/o'neil & <co>");
    let expected = [
        (format!("{ja}/orchard"), format!("{jb}/balcony"), "m1"),
        (format!("{ja}/orchard"), jb.clone(), "m2"),
        (odd_jid, jb.clone(), "m3"),
        (format!("{jb}/balcony"), format!("{ja}/orchard"), "m4"),
    ];
    for c in [&mut orchard, &mut balcony] {
        let ans = query(c, "", "").await;
        assert_eq!(ans.count(), 4);
        for (m, (from, to, id)) in ans.results.iter().map(forwarded).zip(&expected) {
            assert_eq!(m.ns(), NS_CLIENT, "{}", show(m));
            assert_eq!(m.attr("from"), Some(from.as_str()), "{}", show(m));
            assert_eq!(m.attr("to"), Some(to.as_str()), "{}", show(m));
            assert_eq!(m.attr("id"), Some(*id), "{}", show(m));
            assert_eq!(m.attr("type"), Some("chat"));
            assert_eq!(m.attr("xml:lang"), Some("en"), "{}", show(m));
            assert_eq!(m.attrs().count(), 5, "{}", show(m));
        }
    }
}

macro_rules! on_both {
    ($name:ident, $sqlite:ident, $postgres:ident) => {
        #[tokio::test]
        async fn $sqlite() {
            $name(sqlite().await).await
        }
        #[tokio::test]
        async fn $postgres() {
            $name(postgres().await).await
        }
    };
}

on_both!(paging_through_1000, paging_sqlite, paging_postgres);
on_both!(filters, filters_sqlite, filters_postgres);
on_both!(archived_addresses, addresses_sqlite, addresses_postgres);
on_both!(stanza_id_on_delivery, stanza_id_sqlite, stanza_id_postgres);
on_both!(preferences, preferences_sqlite, preferences_postgres);

#[tokio::test]
async fn disabled_means_absent() {
    let ts = TestServer::start_with(|c| c.mam.enabled = false).await;
    let [a, b] = users(&ts, ["da", "db"]).await;
    let mut ca = login(&ts, &a, "r").await;
    let mut cb = login(&ts, &b, "r").await;
    ca.send_str(&format!("<message type='chat' to='{}' id='d1'><body>hi</body><stanza-id xmlns='{NS_SID}' by='{}' id='x'/></message>", jid(&b), jid(&b))).await;
    let m = cb.next_named("message").await;
    // Nothing touches the message.
    assert_eq!(stanza_ids(&m, &jid(&b)), ["x"]);
    let ans = query(&mut ca, "", "").await;
    assert_eq!(ans.error().as_deref(), Some("service-unavailable"));
}

/// Retention, the per-user cap and purging, on the store the server uses;
/// the kept count (`<count/>` of a whole archive) follows every deletion.
async fn cleanup(ts: TestServer) {
    use waxwing::modules::mam::{cleanup::run_once, id, owner_of};
    use waxwing::storage::{ArchiveFilter, ArchiveRow};
    let [a] = users(&ts, ["ca"]).await;
    let owner = owner_of(&jid::BareJid::new(&jid(&a)).unwrap());
    let store = ts.store();
    let now = id::now_micros();
    let day = 86_400_000_000i64;
    let rows: Vec<ArchiveRow> = (0..10)
        .map(|i| {
            // Five ten days old, five of today, oldest first.
            let t = if i < 5 {
                now - 10 * day + i
            } else {
                now - 1000 + i
            };
            ArchiveRow {
                owner: owner.clone(),
                id: format!("{}0000000{i}", id::time_prefix(t)),
                ts: t,
                peer: "peer@elsewhere".into(),
                resource: String::new(),
                outgoing: false,
                payload: format!(
                    "<message xmlns='jabber:client' type='chat'><body>{i}</body></message>"
                )
                .into(),
            }
        })
        .collect();
    store.archive_insert(&rows).await.unwrap();
    // A filter that selects everything, counted row by row.
    let real = ArchiveFilter {
        id_from: Some("0".into()),
        ..Default::default()
    };
    let counts = || async {
        (
            store
                .archive_count(&owner, &Default::default())
                .await
                .unwrap(),
            store.archive_count(&owner, &real).await.unwrap(),
        )
    };
    assert_eq!(counts().await, (10, 10));
    // Retention runs over every archive of the database, which other
    // tests share: only rows older than a week go, and only these are.
    run_once(store, 7, 0).await;
    assert_eq!(counts().await, (5, 5));
    // The per-user cap as the clean-up applies it, to this user only (a
    // cap of 3 over the shared database would trim the other tests' users).
    store.archive_trim(&owner, 3).await.unwrap();
    assert_eq!(counts().await, (3, 3));
    let page = store.archive_page(&owner, &real, false, 10).await.unwrap();
    let ids: Vec<&str> = page.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        rows[7..].iter().map(|r| r.id.as_str()).collect::<Vec<_>>()
    );
    // The client sees the same through a query.
    let mut ca = login(&ts, &a, "r").await;
    let ans = query(&mut ca, "", "").await;
    assert_eq!(ans.bodies(), ["7", "8", "9"]);
    assert_eq!(ans.count(), 3);
    store
        .archive_purge(&owner, Some(&rows[8].id))
        .await
        .unwrap();
    assert_eq!(counts().await, (2, 2));
    store.archive_purge(&owner, None).await.unwrap();
    assert_eq!(counts().await, (0, 0));
}

on_both!(cleanup, cleanup_sqlite, cleanup_postgres);

/// Messages to and from an external component (XEP-0114): the user's
/// sent message is archived on its way out of the server, the component's
/// message on its way in (with a stanza-id); nothing for an account that
/// does not exist.
#[tokio::test]
async fn component_messages_both_ways() {
    const BOT: &str = "bot.localhost";
    let ts = TestServer::start_with(|c| {
        c.component_listener.listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.component.push(waxwing::config::ComponentConfig {
            domain: BOT.into(),
            secret: "s3cret".into(),
        });
    })
    .await;
    let [a] = users(&ts, ["ka"]).await;
    let mut bot = Client::component(
        ts.running.as_ref().unwrap().component_addrs[0],
        BOT,
        "s3cret",
    )
    .await;
    let mut ca = login(&ts, &a, "r").await;
    ca.send_str(&format!(
        "<message type='chat' to='helper@{BOT}'><body>out</body></message>"
    ))
    .await;
    ca.barrier().await;
    let out = bot.next_named("message").await;
    assert_eq!(
        out.get_child("body", "jabber:component:accept")
            .unwrap()
            .text(),
        "out"
    );
    bot.send_str(&format!(
        "<message xmlns='jabber:component:accept' type='chat' from='helper@{BOT}/x' to='{}'><body>in</body></message>\
         <message xmlns='jabber:component:accept' type='chat' from='helper@{BOT}' to='nobody{a}@{DOMAIN}'><body>lost</body></message>",
        jid(&a)
    ))
    .await;
    let m = ca.next_named("message").await;
    let ids = stanza_ids(&m, &jid(&a));
    assert_eq!(ids.len(), 1, "{}", show(&m));
    let ans = query(&mut ca, &form(&[("with", &[&format!("helper@{BOT}")])]), "").await;
    assert_eq!(ans.bodies(), ["out", "in"]);
    assert_eq!(ans.ids()[1], ids[0]);
    let nobody = waxwing::modules::mam::owner_of(
        &jid::BareJid::new(&format!("nobody{a}@{DOMAIN}")).unwrap(),
    );
    // The component's second message was routed before its first reached
    // `ca` (one stream, in order), so it is done with by now; whatever it
    // handed the archive writer is committed once `flushed` returns.
    ts.server().features.flushed().await;
    assert_eq!(
        ts.store()
            .archive_count(&nobody, &Default::default())
            .await
            .unwrap(),
        0
    );
}
