//! The archive writer's queue is bounded in bytes (`[mam] queue_bytes`):
//! while the writer cannot commit (the database's write lock is held), a
//! sender of archived messages is held back once the waiting rows reach
//! the bound — its later messages are neither delivered nor queued — and
//! when the writer commits again every message is delivered and archived
//! on both sides. On a real SQLite file.

mod common;

use std::time::Duration;

use common::*;
use waxwing::xml::NS_CLIENT;

const COUNT: usize = 200;

/// The `<count/>` of `c`'s whole archive, asked over XMPP: an archive
/// query waits for the writer to have committed what was handed over.
async fn archive_count(c: &mut Client) -> i64 {
    c.send_str(
        "<iq type='set' id='n'><query xmlns='urn:xmpp:mam:2'>\
         <set xmlns='http://jabber.org/protocol/rsm'><max>0</max></set></query></iq>",
    )
    .await;
    loop {
        let e = c.next_element().await;
        if e.is("iq", NS_CLIENT) && e.attr("id") == Some("n") {
            let count = e
                .get_child("fin", "urn:xmpp:mam:2")
                .and_then(|f| f.get_child("set", "http://jabber.org/protocol/rsm"))
                .and_then(|s| s.get_child("count", "http://jabber.org/protocol/rsm"))
                .map(|c| c.text())
                .unwrap_or_default();
            return count.parse().unwrap_or(-1);
        }
    }
}

/// Messages `c` receives until nothing comes for `quiet`.
async fn received_until_quiet(c: &mut Client, quiet: Duration) -> usize {
    let mut n = 0;
    while let Ok(e) = tokio::time::timeout(quiet, c.next_element()).await {
        if e.is("message", NS_CLIENT) {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn a_full_archive_queue_holds_the_sender_back_and_loses_nothing() {
    // About eight messages' rows (two rows of ~250 bytes each).
    let server = TestServer::start_with(|c| c.mam.queue_bytes = 4096).await;
    server.add_user("ann", "pw").await;
    server.add_user("ben", "pw").await;
    let mut ben = Client::login(server.plain_addr, "ben", "pw", Some("r")).await;
    let mut ann = Client::login(server.plain_addr, "ann", "pw", Some("r")).await;
    let lock = db::WriteLock::take(&server).await;
    let mut burst = String::new();
    for i in 0..COUNT {
        // To the bound resource: delivered, not stored offline (which
        // would wait for the lock itself).
        burst.push_str(&format!(
            "<message type='chat' to='ben@{DOMAIN}/r' id='q{i}'><body>held back {i}</body></message>"
        ));
    }
    ann.send_str(&burst).await;
    let early = received_until_quiet(&mut ben, Duration::from_millis(700)).await;
    assert!(
        early < 40,
        "{early} of {COUNT} delivered while the writer could not commit: the queue is not bounded"
    );
    lock.release().await;
    let late = received_until_quiet(&mut ben, Duration::from_millis(1500)).await;
    assert_eq!(early + late, COUNT, "every message delivered once");
    // Both archives hold them all.
    assert_eq!(archive_count(&mut ann).await, COUNT as i64);
    assert_eq!(archive_count(&mut ben).await, COUNT as i64);
}
