//! Entity Capabilities (XEP-0115) of the server itself, as a stream
//! feature (§6.3): clients learn what the server supports from the
//! `<c/>` in its stream features and skip the disco#info query when they
//! have seen that `ver` before.
//!
//! The verification string is computed (§5.1) from the server's own
//! disco#info answer (`disco::server_info`: its identity, every
//! feature's disco features, and the XEP-0157 contact form when one is
//! configured), once, on the first stream that asks: the features and
//! the configuration do not change while the server runs.

use std::sync::OnceLock;

use base64::Engine;
use sha1::{Digest, Sha1};

use super::disco::NS_INFO;
use super::NS_DATA;
use crate::feature::{Disco, Feature, StreamPhase};
use crate::server::Server;
use crate::xml::Element;

/// The capabilities namespace (and its disco feature).
pub const NS: &str = "http://jabber.org/protocol/caps";
/// Identifies the software (§4: a URL about it).
pub const NODE: &str = "https://waxwing.im";

/// The caps feature: the stream feature, its `ver` cached.
#[derive(Debug, Default)]
pub struct Caps {
    ver: OnceLock<String>,
}

impl Caps {
    /// The server's verification string.
    pub fn ver(&self, server: &Server) -> &str {
        self.ver
            .get_or_init(|| verification_string(&super::disco::server_info(server)))
    }
}

impl Caps {
    /// The disco node whose info is the server's (`node#ver`, §6.2).
    pub fn node(&self, server: &Server) -> String {
        format!("{NODE}#{}", self.ver(server))
    }
}

impl Feature for Caps {
    fn name(&self) -> &'static str {
        "caps"
    }

    fn xeps(&self) -> &'static [u16] {
        &[115]
    }

    fn disco(&self) -> Disco {
        Disco {
            server: &[NS],
            account: &[],
        }
    }

    fn stream_feature(&self, server: &Server, _phase: StreamPhase) -> Option<Element> {
        Some(
            Element::new("c", NS)
                .with_attr("hash", "sha-1")
                .with_attr("node", NODE)
                .with_attr("ver", self.ver(server)),
        )
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// §5.1: the SHA-1 verification string of a disco#info `<query/>`.
pub fn verification_string(info: &Element) -> String {
    let digest = Sha1::digest(verification_input(info).as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// The string S of §5.1 that is hashed. Sorting is by octets (i;octet),
/// which is what `str`'s ordering is.
pub fn verification_input(info: &Element) -> String {
    let mut s = String::new();
    let mut identities: Vec<String> = info
        .children()
        .filter(|c| c.is("identity", NS_INFO))
        .map(|i| {
            format!(
                "{}/{}/{}/{}",
                i.attr("category").unwrap_or_default(),
                i.attr("type").unwrap_or_default(),
                i.attr("xml:lang").unwrap_or_default(),
                i.attr("name").unwrap_or_default()
            )
        })
        .collect();
    identities.sort_unstable();
    for i in identities {
        s.push_str(&i);
        s.push('<');
    }
    let mut features: Vec<&str> = info
        .children()
        .filter(|c| c.is("feature", NS_INFO))
        .filter_map(|f| f.attr("var"))
        .collect();
    features.sort_unstable();
    for f in features {
        s.push_str(f);
        s.push('<');
    }
    // XEP-0128 forms, by FORM_TYPE; a form without one is not hashed
    // (§5.4 has the receiver ignore it).
    let mut forms: Vec<(String, &Element)> = info
        .children()
        .filter(|c| c.is("x", NS_DATA))
        .filter_map(|x| Some((form_type(x)?, x)))
        .collect();
    forms.sort_by(|a, b| a.0.cmp(&b.0));
    for (form_type, form) in forms {
        s.push_str(&form_type);
        s.push('<');
        let mut fields: Vec<(&str, Vec<String>)> = form
            .children()
            .filter(|c| c.is("field", NS_DATA))
            .filter_map(|f| Some((f.attr("var")?, f)))
            .filter(|(var, _)| *var != "FORM_TYPE")
            .map(|(var, f)| {
                let mut values: Vec<String> = f
                    .children()
                    .filter(|v| v.is("value", NS_DATA))
                    .map(Element::text)
                    .collect();
                values.sort_unstable();
                (var, values)
            })
            .collect();
        fields.sort_by(|a, b| a.0.cmp(b.0));
        for (var, values) in fields {
            s.push_str(var);
            s.push('<');
            for v in values {
                s.push_str(&v);
                s.push('<');
            }
        }
    }
    s
}

/// The value of a form's FORM_TYPE field.
fn form_type(form: &Element) -> Option<String> {
    form.children()
        .filter(|c| c.is("field", NS_DATA))
        .find(|f| f.attr("var") == Some("FORM_TYPE"))?
        .get_child("value", NS_DATA)
        .map(Element::text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        crate::modules::xml_from_storage(xml, 16)
            .and_then(|v| v.into_iter().next())
            .expect("one element")
    }

    /// XEP-0115 §5.2.
    #[test]
    fn simple_example() {
        let q = parse(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='client' name='Exodus 0.9.1' type='pc'/>\
             <feature var='http://jabber.org/protocol/caps'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='http://jabber.org/protocol/muc'/>\
             </query>",
        );
        assert_eq!(
            verification_input(&q),
            "client/pc//Exodus 0.9.1<http://jabber.org/protocol/caps<\
             http://jabber.org/protocol/disco#info<http://jabber.org/protocol/disco#items<\
             http://jabber.org/protocol/muc<"
        );
        assert_eq!(verification_string(&q), "QgayPKawpkPSDYmwT/WM94uAlu0=");
    }

    /// XEP-0115 §5.3: two identities with languages, a XEP-0128 form;
    /// elements in another order than the sorted one.
    #[test]
    fn complex_example() {
        let q = parse(
            "<query xmlns='http://jabber.org/protocol/disco#info' node='http://psi-im.org#q07IKJEyjvHSyhy//CH0CxmKi8w='>\
             <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
             <identity xml:lang='el' category='client' name='\u{3a8} 0.11' type='pc'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='http://jabber.org/protocol/caps'/>\
             <feature var='http://jabber.org/protocol/muc'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <x xmlns='jabber:x:data' type='result'>\
               <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
               <field var='software_version'><value>0.11</value></field>\
               <field var='ip_version' type='text-multi'><value>ipv6</value><value>ipv4</value></field>\
               <field var='os'><value>Mac</value></field>\
               <field var='os_version'><value>10.5.1</value></field>\
               <field var='software'><value>Psi</value></field>\
             </x>\
             </query>",
        );
        assert_eq!(verification_string(&q), "q07IKJEyjvHSyhy//CH0CxmKi8w=");
    }

    /// A form without FORM_TYPE is not part of the hash.
    #[test]
    fn forms_without_form_type_are_left_out() {
        let bare = "<query xmlns='http://jabber.org/protocol/disco#info'>\
                    <identity category='server' type='im' name='Waxwing'/>\
                    <feature var='a'/></query>";
        let with_form = "<query xmlns='http://jabber.org/protocol/disco#info'>\
                    <identity category='server' type='im' name='Waxwing'/>\
                    <feature var='a'/><x xmlns='jabber:x:data' type='result'>\
                    <field var='x'><value>1</value></field></x></query>";
        assert_eq!(
            verification_input(&parse(bare)),
            verification_input(&parse(with_form))
        );
        assert_eq!(verification_input(&parse(bare)), "server/im//Waxwing<a<");
    }

    /// §5.4 has a receiver reject a disco#info with a feature listed twice;
    /// the default features never repeat one.
    #[test]
    fn server_features_are_unique() {
        let features = crate::feature::Features::new(crate::modules::default_features()).unwrap();
        let mut all: Vec<&str> = features.server_disco().collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a disco feature is listed twice");
        assert!(all.contains(&NS));
    }
}
