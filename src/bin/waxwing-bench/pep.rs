//! `waxwing-bench pep`: how long a PEP publish (XEP-0163) takes to reach
//! every online contact as a notification.
//!
//! Accounts must exist: the publisher `{prefix}owner` and its contacts
//! `{prefix}c0…{prefix}c{N-1}` (mutual subscriptions are built in band on
//! the first run and reused). Each contact logs in with entity caps whose
//! features include `<node>+notify`, and answers the server's disco#info
//! query about them. Then the owner publishes `--repeat` items, one at a
//! time; for each, the time from writing the publish to each contact
//! having parsed its notification is recorded. Prints p50/p99/max over all
//! notifications, and per publish until the last contact has it; one JSON
//! line last.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use clap::Parser;
use sha1::{Digest, Sha1};
use tokio::sync::mpsc;
use waxwing::sasl::SaltedPasswordCache;

use crate::im::{close, login, roster_both_count, summary, sync};
use crate::xmpp::{self, Target};

const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NODE: &str = "urn:xmpp:waxwing:bench:pep";

#[derive(Parser, Debug)]
#[command(name = "waxwing-bench pep")]
struct PepArgs {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 5222)]
    port: u16,
    #[arg(long, default_value = "localhost")]
    domain: String,
    #[arg(long, default_value = "benchpass")]
    password: String,
    /// Account name prefix.
    #[arg(long, default_value = "pep")]
    prefix: String,
    /// Online contacts that want the node's notifications.
    #[arg(long, default_value_t = 100)]
    contacts: usize,
    /// Measured publishes.
    #[arg(long, default_value_t = 200)]
    repeat: usize,
}

/// Entry point for `waxwing-bench pep …`.
pub fn main() {
    let args = PepArgs::parse_from(std::env::args().skip(1));
    if let Err(e) = xmpp::runtime().block_on(run(args)) {
        eprintln!("waxwing-bench pep: {e}");
        std::process::exit(1);
    }
}

fn target(a: &PepArgs) -> Result<Target, String> {
    let addr = xmpp::loopback_addr(&a.host, a.port)?;
    Target::scram(
        addr,
        &a.domain,
        &a.password,
        Arc::new(SaltedPasswordCache::new()),
    )
}

/// The contacts' disco#info, and its XEP-0115 verification string
/// (one identity, three features: already sorted).
fn client_info() -> (String, String) {
    let identity = "client/pc//waxwing-bench";
    let features = [
        NS_DISCO_INFO.to_owned(),
        "http://jabber.org/protocol/caps".to_owned(),
        format!("{NODE}+notify"),
    ];
    let mut features_sorted = features.clone();
    features_sorted.sort();
    let mut s = format!("{identity}<");
    for f in &features_sorted {
        s.push_str(f);
        s.push('<');
    }
    let ver = base64::engine::general_purpose::STANDARD.encode(Sha1::digest(s.as_bytes()));
    let mut q = "<identity category='client' type='pc' name='waxwing-bench'/>".to_owned();
    for f in &features {
        q.push_str(&format!("<feature var='{f}'/>"));
    }
    (q, ver)
}

/// Mutual subscriptions between the owner and every contact (pre-approval
/// both ways, as `waxwing-bench im` builds them).
async fn build_roster(a: &PepArgs, t: &Target, owner: &mut xmpp::Session) -> Result<(), String> {
    let owner_jid = format!("{}owner@{}", a.prefix, a.domain);
    let mut contacts = Vec::new();
    for i in 0..a.contacts {
        let mut c = login(t, &format!("{}c{i}", a.prefix), "setup", false).await?;
        c.stream
            .send_raw(format!("<presence to='{owner_jid}' type='subscribed'/>").as_bytes())
            .await?;
        sync(&mut c, "pre").await?;
        contacts.push(c);
    }
    let mut batch = String::new();
    for i in 0..a.contacts {
        let c = format!("{}c{i}@{}", a.prefix, a.domain);
        batch.push_str(&format!(
            "<presence to='{c}' type='subscribed'/><presence to='{c}' type='subscribe'/>"
        ));
    }
    owner.stream.send_raw(batch.as_bytes()).await?;
    sync(owner, "owner-subs").await?;
    for c in contacts.iter_mut() {
        c.stream
            .send_raw(format!("<presence to='{owner_jid}' type='subscribe'/>").as_bytes())
            .await?;
        sync(c, "sub").await?;
    }
    for c in contacts {
        close(c).await;
    }
    Ok(())
}

async fn run(a: PepArgs) -> Result<(), String> {
    let t = target(&a)?;
    let mut owner = login(&t, &format!("{}owner", a.prefix), "pub", false).await?;
    let have = roster_both_count(&mut owner).await?;
    if have < a.contacts {
        println!("building a {}-contact roster (have {have})…", a.contacts);
        build_roster(&a, &t, &mut owner).await?;
    }

    // Contacts online with +notify caps; each reader answers disco#info
    // and reports every notification's item id with when it was parsed.
    let (info, ver) = client_info();
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let mut readers = Vec::new();
    for i in 0..a.contacts {
        let mut s = login(&t, &format!("{}c{i}", a.prefix), "bench", false).await?;
        s.stream
            .send_raw(
                format!(
                    "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' \
                     node='https://waxwing.im/bench' ver='{ver}'/></presence>"
                )
                .as_bytes(),
            )
            .await?;
        let (tx, info) = (tx.clone(), info.clone());
        readers.push(tokio::spawn(async move {
            while let Ok(el) = s.stream.next_element().await {
                let now = Instant::now();
                if el.name() == "iq" && el.attr("type") == Some("get") {
                    if let Some(q) = el.get_child("query", NS_DISCO_INFO) {
                        let reply = format!(
                            "<iq type='result' id='{}' to='{}'><query xmlns='{NS_DISCO_INFO}' node='{}'>{info}</query></iq>",
                            el.attr("id").unwrap_or_default(),
                            el.attr("from").unwrap_or_default(),
                            q.attr("node").unwrap_or_default()
                        );
                        if s.stream.send_raw(reply.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                    continue;
                }
                if el.name() != "message" {
                    continue;
                }
                let id = el
                    .children()
                    .find(|c| c.name() == "event")
                    .and_then(|e| e.children().next())
                    .and_then(|items| items.children().next())
                    .and_then(|item| item.attr("id"))
                    .map(str::to_owned);
                if let Some(id) = id {
                    if tx.send((id, now)).is_err() {
                        break;
                    }
                }
            }
        }));
    }
    drop(tx);

    let publish = |id: &str| {
        format!(
            "<iq type='set' id='p-{id}'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
             <publish node='{NODE}'><item id='{id}'><entry xmlns='urn:xmpp:waxwing:bench'>\
             <n>{id}</n></entry></item></publish></pubsub></iq>"
        )
    };
    // Wait until every contact gets notifications (the server learned the caps).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut round = 0;
    loop {
        round += 1;
        let id = format!("warm{round}");
        owner.stream.send_raw(publish(&id).as_bytes()).await?;
        let mut got = 0;
        let until = Instant::now() + Duration::from_millis(500);
        while got < a.contacts {
            match tokio::time::timeout_at(until.into(), rx.recv()).await {
                Ok(Some((i, _))) if i == id => got += 1,
                Ok(Some(_)) => {}
                Ok(None) => return Err("contacts' streams closed".into()),
                Err(_) => break,
            }
        }
        if got == a.contacts {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {got} of {} contacts notified", a.contacts));
        }
    }

    let (mut each, mut all) = (Vec::new(), Vec::new());
    for n in 0..a.repeat {
        let id = format!("m{n}");
        let t0 = Instant::now();
        owner.stream.send_raw(publish(&id).as_bytes()).await?;
        let mut got = 0;
        let mut last = t0;
        while got < a.contacts {
            let (i, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .map_err(|_| format!("publish {n}: {got} of {} notified", a.contacts))?
                .ok_or("contacts' streams closed")?;
            if i == id {
                got += 1;
                each.push((at - t0).as_secs_f64() * 1e3);
                last = last.max(at);
            }
        }
        all.push((last - t0).as_secs_f64() * 1e3);
    }
    println!(
        "pep: {} publishes to {} online contacts with +notify",
        a.repeat, a.contacts
    );
    let j1 = summary("notification", each);
    let j2 = summary("publish_to_last_notification", all);
    println!(
        "{{\"contacts\":{},\"repeat\":{},{j1},{j2}}}",
        a.contacts, a.repeat
    );
    close(owner).await;
    for r in readers {
        r.abort();
    }
    Ok(())
}
