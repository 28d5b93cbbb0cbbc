//! PEP (XEP-0163) on the PubSub engine (XEP-0060) over real sockets, on
//! SQLite and PostgreSQL (WAXWING_TEST_POSTGRES, default the local one):
//! OMEMO device lists reach contacts whose verified capabilities ask for
//! them (+notify) and no one else, access models on items, publish
//! options, item limits, retraction, last items on presence, restarts.

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
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_CAPS: &str = "http://jabber.org/protocol/caps";
const DEVICELIST: &str = "eu.siacs.conversations.axolotl.devicelist";
const DEVICES2: &str = "urn:xmpp:omemo:2:devices";
const BUNDLE: &str = "eu.siacs.conversations.axolotl.bundles:4223";
const TUNE: &str = "http://jabber.org/protocol/tune";
const CLIENT_NODE: &str = "https://client.example";

fn postgres_url() -> String {
    std::env::var("WAXWING_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Usernames no other run uses (runs share one PostgreSQL database).
fn names<const N: usize>(base: [&str; N]) -> [String; N] {
    use rand::Rng;
    let tag: u32 = rand::thread_rng().gen();
    base.map(|b| format!("{b}{tag}"))
}

/// `user` and `contact` share presence both ways.
async fn befriend(ts: &TestServer, user: &str, contact: &str) {
    for (a, b) in [(user, contact), (contact, user)] {
        let rec = RosterRecord {
            contact: format!("{b}@{DOMAIN}"),
            name: None,
            subscription: "both".into(),
            ask_out: false,
            pending_in: false,
            approved: false,
            in_roster: true,
            groups: Vec::new(),
        };
        ts.store().roster_put(DOMAIN, a, &rec).await.unwrap();
    }
}

/// A client's disco#info: an identity and `features`.
fn client_info(features: &[&str]) -> Element {
    let mut q = Element::new("query", NS_DISCO_INFO).with_child(
        Element::new("identity", NS_DISCO_INFO)
            .with_attr("category", "client")
            .with_attr("type", "pc")
            .with_attr("name", "pep-test"),
    );
    for f in features {
        q.append_child(Element::new("feature", NS_DISCO_INFO).with_attr("var", *f));
    }
    q
}

/// Logs in and sends available presence with caps for `features`,
/// answering the server's disco#info query about them when it comes
/// (`expect_query`: the server has not seen this ver yet).
async fn login_with_caps(
    ts: &TestServer,
    user: &str,
    resource: &str,
    features: &[&str],
    expect_query: bool,
) -> Client {
    let mut c = Client::login_without_presence(ts.plain_addr, user, "pw", Some(resource)).await;
    announce(&mut c, features, expect_query).await;
    c
}

async fn announce(c: &mut Client, features: &[&str], expect_query: bool) {
    let info = client_info(features);
    let ver = verification_string(&info);
    c.send_str(&format!(
        "<presence><c xmlns='{NS_CAPS}' hash='sha-1' node='{CLIENT_NODE}' ver='{ver}'/></presence>"
    ))
    .await;
    if expect_query {
        answer_disco(c, &info).await;
    }
}

/// Waits for the server's disco#info query and answers it with `info`.
async fn answer_disco(c: &mut Client, info: &Element) {
    loop {
        let e = c.next_element().await;
        let Some(q) = e.get_child("query", NS_DISCO_INFO) else {
            continue;
        };
        if !(e.is("iq", NS_CLIENT) && e.attr("type") == Some("get")) {
            continue;
        }
        let mut answer = info.clone();
        answer.set_attr("node", q.attr("node").unwrap_or_default());
        let mut reply = Element::new("iq", NS_CLIENT)
            .with_attr("type", "result")
            .with_attr("id", e.attr("id").unwrap())
            .with_attr("to", e.attr("from").unwrap())
            .with_child(answer);
        let mut out = Vec::new();
        reply.set_attr("from", c.jid.clone().unwrap());
        reply.write_to(&mut out, "");
        c.send(&out).await.unwrap();
        return;
    }
}

/// Waits until the server learned `n` verification strings.
async fn caps_learned(ts: &TestServer, n: usize) {
    let server = ts.server().clone();
    eventually("capabilities learned", || {
        let server = server.clone();
        async move { server.features.get::<Pep>().unwrap().caps().counts().1 >= n }
    })
    .await;
}

fn publish_options(options: &[(&str, &str)]) -> String {
    if options.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "<publish-options><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>",
    );
    for (var, value) in options {
        s.push_str(&format!(
            "<field var='{var}'><value>{value}</value></field>"
        ));
    }
    s.push_str("</x></publish-options>");
    s
}

async fn publish(
    c: &mut Client,
    node: &str,
    id: &str,
    payload: &str,
    options: &[(&str, &str)],
) -> Element {
    let iq_id = format!("pub-{node}-{id}");
    c.iq(
        &format!(
            "<iq type='set' id='{iq_id}'><pubsub xmlns='{NS_PUBSUB}'><publish node='{node}'>\
             <item id='{id}'>{payload}</item></publish>{}</pubsub></iq>",
            publish_options(options)
        ),
        &iq_id,
    )
    .await
}

async fn items(c: &mut Client, owner: &str, node: &str, extra: &str) -> Element {
    c.iq(
        &format!(
            "<iq type='get' id='items' to='{owner}@{DOMAIN}'><pubsub xmlns='{NS_PUBSUB}'>\
             <items node='{node}'{extra}/></pubsub></iq>"
        ),
        "items",
    )
    .await
}

fn item_ids(reply: &Element) -> Vec<String> {
    reply
        .get_child("pubsub", NS_PUBSUB)
        .and_then(|p| p.get_child("items", NS_PUBSUB))
        .map(|i| {
            i.children()
                .filter_map(|i| i.attr("id").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn devicelist(ids: &[u32]) -> String {
    let mut s = String::from("<list xmlns='eu.siacs.conversations.axolotl'>");
    for id in ids {
        s.push_str(&format!("<device id='{id}'/>"));
    }
    s.push_str("</list>");
    s
}

/// A headline notification from `owner` about `node`.
fn is_event(e: &Element, owner: &str, node: &str) -> bool {
    e.is("message", NS_CLIENT)
        && e.attr("type") == Some("headline")
        && e.attr("from") == Some(format!("{owner}@{DOMAIN}").as_str())
        && e.get_child("event", NS_EVENT)
            .and_then(|ev| ev.children().next())
            .is_some_and(|i| i.attr("node") == Some(node))
}

/// Reads until a notification about `node` from `owner` arrives.
async fn next_event(c: &mut Client, owner: &str, node: &str) -> Element {
    loop {
        let e = c.next_element().await;
        if is_event(&e, owner, node) {
            return e;
        }
    }
}

fn error_app(e: &Element) -> Option<String> {
    e.get_child("error", NS_CLIENT)?
        .children()
        .find(|c| c.ns() == NS_ERRORS)
        .map(|c| c.name().to_owned())
}

/// The whole scenario on one store, ending with a restart of the server.
async fn omemo_scenario(ts: &mut TestServer) {
    let [alice, bob, carol, dave] = names(["alice", "bob", "carol", "dave"]);
    for u in [&alice, &bob, &carol, &dave] {
        ts.add_user(u, "pw").await;
    }
    befriend(ts, &alice, &bob).await;
    befriend(ts, &alice, &carol).await;

    let bob_features = [
        NS_DISCO_INFO,
        NS_CAPS,
        "eu.siacs.conversations.axolotl.devicelist+notify",
        "urn:xmpp:omemo:2:devices+notify",
        "test:trim+notify",
    ];
    let known = ts.server().features.get::<Pep>().unwrap().caps().counts().1;
    let mut a = Client::login(ts.plain_addr, &alice, "pw", Some("phone")).await;
    // The ver may be cached by an earlier run on this server: only a new
    // one is asked about.
    let mut b = login_with_caps(ts, &bob, "laptop", &bob_features, known == 0).await;
    caps_learned(ts, known + 1).await;
    let mut c = login_with_caps(ts, &carol, "pc", &[NS_DISCO_INFO, NS_CAPS], known == 0).await;
    caps_learned(ts, known + 2).await;
    let mut d = Client::login(ts.plain_addr, &dave, "pw", Some("x")).await;
    for client in [&mut a, &mut b, &mut c, &mut d] {
        client.barrier().await;
    }
    let carol_mark = c.mark();
    let dave_mark = d.mark();

    // The device list, published as Conversations does: access open.
    let r = publish(
        &mut a,
        DEVICELIST,
        "current",
        &devicelist(&[1, 2]),
        &[("pubsub#access_model", "open")],
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let ev = next_event(&mut b, &alice, DEVICELIST).await;
    let item = ev
        .get_child("event", NS_EVENT)
        .and_then(|e| e.get_child("items", NS_EVENT))
        .and_then(|i| i.get_child("item", NS_EVENT))
        .expect("an item");
    assert_eq!(item.attr("id"), Some("current"));
    assert!(item
        .get_child("list", "eu.siacs.conversations.axolotl")
        .is_some());

    // OMEMO 2's device list, with the options it asks for.
    let r = publish(
        &mut a,
        DEVICES2,
        "current",
        "<devices xmlns='urn:xmpp:omemo:2'><device id='7'/></devices>",
        &[("pubsub#access_model", "open"), ("pubsub#max_items", "max")],
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    next_event(&mut b, &alice, DEVICES2).await;

    // Carol (no +notify) and Dave (no subscription) heard nothing.
    c.expect_nothing(carol_mark).await;
    d.expect_nothing(dave_mark).await;

    // The node kept access_model open.
    let r = a
        .iq(
            &format!(
                "<iq type='get' id='cfg'><pubsub xmlns='{NS_OWNER}'><configure node='{DEVICELIST}'/></pubsub></iq>"
            ),
            "cfg",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let form = r
        .get_child("pubsub", NS_OWNER)
        .and_then(|p| p.get_child("configure", NS_OWNER))
        .and_then(|c| c.get_child("x", "jabber:x:data"))
        .expect("form");
    let access = form
        .children()
        .find(|f| f.attr("var") == Some("pubsub#access_model"))
        .and_then(|f| f.get_child("value", "jabber:x:data"))
        .map(|v| v.text());
    assert_eq!(access.as_deref(), Some("open"));

    // A stranger fetches a bundle of an open node.
    let r = publish(
        &mut a,
        BUNDLE,
        "current",
        "<bundle xmlns='eu.siacs.conversations.axolotl'><signedPreKeyPublic signedPreKeyId='1'>AAA=</signedPreKeyPublic></bundle>",
        &[("pubsub#access_model", "open")],
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let r = items(&mut d, &alice, BUNDLE, "").await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    assert_eq!(item_ids(&r), vec!["current".to_owned()]);

    // A presence node (the default) is refused to the stranger
    // (XEP-0060 §6.5.9.3: not-authorized, presence-subscription-required),
    // and given to a contact.
    let r = publish(
        &mut a,
        TUNE,
        "t1",
        "<tune xmlns='http://jabber.org/protocol/tune'><title>x</title></tune>",
        &[],
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let r = items(&mut d, &alice, TUNE, "").await;
    assert_eq!(r.attr("type"), Some("error"), "{}", show(&r));
    assert_eq!(stanza_error(&r).as_deref(), Some("not-authorized"));
    assert_eq!(
        error_app(&r).as_deref(),
        Some("presence-subscription-required")
    );
    let r = items(&mut b, &alice, TUNE, "").await;
    assert_eq!(item_ids(&r), vec!["t1".to_owned()], "{}", show(&r));

    // A publish-option that differs from the node's configuration.
    let r = publish(
        &mut a,
        DEVICELIST,
        "current",
        &devicelist(&[1]),
        &[("pubsub#access_model", "presence")],
    )
    .await;
    assert_eq!(r.attr("type"), Some("error"), "{}", show(&r));
    assert_eq!(stanza_error(&r).as_deref(), Some("conflict"));
    assert_eq!(error_app(&r).as_deref(), Some("precondition-not-met"));

    // max_items trims the oldest.
    for id in ["i1", "i2", "i3"] {
        let r = publish(
            &mut a,
            "test:trim",
            id,
            "<x xmlns='test'/>",
            &[("pubsub#max_items", "2")],
        )
        .await;
        assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    }
    let r = items(&mut a, &alice, "test:trim", "").await;
    assert_eq!(
        item_ids(&r),
        vec!["i2".to_owned(), "i3".to_owned()],
        "{}",
        show(&r)
    );
    let r = items(&mut a, &alice, "test:trim", " max_items='1'").await;
    assert_eq!(item_ids(&r), vec!["i3".to_owned()], "{}", show(&r));

    // Retracting notifies.
    let r = a
        .iq(
            &format!(
                "<iq type='set' id='ret'><pubsub xmlns='{NS_PUBSUB}'><retract node='test:trim'><item id='i3'/></retract></pubsub></iq>"
            ),
            "ret",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    loop {
        let ev = next_event(&mut b, &alice, "test:trim").await;
        let retract = ev
            .get_child("event", NS_EVENT)
            .and_then(|e| e.get_child("items", NS_EVENT))
            .and_then(|i| i.get_child("retract", NS_EVENT));
        if let Some(r) = retract {
            assert_eq!(r.attr("id"), Some("i3"));
            break;
        }
    }

    // Back from unavailable, Bob gets the last items he asks for.
    b.send_str("<presence type='unavailable'/>").await;
    b.barrier().await;
    announce(&mut b, &bob_features, false).await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let e = b.next_element().await;
        for node in [DEVICELIST, DEVICES2] {
            if is_event(&e, &alice, node) && !seen.contains(&node) {
                seen.push(node);
            }
        }
    }

    // Items survive a restart.
    let url = ts.server().config().database.url.clone();
    drop((a, b, c, d));
    ts.stop().await;
    let ts2 = TestServer::start_with(|cfg| cfg.database.url = url).await;
    let mut a = Client::login(ts2.plain_addr, &alice, "pw", Some("phone")).await;
    let r = items(&mut a, &alice, DEVICELIST, "").await;
    assert_eq!(item_ids(&r), vec!["current".to_owned()], "{}", show(&r));
    let r = items(&mut a, &alice, "test:trim", "").await;
    assert_eq!(item_ids(&r), vec!["i2".to_owned()], "{}", show(&r));
    drop(a);
    for u in [&alice, &bob, &carol, &dave] {
        ts2.store().delete_account(DOMAIN, u).await.unwrap();
    }
}

#[tokio::test]
async fn omemo_on_sqlite() {
    let mut ts = TestServer::start().await;
    omemo_scenario(&mut ts).await;
}

#[tokio::test]
async fn omemo_on_postgres() {
    let mut ts = TestServer::start_with(|c| c.database.url = postgres_url()).await;
    omemo_scenario(&mut ts).await;
}

/// What one account can make the server keep is bounded, and bad input
/// gets the XEP-0060 errors.
#[tokio::test]
async fn limits_and_bad_input() {
    let ts = TestServer::start_with(|c| {
        c.pep.max_nodes = 2;
        c.pep.max_item_bytes = 300;
        c.pep.max_items = 3;
    })
    .await;
    ts.add_user("eve", "pw").await;
    let mut e = Client::login(ts.plain_addr, "eve", "pw", Some("r")).await;
    let big = format!("<x xmlns='test'>{}</x>", "a".repeat(400));
    let r = publish(&mut e, "n1", "1", &big, &[]).await;
    assert_eq!(
        stanza_error(&r).as_deref(),
        Some("not-acceptable"),
        "{}",
        show(&r)
    );
    assert_eq!(error_app(&r).as_deref(), Some("payload-too-big"));
    for n in ["n1", "n2"] {
        let r = publish(&mut e, n, "1", "<x xmlns='test'/>", &[]).await;
        assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    }
    let r = publish(&mut e, "n3", "1", "<x xmlns='test'/>", &[]).await;
    assert_eq!(
        stanza_error(&r).as_deref(),
        Some("resource-constraint"),
        "{}",
        show(&r)
    );
    // A count above the cap is refused; max is the cap.
    let r = publish(
        &mut e,
        "n1",
        "2",
        "<x xmlns='test'/>",
        &[("pubsub#max_items", "4")],
    )
    .await;
    assert_eq!(
        error_app(&r).as_deref(),
        Some("precondition-not-met"),
        "{}",
        show(&r)
    );
    // Two payloads in one item.
    let r = publish(&mut e, "n1", "3", "<x xmlns='test'/><y xmlns='test'/>", &[]).await;
    assert_eq!(
        stanza_error(&r).as_deref(),
        Some("bad-request"),
        "{}",
        show(&r)
    );
    assert_eq!(error_app(&r).as_deref(), Some("invalid-payload"));
    // No payload.
    let r = publish(&mut e, "n1", "4", "", &[]).await;
    assert_eq!(
        error_app(&r).as_deref(),
        Some("payload-required"),
        "{}",
        show(&r)
    );
    // No node.
    let r = e
        .iq(
            &format!("<iq type='get' id='nn'><pubsub xmlns='{NS_PUBSUB}'><items/></pubsub></iq>"),
            "nn",
        )
        .await;
    assert_eq!(
        error_app(&r).as_deref(),
        Some("nodeid-required"),
        "{}",
        show(&r)
    );
    // A node that does not exist.
    let r = items(&mut e, "eve", "nope", "").await;
    assert_eq!(
        stanza_error(&r).as_deref(),
        Some("item-not-found"),
        "{}",
        show(&r)
    );
    // Someone else's node: no owner operations, no publishing.
    ts.add_user("mallory", "pw").await;
    let mut m = Client::login(ts.plain_addr, "mallory", "pw", Some("r")).await;
    let r = m
        .iq(
            &format!(
                "<iq type='set' id='del' to='eve@{DOMAIN}'><pubsub xmlns='{NS_OWNER}'><delete node='n1'/></pubsub></iq>"
            ),
            "del",
        )
        .await;
    assert_eq!(
        stanza_error(&r).as_deref(),
        Some("forbidden"),
        "{}",
        show(&r)
    );
    let r = m
        .iq(
            &format!(
                "<iq type='set' id='p' to='eve@{DOMAIN}'><pubsub xmlns='{NS_PUBSUB}'><publish node='n1'><item id='z'><x xmlns='test'/></item></publish></pubsub></iq>"
            ),
            "p",
        )
        .await;
    assert_eq!(
        stanza_error(&r).as_deref(),
        Some("forbidden"),
        "{}",
        show(&r)
    );
    // The account's disco#info says PEP.
    let r = e
        .iq(
            &format!(
                "<iq type='get' id='di' to='eve@{DOMAIN}'><query xmlns='{NS_DISCO_INFO}'/></iq>"
            ),
            "di",
        )
        .await;
    let q = r.get_child("query", NS_DISCO_INFO).expect("info");
    assert!(q
        .children()
        .any(|i| i.attr("category") == Some("pubsub") && i.attr("type") == Some("pep")));
    for f in [
        "http://jabber.org/protocol/pubsub#publish-options",
        "http://jabber.org/protocol/pubsub#auto-create",
        "http://jabber.org/protocol/pubsub#persistent-items",
        "http://jabber.org/protocol/pubsub#last-published",
    ] {
        assert!(q.children().any(|c| c.attr("var") == Some(f)), "{f}");
    }
    // Configuration by form (§8.2.4): a bad value is refused, a good one kept.
    let form = |max: &str| {
        format!(
            "<iq type='set' id='cf'><pubsub xmlns='{NS_OWNER}'><configure node='n1'>\
             <x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field>\
             <field var='pubsub#max_items'><value>{max}</value></field>\
             <field var='pubsub#access_model'><value>open</value></field>\
             </x></configure></pubsub></iq>"
        )
    };
    let r = e.iq(&form("0"), "cf").await;
    assert_eq!(
        stanza_error(&r).as_deref(),
        Some("not-acceptable"),
        "{}",
        show(&r)
    );
    let r = e.iq(&form("3"), "cf").await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    for id in ["a", "b", "c", "d"] {
        publish(&mut e, "n1", id, "<x xmlns='test'/>", &[]).await;
    }
    let r = items(&mut m, "eve", "n1", "").await;
    assert_eq!(
        item_ids(&r),
        vec!["b", "c", "d"],
        "open now, three kept: {}",
        show(&r)
    );
    // Purge, then delete (§8.5, §8.4).
    let r = e
        .iq(
            &format!("<iq type='set' id='pu'><pubsub xmlns='{NS_OWNER}'><purge node='n1'/></pubsub></iq>"),
            "pu",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let r = items(&mut e, "eve", "n1", "").await;
    assert!(item_ids(&r).is_empty(), "{}", show(&r));
    let r = e
        .iq(
            &format!("<iq type='set' id='dn'><pubsub xmlns='{NS_OWNER}'><delete node='n1'/></pubsub></iq>"),
            "dn",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let r = items(&mut e, "eve", "n1", "").await;
    assert_eq!(
        stanza_error(&r).as_deref(),
        Some("item-not-found"),
        "{}",
        show(&r)
    );
    // Deleting the account empties its nodes.
    ts.store().delete_account(DOMAIN, "eve").await.unwrap();
    assert!(ts
        .store()
        .pubsub_nodes(DOMAIN, "eve")
        .await
        .unwrap()
        .is_empty());
}

/// XEP-0398: a vCard photo becomes the PEP avatar, and a PEP avatar
/// becomes the vCard photo.
#[tokio::test]
async fn avatar_and_vcard_kept_in_step() {
    use base64::Engine;
    let ts = TestServer::start().await;
    ts.add_user("vic", "pw").await;
    let mut v = Client::login(ts.plain_addr, "vic", "pw", Some("r")).await;
    let image = b"\x89PNG fake image bytes";
    let b64 = base64::engine::general_purpose::STANDARD.encode(image);
    let id = sha1_hex(image);
    let r = v
        .iq(
            &format!(
                "<iq type='set' id='vc'><vCard xmlns='vcard-temp'><FN>Vic</FN>\
                 <PHOTO><TYPE>image/png</TYPE><BINVAL>{b64}</BINVAL></PHOTO></vCard></iq>"
            ),
            "vc",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let r = items(&mut v, "vic", "urn:xmpp:avatar:metadata", "").await;
    assert_eq!(item_ids(&r), vec![id.clone()], "{}", show(&r));
    let r = items(&mut v, "vic", "urn:xmpp:avatar:data", "").await;
    assert!(show(&r).contains(&b64), "{}", show(&r));

    // The other way: a new avatar through PEP replaces the vCard photo.
    let image2 = b"GIF89a another image";
    let b64_2 = base64::engine::general_purpose::STANDARD.encode(image2);
    let id2 = sha1_hex(image2);
    let r = publish(
        &mut v,
        "urn:xmpp:avatar:data",
        &id2,
        &format!("<data xmlns='urn:xmpp:avatar:data'>{b64_2}</data>"),
        &[],
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let r = publish(
        &mut v,
        "urn:xmpp:avatar:metadata",
        &id2,
        &format!(
            "<metadata xmlns='urn:xmpp:avatar:metadata'><info id='{id2}' bytes='{}' type='image/gif'/></metadata>",
            image2.len()
        ),
        &[],
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let r = v
        .iq(
            "<iq type='get' id='vg'><vCard xmlns='vcard-temp'/></iq>",
            "vg",
        )
        .await;
    let card = r.get_child("vCard", "vcard-temp").expect("vCard");
    assert!(
        card.get_child("FN", "vcard-temp").is_some(),
        "the rest stays"
    );
    let photo = card.get_child("PHOTO", "vcard-temp").expect("PHOTO");
    assert_eq!(
        photo.get_child("BINVAL", "vcard-temp").unwrap().text(),
        b64_2
    );
    assert_eq!(
        photo.get_child("TYPE", "vcard-temp").unwrap().text(),
        "image/gif"
    );
    // Disabling the avatar removes the photo.
    let r = publish(
        &mut v,
        "urn:xmpp:avatar:metadata",
        "none",
        "<metadata xmlns='urn:xmpp:avatar:metadata'/>",
        &[],
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let r = v
        .iq(
            "<iq type='get' id='vg2'><vCard xmlns='vcard-temp'/></iq>",
            "vg2",
        )
        .await;
    assert!(
        r.get_child("vCard", "vcard-temp")
            .unwrap()
            .get_child("PHOTO", "vcard-temp")
            .is_none(),
        "{}",
        show(&r)
    );
}

fn sha1_hex(data: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    Sha1::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// XEP-0411 / XEP-0402 compat: bookmarks written in private storage show
/// up as native items (and in the storage:bookmarks node), and native
/// items written through PEP show up in private storage.
#[tokio::test]
async fn bookmarks_kept_in_step() {
    const NATIVE: &str = "urn:xmpp:bookmarks:1";
    let ts = TestServer::start().await;
    ts.add_user("bea", "pw").await;
    let mut b = Client::login(ts.plain_addr, "bea", "pw", Some("r")).await;
    let r = b
        .iq(
            "<iq type='set' id='ps'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>\
             <conference jid='tea@rooms.example' name='Tea' autojoin='true'><nick>bea</nick></conference>\
             <conference jid='coffee@rooms.example' autojoin='false'/>\
             </storage></query></iq>",
            "ps",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let r = items(&mut b, "bea", NATIVE, "").await;
    let mut ids = item_ids(&r);
    ids.sort();
    assert_eq!(
        ids,
        vec!["coffee@rooms.example", "tea@rooms.example"],
        "{}",
        show(&r)
    );
    assert!(show(&r).contains("name='Tea'"), "{}", show(&r));
    let r = items(&mut b, "bea", "storage:bookmarks", "").await;
    assert!(show(&r).contains("tea@rooms.example"), "{}", show(&r));
    // The native node is private (whitelist) and persistent.
    let r = b
        .iq(
            &format!("<iq type='get' id='cfg'><pubsub xmlns='{NS_OWNER}'><configure node='{NATIVE}'/></pubsub></iq>"),
            "cfg",
        )
        .await;
    assert!(show(&r).contains("whitelist"), "{}", show(&r));

    // Native → private: a new room published, one retracted.
    let r = publish(
        &mut b,
        NATIVE,
        "juice@rooms.example",
        "<conference xmlns='urn:xmpp:bookmarks:1' name='Juice' autojoin='true'/>",
        &[
            ("pubsub#persist_items", "true"),
            ("pubsub#max_items", "max"),
            ("pubsub#send_last_published_item", "never"),
            ("pubsub#access_model", "whitelist"),
        ],
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let r = b
        .iq(
            &format!(
                "<iq type='set' id='rt'><pubsub xmlns='{NS_PUBSUB}'><retract node='{NATIVE}' notify='true'>\
                 <item id='coffee@rooms.example'/></retract></pubsub></iq>"
            ),
            "rt",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let r = b
        .iq(
            "<iq type='get' id='pg'><query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query></iq>",
            "pg",
        )
        .await;
    let text = show(&r);
    assert!(text.contains("juice@rooms.example"), "{text}");
    assert!(text.contains("tea@rooms.example"), "{text}");
    assert!(!text.contains("coffee@rooms.example"), "{text}");
}

/// XEP-0223: a node published with whitelist + persist_items keeps the
/// data from everyone else, contacts included.
#[tokio::test]
async fn private_pep_storage() {
    let ts = TestServer::start().await;
    let [owner, friend] = names(["pat", "pal"]);
    ts.add_user(&owner, "pw").await;
    ts.add_user(&friend, "pw").await;
    befriend(&ts, &owner, &friend).await;
    let mut o = Client::login(ts.plain_addr, &owner, "pw", Some("r")).await;
    let mut f = Client::login(ts.plain_addr, &friend, "pw", Some("r")).await;
    let r = publish(
        &mut o,
        "urn:example:secrets",
        "current",
        "<secret xmlns='urn:example:secrets'>42</secret>",
        &[
            ("pubsub#access_model", "whitelist"),
            ("pubsub#persist_items", "true"),
        ],
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let r = items(&mut f, &owner, "urn:example:secrets", "").await;
    assert_eq!(
        stanza_error(&r).as_deref(),
        Some("not-allowed"),
        "{}",
        show(&r)
    );
    assert_eq!(error_app(&r).as_deref(), Some("closed-node"));
    let r = items(&mut o, &owner, "urn:example:secrets", "").await;
    assert_eq!(item_ids(&r), vec!["current".to_owned()], "{}", show(&r));
}

/// §6.1 explicit subscriptions: a stranger subscribes to an open node,
/// gets the last item at once and every publish after, until it
/// unsubscribes; a subscription for someone else's JID is refused.
#[tokio::test]
async fn explicit_subscription() {
    let ts = TestServer::start().await;
    let [owner, reader] = names(["olga", "rita"]);
    ts.add_user(&owner, "pw").await;
    ts.add_user(&reader, "pw").await;
    let mut o = Client::login(ts.plain_addr, &owner, "pw", Some("r")).await;
    let mut r = Client::login(ts.plain_addr, &reader, "pw", Some("r")).await;
    let reply = publish(
        &mut o,
        "urn:example:news",
        "n1",
        "<news xmlns='urn:example:news'>one</news>",
        &[("pubsub#access_model", "open")],
    )
    .await;
    assert_eq!(reply.attr("type"), Some("result"), "{}", show(&reply));
    let rjid = r.jid.clone().unwrap();
    let sub = r
        .iq(
            &format!(
                "<iq type='set' id='sub' to='{owner}@{DOMAIN}'><pubsub xmlns='{NS_PUBSUB}'>\
                 <subscribe node='urn:example:news' jid='{rjid}'/></pubsub></iq>"
            ),
            "sub",
        )
        .await;
    assert_eq!(sub.attr("type"), Some("result"), "{}", show(&sub));
    let ev = next_event(&mut r, &owner, "urn:example:news").await;
    assert!(show(&ev).contains("one"), "{}", show(&ev));
    publish(
        &mut o,
        "urn:example:news",
        "n2",
        "<news xmlns='urn:example:news'>two</news>",
        &[],
    )
    .await;
    let ev = next_event(&mut r, &owner, "urn:example:news").await;
    assert!(show(&ev).contains("two"), "{}", show(&ev));
    // The owner sees the subscriber.
    let subs = o
        .iq(
            &format!(
                "<iq type='get' id='subs'><pubsub xmlns='{NS_OWNER}'><subscriptions node='urn:example:news'/></pubsub></iq>"
            ),
            "subs",
        )
        .await;
    assert!(show(&subs).contains(&rjid), "{}", show(&subs));
    // The subscriber lists its subscriptions on the service (§5.6).
    let mine = r
        .iq(
            &format!(
                "<iq type='get' id='mine' to='{owner}@{DOMAIN}'><pubsub xmlns='{NS_PUBSUB}'><subscriptions/></pubsub></iq>"
            ),
            "mine",
        )
        .await;
    assert!(
        show(&mine).contains("node='urn:example:news'") && show(&mine).contains(&rjid),
        "{}",
        show(&mine)
    );
    // Someone else's JID.
    let bad = r
        .iq(
            &format!(
                "<iq type='set' id='bad' to='{owner}@{DOMAIN}'><pubsub xmlns='{NS_PUBSUB}'>\
                 <subscribe node='urn:example:news' jid='{owner}@{DOMAIN}'/></pubsub></iq>"
            ),
            "bad",
        )
        .await;
    assert_eq!(
        error_app(&bad).as_deref(),
        Some("invalid-jid"),
        "{}",
        show(&bad)
    );
    let unsub = r
        .iq(
            &format!(
                "<iq type='set' id='unsub' to='{owner}@{DOMAIN}'><pubsub xmlns='{NS_PUBSUB}'>\
                 <unsubscribe node='urn:example:news' jid='{rjid}'/></pubsub></iq>"
            ),
            "unsub",
        )
        .await;
    assert_eq!(unsub.attr("type"), Some("result"), "{}", show(&unsub));
    r.barrier().await;
    let mark = r.mark();
    publish(
        &mut o,
        "urn:example:news",
        "n3",
        "<news xmlns='urn:example:news'>three</news>",
        &[],
    )
    .await;
    o.barrier().await;
    r.expect_nothing(mark).await;
}

/// The publisher reads the result of its publish before its own
/// notification (XEP-0060 §7.1: the notifications follow the result).
#[tokio::test]
async fn result_before_notification() {
    let ts = TestServer::start().await;
    ts.add_user("quinn", "pw").await;
    let mut q = login_with_caps(
        &ts,
        "quinn",
        "r",
        &[NS_DISCO_INFO, "urn:example:order+notify"],
        true,
    )
    .await;
    caps_learned(&ts, 1).await;
    q.barrier().await;
    q.send_str(&format!(
        "<iq type='set' id='ord'><pubsub xmlns='{NS_PUBSUB}'><publish node='urn:example:order'>\
         <item id='1'><x xmlns='urn:example:order'/></item></publish></pubsub></iq>"
    ))
    .await;
    let first = q.next_element().await;
    assert!(
        first.is("iq", NS_CLIENT) && first.attr("id") == Some("ord"),
        "{}",
        show(&first)
    );
    let second = q.next_element().await;
    assert!(
        is_event(&second, "quinn", "urn:example:order"),
        "{}",
        show(&second)
    );
}
