//! Every subscription-state transition of RFC 6121 Appendix A, run through
//! the server's state machine against a real SQLite store.

mod common;

use common::*;
use jid::BareJid;
use waxwing::modules::roster::{self, Inbound, SubscriptionKind};
use waxwing::storage::RosterRecord;
use waxwing::xml::{Element, NS_CLIENT};

/// A state as Appendix A writes it: "None", "None+PO", "To+PI", "Both"…
fn record(state: &str) -> Option<RosterRecord> {
    let mut parts = state.split('+');
    let sub = parts.next().unwrap().to_lowercase();
    let rest: Vec<&str> = parts.collect();
    let (po, pi) = (rest.contains(&"PO"), rest.contains(&"PI"));
    if sub == "none" && !po && !pi {
        return None;
    }
    Some(RosterRecord {
        contact: "contact@localhost".into(),
        name: None,
        subscription: sub.clone(),
        ask_out: po,
        pending_in: pi,
        approved: false,
        // A pending-in-only request from a stranger is not in the roster.
        in_roster: sub != "none" || po,
        groups: vec![],
    })
}

fn state_of(r: Option<RosterRecord>) -> String {
    let Some(r) = r else { return "None".into() };
    let mut s = match r.subscription.as_str() {
        "none" => "None",
        "to" => "To",
        "from" => "From",
        "both" => "Both",
        other => panic!("bad subscription {other}"),
    }
    .to_string();
    if r.ask_out {
        s.push_str("+PO");
    }
    if r.pending_in {
        s.push_str("+PI");
    }
    s
}

const STATES: [&str; 9] = [
    "None",
    "None+PO",
    "None+PI",
    "None+PO+PI",
    "To",
    "To+PI",
    "From",
    "From+PO",
    "Both",
];

async fn run_table(
    server: &TestServer,
    direction: &str,
    kind: SubscriptionKind,
    expected: [(&str, &str); 9],
) {
    let user = BareJid::new("user@localhost").unwrap();
    let contact = BareJid::new("contact@localhost").unwrap();
    for (from_state, (to_state, effect)) in STATES.iter().zip(expected) {
        let store = server.store();
        let _ = store
            .roster_remove("localhost", "user", "contact@localhost")
            .await;
        if let Some(r) = record(from_state) {
            store.roster_put("localhost", "user", &r).await.unwrap();
        }
        let stanza = Element::new("presence", NS_CLIENT)
            .with_attr("from", "contact@localhost")
            .with_attr("to", "user@localhost")
            .with_attr("type", kind.as_type());
        let got_effect = if direction == "out" {
            let out = roster::outbound(server.server(), &user, &contact, kind)
                .await
                .unwrap();
            if out.route {
                "route"
            } else {
                "-"
            }
        } else {
            match roster::inbound(server.server(), &user, &contact, kind, &stanza)
                .await
                .unwrap()
            {
                Inbound::Deliver => "deliver",
                Inbound::Drop => "-",
                Inbound::AutoApprove => "auto-subscribed",
                Inbound::Refuse(c) => panic!("refused: {c:?}"),
            }
        };
        let now = state_of(
            store
                .roster_item("localhost", "user", "contact@localhost")
                .await
                .unwrap(),
        );
        assert_eq!(
            (now.as_str(), got_effect),
            (to_state, effect),
            "{direction} {:?} in state {from_state}",
            kind
        );
    }
}

#[tokio::test]
async fn appendix_a_outbound_and_inbound_transitions() {
    let server = TestServer::start().await;
    server.add_user("user", "pw").await;
    server.add_user("contact", "pw").await;
    use SubscriptionKind::*;
    // A.2.1 outbound subscribe
    run_table(
        &server,
        "out",
        Subscribe,
        [
            ("None+PO", "route"),
            ("None+PO", "route"),
            ("None+PO+PI", "route"),
            ("None+PO+PI", "route"),
            ("To", "route"),
            ("To+PI", "route"),
            ("From+PO", "route"),
            ("From+PO", "route"),
            ("Both", "route"),
        ],
    )
    .await;
    // A.2.2 outbound unsubscribe
    run_table(
        &server,
        "out",
        Unsubscribe,
        [
            ("None", "route"),
            ("None", "route"),
            ("None+PI", "route"),
            ("None+PI", "route"),
            ("None", "route"),
            ("None+PI", "route"),
            ("From", "route"),
            ("From", "route"),
            ("From", "route"),
        ],
    )
    .await;
    // A.2.3 outbound subscribed (without a request it is a pre-approval, §3.4, not routed)
    run_table(
        &server,
        "out",
        Subscribed,
        [
            ("None", "-"),
            ("None+PO", "-"),
            ("From", "route"),
            ("From+PO", "route"),
            ("To", "-"),
            ("Both", "route"),
            ("From", "-"),
            ("From+PO", "-"),
            ("Both", "-"),
        ],
    )
    .await;
    // A.2.4 outbound unsubscribed
    run_table(
        &server,
        "out",
        Unsubscribed,
        [
            ("None", "-"),
            ("None+PO", "-"),
            ("None", "route"),
            ("None+PO", "route"),
            ("To", "-"),
            ("To", "route"),
            ("None", "route"),
            ("None+PO", "route"),
            ("To", "route"),
        ],
    )
    .await;
    // A.3.1 inbound subscribe
    run_table(
        &server,
        "in",
        Subscribe,
        [
            ("None+PI", "deliver"),
            ("None+PO+PI", "deliver"),
            ("None+PI", "-"),
            ("None+PO+PI", "-"),
            ("To+PI", "deliver"),
            ("To+PI", "-"),
            ("From", "auto-subscribed"),
            ("From+PO", "auto-subscribed"),
            ("Both", "auto-subscribed"),
        ],
    )
    .await;
    // A.3.2 inbound unsubscribe
    run_table(
        &server,
        "in",
        Unsubscribe,
        [
            ("None", "-"),
            ("None+PO", "-"),
            ("None", "deliver"),
            ("None+PO", "deliver"),
            ("To", "-"),
            ("To", "deliver"),
            ("None", "deliver"),
            ("None+PO", "deliver"),
            ("To", "deliver"),
        ],
    )
    .await;
    // A.3.3 inbound subscribed
    run_table(
        &server,
        "in",
        Subscribed,
        [
            ("None", "-"),
            ("To", "deliver"),
            ("None+PI", "-"),
            ("To+PI", "deliver"),
            ("To", "-"),
            ("To+PI", "-"),
            ("From", "-"),
            ("Both", "deliver"),
            ("Both", "-"),
        ],
    )
    .await;
    // A.3.4 inbound unsubscribed
    run_table(
        &server,
        "in",
        Unsubscribed,
        [
            ("None", "-"),
            ("None", "deliver"),
            ("None+PI", "-"),
            ("None+PI", "deliver"),
            ("None", "deliver"),
            ("None+PI", "deliver"),
            ("From", "-"),
            ("From", "deliver"),
            ("From", "deliver"),
        ],
    )
    .await;
}

#[tokio::test]
async fn pre_approval_turns_a_later_request_into_from() {
    let server = TestServer::start().await;
    server.add_user("user", "pw").await;
    let user = BareJid::new("user@localhost").unwrap();
    let contact = BareJid::new("contact@localhost").unwrap();
    let out = roster::outbound(
        server.server(),
        &user,
        &contact,
        SubscriptionKind::Subscribed,
    )
    .await
    .unwrap();
    assert!(!out.route);
    let r = server
        .store()
        .roster_item("localhost", "user", "contact@localhost")
        .await
        .unwrap()
        .unwrap();
    assert!(r.approved && r.in_roster);
    let req = Element::new("presence", NS_CLIENT).with_attr("type", "subscribe");
    let out = roster::inbound(
        server.server(),
        &user,
        &contact,
        SubscriptionKind::Subscribe,
        &req,
    )
    .await
    .unwrap();
    assert_eq!(out, Inbound::AutoApprove);
    let r = server
        .store()
        .roster_item("localhost", "user", "contact@localhost")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.subscription.as_str(), r.approved), ("from", false));
}
