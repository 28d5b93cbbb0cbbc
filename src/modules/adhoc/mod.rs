//! Ad-hoc commands (XEP-0050) on the server's domain: the command list
//! (disco#items of node `http://jabber.org/protocol/commands`, only what
//! the asker may run), `<command/>` IQ sets, and the sessions of
//! multi-stage commands (a form shown, its submission awaited).
//!
//! The commands themselves live in their own files ([`admin`] has the
//! XEP-0133 service administration); this file only keeps the protocol:
//! sessions are bounded per requesting resource (`[admin]
//! max_command_sessions`) and forgotten after `command_session_timeout_secs`,
//! swept lazily on every use and by a periodic task.

pub mod actions;
pub mod admin;
pub mod ctl;
pub mod invite;
pub mod motd;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jid::Jid;

use crate::feature::{Disco, Event, EventKind, Feature, HookFuture, Verdict};
use crate::modules::{IqFuture, IqOutcome, IqRequest, IqTarget, NS_DATA};
use crate::server::Server;
use crate::stanza::{StanzaError, StanzaErrorCondition};
use crate::xml::Element;

pub const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";

/// One command a client may run: what the list shows and who may see it.
pub struct Command {
    pub node: &'static str,
    pub name: &'static str,
    /// Whether `requester` may run it.
    pub allowed: fn(&Server, &Jid) -> bool,
}

/// What a command's stage answers.
pub enum Stage {
    /// Show this form and wait for its submission (status `executing`).
    Form(Element),
    /// Done; optionally with a result form or a note (status `completed`).
    Completed(Option<Element>),
}

/// An open multi-stage command of one requester.
struct Session {
    id: String,
    node: String,
    started: Instant,
}

/// The ad-hoc command feature; its state is the open sessions, keyed by
/// the requester's full JID (a session belongs to one resource, §4.3).
#[derive(Default)]
pub struct AdHoc {
    sessions: Mutex<HashMap<String, Vec<Session>>>,
    /// The hosts' messages of the day, sent at login.
    pub motd: motd::Motd,
}

impl Feature for AdHoc {
    fn name(&self) -> &'static str {
        "adhoc"
    }

    fn xeps(&self) -> &[u16] {
        &[50, 133]
    }

    fn disco(&self) -> Disco {
        Disco {
            server: &[NS_COMMANDS],
            account: &[],
        }
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[NS_COMMANDS]
    }

    fn handle_iq<'a>(&'a self, req: &'a IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(self.answer(req))
    }

    fn subscriptions(&self) -> &'static [(EventKind, i32)] {
        // After offline messages are handed over (order 0).
        &[(EventKind::SessionAvailable, 10)]
    }

    fn on_event<'a>(&'a self, server: &'a Server, event: &'a mut Event<'_>) -> HookFuture<'a> {
        Box::pin(async move {
            if let Event::SessionAvailable { jid, initial: true } = event {
                self.motd.deliver(server, jid).await;
            }
            Verdict::Continue
        })
    }

    fn start(&self, server: &Arc<Server>) {
        // Sweeps sessions of requesters that never came back, so memory
        // does not keep what the lazy per-requester sweep never revisits.
        let weak = Arc::downgrade(server);
        let period = Duration::from_secs(server.config().admin.command_session_timeout_secs.max(1));
        let shutdown = server.shutdown.clone();
        server.background.spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(server) = weak.upgrade() else { return };
                if let Some(me) = server.features.get::<AdHoc>() {
                    me.sweep(timeout(&server));
                }
            }
        });
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn timeout(server: &Server) -> Duration {
    Duration::from_secs(server.config().admin.command_session_timeout_secs)
}

/// A XEP-0050 §4.6 error: a condition with the commands namespace's own
/// element beside it.
fn command_error(condition: StanzaErrorCondition, app: &str) -> StanzaError {
    StanzaError {
        condition,
        text: None,
        app: Some(Element::new(app, NS_COMMANDS)),
    }
}

/// Every command the server offers, in list order.
fn commands() -> impl Iterator<Item = &'static Command> {
    admin::COMMANDS.iter().chain(invite::COMMANDS)
}

/// Runs one stage of `node`, in the file whose command it is.
async fn run(
    server: &Server,
    host: &str,
    node: &str,
    requester: &Jid,
    submitted: Option<&Element>,
) -> Result<Stage, StanzaError> {
    if invite::COMMANDS.iter().any(|c| c.node == node) {
        invite::run(server, node, requester, submitted).await
    } else {
        admin::run(server, host, node, requester, submitted).await
    }
}

/// The `<item/>`s of the command list that `requester` may run.
pub fn command_items(server: &Server, to: &str, requester: &Jid) -> Element {
    let mut q =
        Element::new("query", crate::modules::disco::NS_ITEMS).with_attr("node", NS_COMMANDS);
    for c in commands().filter(|c| (c.allowed)(server, requester)) {
        q.append_child(
            Element::new("item", crate::modules::disco::NS_ITEMS)
                .with_attr("jid", to)
                .with_attr("node", c.node)
                .with_attr("name", c.name),
        );
    }
    q
}

/// disco#info of one command node (§4.2): item-not-found for a command
/// the asker may not run, as if it did not exist.
pub fn command_info(server: &Server, node: &str, requester: &Jid) -> Option<Element> {
    use crate::modules::disco::NS_INFO;
    let c = commands().find(|c| c.node == node && (c.allowed)(server, requester))?;
    Some(
        Element::new("query", NS_INFO)
            .with_attr("node", node)
            .with_child(
                Element::new("identity", NS_INFO)
                    .with_attr("category", "automation")
                    .with_attr("type", "command-node")
                    .with_attr("name", c.name),
            )
            .with_child(Element::new("feature", NS_INFO).with_attr("var", NS_COMMANDS))
            .with_child(Element::new("feature", NS_INFO).with_attr("var", NS_DATA)),
    )
}

impl AdHoc {
    /// Forgets every session older than `timeout`.
    fn sweep(&self, timeout: Duration) {
        let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, list| {
            list.retain(|s| s.started.elapsed() < timeout);
            !list.is_empty()
        });
    }

    /// Opens a session for `requester`, unless it holds as many as it may.
    fn open(&self, server: &Server, requester: &str, node: &str) -> Result<String, StanzaError> {
        let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(requester.to_string()).or_default();
        let limit = timeout(server);
        list.retain(|s| s.started.elapsed() < limit);
        if list.len() >= server.config().admin.max_command_sessions {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::ResourceConstraint,
                "too many unfinished commands; complete or cancel one",
            ));
        }
        let id = format!("{:x}{:08x}", server.next_id(), rand::random::<u32>());
        list.push(Session {
            id: id.clone(),
            node: node.to_string(),
            started: Instant::now(),
        });
        Ok(id)
    }

    /// Ends the session `id` of `requester` on `node`; false when there is
    /// no such live session (unknown, finished, expired or another node's).
    fn close(&self, server: &Server, requester: &str, node: &str, id: &str) -> bool {
        let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = map.get_mut(requester) else {
            return false;
        };
        let limit = timeout(server);
        list.retain(|s| s.started.elapsed() < limit);
        let found = list.iter().position(|s| s.id == id && s.node == node);
        if let Some(i) = found {
            list.swap_remove(i);
        }
        if list.is_empty() {
            map.remove(requester);
        }
        found.is_some()
    }

    /// Open sessions in all (for tests and `ctl` figures).
    pub fn open_sessions(&self) -> usize {
        let map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        map.values().map(Vec::len).sum()
    }

    async fn answer(&self, req: &IqRequest<'_>) -> IqOutcome {
        if req.target != IqTarget::Server {
            return Err(StanzaErrorCondition::ServiceUnavailable.into());
        }
        if !req.is_set || req.payload.name() != "command" {
            return Err(StanzaErrorCondition::BadRequest.into());
        }
        let node = req.payload.attr("node").unwrap_or_default();
        let command = commands()
            .find(|c| c.node == node)
            .ok_or(StanzaErrorCondition::ItemNotFound)?;
        if !(command.allowed)(req.server, req.from) {
            return Err(StanzaErrorCondition::Forbidden.into());
        }
        let action = req.payload.attr("action").unwrap_or("execute");
        if !matches!(action, "execute" | "complete" | "cancel" | "next" | "prev") {
            return Err(command_error(
                StanzaErrorCondition::BadRequest,
                "malformed-action",
            ));
        }
        let requester = req.from.as_str();
        // The host the command is addressed to (the requester's own when
        // the IQ has no `to`): online users and announcements are its.
        let host = req
            .iq
            .attr("to")
            .and_then(|t| Jid::new(t).ok())
            .map(|t| t.domain().as_str().to_string())
            .unwrap_or_else(|| req.from.domain().as_str().to_string());
        let reply = |id: &str, status: &str| {
            Element::new("command", NS_COMMANDS)
                .with_attr("node", node)
                .with_attr("sessionid", id)
                .with_attr("status", status)
        };
        let submitted = req
            .payload
            .get_child("x", NS_DATA)
            .filter(|x| x.attr("type") == Some("submit"));
        let Some(id) = req.payload.attr("sessionid") else {
            // A new run: only `execute` starts one (§4.4).
            if action != "execute" {
                return Err(command_error(
                    StanzaErrorCondition::BadRequest,
                    "bad-action",
                ));
            }
            return match run(req.server, &host, node, req.from, submitted).await? {
                Stage::Completed(note) => {
                    let id = format!("{:x}", req.server.next_id());
                    Ok(Some(with_opt(reply(&id, "completed"), note)))
                }
                Stage::Form(form) => {
                    let id = self.open(req.server, requester, node)?;
                    Ok(Some(
                        reply(&id, "executing")
                            .with_child(
                                Element::new("actions", NS_COMMANDS)
                                    .with_attr("execute", "complete")
                                    .with_child(Element::new("complete", NS_COMMANDS)),
                            )
                            .with_child(form),
                    ))
                }
            };
        };
        // A session goes on only once: it ends whatever happens next.
        if !self.close(req.server, requester, node, id) {
            return Err(command_error(
                StanzaErrorCondition::BadRequest,
                "bad-sessionid",
            ));
        }
        match action {
            "cancel" => Ok(Some(reply(id, "canceled"))),
            // Every command here has one form: nothing before or after it.
            "next" | "prev" => Err(command_error(
                StanzaErrorCondition::BadRequest,
                "bad-action",
            )),
            _ => {
                let form = submitted.ok_or_else(|| {
                    command_error(StanzaErrorCondition::BadRequest, "bad-payload")
                })?;
                match run(req.server, &host, node, req.from, Some(form)).await? {
                    Stage::Completed(note) => Ok(Some(with_opt(reply(id, "completed"), note))),
                    Stage::Form(_) => Err(StanzaErrorCondition::InternalServerError.into()),
                }
            }
        }
    }
}

fn with_opt(mut e: Element, child: Option<Element>) -> Element {
    if let Some(c) = child {
        e.append_child(c);
    }
    e
}
