//! `waxwing-bench first`: how long the first message to a new domain takes.
//!
//! A user on the main server (`--host/--port/--domain`) and one on the peer
//! (`--peer-host/--peer-port/--peer-domain`) log in; the first sends one chat
//! message to the second's full JID and the time until the second has parsed
//! it is printed. With both servers freshly started there is no s2s stream
//! yet, so this includes the whole outgoing stream setup (resolution, TCP,
//! STARTTLS, SASL EXTERNAL or dialback). `--warm` more messages follow over the
//! stream now open, for comparison. Prints one JSON line last.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use waxwing::sasl::SaltedPasswordCache;

use crate::xmpp::{self, Session, Target};

#[derive(Parser, Debug)]
#[command(name = "waxwing-bench first")]
struct FirstArgs {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 5222)]
    port: u16,
    #[arg(long, default_value = "localhost")]
    domain: String,
    #[arg(long)]
    peer_host: String,
    #[arg(long, default_value_t = 5222)]
    peer_port: u16,
    #[arg(long)]
    peer_domain: String,
    #[arg(long, default_value = "benchpass")]
    password: String,
    /// Sender account (on the main server).
    #[arg(long, default_value = "bench0")]
    from: String,
    /// Receiver account (on the peer).
    #[arg(long, default_value = "bench1")]
    to: String,
    /// Messages sent one at a time after the first, over the open stream.
    #[arg(long, default_value_t = 5)]
    warm: usize,
    /// Seconds to wait for a message.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

pub fn main() {
    let args = FirstArgs::parse_from(std::env::args().skip(1));
    match xmpp::runtime().block_on(run(args)) {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("waxwing-bench first: {e}");
            println!("{{\"error\":\"{}\"}}", e.replace(['"', '\\'], "'"));
            std::process::exit(1);
        }
    }
}

fn target(host: &str, port: u16, domain: &str, password: &str) -> Result<Target, String> {
    let addr = xmpp::loopback_addr(host, port)?;
    Target::scram(addr, domain, password, Arc::new(SaltedPasswordCache::new()))
}

/// Sends one message and waits for it at `rx`; returns milliseconds.
async fn one(tx: &mut Session, rx: &mut Session, id: &str, limit: Duration) -> Result<f64, String> {
    let mut to = Vec::new();
    waxwing::xml::escape_attr(&rx.jid, &mut to);
    let to = String::from_utf8_lossy(&to);
    let msg = format!("<message type='chat' to='{to}' id='{id}'><body>hello</body></message>");
    let t0 = Instant::now();
    tx.stream.send_raw(msg.as_bytes()).await?;
    let wait = async {
        loop {
            let el = rx.stream.next_element().await?;
            if el.name() == "message" && el.attr("id") == Some(id) {
                return Ok::<_, String>(t0.elapsed().as_secs_f64() * 1000.0);
            }
        }
    };
    // A bounce comes back to the sender instead; report it rather than time out.
    let bounce = async {
        loop {
            let el = tx.stream.next_element().await?;
            if el.name() == "message" && el.attr("type") == Some("error") {
                let mut xml = Vec::new();
                el.write_to(&mut xml, "jabber:client");
                return Err::<f64, String>(format!("bounced: {}", String::from_utf8_lossy(&xml)));
            }
        }
    };
    tokio::time::timeout(limit, async {
        tokio::select! {
            r = wait => r,
            r = bounce => r,
        }
    })
    .await
    .map_err(|_| format!("message {id} not received within {limit:?}"))?
}

async fn run(a: FirstArgs) -> Result<String, String> {
    let ta = target(&a.host, a.port, &a.domain, &a.password)?;
    let tb = target(&a.peer_host, a.peer_port, &a.peer_domain, &a.password)?;
    let (sa, sb) = tokio::join!(
        xmpp::login(&ta, &a.from, "first"),
        xmpp::login(&tb, &a.to, "first")
    );
    let mut sa = sa.map_err(|f| format!("login {}@{}: {f:?}", a.from, a.domain))?;
    let mut sb = sb.map_err(|f| format!("login {}@{}: {f:?}", a.to, a.peer_domain))?;
    let limit = Duration::from_secs(a.timeout);
    let first = one(&mut sa, &mut sb, "first0", limit).await?;
    let mut warm = Vec::new();
    for i in 0..a.warm {
        warm.push(one(&mut sa, &mut sb, &format!("warm{i}"), limit).await?);
    }
    warm.sort_by(f64::total_cmp);
    let warm_med = warm.get(warm.len() / 2).copied().unwrap_or(f64::NAN);
    eprintln!(
        "first message {}@{} → {}@{}: {first:.2} ms (no s2s stream yet); later messages median {warm_med:.2} ms",
        a.from, a.domain, a.to, a.peer_domain
    );
    Ok(format!(
        "{{\"first_ms\":{first:.3},\"warm_median_ms\":{}}}",
        if warm_med.is_finite() {
            format!("{warm_med:.3}")
        } else {
            "null".into()
        }
    ))
}
