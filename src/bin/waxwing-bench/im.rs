//! `waxwing-bench im`: the IM-core figures — how long a user with a large
//! roster (some contacts online) waits for the roster and every contact's
//! presence at login, and how long a user waits for a backlog of offline
//! messages after initial presence.
//!
//! Accounts must exist: the roster owner `{prefix}owner`, contacts
//! `{prefix}c0…{prefix}c{N-1}`, and `{prefix}off` for the offline backlog.
//! The roster (mutual `both` subscriptions) is built in band on the first run
//! and reused after.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::AsyncWriteExt;
use waxwing::sasl::SaltedPasswordCache;

use crate::xmpp::{self, Session, Target};

const NS_ROSTER: &str = "jabber:iq:roster";

#[derive(Parser, Debug)]
#[command(name = "waxwing-bench im")]
struct ImArgs {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 5222)]
    port: u16,
    #[arg(long, default_value = "localhost")]
    domain: String,
    #[arg(long, default_value = "benchpass")]
    password: String,
    /// Account name prefix.
    #[arg(long, default_value = "im")]
    prefix: String,
    /// Roster size of the owner.
    #[arg(long, default_value_t = 500)]
    contacts: usize,
    /// Contacts online while the owner logs in.
    #[arg(long, default_value_t = 100)]
    online: usize,
    /// Messages waiting for the offline user.
    #[arg(long, default_value_t = 1000)]
    offline: usize,
    /// Measured logins of each kind.
    #[arg(long, default_value_t = 50)]
    repeat: usize,
}

/// Entry point for `waxwing-bench im …`.
pub fn main() {
    let args = ImArgs::parse_from(std::env::args().skip(1));
    if let Err(e) = xmpp::runtime().block_on(run(args)) {
        eprintln!("waxwing-bench im: {e}");
        std::process::exit(1);
    }
}

fn target(a: &ImArgs) -> Result<Target, String> {
    let addr = xmpp::loopback_addr(&a.host, a.port)?;
    Target::scram(
        addr,
        &a.domain,
        &a.password,
        Arc::new(SaltedPasswordCache::new()),
    )
}

fn jid(a: &ImArgs, local: &str) -> String {
    format!("{}{local}@{}", a.prefix, a.domain)
}

pub(crate) async fn login(
    t: &Target,
    user: &str,
    resource: &str,
    presence: bool,
) -> Result<Session, String> {
    xmpp::login_bound(t, user, resource, presence)
        .await
        .map_err(|f| format!("{user}: {f:?}"))
}

/// Closes a stream the way RFC 6120 §4.4 asks: send the closing tag, then
/// read until the server's, so nothing routed to the session meanwhile is
/// written into a socket nobody reads any more.
pub(crate) async fn close(mut s: Session) {
    if s.stream.send_raw(b"</stream:stream>").await.is_ok() {
        let wait = async { while s.stream.next_element().await.is_ok() {} };
        let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
    }
    let _ = s.stream.io.shutdown().await;
}

/// Round trip to the server: everything sent before it has been handled.
pub(crate) async fn sync(s: &mut Session, id: &str) -> Result<(), String> {
    let ping = format!("<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>");
    s.stream.send_raw(ping.as_bytes()).await?;
    loop {
        let el = s.stream.next_element().await?;
        if el.name() == "iq" && el.attr("id") == Some(id) {
            return Ok(());
        }
    }
}

pub(crate) async fn roster_both_count(s: &mut Session) -> Result<usize, String> {
    s.stream
        .send_raw(format!("<iq type='get' id='rc'><query xmlns='{NS_ROSTER}'/></iq>").as_bytes())
        .await?;
    loop {
        let el = s.stream.next_element().await?;
        if el.name() == "iq" && el.attr("id") == Some("rc") {
            return Ok(el
                .get_child("query", NS_ROSTER)
                .map(|q| {
                    q.children()
                        .filter(|i| i.attr("subscription") == Some("both"))
                        .count()
                })
                .unwrap_or(0));
        }
    }
}

/// Builds mutual subscriptions between the owner and every contact, using
/// pre-approval so no side has to answer requests interactively.
async fn build_roster(a: &ImArgs, t: &Target, owner: &mut Session) -> Result<(), String> {
    let owner_jid = jid(a, "owner");
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
        let c = jid(a, &format!("c{i}"));
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
    for mut c in contacts {
        let _ = c.stream.io.shutdown().await;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(crate) fn summary(name: &str, mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99, max) = (
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        percentile(&v, 1.0),
    );
    println!(
        "{name}: n={} p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
        v.len()
    );
    format!(
        "\"{name}\":{{\"n\":{},\"p50_ms\":{p50:.2},\"p99_ms\":{p99:.2},\"max_ms\":{max:.2}}}",
        v.len()
    )
}

async fn run(a: ImArgs) -> Result<(), String> {
    let t = target(&a)?;
    let owner_user = format!("{}owner", a.prefix);

    // 1. The owner's roster: built once, reused by later runs.
    let mut owner = login(&t, &owner_user, "setup", false).await?;
    let have = roster_both_count(&mut owner).await?;
    if have < a.contacts {
        println!("building a {}-contact roster (have {have})…", a.contacts);
        build_roster(&a, &t, &mut owner).await?;
        let now = roster_both_count(&mut owner).await?;
        if now < a.contacts {
            return Err(format!(
                "roster has {now} mutual subscriptions, wanted {}",
                a.contacts
            ));
        }
    }
    let _ = owner.stream.io.shutdown().await;

    // 2. Some contacts online.
    let mut online = Vec::new();
    for i in 0..a.online {
        online.push(login(&t, &format!("{}c{i}", a.prefix), "online", true).await?);
    }
    for (i, c) in online.iter_mut().enumerate() {
        sync(c, &format!("on{i}")).await?;
    }
    let online_jids: HashSet<String> = (0..a.online)
        .map(|i| format!("{}/online", jid(&a, &format!("c{i}"))))
        .collect();

    // 3. Roster + presences at login.
    let (mut after_bind, mut from_connect) = (Vec::new(), Vec::new());
    for _ in 0..a.repeat {
        let started = Instant::now();
        let mut s = login(&t, &owner_user, "measured", false).await?;
        let bound = Instant::now();
        s.stream
            .send_raw(
                format!("<iq type='get' id='r'><query xmlns='{NS_ROSTER}'/></iq><presence/>")
                    .as_bytes(),
            )
            .await?;
        let (mut roster_items, mut seen) = (None, HashSet::new());
        while roster_items.is_none() || seen.len() < online_jids.len() {
            let el = tokio::time::timeout(Duration::from_secs(10), s.stream.next_element())
                .await
                .map_err(|_| {
                    format!(
                        "timed out: roster {roster_items:?}, {} presences",
                        seen.len()
                    )
                })??;
            if el.name() == "iq" && el.attr("id") == Some("r") {
                roster_items = Some(
                    el.get_child("query", NS_ROSTER)
                        .map(|q| q.children().count())
                        .unwrap_or(0),
                );
            } else if el.name() == "presence" && el.attr("type").is_none() {
                if let Some(f) = el.attr("from").filter(|f| online_jids.contains(*f)) {
                    seen.insert(f.to_string());
                }
            }
        }
        let done = Instant::now();
        if roster_items != Some(a.contacts) {
            return Err(format!("roster had {roster_items:?} items"));
        }
        after_bind.push((done - bound).as_secs_f64() * 1e3);
        from_connect.push((done - started).as_secs_f64() * 1e3);
        close(s).await;
    }
    println!(
        "roster login: {} contacts, {} online, {} logins",
        a.contacts, a.online, a.repeat
    );
    let j1 = summary("roster_and_presences_after_bind", after_bind);
    let j2 = summary("roster_and_presences_from_connect", from_connect);

    // 4. Offline backlog handed over at initial presence.
    let off_user = format!("{}off", a.prefix);
    let off_jid = jid(&a, "off");
    let sender = &mut online[0];
    let mut handover = Vec::new();
    for round in 0..a.repeat.min(20) {
        let mut batch = String::new();
        for k in 0..a.offline {
            batch.push_str(&format!(
                "<message to='{off_jid}' type='chat' id='o{round}.{k}'><body>offline message {k}</body></message>"
            ));
        }
        sender.stream.send_raw(batch.as_bytes()).await?;
        sync(sender, &format!("stored{round}")).await?;
        let mut s = login(&t, &off_user, "measured", false).await?;
        let t0 = Instant::now();
        s.stream.send_raw(b"<presence/>").await?;
        let mut got = 0;
        while got < a.offline {
            let el = tokio::time::timeout(Duration::from_secs(10), s.stream.next_element())
                .await
                .map_err(|_| format!("timed out after {got} offline messages"))??;
            if el.name() == "message"
                && el
                    .attr("id")
                    .is_some_and(|i| i.starts_with(&format!("o{round}.")))
            {
                got += 1;
            }
        }
        handover.push(t0.elapsed().as_secs_f64() * 1e3);
        close(s).await;
    }
    println!("offline hand-over: {} messages", a.offline);
    let j3 = summary("offline_handover", handover);
    println!(
        "{{\"contacts\":{},\"online\":{},\"offline\":{},{j1},{j2},{j3}}}",
        a.contacts, a.online, a.offline
    );
    Ok(())
}
