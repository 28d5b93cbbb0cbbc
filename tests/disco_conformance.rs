//! The server's and an account's disco#info against the XMPP Compliance
//! Suites 2023 (XEP-0479), Advanced Server column of the Core, IM and
//! Mobile suites, asked over a real socket.
//!
//! Each entry of [`XEP_0479`] is a disco feature the suites imply (the
//! XEP, the feature var, the suite, where it is advertised) and whether
//! Waxwing has it today. The test fails when an implemented feature is not
//! advertised, when a pending or missing one is (move it to `Implemented`:
//! the pending list only shrinks), and when anything advertised is neither
//! in the table nor in [`BEYOND_XEP_0479`] (a feature nobody declared).
//!
//! Requirements met without a disco feature are not in the table: RFC 6120
//! and 6121, TLS and direct TLS (XEP-0368), stream management (XEP-0198)
//! and client state indication (XEP-0352), which are stream features;
//! components (XEP-0114); private XML storage (XEP-0049, which defines no
//! feature) and bookmarks in it (XEP-0048). Those the suites place on a
//! component (multi-user chat XEP-0045 and XEP-0410, file upload XEP-0363,
//! a room's archive) are found through disco#items, not here.

mod common;

use std::collections::BTreeSet;

use common::*;
use waxwing::xml::Element;

const NS_INFO: &str = "http://jabber.org/protocol/disco#info";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suite {
    Core,
    Im,
    Mobile,
    /// Not in XEP-0479: another XEP Waxwing implements.
    Beyond,
}

/// Where a feature is advertised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entity {
    /// The server's domain.
    Server,
    /// A user's bare JID, asked by its owner.
    Account,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Advertised, and must be.
    Implemented,
    /// Being built now (by whom), so not advertised yet.
    #[allow(dead_code)] // none at the moment; the next suites' rows use it
    Pending(&'static str),
    /// Nobody is building it.
    #[allow(dead_code)]
    Missing,
}

use Entity::*;
use Status::*;
use Suite::*;

struct Row {
    xep: u16,
    var: &'static str,
    suite: Suite,
    entity: Entity,
    status: Status,
}

const fn row(xep: u16, var: &'static str, suite: Suite, entity: Entity, status: Status) -> Row {
    Row {
        xep,
        var,
        suite,
        entity,
        status,
    }
}

/// XEP-0479, Advanced Server: the disco features its Core, IM and Mobile
/// suites call for.
const XEP_0479: &[Row] = &[
    // Core
    row(
        30,
        "http://jabber.org/protocol/disco#info",
        Core,
        Server,
        Implemented,
    ),
    row(
        30,
        "http://jabber.org/protocol/disco#items",
        Core,
        Server,
        Implemented,
    ),
    row(
        115,
        "http://jabber.org/protocol/caps",
        Core,
        Server,
        Implemented,
    ),
    // Event publishing: PEP on the account (XEP-0163 §4: auto-create,
    // auto-subscribe, filtered-notifications are required of it).
    row(
        163,
        "http://jabber.org/protocol/pubsub#publish",
        Core,
        Account,
        Implemented,
    ),
    row(
        163,
        "http://jabber.org/protocol/pubsub#auto-create",
        Core,
        Account,
        Implemented,
    ),
    row(
        163,
        "http://jabber.org/protocol/pubsub#auto-subscribe",
        Core,
        Account,
        Implemented,
    ),
    row(
        163,
        "http://jabber.org/protocol/pubsub#filtered-notifications",
        Core,
        Account,
        Implemented,
    ),
    // IM
    row(54, "vcard-temp", Im, Server, Implemented),
    row(
        398,
        "urn:xmpp:pep-vcard-conversion:0",
        Im,
        Account,
        Implemented,
    ),
    row(280, "urn:xmpp:carbons:2", Im, Server, Implemented),
    row(191, "urn:xmpp:blocking", Im, Server, Implemented),
    row(402, "urn:xmpp:bookmarks:1#compat", Im, Account, Implemented),
    row(
        223,
        "http://jabber.org/protocol/pubsub#publish-options",
        Im,
        Account,
        Implemented,
    ),
    row(313, "urn:xmpp:mam:2", Im, Account, Implemented),
    row(313, "urn:xmpp:mam:2#extended", Im, Account, Implemented),
    // XEP-0313 §7: also on the server, for the domain's own archive queries.
    row(313, "urn:xmpp:mam:2", Im, Server, Implemented),
    row(313, "urn:xmpp:mam:2#extended", Im, Server, Implemented),
    // Mobile
    row(357, "urn:xmpp:push:0", Mobile, Account, Implemented),
];

/// What Waxwing advertises beyond the suites (other XEPs it implements).
#[rustfmt::skip]
const BEYOND_XEP_0479: &[Row] = &[
    row(12, "jabber:iq:last", Beyond, Server, Implemented),
    row(77, "jabber:iq:register", Beyond, Server, Implemented),
    row(92, "jabber:iq:version", Beyond, Server, Implemented),
    row(160, "msgoffline", Beyond, Server, Implemented),
    row(199, "urn:xmpp:ping", Beyond, Server, Implemented),
    row(202, "urn:xmpp:time", Beyond, Server, Implemented),
    row(494, "urn:xmpp:cam:0", Beyond, Server, Implemented),
    row(50, "http://jabber.org/protocol/commands", Beyond, Server, Implemented),
    // The rest of XEP-0060's features PEP implements (§10 feature names).
    row(60, "http://jabber.org/protocol/pubsub", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#access-open", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#access-presence", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#access-roster", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#access-whitelist", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#config-node", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#config-node-max", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#create-and-configure", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#create-nodes", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#delete-items", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#delete-nodes", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#item-ids", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#last-published", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#manage-subscriptions", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#member-affiliation", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#modify-affiliations", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#multi-items", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#outcast-affiliation", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#persistent-items", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#presence-notifications", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#publisher-affiliation", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#purge-nodes", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#retract-items", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#retrieve-affiliations", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#retrieve-default", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#retrieve-items", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#retrieve-subscriptions", Beyond, Account, Implemented),
    row(60, "http://jabber.org/protocol/pubsub#subscribe", Beyond, Account, Implemented),
    row(411, "urn:xmpp:bookmarks:1#compat-pep", Beyond, Account, Implemented),
    row(359, "urn:xmpp:sid:0", Beyond, Account, Implemented),
];

/// The features pending work, which only shrinks as it lands.
const PENDING: &[&str] = &[];

fn features(info: &Element) -> BTreeSet<String> {
    info.get_child("query", NS_INFO)
        .unwrap_or_else(|| panic!("no query: {}", show(info)))
        .children()
        .filter(|c| c.is("feature", NS_INFO))
        .filter_map(|c| c.attr("var").map(str::to_string))
        .collect()
}

fn identities(info: &Element) -> Vec<(String, String)> {
    info.get_child("query", NS_INFO)
        .unwrap()
        .children()
        .filter(|c| c.is("identity", NS_INFO))
        .map(|c| {
            (
                c.attr("category").unwrap_or("").to_string(),
                c.attr("type").unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn disco_matches_the_compliance_suites() {
    let ts = TestServer::start().await;
    ts.add_user("alice", "pw").await;
    let mut c = Client::login(ts.plain_addr, "alice", "pw", Some("r")).await;
    let server_info = c
        .iq(
            &format!("<iq type='get' id='s' to='{DOMAIN}'><query xmlns='{NS_INFO}'/></iq>"),
            "s",
        )
        .await;
    let account_info = c
        .iq(
            &format!("<iq type='get' id='a' to='alice@{DOMAIN}'><query xmlns='{NS_INFO}'/></iq>"),
            "a",
        )
        .await;
    assert!(identities(&server_info).contains(&("server".into(), "im".into())));
    assert!(identities(&account_info).contains(&("account".into(), "registered".into())));
    let advertised = [
        (Server, features(&server_info)),
        (Account, features(&account_info)),
    ];

    let mut problems = Vec::new();
    for r in XEP_0479.iter().chain(BEYOND_XEP_0479) {
        let at = &advertised.iter().find(|(e, _)| *e == r.entity).unwrap().1;
        let shown = at.contains(r.var);
        match r.status {
            Implemented if !shown => problems.push(format!(
                "XEP-{:04} {} ({:?}) is implemented but not advertised on the {:?}",
                r.xep, r.var, r.suite, r.entity
            )),
            Pending(who) if shown => problems.push(format!(
                "XEP-{:04} {} is advertised now: mark it Implemented (was pending: {who}) and take it off PENDING",
                r.xep, r.var
            )),
            Missing if shown => problems.push(format!(
                "XEP-{:04} {} is advertised now: mark it Implemented",
                r.xep, r.var
            )),
            _ => {}
        }
    }
    for (entity, vars) in &advertised {
        for var in vars {
            let known = XEP_0479
                .iter()
                .chain(BEYOND_XEP_0479)
                .any(|r| r.var == var && r.entity == *entity && r.status == Implemented);
            if !known {
                problems.push(format!(
                    "{var} is advertised on the {entity:?} but no implemented entry declares it"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The table's bookkeeping: pending entries are exactly [`PENDING`], and
/// every implemented entry's XEP is one the server declares (xep/waxwing.doap).
#[test]
fn the_table_is_consistent() {
    let pending: BTreeSet<&str> = XEP_0479
        .iter()
        .filter(|r| matches!(r.status, Pending(_)))
        .map(|r| r.var)
        .collect();
    assert_eq!(pending, PENDING.iter().copied().collect());
    let features = waxwing::feature::Features::new(waxwing::modules::default_features()).unwrap();
    let declared = features.xeps();
    for r in XEP_0479.iter().chain(BEYOND_XEP_0479) {
        if r.status == Implemented {
            assert!(
                declared.contains(&r.xep),
                "XEP-{:04} marked implemented but no feature declares it",
                r.xep
            );
        }
    }
}
