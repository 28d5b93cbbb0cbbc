//! [`BoshStream`]: one BOSH session (XEP-0124/XEP-0206) as the c2s driver
//! sees it, a [`ClientStream`]. The HTTP handlers pass each request in
//! (with the way to answer it); the stream, on the session's own task,
//! puts requests in `rid` order, feeds their payloads to the stream parser,
//! holds up to `hold` of them open and answers the oldest with whatever
//! the session writes, or empty when `wait` runs out. No request held for
//! `inactivity` seconds ends the stream as a dropped TCP connection does.
//!
//! Everything here is owned by the session's task, so nothing is locked:
//! the only shared thing is the sid table the handlers look requests up
//! in ([`super::Sessions`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::body::{self, Wrapper, NS_XBOSH};
use super::Sessions;
use crate::net::c2s::transport::{ClientStream, ElementSink, End, Flow};
use crate::net::StreamLimits;
use crate::queue::{QueueReceiver, Weigh};
use crate::stanza::{stream_error, StreamErrorCondition};
use crate::web::websocket::standalone;
use crate::xml::{
    Element, ParseError, StreamEvent, StreamHeader, StreamParser, NS_CLIENT, NS_STREAMS,
};

/// What each payload is parsed behind, as for WebSocket messages: a
/// stanza written without `xmlns` is still `jabber:client`.
const HEADER: &[u8] =
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

/// What the HTTP side hands the session.
pub enum Incoming {
    /// A request with a readable wrapper.
    Request(Request),
    /// A request over `bosh_max_body_bytes` naming this session: it ends
    /// the session with `policy-violation`.
    Oversized(oneshot::Sender<Bytes>),
}

/// One HTTP request of the session.
pub struct Request {
    pub wrapper: Wrapper,
    /// The whole request body (the payload is `wrapper.payload` of it).
    pub bytes: Bytes,
    /// Where its response goes (the handler waits on the other end).
    pub reply: oneshot::Sender<Bytes>,
}

/// What the session creation settled (XEP-0124 §7.1).
#[derive(Debug, Clone)]
pub struct Terms {
    pub sid: String,
    pub wait: Duration,
    pub hold: usize,
    /// Requests the client may have open at once: also the `rid` window
    /// and the number of responses kept for retransmission.
    pub requests: u64,
    pub inactivity: Duration,
    pub max_pause: u64,
    pub polling: Duration,
    pub ver: String,
    /// Most bytes of output buffered while no request is held (the
    /// session queue is drained into it only up to this).
    pub buffer_bytes: usize,
}

/// Elements on their way out, each declaring its own namespace (they
/// travel inside `<body/>`, whose default namespace is httpbind's).
#[derive(Default)]
pub struct Payload(Vec<u8>);

impl ElementSink for Payload {
    fn element(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(&standalone(bytes));
    }
}

/// A request held open for the session's next output.
struct Held {
    rid: u64,
    reply: oneshot::Sender<Bytes>,
    /// When it is answered empty (its `wait` ran out).
    deadline: Instant,
}

enum Timer {
    /// The oldest held request's `wait` ran out.
    Wait,
    /// No request was held for the inactivity time (or the pause).
    Inactive,
}

pub struct BoshStream {
    inbox: mpsc::Receiver<Incoming>,
    terms: Terms,
    sessions: Arc<Sessions>,
    parser: StreamParser,
    events: VecDeque<Result<StreamEvent, ParseError>>,
    /// Output not yet in a response.
    out: Vec<u8>,
    held: VecDeque<Held>,
    /// Requests that came before one with a lower `rid` (at most the
    /// window's size): processed when the gap closes.
    early: BTreeMap<u64, Request>,
    /// The `rid` to be processed next.
    next_rid: u64,
    /// The last responses sent, by rid, for retransmission.
    answered: VecDeque<(u64, Bytes)>,
    /// Since when no request is held (the inactivity clock).
    idle_since: Option<Instant>,
    /// The client asked for this inactivity for the current gap.
    pause: Option<Duration>,
    /// Answer every held request at the next delivery (a pause request).
    answer_all: bool,
    /// When the last empty poll came (polling sessions, hold = 0).
    last_empty_poll: Option<Instant>,
    last_answer_empty: bool,
    /// The session creation request is yet to come through.
    created: bool,
    /// Attributes of the session creation response, until it is sent.
    creation: Option<Vec<(&'static str, String)>>,
    /// A terminate no request was held for: given to the next one.
    undelivered: Option<Bytes>,
    /// The session ended: nothing more is processed or written.
    closed: bool,
    wake_at: Option<Instant>,
    write_timeout: Duration,
    secure: bool,
    shutdown: CancellationToken,
}

impl BoshStream {
    pub fn new(
        inbox: mpsc::Receiver<Incoming>,
        terms: Terms,
        first_rid: u64,
        sessions: Arc<Sessions>,
        limits: StreamLimits,
        secure: bool,
        shutdown: CancellationToken,
    ) -> BoshStream {
        let secs = |d: Duration| d.as_secs().to_string();
        let creation = vec![
            ("sid", terms.sid.clone()),
            ("wait", secs(terms.wait)),
            ("hold", terms.hold.to_string()),
            ("requests", terms.requests.to_string()),
            ("inactivity", secs(terms.inactivity)),
            ("maxpause", terms.max_pause.to_string()),
            ("polling", secs(terms.polling)),
            ("ver", terms.ver.clone()),
            ("xmpp:version", "1.0".into()),
            ("xmlns:xmpp", NS_XBOSH.into()),
            ("xmlns:stream", NS_STREAMS.into()),
        ];
        let mut s = BoshStream {
            inbox,
            terms,
            sessions,
            parser: StreamParser::new(limits.parser),
            events: VecDeque::new(),
            out: Vec::new(),
            held: VecDeque::new(),
            early: BTreeMap::new(),
            next_rid: first_rid,
            answered: VecDeque::new(),
            idle_since: None,
            pause: None,
            answer_all: false,
            last_empty_poll: None,
            last_answer_empty: false,
            created: false,
            creation: Some(creation),
            undelivered: None,
            closed: false,
            wake_at: None,
            write_timeout: limits.write_timeout,
            secure,
            shutdown,
        };
        s.open_parser();
        s
    }

    /// A fresh parse context: our header, and its event dropped.
    fn open_parser(&mut self) {
        self.parser.reset();
        self.parser.feed(HEADER);
        let _ = self.parser.next_event();
    }

    /// One request from the HTTP side, in whatever order they came.
    fn take(&mut self, incoming: Option<Incoming>) -> Flow<()> {
        let req = match incoming {
            Some(Incoming::Request(r)) => r,
            Some(Incoming::Oversized(reply)) => {
                return Err(self.fail(reply, "policy-violation", "request body too large"))
            }
            // The table holds a sender until this stream is dropped.
            None => return Err(End::Io("BOSH session table gone".into())),
        };
        if self.closed {
            let _ = req.reply.send(Bytes::from(body::terminate(None)));
            return Ok(());
        }
        let Some(rid) = req.wrapper.rid() else {
            return Err(self.fail(req.reply, "bad-request", "no rid"));
        };
        if rid < self.next_rid {
            // XEP-0124 §14.3: a retransmission gets the same response
            // again; one still held gets the newer connection.
            if let Some((_, r)) = self.answered.iter().find(|(r, _)| *r == rid) {
                let _ = req.reply.send(r.clone());
                return Ok(());
            }
            if let Some(h) = self.held.iter_mut().find(|h| h.rid == rid) {
                let old = std::mem::replace(&mut h.reply, req.reply);
                let _ = old.send(Bytes::from(body::response(&[("type", "error")], b"")));
                return Ok(());
            }
            return Err(self.fail(req.reply, "item-not-found", "rid no longer answerable"));
        }
        if rid - self.next_rid >= self.terms.requests {
            return Err(self.fail(req.reply, "item-not-found", "rid beyond the window"));
        }
        if rid > self.next_rid {
            // Early: waits for the ones before it (§14.2).
            if let Some(old) = self.early.insert(rid, req) {
                let _ = old
                    .reply
                    .send(Bytes::from(body::response(&[("type", "error")], b"")));
            }
            return Ok(());
        }
        self.process(req)?;
        self.next_rid += 1;
        while let Some(r) = self.early.remove(&self.next_rid) {
            self.process(r)?;
            self.next_rid += 1;
        }
        Ok(())
    }

    /// The request whose turn it is: its payload becomes events, and it
    /// is held for the answer.
    fn process(&mut self, req: Request) -> Flow<()> {
        let now = Instant::now();
        let w = &req.wrapper;
        if !self.created {
            self.created = true;
            self.events.push_back(Ok(StreamEvent::Header(header_of(w))));
        } else {
            let pause = w.number("pause");
            let empty = w.payload.is_empty() && !w.is_restart() && !w.is_terminate();
            if empty && pause.is_none() && self.terms.hold == 0 {
                // XEP-0124 §12: two empty polls closer than `polling`,
                // the first answered empty, break the session's rules.
                if let Some(last) = self.last_empty_poll {
                    if now.duration_since(last) < self.terms.polling && self.last_answer_empty {
                        return Err(self.fail(req.reply, "policy-violation", "polling too often"));
                    }
                }
                self.last_empty_poll = Some(now);
            } else {
                self.last_empty_poll = None;
            }
            self.pause = None;
            if let Some(p) = pause {
                if p > self.terms.max_pause {
                    return Err(self.fail(req.reply, "policy-violation", "pause over maxpause"));
                }
                // §10: answer everything now; the next gap may be this long.
                self.pause = Some(Duration::from_secs(p));
                self.answer_all = true;
            }
            if w.is_restart() {
                self.events.push_back(Ok(StreamEvent::Header(header_of(w))));
            }
            let payload = req.bytes.slice(w.payload.clone());
            self.feed(&payload);
            if w.is_terminate() {
                self.events.push_back(Ok(StreamEvent::End));
            }
        }
        self.held.push_back(Held {
            rid: w.rid().unwrap_or(self.next_rid),
            reply: req.reply,
            deadline: now + self.terms.wait,
        });
        self.idle_since = None;
        Ok(())
    }

    /// A payload through the stream parser: whole top-level elements only,
    /// under the same limits as a TCP stream's stanzas.
    fn feed(&mut self, bytes: &[u8]) {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        self.parser.feed(bytes);
        loop {
            match self.parser.next_event() {
                Ok(Some(StreamEvent::Stanza(el))) => {
                    self.events.push_back(Ok(StreamEvent::Stanza(el)))
                }
                Ok(None) => break,
                Ok(Some(_)) => {
                    self.events.push_back(Err(ParseError::NotWellFormed(
                        "a BOSH body carries stanzas, not the stream's end".into(),
                    )));
                    return;
                }
                Err(e) => {
                    self.events.push_back(Err(e));
                    return;
                }
            }
        }
        if self.parser.mid_element() {
            self.events.push_back(Err(ParseError::NotWellFormed(
                "a BOSH body carries whole elements".into(),
            )));
        }
    }

    /// Answers held requests that have something to carry, or that are
    /// more than `hold`: once the payloads taken so far are processed
    /// (so that one request's answers go out together).
    fn deliver(&mut self) {
        if self.closed || !self.events.is_empty() {
            return;
        }
        while !self.held.is_empty()
            && (!self.out.is_empty() || self.held.len() > self.terms.hold || self.answer_all)
        {
            let h = self.held.pop_front().expect("not empty");
            let payload = std::mem::take(&mut self.out);
            self.answer(h, &[], &payload);
        }
        self.answer_all = false;
        self.mark_idle();
    }

    fn mark_idle(&mut self) {
        if self.held.is_empty() && self.idle_since.is_none() {
            self.idle_since = Some(Instant::now());
        }
    }

    /// Sends one response (the creation response's attributes on the
    /// first) and keeps it for retransmission.
    fn answer(&mut self, h: Held, attrs: &[(&str, &str)], payload: &[u8]) {
        let mut all: Vec<(&str, &str)> = attrs.to_vec();
        let creation = self.creation.take();
        if let Some(c) = &creation {
            all.extend(c.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let r = Bytes::from(body::response(&all, payload));
        self.last_answer_empty = payload.is_empty();
        self.answered.push_back((h.rid, r.clone()));
        while self.answered.len() as u64 > self.terms.requests {
            self.answered.pop_front();
        }
        let _ = h.reply.send(r);
    }

    /// Ends the session: the oldest held request gets the terminate (with
    /// any output), the others a bare one. With nothing held, the
    /// terminate waits for the next request (see `shutdown`).
    fn end_session(&mut self, condition: Option<&str>, tell: bool) {
        if self.closed {
            return;
        }
        let mut attrs = vec![("type", "terminate")];
        if let Some(c) = condition {
            attrs.push(("condition", c));
        }
        let payload = std::mem::take(&mut self.out);
        match self.held.pop_front() {
            Some(h) => self.answer(h, &attrs, &payload),
            None if tell => self.undelivered = Some(Bytes::from(body::response(&attrs, &payload))),
            None => {}
        }
        let bare = Bytes::from(body::terminate(None));
        for h in self.held.drain(..) {
            let _ = h.reply.send(bare.clone());
        }
        for (_, r) in std::mem::take(&mut self.early) {
            let _ = r.reply.send(bare.clone());
        }
        self.events.clear();
        self.closed = true;
    }

    /// A terminal binding error for the request `reply` answers (XEP-0124
    /// §17.2); the session ends.
    fn fail(&mut self, reply: oneshot::Sender<Bytes>, condition: &str, why: &str) -> End {
        tracing::debug!(sid = %self.terms.sid, condition, why, "BOSH session terminated");
        let _ = reply.send(Bytes::from(body::terminate(Some(condition))));
        self.end_session(Some(condition), false);
        if condition == "policy-violation" {
            End::StreamError(StreamErrorCondition::PolicyViolation)
        } else {
            // As a connection the client lost track of: a session with
            // stream management waits for resumption.
            End::Io(format!("BOSH {condition}: {why}"))
        }
    }

    /// The next timer: the oldest held request's wait, else inactivity.
    fn timer(&self) -> Option<(Instant, Timer)> {
        if let Some(h) = self.held.front() {
            return Some((h.deadline, Timer::Wait));
        }
        let gap = self.pause.unwrap_or(self.terms.inactivity);
        self.idle_since.map(|s| (s + gap, Timer::Inactive))
    }

    fn on_timer(&mut self, timer: Timer) -> Flow<()> {
        match timer {
            Timer::Wait => {
                if let Some(h) = self.held.pop_front() {
                    let payload = std::mem::take(&mut self.out);
                    self.answer(h, &[], &payload);
                }
                self.mark_idle();
                Ok(())
            }
            // The client is gone, as far as anyone can tell: the same end
            // as a TCP connection that dropped (stream management keeps
            // the session for resumption; else it ends for good).
            Timer::Inactive => {
                tracing::debug!(sid = %self.terms.sid, "BOSH session inactive");
                self.end_session(None, false);
                Err(End::Io("BOSH session inactive".into()))
            }
        }
    }

    /// Waits for the next request or timer (negotiation, before a queue).
    async fn wait_input(&mut self) -> Flow<()> {
        let timer = self.timer();
        let at = timer.as_ref().map(|(at, _)| *at);
        let shutdown = self.shutdown.clone();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                Err(self.close_with(StreamErrorCondition::SystemShutdown, None).await)
            }
            req = self.inbox.recv() => self.take(req),
            _ = sleep_until(at) => self.on_timer(timer.expect("a timer").1),
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The stream header a creation or restart request stands for
/// (XEP-0206 §5, §6).
fn header_of(w: &Wrapper) -> StreamHeader {
    StreamHeader {
        name: "stream".into(),
        ns: NS_STREAMS.into(),
        default_ns: Some(NS_CLIENT.into()),
        to: w.attr("to").map(String::from),
        from: w.attr("from").map(String::from),
        id: None,
        version: w.attr("xmpp:version").map(String::from).or_else(|| {
            // A restart request need not repeat the version.
            w.is_restart().then(|| "1.0".into())
        }),
        lang: w.attr("xml:lang").map(String::from),
        prefixes: Vec::new(),
    }
}

impl Drop for BoshStream {
    fn drop(&mut self) {
        self.sessions.remove(&self.terms.sid);
    }
}

impl ClientStream for BoshStream {
    const TRANSPORT: &'static str = "bosh";
    type Out = Payload;

    async fn next_event(&mut self) -> Flow<StreamEvent> {
        loop {
            match self.events.pop_front() {
                Some(Ok(ev)) => return Ok(ev),
                Some(Err(e)) => return Err(self.close_parse_error(e).await),
                None => {
                    self.deliver();
                    self.wait_input().await?;
                }
            }
        }
    }

    fn next_buffered(&mut self) -> Result<Option<StreamEvent>, ParseError> {
        self.events.pop_front().transpose()
    }

    fn write(&mut self, el: &Element) {
        if !self.closed {
            self.out
                .extend_from_slice(&standalone(&el.to_bytes(NS_CLIENT)));
        }
    }

    fn write_raw(&mut self, data: &[u8]) {
        if !self.closed {
            self.out.extend_from_slice(&standalone(data));
        }
    }

    fn write_out(&mut self, out: Payload) {
        if !self.closed {
            self.out.extend_from_slice(&out.0);
        }
    }

    fn send_header(&mut self, attrs: &[(&str, &str)]) {
        // The body wrapper stands for the stream header: the creation
        // response carries what ours would (XEP-0206 §5); a restart's
        // answer carries just the features.
        if let Some(c) = &mut self.creation {
            for (k, v) in attrs {
                match *k {
                    "from" => c.push(("from", v.to_string())),
                    "id" => c.push(("authid", v.to_string())),
                    _ => {}
                }
            }
        }
    }

    fn restart(&mut self) {
        self.open_parser();
    }

    async fn flush(&mut self) -> Flow<()> {
        if self.closed {
            self.out.clear();
        } else {
            self.deliver();
        }
        Ok(())
    }

    async fn close_with(&mut self, cond: StreamErrorCondition, text: Option<&str>) -> End {
        if !self.closed {
            // XEP-0206 §7: a stream error travels in the terminate.
            let e = stream_error(cond, text);
            self.write(&e);
            self.end_session(Some("remote-stream-error"), true);
        }
        End::StreamError(cond)
    }

    async fn close_parse_error(&mut self, e: ParseError) -> End {
        let cond = match e {
            ParseError::NotWellFormed(_) => StreamErrorCondition::NotWellFormed,
            ParseError::RestrictedXml(_) => StreamErrorCondition::RestrictedXml,
            ParseError::PolicyViolation(_) => StreamErrorCondition::PolicyViolation,
        };
        tracing::debug!(error = ?e, "BOSH payload parse error");
        self.close_with(cond, None).await
    }

    async fn close_stream(&mut self) -> End {
        // The client's terminate (XEP-0124 §11): answered with ours.
        self.end_session(None, true);
        End::PeerClosed
    }

    async fn shutdown(&mut self) {
        self.end_session(None, false);
        // An error no request was held for goes to the next one, if it
        // comes soon (a client polls again at once after an answer).
        // Not while the server shuts down: the listener takes no more
        // requests, and shutdown must not wait on a client.
        if let Some(r) = self.undelivered.take() {
            let deadline = tokio::time::Instant::now() + self.write_timeout;
            let shutdown = self.shutdown.clone();
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => None,
                r = tokio::time::timeout_at(deadline, self.inbox.recv()) => r.ok().flatten(),
            };
            if let Some(incoming) = next {
                let reply = match incoming {
                    Incoming::Request(req) => req.reply,
                    Incoming::Oversized(reply) => reply,
                };
                let _ = reply.send(r);
            }
        }
    }

    async fn pump_with<T: Weigh + Send>(
        &mut self,
        rx: &QueueReceiver<T>,
        write: &mut (impl FnMut(T, &mut Payload) -> Option<StreamErrorCondition> + Send),
        shutdown: &CancellationToken,
        idle: Duration,
    ) -> Flow<()> {
        ClientStream::flush(self).await?;
        if !self.events.is_empty() {
            return Ok(());
        }
        let wake = self.wake_at.take();
        let timer = self.timer();
        let at = timer.as_ref().map(|(at, _)| *at);
        let cap = self.terms.buffer_bytes;
        // The session queue is drained only while there is room: beyond
        // it, stanzas wait in the (bounded) queue for a request.
        let room = self.out.len() < cap;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                Err(self.close_with(StreamErrorCondition::SystemShutdown, None).await)
            }
            req = self.inbox.recv() => self.take(req),
            item = rx.recv(), if room => {
                let mut payload = Payload::default();
                let mut cond = write(item, &mut payload);
                while cond.is_none() && self.out.len() + payload.0.len() < cap {
                    match rx.try_recv() {
                        Some(item) => cond = write(item, &mut payload),
                        None => break,
                    }
                }
                self.write_out(payload);
                match cond {
                    Some(c) => Err(self.close_with(c, None).await),
                    None => Ok(()),
                }
            }
            _ = sleep_until(at) => self.on_timer(timer.expect("a timer").1),
            _ = sleep_until(wake) => Ok(()),
            _ = tokio::time::sleep(idle) => {
                Err(self.close_with(StreamErrorCondition::ConnectionTimeout, None).await)
            }
        }
    }

    fn wake_at(&mut self, at: Instant) {
        self.wake_at = Some(at);
    }

    fn is_secure(&self) -> bool {
        self.secure
    }

    fn tls_session(&self) -> Option<&rustls::ServerConnection> {
        // Requests may come over several HTTP connections: no one TLS
        // session to bind to (no -PLUS).
        None
    }

    async fn start_tls(&mut self, _config: Arc<rustls::ServerConfig>) -> std::io::Result<()> {
        // Security is the HTTP connections' (https:), below XMPP.
        Err(std::io::ErrorKind::Unsupported.into())
    }
}
