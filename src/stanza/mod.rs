//! Stanza vocabulary: the three stanza kinds, RFC 6120 stream-error and
//! stanza-error conditions as closed enums, and error replies.

pub mod bare;

use crate::xml::{Element, NS_CLIENT, NS_STREAMS};

/// Namespace of stream error conditions (RFC 6120 §4.9.3).
pub const NS_STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// Namespace of stanza error conditions (RFC 6120 §8.3.3).
pub const NS_STANZA_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// The kind of a top-level stanza, by element name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StanzaKind {
    Message,
    Presence,
    Iq,
}

impl StanzaKind {
    /// The kind of `el` if it is a stanza in namespace `ns` (jabber:client …).
    pub fn of(el: &Element, ns: &str) -> Option<StanzaKind> {
        if el.ns() != ns {
            return None;
        }
        match el.name() {
            "message" => Some(StanzaKind::Message),
            "presence" => Some(StanzaKind::Presence),
            "iq" => Some(StanzaKind::Iq),
            _ => None,
        }
    }
}

macro_rules! conditions {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $wire:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),* }
        impl $name {
            /// The condition's element name on the wire.
            pub fn wire_name(self) -> &'static str {
                match self { $($name::$variant => $wire),* }
            }
            /// The condition named `s`, if it is one.
            pub fn from_wire(s: &str) -> Option<Self> {
                match s { $($wire => Some($name::$variant),)* _ => None }
            }
        }
    };
}

conditions!(
    /// Stream error conditions (RFC 6120 §4.9.3).
    StreamErrorCondition {
        BadFormat => "bad-format",
        BadNamespacePrefix => "bad-namespace-prefix",
        Conflict => "conflict",
        ConnectionTimeout => "connection-timeout",
        HostGone => "host-gone",
        HostUnknown => "host-unknown",
        ImproperAddressing => "improper-addressing",
        InternalServerError => "internal-server-error",
        InvalidFrom => "invalid-from",
        InvalidNamespace => "invalid-namespace",
        InvalidXml => "invalid-xml",
        NotAuthorized => "not-authorized",
        NotWellFormed => "not-well-formed",
        PolicyViolation => "policy-violation",
        RemoteConnectionFailed => "remote-connection-failed",
        Reset => "reset",
        ResourceConstraint => "resource-constraint",
        RestrictedXml => "restricted-xml",
        SeeOtherHost => "see-other-host",
        SystemShutdown => "system-shutdown",
        UndefinedCondition => "undefined-condition",
        UnsupportedEncoding => "unsupported-encoding",
        UnsupportedFeature => "unsupported-feature",
        UnsupportedStanzaType => "unsupported-stanza-type",
        UnsupportedVersion => "unsupported-version",
    }
);

conditions!(
    /// Stanza error conditions (RFC 6120 §8.3.3).
    StanzaErrorCondition {
        BadRequest => "bad-request",
        Conflict => "conflict",
        FeatureNotImplemented => "feature-not-implemented",
        Forbidden => "forbidden",
        Gone => "gone",
        InternalServerError => "internal-server-error",
        ItemNotFound => "item-not-found",
        JidMalformed => "jid-malformed",
        NotAcceptable => "not-acceptable",
        NotAllowed => "not-allowed",
        NotAuthorized => "not-authorized",
        PolicyViolation => "policy-violation",
        RecipientUnavailable => "recipient-unavailable",
        Redirect => "redirect",
        RegistrationRequired => "registration-required",
        RemoteServerNotFound => "remote-server-not-found",
        RemoteServerTimeout => "remote-server-timeout",
        ResourceConstraint => "resource-constraint",
        ServiceUnavailable => "service-unavailable",
        SubscriptionRequired => "subscription-required",
        UndefinedCondition => "undefined-condition",
        UnexpectedRequest => "unexpected-request",
    }
);

impl StanzaErrorCondition {
    /// The error `type` RFC 6120 §8.3.3 recommends for the condition.
    pub fn error_type(self) -> &'static str {
        use StanzaErrorCondition::*;
        match self {
            BadRequest | JidMalformed | NotAcceptable | PolicyViolation | Redirect
            | UnexpectedRequest => "modify",
            Conflict | FeatureNotImplemented | ItemNotFound | NotAllowed | ServiceUnavailable => {
                "cancel"
            }
            Forbidden | NotAuthorized | RegistrationRequired | SubscriptionRequired => "auth",
            InternalServerError | RecipientUnavailable | RemoteServerTimeout
            | ResourceConstraint => "wait",
            Gone | RemoteServerNotFound | UndefinedCondition => "cancel",
        }
    }
}

/// `<stream:error><condition/><text/></stream:error>`.
pub fn stream_error(cond: StreamErrorCondition, text: Option<&str>) -> Element {
    let mut e = Element::new("error", NS_STREAMS)
        .with_child(Element::new(cond.wire_name(), NS_STREAM_ERRORS));
    if let Some(t) = text {
        e.append_child(
            Element::new("text", NS_STREAM_ERRORS)
                .with_attr("xml:lang", "en")
                .with_text(t),
        );
    }
    e
}

/// The error reply to `stanza` (RFC 6120 §8.3.1): same kind and id, `to` and
/// `from` swapped, `type='error'`, and an `<error/>` with the condition.
/// Returns None for stanzas that must never be answered with an error
/// (errors themselves), so error loops cannot start.
pub fn error_reply(
    stanza: &Element,
    cond: StanzaErrorCondition,
    text: Option<&str>,
) -> Option<Element> {
    if stanza.attr("type") == Some("error") {
        return None;
    }
    let mut reply = Element::new(stanza.name(), stanza.ns());
    if let Some(id) = stanza.attr("id") {
        reply.set_attr("id", id);
    }
    if let Some(from) = stanza.attr("from") {
        reply.set_attr("to", from);
    }
    if let Some(to) = stanza.attr("to") {
        reply.set_attr("from", to);
    }
    reply.set_attr("type", "error");
    // For messages and presence the original payload helps the sender see
    // what failed (RFC 6120 §8.3.1 allows including it); IQ payloads are
    // left out as they may be large.
    if stanza.name() != "iq" {
        for child in stanza.children() {
            reply.append_child(child.clone());
        }
    }
    let mut error = Element::new("error", stanza.ns()).with_attr("type", cond.error_type());
    error.append_child(Element::new(cond.wire_name(), NS_STANZA_ERRORS));
    if let Some(t) = text {
        error.append_child(
            Element::new("text", NS_STANZA_ERRORS)
                .with_attr("xml:lang", "en")
                .with_text(t),
        );
    }
    reply.append_child(error);
    Some(reply)
}

/// A stanza error as a feature returns it: the condition, and optionally
/// a human-readable text and an application-specific condition element
/// (RFC 6120 §8.3.2; PubSub and MUC use both).
#[derive(Debug, Clone, PartialEq)]
pub struct StanzaError {
    pub condition: StanzaErrorCondition,
    pub text: Option<String>,
    pub app: Option<Element>,
}

impl StanzaError {
    /// The condition with a text for the user.
    pub fn with_text(condition: StanzaErrorCondition, text: impl Into<String>) -> StanzaError {
        StanzaError {
            condition,
            text: Some(text.into()),
            app: None,
        }
    }

    /// Adds an application-specific condition element.
    pub fn with_app(mut self, app: Element) -> StanzaError {
        self.app = Some(app);
        self
    }

    /// The error reply to `stanza` carrying this error (None for an error,
    /// which is never answered).
    pub fn reply_to(&self, stanza: &Element) -> Option<Element> {
        let mut reply = error_reply(stanza, self.condition, self.text.as_deref())?;
        if let Some(app) = &self.app {
            if let Some(err) = reply.get_child_mut("error", stanza.ns()) {
                err.append_child(app.clone());
            }
        }
        Some(reply)
    }
}

impl From<StanzaErrorCondition> for StanzaError {
    fn from(condition: StanzaErrorCondition) -> StanzaError {
        StanzaError {
            condition,
            text: None,
            app: None,
        }
    }
}

/// An IQ result for `iq` with an optional payload.
pub fn iq_result(iq: &Element, payload: Option<Element>) -> Element {
    let mut reply = Element::new("iq", NS_CLIENT).with_attr("type", "result");
    if let Some(id) = iq.attr("id") {
        reply.set_attr("id", id);
    }
    if let Some(from) = iq.attr("from") {
        reply.set_attr("to", from);
    }
    if let Some(to) = iq.attr("to") {
        reply.set_attr("from", to);
    }
    if let Some(p) = payload {
        reply.append_child(p);
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_round_trip() {
        assert_eq!(
            StreamErrorCondition::HostUnknown.wire_name(),
            "host-unknown"
        );
        assert_eq!(
            StanzaErrorCondition::from_wire("jid-malformed"),
            Some(StanzaErrorCondition::JidMalformed)
        );
        assert_eq!(StanzaErrorCondition::from_wire("nope"), None);
    }

    #[test]
    fn a_stanza_error_carries_its_text_and_application_condition() {
        let iq = Element::new("iq", NS_CLIENT)
            .with_attr("from", "a@x/r")
            .with_attr("to", "x")
            .with_attr("type", "set")
            .with_attr("id", "1");
        let e = StanzaError::with_text(StanzaErrorCondition::Conflict, "taken")
            .with_app(Element::new("node-exists", "urn:example:app"));
        let r = e.reply_to(&iq).unwrap();
        let err = r.get_child("error", NS_CLIENT).unwrap();
        assert!(err.get_child("conflict", NS_STANZA_ERRORS).is_some());
        assert_eq!(
            err.get_child("text", NS_STANZA_ERRORS).map(|t| t.text()),
            Some("taken".to_string())
        );
        assert!(err.get_child("node-exists", "urn:example:app").is_some());
    }

    #[test]
    fn error_reply_swaps_addresses_and_never_answers_errors() {
        let m = Element::new("message", NS_CLIENT)
            .with_attr("from", "a@x/r")
            .with_attr("to", "b@x")
            .with_attr("id", "1");
        let r = error_reply(&m, StanzaErrorCondition::ServiceUnavailable, None).unwrap();
        assert_eq!(r.attr("to"), Some("a@x/r"));
        assert_eq!(r.attr("from"), Some("b@x"));
        assert_eq!(r.attr("type"), Some("error"));
        let e = r.get_child("error", NS_CLIENT).unwrap();
        assert_eq!(e.attr("type"), Some("cancel"));
        assert!(e
            .get_child("service-unavailable", NS_STANZA_ERRORS)
            .is_some());
        assert!(error_reply(&r, StanzaErrorCondition::BadRequest, None).is_none());
    }
}
