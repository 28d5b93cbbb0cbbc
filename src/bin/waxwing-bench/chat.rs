//! One task per logged-in session: it keeps reading its stream in every phase
//! (a client that stops reading would push back on the server and skew the
//! figures), and in the chat phase it also sends to its partner, either paced
//! open-loop or with a bounded window.
//!
//! With stream management the reader counts the stanzas it receives and
//! answers the server's `<r/>` through a small acker beside it, which shares
//! the write half with the sender; with carbons it counts the copies apart
//! from the chat's deliveries. A resumption round drops the connection of
//! chosen sessions and takes each back with `<resume/>` on a new one.

use std::io::Write as _;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use waxwing::xml::{escape_attr, Element, StreamEvent, StreamParser};

use crate::frame::{self, Framer};
use crate::stats::LatencyHistogram;
use crate::xmpp::{self, is_stanza, Failure, Session, SmSession, Step, Target, XmlStream};

type Tls = xmpp::Conn;
/// The write half, shared by the sender and the acker of one session.
type Writer = tokio::sync::Mutex<WriteHalf<Tls>>;

/// What the coordinator asks of every session.
#[derive(Clone)]
pub enum Cmd {
    /// Stay connected, read and drop whatever arrives.
    Hold,
    /// Run the chat plan (sessions without a role in it hold).
    Chat(Arc<ChatPlan>),
    /// Drop and resume the sessions the plan names (the others hold).
    Resume(Arc<ResumePlan>),
    /// Close the stream and end.
    Close,
}

/// Totals over all sessions.
#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    /// Distinct messages of this run delivered (each id counted once).
    pub delivered: AtomicU64,
    /// Distinct messages of this run that came back as errors.
    pub bounced: AtomicU64,
    /// A message id of this run seen again after its delivery or bounce.
    pub duplicates: AtomicU64,
    /// Chat messages of an earlier run (stragglers) or with an id never sent.
    pub stale: AtomicU64,
    /// Paced mode: messages written more than `LATE` after their due time.
    pub late_sends: AtomicU64,
    pub max_lateness_us: AtomicU64,
    /// When the last distinct delivery arrived, µs after the plan's start.
    pub last_delivery_us: AtomicU64,
    pub disconnected: AtomicU64,
    pub closed_clean: AtomicU64,
    /// Senders still writing in the current chat run.
    pub senders_active: AtomicU64,
    /// Stream management: `<a/>` written, `<r/>` received from the server,
    /// `<a/>` received (answers to our `<r/>` at close), and how many of
    /// those matched our count of stanzas sent.
    pub sm_acks_sent: AtomicU64,
    pub sm_requests: AtomicU64,
    pub sm_acks_received: AtomicU64,
    pub sm_h_match: AtomicU64,
    pub sm_h_mismatch: AtomicU64,
    /// Carbon copies (XEP-0280) received: of messages to the account's
    /// other resources, and of messages its other resources sent.
    pub carbons_received: AtomicU64,
    pub carbons_sent: AtomicU64,
}

impl Counters {
    pub fn reset_chat(&self) {
        for c in [
            &self.sent,
            &self.delivered,
            &self.bounced,
            &self.duplicates,
            &self.stale,
            &self.late_sends,
            &self.max_lateness_us,
            &self.last_delivery_us,
        ] {
            c.store(0, Relaxed);
        }
    }
}

/// A paced message written later than this after its due time counts as
/// late: the sender fell behind its schedule.
pub const LATE: Duration = Duration::from_millis(10);

/// One direction of a pair (sender → receiver).
pub struct Direction {
    /// Messages of this direction delivered or bounced: each frees a slot of
    /// the window (saturate mode).
    received: AtomicU64,
    /// Messages written on this direction; ids at or above it were never sent.
    sent: AtomicU64,
    /// One bit per message id: delivered or bounced already. Only the
    /// receiving task (deliveries) and the sending session's reader (bounces)
    /// touch it, so the lock is not contended.
    seen: Mutex<Vec<u64>>,
    /// Wakes the sender when its window opens (saturate mode).
    notify: Notify,
}

impl Direction {
    /// Records that message `seq` arrived; false when it had already (a
    /// duplicate) or was never sent.
    fn first_arrival(&self, seq: u64) -> Option<bool> {
        if seq >= self.sent.load(Acquire) {
            return None;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if seen.len() <= word {
            seen.resize(word + 1, 0);
        }
        let fresh = seen[word] & (1 << bit) == 0;
        seen[word] |= 1 << bit;
        Some(fresh)
    }
}

/// Distinguishes the runs of one tool invocation, so a straggler of an
/// earlier run is not counted as a delivery of this one.
static RUN: AtomicU64 = AtomicU64::new(0);

/// A session's part in the chat.
pub struct Role {
    /// The partner's full JID, escaped for an attribute value.
    peer_jid: String,
    out_dir: usize,
    in_dir: usize,
}

pub struct ChatPlan {
    pub start: Instant,
    pub send_end: Instant,
    /// 0 = saturate.
    rate: u64,
    window: u64,
    /// Stanzas per write (1 = what real clients do: a TLS record each).
    per_write: u64,
    run: u64,
    dirs: Vec<Direction>,
    roles: Vec<Option<Role>>,
    body: String,
}

impl ChatPlan {
    /// Pairs up consecutive logged-in sessions whose accounts differ.
    // One call site, each argument a command-line option: a struct for them
    // would only rename the options.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        jids: &[Option<String>],
        accounts: usize,
        pairs: usize,
        rate: u64,
        window: u64,
        per_write: u64,
        duration: Duration,
        body: usize,
    ) -> ChatPlan {
        let mut roles: Vec<Option<Role>> = (0..jids.len()).map(|_| None).collect();
        let up: Vec<usize> = (0..jids.len()).filter(|&i| jids[i].is_some()).collect();
        let mut made = 0;
        let mut i = 0;
        while made < pairs && i + 1 < up.len() {
            let (a, b) = (up[i], up[i + 1]);
            if a % accounts == b % accounts {
                i += 1;
                continue;
            }
            let (ja, jb) = match (&jids[a], &jids[b]) {
                (Some(ja), Some(jb)) => (ja.clone(), jb.clone()),
                _ => unreachable!("filtered above"),
            };
            roles[a] = Some(Role {
                peer_jid: attr_escaped(&jb),
                out_dir: 2 * made,
                in_dir: 2 * made + 1,
            });
            roles[b] = Some(Role {
                peer_jid: attr_escaped(&ja),
                out_dir: 2 * made + 1,
                in_dir: 2 * made,
            });
            made += 1;
            i += 2;
        }
        let dirs = (0..2 * made)
            .map(|_| Direction {
                received: AtomicU64::new(0),
                sent: AtomicU64::new(0),
                seen: Mutex::new(Vec::new()),
                notify: Notify::new(),
            })
            .collect();
        // Leave every task time to see the plan before the first send is due.
        let start = Instant::now() + Duration::from_millis(200);
        ChatPlan {
            start,
            send_end: start + duration,
            rate,
            window: window.max(1),
            per_write: per_write.max(1),
            run: RUN.fetch_add(1, Relaxed),
            dirs,
            roles,
            body: "x".repeat(body),
        }
    }

    pub fn directions(&self) -> usize {
        self.dirs.len()
    }

    /// Messages the paced schedule has due before `send_end`.
    pub fn scheduled(&self) -> u64 {
        if self.rate == 0 {
            return 0;
        }
        let secs = (self.send_end - self.start).as_secs_f64();
        (0..self.dirs.len() as u64)
            .map(|d| {
                let first = d as f64 / self.rate as f64;
                let step = self.dirs.len() as f64 / self.rate as f64;
                if first >= secs {
                    0
                } else {
                    ((secs - first) / step).ceil() as u64
                }
            })
            .sum()
    }

    fn micros_since_start(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.start).as_micros() as u64
    }
}

/// Stream management of one session, shared by its reader (which counts
/// and sees `<r/>`) and its acker (which writes `<a/>`). Survives resumption.
pub struct SmLink {
    id: String,
    /// Stanzas received since `<enabled/>`, modulo 2^32.
    h: AtomicU32,
    /// Stanzas written since `<enabled/>`, modulo 2^32.
    sent: AtomicU32,
    /// An `<r/>` came and is not answered yet.
    ack_due: AtomicBool,
    wake: Notify,
}

impl SmLink {
    fn new(s: &SmSession) -> SmLink {
        SmLink {
            id: s.id.clone(),
            h: AtomicU32::new(s.h),
            sent: AtomicU32::new(s.sent),
            ack_due: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }
}

/// The reading half of a session, with its parser.
struct Reader {
    rd: ReadHalf<Tls>,
    parser: StreamParser,
    scratch: Box<[u8]>,
    dead: bool,
    got_end: bool,
    sm: Option<Arc<SmLink>>,
    framer: Option<Framer>,
}

/// One connection of a session: its reader and the shared write half.
struct Conn {
    reader: Reader,
    writer: Writer,
}

impl Conn {
    fn new(stream: XmlStream<Tls>, sm: Option<Arc<SmLink>>) -> Conn {
        let XmlStream {
            io,
            parser,
            scratch,
        } = stream;
        let (rd, wr) = tokio::io::split(io);
        Conn {
            reader: Reader {
                rd,
                parser,
                scratch,
                dead: false,
                got_end: false,
                sm,
                framer: None,
            },
            writer: tokio::sync::Mutex::new(wr),
        }
    }
}

/// What a received stanza means for the chat in progress.
struct ChatIn<'a> {
    plan: &'a ChatPlan,
    in_dir: usize,
    out_dir: usize,
    counters: &'a Counters,
    hist: &'a LatencyHistogram,
}

impl ChatIn<'_> {
    fn on_stanza(&self, el: &Element) {
        if el.name() != "message" {
            return;
        }
        let Some((run, seq, ts)) = el.attr("id").and_then(parse_id) else {
            return;
        };
        self.on_message(run, seq, ts, el.attr("type") == Some("error"));
    }

    /// A message of the chat (by its id `wb<run>.<seq>.<time>`), delivered
    /// or bounced.
    fn on_message(&self, run: u64, seq: u64, ts: u64, bounce: bool) {
        if run != self.plan.run {
            self.counters.stale.fetch_add(1, Relaxed);
            return;
        }
        // A bounce comes back to the sender: it is about our outgoing direction.
        let dir = &self.plan.dirs[if bounce { self.out_dir } else { self.in_dir }];
        match dir.first_arrival(seq) {
            None => {
                self.counters.stale.fetch_add(1, Relaxed);
                return;
            }
            Some(false) => {
                self.counters.duplicates.fetch_add(1, Relaxed);
                return;
            }
            Some(true) => {}
        }
        if bounce {
            self.counters.bounced.fetch_add(1, Relaxed);
        } else {
            let now = self.plan.micros_since_start(Instant::now());
            self.hist.record(now.saturating_sub(ts));
            self.counters.delivered.fetch_add(1, Relaxed);
            self.counters.last_delivery_us.fetch_max(now, Relaxed);
        }
        // Delivered or bounced, the message no longer holds a slot of the window.
        dir.received.fetch_add(1, Release);
        if self.plan.rate == 0 {
            dir.notify.notify_one();
        }
    }
}

impl Reader {
    /// Reads until the coordinator's command changes. Returns false once the
    /// coordinator is gone.
    async fn until_changed(
        &mut self,
        cmd_rx: &mut watch::Receiver<Cmd>,
        chat: Option<ChatIn<'_>>,
        counters: &Counters,
    ) -> bool {
        // What the parser already holds (read along with the end of the
        // login or the <resumed/>) is handled before waiting for more.
        if !self.dead {
            self.drain_events(chat.as_ref(), counters);
        }
        loop {
            if self.dead {
                return cmd_rx.changed().await.is_ok();
            }
            tokio::select! {
                biased;
                r = cmd_rx.changed() => return r.is_ok(),
                r = self.rd.read(&mut self.scratch) => match r {
                    Ok(0) | Err(_) => {
                        self.dead = true;
                        counters.disconnected.fetch_add(1, Relaxed);
                    }
                    Ok(n) => self.take_in(n, chat.as_ref(), counters),
                },
            }
        }
    }

    /// Handles `n` bytes just read into `scratch`. Once the parser stands
    /// between two stanzas, they go through a [`Framer`] first, and during a
    /// chat a plain delivery of it is recognised from its bytes (frame.rs
    /// says why); everything else reaches the parser whole.
    fn take_in(&mut self, n: usize, chat: Option<&ChatIn<'_>>, counters: &Counters) {
        if self.framer.is_none() && frame::FAST.load(Relaxed) && !self.parser.mid_element() {
            self.framer = Some(Framer::default());
        }
        let Some(mut f) = self.framer.take() else {
            self.parser.feed(&self.scratch[..n]);
            self.drain_events(chat, counters);
            return;
        };
        f.feed(&self.scratch[..n]);
        while let Some(frame) = f.next() {
            let Ok(r) = frame else {
                // Markup the framer leaves to the parser: so does the rest.
                self.parser.feed(f.rest());
                self.drain_events(chat, counters);
                return;
            };
            let bytes = f.bytes(r);
            if let (Some(c), Some((run, seq, ts))) = (chat, chat_delivery(bytes)) {
                if let Some(sm) = &self.sm {
                    sm.h.fetch_add(1, Release);
                }
                c.on_message(run, seq, ts, false);
                continue;
            }
            self.parser.feed(bytes);
            self.drain_events(chat, counters);
            if self.dead {
                break;
            }
        }
        self.framer = Some(f);
    }

    /// Gives what the framer holds back to the parser (before reading
    /// with the parser alone).
    fn leave_fast_mode(&mut self) {
        if let Some(f) = self.framer.take() {
            self.parser.feed(f.rest());
        }
    }

    fn drain_events(&mut self, chat: Option<&ChatIn<'_>>, counters: &Counters) {
        loop {
            match self.parser.next_event() {
                Ok(Some(StreamEvent::Stanza(el))) => self.on_element(&el, chat, counters),
                Ok(Some(StreamEvent::End)) => {
                    self.got_end = true;
                    if !self.dead {
                        self.dead = true;
                        counters.disconnected.fetch_add(1, Relaxed);
                    }
                    return;
                }
                Ok(Some(StreamEvent::Header(_))) => {}
                Ok(None) => return,
                Err(_) => {
                    if !self.dead {
                        self.dead = true;
                        counters.disconnected.fetch_add(1, Relaxed);
                    }
                    return;
                }
            }
        }
    }

    /// One top-level element: stream management's bookkeeping, carbon
    /// copies counted apart, the rest to the chat if one is running.
    fn on_element(&self, el: &Element, chat: Option<&ChatIn<'_>>, counters: &Counters) {
        let kind = Incoming::of(el);
        if let Some(sm) = &self.sm {
            if kind.counts_for_sm() {
                sm.h.fetch_add(1, Release);
            }
        }
        match kind {
            Incoming::SmRequest => {
                if let Some(sm) = &self.sm {
                    counters.sm_requests.fetch_add(1, Relaxed);
                    sm.ack_due.store(true, Release);
                    sm.wake.notify_one();
                }
            }
            Incoming::SmAck(h) => {
                if let Some(sm) = &self.sm {
                    counters.sm_acks_received.fetch_add(1, Relaxed);
                    if h == Some(sm.sent.load(Acquire)) {
                        counters.sm_h_match.fetch_add(1, Relaxed);
                    } else {
                        counters.sm_h_mismatch.fetch_add(1, Relaxed);
                    }
                }
            }
            Incoming::CarbonReceived => {
                counters.carbons_received.fetch_add(1, Relaxed);
            }
            Incoming::CarbonSent => {
                counters.carbons_sent.fetch_add(1, Relaxed);
            }
            Incoming::Stanza => {
                if let Some(c) = chat {
                    c.on_stanza(el);
                }
            }
            Incoming::Other => {}
        }
    }

    /// After our `</stream:stream>`: reads until the server's end of stream or EOF.
    async fn until_end(&mut self, counters: &Counters) {
        self.leave_fast_mode();
        self.drain_events(None, counters);
        while !self.got_end {
            match self.rd.read(&mut self.scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    self.parser.feed(&self.scratch[..n]);
                    loop {
                        match self.parser.next_event() {
                            Ok(Some(StreamEvent::End)) => {
                                self.got_end = true;
                                break;
                            }
                            Ok(Some(StreamEvent::Stanza(el))) => {
                                self.on_element(&el, None, counters)
                            }
                            Ok(Some(_)) => {}
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
            }
        }
    }
}

/// What a top-level element received on a session is, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Incoming {
    /// `<r xmlns='urn:xmpp:sm:3'/>`.
    SmRequest,
    /// `<a xmlns='urn:xmpp:sm:3' h='…'/>` (None: no valid h).
    SmAck(Option<u32>),
    /// A carbon copy (XEP-0280) of a message to another resource of the account.
    CarbonReceived,
    /// A carbon copy of a message another resource of the account sent.
    CarbonSent,
    /// Any other message, presence or iq.
    Stanza,
    /// Anything else (other nonzas).
    Other,
}

impl Incoming {
    fn of(el: &Element) -> Incoming {
        if el.ns() == xmpp::NS_SM {
            return match el.name() {
                "r" => Incoming::SmRequest,
                "a" => Incoming::SmAck(el.attr("h").and_then(|h| h.parse().ok())),
                _ => Incoming::Other,
            };
        }
        if !is_stanza(el) {
            return Incoming::Other;
        }
        if el.name() == "message" {
            if el.get_child("received", xmpp::NS_CARBONS).is_some() {
                return Incoming::CarbonReceived;
            }
            if el.get_child("sent", xmpp::NS_CARBONS).is_some() {
                return Incoming::CarbonSent;
            }
        }
        Incoming::Stanza
    }

    /// Whether it counts in XEP-0198's `h` (every message, presence, iq).
    fn counts_for_sm(self) -> bool {
        matches!(
            self,
            Incoming::Stanza | Incoming::CarbonReceived | Incoming::CarbonSent
        )
    }
}

/// Answers the server's `<r/>` while the reader reads: one `<a/>` with the
/// count at the time it is written (acks are cumulative, so requests that
/// pile up meanwhile get one answer). Returns once `done` is set.
async fn ack_loop(sm: &SmLink, wr: &Writer, done: &AtomicBool, counters: &Counters) {
    loop {
        if sm.ack_due.swap(false, AcqRel) {
            let mut w = wr.lock().await;
            let ack = SmSession::ack(sm.h.load(Acquire));
            if !write_out(&mut w, ack.as_bytes()).await {
                return;
            }
            counters.sm_acks_sent.fetch_add(1, Relaxed);
        }
        if done.load(Acquire) {
            return;
        }
        sm.wake.notified().await;
    }
}

fn attr_escaped(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    escape_attr(s, &mut out);
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// `wb<run>.<seq>.<ts>`: the run, the message's number on its direction,
/// and its timestamp (µs after the plan's start).
fn push_message(buf: &mut Vec<u8>, plan: &ChatPlan, to: &str, seq: u64, ts: u64) {
    let _ = write!(
        buf,
        "<message type='chat' to='{to}' id='wb{}.{seq}.{ts}'><body>{}</body></message>",
        plan.run, plan.body
    );
}

/// A message of the chat delivered to us, read from its bytes: not an
/// error, not a carbon copy, its id the tool's. None leaves the frame to the
/// parser.
fn chat_delivery(frame: &[u8]) -> Option<(u64, u64, u64)> {
    let tag = frame::start_tag(frame, b"message")?;
    if frame::attr(tag, b"type") == Some(b"error") || frame::CARBONS_NS.find(frame).is_some() {
        return None;
    }
    parse_id(std::str::from_utf8(frame::attr(tag, b"id")?).ok()?)
}

fn parse_id(id: &str) -> Option<(u64, u64, u64)> {
    let mut parts = id.strip_prefix("wb")?.split('.');
    let mut next = || parts.next()?.parse::<u64>().ok();
    let ids = (next()?, next()?, next()?);
    parts.next().is_none().then_some(ids)
}

/// Writes `buf` (whole stanzas); false when the stream is gone.
async fn write_out(wr: &mut WriteHalf<Tls>, buf: &[u8]) -> bool {
    wr.write_all(buf).await.is_ok() && wr.flush().await.is_ok()
}

/// Open-loop pacing: message k of direction d is due at start + (d + k·D)/rate,
/// D the number of directions, whatever the replies do. Its timestamp is the
/// due time, so a sender that falls behind does not hide the delay
/// (no coordinated omission); late messages are still written (up to
/// `per_write` a write), and counted as late, so the report can say that the
/// sender fell behind its schedule.
async fn send_paced(
    wr: &Writer,
    plan: &ChatPlan,
    role: &Role,
    counters: &Counters,
    sm: Option<&SmLink>,
) {
    let dir = &plan.dirs[role.out_dir];
    let ndirs = plan.dirs.len() as u64;
    let step_ns = ndirs as f64 * 1e9 / plan.rate as f64;
    let offset_ns = role.out_dir as f64 * 1e9 / plan.rate as f64;
    let due = |k: u64| plan.start + Duration::from_nanos((offset_ns + k as f64 * step_ns) as u64);
    let mut buf = Vec::with_capacity(4096);
    let mut k = 0u64;
    loop {
        let next = due(k);
        if next >= plan.send_end {
            return;
        }
        tokio::time::sleep_until(next.into()).await;
        let now = Instant::now();
        buf.clear();
        let mut batch = 0;
        while batch < plan.per_write {
            let d = due(k);
            if d > now || d >= plan.send_end {
                break;
            }
            let late = now.saturating_duration_since(d);
            if late > LATE {
                counters.late_sends.fetch_add(1, Relaxed);
            }
            counters
                .max_lateness_us
                .fetch_max(late.as_micros() as u64, Relaxed);
            push_message(
                &mut buf,
                plan,
                &role.peer_jid,
                k,
                plan.micros_since_start(d),
            );
            k += 1;
            batch += 1;
        }
        // Counted before the write: an answer may arrive before write_out returns.
        dir.sent.fetch_add(batch, Release);
        if !write_out(&mut *wr.lock().await, &buf).await {
            return;
        }
        counters.sent.fetch_add(batch, Relaxed);
        if let Some(sm) = sm {
            sm.sent.fetch_add(batch as u32, Release);
        }
    }
}

/// Saturation: keep `window` messages in flight on this direction until the end.
async fn send_window(
    wr: &Writer,
    plan: &ChatPlan,
    role: &Role,
    counters: &Counters,
    sm: Option<&SmLink>,
) {
    let dir = &plan.dirs[role.out_dir];
    let mut buf = Vec::with_capacity(4096);
    let mut sent = 0u64;
    let end = tokio::time::Instant::from(plan.send_end);
    tokio::time::sleep_until(plan.start.into()).await;
    loop {
        let now = Instant::now();
        if now >= plan.send_end {
            return;
        }
        let in_flight = sent.saturating_sub(dir.received.load(Acquire));
        if in_flight < plan.window {
            buf.clear();
            let ts = plan.micros_since_start(now);
            let n = (plan.window - in_flight).min(plan.per_write);
            for _ in 0..n {
                push_message(&mut buf, plan, &role.peer_jid, sent, ts);
                sent += 1;
            }
            dir.sent.fetch_add(n, Release);
            if !write_out(&mut *wr.lock().await, &buf).await {
                return;
            }
            counters.sent.fetch_add(n, Relaxed);
            if let Some(sm) = sm {
                sm.sent.fetch_add(n as u32, Release);
            }
        } else {
            tokio::select! {
                _ = dir.notify.notified() => {}
                _ = tokio::time::sleep_until(end) => return,
            }
        }
    }
}

/// Counts a sender as active until dropped, so the coordinator waits for the last writes.
struct ActiveSender<'a>(&'a Counters);

impl Drop for ActiveSender<'_> {
    fn drop(&mut self) {
        self.0.senders_active.fetch_sub(1, Relaxed);
    }
}

/// Which session this is, and how to log in again as it.
pub struct Who {
    pub idx: usize,
    pub user: String,
    pub target: Arc<Target>,
}

/// A resumption round: the sessions to drop and resume, at most as many
/// reconnecting at once as the semaphore has permits.
pub struct ResumePlan {
    pub id: u64,
    pub members: Vec<bool>,
    pub sem: Arc<Semaphore>,
    pub done: mpsc::UnboundedSender<ResumeDone>,
}

/// One session's resumption, sent to the coordinator.
pub struct ResumeDone {
    pub idx: usize,
    pub result: Result<ResumeTiming, Failure>,
}

pub struct ResumeTiming {
    /// `<resume/>` written → `<resumed/>` parsed.
    pub resume_us: u64,
    /// TCP connect → `<resumed/>` parsed.
    pub reconnect_us: u64,
    /// Whether `<resumed h/>` equals the stanzas we had sent (None: no h).
    pub h_matched: Option<bool>,
    /// The reconnection's TLS handshake resumed a TLS session.
    pub tls_resumed: bool,
}

/// Drops `conn` without a word (no `</stream:stream>`, no TLS close_notify:
/// the socket is just closed) and takes the session back on a new connection.
/// None when that fails (the session is then gone).
async fn drop_and_resume(
    conn: Conn,
    who: &Who,
    plan: &ResumePlan,
    sm: Option<&Arc<SmLink>>,
) -> Option<Conn> {
    let failed = |detail: &str| ResumeDone {
        idx: who.idx,
        result: Err(Failure {
            step: Step::Resume,
            detail: detail.to_owned(),
        }),
    };
    let Some(sm) = sm else {
        let _ = plan.done.send(failed("stream management was not enabled"));
        return Some(conn);
    };
    if conn.reader.dead {
        let _ = plan
            .done
            .send(failed("the connection was gone before the drop"));
        return None;
    }
    drop(conn);
    let permit = plan.sem.acquire().await;
    let h = sm.h.load(Acquire);
    let res = match tokio::time::timeout(
        Duration::from_secs(60),
        xmpp::resume(&who.target, &who.user, &sm.id, h),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(Failure {
            step: Step::Timeout,
            detail: "resumption took over 60 s".into(),
        }),
    };
    drop(permit);
    match res {
        Ok(r) => {
            let timing = ResumeTiming {
                resume_us: r.resume_us,
                reconnect_us: r.reconnect_us,
                h_matched: r.server_h.map(|s| s == sm.sent.load(Acquire)),
                tls_resumed: r.tls_resumed,
            };
            let _ = plan.done.send(ResumeDone {
                idx: who.idx,
                result: Ok(timing),
            });
            Some(Conn::new(r.stream, Some(sm.clone())))
        }
        Err(f) => {
            let _ = plan.done.send(ResumeDone {
                idx: who.idx,
                result: Err(f),
            });
            None
        }
    }
}

/// Reads (and answers `<r/>`) until the coordinator's command changes,
/// sending meanwhile when `chat` gives this session a role.
async fn run_round(
    conn: &mut Conn,
    cmd_rx: &mut watch::Receiver<Cmd>,
    chat: Option<(&ChatPlan, &Role)>,
    counters: &Counters,
    hist: &LatencyHistogram,
) -> bool {
    let done = AtomicBool::new(false);
    let Conn { reader, writer } = conn;
    let sm = reader.sm.clone();
    let chat_in = chat.map(|(plan, role)| ChatIn {
        plan,
        in_dir: role.in_dir,
        out_dir: role.out_dir,
        counters,
        hist,
    });
    if chat.is_some() {
        counters.senders_active.fetch_add(1, Relaxed);
    }
    let read = async {
        let alive = reader.until_changed(cmd_rx, chat_in, counters).await;
        done.store(true, Release);
        if let Some(sm) = &sm {
            sm.wake.notify_one();
        }
        alive
    };
    let ack = async {
        if let Some(sm) = &sm {
            ack_loop(sm, writer, &done, counters).await;
        }
    };
    let send = async {
        if let Some((plan, role)) = chat {
            let _active = ActiveSender(counters);
            if plan.rate == 0 {
                send_window(writer, plan, role, counters, sm.as_deref()).await
            } else {
                send_paced(writer, plan, role, counters, sm.as_deref()).await
            }
        }
    };
    let (alive, (), ()) = tokio::join!(read, ack, send);
    alive
}

/// The life of one session after login, until the coordinator says Close.
pub async fn session_loop(
    who: Who,
    session: Session,
    mut cmd_rx: watch::Receiver<Cmd>,
    counters: Arc<Counters>,
    hist: Arc<LatencyHistogram>,
) {
    let sm = match &session.sm {
        Some(Ok(s)) => {
            counters.sm_acks_sent.fetch_add(s.acks_sent, Relaxed);
            counters.sm_requests.fetch_add(s.requests, Relaxed);
            Some(Arc::new(SmLink::new(s)))
        }
        _ => None,
    };
    let mut conn = Conn::new(session.stream, sm.clone());
    let mut resumed_in = None;
    loop {
        let cmd = cmd_rx.borrow_and_update().clone();
        let alive = match cmd {
            Cmd::Hold => run_round(&mut conn, &mut cmd_rx, None, &counters, &hist).await,
            Cmd::Chat(plan) => match plan.roles.get(who.idx).and_then(|r| r.as_ref()) {
                Some(role) if !conn.reader.dead => {
                    let chat = Some((&*plan, role));
                    run_round(&mut conn, &mut cmd_rx, chat, &counters, &hist).await
                }
                _ => run_round(&mut conn, &mut cmd_rx, None, &counters, &hist).await,
            },
            Cmd::Resume(plan) => {
                if plan.members.get(who.idx) == Some(&true) && resumed_in != Some(plan.id) {
                    resumed_in = Some(plan.id);
                    match drop_and_resume(conn, &who, &plan, sm.as_ref()).await {
                        Some(c) => conn = c,
                        None => return,
                    }
                    // Hold on the new connection until the command changes.
                    continue;
                }
                run_round(&mut conn, &mut cmd_rx, None, &counters, &hist).await
            }
            Cmd::Close => {
                if !conn.reader.dead {
                    let mut wr = conn.writer.lock().await;
                    if let Some(sm) = &sm {
                        // Acknowledge everything, so nothing is re-routed when
                        // the session ends, and ask for the server's count.
                        let last = format!(
                            "{}<r xmlns='{}'/>",
                            SmSession::ack(sm.h.load(Acquire)),
                            xmpp::NS_SM
                        );
                        if write_out(&mut wr, last.as_bytes()).await {
                            counters.sm_acks_sent.fetch_add(1, Relaxed);
                        }
                    }
                    crate::close_stream(&mut *wr).await;
                    let reader = &mut conn.reader;
                    let _ =
                        tokio::time::timeout(Duration::from_secs(10), reader.until_end(&counters))
                            .await;
                    let _ = wr.shutdown().await;
                    if conn.reader.got_end {
                        counters.closed_clean.fetch_add(1, Relaxed);
                    }
                }
                return;
            }
        };
        if !alive {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use waxwing::xml::ParserLimits;

    fn elements(xml: &str) -> Vec<Element> {
        let mut p = StreamParser::new(ParserLimits::default());
        p.feed(
            format!(
                "<stream:stream xmlns='jabber:client' \
                 xmlns:stream='http://etherx.jabber.org/streams'>{xml}"
            )
            .as_bytes(),
        );
        let mut out = Vec::new();
        while let Ok(Some(ev)) = p.next_event() {
            if let StreamEvent::Stanza(el) = ev {
                out.push(el);
            }
        }
        out
    }

    #[test]
    fn classifies_sm_carbons_and_stanzas() {
        let els = elements(
            "<r xmlns='urn:xmpp:sm:3'/>\
             <a xmlns='urn:xmpp:sm:3' h='4294967295'/>\
             <a xmlns='urn:xmpp:sm:3' h='x'/>\
             <enabled xmlns='urn:xmpp:sm:3' id='i' resume='true'/>\
             <message from='a@x/r1' to='a@x/r0' id='wb0.1.2'>\
               <received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>\
               <message xmlns='jabber:client' id='wb0.1.2' type='chat'><body>b</body></message>\
               </forwarded></received></message>\
             <message from='a@x' to='a@x/r1'><sent xmlns='urn:xmpp:carbons:2'/></message>\
             <message id='wb0.1.2' type='chat'><body>b</body></message>\
             <presence/><iq type='result' id='carb1'/>",
        );
        let kinds: Vec<Incoming> = els.iter().map(Incoming::of).collect();
        assert_eq!(
            kinds,
            [
                Incoming::SmRequest,
                Incoming::SmAck(Some(u32::MAX)),
                Incoming::SmAck(None),
                Incoming::Other,
                Incoming::CarbonReceived,
                Incoming::CarbonSent,
                Incoming::Stanza,
                Incoming::Stanza,
                Incoming::Stanza,
            ]
        );
        let counted = kinds.iter().filter(|k| k.counts_for_sm()).count();
        assert_eq!(counted, 5);
    }

    #[test]
    fn message_ids_round_trip() {
        assert_eq!(parse_id("wb3.17.123456"), Some((3, 17, 123456)));
        assert_eq!(parse_id("wb3.17"), None);
        assert_eq!(parse_id("carb1"), None);
    }
}
