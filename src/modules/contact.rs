//! Contact Addresses for XMPP Services (XEP-0157): the configured
//! `[contact]` addresses, published as a XEP-0128 extended-information
//! form in the server's disco#info. It has no IQ namespace or disco feature
//! of its own, so it is no `Module`; its XEP is in `IMPLIED_XEPS`.

use super::NS_DATA;
use crate::config::ContactAddresses;
use crate::xml::Element;

/// The FORM_TYPE XEP-0157 registers for server information.
pub const FORM_TYPE: &str = "http://jabber.org/network/serverinfo";

/// The `jabber:x:data` result form with every configured address, or None
/// when none is configured (an empty form would say nothing).
pub fn server_info_form(contact: &ContactAddresses) -> Option<Element> {
    let fields = contact.fields();
    if fields.iter().all(|(_, addrs)| addrs.is_empty()) {
        return None;
    }
    let mut form = Element::new("x", NS_DATA)
        .with_attr("type", "result")
        .with_child(
            Element::new("field", NS_DATA)
                .with_attr("var", "FORM_TYPE")
                .with_attr("type", "hidden")
                .with_child(Element::new("value", NS_DATA).with_text(FORM_TYPE)),
        );
    for (var, addrs) in fields.into_iter().filter(|(_, a)| !a.is_empty()) {
        let mut field = Element::new("field", NS_DATA).with_attr("var", var);
        for a in addrs {
            field.append_child(Element::new("value", NS_DATA).with_text(a.as_str()));
        }
        form.append_child(field);
    }
    Some(form)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_addresses_are_listed() {
        assert!(server_info_form(&ContactAddresses::default()).is_none());
        let contact = ContactAddresses {
            abuse: vec!["mailto:abuse@example.org".into()],
            support: vec!["xmpp:help@example.org".into(), "https://example.org".into()],
            ..Default::default()
        };
        let form = server_info_form(&contact).unwrap();
        let vars: Vec<_> = form.children().filter_map(|f| f.attr("var")).collect();
        assert_eq!(vars, ["FORM_TYPE", "abuse-addresses", "support-addresses"]);
        let support = form.children().last().unwrap();
        assert_eq!(support.children().count(), 2);
    }
}
