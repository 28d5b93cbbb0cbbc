//! The server's own IQs (iq_tracker): a request reaches a client over a
//! real socket, its answer wakes the waiter; an answer from anyone else
//! is ignored; silence times out; an error answer is an error.

mod common;

use std::time::Duration;

use common::*;
use waxwing::iq_tracker::IqFailure;
use waxwing::xml::{Element, NS_CLIENT};

fn ping_to(to: &str) -> Element {
    Element::new("iq", NS_CLIENT)
        .with_attr("type", "get")
        .with_attr("to", to)
        .with_child(Element::new("ping", "urn:xmpp:ping"))
}

#[tokio::test]
async fn the_answer_of_the_addressee_and_only_it_wakes_the_request() {
    let server = TestServer::start().await;
    server.add_user("nina", "pw").await;
    server.add_user("oscar", "pw").await;
    let mut nina = Client::login(server.plain_addr, "nina", "pw", Some("n")).await;
    let mut oscar = Client::login(server.plain_addr, "oscar", "pw", Some("o")).await;
    nina.barrier().await;
    let s = server.server().clone();
    let request = tokio::spawn(async move {
        s.iq_tracker
            .request(
                &s,
                "localhost",
                ping_to("nina@localhost/n"),
                Duration::from_secs(10),
            )
            .await
    });
    let ping = nina.next_named("iq").await;
    assert_eq!(ping.attr("from"), Some("localhost"));
    let id = ping.attr("id").unwrap().to_string();
    // Someone else answering with the same id is not the answer.
    oscar
        .send_str(&format!("<iq type='result' id='{id}' to='localhost'/>"))
        .await;
    oscar.barrier().await;
    // Still waiting (a taken answer would have removed it at once).
    assert_eq!(server.server().iq_tracker.waiting(), 1);
    nina.send_str(&format!("<iq type='result' id='{id}' to='localhost'/>"))
        .await;
    let answer = request.await.unwrap().expect("a result");
    assert_eq!(answer.attr("from"), Some("nina@localhost/n"));
    assert_eq!(server.server().iq_tracker.waiting(), 0);
}

#[tokio::test]
async fn silence_times_out_and_an_error_is_an_error() {
    let server = TestServer::start().await;
    server.add_user("pia", "pw").await;
    let mut pia = Client::login(server.plain_addr, "pia", "pw", Some("p")).await;
    pia.barrier().await;
    let s = server.server().clone();
    let silent = s
        .iq_tracker
        .request(
            &s,
            "localhost",
            ping_to("pia@localhost/p"),
            Duration::from_millis(200),
        )
        .await;
    assert!(matches!(silent, Err(IqFailure::Timeout)), "{silent:?}");
    assert_eq!(s.iq_tracker.waiting(), 0);
    let _ = pia.next_named("iq").await;

    let s2 = s.clone();
    let request = tokio::spawn(async move {
        s2.iq_tracker
            .request(
                &s2,
                "localhost",
                ping_to("pia@localhost/p"),
                Duration::from_secs(10),
            )
            .await
    });
    let ping = pia.next_named("iq").await;
    let id = ping.attr("id").unwrap().to_string();
    pia.send_str(&format!(
        "<iq type='error' id='{id}' to='localhost'><error type='cancel'>\
         <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    ))
    .await;
    let outcome = request.await.unwrap();
    assert!(matches!(outcome, Err(IqFailure::Error(_))), "{outcome:?}");
    // Nobody there: not sent at all.
    let gone = s
        .iq_tracker
        .request(
            &s,
            "localhost",
            ping_to("pia@localhost/elsewhere"),
            Duration::from_secs(10),
        )
        .await;
    assert!(matches!(gone, Err(IqFailure::NotSent)), "{gone:?}");
}
