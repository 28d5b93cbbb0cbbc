//! One task per logged-in session: it keeps reading its stream in every phase
//! (a client that stops reading would push back on the server and skew the
//! figures), and in the chat phase it also sends to its partner, either paced
//! open-loop or with a bounded window.

use std::io::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio_rustls::client::TlsStream;
use waxwing::xml::{escape_attr, Element, StreamEvent, StreamParser};

use crate::stats::LatencyHistogram;
use crate::xmpp::{Session, XmlStream};

type Tls = TlsStream<TcpStream>;

/// What the coordinator asks of every session.
#[derive(Clone)]
pub enum Cmd {
    /// Stay connected, read and drop whatever arrives.
    Hold,
    /// Run the chat plan (sessions without a role in it hold).
    Chat(Arc<ChatPlan>),
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

/// The reading half of a session, with its parser.
struct Reader {
    rd: ReadHalf<Tls>,
    parser: StreamParser,
    scratch: Box<[u8]>,
    dead: bool,
    got_end: bool,
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
        if run != self.plan.run {
            self.counters.stale.fetch_add(1, Relaxed);
            return;
        }
        // A bounce comes back to the sender: it is about our outgoing direction.
        let bounce = el.attr("type") == Some("error");
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
                    Ok(n) => {
                        self.parser.feed(&self.scratch[..n]);
                        self.drain_events(chat.as_ref(), counters);
                    }
                },
            }
        }
    }

    fn drain_events(&mut self, chat: Option<&ChatIn<'_>>, counters: &Counters) {
        loop {
            match self.parser.next_event() {
                Ok(Some(StreamEvent::Stanza(el))) => {
                    if let Some(c) = chat {
                        c.on_stanza(&el);
                    }
                }
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

    /// After our `</stream:stream>`: reads until the server's end of stream or EOF.
    async fn until_end(&mut self) {
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
                            Ok(Some(_)) => {}
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
            }
        }
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
async fn send_paced(wr: &mut WriteHalf<Tls>, plan: &ChatPlan, role: &Role, counters: &Counters) {
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
        if !write_out(wr, &buf).await {
            return;
        }
        counters.sent.fetch_add(batch, Relaxed);
    }
}

/// Saturation: keep `window` messages in flight on this direction until the end.
async fn send_window(wr: &mut WriteHalf<Tls>, plan: &ChatPlan, role: &Role, counters: &Counters) {
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
            if !write_out(wr, &buf).await {
                return;
            }
            counters.sent.fetch_add(n, Relaxed);
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

/// The life of one session after login, until the coordinator says Close.
pub async fn session_loop(
    idx: usize,
    session: Session,
    mut cmd_rx: watch::Receiver<Cmd>,
    counters: Arc<Counters>,
    hist: Arc<LatencyHistogram>,
) {
    let XmlStream {
        io,
        parser,
        scratch,
    } = session.stream;
    let (rd, mut wr) = tokio::io::split(io);
    let mut reader = Reader {
        rd,
        parser,
        scratch,
        dead: false,
        got_end: false,
    };
    loop {
        let cmd = cmd_rx.borrow_and_update().clone();
        let alive = match cmd {
            Cmd::Hold => reader.until_changed(&mut cmd_rx, None, &counters).await,
            Cmd::Chat(plan) => match plan.roles.get(idx).and_then(|r| r.as_ref()) {
                Some(role) if !reader.dead => {
                    let chat = ChatIn {
                        plan: &plan,
                        in_dir: role.in_dir,
                        out_dir: role.out_dir,
                        counters: &counters,
                        hist: &hist,
                    };
                    counters.senders_active.fetch_add(1, Relaxed);
                    let send = async {
                        let _active = ActiveSender(&counters);
                        if plan.rate == 0 {
                            send_window(&mut wr, &plan, role, &counters).await
                        } else {
                            send_paced(&mut wr, &plan, role, &counters).await
                        }
                    };
                    let (alive, ()) = tokio::join!(
                        reader.until_changed(&mut cmd_rx, Some(chat), &counters),
                        send
                    );
                    alive
                }
                _ => reader.until_changed(&mut cmd_rx, None, &counters).await,
            },
            Cmd::Close => {
                if !reader.dead {
                    crate::close_stream(&mut wr).await;
                    let _ = tokio::time::timeout(Duration::from_secs(10), reader.until_end()).await;
                    let _ = wr.shutdown().await;
                    if reader.got_end {
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
