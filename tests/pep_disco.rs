//! PEP as service discovery shows it (XEP-0163 §8, XEP-0060 §5), the
//! roster access model with `pubsub#roster_groups_allowed`, and PEP turned
//! off, over real sockets on SQLite and PostgreSQL.

mod common;

use common::*;
use waxwing::modules::caps::verification_string;
use waxwing::modules::pep::Pep;
use waxwing::storage::RosterRecord;
use waxwing::xml::{Element, NS_CLIENT};

const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const NS_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const NS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const NS_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_ITEMS: &str = "http://jabber.org/protocol/disco#items";
const NS_DATA: &str = "jabber:x:data";
const NS_CAPS: &str = "http://jabber.org/protocol/caps";
const GROUPS: &str = "pubsub#roster_groups_allowed";

fn postgres_url() -> String {
    std::env::var("WAXWING_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn names<const N: usize>(base: [&str; N]) -> [String; N] {
    use rand::Rng;
    let tag: u32 = rand::thread_rng().gen();
    base.map(|b| format!("{b}{tag}"))
}

/// `user` and `contact` share presence both ways; `group` is the
/// contact's group in the user's roster.
async fn befriend(ts: &TestServer, user: &str, contact: &str, group: &str) {
    for (a, b, groups) in [
        (user, contact, vec![group.to_string()]),
        (contact, user, Vec::new()),
    ] {
        let rec = RosterRecord {
            contact: format!("{b}@{DOMAIN}"),
            name: None,
            subscription: "both".into(),
            ask_out: false,
            pending_in: false,
            approved: false,
            in_roster: true,
            groups,
        };
        ts.store().roster_put(DOMAIN, a, &rec).await.unwrap();
    }
}

/// Logs in and announces caps asking for `+notify` of `nodes`; answers
/// the server's disco#info query when `expect_query`.
async fn login_with_notify(
    ts: &TestServer,
    user: &str,
    nodes: &[&str],
    expect_query: bool,
) -> Client {
    let mut c = Client::login_without_presence(ts.plain_addr, user, "pw", Some("r")).await;
    let mut info = Element::new("query", NS_INFO).with_child(
        Element::new("identity", NS_INFO)
            .with_attr("category", "client")
            .with_attr("type", "pc"),
    );
    for n in nodes {
        info.append_child(Element::new("feature", NS_INFO).with_attr("var", format!("{n}+notify")));
    }
    let ver = verification_string(&info);
    c.send_str(&format!(
        "<presence><c xmlns='{NS_CAPS}' hash='sha-1' node='https://t.example' ver='{ver}'/></presence>"
    ))
    .await;
    if expect_query {
        loop {
            let e = c.next_element().await;
            let Some(q) = e.get_child("query", NS_INFO) else {
                continue;
            };
            if e.attr("type") != Some("get") {
                continue;
            }
            let mut answer = info.clone();
            answer.set_attr("node", q.attr("node").unwrap_or_default());
            let reply = Element::new("iq", NS_CLIENT)
                .with_attr("type", "result")
                .with_attr("id", e.attr("id").unwrap())
                .with_attr("to", e.attr("from").unwrap())
                .with_child(answer);
            let mut out = Vec::new();
            reply.write_to(&mut out, "");
            c.send(&out).await.unwrap();
            break;
        }
    }
    c.barrier().await;
    c
}

async fn caps_learned(ts: &TestServer, n: usize) {
    let server = ts.server().clone();
    eventually("capabilities learned", || {
        let server = server.clone();
        async move { server.features.get::<Pep>().unwrap().caps().counts().1 >= n }
    })
    .await;
}

async fn publish(c: &mut Client, node: &str, options: &[(&str, &str)]) -> Element {
    let mut po = String::new();
    if !options.is_empty() {
        po.push_str(
            "<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' \
             type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>",
        );
        for (var, value) in options {
            po.push_str(&format!(
                "<field var='{var}'><value>{value}</value></field>"
            ));
        }
        po.push_str("</x></publish-options>");
    }
    let id = format!("pub-{node}");
    c.iq(
        &format!(
            "<iq type='set' id='{id}'><pubsub xmlns='{NS_PUBSUB}'><publish node='{node}'>\
             <item id='current'><entry xmlns='urn:example'>{node}</entry></item></publish>{po}\
             </pubsub></iq>"
        ),
        &id,
    )
    .await
}

async fn disco_items(c: &mut Client, owner: &str) -> Vec<String> {
    let r = c
        .iq(
            &format!(
                "<iq type='get' id='di' to='{owner}@{DOMAIN}'><query xmlns='{NS_ITEMS}'/></iq>"
            ),
            "di",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let mut nodes: Vec<String> = r
        .get_child("query", NS_ITEMS)
        .unwrap()
        .children()
        .map(|i| {
            assert_eq!(i.attr("jid"), Some(format!("{owner}@{DOMAIN}").as_str()));
            i.attr("node").unwrap().to_owned()
        })
        .collect();
    nodes.sort();
    nodes
}

async fn disco_info(c: &mut Client, owner: &str, node: Option<&str>) -> Element {
    let node = node.map(|n| format!(" node='{n}'")).unwrap_or_default();
    c.iq(
        &format!(
            "<iq type='get' id='dinfo' to='{owner}@{DOMAIN}'><query xmlns='{NS_INFO}'{node}/></iq>"
        ),
        "dinfo",
    )
    .await
}

/// The values of field `var` in the first data form under `parent`.
fn field_values(parent: &Element, var: &str) -> Option<Vec<String>> {
    let x = parent.get_child("x", NS_DATA)?;
    let f = x
        .children()
        .find(|f| f.is("field", NS_DATA) && f.attr("var") == Some(var))?;
    Some(
        f.children()
            .filter(|v| v.is("value", NS_DATA))
            .map(|v| v.text())
            .collect(),
    )
}

fn features(info: &Element) -> Vec<String> {
    info.get_child("query", NS_INFO)
        .map(|q| {
            q.children()
                .filter(|f| f.is("feature", NS_INFO))
                .filter_map(|f| f.attr("var").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn identities(info: &Element) -> Vec<(String, String)> {
    info.get_child("query", NS_INFO)
        .map(|q| {
            q.children()
                .filter(|f| f.is("identity", NS_INFO))
                .map(|i| {
                    (
                        i.attr("category").unwrap_or_default().to_owned(),
                        i.attr("type").unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn error_app(e: &Element) -> Option<String> {
    e.get_child("error", NS_CLIENT)?
        .children()
        .find(|c| c.ns() == NS_ERRORS)
        .map(|c| c.name().to_owned())
}

async fn scenario(ts: &TestServer) {
    let [alice, bob, carol, dave] = names(["alice", "bob", "carol", "dave"]);
    for u in [&alice, &bob, &carol, &dave] {
        ts.add_user(u, "pw").await;
    }
    befriend(ts, &alice, &bob, "Friends").await;
    befriend(ts, &alice, &carol, "Work").await;
    let (open, pres, wl, grp) = ("n-open", "n-presence", "n-whitelist", "n-roster");

    let mut a = Client::login(ts.plain_addr, &alice, "pw", Some("r")).await;
    a.barrier().await;
    let mut b = login_with_notify(ts, &bob, &[grp], true).await;
    caps_learned(ts, 1).await;
    let mut c = login_with_notify(ts, &carol, &[grp], false).await;
    let mut d = Client::login(ts.plain_addr, &dave, "pw", Some("r")).await;
    d.barrier().await;

    for (node, access) in [(open, "open"), (pres, "presence"), (wl, "whitelist")] {
        let r = publish(&mut a, node, &[("pubsub#access_model", access)]).await;
        assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    }
    // The roster-group node: only Friends. Bob hears of it, Carol not.
    let (mb, mc) = (b.mark(), c.mark());
    let r = publish(
        &mut a,
        grp,
        &[("pubsub#access_model", "roster"), (GROUPS, "Friends")],
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    a.barrier().await;
    b.expect_only(
        mb,
        &[Expect("the roster node's notification", &|e| {
            e.get_child("event", NS_EVENT)
                .and_then(|ev| ev.get_child("items", NS_EVENT))
                .is_some_and(|i| i.attr("node") == Some(grp))
        })],
    )
    .await;
    c.expect_nothing(mc).await;

    // disco#items: the owner sees every node, others by access model.
    assert_eq!(disco_items(&mut a, &alice).await, vec![open, pres, grp, wl]);
    assert_eq!(disco_items(&mut b, &alice).await, vec![open, pres, grp]);
    assert_eq!(disco_items(&mut c, &alice).await, vec![open, pres]);
    assert_eq!(disco_items(&mut d, &alice).await, vec![open]);

    // disco#info at the bare JID: a contact learns of PEP, a stranger
    // gets what a missing account gets.
    let info = disco_info(&mut b, &alice, None).await;
    assert_eq!(info.attr("type"), Some("result"), "{}", show(&info));
    let ids = identities(&info);
    assert!(
        ids.contains(&("account".into(), "registered".into())),
        "{ids:?}"
    );
    assert!(ids.contains(&("pubsub".into(), "pep".into())), "{ids:?}");
    let f = features(&info);
    for var in [
        "http://jabber.org/protocol/pubsub#publish",
        "http://jabber.org/protocol/pubsub#access-roster",
        "http://jabber.org/protocol/pubsub#retrieve-items",
    ] {
        assert!(f.iter().any(|x| x == var), "{var} missing: {f:?}");
    }
    let info = disco_info(&mut d, &alice, None).await;
    assert_eq!(stanza_error(&info).as_deref(), Some("service-unavailable"));

    // disco#info with node: identity and meta-data where visible.
    let info = disco_info(&mut b, &alice, Some(pres)).await;
    assert_eq!(info.attr("type"), Some("result"), "{}", show(&info));
    let q = info.get_child("query", NS_INFO).unwrap();
    assert_eq!(q.attr("node"), Some(pres));
    assert_eq!(identities(&info), vec![("pubsub".into(), "leaf".into())]);
    assert_eq!(
        field_values(q, "FORM_TYPE"),
        Some(vec![
            "http://jabber.org/protocol/pubsub#meta-data".to_string()
        ])
    );
    assert_eq!(
        field_values(q, "pubsub#access_model"),
        Some(vec!["presence".to_string()])
    );
    assert_eq!(
        field_values(q, "pubsub#owner"),
        Some(vec![format!("{alice}@{DOMAIN}")])
    );
    assert_eq!(field_values(q, GROUPS), None, "group names are the owner's");
    let info = disco_info(&mut d, &alice, Some(pres)).await;
    assert_eq!(stanza_error(&info).as_deref(), Some("item-not-found"));
    let info = disco_info(&mut d, &alice, Some(open)).await;
    let q = info.get_child("query", NS_INFO).expect("open node info");
    assert_eq!(
        field_values(q, "pubsub#access_model"),
        Some(vec!["open".into()])
    );
    let info = disco_info(&mut c, &alice, Some(grp)).await;
    assert_eq!(stanza_error(&info).as_deref(), Some("item-not-found"));
    let info = disco_info(&mut a, &alice, Some(grp)).await;
    let q = info.get_child("query", NS_INFO).expect("owner's node info");
    assert_eq!(field_values(q, GROUPS), Some(vec!["Friends".into()]));
    let info = disco_info(&mut a, &alice, Some("no-such-node")).await;
    assert_eq!(stanza_error(&info).as_deref(), Some("item-not-found"));

    // Items of the roster node: Bob (Friends) yes, Carol (Work) no.
    let get = |id: &str| {
        format!(
            "<iq type='get' id='{id}' to='{alice}@{DOMAIN}'><pubsub xmlns='{NS_PUBSUB}'>\
             <items node='{grp}'/></pubsub></iq>"
        )
    };
    let r = b.iq(&get("gb"), "gb").await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let r = c.iq(&get("gc"), "gc").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("not-authorized"));
    assert_eq!(error_app(&r).as_deref(), Some("not-in-roster-group"));

    // The configuration form round-trips the list: Work added.
    let r = a
        .iq(
            &format!(
                "<iq type='get' id='cg'><pubsub xmlns='{NS_OWNER}'><configure node='{grp}'/>\
                 </pubsub></iq>"
            ),
            "cg",
        )
        .await;
    let form_parent = r
        .get_child("pubsub", NS_OWNER)
        .and_then(|p| p.get_child("configure", NS_OWNER))
        .expect("configure");
    let field = form_parent
        .get_child("x", NS_DATA)
        .unwrap()
        .children()
        .find(|f| f.attr("var") == Some(GROUPS))
        .expect("roster groups field");
    assert_eq!(field.attr("type"), Some("list-multi"));
    assert_eq!(
        field_values(form_parent, GROUPS),
        Some(vec!["Friends".into()])
    );
    let r = a
        .iq(
            &format!(
                "<iq type='set' id='cs'><pubsub xmlns='{NS_OWNER}'><configure node='{grp}'>\
                 <x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
                 <value>http://jabber.org/protocol/pubsub#node_config</value></field>\
                 <field var='{GROUPS}'><value>Friends</value><value>Work</value></field>\
                 </x></configure></pubsub></iq>"
            ),
            "cs",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let r = a
        .iq(
            &format!(
                "<iq type='get' id='cg2'><pubsub xmlns='{NS_OWNER}'><configure node='{grp}'/>\
                 </pubsub></iq>"
            ),
            "cg2",
        )
        .await;
    let form_parent = r
        .get_child("pubsub", NS_OWNER)
        .and_then(|p| p.get_child("configure", NS_OWNER))
        .expect("configure");
    assert_eq!(
        field_values(form_parent, GROUPS),
        Some(vec!["Friends".into(), "Work".into()])
    );
    // Now Carol may read and hears of the next item.
    let r = c.iq(&get("gc2"), "gc2").await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    assert_eq!(disco_items(&mut c, &alice).await, vec![open, pres, grp]);
    let mc = c.mark();
    let r = publish(&mut a, grp, &[]).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    a.barrier().await;
    c.expect_only(
        mc,
        &[Expect("the roster node's notification", &|e| {
            e.get_child("event", NS_EVENT).is_some()
        })],
    )
    .await;
}

#[tokio::test]
async fn disco_and_roster_groups_on_sqlite() {
    let ts = TestServer::start().await;
    scenario(&ts).await;
}

#[tokio::test]
async fn disco_and_roster_groups_on_postgres() {
    let ts = TestServer::start_with(|c| c.database.url = postgres_url()).await;
    scenario(&ts).await;
}

/// `[pep] enabled = false`: nothing advertises PEP, and its IQs are refused.
#[tokio::test]
async fn pep_turned_off() {
    let ts = TestServer::start_with(|c| c.pep.enabled = false).await;
    let [alice, bob] = names(["alice", "bob"]);
    ts.add_user(&alice, "pw").await;
    ts.add_user(&bob, "pw").await;
    befriend(&ts, &alice, &bob, "Friends").await;
    let mut a = Client::login(ts.plain_addr, &alice, "pw", Some("r")).await;
    let mut b = Client::login(ts.plain_addr, &bob, "pw", Some("r")).await;
    let pubsubish = |f: &Vec<String>| {
        f.iter()
            .filter(|v| {
                v.starts_with(NS_PUBSUB)
                    || v.starts_with("urn:xmpp:bookmarks:1")
                    || *v == "urn:xmpp:pep-vcard-conversion:0"
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    for info in [
        disco_info(&mut a, &alice, None).await,
        disco_info(&mut b, &alice, None).await,
        a.iq(
            &format!("<iq type='get' id='ds' to='{DOMAIN}'><query xmlns='{NS_INFO}'/></iq>"),
            "ds",
        )
        .await,
    ] {
        assert_eq!(info.attr("type"), Some("result"), "{}", show(&info));
        assert_eq!(pubsubish(&features(&info)), Vec::<String>::new());
        assert!(
            !identities(&info).iter().any(|(c, _)| c == "pubsub"),
            "{}",
            show(&info)
        );
    }
    let r = publish(&mut a, "n", &[]).await;
    assert_eq!(stanza_error(&r).as_deref(), Some("service-unavailable"));
    let r = a
        .iq(
            &format!(
                "<iq type='get' id='o' to='{alice}@{DOMAIN}'><pubsub xmlns='{NS_OWNER}'>\
                 <configure node='n'/></pubsub></iq>"
            ),
            "o",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("service-unavailable"));
    let r = b
        .iq(
            &format!(
                "<iq type='get' id='i' to='{alice}@{DOMAIN}'><pubsub xmlns='{NS_PUBSUB}'>\
                 <items node='n'/></pubsub></iq>"
            ),
            "i",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("service-unavailable"));
    // disco#items at the account lists no nodes (there is no service).
    let r = b
        .iq(
            &format!(
                "<iq type='get' id='di' to='{alice}@{DOMAIN}'><query xmlns='{NS_ITEMS}'/></iq>"
            ),
            "di",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("service-unavailable"));
}
