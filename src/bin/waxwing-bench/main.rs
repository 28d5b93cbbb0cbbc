//! waxwing-bench: an XMPP c2s load generator that speaks plain XMPP over TCP
//! (STARTTLS, SCRAM, bind), so the same run can be pointed at Waxwing,
//! Prosody or ejabberd.
//!
//! Phases: [register] → login N sessions → hold them idle (server RSS per
//! session) → [drop and resume some of them] → chat between P pairs at a
//! paced rate or saturating → close. With --sm every session enables stream
//! management (XEP-0198) and answers the server's acknowledgement requests;
//! with --carbons it enables message carbons (XEP-0280).
//! Prints a human summary and, last, one JSON line.

mod chat;
mod first;
mod frame;
mod im;
mod muc;
mod pep;
mod stats;
mod ws;
mod xmpp;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch, Semaphore};
use waxwing::sasl::SaltedPasswordCache;

use chat::{Cmd, Counters};
use stats::LatencyHistogram;
use xmpp::{Failure, Registered, Step, Target};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "waxwing-bench",
    about = "XMPP c2s benchmark: logins/s, memory per idle session, message throughput and latency"
)]
struct Args {
    /// Server address (loopback only).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 5222)]
    port: u16,
    /// XMPP domain of the accounts (also the TLS server name).
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Number of accounts bench0..bench{A-1}.
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    #[arg(long, default_value = "benchpass")]
    password: String,
    /// Account name prefix: accounts are {prefix}0..{prefix}{A-1}.
    #[arg(long, default_value = "bench")]
    prefix: String,
    /// Sessions to open; session i logs in as {prefix}{i % A} with resource r{i / A}.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// PID of the server process, for RSS and CPU readings from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Logins in flight at once.
    #[arg(long, default_value_t = 200)]
    login_concurrency: usize,
    /// Seconds to hold all sessions idle before reading the server's RSS.
    #[arg(long, default_value_t = 10)]
    idle: u64,
    /// Chatting pairs of sessions (each pair sends both ways); 0 skips the chat phase.
    #[arg(long, default_value_t = 500)]
    pairs: usize,
    /// Aggregate target messages/s, paced open-loop; 0 = saturate (see --window).
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Same as --rate 0.
    #[arg(long)]
    saturate: bool,
    /// Several chat runs over the same sessions, e.g. `sat,2000,halfsat`: a number is a
    /// paced rate (msg/s), `sat` saturates, `halfsat` paces at half of the last `sat`
    /// run's delivered rate. Overrides --rate/--saturate.
    #[arg(long)]
    rates: Option<String>,
    /// In saturate mode, messages in flight per direction of a pair.
    #[arg(long, default_value_t = 4)]
    window: u64,
    /// Stanzas per write (and so per TLS record). 1, the default and the headline
    /// figure, is what real clients produce; more shares each record's cost.
    #[arg(long, default_value_t = 1)]
    per_write: u64,
    /// Seconds of sending in the chat phase.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds to wait for stragglers after the last send before counting losses.
    #[arg(long, default_value_t = 2)]
    grace: u64,
    /// Body size in bytes of each chat message.
    #[arg(long, default_value_t = 64)]
    body: usize,
    /// Create the accounts by in-band registration (XEP-0077) first.
    #[arg(long)]
    register: bool,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 16)]
    register_concurrency: usize,
    /// Allow TLS session resumption (off: every login does a full handshake):
    /// each session keeps its own TLS session store, so a `--resume` round
    /// reconnects the way a phone does, presenting its last session's ticket.
    #[arg(long)]
    tls_resume: bool,
    /// Build an element of every stanza received, chat deliveries included
    /// (the tool's behaviour before frame.rs, which recognises deliveries
    /// from their bytes: parsing each cost about as much CPU as the server
    /// spent delivering it, on the same cores).
    #[arg(long)]
    parse_every_delivery: bool,
    /// Stop everything after this many seconds, whatever the phase.
    #[arg(long, default_value_t = 600)]
    max_time: u64,
    /// Cross-server chat: odd sessions log in on this second server (e.g. another
    /// Waxwing federated with the first) instead of --host/--port, so every chat
    /// pair has one side on each server and its messages cross s2s. Loopback only.
    #[arg(long)]
    peer_host: Option<String>,
    #[arg(long, default_value_t = 5222)]
    peer_port: u16,
    /// XMPP domain (and TLS name) of the accounts on --peer-host; required with it.
    #[arg(long)]
    peer_domain: Option<String>,
    /// PID of the peer server, for its CPU in the chat phase.
    #[arg(long)]
    peer_server_pid: Option<u32>,
    /// SASL mechanism of every login: `scram` (SCRAM-SHA-256, else -SHA-1) or
    /// `plain` (PLAIN over TLS: the server derives a key per login).
    #[arg(long = "mechanism", value_enum, default_value = "scram")]
    sasl: xmpp::SaslChoice,
    /// Stream management (XEP-0198): every session sends `<enable resume='true'/>`
    /// right after bind and answers each `<r/>` with its count of stanzas received.
    #[arg(long)]
    sm: bool,
    /// Message carbons (XEP-0280): every session enables them after bind; copies
    /// are counted apart from the chat's deliveries.
    #[arg(long)]
    carbons: bool,
    /// After the idle phase, drop the TCP connection of this many sessions at
    /// once and resume each on a new connection (at most --login-concurrency at a
    /// time); needs --sm. Resumed sessions chat like the others.
    #[arg(long, default_value_t = 0)]
    resume: usize,
    /// XMPP over WebSocket (RFC 7395, wss) instead of TCP: the HTTPS port of
    /// the server's `[http] listen_tls` on --host; sessions connect to
    /// wss://DOMAIN:PORT/xmpp-websocket (--ws-path). Needs --per-write 1.
    #[arg(long)]
    ws_port: Option<u16>,
    #[arg(long, default_value = "/xmpp-websocket")]
    ws_path: String,
    /// A label copied into the JSON line (e.g. the server's name).
    #[arg(long, default_value = "")]
    label: String,
}

/// The report, filled phase by phase so a run cut by --max-time still prints what it has.
#[derive(Default, Debug)]
struct Report {
    fields: Vec<(String, String)>,
    lines: Vec<String>,
}

impl Report {
    fn num(&mut self, k: &str, v: impl std::fmt::Display) {
        self.fields.push((k.to_owned(), v.to_string()));
    }
    fn float(&mut self, k: &str, v: f64) {
        let s = if v.is_finite() {
            format!("{v:.2}")
        } else {
            "null".to_owned()
        };
        self.fields.push((k.to_owned(), s));
    }
    fn str(&mut self, k: &str, v: &str) {
        let esc: String = v
            .chars()
            .flat_map(|c| match c {
                '"' => "\\\"".chars().collect::<Vec<_>>(),
                '\\' => "\\\\".chars().collect(),
                c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32).chars().collect(),
                c => vec![c],
            })
            .collect();
        self.fields.push((k.to_owned(), format!("\"{esc}\"")));
    }
    fn raw(&mut self, k: &str, json: String) {
        self.fields.push((k.to_owned(), json));
    }
    fn line(&mut self, s: String) {
        println!("{s}");
        self.lines.push(s);
    }
    fn json(&self) -> String {
        let body: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", body.join(","))
    }
}

type SharedReport = Arc<Mutex<Report>>;

fn rep(r: &SharedReport) -> std::sync::MutexGuard<'_, Report> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

fn main() {
    // `waxwing-bench im …`: the IM-core figures (roster login, offline hand-over).
    if std::env::args().nth(1).as_deref() == Some("im") {
        return im::main();
    }
    // `waxwing-bench pep …`: PEP publish → notification latency to online contacts.
    if std::env::args().nth(1).as_deref() == Some("pep") {
        return pep::main();
    }
    // `waxwing-bench muc …`: group chat joins, fan-out rate and latency (XEP-0045).
    if std::env::args().nth(1).as_deref() == Some("muc") {
        return muc::main();
    }
    // `waxwing-bench first …`: latency of the first message to a new domain (s2s setup).
    if std::env::args().nth(1).as_deref() == Some("first") {
        return first::main();
    }
    let args = Args::parse();
    frame::FAST.store(
        !args.parse_every_delivery,
        std::sync::atomic::Ordering::Relaxed,
    );
    let rt = xmpp::runtime();
    let report: SharedReport = Arc::new(Mutex::new(Report::default()));
    let max_time = Duration::from_secs(args.max_time);
    let outcome = rt.block_on(async {
        tokio::time::timeout(max_time, run(args.clone(), report.clone())).await
    });
    let code = match outcome {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("waxwing-bench: {e}");
            rep(&report).str("error", &e);
            1
        }
        Err(_) => {
            eprintln!(
                "waxwing-bench: --max-time {}s reached, stopping",
                args.max_time
            );
            rep(&report).str("error", "max-time reached");
            2
        }
    };
    println!("{}", rep(&report).json());
    // Open sessions and tasks are dropped by exiting; the servers see resets.
    std::process::exit(code);
}

/// Result of one session's login, sent to the coordinator.
struct LoginDone {
    idx: usize,
    result: Result<String, Failure>,
    micros: u64,
    /// What came of `<enable/>` and of the carbons IQ, when asked for.
    sm: Option<Result<(), String>>,
    carbons: Option<Result<(), String>>,
}

/// Whether an optional step succeeded, without its value.
fn outcome<T>(r: &Option<Result<T, String>>) -> Option<Result<(), String>> {
    r.as_ref()
        .map(|r| r.as_ref().map(|_| ()).map_err(Clone::clone))
}

/// p-quantile of sorted microseconds, in ms.
fn pct_ms(v: &[u64], q: f64) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1] as f64 / 1000.0
    }
}

/// Tally of a per-session outcome (accepted / refused, with an example reason).
#[derive(Default)]
struct Tally {
    ok: usize,
    failed: usize,
    example: String,
}

impl Tally {
    fn add(&mut self, r: &Option<Result<(), String>>) {
        match r {
            Some(Ok(())) => self.ok += 1,
            Some(Err(e)) => {
                self.failed += 1;
                if self.example.is_empty() {
                    self.example = e.clone();
                }
            }
            None => {}
        }
    }
}

/// The WebSocket endpoint when --ws-port is given.
fn ws_target(args: &Args) -> Result<Option<xmpp::WsTarget>, String> {
    let Some(port) = args.ws_port else {
        return Ok(None);
    };
    if args.per_write != 1 {
        // RFC 7395 §3.3.3: one stanza per message, and a write is a message.
        return Err("--ws-port needs --per-write 1".into());
    }
    if args.peer_host.is_some() {
        return Err("--ws-port does not combine with --peer-host".into());
    }
    Ok(Some(xmpp::WsTarget {
        addr: xmpp::loopback_addr(&args.host, port)?,
        path: args.ws_path.clone(),
    }))
}

async fn run(args: Args, report: SharedReport) -> Result<(), String> {
    let addr = xmpp::loopback_addr(&args.host, args.port)?;
    if args.accounts == 0 || args.sessions == 0 {
        return Err("--accounts and --sessions must be > 0".into());
    }
    if args.resume > 0 && !args.sm {
        return Err("--resume needs --sm (resumption is part of stream management)".into());
    }
    // The main command's options on the subcommands' target.
    let with_options = |t: Target| Target {
        connector: xmpp::tls_connector(args.tls_resume),
        sasl: args.sasl,
        ..t
    };
    let cache = || Arc::new(SaltedPasswordCache::new());
    let target = Arc::new(Target {
        ws: ws_target(&args)?,
        ..with_options(Target::scram(addr, &args.domain, &args.password, cache())?)
    });
    let peer = match (&args.peer_host, &args.peer_domain) {
        (None, None) => None,
        (Some(h), Some(d)) => Some(Arc::new(with_options(Target::scram(
            xmpp::loopback_addr(h, args.peer_port)?,
            d,
            &args.password,
            cache(),
        )?))),
        _ => return Err("--peer-host and --peer-domain go together".into()),
    };
    let tck = stats::clk_tck();
    let pid = args.server_pid;
    if let Some(limit) = stats::nofile_limit() {
        if (limit as usize) < args.sessions + 64 {
            return Err(format!(
                "open-file limit {limit} is below --sessions {} (+64): raise it with ulimit -n",
                args.sessions
            ));
        }
    }
    {
        let mut r = rep(&report);
        r.str("label", &args.label);
        r.str("target", &format!("{addr}"));
        r.str("domain", &args.domain);
        r.str(
            "mechanism",
            match args.sasl {
                xmpp::SaslChoice::Scram => "scram",
                xmpp::SaslChoice::Plain => "plain",
            },
        );
        r.num("sessions_wanted", args.sessions);
        r.num("accounts", args.accounts);
        r.raw("sm", args.sm.to_string());
        r.raw("carbons", args.carbons.to_string());
        r.num("resume_n", args.resume);
        if let Some(p) = &peer {
            r.str("peer_target", &format!("{}", p.addr));
            r.str("peer_domain", &p.domain);
            r.line(format!(
                "cross-server: odd sessions on {} domain {} (chat pairs span both servers)",
                p.addr, p.domain
            ));
        }
        r.line(format!(
            "waxwing-bench → {addr} domain {} — {} sessions over {} accounts{}",
            args.domain,
            args.sessions,
            args.accounts,
            pid.map(|p| format!(", server pid {p}")).unwrap_or_default()
        ));
    }
    let rss_base = pid.and_then(stats::rss_kib);
    if let Some(k) = rss_base {
        let mut r = rep(&report);
        r.num("rss_baseline_kib", k);
        r.line(format!("server RSS baseline: {:.1} MiB", k as f64 / 1024.0));
    }

    if args.register {
        register_all(&args, &target, &report).await?;
    }

    // ---- phase 1: login ----
    let (cmd_tx, cmd_rx) = watch::channel(Cmd::Hold);
    let counters = Arc::new(Counters::default());
    let hist = Arc::new(LatencyHistogram::new());
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<LoginDone>();
    let sem = Arc::new(Semaphore::new(args.login_concurrency.max(1)));
    let cpu0 = pid.and_then(|p| stats::cpu_ticks(Some(p)));
    let peer0 = args.peer_server_pid.and_then(|p| stats::cpu_ticks(Some(p)));
    let self0 = stats::cpu_ticks(None);
    let m0 = stats::machine_busy_ticks();
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(args.sessions);
    for idx in 0..args.sessions {
        let user = format!("{}{}", args.prefix, idx % args.accounts);
        let resource = format!("r{}", idx / args.accounts);
        let target = match &peer {
            Some(p) if idx % 2 == 1 => p.clone(),
            _ => target.clone(),
        };
        let target = if args.tls_resume {
            Arc::new(target.with_own_tls_sessions())
        } else {
            target
        };
        let sem = sem.clone();
        let done_tx = done_tx.clone();
        let cmd_rx = cmd_rx.clone();
        let counters = counters.clone();
        let hist = hist.clone();
        let opts = xmpp::LoginOpts {
            presence: true,
            sm: args.sm,
            carbons: args.carbons,
        };
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await;
            let start = Instant::now();
            let res = match tokio::time::timeout(
                Duration::from_secs(60),
                xmpp::login_with(&target, &user, &resource, opts),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(Failure {
                    step: Step::Timeout,
                    detail: "login took over 60 s".into(),
                }),
            };
            drop(permit);
            let micros = start.elapsed().as_micros() as u64;
            match res {
                Ok(session) => {
                    let _ = done_tx.send(LoginDone {
                        idx,
                        result: Ok(session.jid.clone()),
                        micros,
                        sm: outcome(&session.sm),
                        carbons: session.carbons.clone(),
                    });
                    let who = chat::Who { idx, user, target };
                    chat::session_loop(who, session, cmd_rx, counters, hist).await;
                }
                Err(f) => {
                    let _ = done_tx.send(LoginDone {
                        idx,
                        result: Err(f),
                        micros,
                        sm: None,
                        carbons: None,
                    });
                }
            }
        }));
    }
    drop(done_tx);
    let mut jids: Vec<Option<String>> = vec![None; args.sessions];
    let mut failures: BTreeMap<&'static str, (usize, String)> = BTreeMap::new();
    let mut login_lat: Vec<u64> = Vec::with_capacity(args.sessions);
    let mut received = 0;
    let mut last_progress = Instant::now();
    let (mut sm_tally, mut carbons_tally) = (Tally::default(), Tally::default());
    while let Some(d) = done_rx.recv().await {
        received += 1;
        sm_tally.add(&d.sm);
        carbons_tally.add(&d.carbons);
        match d.result {
            Ok(jid) => {
                jids[d.idx] = Some(jid);
                login_lat.push(d.micros);
            }
            Err(f) => {
                let e = failures
                    .entry(f.step.name())
                    .or_insert((0, f.detail.clone()));
                e.0 += 1;
            }
        }
        if last_progress.elapsed() > Duration::from_secs(5) {
            last_progress = Instant::now();
            eprintln!(
                "  … {received}/{} logins done ({:.0}/s)",
                args.sessions,
                received as f64 / t0.elapsed().as_secs_f64()
            );
        }
        if received == args.sessions {
            break;
        }
    }
    let login_wall = t0.elapsed().as_secs_f64();
    let cpu1 = pid.and_then(|p| stats::cpu_ticks(Some(p)));
    let peer1 = args.peer_server_pid.and_then(|p| stats::cpu_ticks(Some(p)));
    let self1 = stats::cpu_ticks(None);
    let m1 = stats::machine_busy_ticks();
    let ok = login_lat.len();
    login_lat.sort_unstable();
    let pct = |v: &Vec<u64>, q: f64| pct_ms(v, q);
    {
        let mut r = rep(&report);
        let failed: usize = failures.values().map(|v| v.0).sum();
        r.num("sessions", ok);
        r.num("login_failures", failed);
        r.float("login_wall_s", login_wall);
        r.float("logins_per_s", ok as f64 / login_wall);
        r.float("login_p50_ms", pct(&login_lat, 0.5));
        r.float("login_p99_ms", pct(&login_lat, 0.99));
        r.line(format!(
            "login: {ok} sessions in {login_wall:.2} s = {:.0} logins/s ({} in flight max); latency p50 {:.1} ms p99 {:.1} ms; {failed} failed",
            ok as f64 / login_wall,
            args.login_concurrency,
            pct(&login_lat, 0.5),
            pct(&login_lat, 0.99)
        ));
        for (step, (n, detail)) in &failures {
            r.line(format!("  failed at {step}: {n} (e.g. {detail})"));
            r.num(&format!("login_fail_{step}"), n);
        }
        if let (Some(a), Some(b)) = (cpu0, cpu1) {
            let us = (b - a) as f64 * 1e6 / tck as f64;
            r.float("server_cpu_us_per_login", us / ok.max(1) as f64);
            r.line(format!(
                "  server CPU {:.2} s = {:.0} µs per login",
                us / 1e6,
                us / ok.max(1) as f64
            ));
        }
        if let (Some(a), Some(b)) = (peer0, peer1) {
            let us = (b - a) as f64 * 1e6 / tck as f64;
            r.float("peer_cpu_us_per_login", us / ok.max(1) as f64);
            r.line(format!(
                "  peer server CPU {:.2} s (it took the odd sessions' logins)",
                us / 1e6
            ));
        }
        if let (Some(a), Some(b)) = (self0, self1) {
            r.float("bench_cpu_s_login", (b - a) as f64 / tck as f64);
            if let (Some(ma), Some(mb)) = (m0, m1) {
                let server = match (cpu0, cpu1) {
                    (Some(x), Some(y)) => y - x,
                    _ => 0,
                } + match (peer0, peer1) {
                    (Some(x), Some(y)) => y - x,
                    _ => 0,
                };
                let other = (mb - ma).saturating_sub(server + (b - a)) as f64 / tck as f64;
                r.float("other_cpu_util_login", other / login_wall);
                if other / login_wall > 0.05 {
                    r.line(format!(
                        "  WARNING: other processes used {:.0}% of a core during the logins",
                        other / login_wall * 100.0
                    ));
                }
            }
        }
        let rss_login = pid.and_then(stats::rss_kib);
        if let Some(k) = rss_login {
            r.num("rss_after_login_kib", k);
            if let Some(b) = rss_base {
                // Includes what the login burst (handshakes, SCRAM) has not
                // given back yet; the idle figure below is after it has.
                r.float(
                    "kib_per_session_after_login",
                    (k as f64 - b as f64) / ok.max(1) as f64,
                );
            }
        }
    }
    report_login_extras(&args, &sm_tally, &carbons_tally, ok, &report);
    if ok == 0 {
        return Err("no session could log in".into());
    }

    // ---- phase 2: idle ----
    if args.idle > 0 {
        tokio::time::sleep(Duration::from_secs(args.idle)).await;
    }
    let alive = ok as u64 - counters.disconnected.load(Relaxed);
    {
        let mut r = rep(&report);
        let rss_idle = pid.and_then(stats::rss_kib);
        if let (Some(b), Some(i)) = (rss_base, rss_idle) {
            let per = (i as f64 - b as f64) / ok as f64;
            r.num("rss_after_idle_kib", i);
            r.float("kib_per_idle_session", per);
            r.line(format!(
                "idle {} s: server RSS {:.1} MiB (+{:.1} MiB) = {per:.1} KiB per session; {alive} sessions still up",
                args.idle,
                i as f64 / 1024.0,
                (i as f64 - b as f64) / 1024.0
            ));
        } else {
            r.line(format!("idle {} s: {alive} sessions still up", args.idle));
        }
        r.num("sessions_alive_after_idle", alive);
    }

    // ---- phase 2b: drop and resume ----
    if args.resume > 0 {
        resume_phase(&args, &mut jids, &cmd_tx, pid, rss_base, &report).await;
    }

    // ---- phase 3: chat ----
    if args.pairs > 0 {
        let mut runs = Vec::new();
        let mut last_sat: Option<f64> = None;
        for (i, spec) in chat_specs(&args)?.into_iter().enumerate() {
            let rate = match spec {
                RateSpec::Saturate => 0,
                RateSpec::Fixed(r) => r,
                RateSpec::HalfSaturation => match last_sat {
                    Some(s) => ((s / 2.0).round() as u64).max(1),
                    None => return Err("'halfsat' needs a 'sat' run before it in --rates".into()),
                },
            };
            if i > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let ctx = ChatCtx {
                args: &args,
                jids: &jids,
                cmd_tx: &cmd_tx,
                counters: &counters,
                hist: &hist,
                pid,
                peer_pid: args.peer_server_pid,
                tck,
            };
            match chat_run(&ctx, rate, &report).await {
                Some(res) => {
                    if rate == 0 {
                        last_sat = Some(res.delivered_per_s);
                    }
                    runs.push(res.json);
                }
                None => break,
            }
        }
        rep(&report).raw("chat", format!("[{}]", runs.join(",")));
    }

    // ---- phase 4: close ----
    let tc = Instant::now();
    let _ = cmd_tx.send(Cmd::Close);
    let close_deadline = Duration::from_secs(30);
    let _ = tokio::time::timeout(close_deadline, async {
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;
    let mut r = rep(&report);
    let clean = counters.closed_clean.load(Relaxed);
    r.num("closed_clean", clean);
    r.line(format!(
        "close: {clean}/{ok} streams closed cleanly in {:.2} s",
        tc.elapsed().as_secs_f64()
    ));
    let c = &counters;
    if args.sm {
        let (acks, reqs) = (c.sm_acks_sent.load(Relaxed), c.sm_requests.load(Relaxed));
        let (got, good, bad) = (
            c.sm_acks_received.load(Relaxed),
            c.sm_h_match.load(Relaxed),
            c.sm_h_mismatch.load(Relaxed),
        );
        r.num("sm_acks_sent", acks);
        r.num("sm_requests_received", reqs);
        r.num("sm_acks_received", got);
        r.num("sm_h_match", good);
        r.num("sm_h_mismatch", bad);
        r.line(format!(
            "stream management, whole run: {reqs} <r/> received, {acks} <a/> sent (one more per \
             session at close); at close the server's <a h/> matched our count of stanzas sent on \
             {good} of {got} sessions{}",
            if bad > 0 {
                format!(" — MISMATCH on {bad}")
            } else {
                String::new()
            }
        ));
    }
    if args.carbons {
        let (rc, sc) = (
            c.carbons_received.load(Relaxed),
            c.carbons_sent.load(Relaxed),
        );
        r.num("carbons_copies", rc + sc);
        r.num("carbons_copies_received", rc);
        r.num("carbons_copies_sent", sc);
        r.line(format!(
            "carbons, whole run: {} copies received ({rc} <received/>, {sc} <sent/>), not counted as deliveries",
            rc + sc
        ));
    }
    Ok(())
}

/// Reports what came of `<enable/>` (stream management) and of the carbons IQ.
fn report_login_extras(args: &Args, sm: &Tally, carbons: &Tally, ok: usize, report: &SharedReport) {
    let mut r = rep(report);
    if args.sm {
        r.num("sm_enabled", sm.ok);
        r.num("sm_failed", sm.failed);
        if sm.failed > 0 || sm.ok < ok {
            r.line(format!(
                "STREAM MANAGEMENT FAILED: <enabled/> came on only {} of {ok} sessions ({} refused, e.g. {})",
                sm.ok, sm.failed, sm.example
            ));
            if sm.ok == 0 {
                r.str("sm_error", &sm.example);
            }
        } else {
            r.line(format!(
                "stream management: enabled (resumable) on all {ok} sessions"
            ));
        }
    }
    if args.carbons {
        r.num("carbons_enabled", carbons.ok);
        r.num("carbons_refused", carbons.failed);
        if carbons.failed > 0 {
            r.line(format!(
                "carbons NOT AVAILABLE on {} of {ok} sessions (e.g. {}); enabled on {}",
                carbons.failed, carbons.example, carbons.ok
            ));
        } else {
            r.line(format!(
                "carbons: enabled on {} of {ok} sessions",
                carbons.ok
            ));
        }
    }
}

/// Drops the connection of --resume idle sessions at once (spread evenly over
/// the logged-in ones) and resumes each on a new connection, at most
/// --login-concurrency at a time. Failed sessions leave the pool.
async fn resume_phase(
    args: &Args,
    jids: &mut [Option<String>],
    cmd_tx: &watch::Sender<Cmd>,
    pid: Option<u32>,
    rss_base: Option<u64>,
    report: &SharedReport,
) {
    let up: Vec<usize> = (0..jids.len()).filter(|&i| jids[i].is_some()).collect();
    let n = args.resume.min(up.len());
    let mut members = vec![false; jids.len()];
    for k in 0..n {
        members[up[k * up.len() / n]] = true;
    }
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let plan = Arc::new(chat::ResumePlan {
        id: 0,
        members,
        sem: Arc::new(Semaphore::new(args.login_concurrency.max(1))),
        done: done_tx,
    });
    let t0 = Instant::now();
    let _ = cmd_tx.send(Cmd::Resume(plan));
    let (mut resume_lat, mut reconnect_lat) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut failures: BTreeMap<&'static str, (usize, String)> = BTreeMap::new();
    let (mut h_ok, mut h_bad) = (0, 0);
    let mut tls_resumed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut got = 0;
    while got < n {
        let Ok(Some(d)) = tokio::time::timeout_at(deadline, done_rx.recv()).await else {
            break;
        };
        got += 1;
        match d.result {
            Ok(t) => {
                resume_lat.push(t.resume_us);
                reconnect_lat.push(t.reconnect_us);
                tls_resumed += usize::from(t.tls_resumed);
                match t.h_matched {
                    Some(true) => h_ok += 1,
                    Some(false) => h_bad += 1,
                    None => {}
                }
            }
            Err(f) => {
                jids[d.idx] = None;
                let e = failures
                    .entry(f.step.name())
                    .or_insert((0, f.detail.clone()));
                e.0 += 1;
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let _ = cmd_tx.send(Cmd::Hold);
    resume_lat.sort_unstable();
    reconnect_lat.sort_unstable();
    let resumed = resume_lat.len();
    let failed = n - resumed;
    // No resumption, no latency: null in the JSON, not 0.
    let q = |v: &[u64], x: f64| {
        if v.is_empty() {
            f64::NAN
        } else {
            pct_ms(v, x)
        }
    };
    let max = |v: &[u64]| v.last().map_or(f64::NAN, |&m| m as f64 / 1000.0);
    let mut r = rep(report);
    r.num("resumed", resumed);
    r.num("resume_failures", failed);
    r.float("resume_wall_s", wall);
    r.float("resume_p50_ms", q(&resume_lat, 0.5));
    r.float("resume_p99_ms", q(&resume_lat, 0.99));
    r.float("resume_max_ms", max(&resume_lat));
    r.float("reconnect_p50_ms", q(&reconnect_lat, 0.5));
    r.float("reconnect_p99_ms", q(&reconnect_lat, 0.99));
    r.float("reconnect_max_ms", max(&reconnect_lat));
    r.num("resume_h_match", h_ok);
    r.num("resume_h_mismatch", h_bad);
    r.num("resume_tls_resumed", tls_resumed);
    r.line(format!(
        "resume: {n} sessions chosen to drop at once (socket closed, no </stream:stream>) and \
         resume: {resumed} resumed, {failed} failed in {wall:.2} s ({} reconnecting at most); \
         {tls_resumed} of the reconnections resumed their TLS session",
        args.login_concurrency
    ));
    if resumed > 0 {
        r.line(format!(
        "  <resume/> → <resumed/> p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
         TCP connect → <resumed/> (TLS, SASL, restart, resume) p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct_ms(&resume_lat, 0.5),
        pct_ms(&resume_lat, 0.99),
        max(&resume_lat),
        pct_ms(&reconnect_lat, 0.5),
        pct_ms(&reconnect_lat, 0.99),
        max(&reconnect_lat),
    ));
    }
    if h_bad > 0 {
        r.line(format!(
            "  <resumed h/> differed from our count of stanzas sent on {h_bad} of {resumed} sessions"
        ));
    }
    for (step, (k, detail)) in &failures {
        r.line(format!("  resume failed at {step}: {k} (e.g. {detail})"));
        r.num(&format!("resume_fail_{step}"), k);
    }
    if got < n {
        r.line(format!(
            "  {} resumptions did not report within 120 s",
            n - got
        ));
    }
    if let (Some(b), Some(k)) = (rss_base, pid.and_then(stats::rss_kib)) {
        r.num("rss_after_resume_kib", k);
        r.line(format!(
            "  server RSS after the resumptions {:.1} MiB (+{:.1} MiB over the baseline)",
            k as f64 / 1024.0,
            (k as f64 - b as f64) / 1024.0
        ));
    }
}

/// Creates bench0..bench{A-1} by XEP-0077 in-band registration.
async fn register_all(
    args: &Args,
    target: &Arc<Target>,
    report: &SharedReport,
) -> Result<(), String> {
    let t0 = Instant::now();
    let sem = Arc::new(Semaphore::new(args.register_concurrency.max(1)));
    let mut handles = Vec::with_capacity(args.accounts);
    for i in 0..args.accounts {
        let sem = sem.clone();
        let target = target.clone();
        let prefix = args.prefix.clone();
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let user = format!("{prefix}{i}");
            match tokio::time::timeout(Duration::from_secs(60), xmpp::register(&target, &user))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(Failure {
                    step: Step::Timeout,
                    detail: "registration took over 60 s".into(),
                }),
            }
        }));
    }
    let (mut created, mut existed, mut failed) = (0, 0, 0);
    let mut example = String::new();
    for h in handles {
        match h.await {
            Ok(Ok(Registered::Created)) => created += 1,
            Ok(Ok(Registered::Existed)) => existed += 1,
            Ok(Err(f)) => {
                failed += 1;
                if example.is_empty() {
                    example = format!("{}: {}", f.step.name(), f.detail);
                }
            }
            Err(e) => {
                failed += 1;
                example = e.to_string();
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let mut r = rep(report);
    r.num("registered", created);
    r.num("register_existed", existed);
    r.num("register_failed", failed);
    r.line(format!(
        "register: {created} created, {existed} existed, {failed} failed in {wall:.1} s ({:.0}/s){}",
        (created + existed) as f64 / wall,
        if example.is_empty() {
            String::new()
        } else {
            format!(" — e.g. {example}")
        }
    ));
    if failed > 0 && created + existed == 0 {
        return Err("in-band registration failed for every account".into());
    }
    Ok(())
}

/// Closes a stream politely: `</stream:stream>`, wait for the server's, TLS close_notify.
pub async fn close_stream<W: tokio::io::AsyncWrite + Unpin>(wr: &mut W) {
    let _ = wr.write_all(b"</stream:stream>").await;
    let _ = wr.flush().await;
}

enum RateSpec {
    Saturate,
    Fixed(u64),
    HalfSaturation,
}

fn chat_specs(args: &Args) -> Result<Vec<RateSpec>, String> {
    let Some(list) = &args.rates else {
        return Ok(vec![if args.saturate || args.rate == 0 {
            RateSpec::Saturate
        } else {
            RateSpec::Fixed(args.rate)
        }]);
    };
    list.split(',')
        .map(|s| match s.trim() {
            "sat" | "0" => Ok(RateSpec::Saturate),
            "halfsat" => Ok(RateSpec::HalfSaturation),
            n => n
                .parse()
                .map(RateSpec::Fixed)
                .map_err(|_| format!("--rates: '{n}' is not a rate, 'sat' or 'halfsat'")),
        })
        .collect()
}

struct ChatCtx<'a> {
    args: &'a Args,
    jids: &'a [Option<String>],
    cmd_tx: &'a watch::Sender<Cmd>,
    counters: &'a Counters,
    hist: &'a LatencyHistogram,
    pid: Option<u32>,
    peer_pid: Option<u32>,
    tck: u64,
}

/// Stream management and carbons counters, to report a chat run's share.
struct ExtraCounts {
    requests: u64,
    acks: u64,
    carbons_received: u64,
    carbons_sent: u64,
}

impl ExtraCounts {
    fn of(c: &Counters) -> ExtraCounts {
        ExtraCounts {
            requests: c.sm_requests.load(Relaxed),
            acks: c.sm_acks_sent.load(Relaxed),
            carbons_received: c.carbons_received.load(Relaxed),
            carbons_sent: c.carbons_sent.load(Relaxed),
        }
    }

    fn minus(&self, before: &ExtraCounts) -> ExtraCounts {
        ExtraCounts {
            requests: self.requests - before.requests,
            acks: self.acks - before.acks,
            carbons_received: self.carbons_received - before.carbons_received,
            carbons_sent: self.carbons_sent - before.carbons_sent,
        }
    }
}

struct ChatResult {
    delivered_per_s: f64,
    json: String,
}

/// One chat run (rate 0 = saturate); prints its summary and returns its JSON object.
async fn chat_run(c: &ChatCtx<'_>, rate: u64, report: &SharedReport) -> Option<ChatResult> {
    let args = c.args;
    let saturate = rate == 0;
    let plan = chat::ChatPlan::build(
        c.jids,
        args.accounts,
        args.pairs,
        rate,
        args.window,
        args.per_write,
        Duration::from_secs(args.duration),
        args.body,
    );
    let dirs = plan.directions();
    if dirs == 0 {
        rep(report).line("chat: no pairs of distinct accounts could be formed".into());
        return None;
    }
    let plan = Arc::new(plan);
    c.counters.reset_chat();
    c.hist.reset();
    let extras0 = ExtraCounts::of(c.counters);
    let _ = c.cmd_tx.send(Cmd::Chat(plan.clone()));
    // Every sender registers before the first send is due (plan.start is 200 ms
    // away); CPU is sampled over exactly the measured window, from that start
    // to the last answer (or the end of the grace period).
    tokio::time::sleep_until(plan.start.into()).await;
    let c0 = c.pid.and_then(|p| stats::cpu_ticks(Some(p)));
    let p0 = c.peer_pid.and_then(|p| stats::cpu_ticks(Some(p)));
    let s0 = stats::cpu_ticks(None);
    let m0 = stats::machine_busy_ticks();
    tokio::time::sleep_until(plan.send_end.into()).await;
    // Wait for the stragglers, at most --grace s.
    let grace_end = Instant::now() + Duration::from_secs(args.grace);
    loop {
        let sent = c.counters.sent.load(Relaxed);
        let got = c.counters.delivered.load(Relaxed) + c.counters.bounced.load(Relaxed);
        let writing = c.counters.senders_active.load(Relaxed) > 0;
        if (!writing && got >= sent) || Instant::now() >= grace_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let end = Instant::now();
    let c1 = c.pid.and_then(|p| stats::cpu_ticks(Some(p)));
    let p1 = c.peer_pid.and_then(|p| stats::cpu_ticks(Some(p)));
    let s1 = stats::cpu_ticks(None);
    let m1 = stats::machine_busy_ticks();
    let _ = c.cmd_tx.send(Cmd::Hold);
    let extras = ExtraCounts::of(c.counters).minus(&extras0);
    let wall = (end - plan.start).as_secs_f64();
    let send_wall = (plan.send_end - plan.start).as_secs_f64();
    let sent = c.counters.sent.load(Relaxed);
    let delivered = c.counters.delivered.load(Relaxed);
    let bounced = c.counters.bounced.load(Relaxed);
    let duplicates = c.counters.duplicates.load(Relaxed);
    let stale = c.counters.stale.load(Relaxed);
    let lost = sent.saturating_sub(delivered + bounced);
    // Received per second of the receive window: from the start to the last
    // delivery (not the send window: deliveries in the grace period count).
    let recv_wall = (c.counters.last_delivery_us.load(Relaxed) as f64 / 1e6).max(1e-3);
    let received_per_s = delivered as f64 / recv_wall;
    let hist = c.hist;
    let mut j = Report::default();
    let mut lines = Vec::new();
    let mode = if saturate {
        format!("saturate, window {} per direction", args.window)
    } else {
        format!("paced {rate} msg/s")
    };
    j.str("mode", if saturate { "saturate" } else { "paced" });
    j.num("pairs", dirs / 2);
    j.num("rate_target", rate);
    if saturate {
        j.num("window", args.window);
    }
    j.num("stanzas_per_write", args.per_write);
    j.num("duration_s", args.duration);
    j.num("sent", sent);
    j.num("delivered", delivered);
    j.num("bounced", bounced);
    j.num("lost", lost);
    j.num("duplicates", duplicates);
    j.num("stale", stale);
    j.float("sent_per_s", sent as f64 / send_wall);
    j.float("receive_window_s", recv_wall);
    j.float("received_per_s", received_per_s);
    let q = |x: f64| hist.quantile(x) as f64 / 1000.0;
    j.float("lat_p50_ms", q(0.5));
    j.float("lat_p99_ms", q(0.99));
    j.float("lat_p999_ms", q(0.999));
    j.float("lat_max_ms", hist.max() as f64 / 1000.0);
    lines.push(format!(
        "chat ({mode}, {} stanza(s) per write, {} pairs both ways, {} s): sent {sent} ({:.0}/s), \
         received {delivered} ({received_per_s:.0}/s over {recv_wall:.2} s), bounced {bounced}, \
         lost {lost}, duplicates {duplicates}, stale {stale}",
        args.per_write,
        dirs / 2,
        args.duration,
        sent as f64 / send_wall,
    ));
    if args.sm {
        j.num("sm_requests_received", extras.requests);
        j.num("sm_acks_sent", extras.acks);
        lines.push(format!(
            "  stream management: {} <r/> received, {} <a/> sent ({:.2} per delivered message)",
            extras.requests,
            extras.acks,
            extras.acks as f64 / delivered.max(1) as f64
        ));
    }
    if args.carbons {
        j.num(
            "carbons_copies",
            extras.carbons_received + extras.carbons_sent,
        );
        j.num("carbons_copies_received", extras.carbons_received);
        j.num("carbons_copies_sent", extras.carbons_sent);
        lines.push(format!(
            "  carbons: {} copies received ({} <received/>, {} <sent/>), apart from the deliveries",
            extras.carbons_received + extras.carbons_sent,
            extras.carbons_received,
            extras.carbons_sent
        ));
    }
    if !saturate {
        let scheduled = plan.scheduled();
        let late = c.counters.late_sends.load(Relaxed);
        let max_late = c.counters.max_lateness_us.load(Relaxed) as f64 / 1000.0;
        j.num("scheduled", scheduled);
        j.num("late_sends", late);
        j.float("sender_max_late_ms", max_late);
        if late > 0 || sent < scheduled {
            lines.push(format!(
                "  SENDER FELL BEHIND its schedule: {late} of {sent} messages written more than \
                 {} ms late (up to {max_late:.1} ms); {sent} of {scheduled} scheduled were sent",
                chat::LATE.as_millis()
            ));
        }
    } else if received_per_s > 0.0 {
        // Little's law: with `window` in flight per direction, the mean latency
        // is in-flight / throughput, whatever the server does.
        let little_ms = (args.window * dirs as u64) as f64 / received_per_s * 1000.0;
        j.float("little_latency_ms", little_ms);
        lines.push(format!(
            "  at saturation latency is window / throughput (Little's law): {little_ms:.2} ms mean; \
             only the paced runs' latencies say something of their own"
        ));
    }
    lines.push(format!(
        "  latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms{}",
        q(0.5),
        q(0.99),
        q(0.999),
        hist.max() as f64 / 1000.0,
        if saturate {
            ""
        } else {
            " (from the scheduled send time)"
        }
    ));
    if let (Some(a), Some(b)) = (c0, c1) {
        let us = (b - a) as f64 * 1e6 / c.tck as f64;
        let per = us / (delivered + bounced).max(1) as f64;
        j.float("server_cpu_us_per_msg", per);
        j.float("server_cpu_util", us / 1e6 / wall);
        lines.push(format!(
            "  server CPU {:.2} s over {wall:.1} s ({:.0}% of one core) = {per:.1} µs per delivered message",
            us / 1e6,
            us / 1e6 / wall * 100.0
        ));
    }
    if let (Some(a), Some(b)) = (p0, p1) {
        let us = (b - a) as f64 * 1e6 / c.tck as f64;
        j.float("peer_cpu_us_per_msg", us / delivered.max(1) as f64);
        j.float("peer_cpu_util", us / 1e6 / wall);
        lines.push(format!(
            "  peer server CPU {:.2} s ({:.0}% of one core) = {:.1} µs per delivered message",
            us / 1e6,
            us / 1e6 / wall * 100.0,
            us / delivered.max(1) as f64
        ));
    }
    if let (Some(a), Some(b)) = (s0, s1) {
        let s = (b - a) as f64 / c.tck as f64;
        j.float("bench_cpu_util", s / wall);
        lines.push(format!(
            "  bench tool CPU {s:.2} s ({:.0}% of one core)",
            s / wall * 100.0
        ));
    }
    if let (Some(a), Some(b), Some(sa), Some(sb)) = (m0, m1, s0, s1) {
        let server = match (c0, c1) {
            (Some(x), Some(y)) => y - x,
            _ => 0,
        } + match (p0, p1) {
            (Some(x), Some(y)) => y - x,
            _ => 0,
        };
        let other = (b - a).saturating_sub(server + (sb - sa)) as f64 / c.tck as f64;
        j.float("other_cpu_util", other / wall);
        let busy = (b - a) as f64 / c.tck as f64 / wall;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        j.float("machine_cpu_util", busy);
        if busy > 0.9 * cores {
            lines.push(format!(
                "  note: the machine was CPU-bound ({busy:.2} of {cores} cores busy): this rate is a \
                 limit of server + tool together"
            ));
        }
        if other / wall > 0.05 {
            lines.push(format!(
                "  WARNING: other processes used {:.0}% of a core during this run",
                other / wall * 100.0
            ));
        }
    }
    let mut r = rep(report);
    for l in lines {
        r.line(l);
    }
    Some(ChatResult {
        delivered_per_s: received_per_s,
        json: j.json(),
    })
}
