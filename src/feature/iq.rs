//! An IQ get/set as a feature's handler sees it, and what it answers.

use std::future::Future;
use std::pin::Pin;

use jid::Jid;

use crate::server::Server;
use crate::stanza::StanzaErrorCondition;
use crate::xml::Element;

/// Who an IQ is addressed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IqTarget {
    /// The server's own domain (or an IQ with no `to`, for server-only namespaces).
    Server,
    /// A user's bare JID; `own` when the requester is that user.
    Account { own: bool },
}

/// One IQ request as a module sees it.
pub struct IqRequest<'a> {
    pub server: &'a Server,
    pub iq: &'a Element,
    /// The single child of the IQ.
    pub payload: &'a Element,
    /// The requester: a local session's full JID, or an address at an
    /// external component (which only reaches the public services).
    pub from: &'a Jid,
    pub target: IqTarget,
    /// True for type='set', false for 'get'.
    pub is_set: bool,
    /// Set by a handler to end the requesting session with this stream
    /// error once the reply is written (an account cancelled in-band).
    pub end_session: &'a std::sync::OnceLock<crate::stanza::StreamErrorCondition>,
}

/// A module's answer: a result payload (or none), or a stanza error.
pub type IqOutcome = Result<Option<Element>, StanzaErrorCondition>;

/// An IQ handler's pending answer (handlers may wait on storage).
pub type IqFuture<'a> = Pin<Box<dyn Future<Output = IqOutcome> + Send + 'a>>;

/// Wraps a handler that needs no waiting.
pub fn ready(outcome: IqOutcome) -> IqFuture<'static> {
    Box::pin(std::future::ready(outcome))
}

impl IqRequest<'_> {
    /// For queries only the server answers with a get (version, time):
    /// the error to return otherwise.
    pub fn require_server_get(&self) -> Result<(), StanzaErrorCondition> {
        if self.target != IqTarget::Server {
            Err(StanzaErrorCondition::ServiceUnavailable)
        } else if self.is_set {
            Err(StanzaErrorCondition::NotAllowed)
        } else {
            Ok(())
        }
    }
}
