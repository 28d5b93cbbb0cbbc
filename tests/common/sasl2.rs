//! SASL2 (XEP-0388) client steps for the raw test client: SCRAM and FAST
//! `<authenticate/>` with whatever is inlined, and reading what the server
//! answers.

use waxwing::sasl::fast;
use waxwing::sasl::{ChannelBindingType, ScramClient, ScramHash};
use waxwing::xml::Element;

use super::{b64, unb64, Client};

pub const NS_SASL2: &str = "urn:xmpp:sasl:2";
pub const NS_BIND2: &str = "urn:xmpp:bind:0";
pub const NS_FAST: &str = "urn:xmpp:fast:0";
pub const NS_SM: &str = "urn:xmpp:sm:3";
pub const NS_CB: &str = "urn:xmpp:sasl-cb:0";

/// What a SASL2 SCRAM exchange showed.
pub struct ScramOutcome {
    /// `<success/>` or `<failure/>`.
    pub outcome: Element,
    /// The server-first-message, as text.
    pub server_first: String,
}

/// The `<user-agent/>` every test client sends.
pub fn user_agent(id: &str) -> String {
    format!("<user-agent id='{id}'><software>waxwing tests</software><device>loopback</device></user-agent>")
}

/// The `<mechanism/>` texts of an element.
pub fn mechanisms(el: &Element, ns: &str) -> Vec<String> {
    el.children()
        .filter(|c| c.is("mechanism", ns))
        .map(|c| c.text())
        .collect()
}

/// The XEP-0440 channel-binding types in `features`, if advertised.
pub fn cb_types(features: &Element) -> Option<Vec<String>> {
    features.get_child("sasl-channel-binding", NS_CB).map(|cb| {
        cb.children()
            .filter_map(|c| c.attr("type").map(str::to_owned))
            .collect()
    })
}

/// XEP-0474's `h` attribute of a server-first-message.
pub fn downgrade_attr(server_first: &str) -> Option<String> {
    server_first
        .split(',')
        .find_map(|p| p.strip_prefix("h="))
        .map(str::to_owned)
}

impl Client {
    /// SASL2 SCRAM (tls-exporter binding when `plus`), with `inline` XML
    /// inside `<authenticate/>` after the user-agent.
    pub async fn sasl2_scram(
        &mut self,
        hash: ScramHash,
        user: &str,
        pass: &str,
        plus: bool,
        client_id: &str,
        inline: &str,
    ) -> ScramOutcome {
        let cb = plus.then(|| {
            (
                ChannelBindingType::TlsExporter,
                self.tls_exporter().unwrap(),
            )
        });
        let mech = if plus { hash.plus_name() } else { hash.name() };
        let mut client = ScramClient::new(hash, user, pass, cb);
        let first = b64(&client.client_first());
        let ua = user_agent(client_id);
        self.send_str(&format!(
            "<authenticate xmlns='{NS_SASL2}' mechanism='{mech}'><initial-response>{first}</initial-response>{ua}{inline}</authenticate>"
        ))
        .await;
        let challenge = self.next_element().await;
        if !challenge.is("challenge", NS_SASL2) {
            return ScramOutcome {
                outcome: challenge,
                server_first: String::new(),
            };
        }
        let server_first = unb64(&challenge.text());
        let final_msg = client
            .handle_server_first(&server_first)
            .expect("server-first parses");
        self.send_str(&format!(
            "<response xmlns='{NS_SASL2}'>{}</response>",
            b64(&final_msg)
        ))
        .await;
        let outcome = self.next_element().await;
        if outcome.is("success", NS_SASL2) {
            let data = outcome
                .get_child("additional-data", NS_SASL2)
                .expect("SCRAM's server-final in additional-data")
                .text();
            client
                .verify_server_final(&unb64(&data))
                .expect("server signature verifies");
        }
        ScramOutcome {
            outcome,
            server_first: String::from_utf8(server_first).unwrap(),
        }
    }

    /// A FAST login in one message; returns the server's answer.
    #[allow(clippy::too_many_arguments)]
    pub async fn sasl2_fast(
        &mut self,
        mechanism: &str,
        user: &str,
        token: &str,
        cb_data: &[u8],
        client_id: &str,
        count: Option<u32>,
        inline: &str,
    ) -> Element {
        let response = b64(&fast::client_response(user, token, cb_data));
        let ua = user_agent(client_id);
        let count = count.map(|c| format!(" count='{c}'")).unwrap_or_default();
        self.send_str(&format!(
            "<authenticate xmlns='{NS_SASL2}' mechanism='{mechanism}'><initial-response>{response}</initial-response>{ua}<fast xmlns='{NS_FAST}'{count}/>{inline}</authenticate>"
        ))
        .await;
        self.next_element().await
    }
}

/// The token and its expiry in a `<success/>`, if one was issued.
pub fn issued_token(success: &Element) -> Option<String> {
    success
        .get_child("token", NS_FAST)
        .and_then(|t| t.attr("token"))
        .map(str::to_owned)
}

/// `authorization-identifier` of a `<success/>`.
pub fn authorization_identifier(success: &Element) -> String {
    success
        .get_child("authorization-identifier", NS_SASL2)
        .map(|a| a.text())
        .unwrap_or_default()
}
