//! What an s2s stream does with what the peer sends once negotiation is
//! over, whichever side opened it: an incoming stream always, an outgoing
//! one when it is bidirectional (XEP-0288). Dialback requests are answered
//! (`db:result`: the peer asks to send as a domain, checked with that
//! domain's authoritative server; `db:verify`: the peer asks whether we
//! sent a key), and stanzas are routed if their `from` is a domain this
//! stream authenticated and their `to` one of ours (else the stream ends
//! with `invalid-from` / `host-unknown`).

use std::collections::HashSet;

use super::s2s_links::{AuthMethod, LinkGuard};
use super::s2s_out::{self, Verdict};
use super::xmlstream::{End, XmlStream};
use crate::router;
use crate::server::Server;
use crate::stanza::{StanzaErrorCondition, StreamErrorCondition};
use crate::stream::s2s::{self as rules, NS_DIALBACK};
use crate::xml::{Element, NS_STREAMS};

/// The receiving half of one s2s stream.
pub struct Receiving {
    /// The id dialback keys on this stream are computed with: ours on an
    /// incoming stream, the peer's on an outgoing one.
    pub stream_id: String,
    /// Remote domains allowed to send on this stream.
    pub authenticated: HashSet<String>,
    /// This connection's entry in the list `ctl s2s list` shows.
    pub link: LinkGuard,
}

/// A (local, remote) pair a `db:result` just authenticated.
pub type NewPair = (String, String);

impl Receiving {
    pub fn new(stream_id: String, link: LinkGuard) -> Self {
        Receiving {
            stream_id,
            authenticated: HashSet::new(),
            link,
        }
    }

    /// Records `domain` as authenticated on this stream.
    pub fn authenticate(&mut self, domain: String, method: AuthMethod) {
        self.link.authenticated(&domain, method);
        self.authenticated.insert(domain);
    }

    /// Handles one element of a negotiated stream. Returns the domain pair
    /// a `db:result` authenticated, if it did.
    pub async fn element(
        &mut self,
        server: &Server,
        stream: &mut XmlStream,
        el: Element,
    ) -> Result<Option<NewPair>, End> {
        if el.is("result", NS_DIALBACK) && el.attr("type").is_none() {
            return self.dialback_result(server, stream, &el).await;
        }
        if el.is("verify", NS_DIALBACK) && el.attr("type").is_none() {
            dialback_verify(server, stream, &el);
            return Ok(None);
        }
        if el.is("error", NS_STREAMS) {
            tracing::info!(
                condition = stream_error_name(&el),
                "s2s stream error from peer"
            );
            return Err(stream.close_stream().await);
        }
        if el.ns() == NS_DIALBACK || el.ns() == NS_STREAMS {
            // Dialback answers to requests we never made, features again:
            // nothing to do.
            return Ok(None);
        }
        let (from, to) =
            match rules::check_addresses(&el, &self.authenticated, |d| server.is_served_here(d)) {
                Ok(a) => a,
                Err(cond) => return Err(stream.close_with(cond, None).await),
            };
        let el = rules::into_client(el);
        if let Err(cond) = router::route_from_remote(server, &from, to, el).await {
            return Err(stream.close_with(cond, None).await);
        }
        Ok(None)
    }

    /// `<db:result from to>key</db:result>`: the peer asks to send as
    /// `from`; we ask `from`'s authoritative server whether it sent `key`.
    /// Problems that concern only this domain pair are dialback errors
    /// (XEP-0220 §2.4), which leave the stream and its other pairs alone.
    async fn dialback_result(
        &mut self,
        server: &Server,
        stream: &mut XmlStream,
        el: &Element,
    ) -> Result<Option<NewPair>, End> {
        let from = el.attr("from").and_then(rules::domain_of);
        let to = el.attr("to").and_then(rules::domain_of);
        let (Some(from), Some(to)) = (from, to) else {
            return Err(stream
                .close_with(StreamErrorCondition::ImproperAddressing, None)
                .await);
        };
        if !server.is_served_here(&to) {
            stream.write(&rules::dialback_error(
                "result",
                &to,
                &from,
                None,
                StanzaErrorCondition::ItemNotFound,
            ));
            return Ok(None);
        }
        let verdict = if server.is_served_here(&from) {
            // Nobody else speaks for our own domains.
            Verdict::Invalid
        } else {
            let key = el.text();
            s2s_out::verify(server, &to, &from, &self.stream_id, key.trim()).await
        };
        tracing::info!(from, to, answer = verdict.as_str(), "dialback result");
        let answer = match verdict {
            Verdict::Valid => {
                self.authenticate(from.clone(), AuthMethod::Dialback);
                rules::dialback("result", &to, &from, None, Err("valid"))
            }
            Verdict::Invalid => rules::dialback("result", &to, &from, None, Err("invalid")),
            Verdict::Unreachable => rules::dialback_error(
                "result",
                &to,
                &from,
                None,
                StanzaErrorCondition::RemoteServerNotFound,
            ),
            Verdict::TimedOut => rules::dialback_error(
                "result",
                &to,
                &from,
                None,
                StanzaErrorCondition::RemoteServerTimeout,
            ),
        };
        stream.write(&answer);
        Ok((verdict == Verdict::Valid).then_some((to, from)))
    }
}

/// `<db:verify from to id>key</db:verify>`: another server asks whether
/// we (`to`) sent `key` to it (`from`) on its stream `id`.
pub fn dialback_verify(server: &Server, stream: &mut XmlStream, el: &Element) {
    let from = el
        .attr("from")
        .and_then(rules::domain_of)
        .unwrap_or_default();
    let to = el.attr("to").and_then(rules::domain_of).unwrap_or_default();
    let id = el.attr("id").unwrap_or_default();
    if !server.is_served_here(&to) {
        stream.write(&rules::dialback_error(
            "verify",
            &to,
            &from,
            Some(id),
            StanzaErrorCondition::ItemNotFound,
        ));
        return;
    }
    let valid = rules::key_matches(
        &el.text(),
        &rules::dialback_key(&server.dialback_secret, &from, &to, id),
    );
    let answer = if valid { "valid" } else { "invalid" };
    stream.write(&rules::dialback(
        "verify",
        &to,
        &from,
        Some(id),
        Err(answer),
    ));
}

/// The condition a stream error element carries, for logs.
pub fn stream_error_name(el: &Element) -> String {
    el.children()
        .map(|c| c.name().to_string())
        .find(|n| n != "text")
        .unwrap_or_default()
}
