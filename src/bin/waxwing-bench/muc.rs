//! `waxwing-bench muc`: group chat (XEP-0045) figures that mean the same on
//! any server, since it speaks plain XMPP to a MUC service named on the
//! command line (Waxwing's, Prosody's component, ejabberd's mod_muc).
//!
//! It logs in N sessions (the tool's own login, SCRAM cache included),
//! keeps every one reading, and runs four phases, each bounded in time:
//! 1. **join**: a room of `--join-size` occupants; one more session joins
//!    `--join-repeat` times (presence → self-presence with 110, counting
//!    every occupant presence before it) and leaves again; p50/p99.
//! 2. **saturation**: `--rooms` rooms of `--room-size` occupants; in each,
//!    `--senders` occupants keep `--window` group chat messages in flight
//!    (a sender sends its next when its own reflection comes back);
//!    deliveries counted at every receiver, per second.
//! 3. **paced**: the same rooms at half the saturation delivery rate,
//!    open loop, the senders taking turns at an even pace; latency from
//!    each message's scheduled send time, so a stall anywhere shows (no
//!    coordinated omission).
//! 4. **big**: one room of `--big-size` occupants: the server's RSS per
//!    occupant (before and after the joins), the join time of one more,
//!    and its saturated delivery rate.
//!
//! Server CPU per delivery comes from `/proc/<pid>/stat`; how long the
//! server's threads and the tool's own waited for a CPU (runnable, not
//! running) from `/proc/<pid>/task/*/schedstat`. Every join asks
//! for no history (`<history maxstanzas='0'/>`), so no server sends any.
//! Prints a human summary and, last, one JSON line.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::sync::{mpsc, Mutex, Semaphore};
use waxwing::sasl::SaltedPasswordCache;
use waxwing::xml::{Element, StreamEvent};

use crate::frame::{self, Framer};
use crate::stats::{self, LatencyHistogram};
use crate::xmpp::{self, Target};
use crate::{pct_ms, rep, Report, SharedReport};

const NS_MUC: &str = "http://jabber.org/protocol/muc";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";

#[derive(Parser, Debug, Clone)]
#[command(name = "waxwing-bench muc")]
struct MucArgs {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 5222)]
    port: u16,
    /// XMPP domain of the accounts (also the TLS server name).
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// The MUC service's domain (default: conference.<domain>).
    #[arg(long)]
    muc_domain: Option<String>,
    /// Accounts {prefix}0..{prefix}{A-1}; session i is account i % A,
    /// resource r{i / A}.
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    #[arg(long, default_value = "benchpass")]
    password: String,
    #[arg(long, default_value = "bench")]
    prefix: String,
    /// PID of the server process, for RSS and CPU from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// More nodes of one cluster serving the same domain on the same
    /// port (comma-separated addresses): session i logs in at the
    /// (i mod nodes)-th of --host and these, so a room's occupants are
    /// spread over the nodes.
    #[arg(long, value_delimiter = ',')]
    also_hosts: Vec<String>,
    /// Their PIDs: CPU and RSS are summed over every node.
    #[arg(long, value_delimiter = ',')]
    also_pids: Vec<u32>,
    #[arg(long, default_value_t = 200)]
    login_concurrency: usize,
    /// Joins in flight at once while rooms fill.
    #[arg(long, default_value_t = 50)]
    join_concurrency: usize,
    /// Phase 1: occupants already in the room one more joins (0 skips).
    #[arg(long, default_value_t = 500)]
    join_size: usize,
    /// Phase 1: measured joins.
    #[arg(long, default_value_t = 20)]
    join_repeat: usize,
    /// Phases 2–3: rooms, and occupants of each (0 rooms skips).
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    #[arg(long, default_value_t = 50)]
    room_size: usize,
    /// Senders per room (the first occupants).
    #[arg(long, default_value_t = 5)]
    senders: usize,
    /// Saturation: messages in flight per sender.
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Seconds of sending in each measured run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Phase 4: occupants of the big room (0 skips).
    #[arg(long, default_value_t = 5000)]
    big_size: usize,
    /// Phase 4: measured joins into the big room.
    #[arg(long, default_value_t = 5)]
    big_join_repeat: usize,
    /// Most seconds any one phase's set-up (logins, filling rooms) may take;
    /// a room not full by then is measured as far as it got.
    #[arg(long, default_value_t = 180)]
    phase_time: u64,
    /// Body bytes of each group chat message.
    #[arg(long, default_value_t = 64)]
    body: usize,
    /// Stop everything after this many seconds.
    #[arg(long, default_value_t = 900)]
    max_time: u64,
    #[arg(long, default_value = "")]
    label: String,
    /// Build an element of every stanza received, group chat deliveries
    /// included (the tool's behaviour before frame.rs; costs about as much
    /// CPU per delivery as a server spends producing it).
    #[arg(long)]
    parse_every_delivery: bool,
    /// Phase 3 again at these delivery rates (per second, comma-separated),
    /// after the run at half the saturation rate: latency at a load named
    /// in advance rather than relative to what the machine saturates at.
    #[arg(long, value_delimiter = ',')]
    paced: Vec<f64>,
}

/// Entry point for `waxwing-bench muc …`.
pub fn main() {
    let args = MucArgs::parse_from(std::env::args().skip(1));
    frame::FAST.store(!args.parse_every_delivery, Relaxed);
    let rt = xmpp::runtime();
    let report: SharedReport = Arc::default();
    let max = Duration::from_secs(args.max_time);
    let outcome = rt.block_on(async { tokio::time::timeout(max, run(args, report.clone())).await });
    let code = match outcome {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("waxwing-bench muc: {e}");
            rep(&report).str("error", &e);
            1
        }
        Err(_) => {
            eprintln!("waxwing-bench muc: --max-time reached, stopping");
            rep(&report).str("error", "max-time reached");
            2
        }
    };
    {
        let mut r = rep(&report);
        let removed = REMOVED.load(Relaxed);
        r.num("occupants_removed_by_server", removed);
        r.num("fast_framing", u64::from(frame::FAST.load(Relaxed)));
        // Streams that met markup the framer leaves to the parser (a
        // server sending comments or CDATA): fine, only slower.
        r.num("fast_framing_ended", FAST_FRAMING_ENDED.load(Relaxed));
        if removed > 0 {
            r.line(format!(
                "NOTE: the service removed {removed} occupant(s) on its own (333/307/332)"
            ));
        }
        println!("{}", r.json());
    }
    std::process::exit(code);
}

/// Microseconds since the tool started: the clock of message stamps.
fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// What a session's reader hands to whoever drives the session.
#[derive(Debug)]
enum Ctl {
    /// Our own presence from a room (status 110).
    SelfPresence { room: String, unavailable: bool },
    /// A presence error from a room (join refused).
    PresenceError { room: String, condition: String },
    /// An IQ answer: id, and whether it was a result.
    Iq { id: String, ok: bool },
}

/// The group chat run in progress, shared by every reader and sender.
struct Chat {
    /// Stamped into bodies; messages of another run are stale.
    run: AtomicU64,
    delivered: AtomicU64,
    stale: AtomicU64,
    bounced: AtomicU64,
    sent: AtomicU64,
    last_delivery_us: AtomicU64,
    hist: LatencyHistogram,
    /// The run's start on the stamp clock, and per 100 ms of scheduled send
    /// time the slowest delivery and the deliveries over `LATE_US`: shows
    /// whether a tail is a few stalls or spread over the run.
    run_start_us: AtomicU64,
    slots: Vec<(AtomicU64, AtomicU64)>,
    /// Paced runs: how late senders wrote (µs after the due time), the
    /// worst and how many over `SEND_LATE_US`. A tail here is the tool's own (its
    /// threads kept off the CPU), not the server's.
    send_late_max: AtomicU64,
    send_late_over: AtomicU64,
    /// Senders stop sending when set.
    stop: AtomicBool,
}

/// One logged-in session.
struct Sess {
    idx: usize,
    wr: Mutex<WriteHalf<xmpp::Conn>>,
    ctl: Mutex<mpsc::UnboundedReceiver<Ctl>>,
    /// Occupant presences (without 110) received so far.
    presences: AtomicU64,
    /// Saturation window: a permit per message that may be in flight;
    /// the reader gives one back when our own message comes back.
    window: Semaphore,
    alive: AtomicBool,
}

impl Sess {
    async fn send(&self, data: &[u8]) -> Result<(), String> {
        let mut w = self.wr.lock().await;
        w.write_all(data).await.map_err(|e| e.to_string())?;
        w.flush().await.map_err(|e| e.to_string())
    }

    /// The next control event satisfying `want`, within `wait`.
    async fn expect<T>(
        &self,
        wait: Duration,
        mut want: impl FnMut(Ctl) -> Option<T>,
    ) -> Result<T, String> {
        let mut rx = self.ctl.lock().await;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(c)) => {
                    if let Some(t) = want(c) {
                        return Ok(t);
                    }
                }
                Ok(None) => return Err(format!("session {} closed", self.idx)),
                Err(_) => return Err(format!("session {}: no answer in {wait:?}", self.idx)),
            }
        }
    }
}

/// Reads one session's stream until it ends: occupant presences counted,
/// control events passed on, group chat deliveries timed. Once the parser
/// stands between two stanzas, the bytes go through a [`Framer`] first: a
/// group chat delivery of this tool is recognised from its bytes, anything
/// else is handed to the parser whole (see frame.rs for why).
async fn reader(
    s: Arc<Sess>,
    mut rd: tokio::io::ReadHalf<xmpp::Conn>,
    mut xs_parser: waxwing::xml::StreamParser,
    tx: mpsc::UnboundedSender<Ctl>,
    chat: Arc<Chat>,
) {
    let mut buf = vec![0u8; 16384];
    let mut framer: Option<Framer> = None;
    loop {
        loop {
            match xs_parser.next_event() {
                Ok(Some(StreamEvent::Stanza(el))) => on_stanza(&s, &el, &tx, &chat),
                Ok(Some(StreamEvent::End)) | Err(_) => {
                    s.alive.store(false, Relaxed);
                    return;
                }
                Ok(Some(StreamEvent::Header(_))) => {}
                Ok(None) => break,
            }
        }
        if framer.is_none() && !xs_parser.mid_element() && frame::FAST.load(Relaxed) {
            framer = Some(Framer::default());
        }
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => {
                s.alive.store(false, Relaxed);
                return;
            }
            Ok(n) => n,
        };
        let Some(f) = &mut framer else {
            xs_parser.feed(&buf[..n]);
            continue;
        };
        f.feed(&buf[..n]);
        let mut unsupported = false;
        while let Some(frame) = f.next() {
            match frame {
                Ok(r) => {
                    let bytes = f.bytes(r);
                    if !fast_delivery(&s, bytes, &chat) {
                        xs_parser.feed(bytes);
                        drain(&mut xs_parser, &s, &tx, &chat);
                        if !s.alive.load(Relaxed) {
                            return;
                        }
                    }
                }
                Err(_) => {
                    xs_parser.feed(f.rest());
                    unsupported = true;
                    break;
                }
            }
        }
        if unsupported {
            // Fast mode is over for this stream; the loop's top drains.
            framer = None;
            FAST_FRAMING_ENDED.fetch_add(1, Relaxed);
        }
    }
}

/// Handles what a complete frame gave the parser (its end tag included).
fn drain(
    xs_parser: &mut waxwing::xml::StreamParser,
    s: &Sess,
    tx: &mpsc::UnboundedSender<Ctl>,
    chat: &Chat,
) {
    loop {
        match xs_parser.next_event() {
            Ok(Some(StreamEvent::Stanza(el))) => on_stanza(s, &el, tx, chat),
            Ok(Some(StreamEvent::End)) | Err(_) => {
                s.alive.store(false, Relaxed);
                return;
            }
            Ok(Some(StreamEvent::Header(_))) => {}
            Ok(None) => return,
        }
    }
}

/// Streams whose fast mode ended on markup the framer leaves to the parser.
static FAST_FRAMING_ENDED: AtomicU64 = AtomicU64::new(0);

/// A group chat delivery of this run, recognised from its bytes: the
/// start tag says `type='groupchat'`, and a plain `<body>` holds the
/// tool's `mb RUN SENDER SEQ TIME PADDING`. False (the caller parses the frame)
/// for anything else or any doubt: an error, a body with attributes or
/// entities, another shape.
fn fast_delivery(s: &Sess, frame: &[u8], chat: &Chat) -> bool {
    let Some(tag) = frame::start_tag(frame, b"message") else {
        return false;
    };
    if frame::attr(tag, b"type") != Some(b"groupchat") {
        return false;
    }
    let Some(open) = frame::BODY_OPEN.find(frame) else {
        return false;
    };
    let text = &frame[open + 6..];
    let Some(close) = frame::BODY_CLOSE.find(text) else {
        return false;
    };
    let Some(fields) = text[..close].strip_prefix(b"mb ") else {
        return false;
    };
    let mut nums = [0u64; 4];
    let mut it = fields.split(|&b| b == b' ');
    for n in &mut nums {
        match it.next().and_then(digits) {
            Some(v) => *n = v,
            None => return false,
        }
    }
    let [run, sender, _seq, ts] = nums;
    record_delivery(s, chat, run, sender, ts);
    true
}

fn digits(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Counts one delivery of the run (or a stale one of an earlier run).
fn record_delivery(s: &Sess, chat: &Chat, run: u64, sender: u64, ts: u64) {
    if run != chat.run.load(Relaxed) {
        chat.stale.fetch_add(1, Relaxed);
        return;
    }
    let now = now_us();
    chat.delivered.fetch_add(1, Relaxed);
    chat.last_delivery_us.fetch_max(now, Relaxed);
    let lat = now.saturating_sub(ts);
    chat.hist.record(lat);
    let slot = ts.saturating_sub(chat.run_start_us.load(Relaxed)) / SLOT_US;
    if let Some((max, over)) = chat.slots.get(slot as usize) {
        raise(max, lat);
        if lat > LATE_US {
            over.fetch_add(1, Relaxed);
        }
    }
    if sender as usize == s.idx {
        s.window.add_permits(1);
    }
}

/// Raises `max` to `v`. A read first: the line is written only by a new
/// maximum, not by every delivery of both reader threads.
fn raise(max: &AtomicU64, v: u64) {
    if v > max.load(Relaxed) {
        max.fetch_max(v, Relaxed);
    }
}

/// The timeline's slots (100 ms each, the first 120 s of a run).
const SLOT_US: u64 = 100_000;
const TIMELINE_SLOTS: usize = 1200;
/// A delivery later than this counts as late in the timeline: issue #13's
/// p99 target for group chat at half the saturation rate.
const LATE_US: u64 = 20_000;
/// A paced sender's write later than this after its due time counts as late.
const SEND_LATE_US: u64 = 10_000;

/// Occupants the service removed from a room on its own (333, 307, 332).
static REMOVED: AtomicU64 = AtomicU64::new(0);

fn room_of(from: &str) -> &str {
    from.split('/').next().unwrap_or(from)
}

fn on_stanza(s: &Sess, el: &Element, tx: &mpsc::UnboundedSender<Ctl>, chat: &Chat) {
    match el.name() {
        "message" => {
            if el.attr("type") == Some("error") {
                chat.bounced.fetch_add(1, Relaxed);
                return;
            }
            if el.attr("type") != Some("groupchat") {
                return;
            }
            let Some(body) = el.get_child("body", "jabber:client") else {
                return;
            };
            let text = body.text();
            let mut f = text.split(' ');
            if f.next() != Some("mb") {
                return;
            }
            let mut num = || f.next().and_then(|v| v.parse::<u64>().ok());
            let (Some(run), Some(sender), Some(_seq), Some(ts)) = (num(), num(), num(), num())
            else {
                return;
            };
            record_delivery(s, chat, run, sender, ts);
        }
        "presence" => {
            let from = el.attr("from").unwrap_or_default();
            if el.attr("type") == Some("error") {
                let condition = el
                    .children()
                    .find(|c| c.name() == "error")
                    .and_then(|e| e.children().next())
                    .map(|c| c.name().to_owned())
                    .unwrap_or_default();
                let _ = tx.send(Ctl::PresenceError {
                    room: room_of(from).to_owned(),
                    condition,
                });
                return;
            }
            let Some(x) = el.get_child("x", NS_MUC_USER) else {
                return;
            };
            let own = x
                .children()
                .any(|c| c.name() == "status" && c.attr("code") == Some("110"));
            if own {
                let unavailable = el.attr("type") == Some("unavailable");
                // Removed by the service (333 slow or gone, 307 kicked…),
                // not a leave we asked for: counted, the run says how many.
                if unavailable
                    && x.children().any(|c| {
                        c.name() == "status"
                            && matches!(c.attr("code"), Some("333" | "307" | "332"))
                    })
                {
                    REMOVED.fetch_add(1, Relaxed);
                }
                let _ = tx.send(Ctl::SelfPresence {
                    room: room_of(from).to_owned(),
                    unavailable: el.attr("type") == Some("unavailable"),
                });
            } else {
                s.presences.fetch_add(1, Relaxed);
            }
        }
        "iq" => {
            if let Some(id) = el.attr("id") {
                let _ = tx.send(Ctl::Iq {
                    id: id.to_owned(),
                    ok: el.attr("type") == Some("result"),
                });
            }
        }
        _ => {}
    }
}

/// Everything the phases share.
struct Bench {
    args: MucArgs,
    muc: String,
    sessions: Vec<Arc<Sess>>,
    chat: Arc<Chat>,
    report: SharedReport,
    tck: u64,
    /// Tells rooms of this run apart from any left by an earlier one.
    tag: String,
    /// When `--max-time` runs out.
    end: Instant,
}

impl Bench {
    fn room(&self, name: &str) -> String {
        format!("{name}{}@{}", self.tag, self.muc)
    }

    /// Joins session `i` to `room` (nick n{i}) and waits for its
    /// self-presence; the room's creator configures it as an instant room.
    async fn join(&self, i: usize, room: &str) -> Result<Duration, String> {
        let s = &self.sessions[i];
        let t0 = Instant::now();
        s.send(
            format!(
                "<presence to='{room}/n{i}'><x xmlns='{NS_MUC}'><history maxstanzas='0'/></x></presence>"
            )
            .as_bytes(),
        )
        .await?;
        let wait = Duration::from_secs(60);
        let r = room.to_owned();
        s.expect(wait, |c| match c {
            Ctl::SelfPresence { room, unavailable } if room == r => Some(if unavailable {
                Err("removed while joining".to_owned())
            } else {
                Ok(())
            }),
            Ctl::PresenceError { room, condition } if room == r => {
                Some(Err(format!("join refused: {condition}")))
            }
            _ => None,
        })
        .await??;
        Ok(t0.elapsed())
    }

    /// Leaves `room` and waits for the unavailable self-presence.
    async fn leave(&self, i: usize, room: &str) -> Result<(), String> {
        let s = &self.sessions[i];
        s.send(format!("<presence type='unavailable' to='{room}/n{i}'/>").as_bytes())
            .await?;
        let r = room.to_owned();
        s.expect(Duration::from_secs(60), |c| match c {
            Ctl::SelfPresence { room, unavailable } if room == r && unavailable => Some(()),
            _ => None,
        })
        .await
    }

    /// Creates `room` with session `owner` and configures it (instant room:
    /// the server's defaults, which the peers' set-up makes suitable).
    async fn create(&self, owner: usize, room: &str) -> Result<(), String> {
        self.join(owner, room).await?;
        let s = &self.sessions[owner];
        let id = format!("cfg{owner}");
        s.send(
            format!(
                "<iq type='set' id='{id}' to='{room}'><query xmlns='{NS_MUC_OWNER}'>\
                 <x xmlns='jabber:x:data' type='submit'/></query></iq>"
            )
            .as_bytes(),
        )
        .await?;
        s.expect(Duration::from_secs(30), |c| match c {
            Ctl::Iq { id: got, ok } if got == id => Some(if ok {
                Ok(())
            } else {
                Err(format!("{room}: configuration refused"))
            }),
            _ => None,
        })
        .await?
    }

    /// Fills `room` with sessions `members` (the first creates it), at most
    /// `--join-concurrency` joins at once, until `deadline`. Returns how
    /// many are in.
    async fn fill(&self, room: &str, members: &[usize], deadline: Instant) -> usize {
        let Some((&first, rest)) = members.split_first() else {
            return 0;
        };
        if let Err(e) = self.create(first, room).await {
            rep(&self.report).line(format!("{room}: could not create it: {e}"));
            return 0;
        }
        let joined = AtomicU64::new(1);
        let failed = AtomicU64::new(0);
        let example = std::sync::Mutex::new(String::new());
        let sem = Semaphore::new(self.args.join_concurrency.max(1));
        let joins = rest.iter().map(|&i| {
            let (sem, joined, failed, example) = (&sem, &joined, &failed, &example);
            async move {
                let Ok(_p) = sem.acquire().await else { return };
                if Instant::now() >= deadline {
                    return;
                }
                match self.join(i, room).await {
                    Ok(_) => {
                        joined.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        failed.fetch_add(1, Relaxed);
                        let mut ex = example.lock().unwrap_or_else(|e| e.into_inner());
                        if ex.is_empty() {
                            *ex = e;
                        }
                    }
                }
            }
        });
        // Joins still in flight at the deadline get a little longer, not
        // the 60 s each may wait: a server far behind is measured as it is.
        let _ = tokio::time::timeout_at(
            (deadline + Duration::from_secs(10)).into(),
            futures_join_all(joins),
        )
        .await;
        let (n, f) = (joined.load(Relaxed) as usize, failed.load(Relaxed));
        if f > 0 || n < members.len() {
            let ex = example.into_inner().unwrap_or_else(|e| e.into_inner());
            rep(&self.report).line(format!(
                "{room}: {n} of {} joined, {f} refused{}",
                members.len(),
                if ex.is_empty() {
                    " (the rest not tried: set-up time ran out)".to_owned()
                } else {
                    format!(" (e.g. {ex})")
                }
            ));
        }
        n
    }

    /// The server's CPU time, in clock ticks (every node's).
    fn cpu(&self) -> Option<u64> {
        over_nodes(&self.args, |p| stats::cpu_ticks(Some(p)))
    }

    /// Run-queue wait of the server's threads (every node's), in ns.
    fn run_delay(&self) -> Option<u64> {
        over_nodes(&self.args, |p| stats::run_delay_ns(Some(p)))
    }

    fn rss(&self) -> Option<u64> {
        nodes_rss(&self.args)
    }
}

/// The server's RSS, summed over every node of a cluster.
fn nodes_rss(args: &MucArgs) -> Option<u64> {
    over_nodes(args, stats::rss_kib)
}

/// A reading of the server summed over every node of a cluster: None
/// without the first node's; a node that cannot be read counts nothing.
fn over_nodes(args: &MucArgs, read: impl Fn(u32) -> Option<u64>) -> Option<u64> {
    let first = read(args.server_pid?)?;
    Some(first + args.also_pids.iter().filter_map(|p| read(*p)).sum::<u64>())
}

/// Runs futures concurrently on this task (the joins only wait on I/O).
async fn futures_join_all<F: std::future::Future<Output = ()>>(futs: impl Iterator<Item = F>) {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futs.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

async fn run(args: MucArgs, report: SharedReport) -> Result<(), String> {
    let addr = xmpp::loopback_addr(&args.host, args.port)?;
    let muc = args
        .muc_domain
        .clone()
        .unwrap_or_else(|| format!("conference.{}", args.domain));
    let mut addrs = vec![addr];
    for host in &args.also_hosts {
        addrs.push(xmpp::loopback_addr(host, args.port)?);
    }
    let scram_cache = Arc::new(SaltedPasswordCache::new());
    let mut targets = Vec::with_capacity(addrs.len());
    for addr in &addrs {
        targets.push(Arc::new(Target::scram(
            *addr,
            &args.domain,
            &args.password,
            scram_cache.clone(),
        )?));
    }
    let n = (args.join_size + 1)
        .max(args.rooms * args.room_size)
        .max(if args.big_size > 0 {
            args.big_size + 1
        } else {
            0
        });
    if let Some(limit) = stats::nofile_limit() {
        if (limit as usize) < n + 64 {
            return Err(format!(
                "open-file limit {limit} is below {n} sessions (+64): raise it with ulimit -n"
            ));
        }
    }
    {
        let mut r = rep(&report);
        r.str("label", &args.label);
        r.str("target", &addr.to_string());
        r.str("domain", &args.domain);
        r.str("muc_domain", &muc);
        r.num("sessions", n);
        r.line(format!(
            "waxwing-bench muc → {addr} domain {} service {muc}: {n} sessions over {} accounts",
            args.domain, args.accounts
        ));
    }
    let started = Instant::now();
    let rss0 = nodes_rss(&args);
    let chat = Arc::new(Chat {
        run: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        stale: AtomicU64::new(0),
        bounced: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        last_delivery_us: AtomicU64::new(0),
        hist: LatencyHistogram::new(),
        run_start_us: AtomicU64::new(0),
        slots: (0..TIMELINE_SLOTS).map(|_| Default::default()).collect(),
        send_late_max: AtomicU64::new(0),
        send_late_over: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });

    // ---- logins ----
    let t0 = Instant::now();
    let sem = Arc::new(Semaphore::new(args.login_concurrency.max(1)));
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let (sem, target) = (sem.clone(), targets[i % targets.len()].clone());
        let user = format!("{}{}", args.prefix, i % args.accounts.max(1));
        let resource = format!("r{}", i / args.accounts.max(1));
        handles.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await;
            tokio::time::timeout(
                Duration::from_secs(120),
                xmpp::login_bound(&target, &user, &resource, false),
            )
            .await
        }));
    }
    let mut sessions = Vec::with_capacity(n);
    for (i, h) in handles.into_iter().enumerate() {
        let session = match h.await {
            Ok(Ok(Ok(s))) => s,
            Ok(Ok(Err(f))) => return Err(format!("login {i}: {}: {}", f.step.name(), f.detail)),
            Ok(Err(_)) => return Err(format!("login {i}: took over 120 s")),
            Err(e) => return Err(format!("login {i}: {e}")),
        };
        let xmpp::XmlStream { io, parser, .. } = session.stream;
        let (rd, wr) = tokio::io::split(io);
        let (tx, rx) = mpsc::unbounded_channel();
        let s = Arc::new(Sess {
            idx: i,
            wr: Mutex::new(wr),
            ctl: Mutex::new(rx),
            presences: AtomicU64::new(0),
            window: Semaphore::new(0),
            alive: AtomicBool::new(true),
        });
        tokio::spawn(reader(s.clone(), rd, parser, tx, chat.clone()));
        sessions.push(s);
    }
    let login_s = t0.elapsed().as_secs_f64();
    let rss_logged_in = nodes_rss(&args);
    {
        let mut r = rep(&report);
        r.float("login_s", login_s);
        r.line(format!(
            "logins: {n} sessions in {login_s:.1} s ({:.0}/s)",
            n as f64 / login_s
        ));
        if let (Some(a), Some(b)) = (rss0, rss_logged_in) {
            r.num("rss_logged_in_kib", b);
            r.line(format!(
                "server RSS {:.1} MiB before, {:.1} MiB with the sessions",
                a as f64 / 1024.0,
                b as f64 / 1024.0
            ));
        }
    }
    let b = Bench {
        end: started + Duration::from_secs(args.max_time),
        tag: format!("x{}", std::process::id()),
        args: args.clone(),
        muc,
        sessions,
        chat,
        report: report.clone(),
        tck: stats::clk_tck(),
    };
    let phase = Duration::from_secs(args.phase_time);

    // ---- 1. join time into a room of join_size ----
    if args.join_size > 0 {
        let room = b.room("join");
        let members: Vec<usize> = (0..args.join_size).collect();
        let filled = b.fill(&room, &members, Instant::now() + phase).await;
        let j = measure_joins(&b, &room, args.join_size, filled, args.join_repeat).await;
        rep(&report).raw("join", j);
    }

    // ---- 2–3. rooms × room_size: saturation, then half of it paced ----
    if args.rooms > 0 && args.room_size > 0 {
        let deadline = Instant::now() + phase;
        let mut rooms = Vec::new();
        for k in 0..args.rooms {
            let room = b.room(&format!("fan{k}"));
            let members: Vec<usize> = (k * args.room_size..(k + 1) * args.room_size).collect();
            let filled = b.fill(&room, &members, deadline).await;
            rooms.push((room, members, filled));
        }
        let plan: Vec<(String, Vec<usize>, usize)> = rooms
            .iter()
            .map(|(r, m, f)| (r.clone(), m[..(*f).min(args.senders)].to_vec(), *f))
            .collect();
        let sat = chat_run(&b, &plan, None, "saturation").await;
        let half = sat.0 / 2.0;
        rep(&report).raw("saturation", sat.1);
        if half > 0.0 {
            let paced = chat_run(&b, &plan, Some(half), "half_saturation").await;
            rep(&report).raw("half_saturation", paced.1);
        }
        for &rate in &args.paced {
            let label = format!("paced_{rate:.0}");
            let paced = chat_run(&b, &plan, Some(rate), &label).await;
            rep(&report).raw(&label, paced.1);
        }
    }

    // ---- 4. the big room ----
    if args.big_size > 0 {
        let room = b.room("big");
        let members: Vec<usize> = (0..args.big_size).collect();
        let rss_before = b.rss();
        let t = Instant::now();
        // Whatever --max-time leaves after the fill is kept for measuring
        // the room as far as it got (joins, a saturated run: about a minute).
        let reserve = b.end.checked_sub(Duration::from_secs(70)).unwrap_or(t);
        let deadline = (t + phase).min(reserve).max(t);
        let filled = b.fill(&room, &members, deadline).await;
        let fill_s = t.elapsed().as_secs_f64();
        // Let the last broadcasts drain before reading the RSS.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let last = b.sessions[filled.saturating_sub(1)].presences.load(Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                if b.sessions[filled.saturating_sub(1)].presences.load(Relaxed) == last {
                    break;
                }
            }
        })
        .await;
        let rss_after = b.rss();
        let mut j = Report::default();
        j.num("wanted", args.big_size);
        j.num("occupants", filled);
        j.float("fill_s", fill_s);
        {
            let mut r = rep(&report);
            r.line(format!(
                "big room: {filled} of {} occupants in {fill_s:.1} s",
                args.big_size
            ));
            if let (Some(a), Some(c)) = (rss_before, rss_after) {
                let per = (c as f64 - a as f64) * 1024.0 / filled.max(1) as f64;
                j.num("rss_before_kib", a);
                j.num("rss_after_kib", c);
                j.float("rss_bytes_per_occupant", per);
                r.line(format!(
                    "  server RSS {:.1} → {:.1} MiB: {per:.0} bytes per occupant",
                    a as f64 / 1024.0,
                    c as f64 / 1024.0
                ));
            }
        }
        // Each part goes into the report as soon as it is measured, so a
        // run cut by --max-time still has what it got.
        rep(&report).raw("big", j.json());
        let joins = measure_joins(&b, &room, args.big_size, filled, args.big_join_repeat).await;
        rep(&report).raw("big_join", joins);
        let plan = vec![(
            room.clone(),
            (0..filled.min(args.senders)).collect(),
            filled,
        )];
        let sat = chat_run(&b, &plan, None, "big_saturation").await;
        rep(&report).raw("big_saturation", sat.1);
    }
    Ok(())
}

/// Phase 1 (and the big room's join): session `joiner` (never one of the
/// room's members) joins `repeat` times and leaves after each.
async fn measure_joins(
    b: &Bench,
    room: &str,
    joiner: usize,
    filled: usize,
    repeat: usize,
) -> String {
    let mut j = Report::default();
    j.num("room_size", filled);
    let mut times = Vec::new();
    let mut short = 0;
    let mut error = String::new();
    for _ in 0..repeat {
        let s = &b.sessions[joiner];
        let p0 = s.presences.load(Relaxed);
        match b.join(joiner, room).await {
            Ok(d) => {
                let got = s.presences.load(Relaxed) - p0;
                if (got as usize) < filled {
                    short += 1;
                }
                times.push(d.as_micros() as u64);
            }
            Err(e) => {
                error = e;
                break;
            }
        }
        if let Err(e) = b.leave(joiner, room).await {
            error = e;
            break;
        }
    }
    times.sort_unstable();
    let (p50, p99, max) = (
        pct_ms(&times, 0.5),
        pct_ms(&times, 0.99),
        pct_ms(&times, 1.0),
    );
    j.num("joins", times.len());
    j.num("joins_missing_presences", short);
    j.float("p50_ms", p50);
    j.float("p99_ms", p99);
    j.float("max_ms", max);
    if !error.is_empty() {
        j.str("error", &error);
    }
    rep(&b.report).line(format!(
        "join into {room} ({filled} occupants): {} joins, p50 {p50:.1} ms, p99 {p99:.1} ms, \
         max {max:.1} ms (presence → self-presence with every occupant's presence before it){}{}",
        times.len(),
        if short > 0 {
            format!("; {short} joins got fewer presences than occupants")
        } else {
            String::new()
        },
        if error.is_empty() {
            String::new()
        } else {
            format!("; stopped: {error}")
        }
    ));
    j.json()
}

/// One group chat run over `plan` (room, its senders, its occupants):
/// closed loop with `--window` per sender when `rate` is None, else paced
/// at `rate` deliveries/s in all. Returns (deliveries/s, JSON).
async fn chat_run(
    b: &Bench,
    plan: &[(String, Vec<usize>, usize)],
    rate: Option<f64>,
    name: &str,
) -> (f64, String) {
    let a = &b.args;
    let chat = &b.chat;
    let run = chat.run.load(Relaxed) + 1;
    chat.run.store(run, Relaxed);
    for c in [
        &chat.delivered,
        &chat.stale,
        &chat.bounced,
        &chat.sent,
        &chat.last_delivery_us,
    ] {
        c.store(0, Relaxed);
    }
    chat.hist.reset();
    chat.send_late_max.store(0, Relaxed);
    chat.send_late_over.store(0, Relaxed);
    for (max, over) in &chat.slots {
        max.store(0, Relaxed);
        over.store(0, Relaxed);
    }
    chat.stop.store(false, Relaxed);
    let senders: usize = plan.iter().map(|p| p.1.len()).sum();
    // Messages per second for each sender, so that deliveries add up to `rate`.
    let occupants_per_msg =
        plan.iter().map(|p| p.1.len() * p.2).sum::<usize>() as f64 / senders.max(1) as f64;
    let per_sender = rate.map(|r| r / occupants_per_msg.max(1.0) / senders.max(1) as f64);
    let pad = "x".repeat(a.body.saturating_sub(40));
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs(a.duration);
    let start_us = now_us() + 100_000;
    chat.run_start_us.store(start_us, Relaxed);
    let mut tasks = Vec::new();
    // Paced senders take turns (sender n's first message is due n/(senders
    // × rate) after the start): an open-loop load at a steady rate, as
    // the one-to-one chat run paces its directions. All on the same
    // schedule, every sender's message came due at the same instant, and
    // the server met its fan-out in bursts of senders × occupants
    // deliveries (2,500 at once every 5.4 ms at the default half rate).
    let mut nth = 0usize;
    for (room, list, _) in plan {
        for &i in list {
            let turn = nth as f64 / senders.max(1) as f64;
            nth += 1;
            let s = b.sessions[i].clone();
            let chat = chat.clone();
            let (room, pad) = (room.clone(), pad.clone());
            let window = a.window;
            tasks.push(tokio::spawn(async move {
                // A fresh window: permits of an earlier run are dropped.
                while s.window.try_acquire().map(|p| p.forget()).is_ok() {}
                s.window.add_permits(window);
                tokio::time::sleep_until(start.into()).await;
                let mut seq = 0u64;
                loop {
                    let ts = match per_sender {
                        Some(r) => {
                            let at = (turn + seq as f64) / r;
                            let due = start + Duration::from_secs_f64(at);
                            if due >= end {
                                break;
                            }
                            tokio::time::sleep_until(due.into()).await;
                            // Its due time, not when it was written: a
                            // sender that falls behind does not hide it.
                            let ts = start_us + (at * 1e6) as u64;
                            let late = now_us().saturating_sub(ts);
                            raise(&chat.send_late_max, late);
                            if late > SEND_LATE_US {
                                chat.send_late_over.fetch_add(1, Relaxed);
                            }
                            ts
                        }
                        None => {
                            let Ok(p) = s.window.acquire().await else { break };
                            p.forget();
                            if Instant::now() >= end {
                                break;
                            }
                            now_us()
                        }
                    };
                    if chat.stop.load(Relaxed) {
                        break;
                    }
                    let m = format!(
                        "<message to='{room}' type='groupchat'><body>mb {run} {} {seq} {ts} {pad}</body></message>",
                        s.idx
                    );
                    if s.send(m.as_bytes()).await.is_err() {
                        break;
                    }
                    chat.sent.fetch_add(1, Relaxed);
                    seq += 1;
                }
            }));
        }
    }
    tokio::time::sleep_until(start.into()).await;
    let w0 = Instant::now();
    let c0 = b.cpu();
    let s0 = stats::cpu_ticks(None);
    let m0 = stats::machine_busy_ticks();
    let q0 = (b.run_delay(), stats::run_delay_ns(None));
    tokio::time::sleep_until(end.into()).await;
    // Stragglers: until every sent message reached every occupant, at most 5 s.
    let expected = |sent: u64| -> u64 {
        // Each sender's messages reach its room's occupants.
        let per: f64 = occupants_per_msg;
        (sent as f64 * per).round() as u64
    };
    let grace = Instant::now() + Duration::from_secs(5);
    while Instant::now() < grace && chat.delivered.load(Relaxed) < expected(chat.sent.load(Relaxed))
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    chat.stop.store(true, Relaxed);
    let wall = w0.elapsed().as_secs_f64();
    let c1 = b.cpu();
    let s1 = stats::cpu_ticks(None);
    let m1 = stats::machine_busy_ticks();
    let q1 = (b.run_delay(), stats::run_delay_ns(None));
    for t in &tasks {
        t.abort();
    }
    let sent = chat.sent.load(Relaxed);
    let delivered = chat.delivered.load(Relaxed);
    let recv_s =
        (chat.last_delivery_us.load(Relaxed).saturating_sub(start_us) as f64 / 1e6).max(1e-3);
    let per_s = delivered as f64 / recv_s;
    let h = &chat.hist;
    let q = |x: f64| h.quantile(x) as f64 / 1000.0;
    let mut j = Report::default();
    j.str("mode", if rate.is_some() { "paced" } else { "saturate" });
    j.num("rooms", plan.len());
    j.num("senders", senders);
    j.float("occupants_per_message", occupants_per_msg);
    if let Some(r) = rate {
        j.float("rate_target", r);
    } else {
        j.num("window", a.window);
    }
    j.num("sent", sent);
    j.num("delivered", delivered);
    j.num("expected", expected(sent));
    j.num("stale", chat.stale.load(Relaxed));
    j.num("bounced", chat.bounced.load(Relaxed));
    j.float("deliveries_per_s", per_s);
    j.float("lat_p50_ms", q(0.5));
    j.float("lat_p99_ms", q(0.99));
    j.float("lat_max_ms", h.max() as f64 / 1000.0);
    let mut lines = vec![format!(
        "{name} ({}, {} room(s), {senders} senders, {:.0} occupants per message, {} s): \
         sent {sent}, delivered {delivered} of {} ({per_s:.0} deliveries/s), \
         latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{}",
        match rate {
            Some(r) => format!("paced at {r:.0} deliveries/s"),
            None => format!("closed loop, window {}", a.window),
        },
        plan.len(),
        occupants_per_msg,
        a.duration,
        expected(sent),
        q(0.5),
        q(0.99),
        h.max() as f64 / 1000.0,
        if rate.is_some() {
            " (from the scheduled send time)"
        } else {
            ""
        }
    )];
    if let (Some(x), Some(y)) = (c0, c1) {
        let us = (y - x) as f64 * 1e6 / b.tck as f64;
        let per = us / delivered.max(1) as f64;
        j.float("server_cpu_us_per_delivery", per);
        j.float("server_cpu_util", us / 1e6 / wall);
        lines.push(format!(
            "  server CPU {:.2} s ({:.0}% of a core) = {per:.2} µs per delivery",
            us / 1e6,
            us / 1e6 / wall * 100.0
        ));
    }
    if let (Some(x), Some(y), Some(sx), Some(sy)) = (m0, m1, s0, s1) {
        let server = match (c0, c1) {
            (Some(p), Some(q)) => q - p,
            _ => 0,
        };
        let tool = (sy - sx) as f64 / b.tck as f64 / wall;
        let other = (y - x).saturating_sub(server + (sy - sx)) as f64 / b.tck as f64 / wall;
        j.float("bench_cpu_util", tool);
        j.float("other_cpu_util", other);
        lines.push(format!(
            "  bench tool {:.0}% of a core; other processes {:.0}% of a core{}",
            tool * 100.0,
            other * 100.0,
            if other > 0.05 {
                " — WARNING: the machine was shared"
            } else {
                ""
            }
        ));
    }
    if let ((Some(sx), Some(tx)), (Some(sy), Some(ty))) = (q0, q1) {
        let share = |x: u64, y: u64| y.saturating_sub(x) as f64 / 1e9 / wall;
        let (server, tool) = (share(sx, sy), share(tx, ty));
        j.float("server_cpu_wait", server);
        j.float("bench_cpu_wait", tool);
        lines.push(format!(
            "  waiting for a CPU (runnable, not running): server {:.0}%, bench tool {:.0}% of a core",
            server * 100.0,
            tool * 100.0
        ));
    }
    // The five slowest 100 ms slots: when (s into the run), the slowest
    // delivery (ms) and how many went over LATE_US.
    let mut worst: Vec<(u64, usize, u64)> = chat
        .slots
        .iter()
        .enumerate()
        .map(|(i, (m, o))| (m.load(Relaxed), i, o.load(Relaxed)))
        .filter(|w| w.0 > 0)
        .collect();
    worst.sort_unstable_by(|x, y| y.cmp(x));
    let over: u64 = chat.slots.iter().map(|s| s.1.load(Relaxed)).sum();
    lines.push(format!(
        "  over {late} ms: {over}; slowest 100 ms slots (s: max ms, over {late} ms): {}",
        worst
            .iter()
            .take(5)
            .map(|(m, i, o)| format!("{:.1}: {:.1}, {o}", *i as f64 / 10.0, *m as f64 / 1000.0))
            .collect::<Vec<_>>()
            .join("; "),
        late = LATE_US / 1000,
    ));
    j.num("over_20ms", over);
    if rate.is_some() {
        let (late, n) = (
            chat.send_late_max.load(Relaxed),
            chat.send_late_over.load(Relaxed),
        );
        lines.push(format!(
            "  senders: latest write {:.1} ms after its due time; {n} writes over {} ms late",
            late as f64 / 1000.0,
            SEND_LATE_US / 1000
        ));
        j.float("send_late_max_ms", late as f64 / 1000.0);
        j.num("sends_late_over_10ms", n);
    }
    let mut r = rep(&b.report);
    for l in lines {
        r.line(l);
    }
    (per_s, j.json())
}
